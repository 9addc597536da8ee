//! The byte stream under a connection, and the timeout wrapper every
//! socket exchange goes through.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::{TcpStream, UnixStream};

use crate::endpoint::Endpoint;
use crate::error::NbdError;

/// Any duplex byte stream; Unix and TCP sockets both qualify.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// Buffered socket with NBD-flavoured error mapping.
pub(crate) struct Transport {
    stream: BufStream<Box<dyn Stream>>,
}

impl Transport {
    /// Opens the socket to `endpoint`.
    pub(crate) async fn connect(endpoint: &Endpoint) -> Result<Transport, NbdError> {
        let stream: Box<dyn Stream> = match endpoint {
            Endpoint::Unix(path) => Box::new(UnixStream::connect(path).await?),
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect(address.as_str()).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        };
        Ok(Transport {
            stream: BufStream::with_capacity(64 * 1024, 64 * 1024, stream),
        })
    }

    pub(crate) async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NbdError> {
        self.stream
            .read_exact(buf)
            .await
            .map(|_| ())
            .map_err(NbdError::from_io)
    }

    pub(crate) async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], NbdError> {
        let mut out = [0u8; N];
        self.read_exact(&mut out).await?;
        Ok(out)
    }

    /// Reads a payload whose length the caller has already bounded.
    pub(crate) async fn read_vec(&mut self, length: u32) -> Result<Vec<u8>, NbdError> {
        let mut out = vec![0u8; length as usize];
        self.read_exact(&mut out).await?;
        Ok(out)
    }

    /// Queues bytes; nothing reaches the server before [`Transport::flush`].
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), NbdError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(NbdError::from_io)
    }

    pub(crate) async fn flush(&mut self) -> Result<(), NbdError> {
        self.stream.flush().await.map_err(NbdError::from_io)
    }

    pub(crate) async fn shutdown(&mut self) -> Result<(), NbdError> {
        self.stream.shutdown().await.map_err(NbdError::from_io)
    }
}

/// Runs `future` with a deadline, turning expiry into [`NbdError::Timeout`].
pub(crate) async fn with_timeout<T>(
    operation: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T, NbdError>>,
) -> Result<T, NbdError> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result,
        Err(_) => Err(NbdError::Timeout { operation, after }),
    }
}
