//! Retention keeps exactly N per group; gc never deletes referenced objects nor young ones.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use podsnap_store::{NoProgress, PushOptions, SnapshotId, Store};

async fn push(store: &Store, seed: u64, group: &str, parent: Option<SnapshotId>) -> SnapshotId {
    let work = tempfile::tempdir().unwrap();
    write_file(work.path(), "pages.img", &mixed_image(seed, 300));
    store
        .push(
            work.path(),
            PushOptions {
                group: Some(group.into()),
                parent,
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap()
        .id
}

async fn count(os: &Arc<dyn ObjectStore>, dir: &str) -> usize {
    let v: Vec<_> = os
        .list(Some(&ObjPath::from(dir)))
        .try_collect()
        .await
        .unwrap();
    v.len()
}

#[tokio::test]
async fn retain_keeps_exactly_the_newest_n_of_a_group() {
    let store = Store::open("memory://").unwrap();
    let mut a = Vec::new();
    for i in 0..5 {
        a.push(push(&store, i, "a", None).await);
    }
    let b = push(&store, 100, "b", None).await;
    let deleted = store.retain("a", 2).await.unwrap();
    assert_eq!(deleted, vec![a[2].clone(), a[1].clone(), a[0].clone()]);
    let left: Vec<SnapshotId> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, vec![b.clone(), a[4].clone(), a[3].clone()]);
    assert!(store.retain("a", 2).await.unwrap().is_empty(), "idempotent");
    assert_eq!(store.retain("b", 0).await.unwrap(), vec![b]);
    assert_eq!(store.latest_in_group("a").await.unwrap().unwrap().id, a[4]);
    assert!(store.latest_in_group("b").await.unwrap().is_none());
}

#[tokio::test]
async fn gc_sweeps_only_unreferenced_objects_older_than_grace() {
    let os: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::from_object_store(os.clone(), "", "memory://");
    let first = push(&store, 1, "g", None).await;
    let second = push(&store, 2, "g", Some(first.clone())).await;
    let victim = push(&store, 3, "other", None).await;
    let packs_before = count(&os, "packs").await;
    let indexes_before = count(&os, "indexes").await;
    // An object of an in-flight push (no manifest yet).
    os.put(
        &ObjPath::from("packs/inflight"),
        PutPayload::from_static(b"x"),
    )
    .await
    .unwrap();

    // Nothing is unreferenced yet except the in-flight object, which is young.
    let r = store.gc(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(r.deleted_objects, 0);
    assert_eq!(r.kept_young, 1);
    assert_eq!(r.manifests, 3);

    store.delete(&victim).await.unwrap();
    // Young: grace protects the victim's objects and the in-flight one.
    let r = store.gc(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(r.deleted_objects, 0, "{r:?}");
    assert!(r.kept_young >= 2, "{r:?}");

    // Zero grace: the victim's objects and the stray one go; everything referenced stays.
    let r = store.gc(Duration::ZERO).await.unwrap();
    assert!(r.deleted_objects >= 3, "{r:?}");
    assert!(count(&os, "packs").await < packs_before + 1);
    assert!(count(&os, "indexes").await < indexes_before);
    let work = tempfile::tempdir().unwrap();
    for id in [&first, &second] {
        let out = work.path().join(id.as_str());
        store
            .pull(id, &out, &NoProgress)
            .await
            .expect("referenced data survives gc");
    }
    // Deleting the parent keeps the packs the child still references.
    store.delete(&first).await.unwrap();
    store.gc(Duration::ZERO).await.unwrap();
    let out = work.path().join("child-again");
    store
        .pull(&second, &out, &NoProgress)
        .await
        .expect("child survives parent's gc");
    let mut expect = mixed_image(2, 300);
    expect.truncate(300 * PAGE);
    assert_eq!(std::fs::read(out.join("pages.img")).unwrap(), expect);
}

#[tokio::test]
async fn gc_refuses_to_sweep_when_a_manifest_is_unreadable() {
    let os: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::from_object_store(os.clone(), "", "memory://");
    let id = push(&store, 1, "g", None).await;
    let key = ObjPath::from(format!("manifests/{id}.json"));
    os.put(&key, PutPayload::from_static(b"{not json"))
        .await
        .unwrap();
    let packs = count(&os, "packs").await;
    assert!(store.gc(Duration::ZERO).await.is_err());
    assert_eq!(count(&os, "packs").await, packs, "nothing swept");
    // list skips it instead of failing.
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_push_reusing_pages_of_a_pack_gc_swept_fails_and_commits_nothing() {
    let os: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::from_object_store(os.clone(), "", "memory://gc-race");
    let parent = push(&store, 7, "g", None).await;
    // A gc swept the parent's packs (say the parent was deleted meanwhile); its manifest and
    // index are still readable when the next push loads them as its dedup base.
    let packs: Vec<_> = os
        .list(Some(&ObjPath::from("packs")))
        .try_collect()
        .await
        .unwrap();
    assert!(!packs.is_empty());
    let gone = packs[0].location.clone();
    os.delete(&gone).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    write_file(work.path(), "pages.img", &mixed_image(7, 300));
    let err = store
        .push(
            work.path(),
            PushOptions {
                group: Some("g".into()),
                parent: Some(parent.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, podsnap_store::StoreError::MissingObject { .. })
            && msg.contains(gone.filename().unwrap()),
        "{msg}"
    );
    assert_eq!(
        count(&os, "manifests").await,
        1,
        "only the parent is committed"
    );
}
