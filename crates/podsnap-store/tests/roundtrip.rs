//! Push/pull round trips on the in-process backends, and what the format promises about them:
//! zero pages are holes, identical pages are stored once, scattered changes upload little.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Mutex};

use common::*;
use podsnap_store::{
    Compression, NoProgress, OverlayMedium, Progress, ProgressEvent, PushOptions, SnapshotId, Store,
};

#[tokio::test]
async fn memory_store_passes_the_store_suite() {
    store_suite(Store::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn a_pull_without_fsync_yields_the_same_verified_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_file(&src, "pages.img", &mixed_image(7, 300));
    write_file(&src, "sub/meta.img", b"meta");
    let store = Store::open(&format!("file://{}/store", dir.path().display())).unwrap();
    let r = store
        .push(&src, Default::default(), &NoProgress)
        .await
        .unwrap();
    let out = dir.path().join("out");
    store
        .pull_with(
            &r.id,
            &out,
            &NoProgress,
            podsnap_store::PullOptions { durable: false },
        )
        .await
        .unwrap();
    assert_eq!(dir_digest(&out), dir_digest(&src));
}

/// Read blocks are 4 MiB buffers that the push reuses; a file of many blocks (more than the
/// pool keeps), each different, ending in a short block, must come back byte for byte, and
/// so must a second generation pushed against it.
#[tokio::test]
async fn a_file_of_many_reused_read_blocks_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}/store", dir.path().display())).unwrap();
    let block_pages = podsnap_store::limits::READ_BLOCK / PAGE;
    let mut img = mixed_image(21, 14 * block_pages + 3);
    img.extend_from_slice(&[0x5a; 100]);
    let gen1 = dir.path().join("gen1");
    write_file(&gen1, "pages.img", &img);
    let first = store
        .push(&gen1, Default::default(), &NoProgress)
        .await
        .unwrap();
    // One changed page in every block.
    for b in 0..15 {
        let at = (b * block_pages + 1) * PAGE;
        img[at..at + PAGE].fill(b as u8 + 1);
    }
    let gen2 = dir.path().join("gen2");
    write_file(&gen2, "pages.img", &img);
    let opts = PushOptions {
        parent: Some(first.id.clone()),
        ..Default::default()
    };
    let second = store.push(&gen2, opts, &NoProgress).await.unwrap();
    assert!(second.bytes_deduplicated > 0);
    for (id, src) in [(&first.id, &gen1), (&second.id, &gen2)] {
        let out = dir.path().join(format!("out-{id}"));
        store.pull(id, &out, &NoProgress).await.unwrap();
        assert_eq!(dir_digest(&out), dir_digest(src), "{id}");
    }
}

#[tokio::test]
async fn memory_store_passes_the_encrypted_suite() {
    encrypted_suite(Store::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn file_store_passes_the_encrypted_suite() {
    let dir = tempfile::tempdir().unwrap();
    encrypted_suite(Store::open(&format!("file://{}", dir.path().display())).unwrap()).await;
}

#[tokio::test]
async fn file_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/nested/store", dir.path().display());
    let store = Store::open(&url).unwrap();
    assert!(
        dir.path().join("nested/store").is_dir(),
        "file store directory is created"
    );
    store_suite(store).await;
}

#[tokio::test]
async fn memory_and_file_backends_pass_object_store_conformance() {
    object_store_conformance(Arc::new(object_store::memory::InMemory::new()), "conf").await;
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    object_store_conformance(Arc::new(fs), "conf").await;
}

#[tokio::test]
async fn zero_pages_are_not_stored_and_pull_back_as_holes() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut img = vec![0u8; 8 << 20];
    img[5 * PAGE] = 7; // one non-zero page in 8 MiB
    write_file(&src, "pages.img", &img);
    let r = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r.bytes_zero, (8 << 20) - PAGE as u64);
    assert!(r.bytes_uploaded < 16 << 10, "uploaded {}", r.bytes_uploaded);
    let out = work.path().join("out");
    store.pull(&r.id, &out, &NoProgress).await.unwrap();
    let md = std::fs::metadata(out.join("pages.img")).unwrap();
    assert_eq!(md.len(), 8 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "pulled file is sparse ({} blocks)",
        md.blocks()
    );
    assert_eq!(std::fs::read(out.join("pages.img")).unwrap(), img);
}

#[tokio::test]
async fn identical_pages_within_one_push_are_stored_once() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let random_page: Vec<u8> = (0..PAGE).map(|i| (i * 7919 % 251) as u8 ^ 0x5a).collect();
    let mut img = Vec::new();
    for _ in 0..512 {
        img.extend_from_slice(&random_page);
    }
    write_file(&src, "a.img", &img);
    write_file(&src, "b.img", &img);
    let r = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r.bytes_deduplicated, 2 * 512 * PAGE as u64 - PAGE as u64);
    let out = work.path().join("out");
    store.pull(&r.id, &out, &NoProgress).await.unwrap();
    assert_eq!(dir_digest(&out), dir_digest(&src));
}

#[tokio::test]
async fn scattered_page_changes_upload_a_small_fraction() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut img = mixed_image(11, 4096); // 16 MiB
    write_file(&src, "pages.img", &img);
    let first = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    scatter_changes(12, &mut img, 0.05);
    write_file(&src, "pages.img", &img);
    let second = store
        .push(
            &src,
            PushOptions {
                parent: Some(first.id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    let image = img.len() as u64;
    assert!(
        second.bytes_uploaded * 10 <= image,
        "5% scattered change uploaded {} of {image}",
        second.bytes_uploaded
    );
    // Few objects: packs of ~4 MiB, not one per page.
    assert!(
        second.objects_written <= 4,
        "objects {}",
        second.objects_written
    );
    let out = work.path().join("out");
    store.pull(&second.id, &out, &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(out.join("pages.img")).unwrap(), img);
}

#[tokio::test]
async fn pushing_unchanged_data_again_uploads_only_index_and_manifest() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_file(&src, "pages.img", &mixed_image(5, 1000));
    let first = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    let again = store
        .push(
            &src,
            PushOptions {
                parent: Some(first.id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    // The index is identical too (same blobs), so only the manifest is new.
    assert_eq!(again.objects_written, 1, "{again:?}");
    assert_eq!(again.manifest.files, first.manifest.files);
}

#[tokio::test]
async fn file_modes_and_nested_paths_survive() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_file(&src, "a/b/c.img", b"hello");
    std::fs::set_permissions(
        src.join("a/b/c.img"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let r = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(r.manifest.files[0].path, "a/b/c.img");
    assert_eq!(r.manifest.files[0].mode, 0o600);
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap(); // an existing empty destination is fine
    store.pull(&r.id, &out, &NoProgress).await.unwrap();
    assert_eq!(dir_digest(&out), dir_digest(&src));
}

#[derive(Default)]
struct Recorder(Mutex<Vec<ProgressEvent>>);
impl Progress for Recorder {
    fn event(&self, ev: ProgressEvent) {
        self.0.lock().unwrap().push(ev);
    }
}

#[tokio::test]
async fn progress_events_add_up() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_file(&src, "pages.img", &mixed_image(21, 3000));
    let rec = Recorder::default();
    let r = store
        .push(&src, PushOptions::default(), &rec)
        .await
        .unwrap();
    let evs = rec.0.lock().unwrap().clone();
    assert_eq!(
        evs[0],
        ProgressEvent::Started {
            total_bytes: 3000 * PAGE as u64
        }
    );
    let read: u64 = evs
        .iter()
        .map(|e| {
            if let ProgressEvent::BytesRead(n) = e {
                *n
            } else {
                0
            }
        })
        .sum();
    assert_eq!(read, r.bytes_read);
    let up: u64 = evs
        .iter()
        .map(|e| {
            if let ProgressEvent::BytesUploaded(n) = e {
                *n
            } else {
                0
            }
        })
        .sum();
    assert!(
        up > 0 && up < r.bytes_uploaded,
        "uploads {up} (manifest excluded) of {}",
        r.bytes_uploaded
    );
    assert!(evs.contains(&ProgressEvent::Committing));

    let rec = Recorder::default();
    let out = work.path().join("out");
    let pr = store.pull(&r.id, &out, &rec).await.unwrap();
    let written: u64 = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            if let ProgressEvent::BytesWritten(n) = e {
                *n
            } else {
                0
            }
        })
        .sum();
    assert_eq!(written, 3000 * PAGE as u64);
    assert_eq!(pr.bytes_written, written);
}

#[tokio::test]
async fn explicit_ids_labels_and_facts_are_recorded() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_file(&src, "x", b"x");
    let id = SnapshotId::new("my-snap.1").unwrap();
    let mut opts = PushOptions {
        id: Some(id.clone()),
        labels: [("k".to_string(), "v".to_string())].into(),
        group: Some("grp".into()),
        runsc_metadata: [("arch".to_string(), "amd64".to_string())].into(),
        ..Default::default()
    };
    opts.source.node_name = "node-a".into();
    opts.source.runsc_version = Some("release-20221219.0".into());
    opts.source.rootfs_overlay = Some(OverlayMedium::Memory);
    store.push(&src, opts, &NoProgress).await.unwrap();
    let m = store.manifest(&id).await.unwrap();
    assert_eq!(m.format_version, "1.0");
    assert_eq!(m.labels["k"], "v");
    assert_eq!(m.group.as_deref(), Some("grp"));
    assert_eq!(m.runsc_metadata["arch"], "amd64");
    assert_eq!(m.source.node_name, "node-a");
    assert_eq!(m.source.rootfs_overlay, Some(OverlayMedium::Memory));
    assert_eq!(m.digest.len(), 64);
}

#[tokio::test]
async fn generated_ids_sort_by_creation() {
    let a = SnapshotId::generate();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = SnapshotId::generate();
    assert!(a < b, "{a} < {b}");
}

/// Pushes `src` to `store` with `compression`; returns the bytes stored for it.
async fn push_with(
    store: &Store,
    src: &std::path::Path,
    compression: Compression,
) -> (SnapshotId, u64) {
    let opts = PushOptions {
        compression,
        ..Default::default()
    };
    let r = store.push(src, opts, &NoProgress).await.unwrap();
    (r.id, r.bytes_uploaded)
}

/// `Compression::Raw` (and `RawWhenLocal` on a file:// store) stores a compressible image's
/// pages as they are, zero pages still as holes; the pull is byte-exact, and a flipped byte
/// in a raw pack fails it (every page is still verified). On an object store `RawWhenLocal`
/// compresses.
#[tokio::test]
async fn raw_pushes_store_pages_as_they_are_and_pulls_still_verify_them() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let img = mixed_image(31, 2000);
    let nonzero = img
        .chunks(PAGE)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count()
        * PAGE;
    write_file(&src, "pages.img", &img);
    let root = work.path().join("store");
    let store = Store::open(&format!("file://{}", root.display())).unwrap();
    let (_, zstd) = push_with(&store, &src, Compression::Zstd).await;
    let (raw_id, raw) = push_with(&store, &src, Compression::Raw).await;
    let (local_id, local) = push_with(&store, &src, Compression::RawWhenLocal).await;
    assert!(
        zstd < nonzero as u64 * 3 / 4,
        "zstd stored {zstd} of {nonzero}"
    );
    for (what, n) in [("raw", raw), ("raw when local", local)] {
        assert!(
            n >= nonzero as u64,
            "{what} stored {n} bytes of {nonzero} non-zero"
        );
        assert!(n < img.len() as u64, "{what}: zero pages stay holes");
    }
    let mem = Store::open("memory://").unwrap();
    let (_, remote) = push_with(&mem, &src, Compression::RawWhenLocal).await;
    assert!(
        remote < nonzero as u64 * 3 / 4,
        "an object store compresses: {remote}"
    );

    for id in [&raw_id, &local_id] {
        let out = work.path().join(format!("out-{id}"));
        store.pull(id, &out, &NoProgress).await.unwrap();
        assert_eq!(dir_digest(&out), dir_digest(&src));
    }
    // One flipped byte in the middle of every pack: no raw pull may succeed.
    for e in walk_files(&root.join("packs")) {
        let mut b = std::fs::read(&e).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
        std::fs::write(&e, b).unwrap();
    }
    let out = work.path().join("corrupt");
    let r = store.pull(&raw_id, &out, &NoProgress).await;
    assert!(r.is_err(), "a corrupted raw pack was accepted");
    assert!(!out.exists(), "nothing appears from a failed pull");
}

fn walk_files(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
