//! An object store that misbehaves on purpose, for tests that drive a whole repository
//! through storage faults (the model is Neon's `UnreliableWrapper`).
//!
//! [`UnreliableStore`] wraps any `object_store` implementation and, on each request,
//! draws from a seeded random generator whether to:
//!
//! - fail it before it reaches the store ([`Fault::Error`]);
//! - apply it and lose the reply ([`Fault::LostReply`]): the write or delete happened,
//!   the caller is told it failed;
//! - deliver it twice ([`Fault::Duplicate`]): the caller sees the answer to the second
//!   delivery (`AlreadyExists` for a create-only write that the first one applied);
//! - return fewer bytes than stored, without an error ([`Fault::ShortRead`]);
//! - end a listing part way with an error ([`Fault::ListError`]);
//! - delay it ([`Fault::Delay`], drawn separately, on top of any other fault).
//!
//! Faults can be switched off ([`UnreliableStore::set_enabled`]) to look at what the
//! faults left behind through the same store. Every injected fault is counted
//! ([`UnreliableStore::counts`]). Task interleavings still vary from run to run, so
//! one seed fixes the sequence of draws, not which request gets which fault.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How often each fault is injected: probabilities per request, each in `0.0..=1.0`.
/// The faults that apply to a request (see [`Fault`]) are drawn from one number, so
/// their sum over one kind of request should stay below 1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    /// A request fails before it reaches the store.
    pub error: f64,
    /// A write or delete is applied and its reply lost.
    pub lost_reply: f64,
    /// A write or delete is delivered twice.
    pub duplicate: f64,
    /// A read returns a prefix of the object, without an error.
    pub short_read: f64,
    /// A listing fails after some of its entries.
    pub list_error: f64,
    /// A request waits up to [`FaultRates::max_delay`] first.
    pub delay: f64,
    /// The longest injected delay.
    pub max_delay: Duration,
}

/// One injected misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request failed before it reached the store.
    Error,
    /// The request was applied; its reply was lost.
    LostReply,
    /// The request was delivered twice; the caller got the second answer.
    Duplicate,
    /// A read returned fewer bytes than stored.
    ShortRead,
    /// A listing ended with an error part way.
    ListError,
    /// The request was delayed.
    Delay,
}

const FAULTS: [Fault; 6] = [
    Fault::Error,
    Fault::LostReply,
    Fault::Duplicate,
    Fault::ShortRead,
    Fault::ListError,
    Fault::Delay,
];

/// The number of faults of each kind injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// [`Fault::Error`].
    pub errors: u64,
    /// [`Fault::LostReply`].
    pub lost_replies: u64,
    /// [`Fault::Duplicate`].
    pub duplicates: u64,
    /// [`Fault::ShortRead`].
    pub short_reads: u64,
    /// [`Fault::ListError`].
    pub list_errors: u64,
    /// [`Fault::Delay`].
    pub delays: u64,
}

impl FaultCounts {
    /// Every fault injected, of any kind but delays.
    pub fn failures(&self) -> u64 {
        self.errors + self.lost_replies + self.duplicates + self.short_reads + self.list_errors
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} errors, {} lost replies, {} duplicates, {} short reads, {} list errors, {} delays",
            self.errors,
            self.lost_replies,
            self.duplicates,
            self.short_reads,
            self.list_errors,
            self.delays
        )
    }
}

/// The kind of a request, which decides the faults that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Write,
    Delete,
    Read,
    Head,
    List,
}

impl Request {
    fn allows(self, fault: Fault) -> bool {
        match fault {
            Fault::Error | Fault::Delay => true,
            Fault::LostReply | Fault::Duplicate => matches!(self, Request::Write | Request::Delete),
            Fault::ShortRead => self == Request::Read,
            Fault::ListError => self == Request::List,
        }
    }
}

/// What one request gets: at most one failure, and maybe a delay.
#[derive(Debug, Clone, Copy)]
struct Draw {
    fault: Option<Fault>,
    delay: Option<Duration>,
    /// A second number for the fault's details (where a short read or listing ends).
    detail: f64,
}

/// The state shared with the streams a listing or a deletion returns.
#[derive(Debug)]
struct Shared {
    inner: Arc<dyn ObjectStore>,
    rates: FaultRates,
    rng: Mutex<StdRng>,
    enabled: AtomicBool,
    counts: [AtomicU64; FAULTS.len()],
}

impl Shared {
    fn draw(&self, request: Request) -> Draw {
        let none = Draw {
            fault: None,
            delay: None,
            detail: 0.0,
        };
        if !self.enabled.load(Ordering::SeqCst) {
            return none;
        }
        let (pick, delay_pick, delay_len, detail) = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            (
                rng.random::<f64>(),
                rng.random::<f64>(),
                rng.random::<f64>(),
                rng.random::<f64>(),
            )
        };
        let mut threshold = 0.0;
        let mut fault = None;
        for candidate in FAULTS {
            if candidate == Fault::Delay || !request.allows(candidate) {
                continue;
            }
            threshold += self.rate(candidate);
            if pick < threshold {
                fault = Some(candidate);
                break;
            }
        }
        let delay =
            (delay_pick < self.rates.delay).then(|| self.rates.max_delay.mul_f64(delay_len));
        if let Some(fault) = fault {
            self.count(fault);
        }
        if delay.is_some() {
            self.count(Fault::Delay);
        }
        Draw {
            fault,
            delay,
            detail,
        }
    }

    fn rate(&self, fault: Fault) -> f64 {
        match fault {
            Fault::Error => self.rates.error,
            Fault::LostReply => self.rates.lost_reply,
            Fault::Duplicate => self.rates.duplicate,
            Fault::ShortRead => self.rates.short_read,
            Fault::ListError => self.rates.list_error,
            Fault::Delay => self.rates.delay,
        }
    }

    fn count(&self, fault: Fault) {
        let slot = FAULTS
            .iter()
            .position(|candidate| *candidate == fault)
            .unwrap_or(0);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for the draw's delay and fails a request drawn [`Fault::Error`].
    async fn before(&self, draw: &Draw, what: &str, location: &Path) -> Result<()> {
        if let Some(delay) = draw.delay {
            tokio::time::sleep(delay).await;
        }
        match draw.fault {
            Some(Fault::Error) => Err(injected(what, location, "request failed")),
            _ => Ok(()),
        }
    }

    /// Deletes `location` as `draw` says: applied with its reply lost, or twice.
    async fn delete(&self, location: Path, draw: Draw) -> Result<Path> {
        self.before(&draw, "delete", &location).await?;
        let result = self.inner.delete(&location).await;
        match draw.fault {
            Some(Fault::LostReply) => Err(injected("delete", &location, "reply lost")),
            Some(Fault::Duplicate) => self.inner.delete(&location).await.map(|()| location),
            _ => result.map(|()| location),
        }
    }
}

/// An object store that injects [`Fault`]s into the requests it passes to another.
#[derive(Debug, Clone)]
pub struct UnreliableStore {
    shared: Arc<Shared>,
}

impl UnreliableStore {
    /// Wraps `inner`, injecting faults at `rates` drawn from a generator seeded with
    /// `seed`. Faults are on from the start.
    pub fn new(inner: Arc<dyn ObjectStore>, rates: FaultRates, seed: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner,
                rates,
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                enabled: AtomicBool::new(true),
                counts: Default::default(),
            }),
        }
    }

    /// Turns fault injection on or off (off: every request passes through unchanged).
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        let count = |fault: Fault| {
            let slot = FAULTS
                .iter()
                .position(|candidate| *candidate == fault)
                .unwrap_or(0);
            self.shared.counts[slot].load(Ordering::Relaxed)
        };
        FaultCounts {
            errors: count(Fault::Error),
            lost_replies: count(Fault::LostReply),
            duplicates: count(Fault::Duplicate),
            short_reads: count(Fault::ShortRead),
            list_errors: count(Fault::ListError),
            delays: count(Fault::Delay),
        }
    }

    fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.inner
    }
}

impl fmt::Display for UnreliableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unreliable({})", self.shared.inner)
    }
}

/// The error of an injected fault.
fn injected(what: &str, location: &Path, why: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "unreliable",
        source: format!("injected fault: {what} {location}: {why}").into(),
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for UnreliableStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let draw = self.shared.draw(Request::Write);
        self.shared.before(&draw, "put", location).await?;
        let result = self
            .inner()
            .put_opts(location, payload.clone(), opts.clone())
            .await;
        match draw.fault {
            Some(Fault::LostReply) => Err(injected("put", location, "reply lost")),
            Some(Fault::Duplicate) => self.inner().put_opts(location, payload, opts).await,
            _ => result,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let draw = self.shared.draw(Request::Write);
        self.shared.before(&draw, "multipart put", location).await?;
        self.inner().put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let request = if options.head {
            Request::Head
        } else {
            Request::Read
        };
        let draw = self.shared.draw(request);
        self.shared.before(&draw, "get", location).await?;
        let result = self.inner().get_opts(location, options).await?;
        if draw.fault != Some(Fault::ShortRead) {
            return Ok(result);
        }
        let GetResult {
            meta,
            range,
            attributes,
            extensions,
            payload,
        } = result;
        let whole = GetResult {
            payload,
            meta: meta.clone(),
            range: range.clone(),
            attributes: attributes.clone(),
            extensions: extensions.clone(),
        }
        .bytes()
        .await?;
        // A strict prefix (empty for a one-byte object): what a connection cut while
        // the body streams leaves, when the client does not check the length.
        let kept = (whole.len() as f64 * draw.detail) as usize;
        let short: Bytes = whole.slice(..kept.min(whole.len().saturating_sub(1)));
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(short) }).boxed()),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>> {
        let draw = self.shared.draw(Request::Read);
        self.shared.before(&draw, "get ranges", location).await?;
        self.inner().get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let shared = self.shared.clone();
        locations
            .and_then(move |location| {
                let shared = shared.clone();
                async move {
                    let draw = shared.draw(Request::Delete);
                    shared.delete(location, draw).await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let stream = self.inner().list(prefix);
        self.unreliable_listing(stream, prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let stream = self.inner().list_with_offset(prefix, offset);
        self.unreliable_listing(stream, prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let draw = self.shared.draw(Request::List);
        let location = prefix.cloned().unwrap_or_default();
        self.shared.before(&draw, "list", &location).await?;
        if draw.fault == Some(Fault::ListError) {
            return Err(injected("list", &location, "listing cut off"));
        }
        self.inner().list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let draw = self.shared.draw(Request::Write);
        self.shared.before(&draw, "copy", to).await?;
        let result = self.inner().copy_opts(from, to, options.clone()).await;
        match draw.fault {
            Some(Fault::LostReply) => Err(injected("copy", to, "reply lost")),
            Some(Fault::Duplicate) => self.inner().copy_opts(from, to, options).await,
            _ => result,
        }
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let draw = self.shared.draw(Request::Write);
        self.shared.before(&draw, "rename", to).await?;
        let result = self.inner().rename_opts(from, to, options).await;
        match draw.fault {
            Some(Fault::LostReply) => Err(injected("rename", to, "reply lost")),
            _ => result,
        }
    }
}

impl UnreliableStore {
    /// `stream`, delayed or cut off with an error after some of its entries as drawn.
    fn unreliable_listing(
        &self,
        stream: BoxStream<'static, Result<ObjectMeta>>,
        prefix: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let shared = self.shared.clone();
        let location = prefix.cloned().unwrap_or_default();
        futures::stream::once(async move {
            let draw = shared.draw(Request::List);
            if let Err(error) = shared.before(&draw, "list", &location).await {
                return futures::stream::once(async { Err(error) }).boxed();
            }
            if draw.fault != Some(Fault::ListError) {
                return stream;
            }
            let entries: Vec<Result<ObjectMeta>> = stream.collect().await;
            let kept = (entries.len() as f64 * draw.detail) as usize;
            let cut = injected("list", &location, "listing cut off");
            futures::stream::iter(entries.into_iter().take(kept))
                .chain(futures::stream::once(async { Err(cut) }))
                .boxed()
        })
        .flatten()
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutMode;
    use object_store::memory::InMemory;

    fn store(rates: FaultRates) -> (Arc<InMemory>, UnreliableStore) {
        let inner = Arc::new(InMemory::new());
        (inner.clone(), UnreliableStore::new(inner, rates, 7))
    }

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_lost_reply_leaves_the_write_applied() {
        let (inner, unreliable) = store(FaultRates {
            lost_reply: 1.0,
            ..FaultRates::default()
        });
        let key = Path::from("a/b");
        let put = unreliable.put_opts(&key, "x".into(), create()).await;
        assert!(put.is_err(), "{put:?}");
        assert_eq!(inner.get(&key).await.unwrap().bytes().await.unwrap(), "x");
        assert_eq!(unreliable.counts().lost_replies, 1);
    }

    #[tokio::test]
    async fn a_duplicated_create_answers_already_exists() {
        let (inner, unreliable) = store(FaultRates {
            duplicate: 1.0,
            ..FaultRates::default()
        });
        let key = Path::from("a/b");
        let put = unreliable.put_opts(&key, "x".into(), create()).await;
        assert!(
            matches!(put, Err(object_store::Error::AlreadyExists { .. })),
            "{put:?}"
        );
        assert_eq!(inner.get(&key).await.unwrap().bytes().await.unwrap(), "x");
    }

    #[tokio::test]
    async fn short_reads_are_strict_prefixes_and_errors_apply_nothing() {
        let (inner, unreliable) = store(FaultRates {
            short_read: 1.0,
            ..FaultRates::default()
        });
        let key = Path::from("a/b");
        inner.put(&key, "0123456789".into()).await.unwrap();
        for _ in 0..20 {
            let read = unreliable.get(&key).await.unwrap().bytes().await.unwrap();
            assert!(
                read.len() < 10 && b"0123456789".starts_with(&read),
                "{read:?}"
            );
        }
        unreliable.set_enabled(false);
        assert_eq!(
            unreliable
                .get(&key)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            10
        );

        let (inner, unreliable) = store(FaultRates {
            error: 1.0,
            ..FaultRates::default()
        });
        assert!(unreliable.put(&key, "x".into()).await.is_err());
        assert!(unreliable.delete(&key).await.is_err());
        assert!(inner.head(&key).await.is_err(), "a failed put wrote");
    }

    #[tokio::test]
    async fn a_cut_listing_ends_in_an_error() {
        let (inner, unreliable) = store(FaultRates {
            list_error: 1.0,
            ..FaultRates::default()
        });
        for number in 0..10 {
            inner
                .put(&Path::from(format!("p/{number}")), "x".into())
                .await
                .unwrap();
        }
        let listed: Vec<Result<ObjectMeta>> =
            unreliable.list(Some(&Path::from("p"))).collect().await;
        assert!(
            listed.last().is_some_and(|last| last.is_err()),
            "{listed:?}"
        );
        assert!(listed.len() <= 11);
        assert_eq!(unreliable.counts().list_errors, 1);
    }
}
