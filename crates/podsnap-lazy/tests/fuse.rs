//! The image through the kernel: mounted with mount(2), read with plain file reads.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use podsnap_lazy::{fuse_available, LazyMount, Registry};
use podsnap_store::{NoProgress, PushOptions, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_image_reads_back_the_snapshot_byte_for_byte() {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("needs root (mount(2) of a FUSE filesystem)".to_string())
    } else {
        fuse_available().err()
    };
    if !podsnap_testkit::require_that("a_mounted_image_reads_back_the_snapshot", missing) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    std::fs::create_dir_all(&img).unwrap();
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        if (i / 4096) % 3 != 0 {
            *b = rand::random();
        }
    }
    std::fs::write(img.join("pages.img"), &data).unwrap();
    std::fs::write(img.join("checkpoint.img"), b"header and kernel state").unwrap();
    let store = Store::from_object_store(
        Arc::new(object_store::memory::InMemory::new()),
        "",
        "memory://",
    );
    let id = store
        .push(
            &img,
            PushOptions {
                labels: BTreeMap::new(),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap()
        .id;
    let registry = Registry::new(store, tmp.path().join("lazy"));
    let lease = registry.acquire(&id).await.unwrap();
    let point = tmp.path().join("mnt");
    let mut mount = LazyMount::mount(lease, &point, tokio::runtime::Handle::current())
        .await
        .unwrap();
    let p = point.clone();
    let want = data.clone();
    tokio::task::spawn_blocking(move || {
        let mut names: Vec<String> = std::fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["checkpoint.img", "pages.img"]);
        assert_eq!(
            std::fs::read(p.join("checkpoint.img")).unwrap(),
            b"header and kernel state"
        );
        // Positioned reads from the end backwards, as runsc's page loader may.
        let f = std::fs::File::open(p.join("pages.img")).unwrap();
        assert_eq!(f.metadata().unwrap().len(), want.len() as u64);
        let mut buf = vec![0u8; 256 << 10];
        for k in (0..want.len() / buf.len()).rev() {
            let off = k * buf.len();
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert!(buf == want[off..off + buf.len()], "at {off}");
        }
        assert!(
            std::fs::write(p.join("pages.img"), b"x").is_err(),
            "read-only"
        );
    })
    .await
    .unwrap();
    mount.unmount().unwrap();
    assert!(std::fs::read_dir(&point).unwrap().next().is_none());
}
