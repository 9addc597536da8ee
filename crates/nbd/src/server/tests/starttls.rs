//! The STARTTLS state machine against raw byte streams and a rustls client: options
//! before TLS are refused, negotiation continues inside TLS, client certificates are
//! checked, and hostile bytes during STARTTLS end in an error within the handshake
//! timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use haven_testkit::tls::Credentials;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_rustls::rustls;

use super::super::wire::*;
use super::*;

/// Credentials of one test, removed with the directory.
struct Pki {
    _dir: tempfile::TempDir,
    credentials: Credentials,
}

impl std::ops::Deref for Pki {
    type Target = Credentials;
    fn deref(&self) -> &Credentials {
        &self.credentials
    }
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let credentials = Credentials::new(dir.path()).unwrap();
    Pki {
        _dir: dir,
        credentials,
    }
}

async fn start_tls(pki: &Pki, verification: PeerVerification) -> Running {
    let mut config = ServerConfig::new("vda");
    config.handshake_timeout = Duration::from_millis(500);
    config.tls = Some(ServerTls::from_x509_dir(&pki.server, verification).unwrap());
    start(config).await
}

/// A rustls client trusting `dir/ca-cert.pem`, presenting `dir/client-cert.pem` if asked.
fn connector(dir: &Path, present_certificate: bool) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(dir.join("ca-cert.pem")).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if present_certificate {
        let chain = CertificateDer::pem_file_iter(dir.join("client-cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("client-key.pem")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects and sends the client flags; returns the stream ready for options.
async fn greeted(running: &Running) -> UnixStream {
    let mut stream = UnixStream::connect(running.socket()).await.unwrap();
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[0..8], b"NBDMAGIC");
    stream
        .write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
    stream
}

/// Sends an option and reads one reply: its option, type and data.
async fn ask<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    option: u32,
    data: &[u8],
) -> (u32, u32, Vec<u8>) {
    stream
        .write_all(&encode_option(option, data))
        .await
        .unwrap();
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(header[0..8].try_into().unwrap()),
        OPTION_REPLY_MAGIC
    );
    let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload).await.unwrap();
    (
        u32::from_be_bytes(header[8..12].try_into().unwrap()),
        u32::from_be_bytes(header[12..16].try_into().unwrap()),
        payload,
    )
}

/// Whether the server closes the stream (within a bound far above the handshake
/// timeout, so a hang fails the test instead of blocking it).
async fn closed_by_server<T: AsyncRead + Unpin>(stream: &mut T) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await,
        Ok(Ok(_) | Err(_))
    )
}

fn go_data(name: &str) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    data
}

/// STARTTLS and a TLS handshake as `dir`'s client.
async fn upgraded(
    running: &Running,
    dir: &Path,
    present_certificate: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<UnixStream>> {
    let mut stream = greeted(running).await;
    let (option, reply, _) = ask(&mut stream, OPT_STARTTLS, &[]).await;
    assert_eq!((option, reply), (OPT_STARTTLS, REP_ACK));
    let name = ServerName::try_from("localhost").unwrap();
    connector(dir, present_certificate)
        .connect(name, stream)
        .await
}

/// Reads 100 bytes at `offset` with the export picked by NBD_OPT_GO, or fails.
async fn go_and_read<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    offset: u64,
) -> std::io::Result<Vec<u8>> {
    stream
        .write_all(&encode_option(OPT_GO, &go_data("vda")))
        .await?;
    // NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE, then the ACK.
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).await?;
        let reply = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
        let mut payload = vec![0u8; length as usize];
        stream.read_exact(&mut payload).await?;
        assert!(reply == REP_INFO || reply == REP_ACK, "reply {reply:#x}");
        if reply == REP_ACK {
            break;
        }
    }
    let request = RequestHeader {
        flags: 0,
        command: CMD_READ,
        cookie: 7,
        offset,
        length: 100,
    }
    .encode();
    stream.write_all(&request).await?;
    let mut reply = [0u8; 16];
    stream.read_exact(&mut reply).await?;
    assert_eq!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), 0);
    let mut data = vec![0u8; 100];
    stream.read_exact(&mut data).await?;
    Ok(data)
}

#[tokio::test]
async fn options_before_starttls_are_refused_and_export_name_closes() {
    let pki = pki();
    let running = start_tls(&pki, PeerVerification::Required).await;

    let mut stream = greeted(&running).await;
    for option in [OPT_LIST, OPT_GO, OPT_INFO, OPT_STRUCTURED_REPLY, 99] {
        let data = if option == OPT_GO || option == OPT_INFO {
            go_data("vda")
        } else {
            Vec::new()
        };
        let (replied, reply, message) = ask(&mut stream, option, &data).await;
        assert_eq!(
            (replied, reply),
            (option, REP_ERR_TLS_REQD),
            "option {option}"
        );
        assert!(String::from_utf8_lossy(&message).contains("STARTTLS"));
    }
    // NBD_OPT_EXPORT_NAME cannot be refused with a reply: the connection ends, and no
    // export size or byte of data was sent.
    stream
        .write_all(&encode_option(OPT_EXPORT_NAME, b"vda"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // ABORT is answered, not refused.
    let mut stream = greeted(&running).await;
    let (_, reply, _) = ask(&mut stream, OPT_ABORT, &[]).await;
    assert_eq!(reply, REP_ACK);

    // Haven's own client (no TLS) is told why.
    let error = Client::connect(&running.endpoint(), &ConnectOptions::new("vda"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            NbdError::OptionRejected {
                code: REP_ERR_TLS_REQD,
                ..
            }
        ),
        "{error}"
    );
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn negotiation_continues_inside_tls_and_serves_the_export() {
    let pki = pki();
    let running = start_tls(&pki, PeerVerification::Required).await;

    let mut tls = upgraded(&running, &pki.client, true).await.unwrap();
    // A second STARTTLS inside TLS is invalid; the session goes on.
    let (_, reply, _) = ask(&mut tls, OPT_STARTTLS, &[]).await;
    assert_eq!(reply, REP_ERR_INVALID);
    let (_, reply, listed) = ask(&mut tls, OPT_LIST, &[]).await;
    assert_eq!(reply, REP_SERVER);
    assert!(String::from_utf8_lossy(&listed).contains("vda"));
    let mut ack = [0u8; 20];
    tls.read_exact(&mut ack).await.unwrap();
    let data = go_and_read(&mut tls, 1000).await.unwrap();
    assert_eq!(data, expected(1000, 100));

    // STARTTLS with data is invalid and ends the connection.
    let mut stream = greeted(&running).await;
    let (_, reply, _) = ask(&mut stream, OPT_STARTTLS, b"junk").await;
    assert_eq!(reply, REP_ERR_INVALID);
    assert!(closed_by_server(&mut stream).await);
    running.stop.send(true).unwrap();
}

#[tokio::test]
async fn clients_without_a_certificate_of_the_ca_are_refused() {
    let pki = pki();
    let running = start_tls(&pki, PeerVerification::Required).await;
    for (dir, present) in [(&pki.anonymous, false), (&pki.stranger, true)] {
        // TLS 1.3 finishes the client's side before the server has checked its
        // certificate; the refusal arrives as the first read, and no option is served.
        let refused = match upgraded(&running, dir, present).await {
            Err(_) => true,
            Ok(mut tls) => go_and_read(&mut tls, 0).await.is_err(),
        };
        assert!(refused, "client {} (certificate: {present})", dir.display());
    }
    running.stop.send(true).unwrap();

    // Without peer verification the same clients are served, still over TLS.
    let running = start_tls(&pki, PeerVerification::Off).await;
    for (dir, present) in [(&pki.anonymous, false), (&pki.stranger, true)] {
        let mut tls = upgraded(&running, dir, present).await.unwrap();
        assert_eq!(go_and_read(&mut tls, 0).await.unwrap(), expected(0, 100));
    }
    running.stop.send(true).unwrap();
}

#[tokio::test]
async fn hostile_bytes_during_starttls_end_the_connection_within_the_timeout() {
    let pki = pki();
    let running = start_tls(&pki, PeerVerification::Required).await;

    // Garbage instead of a ClientHello.
    let mut stream = greeted(&running).await;
    let (_, reply, _) = ask(&mut stream, OPT_STARTTLS, &[]).await;
    assert_eq!(reply, REP_ACK);
    stream.write_all(&[0x55; 512]).await.unwrap();
    assert!(closed_by_server(&mut stream).await, "garbage ClientHello");

    // An NBD option instead of a ClientHello.
    let mut stream = greeted(&running).await;
    ask(&mut stream, OPT_STARTTLS, &[]).await;
    stream
        .write_all(&encode_option(OPT_GO, &go_data("vda")))
        .await
        .unwrap();
    assert!(closed_by_server(&mut stream).await, "option as ClientHello");

    // A client that never finishes (or starts) the TLS handshake.
    let mut stream = greeted(&running).await;
    ask(&mut stream, OPT_STARTTLS, &[]).await;
    assert!(closed_by_server(&mut stream).await, "silent after STARTTLS");

    // A partial ClientHello, then silence.
    let mut stream = greeted(&running).await;
    ask(&mut stream, OPT_STARTTLS, &[]).await;
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert!(closed_by_server(&mut stream).await, "partial ClientHello");

    // The server still serves a good client.
    let mut tls = upgraded(&running, &pki.client, true).await.unwrap();
    assert_eq!(go_and_read(&mut tls, 0).await.unwrap(), expected(0, 100));
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_server_without_tls_refuses_starttls_by_policy_and_goes_on() {
    let running = start(ServerConfig::new("vda")).await;
    let mut stream = greeted(&running).await;
    let (_, reply, _) = ask(&mut stream, OPT_STARTTLS, &[]).await;
    assert_eq!(reply, REP_ERR_POLICY);
    assert_eq!(go_and_read(&mut stream, 0).await.unwrap(), expected(0, 100));
    running.stop.send(true).unwrap();
}

#[test]
fn credential_errors_name_the_file() {
    let pki = pki();
    let empty = tempfile::tempdir().unwrap();
    let error = ServerTls::from_x509_dir(empty.path(), PeerVerification::Required).unwrap_err();
    assert!(error.to_string().contains("server-cert.pem"), "{error}");

    // A key that does not belong to the certificate.
    let mixed = tempfile::tempdir().unwrap();
    for file in ["ca-cert.pem", "server-cert.pem"] {
        std::fs::copy(pki.server.join(file), mixed.path().join(file)).unwrap();
    }
    std::fs::copy(
        pki.client.join("client-key.pem"),
        mixed.path().join("server-key.pem"),
    )
    .unwrap();
    let error = ServerTls::from_x509_dir(mixed.path(), PeerVerification::Required).unwrap_err();
    assert!(
        matches!(error, TlsCredentialsError::Identity { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("server-key.pem"), "{error}");

    // A CA file without a certificate matters only when clients are verified.
    std::fs::copy(
        pki.server.join("server-key.pem"),
        mixed.path().join("server-key.pem"),
    )
    .unwrap();
    std::fs::write(mixed.path().join("ca-cert.pem"), "not a certificate\n").unwrap();
    let error = ServerTls::from_x509_dir(mixed.path(), PeerVerification::Required).unwrap_err();
    assert!(error.to_string().contains("ca-cert.pem"), "{error}");
    let tls = ServerTls::from_x509_dir(mixed.path(), PeerVerification::Off).unwrap();
    assert_eq!(tls.verification(), PeerVerification::Off);
}
