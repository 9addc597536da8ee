//! An object store that ignores create-only conditions, as some S3 implementations
//! do with `If-None-Match: *`: for the tests that check Haven refuses such a store
//! before it relies on one.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Passes every request to another store, with create-only writes and copies turned
/// into overwrites: a condition the store accepts and does not honour.
#[derive(Debug, Clone)]
pub struct ConditionIgnoringStore {
    inner: Arc<dyn ObjectStore>,
}

impl ConditionIgnoringStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for ConditionIgnoringStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConditionIgnoring({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ConditionIgnoringStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        if opts.mode == PutMode::Create {
            opts.mode = PutMode::Overwrite;
        }
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
        if options.mode == CopyMode::Create {
            options.mode = CopyMode::Overwrite;
        }
        self.inner.copy_opts(from, to, options).await
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
        let lax = ConditionIgnoringStore::new(memory.clone());
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
