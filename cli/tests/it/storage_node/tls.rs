//! The storage node over TLS (`[tls]` with a certificate and key): a test CA
//! and a server certificate for 127.0.0.1 are made with the `openssl` CLI,
//! then awscli and curl talk https to the node; plain http to the TLS port
//! and a client that trusts another CA are refused. A node pulls replication
//! batches from an https node whose CA its `replication.pull_ca_file` names.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use haven_node_protocol::{PullKey, PullOutcome};

use crate::support::{
    haven::{HavenClient, haven},
    image::{MIB, raw_image},
    process::ok,
    report::disk_stat,
    s3::{ACCESS_KEY, SECRET_KEY},
    storage_node::{Node, NodeOptions, TlsFiles, node_client, output_with_env, pattern},
};

/// OpenSSL config with the CA and server-certificate extensions.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn openssl(args: &[&str]) {
    ok(
        output_with_env("openssl", args, &[]),
        format!("openssl {args:?}"),
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Makes a self-signed CA named `name` in `dir`; returns (cert, key).
fn make_ca(dir: &Path, config: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    openssl(&[
        "req",
        "-x509",
        "-config",
        path_str(config),
        "-extensions",
        "ca_ext",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=Haven test {name}"),
        "-keyout",
        path_str(&key),
        "-out",
        path_str(&cert),
    ]);
    (cert, key)
}

/// A CA, a server certificate for IP 127.0.0.1 signed by it, and an
/// unrelated second CA.
fn make_certificates(dir: &Path) -> (TlsFiles, PathBuf) {
    let config = dir.join("openssl.cnf");
    std::fs::write(&config, OPENSSL_CONFIG).expect("write openssl config");
    let (ca_cert, _) = make_ca(dir, &config, "ca");
    let (other_ca, _) = make_ca(dir, &config, "other-ca");
    let (cert, key) = issue_server_certificate(dir, "ca", "node");
    let files = TlsFiles {
        cert,
        key,
        ca_bundle: ca_cert,
    };
    (files, other_ca)
}

/// A server certificate for IP 127.0.0.1 signed by the CA `ca` of
/// [`make_certificates`]'s `dir`, in `STEM.pem` and `STEM.key`.
fn issue_server_certificate(dir: &Path, ca: &str, stem: &str) -> (PathBuf, PathBuf) {
    let config = dir.join("openssl.cnf");
    let key = dir.join(format!("{stem}.key"));
    let request = dir.join(format!("{stem}.csr"));
    let cert = dir.join(format!("{stem}.pem"));
    openssl(&[
        "req",
        "-new",
        "-config",
        path_str(&config),
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        path_str(&key),
        "-out",
        path_str(&request),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&request),
        "-CA",
        path_str(&dir.join(format!("{ca}.pem"))),
        "-CAkey",
        path_str(&dir.join(format!("{ca}.key"))),
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        path_str(&config),
        "-extensions",
        "server_ext",
        "-out",
        path_str(&cert),
    ]);
    (cert, key)
}

fn curl(args: &[&str]) -> std::process::Output {
    output_with_env(
        "curl",
        &[&["--silent", "--show-error", "--max-time", "20"], args].concat(),
        &[],
    )
}

#[test]
fn tls_serves_awscli_and_curl_and_refuses_plain_http_and_unknown_cas() {
    let (node, ca, other_ca) = tls_node();
    assert_eq!(node.scheme, "https", "the node announces https");
    let endpoint = node.endpoint();

    // awscli over https, trusting the test CA through AWS_CA_BUNDLE.
    node.aws_ok(&["s3", "mb", "s3://secure"]);
    let body = pattern(9_000_000, 7);
    std::fs::write(node.path("up"), &body).expect("write");
    let up = node.path("up");
    let down = node.path("down");
    node.aws_ok(&["s3", "cp", path_str(&up), "s3://secure/dir/big"]);
    node.aws_ok(&["s3", "cp", "s3://secure/dir/big", path_str(&down)]);
    assert_eq!(std::fs::read(&down).expect("read"), body);
    let listing = node.aws_ok(&["s3api", "list-objects-v2", "--bucket", "secure"]);
    assert!(listing.contains("dir/big"), "{listing}");

    // curl with --cacert: the metrics endpoint and a presigned GET.
    let metrics = ok(
        curl(&["--cacert", path_str(&ca), &format!("{endpoint}/metrics")]),
        "curl https metrics",
    );
    assert!(
        metrics.contains("haven_storage_requests_total"),
        "{metrics}"
    );
    let url = node.aws_ok(&["s3", "presign", "s3://secure/dir/big", "--expires-in", "60"]);
    let fetched = node.path("fetched");
    ok(
        curl(&[
            "--fail",
            "--cacert",
            path_str(&ca),
            "--output",
            path_str(&fetched),
            url.trim(),
        ]),
        "curl presigned https GET",
    );
    assert_eq!(std::fs::read(&fetched).expect("read"), body);

    // Plain http to the TLS port: no HTTP response, the client fails.
    let plain = curl(&[&format!("http://127.0.0.1:{}/metrics", node.port)]);
    assert!(
        !plain.status.success(),
        "plain http to the TLS port succeeded: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "the TLS port answered plain HTTP: {}",
        String::from_utf8_lossy(&answer)
    );

    // A client that trusts another CA, or only the system CAs, refuses the
    // node's certificate.
    let wrong = curl(&[
        "--cacert",
        path_str(&other_ca),
        &format!("{endpoint}/metrics"),
    ]);
    assert_eq!(wrong.status.code(), Some(60), "curl accepted an unknown CA");
    let system = curl(&[&format!("{endpoint}/metrics")]);
    assert_eq!(
        system.status.code(),
        Some(60),
        "curl accepted the test CA without being told"
    );
    let refused = node.aws_trusting(&other_ca, &["s3", "ls", "s3://secure"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "awscli accepted an unknown CA");
    assert!(
        stderr.contains("CERTIFICATE_VERIFY_FAILED") || stderr.contains("SSL"),
        "unexpected awscli error: {stderr}"
    );

    // After all of that the node still serves https.
    let listing = node.aws_ok(&["s3", "ls", "s3://secure/dir/"]);
    assert!(listing.contains("big"), "{listing}");
}

/// A node speaking https with a certificate of a test CA; returns it with that CA and
/// an unrelated one.
fn tls_node() -> (Node, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls, other_ca) = make_certificates(dir.path());
    let ca = tls.ca_bundle.clone();
    let node = Node::start_in(
        dir,
        NodeOptions {
            tls: Some(tls),
            ..NodeOptions::default()
        },
    );
    (node, ca, other_ca)
}

#[test]
fn a_renewed_certificate_is_served_to_new_connections_without_a_restart() {
    let (node, ca, other_ca) = tls_node();
    let metrics = format!("{}/metrics", node.endpoint());
    let trusts = |ca: &Path| curl(&["--cacert", path_str(ca), &metrics]).status.success();
    assert!(trusts(&ca) && !trusts(&other_ca));

    // Renew as cert-manager or a script would: new files renamed over the old, the
    // key first (in between, the pair does not match and the old one stays served).
    let dir = node.path("");
    let (cert, key) = issue_server_certificate(&dir, "other-ca", "renewed");
    std::fs::rename(&key, node.path("node.key")).expect("rename key");
    std::fs::rename(&cert, node.path("node.pem")).expect("rename cert");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !trusts(&other_ca) {
        assert!(
            std::time::Instant::now() < deadline,
            "the node still serves the old certificate"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!trusts(&ca), "the old certificate is still served");
}

#[test]
fn pulls_from_an_https_source_need_its_ca_in_pull_ca_file() {
    let (source, ca, other_ca) = tls_node();
    source.aws_ok(&["s3", "mb", "s3://site-a"]);
    let body = pattern(3_000_000, 11);
    let up = source.path("up");
    std::fs::write(&up, &body).expect("write");
    source.aws_ok(&["s3", "cp", path_str(&up), "s3://site-a/chunks/one"]);

    // Three secondaries that list the source: one trusts its CA, one another
    // CA, one only the system's.
    let secondary = |pull_ca_file: Option<PathBuf>| {
        let node = Node::start_with(NodeOptions {
            pull_sources: vec![source.endpoint()],
            pull_ca_file,
            ..NodeOptions::default()
        });
        node.aws_ok(&["s3", "mb", "s3://site-b"]);
        node
    };
    let trusting = secondary(Some(ca));
    let other = secondary(Some(other_ca));
    let system_only = secondary(None);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let from = node_client(&source.endpoint(), "site-a", ACCESS_KEY, SECRET_KEY);
    for (node, trusted) in [(&trusting, true), (&other, false), (&system_only, false)] {
        let to = node_client(&node.endpoint(), "site-b", ACCESS_KEY, SECRET_KEY);
        let pulls = runtime.block_on(to.pulls_from(&from)).expect("probe");
        assert_eq!(pulls, trusted, "pull probe of a node trusting {trusted}");
    }
    let to = node_client(&trusting.endpoint(), "site-b", ACCESS_KEY, SECRET_KEY);
    let keys = vec![PullKey {
        source: "chunks/one".to_owned(),
        target: "copied/one".to_owned(),
    }];
    let request = from.pull_request(keys).expect("sign");
    let outcomes = runtime
        .block_on(to.batch_pull(&request))
        .expect("pull over https");
    assert_eq!(outcomes, vec![PullOutcome::Created]);
    // The node that does not trust the source's CA says why.
    let untrusting = node_client(&other.endpoint(), "site-b", ACCESS_KEY, SECRET_KEY);
    let error = runtime
        .block_on(untrusting.batch_pull(&request))
        .expect_err("pull from an untrusted https source");
    assert!(error.to_string().contains("certificate"), "{error}");
    let down = trusting.path("down");
    trusting.aws_ok(&["s3", "cp", "s3://site-b/copied/one", path_str(&down)]);
    assert_eq!(std::fs::read(&down).expect("read"), body);

    // A CA file that holds no certificate stops the node before it serves.
    let bad_ca = trusting.path("not-a-ca.pem");
    std::fs::write(&bad_ca, "not a certificate\n").expect("write");
    let config = trusting.path("bad.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[keys]]\naccess_key = \"k\"\nsecret_key = \"s\"\n[replication]\npull_ca_file = \"{}\"\n",
        trusting.path("bad-data").display(),
        bad_ca.display()
    );
    std::fs::write(&config, text).expect("write");
    let output = haven(&[
        "storage-node",
        "--config",
        path_str(&config),
        "--check-config",
    ])
    .output()
    .expect("run haven");
    assert!(
        !output.status.success(),
        "a CA file without certificates was accepted"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pull_ca_file"), "{stderr}");
}

#[test]
fn a_repository_on_an_https_node_of_a_private_ca_names_it_in_ca_file() {
    let (node, ca, other_ca) = tls_node();
    node.aws_ok(&["s3", "mb", "s3://vault"]);
    let base = format!("s3://vault/repo?endpoint={}", node.endpoint());

    // Without the CA, or with another one, the client refuses the node.
    let with_ca = |ca: &Path| format!("{base}&ca_file={}", ca.display());
    for url in [base.clone(), with_ca(&other_ca)] {
        let output = HavenClient::on_node(url.as_str()).run(&["repo", "init"]);
        assert!(!output.status.success(), "init through {url} succeeded");
    }
    let not_pem = node.path("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let output = HavenClient::on_node(with_ca(&not_pem)).run(&["repo", "init"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("ca_file"),
        "{stderr}"
    );

    // With it: init, back up, verify and restore over https.
    let client = HavenClient::on_node(with_ca(&ca));
    client.ok(&["repo", "init"]);
    let image = node.path("disk.raw");
    let size = 8 * MIB;
    raw_image(&image, size, &[(0, 3 * MIB as usize)]);
    let report = client.backup("vm", &[&image]);
    // 3 MiB of data in the default 512 KiB chunks.
    assert_eq!(disk_stat(&report, "new_chunks"), 6);
    client.ok(&["verify"]);
    // The existence queries went to the node's batch extension over https too
    // (its client trusts the same ca_file), not to one HEAD per chunk.
    let metrics = ok(
        curl(&[
            "--cacert",
            path_str(&ca),
            &format!("{}/metrics", node.endpoint()),
        ]),
        "curl https metrics",
    );
    let batches: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("haven_storage_requests_total{op=\"HavenExists\","))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(batches > 0, "no batch existence query reached the node");
    let out = node.path("out.raw");
    client.ok(&["restore", "vm@latest", "--to", path_str(&out)]);
    assert_eq!(
        std::fs::read(&out).expect("read"),
        std::fs::read(&image).expect("read")
    );
}
