//! The FUSE filesystem over one lazy image, and its mount.
//!
//! A flat, read-only directory: inode 1 is the root, inode `2 + i` the image's file `i`.
//! Attributes come from the manifest (size, mode; owner root); nothing can be written,
//! created or removed. Reads run as tasks on the daemon's tokio runtime, so a read that waits
//! for the store never holds up the FUSE threads.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, Request, SessionACL,
};
use nix::mount::{MntFlags, MsFlags};

use crate::registry::ImageLease;
use crate::LazyError;

/// The files never change: the kernel may cache attributes and names for long.
const TTL: Duration = Duration::from_secs(3600);
/// The filesystem type and source in `/proc/self/mountinfo`.
const FS_TYPE: &str = "fuse.podsnap";
const FS_SOURCE: &str = "podsnap-lazy";
/// FUSE threads reading requests (reads themselves run on the runtime).
const THREADS: usize = 2;

/// Whether this process can serve FUSE mounts: `/dev/fuse` opens read-write. `Err` says why
/// not.
pub fn fuse_available() -> Result<(), String> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// One image mounted at one directory. Dropping it unmounts (lazily).
#[derive(Debug)]
pub struct LazyMount {
    mountpoint: PathBuf,
    mounted: bool,
    lease: ImageLease,
    _session: Option<fuser::BackgroundSession>,
}

impl LazyMount {
    /// Mounts the leased image at `mountpoint` (created if missing, must be empty) and serves
    /// it on `rt`. Only a flat image (no directories) can be served.
    pub async fn mount(
        lease: ImageLease,
        mountpoint: &Path,
        rt: tokio::runtime::Handle,
    ) -> Result<LazyMount, LazyError> {
        let files = lease.image().files();
        if let Some(f) = files.iter().find(|f| f.path.contains('/')) {
            return Err(LazyError::Unsupported(format!(
                "the image holds a file in a directory ({}); lazy images are flat",
                f.path
            )));
        }
        std::fs::create_dir_all(mountpoint).map_err(|source| LazyError::Io {
            context: format!("creating {}", mountpoint.display()),
            source,
        })?;
        let dev = File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|source| LazyError::Io {
                context: "opening /dev/fuse".into(),
                source,
            })?;
        let fd: OwnedFd = dev.into();
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let data = format!(
            "fd={},rootmode=40000,user_id={uid},group_id={gid},allow_other,max_read=131072",
            fd.as_raw_fd()
        );
        nix::mount::mount(
            Some(FS_SOURCE),
            mountpoint,
            Some(FS_TYPE),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|source| LazyError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
        let fs = ImageFs::new(lease.image().clone(), rt);
        let mut config = Config::default();
        config.acl = SessionACL::All;
        config.n_threads = Some(THREADS);
        // The handshake reads the kernel's INIT, queued by the mount above.
        let at = mountpoint.to_path_buf();
        let session = tokio::task::spawn_blocking(move || {
            fuser::Session::from_fd(fs, fd, SessionACL::All, config).and_then(|s| s.spawn())
        })
        .await
        .map_err(|e| LazyError::Io {
            context: "starting the FUSE session".into(),
            source: std::io::Error::other(e),
        })
        .and_then(|r| {
            r.map_err(|source| LazyError::Io {
                context: format!("starting the FUSE session at {}", at.display()),
                source,
            })
        });
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                let _ = nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH);
                return Err(e);
            }
        };
        tracing::info!(mountpoint = %mountpoint.display(), snapshot = %lease.image().manifest().id, "lazy image mounted");
        Ok(LazyMount {
            mountpoint: mountpoint.to_path_buf(),
            mounted: true,
            lease,
            _session: Some(session),
        })
    }

    /// The directory runsc reads the image from.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Starts the image's background fill (see [`ImageLease::start_fill`]).
    pub fn start_fill(&self) {
        self.lease.start_fill();
    }

    /// The image served.
    pub fn image(&self) -> &podsnap_store::LazyImage {
        self.lease.image()
    }

    /// Unmounts lazily (`MNT_DETACH`): the name goes at once, files still open stay readable
    /// until closed, then the FUSE session ends.
    pub fn unmount(&mut self) -> Result<(), LazyError> {
        if !std::mem::replace(&mut self.mounted, false) {
            return Ok(());
        }
        nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH).map_err(|source| {
            LazyError::Mount {
                path: self.mountpoint.clone(),
                source,
            }
        })?;
        tracing::info!(mountpoint = %self.mountpoint.display(), "lazy image unmounted");
        Ok(())
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "cannot unmount a lazy image");
        }
    }
}

/// Unmounts (lazily) every lazy image mount below `dir` that an earlier run of the daemon
/// left (its FUSE server is gone, so reads of them fail). Returns how many.
pub fn unmount_stale(dir: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut n = 0;
    for point in lazy_mount_points(&text) {
        if point.starts_with(dir) && nix::mount::umount2(&point, MntFlags::MNT_DETACH).is_ok() {
            tracing::info!(mountpoint = %point.display(), "removed a stale lazy image mount");
            n += 1;
        }
    }
    n
}

/// The mount points of lazy images listed in a `/proc/<pid>/mountinfo` text.
pub fn lazy_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mountpoint options ... - fstype source super-options
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&FS_TYPE) && fields.len() >= 5)
                .then(|| PathBuf::from(fields[4].replace("\\040", " ")))
        })
        .collect()
}

struct ImageFs {
    image: podsnap_store::LazyImage,
    rt: tokio::runtime::Handle,
    names: Vec<String>,
    attrs: Vec<FileAttr>,
    root: FileAttr,
}

impl ImageFs {
    fn new(image: podsnap_store::LazyImage, rt: tokio::runtime::Handle) -> ImageFs {
        let now = SystemTime::now();
        let attr = |ino: u64, kind: FileType, size: u64, perm: u16, nlink: u32| FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        let files = image.files();
        let attrs = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                attr(
                    i as u64 + 2,
                    FileType::RegularFile,
                    f.size,
                    (f.mode & 0o444) as u16,
                    1,
                )
            })
            .collect();
        ImageFs {
            names: files.into_iter().map(|f| f.path).collect(),
            attrs,
            root: attr(1, FileType::Directory, 0, 0o555, 2),
            image,
            rt,
        }
    }

    fn file(&self, ino: INodeNo) -> Option<usize> {
        let i = ino.0.checked_sub(2)? as usize;
        (i < self.attrs.len()).then_some(i)
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Big readahead: runsc reads pages.img in large positioned reads anyway.
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match self.names.iter().position(|n| OsStr::new(n) == name) {
            Some(i) => reply.entry(&TTL, &self.attrs[i], Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &self.root);
        }
        match self.file(ino) {
            Some(i) => reply.attr(&TTL, &self.attrs[i]),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.file(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // The bytes never change: the kernel may keep what it read across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.file(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // Local pages (the small files, and pages already fetched) are answered here: they
        // need nothing from the runtime, whose workers may be blocked reading this mount.
        match self.image.read_local(file, offset, size) {
            Some(Ok(bytes)) => return reply.data(&bytes),
            Some(Err(e)) => {
                tracing::error!(offset, size, error = %e, "lazy read failed: answering EIO");
                return reply.error(Errno::EIO);
            }
            None => {}
        }
        let image = self.image.clone();
        self.rt.spawn(async move {
            match image.read(file, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => {
                    tracing::error!(offset, size, error = %e, "lazy read failed: answering EIO");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        for (i, n) in self.names.iter().enumerate() {
            entries.push((INodeNo(i as u64 + 2), FileType::RegularFile, n.clone()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_mount_points_are_the_podsnap_fuse_mounts_of_a_mountinfo() {
        let text = "\
36 25 0:32 / /var/lib/podsnap/prepared/s--c1 ro,nosuid - fuse.podsnap podsnap ro,user_id=0
37 25 0:33 / /var/lib/podsnap/work/a\\040b/image ro - fuse.podsnap podsnap ro
38 25 0:34 / /mnt/other rw - fuse.sshfs host:/ rw
39 25 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
";
        assert_eq!(
            lazy_mount_points(text),
            vec![
                PathBuf::from("/var/lib/podsnap/prepared/s--c1"),
                PathBuf::from("/var/lib/podsnap/work/a b/image"),
            ]
        );
    }
}
