//! `haven serve-nbd` over TCP with NBD's STARTTLS and X.509 credentials in QEMU's
//! layout, against QEMU's and libnbd's own TLS clients; and the rule that plain NBD
//! stays on loopback unless `--insecure`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Served, backed_up_image};
use crate::support::{
    image::assert_same_disk,
    process::{free_port, run, stderr_within},
    tls::Credentials,
};

/// Far above what any of these clients needs; only a hang reaches it.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// `qemu-img convert` of the export over TLS as the client of `dir`.
fn qemu_img_convert(port: u16, dir: &Path, target: &Path) -> Command {
    let mut command = Command::new("qemu-img");
    command
        .arg("convert")
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            dir.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host=127.0.0.1,port={port},export=vda,tls-creds=tls0"
        ))
        .args(["-O", "raw"])
        .arg(target);
    command
}

/// `nbdcopy` of the export over TLS (libnbd's `nbds://` URI) as the client of `dir`.
fn nbdcopy(port: u16, dir: &Path, target: &Path) -> Command {
    let mut command = Command::new("nbdcopy");
    command
        .arg(format!(
            "nbds://127.0.0.1:{port}/vda?tls-certificates={}",
            dir.display()
        ))
        .arg(target);
    command
}

/// Runs a client that must fail (within [`CLIENT_LIMIT`]); returns its stderr.
fn refused(command: &mut Command, what: &str) -> String {
    let (status, stderr) = stderr_within(command, CLIENT_LIMIT);
    assert!(!status.success(), "{what} was served: {stderr}");
    stderr
}

#[test]
fn qemu_img_and_nbdcopy_read_over_tls_and_other_clients_are_refused() {
    let (bed, raw) = backed_up_image();
    let credentials = Credentials::new(&bed.path("pki")).unwrap();
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let server_dir = credentials.server.to_str().unwrap().to_string();
    let served = Served::spawn(
        &bed,
        &listen,
        &["--tls-creds", &server_dir],
        Stdio::inherit(),
        None,
    );

    let converted = bed.path("converted.raw");
    let output = qemu_img_convert(port, &credentials.client, &converted)
        .output()
        .unwrap();
    crate::support::process::assert_success(&output, "qemu-img convert over TLS");
    assert_same_disk(&raw, &converted);

    let copied = bed.path("copied.raw");
    let output = nbdcopy(port, &credentials.client, &copied)
        .output()
        .unwrap();
    crate::support::process::assert_success(&output, "nbdcopy over TLS");
    assert_same_disk(&raw, &copied);

    // Plain clients: the server answers every option with NBD_REP_ERR_TLS_REQD.
    let plain = format!("nbd://127.0.0.1:{port}/vda");
    let stderr = refused(
        Command::new("qemu-img").args(["info", &plain]),
        "qemu-img without TLS",
    );
    assert!(stderr.contains("TLS"), "{stderr}");
    refused(Command::new("nbdinfo").arg(&plain), "nbdinfo without TLS");
    // The same tool with credentials is served: the refusal was TLS, not the server.
    let size = run(
        "nbdinfo",
        &[
            "--size",
            &format!(
                "nbds://127.0.0.1:{port}/vda?tls-certificates={}",
                credentials.client.display()
            ),
        ],
    );
    assert_eq!(
        size.trim(),
        std::fs::metadata(&raw).unwrap().len().to_string()
    );

    // TLS clients without a certificate of the server's CA: the server ends the
    // handshake (the client sees the alert, or the closed socket if it writes first).
    // The same clients are served below with peer verification off, so the refusal
    // is the server's check and not a client-side problem.
    let foreign = [
        (&credentials.stranger, "a certificate from another CA"),
        (&credentials.anonymous, "no client certificate"),
    ];
    for (dir, what) in foreign {
        let target = bed.path("refused.raw");
        refused(&mut qemu_img_convert(port, dir, &target), what);
        refused(&mut nbdcopy(port, dir, &target), what);
    }

    let stdout = served.stop();
    assert!(
        stdout.contains(&format!("at nbds://127.0.0.1:{port}/vda")),
        "{stdout}"
    );

    // The same clients (qemu-img and nbdcopy) are served when the operator turns peer
    // verification off.
    let port = free_port();
    let served = Served::spawn(
        &bed,
        &format!("tcp:127.0.0.1:{port}"),
        &["--tls-creds", &server_dir, "--tls-no-verify-peer"],
        Stdio::inherit(),
        None,
    );
    for (dir, what) in foreign {
        let target = bed.path("unverified.raw");
        let output = qemu_img_convert(port, dir, &target).output().unwrap();
        crate::support::process::assert_success(&output, what);
        assert_same_disk(&raw, &target);
        std::fs::remove_file(&target).unwrap();
        let output = nbdcopy(port, dir, &target).output().unwrap();
        crate::support::process::assert_success(&output, what);
        assert_same_disk(&raw, &target);
    }
    served.stop();
}

#[test]
fn a_new_ca_bundle_applies_to_new_connections_without_a_restart() {
    let (bed, raw) = backed_up_image();
    let credentials = Credentials::new(&bed.path("pki")).unwrap();
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let served = Served::spawn(
        &bed,
        &listen,
        &["--tls-creds", credentials.server.to_str().unwrap()],
        Stdio::inherit(),
        None,
    );
    let target = bed.path("stranger.raw");
    refused(
        &mut qemu_img_convert(port, &credentials.stranger, &target),
        "a certificate from another CA",
    );

    // The operator adds the other CA to the bundle: renamed over, as tools do.
    let bundle = [
        std::fs::read(credentials.server.join("ca-cert.pem")).unwrap(),
        std::fs::read(credentials.stranger.join("ca-cert.pem")).unwrap(),
    ]
    .concat();
    let staged = bed.path("ca-cert.pem.new");
    std::fs::write(&staged, bundle).unwrap();
    std::fs::rename(&staged, credentials.server.join("ca-cert.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = std::fs::remove_file(&target);
        let (status, stderr) = stderr_within(
            &mut qemu_img_convert(port, &credentials.stranger, &target),
            CLIENT_LIMIT,
        );
        if status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new CA bundle was not taken up: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_same_disk(&raw, &target);
    drop(served);
}

#[test]
fn plain_tcp_off_loopback_needs_insecure_and_warns_at_every_start() {
    let (bed, raw) = backed_up_image();
    let port = free_port();
    let any = format!("tcp:0.0.0.0:{port}");

    let stderr = bed.fails(&["serve-nbd", "web1@latest", "--listen", &any]);
    assert!(
        stderr.contains("--tls-creds") && stderr.contains("--insecure"),
        "{stderr}"
    );

    let served = Served::spawn(&bed, &any, &["--insecure"], Stdio::piped(), None);
    let converted = bed.path("converted.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            &format!("nbd://127.0.0.1:{port}/vda"),
            converted.to_str().unwrap(),
        ],
    );
    assert_same_disk(&raw, &converted);
    let (_, stderr) = served.stop_with_stderr();
    assert!(
        stderr.contains("WARN") && stderr.contains("--insecure"),
        "{stderr}"
    );

    // Loopback stays allowed in clear, without a warning.
    let port = free_port();
    let loopback = format!("tcp:127.0.0.1:{port}");
    let served = Served::spawn(&bed, &loopback, &[], Stdio::piped(), None);
    let (_, stderr) = served.stop_with_stderr();
    assert!(!stderr.contains("WARN"), "{stderr}");

    // Credentials that cannot be read are reported with the file, before anything runs.
    let stderr = bed.fails(&[
        "serve-nbd",
        "web1@latest",
        "--listen",
        &any,
        "--tls-creds",
        bed.path("nowhere").to_str().unwrap(),
    ]);
    assert!(stderr.contains("server-cert.pem"), "{stderr}");
}
