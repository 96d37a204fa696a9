//! podsnap-store: the snapshot format, the chunk pipeline, manifests, retention and garbage
//! collection, over any [`object_store::ObjectStore`].
//!
//! # Layers
//!
//! [`Store`] (this module) is what the daemon and the CLI call. It drives the push pipeline
//! (`push`), the verified pull (`pull`), lazy images served page by page (`lazy`) and the admin operations (`admin`: list, delete,
//! retention, gc). Those work on three kinds of objects, described by `manifest` and `index`,
//! whose bytes come from `chunk` (hashing, compression). `backend` turns a store URL into an
//! object store with bounded retries.
//!
//! # Retries
//!
//! Every object call of the store goes through [`RetryPolicy`]: a transient error
//! (`object_store::Error::Generic`, which is what timeouts, connection and I/O failures become,
//! or a `JoinError`) is retried with exponential backoff and jitter, a bounded number of times;
//! `NotFound`, `AlreadyExists`, `Precondition`, permission and configuration errors never are.
//! The HTTP clients that [`Store::open`] builds for `s3://`, `gs://` and `az://` already retry
//! in their own transport (`backend::retry_config`), so those get [`RetryPolicy::none`];
//! `file://`, `memory://` and any store passed to [`Store::from_object_store`] or
//! [`Store::map_object_store`] get [`RetryPolicy::default`].
//!
//! # Format (version 1.0)
//!
//! Object keys below the store's prefix:
//!
//! ```text
//! manifests/<snapshot id>.json   JSON manifest, written LAST with a create-only put
//! indexes/<sha256 hex>           zstd(binary per-file index), named by sha256 of its plain bytes
//! packs/<sha256 hex>             concatenated blobs (zstd frames or raw bytes), ~4 MiB
//! ```
//!
//! * Files are split into 4 KiB pages. All-zero pages are never stored (pulled files are
//!   sparse there). Every other page is addressed by the sha256 of its uncompressed bytes.
//! * Pages not already known (from the parent snapshot's indexes, or earlier in this push) form
//!   blobs: runs of consecutive new pages, up to 1 MiB, each one zstd level-1 frame, or raw
//!   when zstd saves less than 5%. Blobs are appended to pack objects sealed at ~4 MiB, so a
//!   push writes about one object per 4 MiB of new data however scattered the changes are.
//! * Each file gets an index object (see `index`): the packs and blobs it uses, extents
//!   mapping page runs to blob pages or zeros, and the sha256 of every data page. An unchanged
//!   page of a child snapshot points at the parent's blob; nothing is uploaded for it.
//! * The manifest (see `manifest`) lists files, sizes, modes and index digests, plus the
//!   labels, group, parent, source node facts and runsc image metadata, and its own `digest`.
//! * A pull fetches blobs with ranged GETs (adjacent blobs of one pack coalesced),
//!   decompresses each bounded by its declared size, checks the sha256 of EVERY page, writes
//!   into a sibling temp directory, fsyncs and renames it into place.
//! * Everything read back is untrusted and bounded by `limits`.

mod admin;
mod backend;
pub mod cache;
pub mod chunk;
pub mod crypto;
mod direct;
mod error;
mod id;
pub mod index;
mod lazy;
pub mod limits;
mod manifest;
mod pool;
mod progress;
mod pull;
mod push;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

pub use admin::GcReport;
pub use backend::redact_url;
pub use cache::{CacheEvent, CacheObserver, CachePage, CacheStats, PageCache};
pub use crypto::{Key, Keyring};
pub use error::StoreError;
pub use id::SnapshotId;
pub use lazy::{HotPages, LazyFile, LazyImage, LazyProgress, LazyStatus};
pub use manifest::{
    validate_rel_path, ContainerRecord, ContainerRole, Encryption, FileEntry, IndexRef, Manifest,
    NodeFacts, OverlayMedium, PodRef, SandboxRecord, Totals, FORMAT_VERSION,
    FORMAT_VERSION_ENCRYPTED,
};
pub use object_store;
pub use pool::limit_malloc_arenas;
pub use progress::{NoProgress, Progress, ProgressEvent};
pub use pull::{PrefetchReport, PullOptions, PullReport};
pub use push::{Compression, Follow, PushOptions, PushReport, WriterState};

/// A snapshot store: an object store plus a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    os: Arc<dyn ObjectStore>,
    prefix: String,
    display: String,
    retry: RetryPolicy,
    keys: Arc<Keyring>,
    /// The node-local page cache pulls read from and fill (see `cache`).
    cache: Option<PageCache>,
    /// A `file://` store's directory: objects are fsynced before a manifest names them (the
    /// local backend itself does not fsync).
    local_root: Option<std::path::PathBuf>,
}

/// How the store retries its own object calls after a transient error (see the crate docs).
///
/// The worst case for one call is `attempts` calls plus the sum of the backoffs between them
/// (each at most `max_backoff`, times a jitter factor of 0.75..1.25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in total, at least 1 (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled for every further one.
    pub initial_backoff: Duration,
    /// Longest wait between two calls.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 calls, waits of about 100, 200 and 400 ms: a call fails after ~0.7 s of backoff.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One call, no retry (for clients that retry in their transport).
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Default::default()
        }
    }

    /// Upper bound of the total backoff of one call.
    pub fn max_total_backoff(&self) -> Duration {
        let mut total = Duration::ZERO;
        let mut b = self.initial_backoff;
        for _ in 1..self.attempts.max(1) {
            total += b.mul_f64(1.25);
            b = (b * 2).min(self.max_backoff);
        }
        total
    }
}

/// Errors worth another attempt: the ones that say nothing about the object itself.
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.inner.display)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store named by `url` (see the `backend` table: `file://`, `s3://`, `gs://`,
    /// `az://`, `memory://`). Does not contact the store.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let o = backend::open_url(url)?;
        let retry = if o.client_retries {
            RetryPolicy::none()
        } else {
            RetryPolicy::default()
        };
        Ok(Self::from_parts(
            o.store,
            &o.prefix,
            &o.display,
            retry,
            Default::default(),
            None,
            o.local_root,
        ))
    }

    /// Wraps an existing object store; every key is placed under `prefix`.
    pub fn from_object_store(
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        display_url: &str,
    ) -> Store {
        let prefix = prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        Self::from_parts(
            inner,
            &prefix,
            &redact_url(display_url),
            RetryPolicy::default(),
            Default::default(),
            None,
            None,
        )
    }

    fn from_parts(
        os: Arc<dyn ObjectStore>,
        prefix: &str,
        display: &str,
        retry: RetryPolicy,
        keys: Arc<Keyring>,
        cache: Option<PageCache>,
        local_root: Option<std::path::PathBuf>,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                os,
                prefix: prefix.to_string(),
                display: display.to_string(),
                retry,
                keys,
                cache,
                local_root,
            }),
        }
    }

    /// The same store with a node-local page cache: pulls of unencrypted snapshots take the
    /// pages it holds (verified) instead of downloading them, and store the pages they
    /// download; [`Store::prefetch`] fills it.
    pub fn with_cache(&self, cache: Option<PageCache>) -> Store {
        Self::from_parts(
            self.inner.os.clone(),
            &self.inner.prefix,
            &self.inner.display,
            self.inner.retry,
            self.inner.keys.clone(),
            cache,
            self.inner.local_root.clone(),
        )
    }

    /// The page cache this store's pulls use, if any.
    pub fn cache(&self) -> Option<&PageCache> {
        self.inner.cache.as_ref()
    }

    /// The same store with group keys: a push whose group has a key (its own or the
    /// default) is encrypted, and pulls of encrypted snapshots use them (see `crypto`).
    pub fn with_keyring(&self, keys: Keyring) -> Store {
        Self::from_parts(
            self.inner.os.clone(),
            &self.inner.prefix,
            &self.inner.display,
            self.inner.retry,
            Arc::new(keys),
            self.inner.cache.clone(),
            self.inner.local_root.clone(),
        )
    }

    /// The group keys this store seals and opens snapshots with.
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keys
    }

    /// The same store with another retry policy for its object calls.
    pub fn with_retry(&self, retry: RetryPolicy) -> Store {
        Self::from_parts(
            self.inner.os.clone(),
            &self.inner.prefix,
            &self.inner.display,
            RetryPolicy {
                attempts: retry.attempts.max(1),
                ..retry
            },
            self.inner.keys.clone(),
            self.inner.cache.clone(),
            self.inner.local_root.clone(),
        )
    }

    /// The retry policy of this store's object calls.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// The store URL without credentials, for logs and messages.
    pub fn display_url(&self) -> &str {
        &self.inner.display
    }

    /// The same store (prefix, display URL) over a wrapped object store: instrumentation,
    /// fault injection. The wrapper may fail where the inner client would not, so the result
    /// retries with at least [`RetryPolicy::default`].
    pub fn map_object_store(
        &self,
        f: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> Store {
        let retry = if self.inner.retry.attempts > 1 {
            self.inner.retry
        } else {
            RetryPolicy::default()
        };
        Self::from_parts(
            f(self.inner.os.clone()),
            &self.inner.prefix,
            &self.inner.display,
            retry,
            self.inner.keys.clone(),
            self.inner.cache.clone(),
            self.inner.local_root.clone(),
        )
    }

    /// The underlying object store (tests, tooling).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.os
    }
}

pub(crate) const MANIFESTS: &str = "manifests";
pub(crate) const INDEXES: &str = "indexes";
pub(crate) const PACKS: &str = "packs";

/// fsync of a file or directory.
pub(crate) fn fsync_path(p: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(p)
        .and_then(|h| h.sync_all())
        .map_err(|e| StoreError::io("fsync", p, e))
}

impl Inner {
    /// For a `file://` store, the file behind `key`.
    pub(crate) fn local_file(&self, key: &str) -> Option<std::path::PathBuf> {
        let root = self.local_root.as_ref()?;
        Some(root.join(self.path(key).as_ref()))
    }

    /// Makes objects durable before something names them: on a `file://` store, fsyncs the
    /// files behind `files`, then the directories holding them and those holding
    /// `synced_files` (objects whose contents were fsynced already, by [`Inner::sync_object`]).
    /// object_store's local backend writes and renames without fsync. Nothing to do on other
    /// stores: a completed put is durable.
    pub(crate) async fn make_durable(
        &self,
        files: &[String],
        synced_files: &[String],
    ) -> Result<(), StoreError> {
        let local = |keys: &[String]| -> Vec<std::path::PathBuf> {
            keys.iter().filter_map(|k| self.local_file(k)).collect()
        };
        let (files, synced) = (local(files), local(synced_files));
        if files.is_empty() && synced.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            for f in &files {
                fsync_path(f)?;
            }
            let dirs: std::collections::BTreeSet<&std::path::Path> = files
                .iter()
                .chain(&synced)
                .filter_map(|f| f.parent())
                .collect();
            for d in dirs {
                fsync_path(d)?;
            }
            Ok(())
        })
        .await
        .map_err(StoreError::Task)?
    }

    /// On a `file://` store, fsyncs the file behind `key` (not its directory).
    pub(crate) async fn sync_object(&self, key: &str) -> Result<(), StoreError> {
        let Some(f) = self.local_file(key) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || fsync_path(&f))
            .await
            .map_err(StoreError::Task)?
    }

    /// Full object path of `key` (which is relative to the store prefix).
    pub(crate) fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// `key` relative to the prefix, from a listed location.
    pub(crate) fn rel<'a>(&self, loc: &'a ObjPath) -> Option<&'a str> {
        let s = loc.as_ref();
        if self.prefix.is_empty() {
            Some(s)
        } else {
            s.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    pub(crate) fn err(
        &self,
        op: &'static str,
        key: &str,
        source: object_store::Error,
    ) -> StoreError {
        StoreError::Backend {
            url: self.display.clone(),
            op,
            path: key.to_string(),
            source: Box::new(source),
        }
    }

    /// Runs one object call under the retry policy: transient errors are retried with
    /// exponential backoff and jitter, everything else is returned at once.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        mut call: F,
    ) -> Result<T, object_store::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, object_store::Error>>,
    {
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1u32;
        loop {
            match call().await {
                Err(e) if attempt < self.retry.attempts && is_transient(&e) => {
                    let wait = backoff.mul_f64(0.75 + rand::random::<f64>() * 0.5);
                    tracing::warn!(store = %self.display, op, key, attempt, error = %e,
                        wait_ms = wait.as_millis() as u64, "transient store error, retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Whether object `key` exists (a HEAD under the retry policy).
    pub(crate) async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key);
        match self.retry("read", key, || self.os.head(&path)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("read", key, e)),
        }
    }

    /// Reads a whole object, refusing (from its metadata) one larger than `max`.
    pub(crate) async fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes, GetError> {
        let path = self.path(key);
        let r = self
            .retry("read", key, || async {
                let r = self.os.get(&path).await?;
                if r.meta.size > max {
                    return Ok(Err(r.meta.size));
                }
                Ok(Ok(r.bytes().await?))
            })
            .await
            .map_err(GetError::from)?;
        let b = r.map_err(GetError::TooLarge)?;
        if b.len() as u64 > max {
            return Err(GetError::TooLarge(b.len() as u64));
        }
        Ok(b)
    }
}

pub(crate) enum GetError {
    NotFound,
    TooLarge(u64),
    Other(object_store::Error),
}

impl From<object_store::Error> for GetError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => GetError::NotFound,
            e => GetError::Other(e),
        }
    }
}

pub(crate) fn manifest_key(id: &SnapshotId) -> String {
    format!("{MANIFESTS}/{id}.json")
}

pub(crate) fn index_key(hex_digest: &str) -> String {
    format!("{INDEXES}/{hex_digest}")
}

pub(crate) fn pack_key(name: &[u8; 32]) -> String {
    format!("{PACKS}/{}", hex::encode(name))
}

pub(crate) fn now_rfc3339() -> String {
    // Millisecond precision: snapshots of one group taken within a second still sort.
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Parses a manifest's `created` for ordering (unparseable sorts first).
pub(crate) fn created_key(created: &str) -> i128 {
    time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos())
        .unwrap_or(i128::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn store(attempts: u32) -> Store {
        Store::from_object_store(Arc::new(object_store::memory::InMemory::new()), "", "x")
            .with_retry(RetryPolicy {
                attempts,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
            })
    }

    async fn calls_until_done(s: &Store, err: fn() -> object_store::Error) -> u32 {
        let n = AtomicU32::new(0);
        let _ = s
            .inner
            .retry("read", "k", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(err())
            })
            .await;
        n.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_policy() {
        let s = store(3);
        let generic = || object_store::Error::Generic {
            store: "t",
            source: "timeout".into(),
        };
        assert_eq!(calls_until_done(&s, generic).await, 3);
        assert_eq!(calls_until_done(&store(1), generic).await, 1);
    }

    #[tokio::test]
    async fn permanent_errors_are_never_retried() {
        let s = store(5);
        let cases: [fn() -> object_store::Error; 4] = [
            || object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            },
            || object_store::Error::AlreadyExists {
                path: "k".into(),
                source: "there".into(),
            },
            || object_store::Error::Precondition {
                path: "k".into(),
                source: "etag".into(),
            },
            || object_store::Error::PermissionDenied {
                path: "k".into(),
                source: "no".into(),
            },
        ];
        for c in cases {
            assert_eq!(calls_until_done(&s, c).await, 1, "{}", c());
        }
    }

    #[test]
    fn total_backoff_is_bounded() {
        let p = RetryPolicy::default();
        assert!(p.max_total_backoff() < Duration::from_secs(1), "{p:?}");
        assert_eq!(RetryPolicy::none().max_total_backoff(), Duration::ZERO);
        assert!(Store::open("s3://b/p").unwrap().retry_policy().attempts == 1);
        assert!(Store::open("memory://").unwrap().retry_policy().attempts > 1);
    }
}
