//! Lazy images: a snapshot's files served page by page, each page verified before anyone
//! reads it, fetched when first asked for.
//!
//! [`Store::open_lazy`] reads the manifest and the indexes (verified, as a pull does) and lays
//! the files out at their final sizes in a local directory of the caller's (zero pages stay
//! holes). Nothing else is fetched. Then:
//!
//! * [`LazyImage::read`] answers a byte range of one file. Every blob holding a page of the
//!   range that is not local yet is made local first: from the node's page cache (each page
//!   checked against its sha256 by the cache reader) or with a ranged GET of its pack,
//!   decompressed and verified page by page by the same code as a pull (`pull::fill`), then
//!   written into the local file. Only then are the bytes read back from the local file. A
//!   page that cannot be fetched or fails verification fails the read, and the image: every
//!   later read of a page that is not local fails too, and [`LazyImage::settled`] reports the
//!   error.
//! * [`LazyImage::fill`] makes every blob local, the ones holding the given pages first
//!   (a group's hot pages), the rest in file order; once all are, the image is complete.
//!
//! Fetches are shared: one blob is fetched once however many readers (and the fill) ask for
//! it at the same time; later askers wait for the one fetch in flight. Several restores of one
//! snapshot on a node share one `LazyImage` (podsnap-lazy's registry), so each blob is
//! downloaded once per node. Downloaded pages go to the page cache: on the cache's
//! filesystem the complete local files are linked into it (as a pull's are); elsewhere the
//! pages of every download are copied into segments as they arrive.
//!
//! The order in which readers first touch pages is kept until the owner stops the recording
//! ([`LazyImage::access_order`], [`LazyImage::stop_recording`]); [`HotPages`] stores it beside the manifests, keyed by the
//! snapshot's group (`hot/<sha256 of the group>.json`), for the next lazy restore of that
//! group to fetch first.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cache::PageCache;
use crate::crypto::Key;
use crate::index::page_count;
use crate::limits::PAGE_SIZE;
use crate::pull::{
    blob_targets, fill_batch_from_cache, lay_out, BlobKey, PullFile, Request, Target,
};
use crate::{Inner, Manifest, SnapshotId, Store, StoreError};

/// No blob: a zero page.
const ZERO: u32 = u32::MAX;
/// Blobs the fill asks for at once (at most ~32 MiB of pages), and batches in flight.
const FILL_BATCH: usize = 32;
const FILL_PARALLEL: usize = 3;
/// Pages of first-touch order kept per image (4 GiB of pages).
const MAX_ACCESS_PAGES: usize = 1 << 20;
/// Blobs fetched ahead of a reader (up to 8 MiB of pages).
const READ_AHEAD: u32 = 8;
/// Largest ranged GET of neighbouring blobs.
const MAX_GROUP: u64 = 4 << 20;

type Fetch = Shared<BoxFuture<'static, Result<(), Arc<StoreError>>>>;

enum BlobState {
    Missing,
    InFlight(Fetch),
    Done,
    Failed(Arc<StoreError>),
}

/// Where an image stands.
#[derive(Clone, Debug)]
pub enum LazyStatus {
    /// Pages are still missing.
    Filling,
    /// Every page is local and verified.
    Complete,
    /// A page could not be fetched or failed verification; nothing more is served that is
    /// not local already.
    Failed(Arc<StoreError>),
}

/// Counters of one image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LazyProgress {
    pub blobs_total: u64,
    pub blobs_local: u64,
    /// Bytes of data pages (zero pages excluded) of every file.
    pub bytes_total: u64,
    /// Bytes of data pages local and verified.
    pub bytes_local: u64,
    /// Bytes received from the store.
    pub bytes_downloaded: u64,
    /// Bytes of pages taken from the node's page cache.
    pub bytes_from_cache: u64,
}

/// One file of a lazy image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LazyFile {
    /// Its path in the snapshot.
    pub path: String,
    pub size: u64,
    pub mode: u32,
}

/// A snapshot served page by page (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct LazyImage {
    inner: Arc<LazyInner>,
}

impl std::fmt::Debug for LazyImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyImage")
            .field("snapshot", &self.inner.manifest.id)
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

struct LazyInner {
    store: Arc<Inner>,
    manifest: Manifest,
    dir: PathBuf,
    files: Arc<Vec<PullFile>>,
    /// Every blob with the pages it fills, in (pack, offset) order.
    blobs: Vec<(BlobKey, Vec<Target>)>,
    /// Per file, per page: the blob holding it, or [`ZERO`].
    page_blob: Vec<Vec<u32>>,
    /// Data bytes each blob makes local.
    blob_bytes: Vec<u64>,
    state: Mutex<States>,
    status: watch::Sender<LazyStatus>,
    seal: Option<Key>,
    cache: Option<PageCache>,
    /// The complete files are linked into the cache (same filesystem) rather than every
    /// download copied into segments.
    adopt: bool,
    downloaded: AtomicU64,
    from_cache: AtomicU64,
    /// What [`LazyImage::take_unreported`] has handed out so far.
    reported: Mutex<(u64, u64)>,
    /// Reads are recorded in [`LazyInner::access`] until [`LazyImage::stop_recording`].
    recording: std::sync::atomic::AtomicBool,
    access: Mutex<Access>,
}

struct States {
    blobs: Vec<BlobState>,
    local: u64,
    bytes_local: u64,
}

#[derive(Default)]
struct Access {
    seen: Vec<Vec<u64>>,
    order: Vec<(u32, u64)>,
}

impl Store {
    /// Opens snapshot `id` as a lazy image whose local files live in `dir` (which must not
    /// exist; it is created, and removed when the last clone of the image is dropped). Reads
    /// and verifies the manifest and indexes only; no page is fetched.
    pub async fn open_lazy(&self, id: &SnapshotId, dir: &Path) -> Result<LazyImage, StoreError> {
        let manifest = self.manifest(id).await?;
        let seal = self.inner.key_for(&manifest)?.cloned();
        let indexes = self.inner.read_indexes(&manifest, seal.as_ref()).await?;
        std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("/")))
            .map_err(|e| StoreError::io("create", dir, e))?;
        std::fs::create_dir(dir).map_err(|e| StoreError::io("create", dir, e))?;
        let guard = RemoveDir(Some(dir.to_path_buf()));
        // Laid out as a pull lays out its temp dir: each file at its final size, holes for now.
        let files = lay_out(&manifest, indexes, dir, dir, &crate::progress::NoProgress)?;
        let by_blob = blob_targets(&files);
        let mut page_blob: Vec<Vec<u32>> = files
            .iter()
            .map(|pf| vec![ZERO; page_count(pf.index.file_size) as usize])
            .collect();
        let mut blobs = Vec::with_capacity(by_blob.len());
        let mut blob_bytes = Vec::with_capacity(by_blob.len());
        for (i, (key, targets)) in by_blob.into_iter().enumerate() {
            let mut bytes = 0u64;
            for t in &targets {
                let size = files[t.file as usize].index.file_size;
                for p in t.file_page..t.file_page + t.pages as u64 {
                    page_blob[t.file as usize][p as usize] = i as u32;
                    bytes += crate::index::page_len(size, p) as u64;
                }
            }
            blob_bytes.push(bytes);
            blobs.push((key, targets));
        }
        // Encrypted snapshots bypass the cache both ways, as pulls do.
        let cache = self.inner.cache.clone().filter(|_| seal.is_none());
        let adopt = cache.as_ref().is_some_and(|c| c.can_adopt_from(dir));
        let complete = blobs.is_empty();
        let (status, _) = watch::channel(if complete {
            LazyStatus::Complete
        } else {
            LazyStatus::Filling
        });
        let access = Access {
            seen: files
                .iter()
                .map(|pf| vec![0u64; page_count(pf.index.file_size).div_ceil(64) as usize])
                .collect(),
            order: Vec::new(),
        };
        let mut guard = guard;
        guard.0 = None;
        Ok(LazyImage {
            inner: Arc::new(LazyInner {
                store: self.inner.clone(),
                manifest,
                dir: dir.to_path_buf(),
                files: Arc::new(files),
                state: Mutex::new(States {
                    blobs: blobs.iter().map(|_| BlobState::Missing).collect(),
                    local: 0,
                    bytes_local: 0,
                }),
                blobs,
                page_blob,
                blob_bytes,
                status,
                seal,
                cache,
                adopt,
                downloaded: AtomicU64::new(0),
                from_cache: AtomicU64::new(0),
                reported: Mutex::new((0, 0)),
                recording: std::sync::atomic::AtomicBool::new(true),
                access: Mutex::new(access),
            }),
        })
    }
}

/// Removes a directory on drop unless disarmed.
struct RemoveDir(Option<PathBuf>);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Drop for LazyInner {
    fn drop(&mut self) {
        // Linked into the cache, the data stays there; the local names go.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LazyImage {
    /// The snapshot's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The directory holding the local files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The image's files, in the manifest's order (the `file` argument of the reads).
    pub fn files(&self) -> Vec<LazyFile> {
        self.inner
            .manifest
            .files
            .iter()
            .map(|f| LazyFile {
                path: f.path.clone(),
                size: f.size,
                mode: f.mode,
            })
            .collect()
    }

    /// Where the image stands now.
    pub fn status(&self) -> LazyStatus {
        self.inner.status.borrow().clone()
    }

    /// Waits until the image is complete (`Ok`) or has failed (the first error).
    pub async fn settled(&self) -> Result<(), Arc<StoreError>> {
        let mut rx = self.inner.status.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LazyStatus::Complete => return Ok(()),
                LazyStatus::Failed(e) => return Err(e.clone()),
                LazyStatus::Filling => {}
            }
            if rx.changed().await.is_err() {
                // The sender lives in `inner`, which we hold.
                return Ok(());
            }
        }
    }

    /// Counters so far.
    pub fn progress(&self) -> LazyProgress {
        let st = self.inner.state.lock().expect("lazy state lock");
        LazyProgress {
            blobs_total: self.inner.blobs.len() as u64,
            blobs_local: st.local,
            bytes_total: self.inner.blob_bytes.iter().sum(),
            bytes_local: st.bytes_local,
            bytes_downloaded: self.inner.downloaded.load(Ordering::Relaxed),
            bytes_from_cache: self.inner.from_cache.load(Ordering::Relaxed),
        }
    }

    /// Bytes downloaded and taken from the cache since the last call (by any holder of the
    /// image): for metrics that several users of one shared image must not count twice.
    pub fn take_unreported(&self) -> (u64, u64) {
        let mut r = self.inner.reported.lock().expect("reported lock");
        let now = (
            self.inner.downloaded.load(Ordering::Relaxed),
            self.inner.from_cache.load(Ordering::Relaxed),
        );
        let new = (now.0 - r.0, now.1 - r.1);
        *r = now;
        new
    }

    /// [`LazyImage::read`] without waiting: the bytes when every page of the range is local
    /// already (the small files always are), `None` when one must be fetched first. Lets a
    /// FUSE server answer such reads on its own thread, so they never wait for the async
    /// runtime (whose workers may themselves be reading the mount).
    pub fn read_local(
        &self,
        file: usize,
        offset: u64,
        len: u32,
    ) -> Option<Result<Vec<u8>, Arc<StoreError>>> {
        let pf = self.inner.files.get(file)?;
        let size = pf.index.file_size;
        if offset >= size || len == 0 {
            return Some(Ok(Vec::new()));
        }
        let end = (offset + len as u64).min(size);
        let (first, last) = (offset / PAGE_SIZE as u64, (end - 1) / PAGE_SIZE as u64);
        let pages = &self.inner.page_blob[file][first as usize..=last as usize];
        {
            let st = self.inner.state.lock().expect("lazy state lock");
            let all_local = pages
                .iter()
                .all(|&b| b == ZERO || matches!(st.blobs[b as usize], BlobState::Done));
            if !all_local {
                return None;
            }
        }
        self.record_access(file, first, last);
        let mut buf = vec![0u8; (end - offset) as usize];
        let f = pf.file.as_ref().expect("lazy files are open");
        Some(
            f.read_exact_at(&mut buf, offset)
                .map(|()| buf)
                .map_err(|e| Arc::new(StoreError::io("read", &pf.dest, e))),
        )
    }

    /// Reads up to `len` bytes of file `file` at `offset` (fewer at the end of the file), every
    /// page verified. Pages that are not local yet are fetched first.
    pub async fn read(
        &self,
        file: usize,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, Arc<StoreError>> {
        let pf = self.inner.files.get(file).ok_or_else(|| {
            Arc::new(StoreError::Cache(format!(
                "no file {file} in the lazy image"
            )))
        })?;
        let size = pf.index.file_size;
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + len as u64).min(size);
        let (first, last) = (offset / PAGE_SIZE as u64, (end - 1) / PAGE_SIZE as u64);
        self.record_access(file, first, last);
        let pages = &self.inner.page_blob[file][first as usize..=last as usize];
        let mut needed: Vec<u32> = pages.iter().copied().filter(|b| *b != ZERO).collect();
        needed.sort_unstable();
        needed.dedup();
        self.read_ahead(needed.last().copied());
        self.ensure(needed).await?;
        let mut buf = vec![0u8; (end - offset) as usize];
        let f = pf.file.as_ref().expect("lazy files are open");
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| Arc::new(StoreError::io("read", &pf.dest, e)))?;
        Ok(buf)
    }

    /// Starts fetching the blobs after `last` (in pack order, which is file order for pages a
    /// snapshot stored itself) without waiting for them: readers that go through the file
    /// front to back find the next pages on their way. Stops at the first local blob.
    fn read_ahead(&self, last: Option<u32>) {
        let Some(last) = last else {
            return;
        };
        let n = self.inner.blobs.len() as u32;
        let ahead: Vec<u32> = {
            let st = self.inner.state.lock().expect("lazy state lock");
            (last + 1..n.min(last + 1 + READ_AHEAD))
                .take_while(|&b| matches!(st.blobs[b as usize], BlobState::Missing))
                .collect()
        };
        if !ahead.is_empty() {
            let me = self.clone();
            tokio::spawn(async move {
                // A failure is the image's status, seen by its next reader.
                let _ = me.ensure(ahead).await;
            });
        }
    }

    /// Makes every page of file `file` local.
    pub async fn fetch_file(&self, file: usize) -> Result<(), Arc<StoreError>> {
        let mut needed: Vec<u32> = self
            .inner
            .page_blob
            .get(file)
            .map(|p| p.iter().copied().filter(|b| *b != ZERO).collect())
            .unwrap_or_default();
        needed.sort_unstable();
        needed.dedup();
        self.ensure(needed).await
    }

    /// Makes every page local: the blobs holding `first` (file path, page number) in that
    /// order, then the rest in file order. Returns once the image is complete, or with the
    /// first failure (which also fails the image).
    pub async fn fill(&self, first: &[(String, u64)]) -> Result<(), Arc<StoreError>> {
        let inner = &self.inner;
        let mut order: Vec<u32> = Vec::with_capacity(inner.blobs.len());
        let mut queued = vec![false; inner.blobs.len()];
        for (path, page) in first {
            let Some(fi) = inner.files.iter().position(|pf| &pf.rel == path) else {
                continue;
            };
            if let Some(&b) = inner.page_blob[fi].get(*page as usize) {
                if b != ZERO && !std::mem::replace(&mut queued[b as usize], true) {
                    order.push(b);
                }
            }
        }
        for pages in &inner.page_blob {
            for &b in pages {
                if b != ZERO && !std::mem::replace(&mut queued[b as usize], true) {
                    order.push(b);
                }
            }
        }
        // Batches in order; the blobs of a batch coalesce into ranged GETs when neighbours.
        let batches: Vec<Vec<u32>> = order
            .chunks(FILL_BATCH)
            .map(|c| {
                let mut v = c.to_vec();
                v.sort_unstable();
                v
            })
            .collect();
        use futures::StreamExt;
        let mut runs = futures::stream::iter(batches)
            .map(|b| self.ensure(b))
            .buffered(FILL_PARALLEL);
        while let Some(r) = runs.next().await {
            r?;
        }
        self.settled().await
    }

    /// The pages readers touched first, in order (file path, page), while recording.
    pub fn access_order(&self) -> Vec<(String, u64)> {
        let a = self.inner.access.lock().expect("access lock");
        a.order
            .iter()
            .map(|(f, p)| (self.inner.files[*f as usize].rel.clone(), *p))
            .collect()
    }

    /// Ends the recording of [`LazyImage::access_order`] (it runs from the open on).
    pub fn stop_recording(&self) {
        self.inner.recording.store(false, Ordering::Relaxed);
    }

    fn record_access(&self, file: usize, first: u64, last: u64) {
        if !self.inner.recording.load(Ordering::Relaxed) {
            return;
        }
        let mut a = self.inner.access.lock().expect("access lock");
        let a = &mut *a;
        for p in first..=last {
            if a.order.len() >= MAX_ACCESS_PAGES {
                return;
            }
            let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            let seen = &mut a.seen[file][w];
            if *seen & bit == 0 {
                *seen |= bit;
                a.order.push((file as u32, p));
            }
        }
    }

    /// Makes blobs `ids` (sorted) local: starts the fetches nobody started, waits for those
    /// in flight.
    async fn ensure(&self, ids: Vec<u32>) -> Result<(), Arc<StoreError>> {
        let mut waits: Vec<Fetch> = Vec::new();
        {
            let mut st = self.inner.state.lock().expect("lazy state lock");
            let mut mine: Vec<u32> = Vec::new();
            for id in ids {
                match &st.blobs[id as usize] {
                    BlobState::Done => {}
                    BlobState::Failed(e) => return Err(e.clone()),
                    BlobState::InFlight(f) => waits.push(f.clone()),
                    BlobState::Missing => mine.push(id),
                }
            }
            if !mine.is_empty() {
                if let LazyStatus::Failed(e) = &*self.inner.status.borrow() {
                    return Err(e.clone());
                }
            }
            for group in plan_ids(&self.inner.blobs, &mine) {
                let me = self.clone();
                let ids = group.clone();
                let task = tokio::spawn(async move { me.fetch(ids).await });
                let fetch: Fetch = async move {
                    match task.await {
                        Ok(r) => r,
                        Err(e) => Err(Arc::new(StoreError::Task(e))),
                    }
                }
                .boxed()
                .shared();
                for id in group {
                    st.blobs[id as usize] = BlobState::InFlight(fetch.clone());
                }
                waits.push(fetch);
            }
        }
        for w in waits {
            w.await?;
        }
        Ok(())
    }

    /// Fetches one group of blobs (one ranged GET, or the page cache), then records them.
    async fn fetch(&self, ids: Vec<u32>) -> Result<(), Arc<StoreError>> {
        let r = self.fetch_inner(&ids).await;
        let inner = &self.inner;
        let mut st = inner.state.lock().expect("lazy state lock");
        match r {
            Ok(()) => {
                for &id in &ids {
                    st.blobs[id as usize] = BlobState::Done;
                    st.bytes_local += inner.blob_bytes[id as usize];
                }
                st.local += ids.len() as u64;
                if st.local == inner.blobs.len() as u64 {
                    drop(st);
                    self.complete();
                }
                Ok(())
            }
            Err(e) => {
                let e = Arc::new(e);
                for &id in &ids {
                    st.blobs[id as usize] = BlobState::Failed(e.clone());
                }
                drop(st);
                tracing::error!(snapshot = %inner.manifest.id, error = %e, "lazy image failed");
                inner.status.send_if_modified(|s| {
                    if matches!(s, LazyStatus::Failed(_)) {
                        false
                    } else {
                        *s = LazyStatus::Failed(e.clone());
                        true
                    }
                });
                Err(e)
            }
        }
    }

    async fn fetch_inner(&self, ids: &[u32]) -> Result<(), StoreError> {
        let inner = &self.inner;
        let batch: Vec<(BlobKey, Vec<Target>)> = ids
            .iter()
            .map(|&i| inner.blobs[i as usize].clone())
            .collect();
        if let Some(cache) = &inner.cache {
            let files = &inner.files;
            let all = batch.iter().all(|(_, targets)| {
                cache.contains_all(
                    targets
                        .iter()
                        .flat_map(|t| crate::pull::target_digests(files, t)),
                )
            });
            if all {
                let (cache, files, b) = (cache.clone(), files.clone(), batch.clone());
                let (written, failed) =
                    crate::pool::run(move || fill_batch_from_cache(&cache, &files, b, false))
                        .await??;
                inner.from_cache.fetch_add(written, Ordering::Relaxed);
                if failed.is_empty() {
                    return Ok(());
                }
            } else {
                let missing: u64 = batch
                    .iter()
                    .flat_map(|(_, t)| t.iter().map(|t| t.pages as u64))
                    .sum();
                cache.record_misses(missing);
            }
        }
        let (key, _) = batch[0];
        let (last, _) = batch[batch.len() - 1];
        let req = Request {
            pack: key.pack,
            start: key.offset,
            end: last.offset + last.stored_len as u64,
            blobs: batch,
        };
        let insert = if inner.adopt {
            None
        } else {
            inner.cache.clone()
        };
        let (downloaded, _) = inner
            .store
            .fetch_request(inner.files.clone(), req, inner.seal.clone(), false, insert)
            .await?;
        inner.downloaded.fetch_add(downloaded, Ordering::Relaxed);
        Ok(())
    }

    /// Every page is local: link the files into the cache where that was chosen, then say so.
    fn complete(&self) {
        let inner = self.inner.clone();
        let me = self.clone();
        tokio::spawn(async move {
            if let (true, Some(cache)) = (inner.adopt, inner.cache.clone()) {
                let work: Vec<_> = inner
                    .files
                    .iter()
                    .map(|pf| {
                        (
                            pf.dest.clone(),
                            crate::cache::index_pages(&pf.index),
                            pf.key,
                        )
                    })
                    .collect();
                let _ = tokio::task::spawn_blocking(move || {
                    for (path, pages, key) in work {
                        cache.adopt(&path, &pages, key);
                    }
                })
                .await;
            }
            tracing::info!(snapshot = %inner.manifest.id, progress = ?me.progress(), "lazy image complete");
            inner.status.send_if_modified(|s| {
                if matches!(s, LazyStatus::Filling) {
                    *s = LazyStatus::Complete;
                    true
                } else {
                    false
                }
            });
        });
    }
}

/// Groups sorted blob ids into ranged GETs: neighbours in one pack with nothing between
/// them (so no byte is downloaded twice, whatever other fetches are in flight), up to 4 MiB.
fn plan_ids(blobs: &[(BlobKey, Vec<Target>)], ids: &[u32]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut start = 0u64;
    for &id in ids {
        let key = blobs[id as usize].0;
        let end = key.offset + key.stored_len as u64;
        if let Some(group) = out.last_mut() {
            let prev = blobs[*group.last().expect("groups are never empty") as usize].0;
            if prev.pack == key.pack
                && prev.offset + prev.stored_len as u64 == key.offset
                && end - start <= MAX_GROUP
            {
                group.push(id);
                continue;
            }
        }
        start = key.offset;
        out.push(vec![id]);
    }
    out
}

/// The pages a group's restored sandboxes read first, kept beside the manifests at
/// `hot/<sha256 hex of the group>.json` (written by a lazy restore once its image is complete,
/// last writer wins; read by the next lazy restore of the group).
///
/// ```json
/// {"version": 1, "group": "app=web", "snapshot": "<id it was recorded on>",
///  "files": {"pages.img": [[first_page, pages], ...]}}
/// ```
///
/// Runs of pages in first-touch order. Untrusted like every object: at most 1 MiB, at most
/// 65,536 runs per file; pages beyond a file's end are ignored by the reader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotPages {
    pub version: u32,
    pub group: String,
    pub snapshot: String,
    pub files: BTreeMap<String, Vec<(u64, u64)>>,
}

const HOT: &str = "hot";
const MAX_HOT_BYTES: u64 = 1 << 20;
const MAX_HOT_RUNS: usize = 65_536;

fn hot_key(group: &str) -> String {
    format!(
        "{HOT}/{}.json",
        hex::encode(crate::chunk::sha256(group.as_bytes()))
    )
}

impl HotPages {
    /// The runs of an access order (see [`LazyImage::access_order`]).
    pub fn from_order(group: &str, snapshot: &str, order: &[(String, u64)]) -> HotPages {
        let mut files: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for (path, page) in order {
            let runs = files.entry(path.clone()).or_default();
            let full = runs.len() >= MAX_HOT_RUNS;
            match runs.last_mut() {
                Some((first, n)) if *first + *n == *page => *n += 1,
                _ if full => {}
                _ => runs.push((*page, 1)),
            }
        }
        HotPages {
            version: 1,
            group: group.to_string(),
            snapshot: snapshot.to_string(),
            files,
        }
    }

    /// The pages, in order, as [`LazyImage::fill`] takes them (at most `max` pages).
    pub fn pages(&self, max: usize) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (path, runs) in &self.files {
            for &(first, n) in runs {
                for p in first..first.saturating_add(n) {
                    if out.len() >= max {
                        return out;
                    }
                    out.push((path.clone(), p));
                }
            }
        }
        out
    }
}

impl Store {
    /// The hot pages recorded for `group`, if any (an unreadable or invalid record is `None`,
    /// logged: it only orders fetches).
    pub async fn hot_pages(&self, group: &str) -> Option<HotPages> {
        let key = hot_key(group);
        let bytes = match self.inner.get_bounded(&key, MAX_HOT_BYTES).await {
            Ok(b) => b,
            Err(crate::GetError::NotFound) => return None,
            Err(_) => {
                tracing::warn!(group, key, "cannot read the group's hot pages");
                return None;
            }
        };
        match serde_json::from_slice::<HotPages>(&bytes) {
            Ok(h)
                if h.version == 1
                    && h.group == group
                    && h.files.values().all(|r| r.len() <= MAX_HOT_RUNS) =>
            {
                Some(h)
            }
            _ => {
                tracing::warn!(group, key, "ignoring an invalid hot pages record");
                None
            }
        }
    }

    /// Stores the hot pages of `hot.group` (replacing an earlier record).
    pub async fn put_hot_pages(&self, hot: &HotPages) -> Result<(), StoreError> {
        let key = hot_key(&hot.group);
        let body = bytes::Bytes::from(serde_json::to_vec(hot).map_err(|e| {
            StoreError::Cache(format!("encoding the hot pages of {}: {e}", hot.group))
        })?);
        let path = self.inner.path(&key);
        self.inner
            .retry("write", &key, || {
                self.inner
                    .os
                    .put(&path, object_store::PutPayload::from_bytes(body.clone()))
            })
            .await
            .map_err(|e| self.inner.err("write", &key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_pages_keep_first_touch_order_as_runs() {
        let order: Vec<(String, u64)> = [5, 6, 7, 1, 2, 9]
            .iter()
            .map(|p| ("pages.img".to_string(), *p))
            .collect();
        let h = HotPages::from_order("g", "s", &order);
        assert_eq!(h.files["pages.img"], vec![(5, 3), (1, 2), (9, 1)]);
        assert_eq!(h.pages(100), order);
        assert_eq!(h.pages(2).len(), 2);
    }
}
