//! Turns concurrent chunk uploads to a Haven storage node into batch writes.
//!
//! A backup uploads one 512 KiB chunk per call from many tasks at once. As S3
//! PUTs, each costs the node an HTTP exchange, the SHA-256 of its signed payload
//! and an MD5 for an ETag nobody reads; on a small machine that made a backup into
//! a node on the same host 2.5× slower than into a local directory. The node's
//! batch write (`?haven-batch-put=`, written for replication) creates many objects
//! per request, create-only, each checked against its CRC-32 and made durable
//! (fsync, rename, directory fsync) before the answer. So the batcher collects the
//! chunks callers hand it and sends them together; each caller still waits for the
//! answer about its own chunk, and the pipeline does not change.
//!
//! When a batch goes: at once while fewer than [`Limits::in_flight`] batches are
//! on their way, else when the next one is full ([`Limits::objects`] or
//! [`Limits::bytes`]), else as soon as a batch comes back. So a lone upload never
//! waits for a timer, and under load batches grow to what arrives while the
//! others are being written.
//!
//! Whether the server does batch writes is decided once, before the first chunk:
//! an empty batch read must succeed (a plain S3 server refuses the unknown
//! request); then, if the first batch write is refused with a client error, every
//! later chunk is a plain PUT. Any other failure of a batch (network, 5xx, a
//! garbled answer) sends just that batch's chunks to plain PUTs, which store them
//! or report the real error; a batch failure alone never fails a backup. A batch
//! cut off midway may have created some of its objects: their PUTs then find them
//! there, which create-only writes answer as "already existed".

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{OnceCell, oneshot};
use tracing::Instrument;

use crate::storage::node_client::{NodeClient, NodeClientError};

/// Where batches go: the storage node client, or a fake in tests.
pub(crate) trait BatchWrite: Send + Sync + 'static {
    /// Whether the server serves batch transfers at all.
    fn supported(&self) -> BoxFuture<'static, Result<bool, NodeClientError>>;
    /// Creates each object (bucket key, bytes) that does not exist yet; per
    /// object in order, whether this call created it.
    fn create(
        &self,
        objects: Vec<(String, Bytes)>,
    ) -> BoxFuture<'static, Result<Vec<bool>, NodeClientError>>;
}

impl BatchWrite for NodeClient {
    fn supported(&self) -> BoxFuture<'static, Result<bool, NodeClientError>> {
        let client = self.clone();
        Box::pin(async move { client.supports_batch().await })
    }

    fn create(
        &self,
        objects: Vec<(String, Bytes)>,
    ) -> BoxFuture<'static, Result<Vec<bool>, NodeClientError>> {
        let client = self.clone();
        Box::pin(async move { client.create_objects(objects).await })
    }
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Objects that make a batch full.
    pub(crate) objects: usize,
    /// Bytes that make a batch full.
    pub(crate) bytes: usize,
    /// Batches sent without waiting for one to fill.
    pub(crate) in_flight: usize,
}

/// Four batches on their way keep the node receiving while it fsyncs others (a
/// backup has ten chunks in flight, so each batch holds two or three); 64 chunks of
/// 512 KiB are 32 MiB, still a short request. See docs/benchmarks.md.
pub(crate) const DEFAULT_LIMITS: Limits = Limits {
    objects: 64,
    bytes: 32 << 20,
    in_flight: 4,
};

/// Batch writes not tried yet, or tried and refused.
const MODE_UNKNOWN: u8 = 0;
/// A batch write has succeeded.
const MODE_BATCH: u8 = 1;
/// The server does not do batch writes: plain PUTs.
const MODE_PLAIN: u8 = 2;

/// An upload waiting for its batch.
struct Waiter {
    key: String,
    data: Bytes,
    reply: oneshot::Sender<Option<bool>>,
}

/// Uploads not sent yet and batches on their way.
#[derive(Default)]
struct State {
    pending: Vec<Waiter>,
    pending_bytes: usize,
    in_flight: usize,
}

/// Collects concurrent uploads into batch writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct PutBatcher {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Box<dyn BatchWrite>,
    limits: Limits,
    mode: AtomicU8,
    /// The answer of the probe, asked once.
    supported: OnceCell<bool>,
    state: Mutex<State>,
    batches_sent: AtomicU64,
}

impl std::fmt::Debug for PutBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutBatcher")
            .field("limits", &self.inner.limits)
            .field("mode", &self.inner.mode.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PutBatcher {
    /// Batches uploads to `transport` within `limits`.
    pub(crate) fn new(transport: Box<dyn BatchWrite>, limits: Limits) -> Self {
        let limits = Limits {
            objects: limits.objects.max(1),
            bytes: limits.bytes.max(1),
            in_flight: limits.in_flight.max(1),
        };
        Self {
            inner: Arc::new(Inner {
                transport,
                limits,
                mode: AtomicU8::new(MODE_UNKNOWN),
                supported: OnceCell::new(),
                state: Mutex::new(State::default()),
                batches_sent: AtomicU64::new(0),
            }),
        }
    }

    /// Creates `key` (a bucket key) with `data` unless it exists: `Some(true)`
    /// created, `Some(false)` already there, `None` "use a plain PUT" (the
    /// server does no batch writes, or this batch failed).
    pub(crate) async fn create(&self, key: String, data: Bytes) -> Option<bool> {
        if !self.usable().await {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let batch = {
            let mut state = lock(&self.inner.state);
            state.pending_bytes += data.len();
            state.pending.push(Waiter { key, data, reply });
            self.inner.take_ready(&mut state)
        };
        // Sent from a task of its own, so a caller that gives up (its future
        // dropped) never strands the others; it belongs to the sender's trace.
        if let Some(batch) = batch {
            tokio::spawn(
                Arc::clone(&self.inner)
                    .send(batch)
                    .instrument(tracing::Span::current()),
            );
        }
        answer.await.ok().flatten()
    }

    /// Whether batches may be tried: asks the server once.
    async fn usable(&self) -> bool {
        match self.inner.mode.load(Ordering::Acquire) {
            MODE_BATCH => return true,
            MODE_PLAIN => return false,
            _ => {}
        }
        let transport = &self.inner.transport;
        match self
            .inner
            .supported
            .get_or_try_init(|| transport.supported())
            .await
        {
            Ok(true) => self.inner.mode.load(Ordering::Acquire) != MODE_PLAIN,
            Ok(false) => {
                if self.inner.mode.swap(MODE_PLAIN, Ordering::AcqRel) != MODE_PLAIN {
                    tracing::info!("server has no batch writes, uploading with PUT");
                }
                false
            }
            // Asked again by the next upload; this one's PUT reports the cause.
            Err(error) => {
                tracing::warn!(%error, "could not ask the server about batch writes");
                false
            }
        }
    }

    /// Batch writes sent so far (for tests).
    #[cfg(test)]
    pub(crate) fn batches_sent(&self) -> u64 {
        self.inner.batches_sent.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// The pending uploads as a batch to send now, if it is time (see the module
    /// documentation); counts it as on its way.
    fn take_ready(&self, state: &mut State) -> Option<Vec<Waiter>> {
        let full =
            state.pending.len() >= self.limits.objects || state.pending_bytes >= self.limits.bytes;
        if state.pending.is_empty() || !(full || state.in_flight < self.limits.in_flight) {
            return None;
        }
        state.in_flight += 1;
        state.pending_bytes = 0;
        Some(std::mem::take(&mut state.pending))
    }

    /// Sends `batch`, answers its callers, then whatever gathered meanwhile.
    async fn send(self: Arc<Self>, mut batch: Vec<Waiter>) {
        loop {
            self.send_one(batch).await;
            let next = {
                let mut state = lock(&self.state);
                state.in_flight -= 1;
                self.take_ready(&mut state)
            };
            match next {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    async fn send_one(&self, batch: Vec<Waiter>) {
        let objects = batch
            .iter()
            .map(|waiter| (waiter.key.clone(), waiter.data.clone()))
            .collect();
        self.batches_sent.fetch_add(1, Ordering::Relaxed);
        match self.transport.create(objects).await {
            Ok(created) if created.len() == batch.len() => {
                self.mode.store(MODE_BATCH, Ordering::Release);
                for (waiter, created) in batch.into_iter().zip(created) {
                    let _ = waiter.reply.send(Some(created));
                }
                return;
            }
            Ok(created) => tracing::warn!(
                objects = batch.len(),
                answers = created.len(),
                "batch write answered for the wrong number of objects, using PUT"
            ),
            Err(error) => {
                if error.refuses_extension()
                    && self
                        .mode
                        .compare_exchange(
                            MODE_UNKNOWN,
                            MODE_PLAIN,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                {
                    tracing::info!(%error, "server refused a batch write, uploading with PUT");
                } else {
                    tracing::warn!(%error, objects = batch.len(), "batch write failed, using PUT");
                }
            }
        }
        for waiter in batch {
            let _ = waiter.reply.send(None);
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Every change under the lock leaves the state whole: a panic elsewhere
    // while it was held is no reason to stop.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// How the fake server answers batch writes.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        /// Creates what is missing.
        Store,
        /// Refuses like a plain S3 server.
        Refuse,
        /// Fails like a node that is restarting.
        Unavailable,
    }

    /// A fake node: a set of stored keys behind a slow batch write.
    struct Fake {
        supported: bool,
        answer: Arc<Mutex<Answer>>,
        stored: Arc<Mutex<HashSet<String>>>,
        calls: Arc<AtomicUsize>,
        largest: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
        most_running: Arc<AtomicUsize>,
    }

    impl BatchWrite for Fake {
        fn supported(&self) -> BoxFuture<'static, Result<bool, NodeClientError>> {
            let supported = self.supported;
            Box::pin(async move { Ok(supported) })
        }

        fn create(
            &self,
            objects: Vec<(String, Bytes)>,
        ) -> BoxFuture<'static, Result<Vec<bool>, NodeClientError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(objects.len(), Ordering::SeqCst);
            let answer = *self.answer.lock().unwrap();
            let stored = Arc::clone(&self.stored);
            let running = Arc::clone(&self.running);
            let most = Arc::clone(&self.most_running);
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                match answer {
                    Answer::Store => {
                        let mut stored = stored.lock().unwrap();
                        Ok(objects
                            .into_iter()
                            .map(|(key, _)| stored.insert(key))
                            .collect())
                    }
                    Answer::Refuse => Err(NodeClientError::Status {
                        status: 405,
                        body: "<Error><Code>MethodNotAllowed</Code></Error>".into(),
                    }),
                    Answer::Unavailable => Err(NodeClientError::Status {
                        status: 503,
                        body: "<Error><Code>ServiceUnavailable</Code></Error>".into(),
                    }),
                }
            })
        }
    }

    struct Bed {
        batcher: PutBatcher,
        answer: Arc<Mutex<Answer>>,
        stored: Arc<Mutex<HashSet<String>>>,
        calls: Arc<AtomicUsize>,
        largest: Arc<AtomicUsize>,
        most_running: Arc<AtomicUsize>,
    }

    fn bed(supported: bool, answer: Answer, limits: Limits) -> Bed {
        let fake = Fake {
            supported,
            answer: Arc::new(Mutex::new(answer)),
            stored: Arc::new(Mutex::new(HashSet::from(["k0".to_owned()]))),
            calls: Arc::new(AtomicUsize::new(0)),
            largest: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            most_running: Arc::new(AtomicUsize::new(0)),
        };
        Bed {
            answer: Arc::clone(&fake.answer),
            stored: Arc::clone(&fake.stored),
            calls: Arc::clone(&fake.calls),
            largest: Arc::clone(&fake.largest),
            most_running: Arc::clone(&fake.most_running),
            batcher: PutBatcher::new(Box::new(fake), limits),
        }
    }

    const LIMITS: Limits = Limits {
        objects: 8,
        bytes: 1 << 20,
        in_flight: 2,
    };

    async fn put_all(batcher: &PutBatcher, count: usize) -> Vec<Option<bool>> {
        let puts = (0..count).map(|i| batcher.create(format!("k{i}"), Bytes::from(vec![1; 100])));
        futures::future::join_all(puts).await
    }

    #[tokio::test]
    async fn concurrent_uploads_share_batches_and_get_their_own_answers() {
        let bed = bed(true, Answer::Store, LIMITS);
        let answers = put_all(&bed.batcher, 40).await;
        assert_eq!(answers[0], Some(false), "k0 was there");
        assert!(answers[1..].iter().all(|a| *a == Some(true)), "{answers:?}");
        assert_eq!(bed.stored.lock().unwrap().len(), 40);
        let calls = bed.calls.load(Ordering::SeqCst);
        assert!(calls < 40 / 2, "{calls} batches for 40 uploads");
        assert_eq!(bed.largest.load(Ordering::SeqCst), LIMITS.objects);
        assert_eq!(bed.batcher.batches_sent(), calls as u64);
    }

    #[tokio::test]
    async fn a_lone_upload_goes_at_once_and_batches_stay_within_their_limits() {
        let bed = bed(true, Answer::Store, LIMITS);
        let started = std::time::Instant::now();
        assert_eq!(
            bed.batcher
                .create("k1".into(), Bytes::from_static(b"x"))
                .await,
            Some(true)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(bed.calls.load(Ordering::SeqCst), 1);
        // Uploads of 300 KiB: four make a batch over the byte limit.
        let puts = (0..12).map(|i| {
            bed.batcher
                .create(format!("big{i}"), Bytes::from(vec![2; 300 << 10]))
        });
        let answers = futures::future::join_all(puts).await;
        assert!(answers.iter().all(|a| *a == Some(true)));
        assert!(bed.largest.load(Ordering::SeqCst) <= 4);
        // Full batches may exceed the in-flight count, partial ones never do.
        assert!(bed.most_running.load(Ordering::SeqCst) <= 4);
    }

    #[tokio::test]
    async fn a_server_without_batches_gets_plain_puts_from_the_start() {
        let bed = bed(false, Answer::Store, LIMITS);
        assert_eq!(put_all(&bed.batcher, 20).await, vec![None; 20]);
        assert_eq!(bed.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refused_first_batch_switches_to_plain_puts_for_good() {
        let bed = bed(true, Answer::Refuse, LIMITS);
        assert_eq!(put_all(&bed.batcher, 20).await, vec![None; 20]);
        let calls = bed.calls.load(Ordering::SeqCst);
        assert!(calls >= 1);
        *bed.answer.lock().unwrap() = Answer::Store;
        assert_eq!(put_all(&bed.batcher, 20).await, vec![None; 20]);
        assert_eq!(bed.calls.load(Ordering::SeqCst), calls, "tried again");
    }

    #[tokio::test]
    async fn a_failed_batch_sends_only_its_own_uploads_to_put() {
        let bed = bed(true, Answer::Store, LIMITS);
        assert_eq!(put_all(&bed.batcher, 4).await[1], Some(true));
        *bed.answer.lock().unwrap() = Answer::Unavailable;
        assert_eq!(put_all(&bed.batcher, 10).await, vec![None; 10]);
        // A node that failed once (even with a 4xx) is tried again.
        *bed.answer.lock().unwrap() = Answer::Refuse;
        assert_eq!(put_all(&bed.batcher, 2).await, vec![None; 2]);
        *bed.answer.lock().unwrap() = Answer::Store;
        let later = bed.batcher.create("later".into(), Bytes::from_static(b"y"));
        assert_eq!(later.await, Some(true));
    }
}
