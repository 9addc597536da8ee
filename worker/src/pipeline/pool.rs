//! A fixed set of NBD connections shared by pipeline tasks.
//!
//! Each NBD client has one request in flight; the pool hands a connection to whichever
//! task needs one next, so `n` connections give `n` requests in flight without any task
//! owning a connection for longer than one request.

use std::ops::{Deref, DerefMut};
use std::sync::PoisonError;

use haven_nbd::{Client, ConnectOptions, Endpoint};
use tokio::sync::{Mutex, MutexGuard, mpsc};

use crate::error::{Result, WorkerError};

/// Connections to one export.
///
/// Each connection sits in its own slot, and the channel carries the numbers of the
/// idle slots: a loan holds its slot's lock and sends the number back when dropped.
/// Nothing is ever moved out of a loan, so no step can find it empty.
pub struct ClientPool {
    clients: Vec<Mutex<Client>>,
    idle_sender: mpsc::Sender<usize>,
    idle: Mutex<mpsc::Receiver<usize>>,
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
        let mut clients = Vec::with_capacity(count);
        let mut size = 0;
        for slot in 0..count {
            let client = Client::connect(endpoint, options).await?;
            size = client.size();
            clients.push(Mutex::new(client));
            // The channel has room for exactly `count` slot numbers.
            let _ = idle_sender.try_send(slot);
        }
        Ok(Self {
            clients,
            idle_sender,
            idle: Mutex::new(idle),
            size,
        })
    }

    /// Size of the export in bytes.
    pub fn export_size(&self) -> u64 {
        self.size
    }

    /// Waits for an idle connection. Fails only if the pool's channel is closed or
    /// names a slot the pool does not have, neither of which can happen while the pool
    /// (the owner of a sender, and of every slot it numbered) is alive; an error rather
    /// than a panic keeps it that way should the pool ever change.
    pub async fn checkout(&self) -> Result<PooledClient<'_>> {
        let closed = || {
            WorkerError::io("the nbd connection pool is closed")(
                std::io::ErrorKind::BrokenPipe.into(),
            )
        };
        let slot = self.idle.lock().await.recv().await.ok_or_else(closed)?;
        let client = self.clients.get(slot).ok_or_else(closed)?;
        // Uncontended: only the holder of the slot's number locks it, and the previous
        // holder's guard is released right after it sent the number back.
        let client = client.lock().await;
        Ok(PooledClient {
            client,
            slot,
            pool: self,
        })
    }

    /// Flushes and closes every connection.
    pub async fn close(self, flush: bool) -> Result<()> {
        for (slot, client) in self.clients.into_iter().enumerate() {
            let mut client = client.into_inner();
            if flush && slot == 0 {
                client.flush().await?;
            }
            client.disconnect().await?;
        }
        Ok(())
    }
}

/// A connection on loan; it goes back to the pool when dropped.
pub struct PooledClient<'a> {
    client: MutexGuard<'a, Client>,
    slot: usize,
    pool: &'a ClientPool,
}

impl Deref for PooledClient<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PooledClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        let _ = self.pool.idle_sender.try_send(self.slot);
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
        // A list of idle buffers stays whole whatever panicked while it was locked, so
        // a poisoned lock is taken over.
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
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
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use haven_nbd::{ExportSource, NbdServer, ServerConfig, ServerListener};

    use super::*;

    /// An export whose every byte is its offset modulo 251.
    struct Counting;

    impl ExportSource for Counting {
        fn size(&self) -> u64 {
            1 << 20
        }

        fn read<'a>(
            &'a self,
            offset: u64,
            buf: &'a mut [u8],
        ) -> impl Future<Output = std::io::Result<()>> + Send + 'a {
            for (at, byte) in (offset..).zip(buf.iter_mut()) {
                *byte = (at % 251) as u8;
            }
            std::future::ready(Ok(()))
        }

        fn allocation(&self, _offset: u64, length: u32) -> Vec<(u32, u32)> {
            vec![(length, 0)]
        }
    }

    #[tokio::test]
    async fn connections_are_lent_one_holder_at_a_time_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("nbd.sock"));
        let listener = ServerListener::bind(&endpoint).await.unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = NbdServer::new(Arc::new(Counting), ServerConfig::new("disk"));
        let serving = tokio::spawn(async move { server.serve(listener, stopped).await });

        let pool = ClientPool::connect(&endpoint, &ConnectOptions::new("disk"), 2)
            .await
            .unwrap();
        assert_eq!(pool.export_size(), 1 << 20);
        let mut first = pool.checkout().await.unwrap();
        let mut second = pool.checkout().await.unwrap();
        assert_ne!(first.slot, second.slot);
        let mut buf = [0u8; 4];
        first.read(251 * 3 + 1, &mut buf).await.unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        second.read(10, &mut buf).await.unwrap();
        assert_eq!(buf, [10, 11, 12, 13]);
        let waited = tokio::time::timeout(Duration::from_millis(100), pool.checkout())
            .await
            .is_err();
        assert!(waited, "a third loan of two connections must wait");
        let slot = first.slot;
        drop(first);
        let mut third = tokio::time::timeout(Duration::from_secs(5), pool.checkout())
            .await
            .expect("a returned connection is lent again")
            .unwrap();
        assert_eq!(third.slot, slot);
        third.read(0, &mut buf).await.unwrap();
        assert_eq!(buf, [0, 1, 2, 3]);
        drop((second, third));
        pool.close(false).await.unwrap();
        stop.send(true).unwrap();
        serving.await.unwrap().unwrap();
    }

    #[test]
    fn a_poisoned_buffer_pool_keeps_lending_its_buffers() {
        let pool = BufferPool::new(16, 2);
        let pointer = pool.take(16).as_ptr();
        let poisoner = pool.clone();
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.free.lock().unwrap();
            panic!("poisons the free list");
        })
        .join();
        assert!(panicked.is_err() && pool.free.is_poisoned());
        let again = pool.take(16);
        assert_eq!(again.as_ptr(), pointer, "the idle buffer is reused");
        drop(again);
        assert_eq!(pool.take(16).as_ptr(), pointer, "and handed back");
    }

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
        assert_eq!(pool.free.lock().map(|free| free.len()).ok(), Some(2));
    }
}
