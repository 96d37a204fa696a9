//! The push pipeline.
//!
//! ```text
//! read 4 MiB blocks ──► hash pages (workers) ──► dedup (in order) ──► compress blobs (workers)
//!     pread, blocking      zero check + sha256      known pages map        zstd -1 / raw
//!                                                                              │
//!                         upload packs (bounded in flight) ◄── pack (~4 MiB) ◄─┘
//! then: indexes (one per file) ──► check reused packs still exist ──► manifest (create-only)
//! ```
//!
//! Hashing and compression run on the worker pool with at most `2 * workers` blocks being
//! hashed and `4 * workers` blobs being compressed (their read blocks are reused), uploads
//! are bounded by `concurrency`, so memory stays bounded by a few dozen MiB
//! plus the dedup map (about 50 bytes per distinct non-zero 4 KiB page).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::FutureExt;
use futures::StreamExt;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::admin::index_digest;
use crate::cache::CachePage;
use crate::chunk;
use crate::crypto::{blob_aad, Key, INDEX_AAD};
use crate::direct::{PackBuf, PackPool};
use crate::index::{page_count, BlobRef, Codec, FileIndex, ZERO_BLOB};
use crate::limits::{MAX_BLOB_RAW, MAX_FILES, MAX_FILE_SIZE, PACK_TARGET, PAGE_SIZE, READ_BLOCK};
use crate::manifest::{
    validate_rel_path, Encryption, FileEntry, IndexRef, Manifest, NodeFacts, Totals,
};
use crate::progress::{Progress, ProgressEvent};
use crate::{index_key, manifest_key, pack_key, Inner, SnapshotId, Store, StoreError};

const PAGES_PER_BLOB: u32 = (MAX_BLOB_RAW / PAGE_SIZE) as u32;
const DEFAULT_UPLOADS: usize = 4;
/// Blob compression jobs (1 MiB each at most) queued per worker before the reader waits.
const MAX_COMPRESSING_BLOBS_PER_WORKER: usize = 4;

/// What to push and how to describe it.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Snapshot id; generated (`<UTC yyyymmddThhmmss>Z-<8 hex>`) if `None`.
    pub id: Option<SnapshotId>,
    pub labels: BTreeMap<String, String>,
    pub group: Option<String>,
    /// Recorded in the manifest, and its pages are reused (dedup base).
    pub parent: Option<SnapshotId>,
    /// More snapshots whose pages may be reused, without being recorded as the parent.
    pub dedup_from: Vec<SnapshotId>,
    pub source: NodeFacts,
    pub runsc_metadata: BTreeMap<String, String>,
    /// The sandbox's containers and pod, recorded in the manifest.
    pub sandbox: Option<crate::manifest::SandboxRecord>,
    /// Uploads in flight; 0 = default (4).
    pub concurrency: usize,
    /// Whether new blobs are zstd-compressed (the default) or stored raw.
    pub compression: Compression,
}

/// How a push stores the new blobs it finds. Either way every page is hashed (sha256) and
/// verified on every read; raw blobs are part of format 1.0 (a blob that zstd does not shrink
/// by 5% is stored raw anyway), so every reader reads both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// zstd level 1 per blob where that saves at least 5%, else raw.
    #[default]
    Zstd,
    /// Every new blob raw: no zstd at all.
    Raw,
    /// Raw on a `file://` store, zstd on an object store. For a checkpoint racing its
    /// durability deadline: on 2 cores zstd of a 692 MiB runsc image takes ~1 s of CPU (half
    /// of the push's) to save disk space, while over a network the smaller upload may win.
    RawWhenLocal,
}

/// How long a followed push waits before it looks at a growing file again.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// New packs held in memory while a followed file's writer still writes (see
/// `Pipeline::seal_pack`): 64 MiB, sixteen packs.
const HOLD_MAX_BYTES: usize = 64 << 20;

/// The state of whatever writes a followed push's source (runsc writing its image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterState {
    /// Still writing: followed files may grow.
    Writing,
    /// Finished successfully: every file is complete. `runsc_metadata`, when given, replaces
    /// [`PushOptions::runsc_metadata`] (it is known only once the image is written).
    Done {
        runsc_metadata: Option<BTreeMap<String, String>>,
    },
    /// Failed: the push stops and commits nothing.
    Failed(String),
}

/// A push that starts while its source directory is still being written.
///
/// The files named in `files` must be written front to back by plain appends, never
/// rewritten or truncated (runsc 20240729 writes `pages.img` that way; `podsnap_runtime`'s
/// release policy says which releases do). They are pushed as they grow: a block is read
/// once the file extends past it, or once the writer is done. Every other file is pushed
/// after the writer is done. The manifest is the same as a push of the finished directory.
#[derive(Clone, Debug)]
pub struct Follow {
    /// Paths relative to the pushed directory, pushed in this order while they grow.
    pub files: Vec<String>,
    /// The writer's state; a dropped sender before `Done` counts as a failure.
    pub state: tokio::sync::watch::Receiver<WriterState>,
    /// While the writer writes, stay out of its way: hash one block at a time, and keep new
    /// packs in memory (at most 64 MiB, then wait for the writer) instead of writing them.
    /// For a writer whose sandbox resumes (its freeze lasts as long as the writer). Without
    /// it (a checkpoint that stops its sandbox: nothing waits but the checkpoint itself),
    /// every core's idle time hashes and packs are written as they fill. Either way the
    /// push works at `SCHED_IDLE` priority until the writer is done.
    pub yield_to_writer: bool,
}

impl Follow {
    /// The writer's state now, with a dropped sender counted as failed.
    fn now(&mut self) -> WriterState {
        if self.state.has_changed().is_err() && *self.state.borrow() == WriterState::Writing {
            return WriterState::Failed("the image's writer went away".into());
        }
        self.state.borrow_and_update().clone()
    }

    /// Waits for the writer's next change of state, or a short while.
    async fn wait(&mut self) {
        let _ = tokio::time::timeout(FOLLOW_POLL, self.state.changed()).await;
    }

    /// Waits until the writer is done; its metadata, if it gave any.
    async fn finished(&mut self) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        loop {
            match self.now() {
                WriterState::Done { runsc_metadata } => return Ok(runsc_metadata),
                WriterState::Failed(why) => return Err(StoreError::WriterFailed(why)),
                WriterState::Writing => {
                    if self.state.changed().await.is_err() {
                        // Sender gone: `now` decides on the last value.
                        continue;
                    }
                }
            }
        }
    }

    /// Opens a followed file once it exists.
    async fn open(&mut self, path: &Path) -> Result<File, StoreError> {
        loop {
            let state = self.now();
            if let WriterState::Failed(why) = state {
                return Err(StoreError::WriterFailed(why));
            }
            match File::open(path) {
                Ok(f) => return Ok(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if matches!(state, WriterState::Done { .. }) {
                        return Err(StoreError::io(
                            "open (the writer finished without it)",
                            path,
                            e,
                        ));
                    }
                }
                Err(e) => return Err(StoreError::io("open", path, e)),
            }
            self.wait().await;
        }
    }

    /// The length of block `b` of `file` once it is final: `Some(READ_BLOCK)` once the file
    /// extends past the block, the rest of it once the writer is done, `None` past the end.
    async fn block_len(
        &mut self,
        file: &File,
        path: &Path,
        b: u64,
    ) -> Result<Option<usize>, StoreError> {
        let start = b * READ_BLOCK as u64;
        let end = start + READ_BLOCK as u64;
        loop {
            // The state first: a size read after `Done` is final.
            let state = self.now();
            if let WriterState::Failed(why) = state {
                return Err(StoreError::WriterFailed(why));
            }
            let size = file
                .metadata()
                .map_err(|e| StoreError::io("stat", path, e))?
                .len();
            if size >= end {
                return Ok(Some(READ_BLOCK));
            }
            if matches!(state, WriterState::Done { .. }) {
                return Ok((size > start).then(|| (size - start) as usize));
            }
            self.wait().await;
        }
    }
}

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    pub id: SnapshotId,
    pub bytes_read: u64,
    /// Bytes sent to the store: packs, indexes and the manifest.
    pub bytes_uploaded: u64,
    /// Bytes of non-zero pages found in the dedup base or earlier in this push.
    pub bytes_deduplicated: u64,
    /// Bytes of all-zero pages (never stored).
    pub bytes_zero: u64,
    pub objects_written: u64,
    pub manifest: crate::Manifest,
}

/// What [`Pipeline::write_indexes`] returns: the manifest's file entries, every pack the
/// indexes name, and (when asked) each file's pages for the page cache.
type IndexesWritten = (
    Vec<FileEntry>,
    std::collections::BTreeSet<String>,
    Vec<Vec<CachePage>>,
);

/// A file to push.
struct Source {
    rel: String,
    abs: PathBuf,
    size: u64,
    mode: u32,
}

fn walk(root: &Path) -> Result<Vec<Source>, StoreError> {
    let meta = std::fs::metadata(root).map_err(|e| StoreError::io("read", root, e))?;
    if !meta.is_dir() {
        return Err(StoreError::UnsupportedFile {
            path: root.to_path_buf(),
            kind: "not a directory",
        });
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| StoreError::io("read directory", &dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io("read directory", &dir, e))?;
            let abs = entry.path();
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| StoreError::UnsupportedFile {
                path: abs.clone(),
                kind: "name is not utf-8",
            })?;
            let rel = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let md =
                std::fs::symlink_metadata(&abs).map_err(|e| StoreError::io("stat", &abs, e))?;
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push((abs, rel));
            } else if ft.is_file() {
                validate_rel_path(&rel).map_err(|_| StoreError::UnsupportedFile {
                    path: abs.clone(),
                    kind: "name not representable",
                })?;
                if md.len() > MAX_FILE_SIZE {
                    return Err(StoreError::Limit(format!(
                        "{} is larger than 1 TiB",
                        abs.display()
                    )));
                }
                out.push(Source {
                    rel,
                    abs,
                    size: md.len(),
                    mode: md.mode() & 0o777,
                });
            } else {
                let kind = if ft.is_symlink() {
                    "symlink"
                } else {
                    "special file"
                };
                return Err(StoreError::UnsupportedFile { path: abs, kind });
            }
        }
    }
    if out.len() > MAX_FILES {
        return Err(StoreError::Limit(format!(
            "{} files exceed the limit of {MAX_FILES}",
            out.len()
        )));
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Where a known page lives: a blob of the push-wide blob table and a page within it.
#[derive(Clone, Copy)]
struct PageLoc {
    blob: u32,
    page: u32,
}

/// A blob in the push-wide table: either reused (from a dedup base) or new (filled when packed).
#[derive(Clone, Copy)]
struct GBlob {
    /// Index into `packs`, `u32::MAX` while the blob waits to be packed.
    pack: u32,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    codec: Codec,
}

const PENDING: u32 = u32::MAX;

/// Per-file result of the dedup stage, in push-wide blob numbers.
#[derive(Default)]
struct FileBuild {
    index: FileIndex,
    zero_bytes: u64,
}

/// Read-block buffers, reused: a fresh 4 MiB buffer costs a page fault per 4 KiB page the
/// first time it is written (as much CPU as the read itself), and freeing and allocating
/// them in turn churns the allocator. A block goes back to the pool when the last blob
/// slicing it has been packed.
struct BlockPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Buffers kept for reuse at most (more are freed).
    keep: usize,
}

impl BlockPool {
    fn new(keep: usize) -> Arc<Self> {
        Arc::new(BlockPool {
            free: std::sync::Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of READ_BLOCK bytes with unspecified contents.
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0u8; READ_BLOCK])
    }
}

/// A filled block: the first `len` bytes of a pooled buffer.
struct PooledBlock {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BlockPool>,
}

impl AsRef<[u8]> for PooledBlock {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.pool.keep {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

/// A new blob handed to compression.
struct BlobJob {
    id: u32,
    data: Bytes,
    digests: Vec<[u8; 32]>,
}

struct Compressed {
    id: u32,
    raw_len: u32,
    codec: Codec,
    bytes: Bytes,
    digests: Vec<[u8; 32]>,
}

/// A block read and its pages hashed (`None`: a zero page).
type HashedBlock = (Bytes, Vec<Option<[u8; 32]>>);

/// Reads one file's blocks and hashes their pages on the worker pool; cloned per block.
#[derive(Clone)]
struct BlockReader {
    file: Arc<File>,
    path: PathBuf,
    /// The file's size (unused when followed).
    size: u64,
    pool: Arc<BlockPool>,
    /// While the writer still writes (runsc, with its sandbox paused), blocks are hashed
    /// one at a time on the idle-priority thread: the writer keeps the CPUs it wants, and
    /// at most one block waits there when the host is busy.
    gate: Arc<Semaphore>,
    follow: Option<Follow>,
}

/// Where a pool job runs: on the normal workers, or at idle priority while a writer writes
/// (one thread when yielding to it, one per core otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prio {
    Normal,
    Idle,
    IdleWide,
}

impl Prio {
    /// The priority of work found while the writer of `follow` is in state `writing`.
    fn while_writing(follow: Option<&Follow>, writing: bool) -> Prio {
        match follow {
            Some(f) if writing && f.yield_to_writer => Prio::Idle,
            Some(_) if writing => Prio::IdleWide,
            _ => Prio::Normal,
        }
    }

    fn run<T, F>(self, f: F) -> futures::future::BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self {
            Prio::Normal => crate::pool::run(f).boxed(),
            Prio::Idle => crate::pool::run_idle(f).boxed(),
            Prio::IdleWide => crate::pool::run_idle_wide(f).boxed(),
        }
    }
}

impl BlockReader {
    async fn open(
        src: &Source,
        workers: usize,
        follow: Option<&Follow>,
    ) -> Result<BlockReader, StoreError> {
        let file = match follow {
            Some(f) => f.clone().open(&src.abs).await?,
            None => File::open(&src.abs).map_err(|e| StoreError::io("open", &src.abs, e))?,
        };
        Ok(BlockReader {
            file: Arc::new(file),
            path: src.abs.clone(),
            size: src.size,
            // Blocks alive at once: those being hashed, and those that blobs being
            // compressed or waiting to be packed still slice.
            pool: BlockPool::new(2 * workers + MAX_COMPRESSING_BLOBS_PER_WORKER * workers),
            gate: Arc::new(Semaphore::new(match follow {
                Some(f) if !f.yield_to_writer => workers,
                _ => 1,
            })),
            follow: follow.cloned(),
        })
    }

    /// Block `b`, read and hashed; `None` past the end of a followed file.
    async fn read(mut self, b: u64) -> Result<Option<HashedBlock>, StoreError> {
        let start = b * READ_BLOCK as u64;
        let mut permit = None;
        let mut prio = Prio::Normal;
        let len = match &mut self.follow {
            Some(f) => match f.block_len(&self.file, &self.path, b).await? {
                Some(len) => {
                    if f.now() == WriterState::Writing {
                        let gate = self.gate.clone();
                        permit = Some(gate.acquire_owned().await.expect("never closed"));
                        prio = Prio::while_writing(Some(f), true);
                    }
                    len
                }
                None => return Ok(None),
            },
            None => (self.size - start).min(READ_BLOCK as u64) as usize,
        };
        let BlockReader {
            file, path, pool, ..
        } = self;
        let job = move || {
            let _permit = permit;
            let mut buf = pool.take();
            file.read_exact_at(&mut buf[..len], start)
                .map_err(|e| StoreError::io("read", &path, e))?;
            let hashes = chunk::hash_pages(&buf[..len]);
            let block = PooledBlock { buf, len, pool };
            Ok::<_, StoreError>((Bytes::from_owner(block), hashes))
        };
        Ok(Some(prio.run(job).await??))
    }
}

/// Compresses (and, with a key, seals) one new blob: with `compress`, zstd where that is
/// smaller, else the raw bytes, which are a slice of the block (no copy).
fn compress_blob(j: BlobJob, key: Option<&Key>, compress: bool) -> Compressed {
    let zstd = if compress {
        chunk::try_compress(&j.data)
    } else {
        None
    };
    let (mut codec, mut bytes) = match zstd {
        Some(z) => (Codec::Zstd, Bytes::from(z)),
        None => (Codec::Raw, j.data.clone()),
    };
    if let Some(k) = key {
        let aad = blob_aad(codec as u8, j.data.len() as u32);
        bytes = Bytes::from(k.seal(&aad, &bytes));
        codec = codec.sealed();
    }
    Compressed {
        id: j.id,
        raw_len: j.data.len() as u32,
        codec,
        bytes,
        digests: j.digests,
    }
}

/// [`compress_blob`] as one pool job (a blob is up to 1 MiB, so every worker has work even
/// when a block holds few blobs), at priority `prio`. A raw blob without a key is no work:
/// it is ready at once, without a trip through the pool.
fn compress_on_pool(
    j: BlobJob,
    key: Option<Key>,
    compress: bool,
    prio: Prio,
) -> futures::future::BoxFuture<'static, Result<Compressed, StoreError>> {
    if !compress && key.is_none() {
        return futures::future::ready(Ok(compress_blob(j, None, false))).boxed();
    }
    prio.run(move || compress_blob(j, key.as_ref(), compress))
}

/// Fails when the file's size now is not the `size` pushed, or `read` fell short of it: it
/// changed while we read it (or, followed, after its writer said it was done).
fn check_size_unchanged(src: &Source, size: u64, read: u64) -> Result<(), StoreError> {
    let now = std::fs::metadata(&src.abs).map_err(|e| StoreError::io("stat", &src.abs, e))?;
    if now.len() != size || read != size {
        return Err(StoreError::Io {
            op: "read (file changed size during push)",
            path: src.abs.clone(),
            source: std::io::Error::other("size changed"),
        });
    }
    Ok(())
}

struct Pipeline<'a> {
    inner: &'a Arc<Inner>,
    progress: &'a dyn Progress,
    snapshot: String,
    /// The group key when this push is encrypted.
    key: Option<Key>,
    known: HashMap<[u8; 32], PageLoc>,
    blobs: Vec<GBlob>,
    packs: Vec<[u8; 32]>,
    /// Packs that come from a dedup base (must still exist at commit).
    reused_packs: usize,
    /// Reused packs whose existence is being (or was) checked, by name.
    checked_packs: std::collections::HashSet<[u8; 32]>,
    pack_checks: JoinSet<Result<(), StoreError>>,
    /// Checks in flight at most.
    check_slots: Arc<Semaphore>,
    // The open pack.
    pack_buf: PackBuf,
    /// Pack buffers, reused.
    pack_pool: Arc<PackPool>,
    pack_hasher: Sha256,
    pack_slot: Option<u32>,
    pack_seq: u64,
    /// Pack uploads in flight. A push that fails drops its pipeline, and with it this set,
    /// which aborts them.
    uploads: JoinSet<Result<u64, StoreError>>,
    upload_slots: Arc<Semaphore>,
    /// Whether new blobs are zstd-compressed (else stored raw).
    compress: bool,
    /// The writer of the file being pushed, while it is followed.
    writer: Option<Follow>,
    /// Sealed packs not uploaded yet because the writer still writes, and their bytes.
    held: Vec<([u8; 32], PackBuf)>,
    held_bytes: usize,
    // Statistics.
    bytes_read: u64,
    bytes_zero: u64,
    bytes_dedup: u64,
    bytes_uploaded: u64,
    objects_written: u64,
}

impl<'a> Pipeline<'a> {
    /// Adds the blobs and page digests of a dedup base's index.
    fn add_base(&mut self, idx: &FileIndex) {
        let pack_base = self.packs.len() as u32;
        self.packs.extend_from_slice(&idx.packs);
        self.reused_packs = self.packs.len();
        let blob_base = self.blobs.len() as u32;
        for b in &idx.blobs {
            self.blobs.push(GBlob {
                pack: pack_base + b.pack,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
                codec: b.codec,
            });
        }
        let mut d = 0usize;
        for e in &idx.extents {
            if e.is_zero() {
                continue;
            }
            for p in 0..e.pages {
                self.known.entry(idx.digests[d]).or_insert(PageLoc {
                    blob: blob_base + e.blob,
                    page: e.first_page + p,
                });
                d += 1;
            }
        }
    }

    /// The dedup stage for one block of file `f`, starting at file page `first_page`.
    fn dedup(
        &mut self,
        build: &mut FileBuild,
        block: &Bytes,
        hashes: &[Option<[u8; 32]>],
    ) -> Vec<BlobJob> {
        let mut jobs = Vec::new();
        // The run of new pages being collected: (blob id, first page index in block, digests).
        let mut run: Option<(u32, usize, Vec<[u8; 32]>)> = None;
        let flush = |run: &mut Option<(u32, usize, Vec<[u8; 32]>)>, jobs: &mut Vec<BlobJob>| {
            if let Some((id, start, digests)) = run.take() {
                let begin = start * PAGE_SIZE;
                let end = (begin + digests.len() * PAGE_SIZE).min(block.len());
                jobs.push(BlobJob {
                    id,
                    data: block.slice(begin..end),
                    digests,
                });
            }
        };
        for (i, h) in hashes.iter().enumerate() {
            let len = (block.len() - i * PAGE_SIZE).min(PAGE_SIZE) as u64;
            match h {
                None => {
                    flush(&mut run, &mut jobs);
                    build.index.push_extent(ZERO_BLOB, 0, 1);
                    build.zero_bytes += len;
                    self.bytes_zero += len;
                }
                Some(d) => {
                    if let Some(&loc) = self.known.get(d) {
                        self.check_reused(loc.blob);
                        flush(&mut run, &mut jobs);
                        build.index.push_extent(loc.blob, loc.page, 1);
                        build.index.digests.push(*d);
                        self.bytes_dedup += len;
                        continue;
                    }
                    if run
                        .as_ref()
                        .is_some_and(|r| r.2.len() as u32 >= PAGES_PER_BLOB)
                    {
                        flush(&mut run, &mut jobs);
                    }
                    let r = run.get_or_insert_with(|| {
                        let id = self.blobs.len() as u32;
                        self.blobs.push(GBlob {
                            pack: PENDING,
                            offset: 0,
                            stored_len: 0,
                            raw_len: 0,
                            codec: Codec::Raw,
                        });
                        (id, i, Vec::new())
                    });
                    let page = r.2.len() as u32;
                    self.known.insert(*d, PageLoc { blob: r.0, page });
                    build.index.push_extent(r.0, page, 1);
                    build.index.digests.push(*d);
                    r.2.push(*d);
                }
            }
        }
        flush(&mut run, &mut jobs);
        jobs
    }

    async fn add_compressed(&mut self, c: Compressed) -> Result<(), StoreError> {
        let slot = match self.pack_slot {
            Some(s) => s,
            None => {
                let s = self.packs.len() as u32;
                self.packs.push([0; 32]);
                self.pack_slot = Some(s);
                self.pack_hasher = Sha256::new();
                self.pack_hasher.update(b"podsnap-pack\0");
                if let Some(k) = &self.key {
                    // Keyed names: a pack's name says nothing about its pages.
                    self.pack_hasher.update(k.mac(b"podsnap pack name", &[]));
                }
                self.pack_hasher.update(self.snapshot.as_bytes());
                self.pack_hasher.update(self.pack_seq.to_le_bytes());
                s
            }
        };
        let offset = self.pack_buf.len() as u64;
        self.pack_hasher.update([c.codec as u8]);
        self.pack_hasher.update(c.raw_len.to_le_bytes());
        self.pack_hasher
            .update((c.bytes.len() as u32).to_le_bytes());
        for d in &c.digests {
            self.pack_hasher.update(d);
        }
        self.pack_buf.extend_from_slice(&c.bytes);
        self.blobs[c.id as usize] = GBlob {
            pack: slot,
            offset,
            stored_len: c.bytes.len() as u32,
            raw_len: c.raw_len,
            codec: c.codec,
        };
        if self.pack_buf.len() >= PACK_TARGET {
            self.seal_pack().await?;
        }
        Ok(())
    }

    async fn seal_pack(&mut self) -> Result<(), StoreError> {
        let Some(slot) = self.pack_slot.take() else {
            return Ok(());
        };
        let hasher = std::mem::replace(&mut self.pack_hasher, Sha256::new());
        let name: [u8; 32] = hasher.finalize().into();
        self.packs[slot as usize] = name;
        self.pack_seq += 1;
        let buf = std::mem::replace(&mut self.pack_buf, self.pack_pool.take());
        // While the writer (runsc, its sandbox paused) still writes, new packs wait in memory:
        // writing them would take page cache and disk bandwidth from the writer. Once
        // `HOLD_MAX_BYTES` wait, the push waits for the writer to finish.
        if self.writer_writing() && self.writer.as_ref().is_some_and(|w| w.yield_to_writer) {
            self.held_bytes += buf.len();
            self.held.push((name, buf));
            if self.held_bytes >= HOLD_MAX_BYTES {
                if let Some(w) = self.writer.as_mut() {
                    w.finished().await?;
                }
                self.release_held().await?;
            }
            return Ok(());
        }
        self.start_upload(name, buf).await
    }

    /// Whether the followed file's writer is still writing.
    fn writer_writing(&mut self) -> bool {
        self.writer
            .as_mut()
            .is_some_and(|w| w.now() == WriterState::Writing)
    }

    /// Starts the uploads of the packs held while the writer wrote.
    async fn release_held(&mut self) -> Result<(), StoreError> {
        self.held_bytes = 0;
        for (name, buf) in std::mem::take(&mut self.held) {
            self.start_upload(name, buf).await?;
        }
        Ok(())
    }

    /// Uploads a sealed pack (waiting for an upload slot).
    async fn start_upload(&mut self, name: [u8; 32], buf: PackBuf) -> Result<(), StoreError> {
        let permit = self
            .upload_slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        self.collect_uploads(false).await?;
        let inner = self.inner.clone();
        self.uploads.spawn(async move {
            let _permit = permit;
            let key = pack_key(&name);
            let len = buf.len() as u64;
            // On a file:// store, on disk before the manifest can name it (its directory is
            // synced once, before the commit), written around the page cache.
            if let Some(file) = inner.local_file(&key) {
                tokio::task::spawn_blocking(move || {
                    crate::direct::write_durable(&file, buf.as_ref())
                        .map_err(|e| StoreError::io("write", &file, e))
                })
                .await
                .map_err(StoreError::Task)??;
                return Ok(len);
            }
            let path = inner.path(&key);
            let payload = PutPayload::from(Bytes::from_owner(buf));
            inner
                .retry("write", &key, || inner.os.put(&path, payload.clone()))
                .await
                .map_err(|e| inner.err("write", &key, e))?;
            inner.sync_object(&key).await?;
            Ok(len)
        });
        Ok(())
    }

    /// Accounts for finished uploads; with `all`, waits for every upload.
    async fn collect_uploads(&mut self, all: bool) -> Result<(), StoreError> {
        loop {
            let next = if all {
                self.uploads.join_next().await
            } else {
                self.uploads.try_join_next()
            };
            let Some(r) = next else { return Ok(()) };
            let n = r.map_err(StoreError::Task)??;
            self.bytes_uploaded += n;
            self.objects_written += 1;
            self.progress.event(ProgressEvent::BytesUploaded(n));
        }
    }

    /// Pushes one file; with `follow`, while its writer still appends to it (`src.size` is
    /// then ignored, and the returned build's `file_size` is the finished file's).
    ///
    /// Blocks are read and hashed ahead on the worker pool, deduplicated here in file order,
    /// their new blobs compressed on the pool and packed in order.
    async fn push_file(
        &mut self,
        src: &Source,
        workers: usize,
        follow: Option<&Follow>,
    ) -> Result<FileBuild, StoreError> {
        let reader = BlockReader::open(src, workers, follow).await?;
        let blocks = match follow {
            Some(_) => u64::MAX / READ_BLOCK as u64,
            None => src.size.div_ceil(READ_BLOCK as u64),
        };
        let mut hashed = futures::stream::iter(0..blocks)
            .map(|b| reader.clone().read(b))
            .buffered(2 * workers);
        let mut build = FileBuild::default();
        let mut compressing = FuturesOrdered::new();
        let mut read = 0u64;
        self.writer = follow.cloned();
        while let Some(r) = hashed.next().await {
            if !self.held.is_empty() && !self.writer_writing() {
                self.release_held().await?;
            }
            let Some((block, hashes)) = r? else { break };
            read += block.len() as u64;
            self.bytes_read += block.len() as u64;
            self.progress
                .event(ProgressEvent::BytesRead(block.len() as u64));
            // Blobs found while the writer still writes are compressed at idle priority too.
            let prio = Prio::while_writing(follow, self.writer_writing());
            for j in self.dedup(&mut build, &block, &hashes) {
                compressing.push_back(compress_on_pool(j, self.key.clone(), self.compress, prio));
            }
            while compressing.len() > MAX_COMPRESSING_BLOBS_PER_WORKER * workers {
                let c = compressing.next().await.expect("non-empty")?;
                self.add_compressed(c).await?;
            }
        }
        drop(hashed);
        while let Some(c) = compressing.next().await {
            self.add_compressed(c?).await?;
        }
        // The file is complete, so its writer is done (or failed: then it says so).
        if let Some(w) = self.writer.as_mut() {
            w.finished().await?;
        }
        self.writer = None;
        self.release_held().await?;
        let size = if follow.is_some() { read } else { src.size };
        build.index.file_size = size;
        check_size_unchanged(src, size, read)?;
        debug_assert_eq!(
            build
                .index
                .extents
                .iter()
                .map(|e| e.pages as u64)
                .sum::<u64>(),
            page_count(size)
        );
        Ok(build)
    }

    /// Turns a file's push-wide blob numbers into the index's own tables.
    /// Takes the build's digests (the extents stay, for the reused-pack check).
    fn finish_index(&self, build: &mut FileBuild) -> FileIndex {
        let mut packs: Vec<[u8; 32]> = Vec::new();
        let mut pack_map: HashMap<u32, u32> = HashMap::new();
        let mut blobs: Vec<BlobRef> = Vec::new();
        let mut blob_map: HashMap<u32, u32> = HashMap::new();
        let mut idx = FileIndex {
            file_size: build.index.file_size,
            digests: std::mem::take(&mut build.index.digests),
            ..Default::default()
        };
        for e in &build.index.extents {
            if e.is_zero() {
                idx.push_extent(ZERO_BLOB, 0, e.pages);
                continue;
            }
            let local = *blob_map.entry(e.blob).or_insert_with(|| {
                let g = self.blobs[e.blob as usize];
                debug_assert_ne!(g.pack, PENDING);
                let pack = *pack_map.entry(g.pack).or_insert_with(|| {
                    packs.push(self.packs[g.pack as usize]);
                    packs.len() as u32 - 1
                });
                blobs.push(BlobRef {
                    pack,
                    offset: g.offset,
                    stored_len: g.stored_len,
                    raw_len: g.raw_len,
                    codec: g.codec,
                });
                blobs.len() as u32 - 1
            });
            idx.push_extent(local, e.first_page, e.pages);
        }
        idx.packs = packs;
        idx.blobs = blobs;
        idx
    }
}

impl Store {
    /// Pushes every regular file under `dir` as a new snapshot and commits its manifest.
    ///
    /// The phases: check the id is free and list the files; load the dedup bases' pages;
    /// push every file through the pipeline (packs uploaded as they fill); write one index
    /// per file; check that the reused packs still exist; commit the manifest (create-only).
    #[tracing::instrument(skip_all, fields(store = %self.inner.display, dir = %dir.display()))]
    pub async fn push(
        &self,
        dir: &Path,
        opts: PushOptions,
        progress: &dyn Progress,
    ) -> Result<PushReport, StoreError> {
        self.push_inner(dir, opts, progress, None).await
    }

    /// Like [`Store::push`], started while `dir` is still being written: the files `follow`
    /// names are pushed as they grow (see [`Follow`]), the rest once the writer is done.
    /// Nothing is committed unless the writer finishes successfully. `Started` is sent
    /// twice: first with a total of 0 (unknown), then with the finished files' total.
    #[tracing::instrument(skip_all, fields(store = %self.inner.display, dir = %dir.display()))]
    pub async fn push_following(
        &self,
        dir: &Path,
        opts: PushOptions,
        progress: &dyn Progress,
        follow: Follow,
    ) -> Result<PushReport, StoreError> {
        for rel in &follow.files {
            validate_rel_path(rel).map_err(|_| StoreError::UnsupportedFile {
                path: dir.join(rel),
                kind: "name not representable",
            })?;
        }
        self.push_inner(dir, opts, progress, Some(follow)).await
    }

    async fn push_inner(
        &self,
        dir: &Path,
        mut opts: PushOptions,
        progress: &dyn Progress,
        follow: Option<Follow>,
    ) -> Result<PushReport, StoreError> {
        let id = opts.id.clone().unwrap_or_else(SnapshotId::generate);
        tracing::info!(snapshot = %id, "push started");
        let inner = &self.inner;
        if inner.exists(&manifest_key(&id)).await? {
            return Err(StoreError::SnapshotExists(id.to_string()));
        }
        // A followed source is listed once it is finished.
        let early = match follow {
            Some(_) => None,
            None => Some(list_files(dir).await?),
        };
        let seal = inner.keys.for_group(opts.group.as_deref()).cloned();
        let mut p = Pipeline::new(
            inner,
            progress,
            &id,
            seal.clone(),
            opts.concurrency,
            opts.compression,
        );
        let bases: Vec<SnapshotId> = opts
            .parent
            .iter()
            .chain(&opts.dedup_from)
            .cloned()
            .collect();
        p.load_dedup_bases(&id, &bases).await?;

        let mut followed = HashMap::new();
        if let Some(mut f) = follow {
            progress.event(ProgressEvent::Started { total_bytes: 0 });
            followed = p.push_followed(dir, &f).await?;
            if let Some(meta) = f.finished().await? {
                opts.runsc_metadata = meta;
            }
        }
        let files = match early {
            Some(files) => files,
            None => list_files(dir).await?,
        };
        let total: u64 = files.iter().map(|f| f.size).sum();
        progress.event(ProgressEvent::Started { total_bytes: total });
        let mut builds = p.push_files(&files, followed).await?;
        // The dedup map is no longer needed: free it first (about 40 bytes per distinct
        // page), since the indexes are built at the push's memory peak.
        p.known = HashMap::new();
        // The node's page cache links the pushed files (a checkpoint's image, in its own
        // work dir) so that restoring this snapshot here downloads nothing; not for
        // encrypted snapshots, whose pages the cache never holds.
        let cache = inner
            .cache
            .clone()
            .filter(|c| seal.is_none() && c.can_adopt_from(dir));
        let (entries, all_packs, cache_pages) = p
            .write_indexes(&files, &mut builds, cache.is_some())
            .await?;
        p.finish_pack_checks().await?;
        p.make_durable(&entries).await?;

        progress.event(ProgressEvent::Committing);
        let manifest = p.manifest(id.clone(), opts, seal.as_ref(), entries, all_packs, total);
        let (manifest, body_len) = commit_manifest(inner, manifest, seal.as_ref()).await?;
        tracing::info!(
            snapshot = %id,
            bytes_read = p.bytes_read,
            bytes_uploaded = p.bytes_uploaded,
            "push committed"
        );
        if let Some(c) = cache {
            adopt_pushed(&c, &files, cache_pages, &manifest).await?;
        }
        Ok(PushReport {
            id,
            bytes_read: p.bytes_read,
            bytes_uploaded: p.bytes_uploaded + body_len,
            bytes_deduplicated: p.bytes_dedup,
            bytes_zero: p.bytes_zero,
            objects_written: p.objects_written + 1,
            manifest,
        })
    }
}

/// The regular files under `dir` (listed on a blocking thread).
async fn list_files(dir: &Path) -> Result<Vec<Source>, StoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || walk(&dir))
        .await
        .map_err(StoreError::Task)?
}

/// Links the pushed files into the node's page cache, each under its index's file key.
async fn adopt_pushed(
    cache: &crate::cache::PageCache,
    files: &[Source],
    cache_pages: Vec<Vec<CachePage>>,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let linked: Vec<crate::cache::Adoption> = files
        .iter()
        .zip(cache_pages)
        .map(|(f, pages)| {
            let key = manifest
                .files
                .iter()
                .find(|e| e.path == f.rel)
                .and_then(|e| crate::cache::file_key(&e.index.digest));
            (f.abs.clone(), pages, key)
        })
        .collect();
    cache.adopt_all(linked).await?;
    Ok(())
}

impl Pipeline<'_> {
    /// Makes everything the manifest will name durable before it is committed (the packs
    /// were fsynced as their uploads finished; their directory is synced here).
    async fn make_durable(&self, entries: &[FileEntry]) -> Result<(), StoreError> {
        let packs: Vec<String> = self.packs[self.reused_packs..]
            .iter()
            .map(pack_key)
            .collect();
        let indexes: Vec<String> = entries.iter().map(|e| index_key(&e.index.digest)).collect();
        self.inner.make_durable(&indexes, &packs).await
    }

    /// The manifest of this push (digest and MAC still empty: `commit_manifest` fills them).
    fn manifest(
        &self,
        id: SnapshotId,
        opts: PushOptions,
        seal: Option<&Key>,
        entries: Vec<FileEntry>,
        all_packs: std::collections::BTreeSet<String>,
        total: u64,
    ) -> Manifest {
        Manifest {
            format_version: if seal.is_some() {
                crate::FORMAT_VERSION_ENCRYPTED
            } else {
                crate::FORMAT_VERSION
            }
            .to_string(),
            id,
            created: crate::now_rfc3339(),
            labels: opts.labels,
            group: opts.group,
            parent: opts.parent,
            source: opts.source,
            runsc_metadata: opts.runsc_metadata,
            sandbox: opts.sandbox,
            totals: Totals {
                files: entries.len() as u64,
                bytes: total,
                zero_bytes: self.bytes_zero,
                bytes_uploaded: self.bytes_uploaded,
                objects_written: self.objects_written,
            },
            files: entries,
            encryption: seal.map(|k| Encryption {
                algorithm: crate::crypto::ALGORITHM.to_string(),
                key_id: k.id().to_string(),
                packs: all_packs.into_iter().collect(),
            }),
            digest: String::new(),
            mac: None,
        }
    }
}

impl<'a> Pipeline<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        progress: &'a dyn Progress,
        id: &SnapshotId,
        seal: Option<Key>,
        concurrency: usize,
        compression: Compression,
    ) -> Self {
        let uploads = if concurrency == 0 {
            DEFAULT_UPLOADS
        } else {
            concurrency
        };
        // Room for a sealed blob past the target (its seal adds a nonce and a tag).
        let pack_pool = PackPool::new(uploads + 2, PACK_TARGET + MAX_BLOB_RAW + PAGE_SIZE);
        Pipeline {
            inner,
            progress,
            snapshot: id.to_string(),
            key: seal,
            known: HashMap::new(),
            blobs: Vec::new(),
            packs: Vec::new(),
            reused_packs: 0,
            checked_packs: std::collections::HashSet::new(),
            pack_checks: JoinSet::new(),
            check_slots: Arc::new(Semaphore::new(16)),
            pack_buf: pack_pool.take(),
            pack_pool,
            pack_hasher: Sha256::new(),
            pack_slot: None,
            pack_seq: 0,
            uploads: JoinSet::new(),
            upload_slots: Arc::new(Semaphore::new(uploads)),
            compress: match compression {
                Compression::Zstd => true,
                Compression::Raw => false,
                Compression::RawWhenLocal => inner.local_root.is_none(),
            },
            writer: None,
            held: Vec::new(),
            held_bytes: 0,
            bytes_read: 0,
            bytes_zero: 0,
            bytes_dedup: 0,
            bytes_uploaded: 0,
            objects_written: 0,
        }
    }

    /// Dedup bases: the pages of the parent and of whatever else we were told about.
    async fn load_dedup_bases(
        &mut self,
        id: &SnapshotId,
        bases: &[SnapshotId],
    ) -> Result<(), StoreError> {
        let inner = self.inner;
        for base in bases {
            let m = inner.read_manifest(base).await?;
            // Pages are shared only between snapshots sealed by the same key (or none).
            let base_key = m.encryption.as_ref().map(|e| e.key_id.as_str());
            if base_key != self.key.as_ref().map(Key::id) {
                tracing::info!(snapshot = %id, base = %base,
                    "not deduplicating against a snapshot with other encryption");
                continue;
            }
            let base_key = match &self.key {
                Some(_) => inner.key_for(&m)?,
                None => None,
            };
            for f in &m.files {
                let idx = inner.read_index(f, base_key).await?;
                self.add_base(&idx);
            }
        }
        Ok(())
    }

    /// The followed files of a push, each while its writer appends to it; keyed by path.
    async fn push_followed(
        &mut self,
        dir: &Path,
        follow: &Follow,
    ) -> Result<HashMap<String, FileBuild>, StoreError> {
        let workers = crate::pool::workers();
        let mut out = HashMap::new();
        for rel in &follow.files {
            let src = Source {
                rel: rel.clone(),
                abs: dir.join(rel),
                size: 0,
                mode: 0,
            };
            self.progress.event(ProgressEvent::FileStarted {
                path: rel.clone(),
                size: 0,
            });
            let b = self.push_file(&src, workers, Some(follow)).await?;
            out.insert(rel.clone(), b);
            self.progress
                .event(ProgressEvent::FileFinished { path: rel.clone() });
        }
        Ok(out)
    }

    /// Every file through the pipeline (those in `followed` were pushed already, and must
    /// not have changed since), then the last pack sealed and every upload awaited.
    async fn push_files(
        &mut self,
        files: &[Source],
        mut followed: HashMap<String, FileBuild>,
    ) -> Result<Vec<FileBuild>, StoreError> {
        let workers = crate::pool::workers();
        let mut builds = Vec::with_capacity(files.len());
        for src in files {
            if let Some(b) = followed.remove(&src.rel) {
                if b.index.file_size != src.size {
                    return Err(StoreError::Io {
                        op: "read (file changed size after its writer finished)",
                        path: src.abs.clone(),
                        source: std::io::Error::other("size changed"),
                    });
                }
                builds.push(b);
                continue;
            }
            self.progress.event(ProgressEvent::FileStarted {
                path: src.rel.clone(),
                size: src.size,
            });
            let b = self.push_file(src, workers, None).await?;
            self.progress.event(ProgressEvent::FileFinished {
                path: src.rel.clone(),
            });
            builds.push(b);
        }
        if let Some(rel) = followed.keys().next() {
            return Err(StoreError::io(
                "find (a followed file disappeared)",
                rel.as_str(),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        self.seal_pack().await?;
        self.collect_uploads(true).await?;
        Ok(builds)
    }

    /// One index per file, stored unless the store has it already; returns the manifest's
    /// file entries and every pack the indexes name (hex).
    async fn write_indexes(
        &mut self,
        files: &[Source],
        builds: &mut [FileBuild],
        cache_pages: bool,
    ) -> Result<IndexesWritten, StoreError> {
        let inner = self.inner;
        let mut entries = Vec::with_capacity(files.len());
        let mut all_packs = std::collections::BTreeSet::new();
        let mut pages = Vec::new();
        for (src, build) in files.iter().zip(builds.iter_mut()) {
            let idx = self.finish_index(build);
            all_packs.extend(idx.packs.iter().map(hex::encode));
            let seal = self.key.clone();
            let (digest, plain_len, stored, file_pages) = tokio::task::spawn_blocking(move || {
                let file_pages = if cache_pages {
                    crate::cache::index_pages(&idx)
                } else {
                    Vec::new()
                };
                let plain = idx.encode();
                drop(idx);
                let digest = index_digest(seal.as_ref(), &plain);
                let stored = chunk::compress_meta(&plain);
                let stored = match &seal {
                    Some(k) => k.seal(INDEX_AAD, &stored),
                    None => stored,
                };
                (digest, plain.len() as u64, stored, file_pages)
            })
            .await
            .map_err(StoreError::Task)?;
            let ikey = index_key(&digest);
            if !inner.exists(&ikey).await? {
                let ipath = inner.path(&ikey);
                let n = stored.len() as u64;
                let payload = PutPayload::from(stored);
                inner
                    .retry("write", &ikey, || inner.os.put(&ipath, payload.clone()))
                    .await
                    .map_err(|e| inner.err("write", &ikey, e))?;
                self.bytes_uploaded += n;
                self.objects_written += 1;
                self.progress.event(ProgressEvent::BytesUploaded(n));
            }
            entries.push(FileEntry {
                path: src.rel.clone(),
                size: src.size,
                mode: src.mode,
                index: IndexRef {
                    digest,
                    size: plain_len,
                },
                zero_bytes: build.zero_bytes,
            });
            pages.push(file_pages);
        }
        Ok((entries, all_packs, pages))
    }

    /// Reused packs must still exist (a concurrent gc may have swept a deleted parent's):
    /// the first time a page of a dedup base's pack is reused, a check of that pack starts,
    /// so the checks run while the push goes on; [`Pipeline::finish_pack_checks`] awaits them.
    fn check_reused(&mut self, blob: u32) {
        let pack = self.blobs[blob as usize].pack;
        if pack == PENDING || pack as usize >= self.reused_packs {
            return;
        }
        let name = self.packs[pack as usize];
        if !self.checked_packs.insert(name) {
            return;
        }
        let inner = self.inner.clone();
        let slots = self.check_slots.clone();
        self.pack_checks.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let k = pack_key(&name);
            if inner.exists(&k).await? {
                Ok(())
            } else {
                Err(StoreError::MissingObject {
                    file: "(dedup base)".into(),
                    offset: 0,
                    object: k,
                })
            }
        });
    }

    /// Waits for every check of a reused pack; the first failure fails the push.
    async fn finish_pack_checks(&mut self) -> Result<(), StoreError> {
        while let Some(r) = self.pack_checks.join_next().await {
            r.map_err(StoreError::Task)??;
        }
        Ok(())
    }
}

/// Validates and commits the manifest with a create-only put; returns it (with its digest)
/// and the bytes written.
async fn commit_manifest(
    inner: &Inner,
    mut manifest: Manifest,
    seal: Option<&Key>,
) -> Result<(Manifest, u64), StoreError> {
    let id = manifest.id.clone();
    manifest
        .validate()
        .map_err(|reason| StoreError::InvalidManifest {
            id: id.to_string(),
            reason,
        })?;
    let body = manifest.seal(seal);
    let body_len = body.len() as u64;
    let key = manifest_key(&id);
    let mpath = inner.path(&key);
    // A retry after a lost response meets `AlreadyExists` and is checked below: the
    // create-only put is never repeated blindly.
    let payload = PutPayload::from(body);
    let put = inner
        .retry("commit", &key, || {
            inner.os.put_opts(
                &mpath,
                payload.clone(),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
        })
        .await;
    match put {
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => {
            // Ours, if a retry lost the first response; someone else's otherwise.
            match inner.read_manifest(&id).await {
                Ok(existing) if existing.digest == manifest.digest => {}
                _ => return Err(StoreError::SnapshotExists(id.to_string())),
            }
        }
        Err(e) => return Err(inner.err("commit", &key, e)),
    }
    inner.make_durable(&[key], &[]).await?;
    Ok((manifest, body_len))
}
