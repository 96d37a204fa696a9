//! Pack and unpack on real directories: exact round trips (bytes, modes, owners, times,
//! directories, symlinks, FIFOs), the limits, and hostile archives (crafted here byte by byte
//! from the documented format) that must be refused without a write outside the targets.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use podsnap_volumes::{pack, unpack, volumes, Limits, PackError, UnpackError, Volume, VolumeKey};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn disk() -> VolumeKey {
    VolumeKey::empty_dir("disk").unwrap()
}

/// (kind, mode, uid, gid, mtime s, mtime ns, content or link target)
type Entry = (char, u32, u32, u32, i64, i64, Vec<u8>);

/// Every entry under `root`: relative path -> (kind, mode, uid, gid, mtime, content or
/// link target).
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let (kind, data) = if ft.is_dir() {
                stack.push(p.clone());
                ('d', vec![])
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                ('l', t.into_os_string().into_encoded_bytes())
            } else if ft.is_fifo() {
                ('p', vec![])
            } else if ft.is_socket() {
                ('s', vec![])
            } else {
                ('f', std::fs::read(&p).unwrap())
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                md.mode() & 0o7777
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(
                rel,
                (
                    kind,
                    mode,
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                    data,
                ),
            );
        }
    }
    out
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A volume with every kind of entry the format keeps, and a socket it leaves out.
fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    std::fs::write(dir.join("counter.txt"), "0\n1\n2\n").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("a/b/c/blob.bin"), &binary).unwrap();
    std::fs::write(dir.join("a/ro.txt"), "read only").unwrap();
    std::fs::set_permissions(dir.join("a/ro.txt"), PermissionsExt::from_mode(0o444)).unwrap();
    std::fs::write(dir.join("a/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("a/tool"), PermissionsExt::from_mode(0o4750)).unwrap();
    std::os::unix::fs::symlink("b/c/blob.bin", dir.join("a/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../nowhere", dir.join("a/dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("app.sock")).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(dir.join("counter.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(dir.join("abs-link"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::lchown(dir.join("a/b"), Some(1000), Some(1000)).unwrap();
        // chown clears setuid: set it again.
        std::os::unix::fs::lchown(dir.join("a/tool"), Some(7), Some(8)).unwrap();
        std::fs::set_permissions(dir.join("a/tool"), PermissionsExt::from_mode(0o4750)).unwrap();
    }
    set_mtime(&dir.join("counter.txt"), 1_700_000_000, 123_456_789);
    set_mtime(&dir.join("abs-link"), 1_600_000_000, 0);
    // A read-only directory with contents: its mode must be set after them.
    std::fs::set_permissions(dir.join("a/b/c"), PermissionsExt::from_mode(0o555)).unwrap();
    set_mtime(&dir.join("a/b/c"), 1_650_000_000, 5);
    std::fs::set_permissions(dir, PermissionsExt::from_mode(0o1777)).unwrap();
}

fn targets(pairs: &[(VolumeKey, &Path)]) -> BTreeMap<VolumeKey, PathBuf> {
    pairs
        .iter()
        .map(|(k, p)| (k.clone(), p.to_path_buf()))
        .collect()
}

#[test]
fn volumes_come_back_exact_and_a_retry_gives_the_same() {
    let t = tempfile::tempdir().unwrap();
    let (src_disk, src_shm) = (t.path().join("src/disk"), t.path().join("src/shm"));
    std::fs::create_dir_all(&src_shm).unwrap();
    populate(&src_disk);
    std::fs::write(src_shm.join("segment"), vec![9u8; 8192]).unwrap();
    let archive = t.path().join("pod-volumes.psv");
    let vols = [
        Volume {
            key: disk(),
            dir: src_disk.clone(),
        },
        Volume {
            key: VolumeKey::Shm,
            dir: src_shm.clone(),
        },
    ];
    let packed = pack(&vols, &archive, &Limits::default()).unwrap();
    assert_eq!(packed.volumes, 2);
    assert_eq!(
        packed.skipped,
        vec!["emptyDir \"disk\": app.sock".to_string()]
    );
    // Packing the same trees again gives the same bytes (the store deduplicates them).
    let again = t.path().join("again.psv");
    pack(&vols, &again, &Limits::default()).unwrap();
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        std::fs::read(&again).unwrap()
    );
    assert_eq!(
        volumes(&archive, &Limits::default()).unwrap(),
        vec![disk(), VolumeKey::Shm]
    );

    let (dst_disk, dst_shm) = (t.path().join("dst/disk"), t.path().join("dst/shm"));
    std::fs::create_dir_all(&dst_disk).unwrap();
    std::fs::create_dir_all(&dst_shm).unwrap();
    let to = targets(&[(disk(), &dst_disk), (VolumeKey::Shm, &dst_shm)]);
    for round in 0..2 {
        let u = unpack(&archive, &to, &Limits::default()).unwrap();
        assert_eq!(
            (u.volumes, u.entries, u.bytes),
            (2, packed.entries, packed.bytes)
        );
        let mut want = tree(&src_disk);
        want.remove("app.sock");
        assert_eq!(tree(&dst_disk), want, "round {round}");
        assert_eq!(tree(&dst_shm), tree(&src_shm), "round {round}");
        let root_mode = std::fs::metadata(&dst_disk).unwrap().mode() & 0o7777;
        assert_eq!(root_mode, 0o1777);
    }
}

#[test]
fn a_volume_over_the_limits_fails_the_pack_and_leaves_no_archive() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("disk");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), vec![1u8; 600]).unwrap();
    std::fs::write(src.join("b"), vec![2u8; 600]).unwrap();
    let out = t.path().join("pod-volumes.psv");
    let vols = [Volume {
        key: disk(),
        dir: src.clone(),
    }];
    let small = Limits {
        max_bytes: 1000,
        max_entries: 10,
    };
    let e = pack(&vols, &out, &small).unwrap_err();
    assert!(
        matches!(e, PackError::TooLarge { limit: 1000, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the pod's volumes hold more than 1000 bytes of files (reached in emptyDir \"disk\"): \
         too large to carry in a snapshot; keep large data on a persistent volume"
    );
    let few = Limits {
        max_bytes: 1 << 20,
        max_entries: 1,
    };
    let e = pack(&vols, &out, &few).unwrap_err();
    assert!(
        matches!(e, PackError::TooManyEntries { limit: 1, .. }),
        "{e:?}"
    );
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "only the source dir is left: {left:?}");
    // Within the limits it packs; an unpack with smaller limits refuses the archive.
    pack(&vols, &out, &Limits::default()).unwrap();
    let e = volumes(&out, &small).unwrap_err();
    assert!(
        matches!(e, UnpackError::TooLarge { what: "bytes", .. }),
        "{e:?}"
    );
}

/// Archives written by hand, record by record, as the format documents.
#[derive(Default)]
struct Raw {
    b: Vec<u8>,
    entries: u64,
    bytes: u64,
}

impl Raw {
    fn new() -> Raw {
        let mut r = Raw::default();
        r.b.extend_from_slice(b"PSNPVOL1");
        r
    }
    fn head(&mut self, tag: u8, name: &str, mode: u32) -> &mut Raw {
        self.b.push(tag);
        self.b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.b.extend_from_slice(name.as_bytes());
        for v in [mode, 0, 0] {
            self.b.extend_from_slice(&v.to_le_bytes());
        }
        self.b.extend_from_slice(&0i64.to_le_bytes());
        self.b.extend_from_slice(&0u32.to_le_bytes());
        if tag != b'V' {
            self.entries += 1;
        }
        self
    }
    fn volume(&mut self, key: &str) -> &mut Raw {
        self.head(b'V', key, 0o777)
    }
    fn dir(&mut self, p: &str) -> &mut Raw {
        self.head(b'D', p, 0o755)
    }
    fn file(&mut self, p: &str, data: &[u8]) -> &mut Raw {
        self.head(b'F', p, 0o644);
        self.b.extend_from_slice(&(data.len() as u64).to_le_bytes());
        self.b.extend_from_slice(data);
        self.bytes += data.len() as u64;
        self
    }
    fn symlink(&mut self, p: &str, target: &str) -> &mut Raw {
        self.head(b'L', p, 0o777);
        self.b
            .extend_from_slice(&(target.len() as u16).to_le_bytes());
        self.b.extend_from_slice(target.as_bytes());
        self
    }
    fn end(&mut self) -> Vec<u8> {
        let mut b = self.b.clone();
        b.push(b'E');
        b.extend_from_slice(&self.entries.to_le_bytes());
        b.extend_from_slice(&self.bytes.to_le_bytes());
        b
    }
}

/// Unpacks `bytes` into a fresh `disk` target beside an `outside` directory; returns the
/// error and checks that nothing appeared outside the target.
fn unpack_hostile(bytes: &[u8]) -> UnpackError {
    let t = tempfile::tempdir().unwrap();
    let (target, outside) = (t.path().join("vol/disk"), t.path().join("outside"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let archive = t.path().join("a.psv");
    std::fs::write(&archive, bytes).unwrap();
    let e = unpack(&archive, &targets(&[(disk(), &target)]), &Limits::default()).unwrap_err();
    assert_eq!(tree(&outside), BTreeMap::new(), "{e}");
    let top: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(top.len(), 3, "{top:?}");
    assert_eq!(
        tree(&t.path().join("vol")).len(),
        1,
        "{e}: {:?}",
        tree(&t.path().join("vol"))
    );
    e
}

#[test]
fn paths_that_escape_the_volume_are_refused_before_anything_is_written() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Raw::new()
                .volume("emptydir/disk")
                .file("../outside/x", b"!")
                .end(),
            "a . or .. component",
        ),
        (
            Raw::new()
                .volume("emptydir/disk")
                .file("/tmp/x", b"!")
                .end(),
            "an absolute path",
        ),
        (
            Raw::new()
                .volume("emptydir/disk")
                .dir("a")
                .file("a/../../x", b"!")
                .end(),
            "a . or .. component",
        ),
        (
            Raw::new().volume("emptydir/disk").file("a//b", b"!").end(),
            "an empty path component",
        ),
        (
            Raw::new().volume("emptydir/disk").file("a/b", b"!").end(),
            "its directory is not recorded",
        ),
        // A symlink may point anywhere, but nothing is written through it: "link" is not a
        // recorded directory.
        (
            Raw::new()
                .volume("emptydir/disk")
                .symlink("link", "../../outside")
                .file("link/x", b"!")
                .end(),
            "its directory is not recorded",
        ),
        (
            Raw::new().volume("emptydir/../../outside").end(),
            "volume key",
        ),
        (
            Raw::new()
                .volume("emptydir/disk")
                .volume("emptydir/disk")
                .end(),
            "twice",
        ),
    ];
    for (bytes, want) in cases {
        let e = unpack_hostile(&bytes);
        assert!(e.to_string().contains(want), "want {want:?}: {e}");
    }
}

#[test]
fn a_name_recorded_twice_is_refused_before_anything_is_written() {
    // "link", a symlink to an absolute path, then a directory of the same name with a file
    // in it: refused by the read-only pass, so not even the symlink is written.
    let abs_outside = tempfile::tempdir().unwrap();
    let bytes = Raw::new()
        .volume("emptydir/disk")
        .symlink("link", abs_outside.path().to_str().unwrap())
        .dir("link")
        .file("link/x", b"!")
        .end();
    let e = unpack_hostile(&bytes);
    assert!(e.to_string().contains("recorded twice"), "{e}");
    assert_eq!(tree(abs_outside.path()), BTreeMap::new());
}

#[test]
fn an_existing_symlink_in_the_target_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let (target, outside) = (t.path().join("disk"), t.path().join("outside"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "keep").unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), target.join("f")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
    let archive = t.path().join("a.psv");
    std::fs::write(
        &archive,
        Raw::new().volume("emptydir/disk").file("f", b"new").end(),
    )
    .unwrap();
    unpack(&archive, &targets(&[(disk(), &target)]), &Limits::default()).unwrap();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"new");
    assert!(!std::fs::symlink_metadata(target.join("f"))
        .unwrap()
        .is_symlink());
    // A directory record over a pre-existing symlink is refused, not followed.
    std::fs::write(
        &archive,
        Raw::new()
            .volume("emptydir/disk")
            .dir("d")
            .file("d/x", b"!")
            .end(),
    )
    .unwrap();
    let e = unpack(&archive, &targets(&[(disk(), &target)]), &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("replace with a directory"), "{e}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn corrupt_archives_are_refused_with_the_offset() {
    let good = Raw::new()
        .volume("emptydir/disk")
        .dir("a")
        .file("a/f", b"hello")
        .end();
    let mut bad_trailer = good.clone();
    let n = bad_trailer.len();
    bad_trailer[n - 1] = 9;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut long_name = Raw::new().volume("emptydir/disk").b.clone();
    long_name.push(b'F');
    long_name.extend_from_slice(&60000u16.to_le_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"PSNPVOL2".to_vec(), "bad magic"),
        (b"PSN".to_vec(), "not a podsnap volume archive"),
        (good[..good.len() - 20].to_vec(), "truncated"),
        (good[..good.len() - 17].to_vec(), "truncated"),
        (bad_trailer, "the end record counts"),
        (trailing, "data after the end record"),
        (long_name, "a name of 60000 bytes"),
        (
            {
                let mut b = Raw::new().volume("emptydir/disk").b.clone();
                b.extend_from_slice(b"Z\0\0");
                b
            },
            "unknown record type",
        ),
        (
            Raw::new().file("f", b"x").end(),
            "an entry before any volume",
        ),
    ];
    for (bytes, want) in cases {
        let e = unpack_hostile(&bytes);
        assert!(matches!(e, UnpackError::Corrupt { .. }), "{want}: {e:?}");
        assert!(
            e.to_string().starts_with("corrupt volume archive at byte "),
            "{e}"
        );
        assert!(e.to_string().contains(want), "want {want:?}: {e}");
    }
}

#[test]
fn a_volume_without_a_target_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("disk");
    std::fs::create_dir_all(&target).unwrap();
    let archive = t.path().join("a.psv");
    let bytes = Raw::new()
        .volume("emptydir/disk")
        .file("f", b"x")
        .volume("emptydir/cache")
        .end();
    std::fs::write(&archive, bytes).unwrap();
    let e = unpack(&archive, &targets(&[(disk(), &target)]), &Limits::default()).unwrap_err();
    assert_eq!(e.to_string(), "no target directory for emptyDir \"cache\"");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn volume_names_are_kubernetes_names_only() {
    for ok in ["disk", "cache-1", "a.b", "x_y"] {
        assert!(VolumeKey::empty_dir(ok).is_some(), "{ok}");
    }
    for bad in ["", ".", "..", "a/b", "a b", "../x", "\0"] {
        assert!(VolumeKey::empty_dir(bad).is_none(), "{bad:?}");
    }
}
