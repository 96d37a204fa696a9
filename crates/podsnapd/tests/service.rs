//! The daemon's gRPC service over a runtime double (FakeRuntime) and a real in-memory or
//! file store, server and client in one process over a Unix socket. These test the layer
//! above the runtime trait; the real runsc path is in `tests/node.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use podsnap_proto::v1 as pb;
use podsnap_runtime::testing::{FakeCall, FakeRuntime};
use podsnap_runtime::{
    CheckpointOpts, RestoreRequest, Restored, RuntimeError, RuntimeInfo, Sandbox, SandboxRuntime,
    SandboxState, Target,
};
use podsnap_store::{NoProgress, PushOptions};
use podsnap_testkit::metrics::Exposition;

mod common;
use common::harness::*;

/// Counts concurrent checkpoints per container and overall, delaying each one.
struct Tracking {
    inner: FakeRuntime,
    delay: Duration,
    active: Mutex<HashMap<String, usize>>,
    max_same: AtomicUsize,
    total_active: AtomicUsize,
    max_total: AtomicUsize,
}

impl Tracking {
    fn new(inner: FakeRuntime, delay: Duration) -> Self {
        Tracking {
            inner,
            delay,
            active: Mutex::new(HashMap::new()),
            max_same: AtomicUsize::new(0),
            total_active: AtomicUsize::new(0),
            max_total: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl SandboxRuntime for Tracking {
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError> {
        self.inner.info().await
    }
    async fn resolve(&self, target: &Target) -> Result<Sandbox, RuntimeError> {
        self.inner.resolve(target).await
    }
    async fn checkpoint(
        &self,
        sb: &Sandbox,
        dir: &Path,
        opts: &CheckpointOpts,
    ) -> Result<(), RuntimeError> {
        {
            let mut a = self.active.lock().unwrap();
            let n = a.entry(sb.container_id.clone()).or_default();
            *n += 1;
            self.max_same.fetch_max(*n, Ordering::SeqCst);
        }
        let t = self.total_active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_total.fetch_max(t, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let r = self.inner.checkpoint(sb, dir, opts).await;
        self.total_active.fetch_sub(1, Ordering::SeqCst);
        *self
            .active
            .lock()
            .unwrap()
            .get_mut(&sb.container_id)
            .unwrap() -= 1;
        r
    }
    async fn restore(&self, req: &RestoreRequest) -> Result<Restored, RuntimeError> {
        self.inner.restore(req).await
    }
    async fn state(&self, root: Option<&Path>, id: &str) -> Result<SandboxState, RuntimeError> {
        self.inner.state(root, id).await
    }
    async fn delete(&self, root: Option<&Path>, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.inner.delete(root, id, force).await
    }
}

#[tokio::test]
async fn checkpoint_streams_phases_then_the_committed_snapshot() {
    let fake = FakeRuntime::new();
    fake.add_running("app1");
    let mut h = harness(Arc::new(fake), memory_store()).await;
    let (progress, snap) = run_checkpoint(
        &mut h.client,
        checkpoint_req("app1", &[("app", "web")], &["app"], 0, true),
    )
    .await;
    let snap = snap.expect("checkpoint succeeds");
    let phases: Vec<i32> = progress.iter().map(|p| p.phase).collect();
    for want in [
        pb::Phase::Checkpointing,
        pb::Phase::Uploading,
        pb::Phase::Done,
    ] {
        assert!(
            phases.contains(&(want as i32)),
            "phase {want:?} missing from {phases:?}"
        );
    }
    assert_eq!(snap.group, "app=web");
    assert_eq!(snap.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(snap.source.as_ref().unwrap().node_name, "node-a");
    assert!(snap
        .source
        .as_ref()
        .unwrap()
        .cpu
        .as_ref()
        .unwrap()
        .features
        .contains(&"fpu".to_string()));
    assert!(snap.files.iter().any(|f| f.name == "checkpoint.img"));
    // The store, not the daemon, holds it.
    let m = h
        .store
        .manifest(&podsnap_store::SnapshotId::new(&snap.id).unwrap())
        .await
        .unwrap();
    assert_eq!(m.group.as_deref(), Some("app=web"));
    // The work dir goes once committed (in the background, after the answer).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let work: Vec<_> = std::fs::read_dir(h.state_dir.join("work"))
            .unwrap()
            .collect();
        if work.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "work dir not cleaned: {work:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn resume_restores_the_sandbox_in_place_on_runsc_20221219() {
    let fake = Arc::new(FakeRuntime::new());
    fake.add_running("app2");
    let rt: Arc<dyn SandboxRuntime> = fake.clone();
    let mut h = harness(rt, memory_store()).await;
    let (_, snap) = run_checkpoint(&mut h.client, checkpoint_req("app2", &[], &[], 0, false)).await;
    snap.expect("checkpoint succeeds");
    let calls = fake.calls();
    let ck = calls
        .iter()
        .position(|c| {
            matches!(
                c,
                FakeCall::Checkpoint {
                    leave_running: false,
                    ..
                }
            )
        })
        .expect("checkpoint call");
    let rs = calls
        .iter()
        .position(|c| matches!(c, FakeCall::Restore { id, .. } if id == "app2"))
        .expect("in-place restore under the same id");
    assert!(ck < rs, "{calls:?}");
}

#[tokio::test]
async fn retention_keeps_exactly_n_per_group() {
    let fake = FakeRuntime::new();
    fake.add_running("r1");
    fake.add_running("r2");
    let mut h = harness(Arc::new(fake), memory_store()).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (_, s) = run_checkpoint(
            &mut h.client,
            checkpoint_req("r1", &[("team", "a")], &["team"], 2, false),
        )
        .await;
        ids.push(s.unwrap().id);
    }
    // Another group is untouched by group a's retention.
    let (_, other) = run_checkpoint(
        &mut h.client,
        checkpoint_req("r2", &[("team", "b")], &["team"], 2, false),
    )
    .await;
    let other = other.unwrap();
    let list = h
        .client
        .list_snapshots(pb::ListSnapshotsRequest {
            group: "team=a".into(),
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    let kept: Vec<_> = list.iter().map(|s| s.id.clone()).collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.contains(&ids[3]) && kept.contains(&ids[2]),
        "newest two kept: {kept:?} of {ids:?}"
    );
    let all = h
        .client
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert!(all.iter().any(|s| s.id == other.id));
    assert_eq!(all.len(), 3);
    // Later snapshots of the group deduplicate against the previous one.
    let last = h
        .client
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: ids[3].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.parent, ids[2]);
}

#[tokio::test]
async fn concurrent_checkpoints_serialize_per_sandbox_and_run_in_parallel_across_sandboxes() {
    let fake = FakeRuntime::new();
    fake.add_running("s1");
    fake.add_running("s2");
    let rt = Arc::new(Tracking::new(fake, Duration::from_millis(300)));
    let dynrt: Arc<dyn SandboxRuntime> = rt.clone();
    let h = harness(dynrt, memory_store()).await;
    let mut tasks = Vec::new();
    for id in ["s1", "s1", "s2"] {
        let mut c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            run_checkpoint(&mut c, checkpoint_req(id, &[], &[], 0, true))
                .await
                .1
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every checkpoint succeeds");
    }
    assert_eq!(
        rt.max_same.load(Ordering::SeqCst),
        1,
        "one sandbox was checkpointed twice at once"
    );
    assert_eq!(
        rt.max_total.load(Ordering::SeqCst),
        2,
        "two sandboxes did not run in parallel"
    );
}

/// The prepare-restore job of `target` is listed as failed, for `snapshot`, naming `reason`.
async fn assert_failed_prepare_job(
    c: &mut podsnap_proto::v1::podsnap_client::PodsnapClient<tonic::transport::Channel>,
    target: &str,
    snapshot: &str,
    reason: &str,
) {
    let jobs = c
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let job = jobs
        .iter()
        .find(|j| j.kind == "prepare-restore" && j.target == target)
        .expect("the refused prepare is a job");
    assert_eq!(job.phase, pb::Phase::Failed as i32, "{job:?}");
    assert!(job.error.contains(reason), "{job:?}");
    assert_eq!(job.snapshot_id, snapshot);
}

#[tokio::test]
async fn restore_of_a_snapshot_needing_missing_cpu_features_fails_before_any_chunk_is_fetched() {
    // A snapshot recorded on a CPU with a feature this host lacks.
    let host = podsnap_cpu::host().unwrap();
    let lacking = podsnap_cpu::features::FEATURES
        .iter()
        .map(|f| f.name)
        .find(|n| !host.has_feature(n))
        .expect("some gVisor feature is absent here");
    let mut cpu = host.clone();
    cpu.features.push(lacking.to_string());
    cpu.features.sort();
    let store = memory_store();
    let img = tempfile::tempdir().unwrap();
    std::fs::write(img.path().join("checkpoint.img"), vec![7u8; 64 << 10]).unwrap();
    let report = store
        .push(
            img.path(),
            PushOptions {
                source: podsnap_store::NodeFacts {
                    node_name: "other".into(),
                    cpu: Some(cpu),
                    ..Default::default()
                },
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    let fake = Arc::new(FakeRuntime::new());
    let rt: Arc<dyn SandboxRuntime> = fake.clone();
    let mut h = harness(rt, store).await;
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("config.json"), "{}").unwrap();

    let compat = h
        .client
        .check_compatibility(pb::CheckCompatibilityRequest {
            snapshot_id: report.id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!compat.compatible);
    assert_eq!(compat.missing_features, vec![lacking.to_string()]);

    let err = h
        .client
        .prepare_restore(pb::PrepareRestoreRequest {
            snapshot_id: report.id.to_string(),
            container_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(lacking), "{}", err.message());
    // The refusal is also a failed prepare-restore job, which the controller reads.
    assert_failed_prepare_job(&mut h.client, "x", report.id.as_str(), lacking).await;

    let err = common::restore(
        &mut h.client,
        report.id.as_str(),
        bundle.path(),
        "restored1",
        None,
    )
    .await
    .expect_err("restore of an incompatible snapshot succeeded");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(lacking), "{}", err.message());
    // Nothing was downloaded, and runsc was never asked to restore.
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, FakeCall::Restore { .. })));
    let m = Exposition::parse(&h.engine.metrics().encode());
    let downloaded = ("direction".to_string(), "downloaded".to_string());
    for family in m.family_names() {
        assert!(
            !m.label_sets(family).iter().any(|s| s.contains(&downloaded)),
            "bytes were downloaded ({family}):\n{}",
            m.text()
        );
    }
    assert_eq!(
        m.counter(
            "podsnap_compatibility_refusals",
            &[("reason", "cpu_features")]
        ),
        Some(2.0),
        "{}",
        m.text()
    );
}

#[tokio::test]
async fn errors_map_to_grpc_codes_with_one_clear_line() {
    let fake = FakeRuntime::new();
    let mut h = harness(Arc::new(fake), memory_store()).await;
    let (_, r) = run_checkpoint(&mut h.client, checkpoint_req("nope", &[], &[], 0, true)).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(!e.message().contains('\n'));

    let e = h
        .client
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: "20990101T000000Z-00000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = h
        .client
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: "../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let (_, r) = run_checkpoint(
        &mut h.client,
        checkpoint_req("x", &[("bad key", "v")], &[], 0, true),
    )
    .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
    let (_, r) = run_checkpoint(
        &mut h.client,
        checkpoint_req("x", &[("a", "b")], &["missing"], 0, true),
    )
    .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn node_info_and_jobs_report_this_node() {
    let fake = FakeRuntime::new();
    fake.add_running("j1");
    let mut h = harness(Arc::new(fake), memory_store()).await;
    let (_, r) = run_checkpoint(&mut h.client, checkpoint_req("j1", &[], &[], 0, true)).await;
    let snap = r.unwrap();
    let info = h
        .client
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_name, "node-a");
    assert_eq!(
        info.cpu.unwrap().features,
        podsnap_cpu::host().unwrap().features
    );
    assert!(info.runsc.is_some());
    // The checkpoint linked its image into the page cache: the snapshot's pages are here.
    assert_eq!(info.cached_snapshots, std::slice::from_ref(&snap.id));
    let jobs = h
        .client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let j = jobs
        .iter()
        .find(|j| j.snapshot_id == snap.id)
        .expect("the job is listed");
    assert_eq!(j.kind, "checkpoint");
    assert_eq!(j.phase, pb::Phase::Done as i32);
    assert!(!j.finished_at.is_empty());
}

#[tokio::test]
async fn the_unix_socket_is_created_0660_and_a_live_socket_is_not_stolen() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let _l = podsnapd::server::bind_unix(&sock, 0o660, None).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let err = podsnapd::server::bind_unix(&sock, 0o660, None).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

/// After a restart, a call for a sandbox whose job the killed daemon left unfinished waits
/// until that job has been finished or rolled back: the rollback of an interrupted restore
/// must not run after (and delete the container of) a newer restore of the same id.
#[tokio::test]
async fn a_new_call_waits_for_the_recovery_of_its_sandboxs_interrupted_job() {
    let fake = Arc::new(FakeRuntime::new());
    let rt: Arc<dyn SandboxRuntime> = fake.clone();
    let h = harness(rt, memory_store()).await;
    // The record a daemon killed during a restore of "again" leaves (runsc never started).
    let earlier = podsnapd::jobs::Jobs::new(h.state_dir.join("jobs")).unwrap();
    let interrupted = earlier
        .start(
            podsnapd::jobs::JobSpec::Restore(podsnapd::jobs::RestoreJob {
                bundle: "/bundles/again".into(),
                container_id: "again".into(),
                lazy: false,
            }),
            "again".into(),
            Some("20990101T000000Z-00000000".into()),
        )
        .unwrap();
    let pending = h.engine.adopt_unfinished().await;
    assert_eq!(pending.len(), 1);

    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("config.json"), "{}").unwrap();
    let mut c = h.client.clone();
    let bundle_path = bundle.path().to_path_buf();
    let call = tokio::spawn(async move {
        common::restore(
            &mut c,
            "20990101T000000Z-00000001",
            &bundle_path,
            "again",
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !call.is_finished(),
        "a restore of \"again\" ran before its interrupted restore was recovered"
    );

    h.engine.clone().recover(pending).await;
    let res = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the new restore goes on once the recovery is done")
        .unwrap();
    // It reached the store only now (the snapshot does not exist).
    assert_eq!(res.unwrap_err().code(), tonic::Code::NotFound);
    let rec = h
        .engine
        .jobs()
        .list()
        .into_iter()
        .find(|j| j.id == interrupted.id)
        .unwrap();
    assert!(rec.finished_at.is_some(), "{rec:?}");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("retry"),
        "{rec:?}"
    );
}

/// A checkpoint that the earlier release's daemon left between `runsc checkpoint` and the
/// resume (its record, as that release wrote it, is a fixture) is carried to the end by this
/// one: runsc is not run again, the sandbox is resumed, the snapshot is committed with the
/// recorded labels and group.
#[tokio::test]
async fn a_checkpoint_left_by_the_earlier_release_is_finished_from_its_record() {
    let fake = Arc::new(FakeRuntime::new());
    let sb = fake.add_running("app1");
    let rt: Arc<dyn SandboxRuntime> = fake.clone();
    let h = harness(rt, memory_store()).await;
    let text = include_str!("fixtures/jobs/checkpoint-resuming.json");
    let rec: serde_json::Value = serde_json::from_str(text).unwrap();
    let job_id = rec["id"].as_str().unwrap();
    let job_dir = h.state_dir.join("jobs").join(job_id);
    std::fs::create_dir_all(&job_dir).unwrap();
    std::fs::write(job_dir.join("job.json"), text).unwrap();
    // The image runsc wrote before the daemon went away.
    fake.checkpoint(
        &sb,
        &h.state_dir.join("work").join(job_id).join("image"),
        &CheckpointOpts::default(),
    )
    .await
    .unwrap();
    let calls_before = fake.calls().len();

    let pending = h.engine.adopt_unfinished().await;
    assert_eq!(pending.len(), 1);
    h.engine.clone().recover(pending).await;

    let done = h
        .engine
        .jobs()
        .list()
        .into_iter()
        .find(|j| j.id == job_id)
        .unwrap();
    assert_eq!(done.error, None, "{done:?}");
    assert_eq!(done.phase, podsnapd::jobs::Phase::Done);
    let calls = &fake.calls()[calls_before..];
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, FakeCall::Checkpoint { .. })),
        "runsc checkpoint ran again: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, FakeCall::Restore { id, .. } if id == "app1")),
        "the sandbox was not resumed: {calls:?}"
    );
    let snapshot = podsnap_store::SnapshotId::new(done.snapshot_id.as_deref().unwrap()).unwrap();
    let m = h.store.manifest(&snapshot).await.unwrap();
    assert_eq!(m.group.as_deref(), Some("app=web"));
    assert_eq!(m.labels.get("app").map(String::as_str), Some("web"));
    // The record on disk says done, in the layout the earlier release reads.
    let disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(disk["phase"], "done");
    assert_eq!(disk["kind"], "checkpoint");
    assert_eq!(disk["details"]["resumed"], true);
    assert_eq!(disk["details"]["sandbox"], rec["details"]["sandbox"]);
}

/// A runtime whose stopped sandbox takes a while to exit: `settle_stopped` waits (up to 5 s)
/// until the store holds a snapshot, noting whether one appeared meanwhile.
struct SlowExit {
    inner: FakeRuntime,
    store: podsnap_store::Store,
    deferred: std::sync::atomic::AtomicBool,
    committed_while_exiting: std::sync::atomic::AtomicBool,
    settled: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl SandboxRuntime for SlowExit {
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError> {
        self.inner.info().await
    }
    async fn resolve(&self, target: &Target) -> Result<Sandbox, RuntimeError> {
        self.inner.resolve(target).await
    }
    async fn checkpoint(
        &self,
        sb: &Sandbox,
        dir: &Path,
        opts: &CheckpointOpts,
    ) -> Result<(), RuntimeError> {
        self.deferred.store(opts.defer_settle, Ordering::SeqCst);
        self.inner.checkpoint(sb, dir, opts).await
    }
    async fn settle_stopped(&self, _sb: &Sandbox) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if !self.store.list().await.unwrap().is_empty() {
                self.committed_while_exiting.store(true, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.settled.store(true, Ordering::SeqCst);
    }
    async fn restore(&self, req: &RestoreRequest) -> Result<Restored, RuntimeError> {
        self.inner.restore(req).await
    }
    async fn state(&self, root: Option<&Path>, id: &str) -> Result<SandboxState, RuntimeError> {
        self.inner.state(root, id).await
    }
    async fn delete(&self, root: Option<&Path>, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.inner.delete(root, id, force).await
    }
}

#[tokio::test]
async fn a_stopping_checkpoint_uploads_while_the_sandbox_exits_and_answers_once_it_has() {
    let fake = FakeRuntime::new();
    fake.add_running("app1");
    let store = memory_store();
    let rt = Arc::new(SlowExit {
        inner: fake,
        store: store.clone(),
        deferred: Default::default(),
        committed_while_exiting: Default::default(),
        settled: Default::default(),
    });
    let mut h = harness(rt.clone(), store).await;
    let (_, snap) = run_checkpoint(&mut h.client, checkpoint_req("app1", &[], &[], 0, true)).await;
    snap.expect("checkpoint succeeds");
    assert!(
        rt.deferred.load(Ordering::SeqCst),
        "the runtime was asked to leave the settling to the daemon"
    );
    assert!(
        rt.committed_while_exiting.load(Ordering::SeqCst),
        "the snapshot was committed while the sandbox was still exiting"
    );
    assert!(
        rt.settled.load(Ordering::SeqCst),
        "the answer came only after runsc's record was settled"
    );
}

/// Writes a checkpoint record (the earlier release's fixture, edited by `edit`) as a killed
/// daemon would have left it; returns its job id and job dir.
fn leave_checkpoint_record(
    h: &Harness,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (String, std::path::PathBuf) {
    let mut rec: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/jobs/checkpoint-checkpointing.json")).unwrap();
    edit(&mut rec);
    let job_id = rec["id"].as_str().unwrap().to_string();
    let job_dir = h.state_dir.join("jobs").join(&job_id);
    std::fs::create_dir_all(&job_dir).unwrap();
    std::fs::write(job_dir.join("job.json"), serde_json::to_vec(&rec).unwrap()).unwrap();
    (job_id, job_dir)
}

/// Recovers every unfinished job and returns the record of `job_id`.
async fn recover_job(h: &Harness, job_id: &str) -> podsnapd::jobs::JobRecord {
    let pending = h.engine.adopt_unfinished().await;
    assert_eq!(pending.len(), 1);
    h.engine.clone().recover(pending).await;
    h.engine
        .jobs()
        .list()
        .into_iter()
        .find(|j| j.id == job_id)
        .unwrap()
}

/// A daemon killed while its `runsc checkpoint` ran (stage `resolved`): the runsc it started
/// finished on its own, so the restarted daemon takes its outcome through the runtime
/// (`await_earlier`) instead of checkpointing again, resumes in place and commits.
#[tokio::test]
async fn a_checkpoint_whose_runsc_outlived_the_daemon_goes_on_from_that_runsc() {
    let fake = Arc::new(FakeRuntime::new());
    let sb = fake.add_running("app1");
    let rt: Arc<dyn SandboxRuntime> = fake.clone();
    let h = harness(rt, memory_store()).await;
    let (job_id, job_dir) = leave_checkpoint_record(&h, |_| {});
    // What that runsc wrote, and its durable job's outcome.
    let image = h.state_dir.join("work").join(&job_id).join("image");
    fake.checkpoint(&sb, &image, &CheckpointOpts::default())
        .await
        .unwrap();
    fake.add_earlier(&job_dir.join("runsc-checkpoint"), Ok(()));
    let calls_before = fake.calls().len();

    let done = recover_job(&h, &job_id).await;
    assert_eq!(done.error, None, "{done:?}");
    let calls = &fake.calls()[calls_before..];
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, FakeCall::Checkpoint { .. })),
        "runsc checkpoint ran again: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, FakeCall::Restore { id, .. } if id == "app1")),
        "the sandbox was not resumed in place: {calls:?}"
    );
    let snapshot = podsnap_store::SnapshotId::new(done.snapshot_id.as_deref().unwrap()).unwrap();
    h.store.manifest(&snapshot).await.unwrap();
    let disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(disk["details"]["stage"], "committed");
    assert_eq!(disk["phase"], "done");
}

/// A daemon killed after it recorded the commit: the restarted one neither runs runsc nor
/// pushes again; the job finishes with the committed snapshot.
#[tokio::test]
async fn a_committed_checkpoint_is_only_finished_after_a_restart() {
    let fake = Arc::new(FakeRuntime::new());
    fake.add_running("app1");
    let rt: Arc<dyn SandboxRuntime> = fake.clone();
    let mut h = harness(rt, memory_store()).await;
    let (_, committed) = run_checkpoint(
        &mut h.client,
        checkpoint_req("app1", &[("app", "web")], &["app"], 0, true),
    )
    .await;
    let committed = committed.expect("checkpoint succeeds").id;
    let (job_id, _) = leave_checkpoint_record(&h, |rec| {
        rec["id"] = "01a23b1bc799-00000001".into();
        rec["snapshot_id"] = committed.clone().into();
        rec["details"]["checkpointed"] = true.into();
        rec["details"]["resumed"] = true.into();
        rec["details"]["stage"] = "committed".into();
    });
    let snapshots_before = h.store.list().await.unwrap().len();
    let calls_before = fake.calls().len();

    let done = recover_job(&h, &job_id).await;
    assert_eq!(done.error, None, "{done:?}");
    assert_eq!(done.snapshot_id.as_deref(), Some(committed.as_str()));
    let calls = &fake.calls()[calls_before..];
    assert!(
        calls
            .iter()
            .all(|c| matches!(c, FakeCall::Info | FakeCall::State(..))),
        "the runtime was asked to act: {calls:?}"
    );
    assert_eq!(h.store.list().await.unwrap().len(), snapshots_before);
}
