//! podsnap-volumes: the pod filesystem state that lives outside a gVisor checkpoint, carried
//! in the snapshot's image as one file, [`FILE_NAME`].
//!
//! Behind containerd's runc shim a pod's emptyDir volumes are bind mounts of the kubelet's
//! host directories (`<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`) and
//! its `/dev/shm` is the CRI's per-sandbox host tmpfs; runsc serves them through its gofer, so
//! `runsc checkpoint` does not save their contents. podsnapd [`pack`]s them into the image
//! while the sandbox is paused for its checkpoint; podsnap-runsc [`unpack`]s them into the new
//! pod's directories before runsc restores the pod.
//!
//! # Format (version 1)
//!
//! Little-endian, one stream of records after the 8-byte magic `PSNPVOL1`:
//!
//! ```text
//! 'V' key:str16 meta          a volume starts: "emptydir/<name>" or "shm"; meta of its root
//! 'D' path:str16 meta         a directory (its parent was recorded before it)
//! 'F' path:str16 meta size:u64 bytes[size]
//! 'L' path:str16 meta target:str16
//! 'P' path:str16 meta         a FIFO
//! 'E' entries:u64 bytes:u64   the end: how many records and file bytes came before it
//! meta  = mode:u32 (permission bits, 0o7777) uid:u32 gid:u32 mtime_s:i64 mtime_ns:u32
//! str16 = len:u16 bytes[len]  (at most 4096 bytes)
//! ```
//!
//! Paths are relative to their volume's root, `/`-separated, each component neither empty,
//! `.` nor `..`, without NUL. Regular files, directories, symlinks (their targets as they
//! are) and FIFOs are kept with their permission bits, owner and modification time; a file
//! with several hard links is stored once per name; sockets and device nodes are left out
//! (named in [`Packed::skipped`]); extended attributes are not kept.
//!
//! # Reading untrusted archives
//!
//! The store verifies every byte of the image, but the archive is still read as hostile:
//! every length is bounded before anything is allocated, the totals are bounded by
//! [`Limits`], the trailer must match what was read (a truncated archive is an error, not a
//! short volume), and [`unpack`] writes only below the target directories: it creates every
//! entry relative to a directory descriptor opened without following symlinks, so neither a
//! `../` path nor a symlink in the archive (relative or absolute) can make it write
//! elsewhere. [`volumes`] reads the whole archive without writing, so a corrupt one is
//! refused before anything is written.

pub mod layout;
mod pack;
mod unpack;

use std::path::PathBuf;

pub use pack::{pack, Packed};
pub use unpack::{unpack, volumes, Unpacked};

/// The archive's name in a snapshot's image (flat: lazily served images hold no directories).
pub const FILE_NAME: &str = "pod-volumes.psv";

const MAGIC: &[u8; 8] = b"PSNPVOL1";
/// Longest path or symlink target in an archive.
const MAX_STR: usize = 4096;

/// What one archive may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Regular file bytes, over every volume.
    pub max_bytes: u64,
    /// Records (files, directories, symlinks, FIFOs), over every volume.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 1 GiB and 100,000 entries: a pod's scratch space, not a data set. A volume beyond
    /// them fails the checkpoint (it belongs on a persistent volume).
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// Which of the pod's volumes a directory is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VolumeKey {
    /// An emptyDir volume, by its name in the pod spec.
    EmptyDir(String),
    /// The pod's `/dev/shm`.
    Shm,
}

impl VolumeKey {
    /// An emptyDir key; `None` for a name that is not a Kubernetes volume name (a DNS label:
    /// `[a-z0-9-]`, at most 63 characters; any `[A-Za-z0-9._-]` name up to 253 is taken).
    pub fn empty_dir(name: &str) -> Option<VolumeKey> {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        ok.then(|| VolumeKey::EmptyDir(name.to_string()))
    }

    fn wire(&self) -> String {
        match self {
            VolumeKey::EmptyDir(n) => format!("emptydir/{n}"),
            VolumeKey::Shm => "shm".into(),
        }
    }

    fn from_wire(s: &[u8]) -> Option<VolumeKey> {
        let s = std::str::from_utf8(s).ok()?;
        match s {
            "shm" => Some(VolumeKey::Shm),
            _ => VolumeKey::empty_dir(s.strip_prefix("emptydir/")?),
        }
    }
}

impl std::fmt::Display for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeKey::EmptyDir(n) => write!(f, "emptyDir {n:?}"),
            VolumeKey::Shm => f.write_str("/dev/shm"),
        }
    }
}

/// A volume to pack: its key and the host directory holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub key: VolumeKey,
    pub dir: PathBuf,
}

/// Why a pack failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {} of {volume}", .path.display())]
    Read {
        volume: VolumeKey,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pod's volumes hold more than {limit} bytes of files (reached in {volume}): too \
         large to carry in a snapshot; keep large data on a persistent volume"
    )]
    TooLarge { volume: VolumeKey, limit: u64 },
    #[error(
        "the pod's volumes hold more than {limit} files and directories (reached in {volume}): \
         too many to carry in a snapshot"
    )]
    TooManyEntries { volume: VolumeKey, limit: u64 },
    #[error("{} in {volume}: its path is longer than {MAX_STR} bytes", .path.display())]
    PathTooLong { volume: VolumeKey, path: PathBuf },
    #[error("{} in {volume} changed while it was packed", .path.display())]
    Changed { volume: VolumeKey, path: PathBuf },
}

/// Why an unpack failed (nothing is written outside the target directories, whatever the
/// archive holds).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read volume archive {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt volume archive at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("volume archive holds {volume} twice")]
    Duplicate { volume: VolumeKey },
    #[error("refusing {path:?} of {volume}: {reason}")]
    UnsafePath {
        volume: VolumeKey,
        path: String,
        reason: &'static str,
    },
    #[error("volume archive exceeds its limit of {limit} {what}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("no target directory for {volume}")]
    NoTarget { volume: VolumeKey },
    #[error("cannot {op} {path:?} of {volume} in {}", .target.display())]
    Write {
        op: &'static str,
        volume: VolumeKey,
        path: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Permission bits, owner and modification time of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_s: i64,
    mtime_ns: u32,
}

impl Meta {
    const LEN: usize = 4 + 4 + 4 + 8 + 4;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.mode & 0o7777).to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.mtime_s.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
    }

    fn decode(b: &[u8; Meta::LEN]) -> Meta {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Meta {
            mode: u32_at(0) & 0o7777,
            uid: u32_at(4),
            gid: u32_at(8),
            mtime_s: i64::from_le_bytes(b[12..20].try_into().expect("8 bytes")),
            mtime_ns: u32_at(20).min(999_999_999),
        }
    }
}

/// Record tags.
mod tag {
    pub const VOLUME: u8 = b'V';
    pub const DIR: u8 = b'D';
    pub const FILE: u8 = b'F';
    pub const SYMLINK: u8 = b'L';
    pub const FIFO: u8 = b'P';
    pub const END: u8 = b'E';
}
