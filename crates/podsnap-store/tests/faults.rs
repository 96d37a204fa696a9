//! Reliability of push and pull against a misbehaving object store: transient errors, an
//! outage, lost responses and slow responses, injected by `common::faults::Faults` under a
//! real in-memory store.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{Faults, Op};
use common::*;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use podsnap_store::{NoProgress, PushOptions, SnapshotId, Store, StoreError};
use rand::{RngCore, SeedableRng};

struct Rig {
    faults: Arc<Faults>,
    under: Arc<dyn ObjectStore>,
    store: Store,
    work: tempfile::TempDir,
}

fn rig() -> Rig {
    let under: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Faults::new(under.clone());
    let store = Store::from_object_store(faults.clone(), "pfx", "memory://faults");
    Rig {
        faults,
        under,
        store,
        work: tempfile::tempdir().unwrap(),
    }
}

/// Incompressible data: `mib` MiB are about `mib / 4` packs.
fn random_image(seed: u64, mib: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; mib << 20];
    rng.fill_bytes(&mut v);
    v
}

impl Rig {
    fn src(&self, img: &[u8]) -> std::path::PathBuf {
        let src = self.work.path().join("src");
        write_file(&src, "pages.img", img);
        write_file(&src, "checkpoint.img", &runsc_like_image(5, 20));
        src
    }

    /// Manifests that exist in the store underneath the faults.
    async fn committed(&self) -> Vec<String> {
        self.under
            .list(Some(&ObjPath::from("pfx/manifests")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    async fn pull_matches(&self, id: &SnapshotId, src: &std::path::Path, name: &str) {
        let out = self.work.path().join(name);
        self.store
            .pull(id, &out, &NoProgress)
            .await
            .expect("pull after faults");
        assert_eq!(dir_digest(&out), dir_digest(src), "byte-exact after faults");
    }
}

#[tokio::test]
async fn push_and_pull_succeed_despite_transient_errors() {
    let r = rig();
    let src = r.src(&random_image(1, 9));
    // Fewer failures per op than the policy's attempts, spread over several calls.
    r.faults.fail_next(Op::Head, 2);
    r.faults.fail_next(Op::Put, 3);
    r.faults.fail_next(Op::PutCreate, 1);
    let pushed = r
        .store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .expect("push retries transient errors");
    assert_eq!(
        r.faults.pending(Op::Put),
        0,
        "every injected put error was hit"
    );
    assert_eq!(r.faults.pending(Op::Head), 0);
    assert_eq!(r.faults.pending(Op::PutCreate), 0);
    assert_eq!(r.faults.injected(), 6);
    assert_eq!(r.committed().await.len(), 1);

    r.faults.fail_next(Op::Get, 2); // manifest and index reads
    r.faults.fail_next(Op::GetRange, 3); // blob reads
    r.pull_matches(&pushed.id, &src, "out").await;
    assert_eq!(r.faults.pending(Op::Get), 0);
    assert_eq!(r.faults.pending(Op::GetRange), 0);
    assert_eq!(r.faults.injected(), 11);
}

#[tokio::test]
async fn persistent_errors_are_not_retried_forever() {
    let r = rig();
    let src = r.src(&random_image(2, 5));
    let attempts = r.store.retry_policy().attempts;
    // Every pack upload fails, more often than any retry budget.
    r.faults.fail_next(Op::Put, 1000);
    let err = r
        .store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(
        msg.starts_with("store memory://faults: cannot write packs/"),
        "{msg}"
    );
    assert!(r.committed().await.is_empty(), "nothing committed");
    // 5 MiB are 2 packs: at most `attempts` calls each, then the push gives up.
    let puts = r.faults.calls(Op::Put);
    assert!(puts >= attempts && puts <= 2 * attempts, "{puts} puts");
}

#[tokio::test]
async fn store_that_stays_down_fails_push_quickly_and_commits_nothing() {
    let r = rig();
    let src = r.src(&mixed_image(3, 1000));
    let before = dir_digest(&src);
    r.faults.set_down(true);
    let t = Instant::now();
    let err = r
        .store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    let took = t.elapsed();
    let bound = r.store.retry_policy().max_total_backoff() + Duration::from_secs(5);
    assert!(took < bound, "push took {took:?}, bound {bound:?}");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(
        msg.contains("memory://faults") && msg.contains("manifests/"),
        "{msg}"
    );
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("store is down"), "cause kept: {chain}");
    assert_eq!(
        r.faults.calls(Op::Head),
        r.store.retry_policy().attempts,
        "exactly the policy's attempts"
    );
    assert_eq!(dir_digest(&src), before, "source untouched");
    r.faults.set_down(false);
    assert!(r.committed().await.is_empty(), "no manifest");
    assert!(r.store.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outage_mid_push_is_ridden_out() {
    let r = rig();
    let src = r.src(&random_image(4, 13));
    // Down from the second pack upload on, for less than the retry budget.
    r.faults
        .outage_after(Op::Put, 1, Some(Duration::from_millis(150)));
    let pushed = r
        .store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .expect("push survives a 150 ms outage");
    assert_eq!(r.faults.outages(), 1, "the outage happened");
    assert!(r.faults.injected() > 0, "calls failed during the outage");
    r.pull_matches(&pushed.id, &src, "out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_fails_push_clearly_and_a_retry_succeeds() {
    let r = rig();
    let src = r.src(&random_image(5, 13));
    let id = SnapshotId::new("outage-1").unwrap();
    let opts = PushOptions {
        id: Some(id.clone()),
        ..Default::default()
    };
    r.faults.outage_after(Op::Put, 1, None);
    let err = r
        .store
        .push(&src, opts.clone(), &NoProgress)
        .await
        .unwrap_err();
    r.faults.end_outage();
    assert_eq!(r.faults.outages(), 1, "the outage happened");
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("cannot write packs/"), "{err}");
    assert!(r.committed().await.is_empty(), "nothing half-committed");

    let pushed = r
        .store
        .push(&src, opts, &NoProgress)
        .await
        .expect("the same push again, store back");
    assert_eq!(pushed.id, id);
    assert_eq!(r.committed().await.len(), 1);
    r.pull_matches(&id, &src, "out").await;
}

#[tokio::test]
async fn lost_commit_response_is_checked_not_repeated_blindly() {
    let r = rig();
    let src = r.src(&mixed_image(6, 600));
    r.faults.lose_create_responses(1);
    let pushed = r
        .store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .expect("a lost response to our own commit is success");
    assert_eq!(r.faults.injected(), 1, "the response was lost");
    assert_eq!(
        r.faults.calls(Op::PutCreate),
        2,
        "one retry, answered by AlreadyExists"
    );
    assert_eq!(r.committed().await.len(), 1, "committed once");
    let stored = r.store.manifest(&pushed.id).await.unwrap();
    assert_eq!(
        stored.digest, pushed.manifest.digest,
        "the committed manifest is ours"
    );
    r.pull_matches(&pushed.id, &src, "out").await;
}

#[tokio::test]
async fn lost_commit_response_without_retries_is_an_error_and_the_snapshot_exists() {
    // Without retries the caller cannot know: it gets the commit error, and the manifest is
    // there (documented in docs/reliability.md; check with `manifest` before pushing again).
    let r = rig();
    let store = r.store.with_retry(podsnap_store::RetryPolicy::none());
    let src = r.src(&mixed_image(7, 300));
    r.faults.lose_create_responses(1);
    let id = SnapshotId::new("lost-1").unwrap();
    let err = store
        .push(
            &src,
            PushOptions {
                id: Some(id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot commit manifests/lost-1.json"),
        "{err}"
    );
    assert_eq!(r.faults.calls(Op::PutCreate), 1);
    assert!(store.manifest(&id).await.is_ok(), "the commit did land");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_works_and_requests_overlap() {
    let r = rig();
    let src = r.src(&random_image(8, 24));
    r.faults.set_latency(Duration::from_millis(150));
    let pushed = r
        .store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .expect("slow push");
    let push_peak = r.faults.max_in_flight();
    assert!(
        push_peak > 1,
        "pack uploads overlap: peak {push_peak} in flight"
    );
    assert!(pushed.objects_written >= 6, "{}", pushed.objects_written);
    r.pull_matches(&pushed.id, &src, "out").await;
    assert!(r.faults.calls(Op::GetRange) >= 6);
    assert_eq!(r.faults.injected(), 0);
}
