//! Which snapshots this node's page cache holds: what `GetNodeInfo` reports as
//! `cached_snapshots`, and what the controller publishes so that a restore is placed where
//! its pages already are.
//!
//! The candidates are the snapshots of this node's recent jobs (checkpoints, restores,
//! prepared and prefetched images; the job list is kept on disk, so a restarted daemon still
//! knows them), most recent first. One counts as held while the cache has a whole linked copy
//! of its largest file (`pages.img`, or the one `checkpoint.img` of old runsc): checkpoints,
//! pulls and lazy images on the cache's filesystem link their finished files, keyed by the
//! file's index digest (the cache's own key). Pages cached one by one (a pull onto another
//! filesystem) are not looked for: that would mean reading every index. Each snapshot's key
//! is read from its manifest once and remembered.

use std::collections::HashMap;
use std::sync::Mutex;

use podsnap_store::Manifest;

use super::Engine;
use crate::jobs::{JobKind, Phase};

/// At most this many snapshots are reported.
pub const MAX_CACHED_SNAPSHOTS: usize = 32;

/// Each known snapshot's cache key (the index digest of its largest file; `None`: nothing
/// to look for, an encrypted or empty snapshot).
#[derive(Default)]
pub struct CacheKeys(Mutex<HashMap<String, Option<[u8; 32]>>>);

/// The cache key of a manifest's largest file. Encrypted snapshots bypass the cache.
pub fn largest_file_key(m: &Manifest) -> Option<[u8; 32]> {
    if m.encryption.is_some() {
        return None;
    }
    let f = m.files.iter().max_by_key(|f| f.size)?;
    hex::decode(&f.index.digest).ok()?.try_into().ok()
}

impl Engine {
    /// The snapshots of recent jobs whose largest file the page cache holds, most recent
    /// first, at most [`MAX_CACHED_SNAPSHOTS`] (see the module docs).
    pub async fn cached_snapshots(&self) -> Vec<String> {
        let Some(cache) = self.store.cache() else {
            return Vec::new();
        };
        let mut jobs = self.jobs.list();
        jobs.retain(|j| j.phase != Phase::Failed);
        jobs.retain(|j| {
            matches!(
                j.kind(),
                JobKind::Checkpoint
                    | JobKind::Restore
                    | JobKind::PrepareRestore
                    | JobKind::Prefetch
            )
        });
        jobs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        let mut ids: Vec<String> = Vec::new();
        for j in jobs {
            match j.snapshot_id {
                Some(id) if !ids.contains(&id) => ids.push(id),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for id in &ids {
            if out.len() == MAX_CACHED_SNAPSHOTS {
                break;
            }
            if let Some(key) = self.cache_key(id).await {
                if cache.linked_file(&key).is_some() {
                    out.push(id.clone());
                }
            }
        }
        // Forget the keys of snapshots no recent job names.
        self.cache_keys
            .0
            .lock()
            .expect("cache keys lock")
            .retain(|k, _| ids.contains(k));
        out
    }

    /// A snapshot's cache key, from its manifest the first time (a store that cannot be
    /// read now is asked again next time; a deleted snapshot is remembered as keyless).
    async fn cache_key(&self, id: &str) -> Option<[u8; 32]> {
        if let Some(k) = self.cache_keys.0.lock().expect("cache keys lock").get(id) {
            return *k;
        }
        let sid = podsnap_store::SnapshotId::new(id).ok()?;
        let key = match self.store.manifest(&sid).await {
            Ok(m) => largest_file_key(&m),
            // Deleted since: nothing to look for, and no reason to ask the store again.
            Err(podsnap_store::StoreError::SnapshotNotFound(_)) => None,
            Err(_) => return None,
        };
        self.cache_keys
            .0
            .lock()
            .expect("cache keys lock")
            .insert(id.to_string(), key);
        key
    }
}
