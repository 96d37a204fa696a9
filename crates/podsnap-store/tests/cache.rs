//! The node-local page cache under real pulls: a child snapshot after its parent downloads
//! only what changed, a corrupted cache never produces a wrong pull, and a full disk under
//! the cache costs the cache, not the pull.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use podsnap_store::{NoProgress, PageCache, PushOptions, SnapshotId, Store};
use podsnap_testkit::{require, Need};
use rand::{Rng, RngCore, SeedableRng};

const IMAGE: usize = 16 << 20;

/// Pushes a random `pages.img` and a child with `percent`% of its pages rewritten, scattered.
async fn parent_and_child(store: &Store, dir: &Path, percent: usize) -> (SnapshotId, SnapshotId) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut img = vec![0u8; IMAGE];
    rng.fill_bytes(&mut img);
    let a = dir.join("a");
    write_file(&a, "pages.img", &img);
    write_file(&a, "checkpoint.img", b"small state");
    let parent = store
        .push(&a, PushOptions::default(), &NoProgress)
        .await
        .unwrap()
        .id;
    let pages = IMAGE / PAGE;
    for _ in 0..pages * percent / 100 {
        let p = rng.gen_range(0..pages);
        rng.fill_bytes(&mut img[p * PAGE..(p + 1) * PAGE]);
    }
    let b = dir.join("b");
    write_file(&b, "pages.img", &img);
    write_file(&b, "checkpoint.img", b"small state 2");
    let child = store
        .push(
            &b,
            PushOptions {
                parent: Some(parent.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap()
        .id;
    (parent, child)
}

fn same(a: &Path, b: &Path) {
    assert_eq!(
        std::fs::read(a.join("pages.img")).unwrap(),
        std::fs::read(b.join("pages.img")).unwrap()
    );
    assert_eq!(
        std::fs::read(a.join("checkpoint.img")).unwrap(),
        std::fs::read(b.join("checkpoint.img")).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_after_its_parent_downloads_what_changed_and_a_corrupted_cache_is_refetched() {
    let work = tempfile::tempdir().unwrap();
    let plain = Store::open("memory://").unwrap();
    let (parent, child) = parent_and_child(&plain, work.path(), 5).await;
    let cache = PageCache::open(&work.path().join("cache"), 1 << 30, None).unwrap();
    let store = plain.with_cache(Some(cache.clone()));

    let r1 = store
        .pull(&parent, &work.path().join("r1"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r1.bytes_from_cache, 0);
    assert!(r1.bytes_downloaded >= IMAGE as u64, "{r1:?}");
    same(&work.path().join("a"), &work.path().join("r1"));
    // Downloaded in full, on the cache's filesystem: the pulled files were linked into the
    // cache (a linked segment per file), not written a second time.
    let segs = work.path().join("cache/segments");
    let count = |ext: &str| {
        std::fs::read_dir(&segs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(ext))
            .count()
    };
    assert_eq!((count(".dat"), count(".seg")), (2, 0));
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let pulled = ino(&work.path().join("r1/pages.img"));
    assert!(
        std::fs::read_dir(&segs)
            .unwrap()
            .flatten()
            .any(|e| ino(&e.path()) == pulled),
        "pages.img is not linked into the cache"
    );
    // The restore is done with its image: the cache keeps the pages, not the name.
    std::fs::remove_dir_all(work.path().join("r1")).unwrap();

    let r2 = store
        .pull(&child, &work.path().join("r2"), &NoProgress)
        .await
        .unwrap();
    same(&work.path().join("b"), &work.path().join("r2"));
    let fraction = r2.bytes_downloaded as f64 / IMAGE as f64;
    eprintln!(
        "child after parent: downloaded {} of {IMAGE} bytes ({:.1}%), {} from the cache",
        r2.bytes_downloaded,
        fraction * 100.0,
        r2.bytes_from_cache
    );
    assert!(
        fraction <= 0.10,
        "downloaded {:.1}% of the child",
        fraction * 100.0
    );
    assert!(r2.bytes_from_cache >= (IMAGE as u64) * 85 / 100, "{r2:?}");
    let hits = cache.stats().hits;
    assert!(hits > 0);
    // The child's files were linked too, under their index digests (the pages it
    // downloaded are served from its pages.img; nothing was copied into segments).
    assert_eq!((count(".dat"), count(".seg")), (4, 0));
    // Restoring the child again on this node links the copy its first restore left.
    let again = store
        .pull(&child, &work.path().join("r2b"), &NoProgress)
        .await
        .unwrap();
    assert!(again.bytes_downloaded < (IMAGE as u64) / 100, "{again:?}");
    assert_eq!(
        ino(&work.path().join("r2b/pages.img")),
        ino(&work.path().join("r2/pages.img"))
    );
    same(&work.path().join("b"), &work.path().join("r2b"));

    // Corrupt every segment's data: the next pull is still exact, downloads instead.
    for e in std::fs::read_dir(work.path().join("cache/segments"))
        .unwrap()
        .flatten()
    {
        let mut b = std::fs::read(e.path()).unwrap();
        let n = b.len();
        b[n - 1] ^= 0x55;
        std::fs::write(e.path(), &b).unwrap();
    }
    let r3 = store
        .pull(&child, &work.path().join("r3"), &NoProgress)
        .await
        .unwrap();
    same(&work.path().join("b"), &work.path().join("r3"));
    assert!(cache.stats().corrupt > 0, "{:?}", cache.stats());
    assert!(r3.bytes_downloaded > r2.bytes_downloaded, "{r3:?}");

    // Without the cache the child costs everything (the cache is what made the difference).
    let r4 = plain
        .pull(&child, &work.path().join("r4"), &NoProgress)
        .await
        .unwrap();
    assert!(r4.bytes_downloaded >= IMAGE as u64, "{r4:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fills_the_cache_so_the_restore_downloads_nothing_but_metadata() {
    let work = tempfile::tempdir().unwrap();
    let plain = Store::open("memory://").unwrap();
    let (parent, child) = parent_and_child(&plain, work.path(), 5).await;
    let cache = PageCache::open(&work.path().join("cache"), 1 << 30, None).unwrap();
    let store = plain.with_cache(Some(cache.clone()));
    let p1 = store.prefetch(&parent, &NoProgress).await.unwrap();
    assert_eq!(p1.bytes_cached, 0);
    assert!(p1.bytes_fetched >= IMAGE as u64, "{p1:?}");
    let p2 = store.prefetch(&child, &NoProgress).await.unwrap();
    assert!(p2.bytes_cached >= (IMAGE as u64) * 90 / 100, "{p2:?}");
    assert!(p2.bytes_fetched <= (IMAGE as u64) * 6 / 100, "{p2:?}");
    let r = store
        .pull(&child, &work.path().join("r"), &NoProgress)
        .await
        .unwrap();
    same(&work.path().join("b"), &work.path().join("r"));
    // Only the indexes: no pack bytes.
    assert!(r.bytes_downloaded < (IMAGE as u64) / 100, "{r:?}");
    // A store without a cache refuses to prefetch.
    assert!(plain.prefetch(&child, &NoProgress).await.is_err());
}

/// Unmounts on drop (also when the test fails).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_cache_costs_the_cache_not_the_pull() {
    if !require(
        "a_full_disk_under_the_cache_costs_the_cache_not_the_pull",
        &[Need::Root],
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let plain = Store::open("memory://").unwrap();
    let (parent, _) = parent_and_child(&plain, work.path(), 5).await;
    let mnt = work.path().join("cache");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let _m = Mounted(mnt.clone());
    // The bound says 1 GiB; the filesystem holds 6 MiB (about one segment of 4 MiB).
    let cache = PageCache::open(&mnt, 1 << 30, None).unwrap();
    let store = plain.with_cache(Some(cache.clone()));
    let r = store
        .pull(&parent, &work.path().join("r"), &NoProgress)
        .await
        .unwrap();
    same(&work.path().join("a"), &work.path().join("r"));
    let s = cache.stats();
    assert!(s.write_failures > 0, "{s:?}");
    assert!(r.bytes_downloaded >= IMAGE as u64);
    // What did fit is still served, verified.
    let r2 = store
        .pull(&parent, &work.path().join("r2"), &NoProgress)
        .await
        .unwrap();
    same(&work.path().join("a"), &work.path().join("r2"));
    // (Whether any segment fit depends on how the concurrent writes raced for the space.)
    if cache.stats().segments > 0 {
        assert!(r2.bytes_from_cache > 0, "{r2:?}");
    }
    // No temp files were left on the full filesystem.
    let tmp: Vec<_> = std::fs::read_dir(mnt.join("segments"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_is_linked_into_the_cache_so_restoring_it_here_downloads_no_pages() {
    let work = tempfile::tempdir().unwrap();
    let cache = PageCache::open(&work.path().join("cache"), 1 << 30, None).unwrap();
    let store = Store::open("memory://")
        .unwrap()
        .with_cache(Some(cache.clone()));
    let (parent, child) = parent_and_child(&store, work.path(), 5).await;
    let segs = work.path().join("cache/segments");
    let linked = || {
        std::fs::read_dir(&segs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
            .count()
    };
    // Every pushed file is linked, under its index digest (the child's pages.img too,
    // although 95% of its pages were cached already).
    assert_eq!(linked(), 4);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let pushed = ino(&work.path().join("a/pages.img"));
    assert!(std::fs::read_dir(&segs)
        .unwrap()
        .flatten()
        .any(|e| ino(&e.path()) == pushed));

    // The checkpoint's work dir goes; restoring the parent on this node takes every page
    // from the cache (only the indexes come from the store).
    let img = std::fs::read(work.path().join("a/pages.img")).unwrap();
    std::fs::remove_dir_all(work.path().join("a")).unwrap();
    let r = store
        .pull(&parent, &work.path().join("r"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(std::fs::read(work.path().join("r/pages.img")).unwrap(), img);
    assert!(r.bytes_downloaded < (IMAGE as u64) / 100, "{r:?}");
    assert!(r.bytes_from_cache >= IMAGE as u64, "{r:?}");
    // The cache held the whole file: after verifying it, the pull linked it, wrote nothing.
    let restored = ino(&work.path().join("r/pages.img"));
    assert_eq!(
        restored, pushed,
        "the restored pages.img is the cached copy, linked"
    );

    // A cached copy that no longer matches (one byte changed) is never linked: the pull
    // is still exact.
    let dat = std::fs::read_dir(&segs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| ino(p) == pushed)
        .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[img[12345] ^ 1], 12345).unwrap();
    let r3 = store
        .pull(&parent, &work.path().join("r3"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("r3/pages.img")).unwrap(),
        img
    );
    assert_ne!(ino(&work.path().join("r3/pages.img")), pushed);
    assert!(r3.bytes_downloaded > 0, "{r3:?}");
    // The child downloads what changed.
    let r2 = store
        .pull(&child, &work.path().join("r2"), &NoProgress)
        .await
        .unwrap();
    same(&work.path().join("b"), &work.path().join("r2"));
    assert!(r2.bytes_downloaded <= (IMAGE as u64) / 10, "{r2:?}");
}
