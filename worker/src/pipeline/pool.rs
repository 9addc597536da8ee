//! A fixed set of NBD connections shared by pipeline tasks.
//!
//! Each NBD client has one request in flight; the pool hands a connection to whichever
//! task needs one next, so `n` connections give `n` requests in flight without any task
//! owning a connection for longer than one request.

use std::ops::{Deref, DerefMut};

use haven_nbd::{Client, ConnectOptions, Endpoint};
use tokio::sync::{Mutex, mpsc};

use crate::error::{Result, WorkerError};

/// Connections to one export.
pub struct ClientPool {
    idle_sender: mpsc::Sender<Client>,
    idle: Mutex<mpsc::Receiver<Client>>,
    size: u64,
}

impl ClientPool {
    /// Opens `count` connections (at least one).
    pub async fn connect(
        endpoint: &Endpoint,
        options: &ConnectOptions,
        count: usize,
    ) -> Result<Self> {
        let count = count.max(1);
        let (idle_sender, idle) = mpsc::channel(count);
        let mut size = 0;
        for _ in 0..count {
            let client = Client::connect(endpoint, options).await?;
            size = client.size();
            // The channel has room for exactly `count` clients.
            let _ = idle_sender.try_send(client);
        }
        Ok(Self {
            idle_sender,
            idle: Mutex::new(idle),
            size,
        })
    }

    /// Size of the export in bytes.
    pub fn export_size(&self) -> u64 {
        self.size
    }

    /// Waits for an idle connection. Fails only if the pool's channel is closed, which
    /// cannot happen while the pool (the owner of a sender) is alive; an error rather
    /// than a panic keeps it that way should the pool ever change.
    pub async fn checkout(&self) -> Result<PooledClient<'_>> {
        let client = self.idle.lock().await.recv().await.ok_or_else(|| {
            WorkerError::io("the nbd connection pool is closed")(
                std::io::ErrorKind::BrokenPipe.into(),
            )
        })?;
        Ok(PooledClient {
            client: Some(client),
            pool: self,
        })
    }

    /// Flushes and closes every connection.
    pub async fn close(self, flush: bool) -> Result<()> {
        drop(self.idle_sender);
        let mut idle = self.idle.into_inner();
        let mut first = true;
        while let Some(mut client) = idle.recv().await {
            if flush && first {
                client.flush().await?;
                first = false;
            }
            client.disconnect().await?;
        }
        Ok(())
    }
}

/// A connection on loan; it goes back to the pool when dropped.
pub struct PooledClient<'a> {
    /// `Some` from [`ClientPool::checkout`] until `drop` hands it back: the only place
    /// that takes it, so every `Deref` sees it.
    client: Option<Client>,
    pool: &'a ClientPool,
}

impl Deref for PooledClient<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled client holds its connection until dropped")
    }
}

impl DerefMut for PooledClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled client holds its connection until dropped")
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.pool.idle_sender.try_send(client);
        }
    }
}

/// Read buffers of one capacity, reused from slot to slot.
///
/// A fresh `vec![0; len]` per slot costs a zero fill and, for chunk-sized buffers that
/// the allocator maps and unmaps, a page fault per 4 KiB; a reused buffer costs neither.
/// A buffer handed out again keeps the bytes of its previous slot: callers overwrite it
/// completely (an NBD read fills every byte, holes included) before looking at it.
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes, keeping at most `keep` idle ones.
    pub fn new(capacity: usize, keep: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            free: std::sync::Mutex::new(Vec::with_capacity(keep)),
            capacity,
            keep,
        })
    }

    /// A buffer of `len` bytes (at most the pool's capacity); contents unspecified.
    pub fn take(self: &std::sync::Arc<Self>, len: usize) -> PooledBuffer {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(self.capacity.max(len)));
        // Only bytes never handed out before are zeroed (once per buffer).
        buf.resize(len, 0);
        PooledBuffer {
            buf,
            pool: self.clone(),
        }
    }
}

/// A buffer on loan; it goes back to its pool when dropped.
pub struct PooledBuffer {
    buf: Vec<u8>,
    pool: std::sync::Arc<BufferPool>,
}

impl Deref for PooledBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() != self.pool.capacity {
            return;
        }
        if let Ok(mut free) = self.pool.free.lock()
            && free.len() < self.pool.keep
        {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let pool = BufferPool::new(16, 2);
        let mut first = pool.take(16);
        first.fill(7);
        let pointer = first.as_ptr();
        drop(first);
        let short = pool.take(10);
        assert_eq!(short.len(), 10);
        assert_eq!(short.as_ptr(), pointer);
        drop(short);
        // Growing back to full length exposes only zeroed or previously written bytes.
        let full = pool.take(16);
        assert_eq!(full.len(), 16);
        assert_eq!(&full[..10], &[7; 10]);
        assert_eq!(&full[10..], &[0; 6]);
        // At most `keep` idle buffers are kept.
        let (a, b, c) = (pool.take(16), pool.take(16), pool.take(16));
        drop((a, b, c, full));
        assert_eq!(pool.free.lock().unwrap().len(), 2);
    }
}
