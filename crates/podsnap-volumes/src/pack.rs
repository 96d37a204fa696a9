//! Writing an archive: each volume's tree, depth first in name order (the same tree packs to
//! the same bytes, which the store then deduplicates), never following a symlink.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{tag, Limits, Meta, PackError, Volume, VolumeKey, MAGIC, MAX_STR};

/// What a pack wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    pub volumes: usize,
    /// Records written (files, directories, symlinks, FIFOs).
    pub entries: u64,
    /// Regular file bytes.
    pub bytes: u64,
    /// Entries left out (sockets, device nodes), as `<volume>: <path>`.
    pub skipped: Vec<String>,
}

/// Packs `volumes` into `out` (written to a temporary name beside it, then renamed: `out`
/// exists only when complete). Fails, leaving nothing, when they exceed `limits`.
pub fn pack(volumes: &[Volume], out: &Path, limits: &Limits) -> Result<Packed, PackError> {
    let tmp = out.with_file_name(format!(
        ".{}.tmp{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let write_err = |source| PackError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(&tmp).map_err(write_err)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        limits,
        packed: Packed::default(),
        out_path: out.to_path_buf(),
    };
    let res = w.all(volumes).and_then(|()| {
        let file = w.out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, out).map_err(write_err)?;
        Ok(w.packed)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

struct Writer<'a> {
    out: BufWriter<File>,
    limits: &'a Limits,
    packed: Packed,
    out_path: PathBuf,
}

fn meta_of(md: &std::fs::Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_s: md.mtime(),
        mtime_ns: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

impl Writer<'_> {
    fn all(&mut self, volumes: &[Volume]) -> Result<(), PackError> {
        self.put(MAGIC)?;
        for v in volumes {
            self.volume(v)?;
        }
        let mut end = vec![tag::END];
        end.extend_from_slice(&self.packed.entries.to_le_bytes());
        end.extend_from_slice(&self.packed.bytes.to_le_bytes());
        self.put(&end)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.out
            .write_all(bytes)
            .map_err(|source| PackError::Write {
                path: self.out_path.clone(),
                source,
            })
    }

    /// A record's head: tag, path, meta.
    fn head(&mut self, t: u8, rel: &[u8], meta: &Meta) -> Result<(), PackError> {
        let mut b = Vec::with_capacity(3 + rel.len() + Meta::LEN);
        b.push(t);
        b.extend_from_slice(&(rel.len() as u16).to_le_bytes());
        b.extend_from_slice(rel);
        meta.encode(&mut b);
        self.put(&b)
    }

    fn volume(&mut self, v: &Volume) -> Result<(), PackError> {
        let read_err = |path: &Path, source| PackError::Read {
            volume: v.key.clone(),
            path: path.to_path_buf(),
            source,
        };
        let md = std::fs::symlink_metadata(&v.dir).map_err(|e| read_err(&v.dir, e))?;
        if !md.is_dir() {
            let e = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
            return Err(read_err(&v.dir, e));
        }
        self.head(tag::VOLUME, v.key.wire().as_bytes(), &meta_of(&md))?;
        self.packed.volumes += 1;
        let mut stack = vec![(v.dir.clone(), Vec::<u8>::new())];
        while let Some((dir, rel)) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| read_err(&dir, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| read_err(&dir, e))?;
            names.sort();
            // Depth first: subdirectories after this directory's other entries, in order.
            let mut subdirs = Vec::new();
            for name in names {
                let abs = dir.join(&name);
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(name.as_bytes());
                if self.entry(&v.key, &abs, &r)? {
                    subdirs.push((abs, r));
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// One entry; true for a directory to descend into.
    fn entry(&mut self, key: &VolumeKey, abs: &Path, rel: &[u8]) -> Result<bool, PackError> {
        let read_err = |source| PackError::Read {
            volume: key.clone(),
            path: abs.to_path_buf(),
            source,
        };
        if rel.len() > MAX_STR {
            return Err(PackError::PathTooLong {
                volume: key.clone(),
                path: abs.to_path_buf(),
            });
        }
        let md = std::fs::symlink_metadata(abs).map_err(read_err)?;
        let ft = md.file_type();
        let meta = meta_of(&md);
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink() || ft.is_fifo()) {
            self.packed.skipped.push(format!(
                "{key}: {}",
                String::from_utf8_lossy(rel).into_owned()
            ));
            return Ok(false);
        }
        self.packed.entries += 1;
        if self.packed.entries > self.limits.max_entries {
            return Err(PackError::TooManyEntries {
                volume: key.clone(),
                limit: self.limits.max_entries,
            });
        }
        if ft.is_dir() {
            self.head(tag::DIR, rel, &meta)?;
        } else if ft.is_fifo() {
            self.head(tag::FIFO, rel, &meta)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(abs).map_err(read_err)?;
            let target = target.as_os_str().as_bytes();
            if target.len() > MAX_STR {
                return Err(PackError::PathTooLong {
                    volume: key.clone(),
                    path: abs.to_path_buf(),
                });
            }
            self.head(tag::SYMLINK, rel, &meta)?;
            self.put(&(target.len() as u16).to_le_bytes())?;
            self.put(target)?;
        } else {
            self.file(key, abs, rel, &meta, md.len())?;
        }
        Ok(ft.is_dir())
    }

    fn file(
        &mut self,
        key: &VolumeKey,
        abs: &Path,
        rel: &[u8],
        meta: &Meta,
        size: u64,
    ) -> Result<(), PackError> {
        let read_err = |source| PackError::Read {
            volume: key.clone(),
            path: abs.to_path_buf(),
            source,
        };
        if self.packed.bytes + size > self.limits.max_bytes {
            return Err(PackError::TooLarge {
                volume: key.clone(),
                limit: self.limits.max_bytes,
            });
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(abs)
            .map_err(read_err)?;
        self.head(tag::FILE, rel, meta)?;
        self.put(&size.to_le_bytes())?;
        let copied =
            std::io::copy(&mut f.take(size), &mut self.out).map_err(|e| PackError::Read {
                volume: key.clone(),
                path: abs.to_path_buf(),
                source: e,
            })?;
        if copied != size {
            return Err(PackError::Changed {
                volume: key.clone(),
                path: abs.to_path_buf(),
            });
        }
        self.packed.bytes += size;
        Ok(())
    }
}
