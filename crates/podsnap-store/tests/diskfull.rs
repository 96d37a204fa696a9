//! A pull into a filesystem that fills up: a clear error naming the destination, nothing left.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use podsnap_store::{NoProgress, PushOptions, Store, StoreError};
use podsnap_testkit::{require, Need};
use rand::{RngCore, SeedableRng};

/// Unmounts on drop (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount tmpfs at {}", dir.display());
    Mounted(dir.to_path_buf())
}

#[tokio::test]
async fn pull_into_a_full_filesystem_fails_naming_the_destination_and_leaves_nothing() {
    if !require(
        "pull_into_a_full_filesystem_fails_naming_the_destination_and_leaves_nothing",
        &[Need::Root],
    ) {
        return;
    }
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut img = vec![0u8; 6 << 20];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut img);
    write_file(&src, "pages.img", &img);
    let id = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap()
        .id;

    let mnt = work.path().join("mnt");
    let _m = mount_tmpfs(&mnt, "2m");
    let dest = mnt.join("restore");
    let err = store.pull(&id, &dest, &NoProgress).await.unwrap_err();
    let StoreError::Io { path, source, .. } = &err else {
        panic!("expected a local I/O error, got {err}")
    };
    assert_eq!(source.raw_os_error(), Some(28), "ENOSPC expected: {source}");
    assert!(
        path.starts_with(&dest),
        "error names the destination: {err}"
    );
    assert!(
        err.to_string().contains(&dest.display().to_string()),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing left on the full filesystem: {left:?}"
    );

    // The same pull into a filesystem with room succeeds (the failure was the disk).
    let roomy = work.path().join("roomy");
    let _r = mount_tmpfs(&roomy, "16m");
    store
        .pull(&id, &roomy.join("restore"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(dir_digest(&roomy.join("restore")), dir_digest(&src));
}
