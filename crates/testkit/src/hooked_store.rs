//! A store that passes every request to another, with a hook that sees each put and
//! copy first: for the tests that need a store to misbehave in one way only, such as
//! one that ignores create-only conditions (as some S3 implementations do with
//! `If-None-Match: *`, which Haven must refuse before relying on it) or one slow to
//! answer puts.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What a [`HookedStore`] does besides passing requests on; each method defaults to
/// nothing.
#[async_trait]
pub trait StoreHook: fmt::Debug + Send + Sync + 'static {
    /// Runs before each put of `location`; may change its options or hold it.
    async fn before_put(&self, location: &Path, opts: &mut PutOptions) {
        let _ = (location, opts);
    }

    /// Runs before each copy; may change its options.
    fn before_copy(&self, options: &mut CopyOptions) {
        let _ = options;
    }
}

/// Passes every request to another store, running its hook before puts and copies.
#[derive(Debug)]
pub struct HookedStore<H> {
    inner: Arc<dyn ObjectStore>,
    hook: H,
}

impl<H: StoreHook> HookedStore<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The hook, for a test to read what it recorded.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

impl<H: StoreHook> fmt::Display for HookedStore<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self.hook, self.inner)
    }
}

#[async_trait]
impl<H: StoreHook> ObjectStore for HookedStore<H> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        self.hook.before_put(location, &mut opts).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, mut options: CopyOptions) -> Result<()> {
        self.hook.before_copy(&mut options);
        self.inner.copy_opts(from, to, options).await
    }
}

/// Turns create-only writes and copies into overwrites: a condition the store
/// accepts and does not honour.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreCreateOnly;

#[async_trait]
impl StoreHook for IgnoreCreateOnly {
    async fn before_put(&self, _location: &Path, opts: &mut PutOptions) {
        if opts.mode == PutMode::Create {
            opts.mode = PutMode::Overwrite;
        }
    }

    fn before_copy(&self, options: &mut CopyOptions) {
        if options.mode == CopyMode::Create {
            options.mode = CopyMode::Overwrite;
        }
    }
}

#[cfg(test)]
mod tests {
    use haven_repo::{Backend, RepoError, Repository};
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn repo_init_refuses_a_store_that_ignores_create_only_writes() {
        let memory = Arc::new(InMemory::new());
        let lax = HookedStore::new(memory.clone(), IgnoreCreateOnly);
        let backend = Backend::over_object_store("lax://", Arc::new(lax));
        let refused = Repository::init(backend.clone(), b"password", 1 << 20).await;
        let err = refused.expect_err("init on a store ignoring If-None-Match");
        assert!(
            matches!(err, RepoError::NoCreateOnlyWrites(ref at) if at == "lax://"),
            "{err}"
        );
        assert!(err.to_string().contains("If-None-Match"), "{err}");
        // Nothing makes it a repository: a later open says there is none.
        let open = Repository::open(backend, b"password").await;
        assert!(
            matches!(open, Err(RepoError::NotARepository(_))),
            "{:?}",
            open.err()
        );

        // The same store honouring the condition takes the repository.
        let strict = Backend::over_object_store("memory://", memory);
        Repository::init(strict, b"password", 1 << 20)
            .await
            .expect("init where create-only writes hold");
    }
}
