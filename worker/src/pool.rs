//! A fixed set of NBD connections shared by pipeline tasks.
//!
//! Each NBD client has one request in flight; the pool hands a connection to whichever
//! task needs one next, so `n` connections give `n` requests in flight without any task
//! owning a connection for longer than one request.

use std::ops::{Deref, DerefMut};

use haven_nbd::{Client, ConnectOptions, Endpoint};
use tokio::sync::{Mutex, mpsc};

use crate::error::Result;

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

    /// Waits for an idle connection.
    pub async fn checkout(&self) -> PooledClient<'_> {
        let client = self.idle.lock().await.recv().await;
        PooledClient { client, pool: self }
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
