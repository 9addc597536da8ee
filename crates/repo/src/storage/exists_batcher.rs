//! Turns many concurrent single-key existence checks into a few batch queries.
//!
//! The backup pipeline asks "does this chunk exist?" once per chunk from many
//! tasks at once. Against a Haven storage node one `POST ?haven-exists=`
//! answers thousands of keys, so instead of one HEAD per chunk the batcher
//! collects the questions that arrive within a short window (or until a batch
//! is full), sends one query, and hands each caller its answer. The pipeline
//! does not change: it still asks one key at a time.
//!
//! Fallback, decided once: if the first batch is refused with a client error
//! (a plain S3 server does not know the query), every later check goes
//! straight to HEAD. Any other failure of a batch (network, 5xx, a garbled
//! reply) sends just that batch's callers to HEAD, which either answers or
//! reports the real error; a batch failure alone never fails a backup.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::storage::node_client::{NodeClient, NodeClientError};

/// How long the first question of a batch waits for company.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_millis(2);
/// Keys that make a batch full (sent at once, without waiting).
pub(crate) const DEFAULT_MAX_KEYS: usize = 1000;

/// Where batches go: the storage node client, or a fake in tests.
pub(crate) trait BatchQuery: Send + Sync + 'static {
    /// Which of `keys` exist, one answer per key in order.
    fn query(&self, keys: Vec<String>) -> BoxFuture<'static, Result<Vec<bool>, NodeClientError>>;
}

impl BatchQuery for NodeClient {
    fn query(&self, keys: Vec<String>) -> BoxFuture<'static, Result<Vec<bool>, NodeClientError>> {
        let client = self.clone();
        Box::pin(async move { client.exists(&keys).await })
    }
}

/// Whether batches are known to work.
const MODE_UNKNOWN: u8 = 0;
const MODE_BATCH: u8 = 1;
const MODE_HEAD: u8 = 2;

/// A question waiting for its batch.
struct Waiter {
    key: String,
    reply: oneshot::Sender<Option<bool>>,
}

/// Collects concurrent existence checks into batch queries; cheap to clone.
#[derive(Clone)]
pub(crate) struct ExistsBatcher {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Box<dyn BatchQuery>,
    window: Duration,
    max_keys: usize,
    mode: AtomicU8,
    pending: Mutex<Vec<Waiter>>,
    batches_sent: AtomicU64,
}

impl std::fmt::Debug for ExistsBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistsBatcher")
            .field("window", &self.inner.window)
            .field("max_keys", &self.inner.max_keys)
            .field("mode", &self.inner.mode.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ExistsBatcher {
    /// Batches questions to `transport`, waiting at most `window` for a batch
    /// to fill up to `max_keys`.
    pub(crate) fn new(transport: Box<dyn BatchQuery>, window: Duration, max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                window,
                max_keys: max_keys.max(1),
                mode: AtomicU8::new(MODE_UNKNOWN),
                pending: Mutex::new(Vec::new()),
                batches_sent: AtomicU64::new(0),
            }),
        }
    }

    /// Whether `key` exists; `None` means "ask with HEAD" (the server does
    /// not support batches, or this batch failed).
    pub(crate) async fn exists(&self, key: String) -> Option<bool> {
        if self.inner.mode.load(Ordering::Acquire) == MODE_HEAD {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let (full, first) = {
            let mut pending = lock(&self.inner.pending);
            pending.push(Waiter { key, reply });
            if pending.len() >= self.inner.max_keys {
                (Some(std::mem::take(&mut *pending)), false)
            } else {
                (None, pending.len() == 1)
            }
        };
        // The batch is sent from a task of its own, so a caller that gives up
        // (its future dropped) never strands the others. Its query belongs to the
        // trace of the caller that fills the batch or opens it.
        if let Some(batch) = full {
            tokio::spawn(
                Arc::clone(&self.inner)
                    .send(batch)
                    .instrument(tracing::Span::current()),
            );
        } else if first {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(
                async move {
                    tokio::time::sleep(inner.window).await;
                    // May take a newer batch if this one left full: it is then
                    // merely sent a little early.
                    let batch = std::mem::take(&mut *lock(&inner.pending));
                    if !batch.is_empty() {
                        inner.send(batch).await;
                    }
                }
                .instrument(tracing::Span::current()),
            );
        }
        answer.await.ok().flatten()
    }

    /// Batch requests sent so far (for tests and logs).
    #[cfg(test)]
    pub(crate) fn batches_sent(&self) -> u64 {
        self.inner.batches_sent.load(Ordering::Relaxed)
    }
}

impl Inner {
    async fn send(self: Arc<Self>, batch: Vec<Waiter>) {
        let keys: Vec<String> = batch.iter().map(|w| w.key.clone()).collect();
        self.batches_sent.fetch_add(1, Ordering::Relaxed);
        let result = self.transport.query(keys).await;
        match result {
            Ok(found) if found.len() == batch.len() => {
                self.mode.store(MODE_BATCH, Ordering::Release);
                for (waiter, exists) in batch.into_iter().zip(found) {
                    let _ = waiter.reply.send(Some(exists));
                }
                return;
            }
            Ok(found) => {
                tracing::warn!(
                    keys = batch.len(),
                    answers = found.len(),
                    "existence batch answered the wrong number of keys, using HEAD"
                );
            }
            Err(error) => {
                let refused = error.refuses_extension();
                if refused
                    && self
                        .mode
                        .compare_exchange(
                            MODE_UNKNOWN,
                            MODE_HEAD,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                {
                    tracing::info!(%error, "server has no batch existence query, using HEAD");
                } else if refused && self.mode.load(Ordering::Acquire) == MODE_HEAD {
                    // A batch sent before the first refusal came back: said once above.
                    tracing::debug!(%error, keys = batch.len(), "existence batch refused, using HEAD");
                } else {
                    tracing::warn!(%error, keys = batch.len(), "existence batch failed, using HEAD");
                }
            }
        }
        for waiter in batch {
            let _ = waiter.reply.send(None);
        }
    }
}

fn lock(pending: &Mutex<Vec<Waiter>>) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
    // A panic while holding the lock cannot leave the vector inconsistent.
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    /// A fake node: answers from a set, or refuses like plain S3.
    struct Fake {
        stored: HashSet<String>,
        supported: bool,
        calls: Arc<AtomicUsize>,
        largest: Arc<AtomicUsize>,
    }

    impl BatchQuery for Fake {
        fn query(
            &self,
            keys: Vec<String>,
        ) -> BoxFuture<'static, Result<Vec<bool>, NodeClientError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(keys.len(), Ordering::SeqCst);
            let answer = if self.supported {
                Ok(keys.iter().map(|k| self.stored.contains(k)).collect())
            } else {
                Err(NodeClientError::Status {
                    status: 405,
                    body: "<Error><Code>MethodNotAllowed</Code></Error>".into(),
                })
            };
            Box::pin(async move { answer })
        }
    }

    fn fake(
        supported: bool,
        max_keys: usize,
    ) -> (ExistsBatcher, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let stored = (0..100)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("k{i}"))
            .collect();
        let transport = Fake {
            stored,
            supported,
            calls: Arc::clone(&calls),
            largest: Arc::clone(&largest),
        };
        let batcher = ExistsBatcher::new(Box::new(transport), Duration::from_millis(5), max_keys);
        (batcher, calls, largest)
    }

    async fn ask_all(batcher: &ExistsBatcher) -> Vec<Option<bool>> {
        let questions = (0..100).map(|i| batcher.exists(format!("k{i}")));
        futures::future::join_all(questions).await
    }

    #[tokio::test]
    async fn concurrent_questions_share_batches_and_get_their_own_answers() {
        let (batcher, calls, largest) = fake(true, 1000);
        let answers = ask_all(&batcher).await;
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(*answer, Some(i % 3 == 0), "key k{i}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(largest.load(Ordering::SeqCst), 100);
        assert_eq!(batcher.batches_sent(), 1);
    }

    #[tokio::test]
    async fn a_full_batch_is_sent_without_waiting() {
        let (batcher, calls, largest) = fake(true, 10);
        let answers = ask_all(&batcher).await;
        assert!(answers.iter().all(Option::is_some));
        assert_eq!(calls.load(Ordering::SeqCst), 10);
        assert_eq!(largest.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn plain_s3_switches_to_head_after_the_first_refusal() {
        let (batcher, calls, _) = fake(false, 1000);
        let answers = ask_all(&batcher).await;
        assert!(answers.iter().all(Option::is_none), "first batch: HEAD");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Detected once: later questions never try a batch again.
        assert_eq!(ask_all(&batcher).await, vec![None; 100]);
        assert_eq!(batcher.exists("k3".into()).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_single_question_is_answered_after_the_window() {
        let (batcher, calls, _) = fake(true, 1000);
        let started = std::time::Instant::now();
        assert_eq!(batcher.exists("k3".into()).await, Some(true));
        assert_eq!(batcher.exists("k4".into()).await, Some(false));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
