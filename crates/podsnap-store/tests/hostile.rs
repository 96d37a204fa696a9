//! Hostile and broken stores: altered manifests and indexes, corrupted and missing chunks,
//! duplicate commits, dead endpoints. Every failure must be a clear error and a failed pull
//! must leave nothing behind.

mod common;

use std::sync::Arc;

use common::*;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use podsnap_store::{NoProgress, PushOptions, SnapshotId, Store, StoreError};

struct Fixture {
    _work: tempfile::TempDir,
    store: Store,
    os: Arc<dyn ObjectStore>,
    id: SnapshotId,
    out: std::path::PathBuf,
    parent: std::path::PathBuf,
}

async fn fixture() -> Fixture {
    let os: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::from_object_store(os.clone(), "pfx", "memory://test");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_file(&src, "pages.img", &mixed_image(7, 1500));
    let r = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    let parent = work.path().join("restore");
    std::fs::create_dir(&parent).unwrap();
    Fixture {
        out: parent.join("out"),
        parent,
        _work: work,
        store,
        os,
        id: r.id,
    }
}

async fn keys(os: &Arc<dyn ObjectStore>, dir: &str) -> Vec<ObjPath> {
    os.list(Some(&ObjPath::from(format!("pfx/{dir}"))))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap()
}

fn assert_nothing_left(f: &Fixture) {
    assert!(
        !f.out.exists(),
        "destination must not exist after a failed pull"
    );
    let left: Vec<_> = std::fs::read_dir(&f.parent).unwrap().collect();
    assert!(left.is_empty(), "temp dirs left behind: {left:?}");
}

async fn rewrite_manifest(f: &Fixture, edit: impl FnOnce(&mut serde_json::Value), reseal: bool) {
    let key = ObjPath::from(format!("pfx/manifests/{}.json", f.id));
    let bytes = f.os.get(&key).await.unwrap().bytes().await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    edit(&mut v);
    if reseal {
        v.as_object_mut().unwrap().remove("digest");
        let canon = serde_json::to_vec(&v).unwrap(); // serde_json's map is sorted
        v["digest"] = sha256_hex(&canon).into();
    }
    f.os.put(&key, PutPayload::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
}

#[tokio::test]
async fn corrupted_chunk_fails_pull_naming_file_and_offset() {
    let f = fixture().await;
    let pack = keys(&f.os, "packs").await.remove(0);
    let mut data =
        f.os.get(&pack)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    f.os.put(&pack, PutPayload::from(data)).await.unwrap();
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("pages.img") && msg.contains("at offset"),
        "{msg}"
    );
    assert_nothing_left(&f);
}

#[tokio::test]
async fn missing_chunk_fails_pull_naming_file_and_offset() {
    let f = fixture().await;
    let pack = keys(&f.os, "packs").await.remove(0);
    f.os.delete(&pack).await.unwrap();
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::MissingObject { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("pages.img") && msg.contains("offset") && msg.contains("packs/"),
        "{msg}"
    );
    assert_nothing_left(&f);
}

#[tokio::test]
async fn truncated_pack_fails_pull() {
    let f = fixture().await;
    let pack = keys(&f.os, "packs").await.remove(0);
    let data = f.os.get(&pack).await.unwrap().bytes().await.unwrap();
    f.os.put(&pack, PutPayload::from(data.slice(..data.len() / 3)))
        .await
        .unwrap();
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("pages.img"), "{err}");
    assert_nothing_left(&f);
}

#[tokio::test]
async fn corrupted_index_is_refused() {
    let f = fixture().await;
    let idx = keys(&f.os, "indexes").await.remove(0);
    f.os.put(&idx, PutPayload::from_static(b"\x28\xb5\x2f\xfdgarbage"))
        .await
        .unwrap();
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidIndex { .. }), "{err}");
    assert!(err.to_string().contains("pages.img"), "{err}");
    assert_nothing_left(&f);
}

#[tokio::test]
async fn wrong_manifest_digest_is_refused() {
    let f = fixture().await;
    rewrite_manifest(&f, |v| v["labels"]["evil"] = "1".into(), false).await;
    let err = f.store.manifest(&f.id).await.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_nothing_left(&f);
}

#[tokio::test]
async fn manifest_with_dotdot_or_absolute_path_is_refused() {
    for bad in ["../../escape", "/etc/evil", "a/../../b", "a\u{0}b"] {
        let f = fixture().await;
        rewrite_manifest(&f, |v| v["files"][0]["path"] = bad.into(), true).await;
        let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidManifest { .. }),
            "{bad}: {err}"
        );
        assert_nothing_left(&f);
        assert!(!f.parent.parent().unwrap().join("escape").exists());
    }
}

#[tokio::test]
async fn absurd_sizes_are_refused() {
    let f = fixture().await;
    rewrite_manifest(&f, |v| v["files"][0]["size"] = (1u64 << 45).into(), true).await;
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(err.to_string().contains("1 TiB"), "{err}");

    // Plausible but wrong size: the index disagrees.
    let f = fixture().await;
    rewrite_manifest(
        &f,
        |v| v["files"][0]["size"] = (v["files"][0]["size"].as_u64().unwrap() + 4096).into(),
        true,
    )
    .await;
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidIndex { .. }), "{err}");

    // Index declared much smaller than it is: decompression stops at the declared size.
    let f = fixture().await;
    rewrite_manifest(&f, |v| v["files"][0]["index"]["size"] = 100.into(), true).await;
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidIndex { .. }), "{err}");
    assert_nothing_left(&f);
}

#[tokio::test]
async fn unknown_major_version_is_refused() {
    let f = fixture().await;
    rewrite_manifest(&f, |v| v["format_version"] = "2.0".into(), true).await;
    let err = f.store.manifest(&f.id).await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("2.0"), "{err}");
}

#[tokio::test]
async fn oversized_manifest_is_refused_before_reading() {
    let f = fixture().await;
    let key = ObjPath::from(format!("pfx/manifests/{}.json", f.id));
    f.os.put(&key, PutPayload::from(vec![b' '; (64 << 20) + 1]))
        .await
        .unwrap();
    let err = f.store.manifest(&f.id).await.unwrap_err();
    assert!(err.to_string().contains("64 MiB"), "{err}");
}

#[tokio::test]
async fn duplicate_commit_of_a_snapshot_id_fails_cleanly() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    write_file(work.path(), "other.img", b"different content");
    let err = f
        .store
        .push(
            work.path(),
            PushOptions {
                id: Some(f.id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SnapshotExists(_)), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    // The original is untouched.
    f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap();
}

#[tokio::test]
async fn concurrent_pushes_of_one_id_commit_exactly_once() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    write_file(&a, "pages.img", &mixed_image(31, 800));
    write_file(&b, "pages.img", &mixed_image(32, 800));
    let id = SnapshotId::new("same-id").unwrap();
    let opts = PushOptions {
        id: Some(id.clone()),
        ..Default::default()
    };
    let (ra, rb) = tokio::join!(
        store.push(&a, opts.clone(), &NoProgress),
        store.push(&b, opts.clone(), &NoProgress)
    );
    let oks = [ra.is_ok(), rb.is_ok()];
    assert_eq!(oks.iter().filter(|x| **x).count(), 1, "{ra:?} {rb:?}");
    let err = match (ra, rb) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!("exactly one push failed"),
    };
    assert!(matches!(err, StoreError::SnapshotExists(_)), "{err}");
    let winner = if oks[0] { &a } else { &b };
    let out = work.path().join("out");
    store.pull(&id, &out, &NoProgress).await.unwrap();
    assert_eq!(dir_digest(&out), dir_digest(winner));
}

#[tokio::test]
async fn pull_refuses_a_non_empty_destination() {
    let f = fixture().await;
    std::fs::create_dir(&f.out).unwrap();
    std::fs::write(f.out.join("keep"), b"x").unwrap();
    let err = f.store.pull(&f.id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::DestinationNotEmpty(_)), "{err}");
    assert_eq!(std::fs::read(f.out.join("keep")).unwrap(), b"x");
}

#[tokio::test]
async fn unknown_snapshot_is_not_found() {
    let f = fixture().await;
    let id = SnapshotId::new("nope").unwrap();
    let err = f.store.pull(&id, &f.out, &NoProgress).await.unwrap_err();
    assert!(matches!(err, StoreError::SnapshotNotFound(_)), "{err}");
    assert!(matches!(
        f.store.delete(&id).await.unwrap_err(),
        StoreError::SnapshotNotFound(_)
    ));
    assert_nothing_left(&f);
}

#[tokio::test]
async fn push_refuses_symlinks_and_missing_parent() {
    let store = Store::open("memory://").unwrap();
    let work = tempfile::tempdir().unwrap();
    write_file(work.path(), "a", b"a");
    std::os::unix::fs::symlink("/etc/passwd", work.path().join("link")).unwrap();
    let err = store
        .push(work.path(), PushOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    std::fs::remove_file(work.path().join("link")).unwrap();
    let err = store
        .push(
            work.path(),
            PushOptions {
                parent: Some(SnapshotId::new("ghost").unwrap()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SnapshotNotFound(_)), "{err}");
    assert!(store.list().await.unwrap().is_empty(), "nothing committed");
}

#[tokio::test]
async fn dead_store_gives_a_clear_error() {
    // Nothing listens on this port (bound then dropped).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let os = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("b")
        .with_region("us-east-1")
        .with_access_key_id("x")
        .with_secret_access_key("super-secret-key")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_retry(object_store::RetryConfig {
            max_retries: 1,
            retry_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        })
        .build()
        .unwrap();
    let store = Store::from_object_store(Arc::new(os), "p", "s3://b/p");
    let err = store.list().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("store s3://b/p: cannot list"), "{msg}");
    assert!(!format!("{err:?}").contains("super-secret-key"));
}
