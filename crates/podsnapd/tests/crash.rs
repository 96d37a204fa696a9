//! Crash safety with real runsc: podsnapd is SIGKILLed at several points of a checkpoint or a
//! restore and restarted on the same state dir. Whatever the point, a checkpoint ends one of
//! two ways: the snapshot is committed (and restores with the counter continuing), or the
//! sandbox was never checkpointed and still runs; never a stopped sandbox without a snapshot.
//! A restore ends restored (running, the count continuing, the job done) or rolled back (no
//! container, the job failed asking for a retry, and the retry works).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_testkit::daemon::{Podsnapd, PodsnapdCmd};
use podsnap_testkit::runsc::{
    first_count, last_count, unique_id, wait_for_count, CounterSandbox, RunscCmd,
};
use podsnap_testkit::{require, Need};
use tonic::transport::Channel;

struct Node {
    dir: PathBuf,
    sock: PathBuf,
    root: PathBuf,
    store: String,
}

/// A node in `dir` (socket, runsc root, file store) running a counter sandbox whose id starts
/// with `prefix`, once it has counted to `count`.
fn node_with_counter(
    dir: &Path,
    prefix: &str,
    count: u64,
) -> (Node, String, PathBuf, CounterSandbox) {
    let node = Node {
        dir: dir.to_path_buf(),
        sock: dir.join("d.sock"),
        root: dir.join("root"),
        store: format!("file://{}", dir.join("store").display()),
    };
    std::fs::create_dir_all(&node.root).unwrap();
    let id = unique_id(prefix);
    let log = dir.join("counter.log");
    let sb = CounterSandbox::start(&node.root, &id, &log, &[]).expect("counter starts");
    wait_for_count(&log, count, Duration::from_secs(30)).unwrap();
    (node, id, log, sb)
}

/// Waits (up to 10 s) until the node's work dir is empty: a finished job's dir is removed in
/// the background just after its answer.
async fn wait_for_empty_work_dir(dir: &Path, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let work: Vec<_> = std::fs::read_dir(dir.join("state/work"))
            .map(|r| r.flatten().collect())
            .unwrap_or_default();
        if work.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: work dir not cleaned: {work:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(node: &Node, log_name: &str) -> Podsnapd {
    PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), &node.dir, "d")
        .sock(&node.sock)
        .runsc_root(&node.root)
        .state_dir(node.dir.join("state"))
        .log(node.dir.join(log_name))
        .store(&node.store)
        .spawn()
}

async fn client(sock: &Path) -> PodsnapClient<Channel> {
    podsnap_proto::client::podsnapd(sock).await.unwrap()
}

/// Where the daemon is killed: (after its job record appeared, else after the call was
/// sent; then this many milliseconds later). A small sandbox's checkpoint or restore takes a
/// few hundred milliseconds, so the points are taken from the job's start.
const KILL_POINTS: [(bool, u64); 7] = [
    (false, 0),
    (true, 0),
    (true, 30),
    (true, 80),
    (true, 150),
    (true, 300),
    (true, 600),
];

/// Waits (up to 10 s) until the job of `kind` on `target` has a record under `jobs_dir`.
async fn wait_for_job_record(jobs_dir: &Path, kind: &str, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while job_record(jobs_dir, kind, target).is_none() {
        assert!(
            Instant::now() < deadline,
            "no record of the {kind} job on {target} appeared"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether runsc under `root` reports container `id` running.
fn running(root: &Path, id: &str) -> bool {
    RunscCmd::new(root)
        .run(&["state", id])
        .unwrap_or_default()
        .contains("\"running\"")
}

/// Whether the daemon that logged to `log` recovered unfinished jobs at its start.
fn recovery_ran(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("recovering jobs")
}

/// A checkpoint that stops the sandbox `id`.
fn stop_checkpoint(id: &str) -> pb::CheckpointRequest {
    pb::CheckpointRequest {
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::RunscId(id.into())),
        }),
        post_checkpoint: pb::PostCheckpoint::Stop as i32,
        ..Default::default()
    }
}

/// Starts a call on a fresh daemon, kills the daemon (SIGKILL) at the kill point
/// `(after_job, delay_ms)`, and waits for the call to end (it fails, or finished first).
async fn kill_during<F, T>(
    node: &Node,
    log_name: &str,
    (after_job, delay_ms): (bool, u64),
    job: (&str, &str),
    call: impl FnOnce(PodsnapClient<Channel>) -> F,
) where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut daemon = spawn(node, log_name);
    let call = tokio::spawn(call(client(&node.sock).await));
    if after_job {
        let (kind, target) = job;
        wait_for_job_record(&node.dir.join("state/jobs"), kind, target).await;
    }
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    daemon.kill9();
    let _ = call.await;
}

/// What one kill of a checkpoint left, once the restarted daemon recovered.
struct CheckpointRound {
    committed: bool,
    recovered: bool,
}

/// One round of the checkpoint crash test: a fresh node, its daemon killed at `point`
/// mid-checkpoint and restarted; the snapshot is committed and restores the count, or the
/// sandbox still runs; nothing is left in the work dir.
async fn checkpoint_round(round: usize, point: (bool, u64)) -> CheckpointRound {
    let (after_job, delay_ms) = point;
    let point_name = if after_job { "job started" } else { "call" };
    let tmp = tempfile::tempdir().unwrap();
    let (node, id, log, sb) = node_with_counter(tmp.path(), &format!("crash{round}"), 1);
    let target = format!("runsc container {id}");
    let req = stop_checkpoint(&id);
    kill_during(
        &node,
        "d1.log",
        point,
        ("checkpoint", &target),
        |mut c| async move {
            let mut s = c.checkpoint(req).await?.into_inner();
            while s.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        },
    )
    .await;

    // Restart on the same state dir; recovery runs in the background.
    let mut daemon = spawn(&node, "d2.log");
    let mut c = client(&node.sock).await;
    settled_jobs(&mut c).await;
    let snaps = c
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    let running = running(&node.root, &id);
    let recovered = recovery_ran(&tmp.path().join("d2.log"));
    eprintln!("round {round}: kill {delay_ms} ms after the {point_name}: {} snapshot(s), sandbox running: {running}, recovery ran: {recovered}", snaps.len());
    let committed = match (snaps.len(), running) {
        (1, false) => {
            // Committed: it restores, continuing the count.
            let before = last_count(&log).unwrap();
            let new_id = unique_id(&format!("crash{round}r"));
            let rlog = tmp.path().join("restored.log");
            common::restore(&mut c, &snaps[0].id, sb.bundle.path(), &new_id, Some(&rlog))
                .await
                .expect("restore after recovery");
            wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
            let first = first_count(&rlog).unwrap();
            RunscCmd::new(&node.root).force_delete(&new_id);
            assert!(first >= before && first < before + 10, "round {round}: before {before}, after {first}");
            true
        }
        (0, true) => {
            // Never checkpointed: the sandbox was left as it was, and the job says why.
            let n = last_count(&log).unwrap();
            wait_for_count(&log, n + 1, Duration::from_secs(10)).unwrap();
            let jobs = c.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner().jobs;
            assert!(jobs.iter().all(|j| j.error.is_empty() || j.error.contains("restart") || j.error.contains("runsc")), "{jobs:?}");
            false
        }
        other => panic!(
            "round {round} (kill {delay_ms} ms after the {point_name}): {} snapshots, sandbox running: {}; daemon logs: {} / {}",
            other.0,
            other.1,
            std::fs::read_to_string(tmp.path().join("d1.log")).unwrap_or_default(),
            std::fs::read_to_string(tmp.path().join("d2.log")).unwrap_or_default()
        ),
    };
    // Nothing is left in the work dir once recovery is done.
    wait_for_empty_work_dir(tmp.path(), round).await;
    daemon.kill9();
    drop(sb);
    CheckpointRound {
        committed,
        recovered,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_checkpoint_finishes_or_leaves_the_sandbox_untouched() {
    if !require(
        "a_daemon_killed_mid_checkpoint_finishes_or_leaves_the_sandbox_untouched",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let mut committed_once = false;
    let mut recoveries = 0;
    for (round, point) in KILL_POINTS.into_iter().enumerate() {
        let r = checkpoint_round(round, point).await;
        committed_once |= r.committed;
        recoveries += r.recovered as usize;
    }
    assert!(
        committed_once,
        "no round got far enough to commit; the kill points are too early"
    );
    assert!(
        recoveries > 0,
        "no round killed the daemon with a job in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_checkpoint_finish_before_the_daemon_exits() {
    if !require(
        "sigterm_lets_a_running_checkpoint_finish_before_the_daemon_exits",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (node, id, _log, sb) = node_with_counter(tmp.path(), "term", 1);
    let mut daemon = spawn(&node, "d1.log");
    let mut c = client(&node.sock).await;
    let mut s = c
        .checkpoint(stop_checkpoint(&id))
        .await
        .unwrap()
        .into_inner();
    // The job has started once the first progress event arrives.
    let first = s.message().await.unwrap();
    assert!(first.is_some());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = daemon.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "podsnapd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "podsnapd exited with {status}");
    // The job finished before the exit: its record says done and the snapshot is committed.
    let records = common::job_records(&tmp.path().join("state/jobs"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["phase"], "done", "{records:?}");
    let manifests = std::fs::read_dir(tmp.path().join("store/manifests"))
        .unwrap()
        .count();
    assert_eq!(manifests, 1);
    drop(sb);
}

/// The on-disk record of the job of `kind` on `target`, if one was written.
fn job_record(jobs_dir: &Path, kind: &str, target: &str) -> Option<serde_json::Value> {
    common::job_records(jobs_dir)
        .into_iter()
        .find(|j| j["kind"] == kind && j["target"] == target)
}

/// Waits until every job the daemon knows of has finished.
async fn settled_jobs(c: &mut PodsnapClient<Channel>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = c
            .list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs;
        if jobs.iter().all(|j| !j.finished_at.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "jobs did not finish: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How one round of the restore crash test ended.
#[derive(Debug, PartialEq, Eq)]
enum RestoreEnd {
    /// Restored after the restart: the count continues from the checkpoint.
    Finished,
    /// Rolled back (or never started): no container, and a retry worked.
    RolledBack,
}

/// The restore crash test's node, with its one snapshot of a counter at `before`.
struct RestoreFixture<'a> {
    node: &'a Node,
    snapshot: &'a str,
    bundle: &'a Path,
    before: u64,
}

impl RestoreFixture<'_> {
    /// One round: a restore as `rcrash<round>`, its daemon killed at `point` and restarted;
    /// returns how it ended and whether the restart recovered a job.
    async fn round(&self, round: usize, point: (bool, u64)) -> (RestoreEnd, bool) {
        let (after_job, delay_ms) = point;
        let point_name = if after_job { "job started" } else { "call" };
        let node = self.node;
        let new_id = unique_id(&format!("rcrash{round}"));
        let rlog = node.dir.join(format!("restored{round}.log"));
        let (snapshot, bundle, id, log) = (
            self.snapshot.to_string(),
            self.bundle.to_path_buf(),
            new_id.clone(),
            rlog.clone(),
        );
        kill_during(node, &format!("d{round}a.log"), point, ("restore", &new_id), |mut c| async move {
            common::restore(&mut c, &snapshot, &bundle, &id, Some(&log)).await
        })
        .await;

        let blog = format!("d{round}b.log");
        let _daemon = spawn(node, &blog);
        let mut c = client(&node.sock).await;
        settled_jobs(&mut c).await;
        let recovered = recovery_ran(&node.dir.join(&blog));
        let job_error = self.recorded_error(&new_id);
        let running = running(&node.root, &new_id);
        eprintln!(
            "round {round}: kill {delay_ms} ms after the {point_name}: running {running}, job error {job_error:?}"
        );
        let end = match (running, job_error) {
            (true, Some(e)) if e.is_empty() => {
                self.assert_count_continues(&rlog, round);
                RestoreEnd::Finished
            }
            (false, error) => {
                if let Some(e) = error {
                    assert!(
                        e.contains("retry") || e.contains("runsc"),
                        "round {round}: {e:?}"
                    );
                }
                assert!(
                    RunscCmd::new(&node.root).run(&["state", &new_id]).is_err(),
                    "round {round}: a container record was left behind"
                );
                common::restore(&mut c, self.snapshot, self.bundle, &new_id, Some(&rlog))
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: retry after a rollback: {e:?}"));
                wait_for_count(&rlog, self.before + 1, Duration::from_secs(30)).unwrap();
                RestoreEnd::RolledBack
            }
            other => panic!(
                "round {round} (kill {delay_ms} ms after the {point_name}): running {running}, job {:?}; logs: {}",
                other.1,
                std::fs::read_to_string(node.dir.join(&blog)).unwrap_or_default()
            ),
        };
        RunscCmd::new(&node.root).force_delete(&new_id);
        wait_for_empty_work_dir(&node.dir, round).await;
        (end, recovered)
    }

    /// The error in the restore job's durable record (empty: it succeeded), `None` without a
    /// record. The record exists also for a restore that finished before the kill, and the
    /// daemon lists a job as finished only once its record on disk says so.
    fn recorded_error(&self, container: &str) -> Option<String> {
        let job = job_record(&self.node.dir.join("state/jobs"), "restore", container);
        if let Some(j) = &job {
            assert!(
                j["finished_at"].is_string(),
                "listed finished, recorded unfinished: {j}"
            );
        }
        job.map(|j| j["error"].as_str().unwrap_or("").to_string())
    }

    /// The restored counter, logging to `rlog`, continues from the checkpoint's count.
    fn assert_count_continues(&self, rlog: &Path, round: usize) {
        let before = self.before;
        wait_for_count(rlog, before + 1, Duration::from_secs(30)).unwrap();
        let first = first_count(rlog).unwrap();
        assert!(
            first >= before && first < before + 10,
            "round {round}: before {before}, after {first}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_restore_finishes_it_or_rolls_it_back() {
    if !require(
        "a_daemon_killed_mid_restore_finishes_it_or_rolls_it_back",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (node, id, log, sb) = node_with_counter(tmp.path(), "rsrc", 2);
    let snapshot = {
        let _daemon = spawn(&node, "d0.log");
        let mut c = client(&node.sock).await;
        common::harness::run_checkpoint(
            &mut c,
            common::harness::checkpoint_req(&id, &[], &[], 0, true),
        )
        .await
        .1
        .expect("a snapshot")
        .id
    };
    let fixture = RestoreFixture {
        node: &node,
        snapshot: &snapshot,
        bundle: sb.bundle.path(),
        before: last_count(&log).unwrap(),
    };
    let (mut finished, mut rolled_back, mut recoveries) = (0, 0, 0);
    for (round, point) in KILL_POINTS.into_iter().enumerate() {
        let (end, recovered) = fixture.round(round, point).await;
        match end {
            RestoreEnd::Finished => finished += 1,
            RestoreEnd::RolledBack => rolled_back += 1,
        }
        recoveries += recovered as usize;
    }
    eprintln!(
        "restored after restart: {finished}, rolled back: {rolled_back}, recoveries: {recoveries}"
    );
    assert!(
        recoveries > 0,
        "no round killed the daemon with a restore in flight"
    );
    drop(sb);
}
