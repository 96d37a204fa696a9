//! Writing a `file://` store's packs without the page cache.
//!
//! object_store's local backend writes through the page cache and the push then fsyncs each
//! pack: every stored byte is copied into newly allocated page cache, written back, and left
//! there although nothing reads it soon (a pack is read again only by a restore, usually on
//! another node). [`write_durable`] writes the pack with `O_DIRECT` from a small aligned
//! buffer instead (the tail that is not a whole block goes through the page cache), then
//! `fdatasync`s and renames it into place. Filesystems that refuse `O_DIRECT` (tmpfs on
//! older kernels, some FUSE mounts) get a plain buffered write and the same `fdatasync`.
//!
//! The temp name is `<final>#<digits>`: object_store's local backend takes such names for
//! its own in-flight uploads and never lists them, so a crash leaves nothing that a listing
//! (or the garbage collector) mistakes for an object.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment of the buffer, offsets and lengths of direct writes (a page: the strictest
/// logical block size in practice).
const ALIGN: usize = 4096;
/// Bytes copied into the aligned buffer per write.
const CHUNK: usize = 1 << 20;

/// A heap buffer aligned to [`ALIGN`].
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is owned and never shared, like a Vec<u8>.
#[allow(unsafe_code)]
unsafe impl Send for Aligned {}
// SAFETY: like a Vec<u8>: a shared reference only reads (writes need `&mut`).
#[allow(unsafe_code)]
unsafe impl Sync for Aligned {}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("valid layout");
        // SAFETY: `layout` has a non-zero size.
        #[allow(unsafe_code)]
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Aligned { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` bytes owned by `self` (initialised before
        // they are read: callers copy into the slice first).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size())
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        #[allow(unsafe_code)]
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr(), self.layout)
        }
    }
}

/// A pack being assembled, in a page-aligned buffer: [`write_durable`] writes such a buffer
/// with `O_DIRECT` straight from it, without first copying it into an aligned one. Taken from
/// and given back to a [`PackPool`] (dropping it gives it back), so its memory is faulted in
/// once, not once per pack.
pub(crate) struct PackBuf {
    mem: Option<Aligned>,
    len: usize,
    pool: std::sync::Arc<PackPool>,
}

impl PackBuf {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `data`, growing the buffer if it does not fit.
    pub(crate) fn extend_from_slice(&mut self, data: &[u8]) {
        let need = self.len + data.len();
        let cap = self.mem.as_ref().map_or(0, |m| m.layout.size());
        if need > cap {
            let bigger = Aligned::new(need.max(2 * cap).next_multiple_of(ALIGN));
            if let Some(old) = &self.mem {
                // SAFETY: both buffers hold at least `self.len` bytes and do not overlap; the
                // first `self.len` bytes of `old` are initialised.
                #[allow(unsafe_code)]
                unsafe {
                    std::ptr::copy_nonoverlapping(old.ptr.as_ptr(), bigger.ptr.as_ptr(), self.len)
                };
            }
            self.mem = Some(bigger);
        }
        let mem = self.mem.as_ref().expect("allocated above");
        // SAFETY: `need` bytes fit in `mem` (checked above); `data` is not inside `mem`
        // (nothing hands out a reference past `len`).
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), mem.ptr.as_ptr().add(self.len), data.len())
        };
        self.len = need;
    }
}

impl AsRef<[u8]> for PackBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.mem {
            // SAFETY: the first `len` bytes of `mem` are initialised (written by
            // `extend_from_slice`) and owned by `self`.
            #[allow(unsafe_code)]
            Some(m) => unsafe { std::slice::from_raw_parts(m.ptr.as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl Drop for PackBuf {
    fn drop(&mut self) {
        if let Some(mem) = self.mem.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < self.pool.keep {
                free.push(mem);
            }
        }
    }
}

/// Pack buffers kept for reuse.
pub(crate) struct PackPool {
    free: std::sync::Mutex<Vec<Aligned>>,
    /// Buffers kept at most (more are freed).
    keep: usize,
    /// Size of a new buffer.
    capacity: usize,
}

impl PackPool {
    pub(crate) fn new(keep: usize, capacity: usize) -> std::sync::Arc<PackPool> {
        std::sync::Arc::new(PackPool {
            free: std::sync::Mutex::new(Vec::new()),
            keep,
            capacity: capacity.next_multiple_of(ALIGN),
        })
    }

    /// An empty buffer: a kept one, or a new one of the pool's capacity.
    pub(crate) fn take(self: &std::sync::Arc<Self>) -> PackBuf {
        let kept = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        PackBuf {
            mem: Some(kept.unwrap_or_else(|| Aligned::new(self.capacity))),
            len: 0,
            pool: self.clone(),
        }
    }
}

/// Writes `data` to `path` (creating its directory) so that it is on disk when this returns:
/// a temp sibling, written with `O_DIRECT` where the filesystem allows it, `fdatasync`ed and
/// renamed into place. The directory itself is not synced (the caller syncs directories once
/// per commit). On failure nothing is left behind.
pub(crate) fn write_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a store object path has a parent"))?;
    std::fs::create_dir_all(parent)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!("#{}", rand::random::<u32>()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let res = write_to(&tmp, data).and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn write_to(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    let direct = File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(tmp);
    let mut file = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let _ = std::fs::remove_file(tmp);
            let mut f = File::options().write(true).create_new(true).open(tmp)?;
            f.write_all(data)?;
            return f.sync_data();
        }
        Err(e) => return Err(e),
    };
    let whole = data.len() / ALIGN * ALIGN;
    if whole > 0 && data.as_ptr() as usize % ALIGN == 0 {
        // Aligned already (a `PackBuf`): straight from it.
        if let Err(e) = file.write_all(&data[..whole]) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            // Refused by a filesystem that accepted the flag at open: start over buffered.
            clear_direct(&file)?;
            file.set_len(0)?;
            file.write_all_at(&data[..whole], 0)?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(whole as u64))?;
        }
    } else if whole > 0 {
        let mut buf = Aligned::new(CHUNK.min(whole));
        let mut done = 0;
        while done < whole {
            let n = (whole - done).min(CHUNK);
            let b = &mut buf.as_mut_slice()[..n];
            b.copy_from_slice(&data[done..done + n]);
            match file.write_all(b) {
                Ok(()) => done += n,
                // Some filesystems accept the flag at open and refuse the write.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && done == 0 => {
                    clear_direct(&file)?;
                    file.write_all(&data[..whole])?;
                    done = whole;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if whole < data.len() {
        clear_direct(&file)?;
        file.write_all(&data[whole..])?;
    }
    file.sync_data()
}

/// Turns `O_DIRECT` off on an open file (for a tail shorter than a block).
fn clear_direct(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` keeps open, with integer arguments only.
    #[allow(unsafe_code)]
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_length_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, shorter than a block, whole blocks, a tail, more than one chunk.
        for len in [0, 1, 4095, 4096, 8192 + 17, CHUNK, 2 * CHUNK + 4096 + 5] {
            let path = dir.path().join(format!("packs/ab/{len}"));
            let data = pattern(len);
            write_durable(&path, &data).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains('#'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_filesystem_without_o_direct_still_gets_the_bytes() {
        // /dev/shm is tmpfs: O_DIRECT is refused there on kernels before 6.6 and accepted
        // after; either way the object must come out whole.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("obj");
        let data = pattern(3 * 4096 + 100);
        write_durable(&path, &data).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // The same from an aligned pack buffer (written without the bounce copy).
        let pool = PackPool::new(1, 4 * ALIGN);
        let mut b = pool.take();
        b.extend_from_slice(&data);
        let path = dir.path().join("aligned");
        write_durable(&path, b.as_ref()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_keeps_an_existing_object() {
        let dir = tempfile::tempdir().unwrap();
        // The parent "directory" is a file: creating it fails.
        std::fs::write(dir.path().join("packs"), b"not a dir").unwrap();
        assert!(write_durable(&dir.path().join("packs/x"), b"data").is_err());
        // Overwriting replaces atomically.
        let path = dir.path().join("obj");
        write_durable(&path, &pattern(5000)).unwrap();
        write_durable(&path, &pattern(7000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), pattern(7000));
        assert_eq!(walk(dir.path()).len(), 2);
    }

    #[test]
    fn a_pack_buffer_stays_aligned_as_it_grows_is_written_whole_and_is_reused() {
        let pool = PackPool::new(1, 2 * ALIGN);
        let mut b = pool.take();
        let data = pattern(3 * ALIGN + 5);
        b.extend_from_slice(&data[..100]);
        b.extend_from_slice(&data[100..]); // past the capacity: grows
        assert_eq!(b.len(), data.len());
        assert_eq!(b.as_ref(), &data[..]);
        assert_eq!(b.as_ref().as_ptr() as usize % ALIGN, 0);
        // Written from the buffer itself (whole blocks direct, the tail buffered).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packs/p");
        write_durable(&path, b.as_ref()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        drop(b);
        assert_eq!(pool.free.lock().unwrap().len(), 1, "given back");
        let again = pool.take();
        assert_eq!(again.len(), 0);
        assert!(again.as_ref().is_empty());
        assert!(pool.free.lock().unwrap().is_empty(), "taken again");
    }

    fn walk(d: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
