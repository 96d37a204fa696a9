//! Reading an archive: one checked walk over its records ([`Walk`]) feeding either nothing
//! ([`volumes`], which only validates) or the writer of [`unpack`], which creates every entry
//! relative to a directory descriptor opened with `O_NOFOLLOW`.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::{tag, Limits, Meta, UnpackError, VolumeKey, MAGIC, MAX_STR};

/// What an unpack wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub volumes: usize,
    pub entries: u64,
    pub bytes: u64,
}

/// The volumes an archive holds, in order, after reading all of it (nothing is written):
/// a corrupt, oversized or escaping archive is refused here.
pub fn volumes(archive: &Path, limits: &Limits) -> Result<Vec<VolumeKey>, UnpackError> {
    let mut keys = Vec::new();
    Walk::open(archive, limits)?.run(&mut |rec: Rec<'_, '_>| {
        if let Rec::Volume(k, _) = rec {
            keys.push(k.clone());
        }
        Ok(())
    })?;
    Ok(keys)
}

/// Unpacks `archive` into the target directory of each of its volumes (which must exist),
/// after [`volumes`] found it sound. Entries already there are replaced (a retried restore);
/// a directory is never replaced by another kind of entry.
pub fn unpack(
    archive: &Path,
    targets: &BTreeMap<VolumeKey, PathBuf>,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let keys = volumes(archive, limits)?;
    if let Some(k) = keys.iter().find(|k| !targets.contains_key(k)) {
        return Err(UnpackError::NoTarget { volume: k.clone() });
    }
    let mut w = Writer {
        targets,
        current: None,
        done: Unpacked::default(),
    };
    Walk::open(archive, limits)?.run(&mut |rec| w.record(rec))?;
    w.finish_volume()?;
    Ok(w.done)
}

/// One record as the walk hands it on (a file's data is its reader's next `size` bytes).
enum Rec<'a, 'r> {
    Volume(&'a VolumeKey, Meta),
    Dir(&'a [u8], Meta),
    File(&'a [u8], Meta, u64, &'r mut dyn Read),
    Symlink(&'a [u8], Meta, &'a [u8]),
    Fifo(&'a [u8], Meta),
}

struct Walk<'l> {
    r: BufReader<File>,
    offset: u64,
    limits: &'l Limits,
}

type Names = HashSet<Vec<u8>>;

type Sink<'s> = dyn FnMut(Rec<'_, '_>) -> Result<(), UnpackError> + 's;

impl<'l> Walk<'l> {
    fn open(path: &Path, limits: &'l Limits) -> Result<Walk<'l>, UnpackError> {
        let f = File::open(path).map_err(|source| UnpackError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Walk {
            r: BufReader::with_capacity(1 << 20, f),
            offset: 0,
            limits,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> UnpackError {
        UnpackError::Corrupt {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), UnpackError> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.corrupt("truncated"),
            _ => self.corrupt(format!("read failed: {e}")),
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, UnpackError> {
        let mut b = [0; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn str16(&mut self) -> Result<Vec<u8>, UnpackError> {
        let mut b = [0; 2];
        self.exact(&mut b)?;
        let len = u16::from_le_bytes(b) as usize;
        if len > MAX_STR {
            return Err(self.corrupt(format!("a name of {len} bytes (at most {MAX_STR})")));
        }
        let mut s = vec![0; len];
        self.exact(&mut s)?;
        Ok(s)
    }

    fn meta(&mut self) -> Result<Meta, UnpackError> {
        let mut b = [0; Meta::LEN];
        self.exact(&mut b)?;
        Ok(Meta::decode(&b))
    }

    /// Reads every record, checks it and hands it to `sink`; the end record must match what
    /// came before it and be the last byte.
    fn run(mut self, sink: &mut Sink<'_>) -> Result<(), UnpackError> {
        let mut magic = [0; 8];
        self.exact(&mut magic)
            .map_err(|_| self.corrupt("not a podsnap volume archive"))?;
        if &magic != MAGIC {
            return Err(self.corrupt("not a podsnap volume archive (bad magic)"));
        }
        let (mut entries, mut bytes) = (0u64, 0u64);
        let mut seen = HashSet::new();
        // The current volume, its directories and every name recorded in it.
        let mut vol: Option<(VolumeKey, Names, Names)> = None;
        loop {
            let mut t = [0; 1];
            self.exact(&mut t)
                .map_err(|_| self.corrupt("truncated: no end record"))?;
            match t[0] {
                tag::END => return self.end(entries, bytes),
                tag::VOLUME | tag::DIR | tag::FILE | tag::SYMLINK | tag::FIFO => {}
                t => return Err(self.corrupt(format!("unknown record type {t:#04x}"))),
            }
            let name = self.str16()?;
            let meta = self.meta()?;
            if t[0] == tag::VOLUME {
                let key = VolumeKey::from_wire(&name)
                    .ok_or_else(|| self.corrupt("a volume key that is not emptydir/NAME or shm"))?;
                if !seen.insert(key.clone()) {
                    return Err(UnpackError::Duplicate { volume: key });
                }
                sink(Rec::Volume(&key, meta))?;
                vol = Some((key, HashSet::new(), HashSet::new()));
                continue;
            }
            let Some((key, dirs, names)) = vol.as_mut() else {
                return Err(self.corrupt("an entry before any volume"));
            };
            check_path(key, &name, dirs)?;
            if !names.insert(name.clone()) {
                return Err(UnpackError::UnsafePath {
                    volume: key.clone(),
                    path: String::from_utf8_lossy(&name).into_owned(),
                    reason: "recorded twice",
                });
            }
            entries += 1;
            if entries > self.limits.max_entries {
                return Err(UnpackError::TooLarge {
                    what: "entries",
                    limit: self.limits.max_entries,
                });
            }
            match t[0] {
                tag::DIR => {
                    dirs.insert(name.clone());
                    sink(Rec::Dir(&name, meta))?
                }
                tag::FIFO => sink(Rec::Fifo(&name, meta))?,
                tag::SYMLINK => {
                    let target = self.str16()?;
                    if target.is_empty() || target.contains(&0) {
                        return Err(self.corrupt("an empty symlink target or one with NUL"));
                    }
                    sink(Rec::Symlink(&name, meta, &target))?
                }
                tag::FILE => {
                    let size = self.u64()?;
                    bytes = bytes.saturating_add(size);
                    if bytes > self.limits.max_bytes {
                        return Err(UnpackError::TooLarge {
                            what: "bytes",
                            limit: self.limits.max_bytes,
                        });
                    }
                    self.file(&name, meta, size, sink)?
                }
                _ => unreachable!("checked above"),
            }
        }
    }

    /// A file record: the sink reads its data, or it is skipped; either way all of it must be
    /// there.
    fn file(
        &mut self,
        name: &[u8],
        meta: Meta,
        size: u64,
        sink: &mut Sink<'_>,
    ) -> Result<(), UnpackError> {
        let mut data = (&mut self.r).take(size);
        sink(Rec::File(name, meta, size, &mut data))?;
        let skipped = std::io::copy(&mut data, &mut std::io::sink());
        let left = data.limit();
        self.offset += size - left;
        match skipped {
            Err(e) => Err(self.corrupt(format!("read failed: {e}"))),
            Ok(_) if left > 0 => Err(self.corrupt("truncated file data")),
            Ok(_) => Ok(()),
        }
    }

    fn end(mut self, entries: u64, bytes: u64) -> Result<(), UnpackError> {
        let (e, b) = (self.u64()?, self.u64()?);
        if (e, b) != (entries, bytes) {
            return Err(self.corrupt(format!(
                "the end record counts {e} entries and {b} bytes, the archive held {entries} and {bytes}"
            )));
        }
        let mut extra = [0; 1];
        match self.r.read(&mut extra) {
            Ok(0) => Ok(()),
            _ => Err(self.corrupt("data after the end record")),
        }
    }
}

/// A relative path of normal components, whose parent (if any) is a directory recorded
/// earlier in the same volume.
fn check_path(key: &VolumeKey, p: &[u8], dirs: &HashSet<Vec<u8>>) -> Result<(), UnpackError> {
    let refuse = |reason| UnpackError::UnsafePath {
        volume: key.clone(),
        path: String::from_utf8_lossy(p).into_owned(),
        reason,
    };
    if p.is_empty() {
        return Err(refuse("an empty path"));
    }
    if p[0] == b'/' {
        return Err(refuse("an absolute path"));
    }
    if p.contains(&0) {
        return Err(refuse("a NUL byte in the path"));
    }
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" => return Err(refuse("an empty path component")),
            b"." | b".." => return Err(refuse("a . or .. component")),
            c if c.len() > 255 => return Err(refuse("a component longer than 255 bytes")),
            _ => {}
        }
    }
    if let Some(i) = p.iter().rposition(|b| *b == b'/') {
        if !dirs.contains(&p[..i]) {
            return Err(refuse("its directory is not recorded before it"));
        }
    }
    Ok(())
}

/// The volume being written: its key, target, root descriptor and the directories whose
/// modes and times are set once their contents are in.
struct Current {
    key: VolumeKey,
    target: PathBuf,
    root: OwnedFd,
    root_meta: Meta,
    dirs: Vec<(Vec<u8>, Meta)>,
}

struct Writer<'t> {
    targets: &'t BTreeMap<VolumeKey, PathBuf>,
    current: Option<Current>,
    done: Unpacked,
}

fn timestamps(m: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: m.mtime_s,
        tv_nsec: m.mtime_ns.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn ids(m: &Meta) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw(m.uid)),
        Some(rustix::fs::Gid::from_raw(m.gid)),
    )
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Writer<'_> {
    fn record(&mut self, rec: Rec<'_, '_>) -> Result<(), UnpackError> {
        let (path, meta) = match rec {
            Rec::Volume(key, meta) => return self.start_volume(key, meta),
            Rec::Dir(p, m) | Rec::File(p, m, ..) | Rec::Symlink(p, m, _) | Rec::Fifo(p, m) => {
                (p, m)
            }
        };
        let cur = self
            .current
            .as_mut()
            .expect("the walk checks entries follow a volume");
        let (parent, name) = cur.parent(path)?;
        let err = |op: &'static str| cur.write_error(op, path);
        let (uid, gid) = ids(&meta);
        match rec {
            Rec::Dir(..) => {
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                    Err(rustix::io::Errno::EXIST) => {
                        let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(err("inspect"))?;
                        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                            return Err(err("replace with a directory")(rustix::io::Errno::EXIST));
                        }
                    }
                    r => r.map_err(err("create directory"))?,
                }
                rustix::fs::chownat(&parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err("chown"))?;
                cur.dirs.push((path.to_vec(), meta));
            }
            Rec::File(_, _, size, data) => {
                remove_existing(&parent, name).map_err(err("replace"))?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(err("create file"))?;
                let mut f = File::from(fd);
                let n = std::io::copy(data, &mut f).map_err(|e| err("write")(errno_of(&e)))?;
                if n != size {
                    return Ok(()); // the walk reports the truncation
                }
                rustix::fs::fchown(&f, uid, gid).map_err(err("chown"))?;
                rustix::fs::fchmod(&f, Mode::from_raw_mode(meta.mode)).map_err(err("chmod"))?;
                rustix::fs::futimens(&f, &timestamps(&meta)).map_err(err("set times of"))?;
                self.done.bytes += size;
            }
            Rec::Symlink(_, _, target) => {
                remove_existing(&parent, name).map_err(err("replace"))?;
                rustix::fs::symlinkat(target, &parent, name).map_err(err("create symlink"))?;
                rustix::fs::chownat(&parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err("chown"))?;
                rustix::fs::utimensat(&parent, name, &timestamps(&meta), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err("set times of"))?;
            }
            Rec::Fifo(..) => {
                remove_existing(&parent, name).map_err(err("replace"))?;
                rustix::fs::mknodat(&parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(err("create FIFO"))?;
                rustix::fs::chownat(&parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err("chown"))?;
                // A FIFO just made here: nothing to follow.
                rustix::fs::chmodat(
                    &parent,
                    name,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(err("chmod"))?;
                rustix::fs::utimensat(&parent, name, &timestamps(&meta), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err("set times of"))?;
            }
            Rec::Volume(..) => unreachable!("handled above"),
        }
        self.done.entries += 1;
        Ok(())
    }

    fn start_volume(&mut self, key: &VolumeKey, meta: Meta) -> Result<(), UnpackError> {
        self.finish_volume()?;
        let target = self.targets.get(key).ok_or_else(|| UnpackError::NoTarget {
            volume: key.clone(),
        })?;
        let err = |op: &'static str| {
            move |e: rustix::io::Errno| UnpackError::Write {
                op,
                volume: key.clone(),
                path: String::new(),
                target: target.clone(),
                source: e.into(),
            }
        };
        let root = rustix::fs::open(target, DIR_FLAGS, Mode::empty()).map_err(err("open"))?;
        let (uid, gid) = ids(&meta);
        rustix::fs::fchown(&root, uid, gid).map_err(err("chown"))?;
        self.current = Some(Current {
            key: key.clone(),
            target: target.clone(),
            root,
            root_meta: meta,
            dirs: Vec::new(),
        });
        self.done.volumes += 1;
        Ok(())
    }

    /// The current volume's directories get their modes and times, deepest first, then its
    /// root.
    fn finish_volume(&mut self) -> Result<(), UnpackError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let err = |op: &'static str, path: &[u8]| cur.write_error(op, path);
        for (path, meta) in cur.dirs.iter().rev() {
            let (parent, name) = cur.parent(path)?;
            let fd = rustix::fs::openat(&parent, name, DIR_FLAGS, Mode::empty())
                .map_err(err("open", path))?;
            set_mode_and_times(&fd, meta).map_err(err("chmod", path))?;
        }
        set_mode_and_times(&cur.root, &cur.root_meta).map_err(err("chmod", b""))
    }
}

fn set_mode_and_times(fd: &OwnedFd, meta: &Meta) -> rustix::io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(fd, &timestamps(meta))
}

impl Current {
    /// What turns a failed `op` on `path` (in this volume) into the unpack's error.
    fn write_error(
        &self,
        op: &'static str,
        path: &[u8],
    ) -> impl FnOnce(rustix::io::Errno) -> UnpackError {
        let (key, target) = (self.key.clone(), self.target.clone());
        let path = String::from_utf8_lossy(path).into_owned();
        move |e| UnpackError::Write {
            op,
            volume: key,
            path,
            target,
            source: e.into(),
        }
    }

    /// The directory holding `path` (opened component by component, never through a
    /// symlink) and the last component.
    fn parent<'p>(&self, path: &'p [u8]) -> Result<(OwnedFd, &'p [u8]), UnpackError> {
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let mut fd = rustix::io::dup(&self.root).map_err(|e| self.write_err("open", path, e))?;
        for comp in dir.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            fd = match rustix::fs::openat(&fd, comp, DIR_FLAGS, Mode::empty()) {
                Ok(f) => f,
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(UnpackError::UnsafePath {
                        volume: self.key.clone(),
                        path: String::from_utf8_lossy(path).into_owned(),
                        reason: "a directory on its path is a symlink or not a directory",
                    })
                }
                Err(e) => return Err(self.write_err("open the directory of", path, e)),
            };
        }
        Ok((fd, name))
    }

    fn write_err(&self, op: &'static str, path: &[u8], e: rustix::io::Errno) -> UnpackError {
        UnpackError::Write {
            op,
            volume: self.key.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            target: self.target.clone(),
            source: e.into(),
        }
    }
}

/// Removes a non-directory entry named `name` if there is one.
fn remove_existing(parent: &impl AsFd, name: &[u8]) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn errno_of(e: &std::io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(e).unwrap_or(rustix::io::Errno::IO)
}
