//! The node-local page cache: verified pages, by digest, kept on the node's disk under a size
//! bound, so that a restore downloads only the pages this node has not seen.
//!
//! # On-disk format
//!
//! ```text
//! <dir>/lock                 flock'ed by the one process using the cache
//! <dir>/segments/<id>.seg    one segment per write (the verified pages of one ranged GET)
//! <dir>/segments/<id>.ext    a linked segment's table: pages of <id>.dat, by offset
//! <dir>/segments/<id>.dat    a hard link to a file that a pull wrote and verified
//! <dir>/segments/.tmp-*      a segment being written (removed at open)
//! ```
//!
//! A segment, integers little-endian:
//!
//! ```text
//! magic "PSNPCSG1" | n_pages u32 | reserved u32 (=0)
//! n_pages x { sha256 [u8; 32], len u32 }          len 1..=4096
//! the pages' bytes, concatenated in the same order
//! ```
//!
//! A linked segment ([`PageCache::adopt`]) costs no copy: a pull that downloaded most of a
//! file hard-links the finished file into the cache and writes only its table, integers
//! little-endian:
//!
//! ```text
//! magic "PSNPCEX1" | n_pages u32 | reserved u32 (=0) | file key [u8; 32] (0 = none)
//! n_pages x { sha256 [u8; 32], len u32, offset u64 }   the page's place in <id>.dat
//! ```
//!
//! The file key is the digest of the snapshot index that describes the whole file (a
//! manifest's `files[].index.digest`): a later pull of a file with that index finds the
//! copy by it, verifies all of it, and links it instead of writing a copy.
//!
//! Segments are written to a temp name and renamed, never modified, and never fsynced: a
//! segment torn by a power loss is detected like any other corruption. A linked segment's
//! data file shares its inode with the pulled file; nothing writes to either after the pull,
//! and a change by anyone else is caught by the digest check like any other corruption.
//!
//! # Trust
//!
//! Nothing read from the cache is trusted: every page is checked against the sha256 that the
//! snapshot's (verified) index asks for, and its length against the page's length, before it
//! is used. A page that fails is a miss (the caller downloads it) and its whole segment is
//! dropped. Headers that do not parse are removed at open.
//!
//! # Bound and eviction
//!
//! The bytes of all segment files (for a linked segment's data file, its allocated blocks) are
//! kept at or below `max_bytes`: after every write the
//! least recently used segments (a read hit or a write uses a segment) are deleted until the
//! total fits. Use order survives restarts through the segments' mtimes, which a use updates.
//!
//! # Concurrency
//!
//! One process per cache directory (the lock file); inside it, any number of pulls at once.
//! The index is behind one mutex held only for in-memory work. A page that one writer is
//! about to store is reserved, so concurrent writers of the same page store it once; the byte
//! total counts segment files, so it is never counted twice. Segment ids are never reused,
//! so a location read just before an eviction points at a deleted file (a miss), never at
//! another segment.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::chunk;
use crate::limits::PAGE_SIZE;
use crate::StoreError;

const MAGIC: &[u8; 8] = b"PSNPCSG1";
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 36;
/// Pages per segment at most (a request's pages are split into several segments beyond it).
const MAX_SEGMENT_PAGES: usize = 4096;
const EXT_MAGIC: &[u8; 8] = b"PSNPCEX1";
const EXT_HEADER_LEN: usize = 48;
const EXT_ENTRY_LEN: usize = 44;
/// Pages of one linked segment at most (64 GiB of pages).
const MAX_LINKED_PAGES: usize = 1 << 24;

/// What the cache did, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    /// Pages served from the cache, verified.
    Hits(u64),
    /// Pages a pull needed and had to download.
    Misses(u64),
    /// Pages read from the cache that failed verification (also counted as misses).
    Corrupt(u64),
    /// Segments evicted to stay under the bound.
    Evicted(u64),
    /// A write that failed (disk full, ...); the pull goes on without it.
    WriteFailed,
    /// The bytes the cache now holds on disk.
    Bytes(u64),
}

/// Receives [`CacheEvent`]s (the daemon turns them into metrics).
pub trait CacheObserver: Send + Sync {
    fn event(&self, ev: CacheEvent);
}

/// Counters of one cache since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub corrupt: u64,
    pub evictions: u64,
    pub write_failures: u64,
    /// Bytes of segment files on disk.
    pub bytes: u64,
    pub segments: u64,
    pub pages: u64,
}

/// A node-local page cache. Cheap to clone.
#[derive(Clone)]
pub struct PageCache {
    inner: Arc<CacheInner>,
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("dir", &self.inner.dir)
            .field("max_bytes", &self.inner.max_bytes)
            .finish_non_exhaustive()
    }
}

struct CacheInner {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Signalled whenever a writer releases its reserved pages.
    released: std::sync::Condvar,
    observer: Option<Arc<dyn CacheObserver>>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
    write_failures: AtomicU64,
    _lock: File,
}

/// Hashes a sha256 digest by its first 8 bytes: the keys are uniformly distributed already,
/// and a cold restore indexes every page of the image (SipHash over 177k digests three times
/// over measured about 0.2 s of a 1 GiB sandbox's restore).
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (`write_usize`) and then its bytes: keep the
        // first 8 bytes of the longest write.
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b);
    }

    fn write_usize(&mut self, _: usize) {}
}

type DigestBuild = std::hash::BuildHasherDefault<DigestHasher>;
type DigestMap<V> = HashMap<[u8; 32], V, DigestBuild>;
type DigestSet = HashSet<[u8; 32], DigestBuild>;

/// Where a page is: segment, byte offset in its data file, length.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u16,
}

struct Segment {
    bytes: u64,
    used: u64,
    digests: Vec<[u8; 32]>,
    /// A linked segment: table in `<id>.ext`, pages in `<id>.dat`.
    linked: bool,
    /// A linked segment's file key (the index digest of the whole file it holds).
    file_key: Option<[u8; 32]>,
}

#[derive(Default)]
struct State {
    index: DigestMap<Loc>,
    segments: HashMap<u64, Segment>,
    /// Linked segments by file key.
    files: DigestMap<u64>,
    reserved: DigestSet,
    bytes: u64,
    tick: u64,
    next_seg: u64,
}

impl State {
    /// Records a segment just written, or found at open, as the most recently used: its
    /// pages (digest, offset in its data file, length) go into the index.
    fn add_segment(
        &mut self,
        id: u64,
        bytes: u64,
        pages: impl IntoIterator<Item = ([u8; 32], u64, u16)>,
        linked: bool,
        file_key: Option<[u8; 32]>,
    ) {
        self.tick += 1;
        let mut digests = Vec::new();
        for (d, offset, len) in pages {
            self.index.insert(
                d,
                Loc {
                    seg: id,
                    offset,
                    len,
                },
            );
            digests.push(d);
        }
        self.bytes += bytes;
        if let Some(k) = file_key {
            self.files.insert(k, id);
        }
        let used = self.tick;
        self.segments.insert(
            id,
            Segment {
                bytes,
                used,
                digests,
                linked,
                file_key,
            },
        );
    }

    fn remove_segment(&mut self, id: u64) -> Option<u64> {
        let seg = self.segments.remove(&id)?;
        if let Some(k) = seg.file_key {
            if self.files.get(&k) == Some(&id) {
                self.files.remove(&k);
            }
        }
        for d in &seg.digests {
            if self.index.get(d).is_some_and(|l| l.seg == id) {
                self.index.remove(d);
            }
        }
        self.bytes -= seg.bytes;
        Some(seg.bytes)
    }

    fn least_recently_used(&self, except: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|(id, _)| **id != except)
            .min_by_key(|(id, s)| (s.used, **id))
            .map(|(id, _)| *id)
    }
}

fn seg_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// A page of a file for [`PageCache::adopt`]: sha256, byte offset in the file, length.
pub type CachePage = ([u8; 32], u64, u16);

/// A file to link into the cache: its path, pages and file key (see [`PageCache::adopt`]).
pub(crate) type Adoption = (PathBuf, Vec<CachePage>, Option<[u8; 32]>);

/// The file key of a file whose index has the (hex) digest `index_digest`.
pub(crate) fn file_key(index_digest: &str) -> Option<[u8; 32]> {
    hex::decode(index_digest).ok()?.try_into().ok()
}

/// Every non-zero page a file index lists, with its digest and place in the file.
pub(crate) fn index_pages(idx: &crate::index::FileIndex) -> Vec<CachePage> {
    let mut out = Vec::with_capacity(idx.digests.len());
    let mut page = 0u64;
    let mut digest = 0usize;
    for e in &idx.extents {
        if !e.is_zero() {
            for p in 0..e.pages as u64 {
                out.push((
                    idx.digests[digest],
                    (page + p) * PAGE_SIZE as u64,
                    crate::index::page_len(idx.file_size, page + p) as u16,
                ));
                digest += 1;
            }
        }
        page += e.pages as u64;
    }
    out
}

/// Bytes a linked segment's data file takes on disk: its allocated blocks (holes are free),
/// and never less than the pages it serves.
fn allocated(md: &std::fs::Metadata, pages: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (md.blocks() * 512).max(pages)
}

type LinkedTable = (Vec<([u8; 32], u16, u64)>, Option<[u8; 32]>);

/// Parses a linked segment's table: (digest, len, offset) of every page, each checked to lie
/// inside the data file of `data_len` bytes, and the file key.
fn parse_linked(file: &File, size: u64, data_len: u64) -> Result<LinkedTable, String> {
    let mut head = [0u8; EXT_HEADER_LEN];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("header: {e}"))?;
    if &head[..8] != EXT_MAGIC {
        return Err("bad magic".into());
    }
    let n = u32::from_le_bytes(head[8..12].try_into().expect("4")) as usize;
    if n > MAX_LINKED_PAGES || head[12..16] != [0; 4] {
        return Err(format!("bad page count {n}"));
    }
    let key: [u8; 32] = head[16..48].try_into().expect("32");
    let key = (key != [0; 32]).then_some(key);
    if n == 0 && key.is_none() {
        return Err("neither pages nor a file key".into());
    }
    let table_len = n * EXT_ENTRY_LEN;
    if (EXT_HEADER_LEN + table_len) as u64 != size {
        return Err("size does not match the table".into());
    }
    let mut table = vec![0u8; table_len];
    file.read_exact_at(&mut table, EXT_HEADER_LEN as u64)
        .map_err(|e| format!("table: {e}"))?;
    let mut out = Vec::with_capacity(n);
    for e in table.chunks_exact(EXT_ENTRY_LEN) {
        let d: [u8; 32] = e[..32].try_into().expect("32");
        let len = u32::from_le_bytes(e[32..36].try_into().expect("4"));
        let offset = u64::from_le_bytes(e[36..44].try_into().expect("8"));
        if len == 0 || len as usize > PAGE_SIZE {
            return Err(format!("bad page length {len}"));
        }
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > data_len)
        {
            return Err(format!("page at {offset} lies outside the data file"));
        }
        out.push((d, len as u16, offset));
    }
    Ok((out, key))
}

/// Parses a segment header: the digests and lengths, checked against the file's size.
fn parse_header(file: &File, size: u64) -> Result<Vec<([u8; 32], u16)>, String> {
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("header: {e}"))?;
    if &head[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let n = u32::from_le_bytes(head[8..12].try_into().expect("4")) as usize;
    if n == 0 || n > MAX_SEGMENT_PAGES || head[12..16] != [0; 4] {
        return Err(format!("bad page count {n}"));
    }
    let table_len = n * ENTRY_LEN;
    if (HEADER_LEN + table_len) as u64 > size {
        return Err("truncated table".into());
    }
    let mut table = vec![0u8; table_len];
    file.read_exact_at(&mut table, HEADER_LEN as u64)
        .map_err(|e| format!("table: {e}"))?;
    let mut out = Vec::with_capacity(n);
    let mut data = 0u64;
    for e in table.chunks_exact(ENTRY_LEN) {
        let d: [u8; 32] = e[..32].try_into().expect("32");
        let len = u32::from_le_bytes(e[32..36].try_into().expect("4"));
        if len == 0 || len as usize > PAGE_SIZE {
            return Err(format!("bad page length {len}"));
        }
        data += len as u64;
        out.push((d, len as u16));
    }
    if (HEADER_LEN + table_len) as u64 + data != size {
        return Err("size does not match the table".into());
    }
    Ok(out)
}

/// A segment found at open whose table parses.
struct FoundSegment {
    mtime: SystemTime,
    id: u64,
    /// Bytes on disk (a linked segment: its table and its data file's allocated blocks).
    bytes: u64,
    /// (digest, len, offset in the data) of every page.
    pages: Vec<([u8; 32], u16, u64)>,
    linked: bool,
    file_key: Option<[u8; 32]>,
}

/// Takes the cache directory's exclusive lock, held as long as the returned file is open.
fn lock_cache_dir(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let lock_path = dir.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::io("open", &lock_path, e))?;
    // SAFETY: flock only takes the descriptor, which `lock` keeps open.
    #[allow(unsafe_code)]
    let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(StoreError::io(
            "lock",
            &lock_path,
            std::io::Error::other("the page cache is in use by another process"),
        ));
    }
    Ok(lock)
}

/// Lists what an earlier run left in `segdir`, removing what is not a usable segment: names
/// that are not ours, segments that do not parse, data files without their table. Also
/// returns the highest segment id seen.
fn scan_segments(segdir: &Path) -> Result<(Vec<FoundSegment>, u64), StoreError> {
    let mut found: Vec<FoundSegment> = Vec::new();
    let mut data_files: Vec<(u64, PathBuf)> = Vec::new();
    let mut max_id = 0u64;
    let rd = std::fs::read_dir(segdir).map_err(|e| StoreError::io("read", segdir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let parsed_name = name.split_once('.').and_then(|(h, ext)| {
            let id = u64::from_str_radix(h, 16).ok().filter(|_| h.len() == 16)?;
            matches!(ext, "seg" | "ext" | "dat").then_some((id, ext))
        });
        let Some((id, ext)) = parsed_name else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        max_id = max_id.max(id);
        if ext == "dat" {
            data_files.push((id, path));
            continue;
        }
        match read_segment(segdir, &path, id, ext == "ext") {
            Ok(Ok(seg)) => found.push(seg),
            Ok(Err(reason)) => {
                tracing::warn!(segment = %path.display(), %reason, "removing a damaged page cache segment");
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "cannot read a page cache segment; removing it");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    // Data files whose table is gone or damaged (a crash between link and rename).
    for (id, path) in data_files {
        if !found.iter().any(|f| f.id == id && f.linked) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok((found, max_id))
}

/// Reads segment `id`'s table at `path`: an I/O error, or the segment, or why it is damaged.
fn read_segment(
    segdir: &Path,
    path: &Path,
    id: u64,
    linked: bool,
) -> std::io::Result<Result<FoundSegment, String>> {
    let f = File::open(path)?;
    let md = f.metadata()?;
    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let parsed = if linked {
        let data = std::fs::metadata(segdir.join(format!("{id:016x}.dat")))?;
        parse_linked(&f, md.len(), data.len()).map(|(pages, key)| {
            let served = pages.iter().map(|p| p.1 as u64).sum();
            (md.len() + allocated(&data, served), pages, key)
        })
    } else {
        parse_header(&f, md.len()).map(|pages| {
            let mut offset = (HEADER_LEN + pages.len() * ENTRY_LEN) as u64;
            let pages = pages
                .into_iter()
                .map(|(d, len)| {
                    offset += len as u64;
                    (d, len, offset - len as u64)
                })
                .collect();
            (md.len(), pages, None)
        })
    };
    Ok(parsed.map(|(bytes, pages, file_key)| FoundSegment {
        mtime,
        id,
        bytes,
        pages,
        linked,
        file_key,
    }))
}

impl PageCache {
    /// Opens (creating) the cache in `dir`, bounded to `max_bytes`, loading what an earlier
    /// run left: segments whose header does not parse and temp files are removed, use order
    /// comes from the segments' mtimes, and the bound is applied at once.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        observer: Option<Arc<dyn CacheObserver>>,
    ) -> Result<PageCache, StoreError> {
        let segdir = dir.join("segments");
        std::fs::create_dir_all(&segdir).map_err(|e| StoreError::io("create", &segdir, e))?;
        let lock = lock_cache_dir(dir)?;
        let (mut found, max_id) = scan_segments(&segdir)?;
        found.sort_by_key(|f| (f.mtime, f.id));
        let mut st = State {
            next_seg: max_id + 1,
            ..Default::default()
        };
        for f in found {
            let pages = f.pages.into_iter().map(|(d, len, offset)| (d, offset, len));
            st.add_segment(f.id, f.bytes, pages, f.linked, f.file_key);
        }
        let cache = PageCache {
            inner: Arc::new(CacheInner {
                dir: dir.to_path_buf(),
                max_bytes,
                state: Mutex::new(st),
                released: std::sync::Condvar::new(),
                observer,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                write_failures: AtomicU64::new(0),
                _lock: lock,
            }),
        };
        let evicted = {
            let mut st = cache.inner.lock();
            cache.inner.evict_over_bound(&mut st, u64::MAX)
        };
        cache.inner.removed(evicted);
        let s = cache.stats();
        tracing::info!(dir = %dir.display(), max_bytes, bytes = s.bytes, pages = s.pages,
            segments = s.segments, "page cache opened");
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.inner.lock();
        CacheStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            corrupt: self.inner.corrupt.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            write_failures: self.inner.write_failures.load(Ordering::Relaxed),
            bytes: st.bytes,
            segments: st.segments.len() as u64,
            pages: st.index.len() as u64,
        }
    }

    /// Whether the index lists every one of `digests` (nothing is read or verified).
    pub fn contains_all<'a>(&self, digests: impl IntoIterator<Item = &'a [u8; 32]>) -> bool {
        let st = self.inner.lock();
        digests.into_iter().all(|d| st.index.contains_key(d))
    }

    /// Marks the segments holding `digests` as used now (a prefetch that found them).
    pub fn touch<'a>(&self, digests: impl IntoIterator<Item = &'a [u8; 32]>) {
        let mut segs = HashMap::new();
        {
            let mut st = self.inner.lock();
            st.tick += 1;
            let tick = st.tick;
            for d in digests {
                if let Some(l) = st.index.get(d).copied() {
                    if let Some(s) = st.segments.get_mut(&l.seg) {
                        s.used = tick;
                        segs.insert(l.seg, s.linked);
                    }
                }
            }
        }
        for (id, linked) in segs {
            self.inner.touch_file(id, linked);
        }
    }

    /// A reader for a batch of page reads (keeps the segment files it opened).
    pub fn reader(&self) -> CacheReader<'_> {
        CacheReader {
            cache: self,
            files: HashMap::new(),
        }
    }

    /// Stores verified pages (`(sha256, bytes)`), best effort: pages already cached or being
    /// stored by another writer are skipped, a failure (disk full) is logged and counted, and
    /// the least recently used segments go to keep the bound. Never fails.
    pub fn insert(&self, pages: &[([u8; 32], &[u8])]) {
        for part in pages.chunks(MAX_SEGMENT_PAGES) {
            self.insert_segment(part);
        }
        // Pages another writer had reserved are readable once it is done with them: wait for
        // that, so that everything inserted is in the cache when `insert` returns.
        let mut st = self.inner.lock();
        while pages.iter().any(|(d, _)| st.reserved.contains(d)) {
            st = self
                .inner
                .released
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn insert_segment(&self, pages: &[([u8; 32], &[u8])]) {
        let inner = &self.inner;
        // Reserve what nobody has or is writing.
        let (id, mine) = {
            let mut st = inner.lock();
            let mut mine: Vec<usize> = Vec::new();
            let mut seen = DigestSet::default();
            for (i, (d, b)) in pages.iter().enumerate() {
                if b.is_empty() || b.len() > PAGE_SIZE {
                    continue;
                }
                if st.index.contains_key(d) || st.reserved.contains(d) || !seen.insert(*d) {
                    continue;
                }
                mine.push(i);
            }
            if mine.is_empty() {
                return;
            }
            let size = (HEADER_LEN + mine.len() * ENTRY_LEN) as u64
                + mine.iter().map(|&i| pages[i].1.len() as u64).sum::<u64>();
            if size > inner.max_bytes {
                return;
            }
            for &i in &mine {
                st.reserved.insert(pages[i].0);
            }
            let id = st.next_seg;
            st.next_seg += 1;
            (id, mine)
        };
        let written = inner.write_segment(id, pages, &mine);
        let mut st = inner.lock();
        for &i in &mine {
            st.reserved.remove(&pages[i].0);
        }
        inner.released.notify_all();
        let evicted = match written {
            Ok(size) => {
                let mut offset = (HEADER_LEN + mine.len() * ENTRY_LEN) as u64;
                let located = mine.iter().map(|&i| {
                    let (d, b) = pages[i];
                    let at = offset;
                    offset += b.len() as u64;
                    (d, at, b.len() as u16)
                });
                st.add_segment(id, size, located, false, None);
                inner.evict_over_bound(&mut st, id)
            }
            Err(e) => {
                inner.write_failed(&e);
                Vec::new()
            }
        };
        let bytes = st.bytes;
        drop(st);
        inner.removed(evicted);
        inner.emit(CacheEvent::Bytes(bytes));
    }

    /// Takes the file at `path`, whose `pages` (sha256, byte offset in the file, length)
    /// were hashed from it, into the cache without copying it: hard-links it as a linked
    /// segment and indexes the pages the cache does not hold yet. For a pulled file or the
    /// image a checkpoint just pushed: the file's pages cost the cache one link and a table
    /// instead of a second write. Nothing may write to the file afterwards (a change is
    /// caught like any corruption).
    ///
    /// With a `file_key` (the digest of the index describing the whole file) the file is
    /// linked even when the cache holds all its pages, so that a later pull of the same file
    /// can link it whole ([`PageCache::linked_file`]); a key already linked is only marked
    /// used. Without one, a file of which fewer than half the pages are new is not linked
    /// (that would pin the whole file for a few pages).
    ///
    /// Best effort like [`PageCache::insert`]: returns the pages indexed (0 also when the
    /// file does not fit the bound). An error (another filesystem, no space for the table)
    /// is logged and counted, and the cache is unchanged.
    pub fn adopt(&self, path: &Path, pages: &[CachePage], file_key: Option<[u8; 32]>) -> u64 {
        let inner = &self.inner;
        let md = match std::fs::metadata(path) {
            Ok(md) => md,
            Err(e) => {
                inner.write_failed(&e);
                return 0;
            }
        };
        let (id, mine) = {
            let mut st = inner.lock();
            if let Some(seg) = file_key.and_then(|k| st.files.get(&k).copied()) {
                st.tick += 1;
                let tick = st.tick;
                if let Some(s) = st.segments.get_mut(&seg) {
                    s.used = tick;
                }
                drop(st);
                inner.touch_file(seg, true);
                return 0;
            }
            let mut seen = DigestSet::default();
            let mine: Vec<usize> = pages
                .iter()
                .enumerate()
                .filter(|(_, (d, off, len))| {
                    *len > 0
                        && *len as usize <= PAGE_SIZE
                        && off + *len as u64 <= md.len()
                        && !st.index.contains_key(d)
                        && !st.reserved.contains(d)
                        && seen.insert(*d)
                })
                .map(|(i, _)| i)
                .take(MAX_LINKED_PAGES)
                .collect();
            let wanted = match file_key {
                Some(_) => true,
                None => !mine.is_empty() && mine.len() * 2 >= pages.len(),
            };
            if !wanted {
                return 0;
            }
            let served: u64 = mine.iter().map(|&i| pages[i].2 as u64).sum();
            let size =
                (EXT_HEADER_LEN + mine.len() * EXT_ENTRY_LEN) as u64 + allocated(&md, served);
            if size > inner.max_bytes {
                return 0;
            }
            for &i in &mine {
                st.reserved.insert(pages[i].0);
            }
            let id = st.next_seg;
            st.next_seg += 1;
            (id, mine)
        };
        let written = inner.write_linked(id, path, pages, &mine, file_key);
        let mut st = inner.lock();
        for &i in &mine {
            st.reserved.remove(&pages[i].0);
        }
        inner.released.notify_all();
        let (evicted, indexed) = match written {
            Ok(size) => {
                st.add_segment(id, size, mine.iter().map(|&i| pages[i]), true, file_key);
                (inner.evict_over_bound(&mut st, id), mine.len() as u64)
            }
            Err(e) => {
                drop(st);
                inner.write_failed(&e);
                return 0;
            }
        };
        let bytes = st.bytes;
        drop(st);
        inner.removed(evicted);
        inner.emit(CacheEvent::Bytes(bytes));
        indexed
    }

    /// [`PageCache::adopt`] of several files, off the async runtime.
    pub(crate) async fn adopt_all(&self, files: Vec<Adoption>) -> Result<u64, StoreError> {
        let c = self.clone();
        let pages = tokio::task::spawn_blocking(move || {
            files
                .iter()
                .map(|(path, pages, key)| c.adopt(path, pages, *key))
                .sum::<u64>()
        })
        .await
        .map_err(StoreError::Task)?;
        tracing::debug!(pages, "files linked into the page cache");
        Ok(pages)
    }

    /// The linked copy of the whole file whose index digest is `file_key`, if the cache has
    /// one: its segment id and data file. Nothing is read: the caller verifies all of it
    /// against the index before trusting it, then links it instead of writing a copy and
    /// reports the use ([`PageCache::served_file`]).
    pub fn linked_file(&self, file_key: &[u8; 32]) -> Option<(u64, PathBuf)> {
        let seg = *self.inner.lock().files.get(file_key)?;
        Some((seg, self.inner.data_path(seg, true)))
    }

    /// Records that linked segment `seg` served a whole file of `pages` pages (a use, and
    /// the pages as hits).
    pub fn served_file(&self, seg: u64, pages: u64) {
        {
            let mut st = self.inner.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some(s) = st.segments.get_mut(&seg) {
                s.used = tick;
            }
        }
        self.inner.touch_file(seg, true);
        if pages > 0 {
            self.inner.hits.fetch_add(pages, Ordering::Relaxed);
            self.inner.emit(CacheEvent::Hits(pages));
        }
    }

    /// Whether files written under `dir` can be adopted by this cache (same filesystem, so
    /// that a hard link works).
    pub fn can_adopt_from(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (
            std::fs::metadata(dir),
            std::fs::metadata(self.inner.dir.join("segments")),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Counts pages a pull had to download.
    pub fn record_misses(&self, pages: u64) {
        if pages > 0 {
            self.inner.misses.fetch_add(pages, Ordering::Relaxed);
            self.inner.emit(CacheEvent::Misses(pages));
        }
    }
}

impl CacheInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, ev: CacheEvent) {
        if let Some(o) = &self.observer {
            o.event(ev);
        }
    }

    fn write_failed(&self, e: &std::io::Error) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        self.emit(CacheEvent::WriteFailed);
        tracing::warn!(dir = %self.dir.display(), error = %e,
            "cannot write to the page cache; the restore goes on without it");
    }

    fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join("segments").join(seg_name(id))
    }

    /// The file a segment's use is recorded on (its mtime): the segment, or a linked
    /// segment's table (never its data file, which is also the pulled file).
    fn used_path(&self, id: u64, linked: bool) -> PathBuf {
        if linked {
            self.dir.join("segments").join(format!("{id:016x}.ext"))
        } else {
            self.seg_path(id)
        }
    }

    /// The file a segment's pages are read from.
    fn data_path(&self, id: u64, linked: bool) -> PathBuf {
        if linked {
            self.dir.join("segments").join(format!("{id:016x}.dat"))
        } else {
            self.seg_path(id)
        }
    }

    /// Deletes every file segment `id` may have.
    fn delete_files(&self, id: u64) {
        let _ = std::fs::remove_file(self.seg_path(id));
        let _ = std::fs::remove_file(self.used_path(id, true));
        let _ = std::fs::remove_file(self.data_path(id, true));
    }

    /// Links `path` as segment `id`'s data and writes its table for `pages[mine]`; returns
    /// the bytes the segment takes. On failure nothing of it is left.
    fn write_linked(
        &self,
        id: u64,
        path: &Path,
        pages: &[CachePage],
        mine: &[usize],
        file_key: Option<[u8; 32]>,
    ) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(EXT_HEADER_LEN + mine.len() * EXT_ENTRY_LEN);
        buf.extend_from_slice(EXT_MAGIC);
        buf.extend_from_slice(&(mine.len() as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&file_key.unwrap_or([0; 32]));
        for &i in mine {
            let (d, offset, len) = pages[i];
            buf.extend_from_slice(&d);
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
        }
        let data = self.data_path(id, true);
        let tmp = self
            .dir
            .join("segments")
            .join(format!(".tmp-{id:016x}-{:08x}", rand::random::<u32>()));
        let res = std::fs::hard_link(path, &data)
            .and_then(|_| File::create(&tmp))
            .and_then(|mut f| f.write_all(&buf))
            .and_then(|_| std::fs::rename(&tmp, self.used_path(id, true)))
            .and_then(|_| std::fs::metadata(&data));
        match res {
            Ok(md) => {
                let served = mine.iter().map(|&i| pages[i].2 as u64).sum();
                Ok(buf.len() as u64 + allocated(&md, served))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&data);
                Err(e)
            }
        }
    }

    fn write_segment(
        &self,
        id: u64,
        pages: &[([u8; 32], &[u8])],
        mine: &[usize],
    ) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(HEADER_LEN + mine.len() * (ENTRY_LEN + PAGE_SIZE));
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(mine.len() as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        for &i in mine {
            buf.extend_from_slice(&pages[i].0);
            buf.extend_from_slice(&(pages[i].1.len() as u32).to_le_bytes());
        }
        for &i in mine {
            buf.extend_from_slice(pages[i].1);
        }
        let tmp = self
            .dir
            .join("segments")
            .join(format!(".tmp-{id:016x}-{:08x}", rand::random::<u32>()));
        let res = File::create(&tmp)
            .and_then(|mut f| f.write_all(&buf))
            .and_then(|_| std::fs::rename(&tmp, self.seg_path(id)));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map(|_| buf.len() as u64)
    }

    /// Removes least recently used segments (never `keep`) until the total fits; returns
    /// the ids removed from the index (their files are deleted by [`CacheInner::removed`]).
    fn evict_over_bound(&self, st: &mut State, keep: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while st.bytes > self.max_bytes {
            let Some(id) = st.least_recently_used(keep) else {
                break;
            };
            st.remove_segment(id);
            out.push(id);
        }
        out
    }

    fn removed(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        for id in &ids {
            self.delete_files(*id);
        }
        self.evictions
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.emit(CacheEvent::Evicted(ids.len() as u64));
        let bytes = self.lock().bytes;
        self.emit(CacheEvent::Bytes(bytes));
    }

    /// Drops a segment that served a bad page.
    fn drop_corrupt(&self, id: u64) {
        let removed = self.lock().remove_segment(id).is_some();
        if removed {
            tracing::warn!(segment = %self.seg_path(id).display(),
                "a page cache segment failed verification; removed");
            self.delete_files(id);
            let bytes = self.lock().bytes;
            self.emit(CacheEvent::Bytes(bytes));
        }
    }

    fn touch_file(&self, id: u64, linked: bool) {
        if let Ok(f) = File::options()
            .append(true)
            .open(self.used_path(id, linked))
        {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

/// Reads verified pages from a [`PageCache`]; keeps the segment files of one batch open.
pub struct CacheReader<'a> {
    cache: &'a PageCache,
    files: HashMap<u64, Option<File>>,
}

impl CacheReader<'_> {
    /// Appends the page with sha256 `digest` and length `len` to `out` if the cache holds
    /// it AND it verifies. Anything else is `false` with `out` unchanged; a page that does
    /// not verify also drops its segment.
    pub fn read_into(&mut self, digest: &[u8; 32], len: usize, out: &mut Vec<u8>) -> bool {
        self.read_pages([(digest, len)], out)
    }

    /// Appends the pages `pages` (sha256, length), in order, to `out` if the cache holds
    /// every one AND each verifies; otherwise `false` with `out` unchanged (a page that
    /// does not verify also drops its segment). Pages that lie next to each other in one
    /// segment (a linked file's, or one download's) are read with one `pread`.
    pub fn read_pages<'d>(
        &mut self,
        pages: impl IntoIterator<Item = (&'d [u8; 32], usize)>,
        out: &mut Vec<u8>,
    ) -> bool {
        let inner = &self.cache.inner;
        let mut want: Vec<(Loc, bool, &'d [u8; 32], usize)> = Vec::new();
        {
            let mut st = inner.lock();
            st.tick += 1;
            let tick = st.tick;
            for (digest, len) in pages {
                let Some(loc) = st.index.get(digest).copied() else {
                    return false;
                };
                let Some(s) = st.segments.get_mut(&loc.seg) else {
                    return false;
                };
                s.used = tick;
                want.push((loc, s.linked, digest, len));
            }
        }
        if let Some((loc, ..)) = want.iter().find(|(l, _, _, len)| l.len as usize != *len) {
            self.corrupt(loc.seg);
            return false;
        }
        let start = out.len();
        let mut i = 0;
        while i < want.len() {
            // A run: the same segment, each page right after the previous one.
            let (first, linked, ..) = want[i];
            let mut j = i + 1;
            let mut end = first.offset + first.len as u64;
            while j < want.len() && want[j].0.seg == first.seg && want[j].0.offset == end {
                end += want[j].0.len as u64;
                j += 1;
            }
            let file = self.files.entry(first.seg).or_insert_with(|| {
                let f = File::open(inner.data_path(first.seg, linked)).ok();
                if f.is_some() {
                    inner.touch_file(first.seg, linked);
                }
                f
            });
            let Some(file) = file else {
                out.truncate(start);
                return false;
            };
            let at = out.len();
            out.resize(at + (end - first.offset) as usize, 0);
            let mut ok = file.read_exact_at(&mut out[at..], first.offset).is_ok();
            let mut p = at;
            for (_, _, digest, len) in &want[i..j] {
                if !ok {
                    break;
                }
                ok = chunk::sha256(&out[p..p + len]) == **digest;
                p += len;
            }
            if !ok {
                out.truncate(start);
                self.corrupt(first.seg);
                return false;
            }
            i = j;
        }
        true
    }

    fn corrupt(&mut self, seg: u64) {
        let inner = &self.cache.inner;
        inner.corrupt.fetch_add(1, Ordering::Relaxed);
        inner.emit(CacheEvent::Corrupt(1));
        self.files.remove(&seg);
        inner.drop_corrupt(seg);
    }

    /// Counts `pages` pages served.
    pub fn record_hits(&self, pages: u64) {
        if pages > 0 {
            self.cache.inner.hits.fetch_add(pages, Ordering::Relaxed);
            self.cache.inner.emit(CacheEvent::Hits(pages));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u32) -> Vec<u8> {
        (0..PAGE_SIZE as u32)
            .map(|i| {
                (i.wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503))
                    >> 7) as u8
            })
            .collect()
    }

    fn put(c: &PageCache, seeds: &[u32]) {
        let pages: Vec<Vec<u8>> = seeds.iter().map(|s| page(*s)).collect();
        let refs: Vec<([u8; 32], &[u8])> = pages
            .iter()
            .map(|p| (chunk::sha256(p), p.as_slice()))
            .collect();
        c.insert(&refs);
    }

    fn get(c: &PageCache, seed: u32) -> Option<Vec<u8>> {
        let p = page(seed);
        let mut out = Vec::new();
        c.reader()
            .read_into(&chunk::sha256(&p), p.len(), &mut out)
            .then_some(out)
    }

    /// One segment of `n` pages, on disk.
    fn seg_size(n: usize) -> u64 {
        (HEADER_LEN + n * (ENTRY_LEN + PAGE_SIZE)) as u64
    }

    #[test]
    fn pages_come_back_verified_and_the_bound_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        // Room for three one-page segments.
        let c = PageCache::open(dir.path(), seg_size(1) * 3, None).unwrap();
        put(&c, &[1]);
        put(&c, &[2]);
        put(&c, &[3]);
        assert_eq!(get(&c, 1), Some(page(1)));
        // 2 is now the least recently used; a fourth segment evicts it, not 1 or 3.
        put(&c, &[4]);
        assert_eq!(get(&c, 2), None);
        for s in [1, 3, 4] {
            assert_eq!(get(&c, s), Some(page(s)), "page {s}");
        }
        let st = c.stats();
        assert_eq!(st.evictions, 1);
        assert!(st.bytes <= seg_size(1) * 3, "{st:?}");
        assert_eq!(st.segments, 3);
        let files = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .count();
        assert_eq!(files, 3, "evicted segment files are deleted");
        // A segment larger than the whole bound is not stored at all.
        put(&c, &[10, 11, 12, 13]);
        assert_eq!(get(&c, 10), None);
        assert_eq!(c.stats().segments, 3);
    }

    #[test]
    fn a_corrupted_page_is_a_miss_and_its_segment_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let c = PageCache::open(dir.path(), 1 << 30, None).unwrap();
        put(&c, &[1, 2]);
        put(&c, &[3]);
        let seg = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .min()
            .unwrap();
        // Flip a byte of page 2's data (the second page of the first segment).
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = HEADER_LEN + 2 * ENTRY_LEN + PAGE_SIZE + 100;
        bytes[at] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        assert_eq!(get(&c, 2), None, "a corrupted page must never be returned");
        assert_eq!(c.stats().corrupt, 1);
        // The whole segment went (page 1 with it); the other segment is intact.
        assert!(!seg.exists());
        assert_eq!(get(&c, 1), None);
        assert_eq!(get(&c, 3), Some(page(3)));
        // The page can be stored again.
        put(&c, &[2]);
        assert_eq!(get(&c, 2), Some(page(2)));
        // A wrong length asked for is a miss too, never a short or long page.
        let p = page(3);
        let mut out = Vec::new();
        assert!(!c.reader().read_into(&chunk::sha256(&p), 100, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn the_cache_survives_a_restart_with_its_use_order_and_drops_damaged_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = PageCache::open(dir.path(), 1 << 30, None).unwrap();
            put(&c, &[1]);
            std::thread::sleep(std::time::Duration::from_millis(20));
            put(&c, &[2]);
            std::thread::sleep(std::time::Duration::from_millis(20));
            put(&c, &[3]);
            std::thread::sleep(std::time::Duration::from_millis(20));
            // 1 becomes the most recently used (its mtime is updated).
            assert_eq!(get(&c, 1), Some(page(1)));
        }
        // Leftovers of a crash: a temp file and a torn segment.
        let segs = dir.path().join("segments");
        std::fs::write(segs.join(".tmp-00000000000000ff-1234"), b"x").unwrap();
        std::fs::write(segs.join(format!("{:016x}.seg", 0x77)), b"PSNPCSG1torn").unwrap();
        // Reopened with room for two segments: the least recently used (2) goes.
        let c = PageCache::open(dir.path(), seg_size(1) * 2, None).unwrap();
        assert_eq!(get(&c, 2), None);
        assert_eq!(get(&c, 1), Some(page(1)));
        assert_eq!(get(&c, 3), Some(page(3)));
        let names: Vec<String> = std::fs::read_dir(&segs)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // New segments never reuse an id of the torn one.
        put(&c, &[5]);
        assert!(segs.join(format!("{:016x}.seg", 0x78)).exists());
    }

    /// Writes pages `seeds` to `path` at page slots `slots` (the gaps stay holes) and
    /// returns what `adopt` takes for them.
    fn pulled_file(path: &Path, seeds: &[u32], slots: &[u64]) -> Vec<CachePage> {
        let f = File::create(path).unwrap();
        seeds
            .iter()
            .zip(slots)
            .map(|(s, slot)| {
                let p = page(*s);
                f.write_all_at(&p, slot * PAGE_SIZE as u64).unwrap();
                (chunk::sha256(&p), slot * PAGE_SIZE as u64, p.len() as u16)
            })
            .collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_adopted_file_is_linked_not_copied_and_outlives_its_name_and_a_restart() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let pulled = dir.path().join("pages.img");
        let pages = pulled_file(&pulled, &[1, 2, 3], &[0, 5, 9]);
        let c = PageCache::open(&dir.path().join("cache"), 1 << 30, None).unwrap();
        assert!(c.can_adopt_from(dir.path()));
        put(&c, &[2]);
        // Page 2 is cached already: only 1 and 3 are indexed from the file.
        assert_eq!(c.adopt(&pulled, &pages, None), 2);
        let st = c.stats();
        assert_eq!((st.pages, st.segments), (3, 2), "{st:?}");
        let names = names(&dir.path().join("cache"));
        let dat = names
            .iter()
            .find(|n| n.ends_with(".dat"))
            .expect("a data file");
        assert!(names.iter().any(|n| n.ends_with(".ext")), "{names:?}");
        let data = dir.path().join("cache/segments").join(dat);
        assert_eq!(
            std::fs::metadata(&data).unwrap().ino(),
            std::fs::metadata(&pulled).unwrap().ino(),
            "the cache links the pulled file, it does not copy it"
        );
        // The pulled file's name goes (the restore's work dir is removed): still served.
        std::fs::remove_file(&pulled).unwrap();
        for s in [1, 2, 3] {
            assert_eq!(get(&c, s), Some(page(s)), "page {s}");
        }
        // Adopting pages the cache holds adds nothing.
        let again = dir.path().join("again.img");
        let pages2 = pulled_file(&again, &[1, 3], &[0, 1]);
        assert_eq!(c.adopt(&again, &pages2, None), 0);
        drop(c);

        // Leftovers of a crash between link and table: an orphan data file, and a table
        // whose page lies past its data file's end.
        let segs = dir.path().join("cache/segments");
        std::fs::write(segs.join(format!("{:016x}.dat", 0x50)), b"orphan").unwrap();
        std::fs::write(segs.join(format!("{:016x}.dat", 0x51)), b"short").unwrap();
        let mut table = EXT_MAGIC.to_vec();
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&[0; 4]);
        table.extend_from_slice(&[0; 32]);
        table.extend_from_slice(&chunk::sha256(&page(7)));
        table.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        table.extend_from_slice(&0u64.to_le_bytes());
        std::fs::write(segs.join(format!("{:016x}.ext", 0x51)), &table).unwrap();

        let c = PageCache::open(&dir.path().join("cache"), 1 << 30, None).unwrap();
        for s in [1, 2, 3] {
            assert_eq!(get(&c, s), Some(page(s)), "page {s} after a restart");
        }
        assert_eq!(c.stats().segments, 2);
        let after = super::tests::names(&dir.path().join("cache"));
        assert_eq!(after.len(), 3, "one .seg, one .ext and its .dat: {after:?}");
        // A file on another filesystem cannot be linked: adopting it is a counted failure
        // that changes nothing.
        if !c.can_adopt_from(Path::new("/dev/shm")) {
            let other = Path::new("/dev/shm").join(format!("podsnap-adopt-{}", std::process::id()));
            let p = pulled_file(&other, &[8], &[0]);
            assert_eq!(c.adopt(&other, &p, None), 0);
            let _ = std::fs::remove_file(&other);
            assert_eq!(c.stats().write_failures, 1);
            assert_eq!(super::tests::names(&dir.path().join("cache")), after);
        }
    }

    #[test]
    fn a_changed_adopted_file_is_a_miss_and_eviction_removes_both_of_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let pulled = dir.path().join("pages.img");
        let pages = pulled_file(&pulled, &[1, 2], &[0, 1]);
        // Room for the linked segment (two pages and a table) and one one-page segment.
        let linked = (EXT_HEADER_LEN + 2 * EXT_ENTRY_LEN + 2 * PAGE_SIZE) as u64;
        let c = PageCache::open(&dir.path().join("cache"), linked + seg_size(1), None).unwrap();
        assert_eq!(c.adopt(&pulled, &pages, None), 2);
        put(&c, &[3]);
        // Someone writes to the pulled file (the same inode): never served, segment dropped.
        let f = File::options().write(true).open(&pulled).unwrap();
        f.write_all_at(b"tampered", 100).unwrap();
        assert_eq!(get(&c, 1), None);
        assert_eq!(c.stats().corrupt, 1);
        assert_eq!(
            names(&dir.path().join("cache")).len(),
            1,
            "only the .seg is left"
        );
        assert_eq!(get(&c, 3), Some(page(3)));

        // LRU eviction of a linked segment deletes its table and its link.
        let pulled2 = dir.path().join("pages2.img");
        let pages2 = pulled_file(&pulled2, &[4, 5], &[0, 1]);
        assert_eq!(c.adopt(&pulled2, &pages2, None), 2);
        assert_eq!(get(&c, 4), Some(page(4)));
        put(&c, &[6]); // evicts the least recently used: the .seg of page 3
        assert_eq!(get(&c, 3), None);
        put(&c, &[7]); // now the linked segment is the oldest use
        assert_eq!(get(&c, 4), None);
        assert_eq!(get(&c, 7), Some(page(7)));
        let left = names(&dir.path().join("cache"));
        assert!(left.iter().all(|n| n.ends_with(".seg")), "{left:?}");
        // A file larger than the whole bound is not adopted.
        let big = dir.path().join("big.img");
        let pages3 = pulled_file(&big, &[10, 11, 12, 13], &[0, 1, 2, 3]);
        assert_eq!(c.adopt(&big, &pages3, None), 0);
        assert!(
            std::fs::metadata(&pulled2).is_ok(),
            "the pulled file itself stays"
        );
    }

    #[test]
    fn a_run_of_pages_is_read_whole_across_segments_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let pulled = dir.path().join("pages.img");
        let pages = pulled_file(&pulled, &[1, 2, 3, 4], &[0, 1, 2, 3]);
        let c = PageCache::open(&dir.path().join("cache"), 1 << 30, None).unwrap();
        assert_eq!(c.adopt(&pulled, &pages, None), 4);
        put(&c, &[5]);
        let ask = |seeds: &[u32]| -> Vec<([u8; 32], usize)> {
            seeds
                .iter()
                .map(|s| (chunk::sha256(&page(*s)), PAGE_SIZE))
                .collect()
        };
        let read = |seeds: &[u32], out: &mut Vec<u8>| {
            let want = ask(seeds);
            c.reader()
                .read_pages(want.iter().map(|(d, l)| (d, *l)), out)
        };
        // Pages 2..4 of the linked file, then page 5 of another segment, after what `out`
        // already held.
        let mut out = b"head".to_vec();
        assert!(read(&[2, 3, 4, 5], &mut out));
        let mut expect = b"head".to_vec();
        for s in [2, 3, 4, 5] {
            expect.extend_from_slice(&page(s));
        }
        assert_eq!(out, expect);
        // One page the cache lacks: nothing is appended.
        let mut out = b"head".to_vec();
        assert!(!read(&[1, 9, 2], &mut out));
        assert_eq!(out, b"head");
        assert_eq!(c.stats().corrupt, 0);
        // A damaged page inside a run: nothing is appended, and its segment goes.
        let f = File::options().write(true).open(&pulled).unwrap();
        f.write_all_at(b"x", 2 * PAGE_SIZE as u64 + 7).unwrap();
        assert!(!read(&[1, 2, 3, 4], &mut out));
        assert_eq!(out, b"head");
        assert_eq!(c.stats().corrupt, 1);
        assert!(
            !read(&[1], &mut out),
            "the whole linked segment was dropped"
        );
        assert!(read(&[5], &mut out));
    }

    #[test]
    fn a_keyed_file_is_linked_even_when_its_pages_are_cached_and_found_by_its_key() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cdir = dir.path().join("cache");
        let c = PageCache::open(&cdir, 1 << 30, None).unwrap();
        put(&c, &[1, 2]);
        let pulled = dir.path().join("pages.img");
        let pages = pulled_file(&pulled, &[1, 2], &[0, 1]);
        let key = [7u8; 32];
        // Without a key a file whose pages are all cached is not linked; with one it is.
        assert_eq!(c.adopt(&pulled, &pages, None), 0);
        assert!(c.linked_file(&key).is_none());
        assert_eq!(c.adopt(&pulled, &pages, Some(key)), 0, "no page is new");
        let (seg, data) = c.linked_file(&key).expect("linked under its key");
        assert_eq!(
            std::fs::metadata(&data).unwrap().ino(),
            std::fs::metadata(&pulled).unwrap().ino()
        );
        // The same key again adds nothing.
        let before = names(&cdir);
        assert_eq!(c.adopt(&pulled, &pages, Some(key)), 0);
        assert_eq!(names(&cdir), before);
        c.served_file(seg, 2);
        assert_eq!(c.stats().hits, 2);
        drop(c);
        // Found by its key after a restart; gone with its segment when evicted.
        let c = PageCache::open(&cdir, 1 << 30, None).unwrap();
        assert_eq!(c.linked_file(&key).map(|l| l.0), Some(seg));
        drop(c);
        let c = PageCache::open(&cdir, seg_size(1), None).unwrap();
        assert!(
            c.linked_file(&key).is_none(),
            "evicted at open for the lower bound"
        );
        assert!(
            std::fs::metadata(&pulled).is_ok(),
            "the pulled file itself stays"
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_same_cache() {
        let dir = tempfile::tempdir().unwrap();
        let _c = PageCache::open(dir.path(), 1 << 20, None).unwrap();
        // flock is per open file description: a second open in this process conflicts too.
        assert!(PageCache::open(dir.path(), 1 << 20, None).is_err());
    }

    #[test]
    fn concurrent_writers_of_overlapping_pages_store_each_page_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = PageCache::open(dir.path(), 1 << 30, None).unwrap();
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for round in 0..20u32 {
                        // Every thread writes pages 0..64 in overlapping windows.
                        let start = (t * 7 + round * 3) % 48;
                        let seeds: Vec<u32> = (start..start + 16).collect();
                        put(&c, &seeds);
                        for s in &seeds {
                            assert_eq!(get(&c, *s), Some(page(*s)));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = c.stats();
        // Each distinct page is indexed once and stored once: the bytes on disk are exactly
        // the segments' headers plus one copy of each page.
        let on_disk: u64 = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(st.bytes, on_disk, "{st:?}");
        let mut data = 0u64;
        for e in std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .flatten()
        {
            let f = File::open(e.path()).unwrap();
            let pages = parse_header(&f, f.metadata().unwrap().len()).unwrap();
            data += pages.iter().map(|(_, l)| *l as u64).sum::<u64>();
        }
        assert_eq!(data, st.pages * PAGE_SIZE as u64, "{st:?}");
        let expected: HashSet<u32> = (0..8u32)
            .flat_map(|t| (0..20u32).map(move |r| (t * 7 + r * 3) % 48))
            .flat_map(|start| start..start + 16)
            .collect();
        assert_eq!(st.pages, expected.len() as u64, "{st:?}");
    }
}
