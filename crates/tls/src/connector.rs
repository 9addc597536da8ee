//! The client side: tonic channels over TLS with the client configuration current
//! at each new connection, so a rotated certificate is used from the next connect.
//!
//! Haven's coordinator URLs are `https://HOST:PORT` (TLS) or `http://HOST:PORT`
//! (plain, loopback only). tonic is built without its own TLS; for `https` this
//! module hands tonic an `http` URI and does the TLS itself in the connector.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::reload::Reloading;
use crate::{TlsError, files};

/// Time to set up TCP and TLS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a client's TLS configuration.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// CA bundle the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client's certificate chain and key, when it authenticates by certificate.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTlsFiles {
    /// A rustls client configuration from the files.
    pub fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                context: "TLS versions".into(),
                source,
            })?
            .with_root_certificates(files::root_store(&self.ca)?);
        let mut config = match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(files::certificates(cert)?, files::private_key(key)?)
                .map_err(|source| TlsError::Rustls {
                    context: format!("certificate {} with key {}", cert.display(), key.display()),
                    source,
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The configuration, rebuilt when a file changes.
    pub fn reloading(&self, what: &str) -> Result<Arc<Reloading<rustls::ClientConfig>>, TlsError> {
        let mut files = vec![self.ca.clone()];
        if let Some((cert, key)) = &self.identity {
            files.extend([cert.clone(), key.clone()]);
        }
        let this = self.clone();
        Reloading::new(what, files, move || this.build())
    }
}

/// Splits a Haven URL into tonic's endpoint (always `http`) and whether it asks for
/// TLS.
pub fn endpoint(url: &str) -> Result<(Endpoint, bool), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("must start with https:// or http://".into());
    };
    let endpoint = Endpoint::from_shared(format!("http://{rest}")).map_err(|e| e.to_string())?;
    Ok((endpoint, tls))
}

/// Connects `endpoint`, over TLS with `tls`'s current configuration when given.
pub async fn connect(
    endpoint: Endpoint,
    tls: Option<Arc<Reloading<rustls::ClientConfig>>>,
) -> Result<Channel, tonic::transport::Error> {
    let Some(tls) = tls else {
        return endpoint.connect().await;
    };
    let connector = tower::service_fn(move |uri: Uri| {
        let config = tls.current();
        async move {
            let connect = async {
                let host = uri.host().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "URL without a host")
                })?;
                let port = uri.port_u16().unwrap_or(443);
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let tcp = TcpStream::connect((bare, port)).await?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(bare.to_owned())
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            };
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connection timed out"))?
        }
    });
    endpoint.connect_with_connector(connector).await
}
