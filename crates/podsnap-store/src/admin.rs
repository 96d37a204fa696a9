//! Reading manifests and indexes, listing, deletion, retention and garbage collection.
//!
//! GC is mark and sweep: mark every index and pack that some manifest reaches, then delete
//! unreferenced `indexes/` and `packs/` objects whose last modification is older than the
//! grace period. Objects younger than the grace period belong (possibly) to a push that has
//! not committed its manifest yet. Manifests are listed a second time just before the sweep,
//! so a push that committed during the mark keeps what it references.

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::crypto::{Key, INDEX_AAD};
use crate::index::FileIndex;
use crate::limits::{MAX_INDEX_SIZE, MAX_MANIFEST_SIZE};
use crate::manifest::{FileEntry, Manifest};
use crate::{
    chunk, index_key, manifest_key, GetError, Inner, SnapshotId, Store, StoreError, INDEXES,
    MANIFESTS, PACKS,
};

/// What [`Store::gc`] did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: u64,
    pub live_objects: u64,
    pub deleted_objects: u64,
    pub deleted_bytes: u64,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub kept_young: u64,
    /// Snapshots whose index could not be read (their data cannot be pulled anyway).
    pub broken_snapshots: Vec<String>,
}

const LIST_CONCURRENCY: usize = 16;

/// The digest an index is named and checked by: sha256 of the plain index, or for a sealed
/// one its HMAC under the group key (so the name reveals nothing about the content).
pub(crate) fn index_digest(key: Option<&Key>, plain: &[u8]) -> String {
    match key {
        Some(k) => hex::encode(k.mac(b"podsnap index", plain)),
        None => hex::encode(chunk::sha256(plain)),
    }
}

impl Inner {
    pub(crate) async fn read_manifest(&self, id: &SnapshotId) -> Result<Manifest, StoreError> {
        let key = manifest_key(id);
        match self.get_bounded(&key, MAX_MANIFEST_SIZE).await {
            Ok(bytes) => Manifest::parse(&bytes, id.as_str()),
            Err(GetError::NotFound) => Err(StoreError::SnapshotNotFound(id.to_string())),
            Err(GetError::TooLarge(n)) => Err(StoreError::InvalidManifest {
                id: id.to_string(),
                reason: format!("{n} bytes exceed the 64 MiB limit"),
            }),
            Err(GetError::Other(e)) => Err(self.err("read", &key, e)),
        }
    }

    /// The key that opens `m`'s data, `None` for a plain snapshot. Refuses a snapshot whose
    /// encryption does not fit the keys configured here, and authenticates an encrypted
    /// manifest with its key. Nothing is downloaded.
    pub(crate) fn key_for<'a>(&'a self, m: &Manifest) -> Result<Option<&'a Key>, StoreError> {
        let group = m.group.as_deref();
        let g = group.unwrap_or("(none)");
        let err = |reason: String| StoreError::Encryption {
            id: m.id.to_string(),
            reason,
        };
        match (&m.encryption, self.keys.for_group(group)) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(err(format!(
                "not encrypted, but group {g} has a key here: an unencrypted snapshot is \
                 not accepted into an encrypted group"
            ))),
            (Some(e), None) => Err(err(format!(
                "encrypted with key {}, and no key for group {g} is configured here",
                e.key_id
            ))),
            (Some(e), Some(k)) if k.id() != e.key_id => Err(err(format!(
                "encrypted with key {}, but the key configured for group {g} is {}",
                e.key_id,
                k.id()
            ))),
            (Some(_), Some(k)) => {
                if m.mac.as_deref() == Some(m.expected_mac(k).as_str()) {
                    Ok(Some(k))
                } else {
                    Err(err(
                        "manifest authentication failed (altered manifest or mac)".into(),
                    ))
                }
            }
        }
    }

    /// Fetches, verifies and decodes the index of `f`; `key` opens a sealed one.
    pub(crate) async fn read_index(
        &self,
        f: &FileEntry,
        seal: Option<&Key>,
    ) -> Result<FileIndex, StoreError> {
        let key = index_key(&f.index.digest);
        let bad = |reason: String| StoreError::InvalidIndex {
            file: f.path.clone(),
            reason,
        };
        let stored = match self.get_bounded(&key, MAX_INDEX_SIZE + 4096).await {
            Ok(b) => b,
            Err(GetError::NotFound) => {
                return Err(StoreError::MissingObject {
                    file: f.path.clone(),
                    offset: 0,
                    object: key,
                })
            }
            Err(GetError::TooLarge(n)) => {
                return Err(bad(format!("object of {n} bytes too large")))
            }
            Err(GetError::Other(e)) => return Err(self.err("read", &key, e)),
        };
        let size = f.index.size as usize;
        let digest = f.index.digest.clone();
        let file_size = f.size;
        let seal = seal.cloned();
        let idx = tokio::task::spawn_blocking(move || -> Result<FileIndex, String> {
            let plain = match &seal {
                Some(k) => chunk::decompress_meta(&k.open(INDEX_AAD, &stored)?, size)?,
                None => chunk::decompress_meta(&stored, size)?,
            };
            if index_digest(seal.as_ref(), &plain) != digest {
                return Err("digest mismatch".into());
            }
            let idx = FileIndex::decode(&plain)?;
            if idx
                .blobs
                .iter()
                .any(|b| b.codec.is_sealed() != seal.is_some())
            {
                return Err("blob codecs do not match the snapshot's encryption".into());
            }
            if idx.file_size != file_size {
                return Err(format!(
                    "describes {} bytes, manifest says {file_size}",
                    idx.file_size
                ));
            }
            Ok(idx)
        })
        .await
        .map_err(StoreError::Task)?
        .map_err(bad)?;
        Ok(idx)
    }

    async fn list_keys(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let prefix = self.path(dir);
        self.retry("list", dir, || {
            self.os.list(Some(&prefix)).try_collect::<Vec<_>>()
        })
        .await
        .map_err(|e| self.err("list", dir, e))
    }

    async fn manifest_ids(&self) -> Result<Vec<SnapshotId>, StoreError> {
        let metas = self.list_keys(MANIFESTS).await?;
        let mut ids: Vec<SnapshotId> = metas
            .iter()
            .filter_map(|m| self.rel(&m.location))
            .filter_map(|k| k.strip_prefix("manifests/")?.strip_suffix(".json"))
            .filter_map(|id| SnapshotId::new(id).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

impl Store {
    /// Reads and verifies the manifest of `id`.
    pub async fn manifest(&self, id: &SnapshotId) -> Result<Manifest, StoreError> {
        self.inner.read_manifest(id).await
    }

    /// Every readable snapshot in the store, newest first. Unreadable manifests are logged
    /// and skipped.
    pub async fn list(&self) -> Result<Vec<Manifest>, StoreError> {
        let ids = self.inner.manifest_ids().await?;
        let inner = &self.inner;
        let results: Vec<_> = futures::stream::iter(ids)
            .map(|id| async move { (id.clone(), inner.read_manifest(&id).await) })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for (id, r) in results {
            match r {
                Ok(m) => out.push(m),
                // Deleted between listing and reading.
                Err(StoreError::SnapshotNotFound(_)) => {}
                Err(e @ StoreError::Backend { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "skipping unreadable manifest")
                }
            }
        }
        out.sort_by(|a, b| {
            crate::created_key(&b.created)
                .cmp(&crate::created_key(&a.created))
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(out)
    }

    /// Deletes the manifest of `id`. Its data goes at the next [`Store::gc`].
    pub async fn delete(&self, id: &SnapshotId) -> Result<(), StoreError> {
        let key = manifest_key(id);
        if !self.inner.exists(&key).await? {
            return Err(StoreError::SnapshotNotFound(id.to_string()));
        }
        let path = self.inner.path(&key);
        match self
            .inner
            .retry("delete", &key, || self.inner.os.delete(&path))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.inner.err("delete", &key, e)),
        }
    }

    /// The newest snapshot of `group`, if any.
    pub async fn latest_in_group(&self, group: &str) -> Result<Option<Manifest>, StoreError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|m| m.group.as_deref() == Some(group)))
    }

    /// Deletes all but the newest `keep` snapshots of `group`; returns the deleted ids.
    pub async fn retain(&self, group: &str, keep: usize) -> Result<Vec<SnapshotId>, StoreError> {
        let members: Vec<Manifest> = self
            .list()
            .await?
            .into_iter()
            .filter(|m| m.group.as_deref() == Some(group))
            .collect();
        let mut deleted = Vec::new();
        for m in members.into_iter().skip(keep) {
            match self.delete(&m.id).await {
                Ok(()) | Err(StoreError::SnapshotNotFound(_)) => deleted.push(m.id),
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Mark from all manifests, sweep unreferenced index and pack objects older than `grace`.
    pub async fn gc(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let inner = &self.inner;
        let mut report = GcReport::default();
        let mut live: HashSet<String> = HashSet::new();
        let mut marked: HashSet<SnapshotId> = HashSet::new();
        // Listing the candidates before marking: anything written after this point is not
        // a candidate at all.
        let started = std::time::SystemTime::now();
        let mut candidates = inner.list_keys(INDEXES).await?;
        candidates.extend(inner.list_keys(PACKS).await?);
        for round in 0..2 {
            let ids: Vec<SnapshotId> = inner
                .manifest_ids()
                .await?
                .into_iter()
                .filter(|id| !marked.contains(id))
                .collect();
            if round == 1 && ids.is_empty() {
                break;
            }
            for id in ids {
                let m = match inner.read_manifest(&id).await {
                    Ok(m) => m,
                    Err(StoreError::SnapshotNotFound(_)) => continue,
                    // Never sweep on a partial view of what is referenced.
                    Err(e) => return Err(e),
                };
                report.manifests += 1;
                self.mark(&m, &mut live, &mut report).await?;
                marked.insert(id);
            }
        }
        let cutoff = started.checked_sub(grace).unwrap_or(std::time::UNIX_EPOCH);
        let mut doomed = Vec::new();
        for meta in candidates {
            let Some(key) = inner.rel(&meta.location) else {
                continue;
            };
            if live.contains(key) {
                report.live_objects += 1;
                continue;
            }
            let modified: std::time::SystemTime = meta.last_modified.into();
            if modified > cutoff {
                report.kept_young += 1;
                continue;
            }
            doomed.push((key.to_string(), meta.size));
        }
        let results: Vec<Result<u64, StoreError>> = futures::stream::iter(doomed)
            .map(|(key, size)| async move {
                let path = inner.path(&key);
                match inner.retry("delete", &key, || inner.os.delete(&path)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(size),
                    Err(e) => Err(inner.err("delete", &key, e)),
                }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            report.deleted_bytes += r?;
            report.deleted_objects += 1;
        }
        tracing::info!(store = %inner.display, ?report, "gc finished");
        Ok(report)
    }

    async fn mark(
        &self,
        m: &Manifest,
        live: &mut HashSet<String>,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        if let Some(e) = &m.encryption {
            // Sealed indexes cannot be read without the key: the manifest lists the packs.
            for f in &m.files {
                live.insert(index_key(&f.index.digest));
            }
            for p in &e.packs {
                live.insert(format!("{PACKS}/{p}"));
            }
            return Ok(());
        }
        for f in &m.files {
            let key = index_key(&f.index.digest);
            if live.contains(&key) {
                continue;
            }
            live.insert(key);
            match self.inner.read_index(f, None).await {
                Ok(idx) => {
                    for p in &idx.packs {
                        live.insert(crate::pack_key(p));
                    }
                }
                Err(e @ StoreError::Backend { .. }) | Err(e @ StoreError::Task(_)) => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::warn!(snapshot = %m.id, file = %f.path, error = %e, "broken snapshot");
                    report.broken_snapshots.push(m.id.to_string());
                }
            }
        }
        Ok(())
    }
}
