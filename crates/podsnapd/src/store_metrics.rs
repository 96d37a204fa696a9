//! An [`ObjectStore`] wrapper that records request latency and failures per method into the
//! daemon's metrics (`podsnap_store_request_duration_seconds`, `podsnap_store_errors_total`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use podsnap_store::Store;

use crate::metrics::Metrics;

pub fn instrument(store: Store, metrics: Arc<Metrics>) -> Store {
    store.map_object_store(|inner| Arc::new(Instrumented { inner, metrics }))
}

struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

impl fmt::Display for Instrumented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl Instrumented {
    async fn timed<T>(
        &self,
        method: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let t = Instant::now();
        let r = fut.await;
        // A create-only put that finds the object, and a get of a missing object, are answers,
        // not store errors.
        let ok = match &r {
            Ok(_) => true,
            Err(
                object_store::Error::NotFound { .. } | object_store::Error::AlreadyExists { .. },
            ) => true,
            Err(_) => false,
        };
        self.metrics.store_request(method, t.elapsed(), ok);
        r
    }
}

#[async_trait::async_trait]
impl ObjectStore for Instrumented {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.timed("put", self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.timed(
            "put_multipart",
            self.inner.put_multipart_opts(location, opts),
        )
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.timed("get", self.inner.get_opts(location, options))
            .await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<bytes::Bytes> {
        self.timed("get_range", self.inner.get_range(location, range))
            .await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.timed("get_range", self.inner.get_ranges(location, ranges))
            .await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.timed("head", self.inner.head(location)).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.timed("delete", self.inner.delete(location)).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.timed("list", self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.timed("copy", self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.timed("copy", self.inner.copy_if_not_exists(from, to))
            .await
    }
}
