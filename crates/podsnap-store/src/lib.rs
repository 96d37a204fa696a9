//! podsnap-store: the snapshot format, the chunk pipeline, manifests, retention and garbage
//! collection, over any [`object_store::ObjectStore`].
//!
//! # Layers
//!
//! [`Store`] (this module) is what the daemon and the CLI call. It drives the push pipeline
//! (`push`), the verified pull (`pull`) and the admin operations (`admin`: list, delete,
//! retention, gc). Those work on three kinds of objects, described by `manifest` and `index`,
//! whose bytes come from `chunk` (hashing, compression). `backend` turns a store URL into an
//! object store with bounded retries.
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
pub mod chunk;
mod error;
mod id;
pub mod index;
pub mod limits;
mod manifest;
mod pool;
mod progress;
mod pull;
mod push;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;

pub use admin::GcReport;
pub use backend::redact_url;
pub use error::StoreError;
pub use id::SnapshotId;
pub use manifest::{
    validate_rel_path, FileEntry, IndexRef, Manifest, NodeFacts, Totals, FORMAT_VERSION,
};
pub use object_store;
pub use progress::{NoProgress, Progress, ProgressEvent};
pub use pull::PullReport;
pub use push::{PushOptions, PushReport};

/// A snapshot store: an object store plus a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    os: Arc<dyn ObjectStore>,
    prefix: String,
    display: String,
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
        Ok(Self::from_parts(o.store, &o.prefix, &o.display))
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
        Self::from_parts(inner, &prefix, &redact_url(display_url))
    }

    fn from_parts(os: Arc<dyn ObjectStore>, prefix: &str, display: &str) -> Store {
        Store {
            inner: Arc::new(Inner {
                os,
                prefix: prefix.to_string(),
                display: display.to_string(),
            }),
        }
    }

    /// The store URL without credentials, for logs and messages.
    pub fn display_url(&self) -> &str {
        &self.inner.display
    }

    /// The same store (prefix, display URL) over a wrapped object store: instrumentation,
    /// fault injection.
    pub fn map_object_store(
        &self,
        f: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> Store {
        Self::from_parts(
            f(self.inner.os.clone()),
            &self.inner.prefix,
            &self.inner.display,
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

impl Inner {
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

    /// Reads a whole object, refusing (from its metadata) one larger than `max`.
    pub(crate) async fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes, GetError> {
        let r = self.os.get(&self.path(key)).await.map_err(GetError::from)?;
        if r.meta.size > max {
            return Err(GetError::TooLarge(r.meta.size));
        }
        let b = r.bytes().await.map_err(GetError::from)?;
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
