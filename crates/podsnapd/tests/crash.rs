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
    for (round, (after_job, delay_ms)) in KILL_POINTS.into_iter().enumerate() {
        let point = if after_job { "job started" } else { "call" };
        let tmp = tempfile::tempdir().unwrap();
        let (node, id, log, sb) = node_with_counter(tmp.path(), &format!("crash{round}"), 1);

        let mut daemon = spawn(&node, "d1.log");
        let mut c = client(&node.sock).await;
        let req = pb::CheckpointRequest {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::RunscId(id.clone())),
            }),
            post_checkpoint: pb::PostCheckpoint::Stop as i32,
            ..Default::default()
        };
        let call = tokio::spawn(async move {
            let mut s = c.checkpoint(req).await?.into_inner();
            while s.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        });
        if after_job {
            let target = format!("runsc container {id}");
            wait_for_job_record(&tmp.path().join("state/jobs"), "checkpoint", &target).await;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.kill9();
        let _ = call.await;

        // Restart on the same state dir; recovery runs in the background.
        let mut daemon = spawn(&node, "d2.log");
        let mut c = client(&node.sock).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = c
                .list_jobs(pb::ListJobsRequest {})
                .await
                .unwrap()
                .into_inner()
                .jobs;
            if jobs.iter().all(|j| !j.finished_at.is_empty()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "recovery did not finish: {jobs:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let snaps = c
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .snapshots;
        let state = RunscCmd::new(&node.root)
            .run(&["state", &id])
            .unwrap_or_default();
        let running = state.contains("\"running\"");
        let recovered = std::fs::read_to_string(tmp.path().join("d2.log"))
            .unwrap_or_default()
            .contains("recovering jobs");
        if recovered {
            recoveries += 1;
        }
        eprintln!("round {round}: kill {delay_ms} ms after the {point}: {} snapshot(s), sandbox running: {running}, recovery ran: {recovered}", snaps.len());
        match (snaps.len(), running) {
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
                committed_once = true;
            }
            (0, true) => {
                // Never checkpointed: the sandbox was left as it was, and the job says why.
                let n = last_count(&log).unwrap();
                wait_for_count(&log, n + 1, Duration::from_secs(10)).unwrap();
                let jobs = c.list_jobs(pb::ListJobsRequest {}).await.unwrap().into_inner().jobs;
                assert!(jobs.iter().all(|j| j.error.is_empty() || j.error.contains("restart") || j.error.contains("runsc")), "{jobs:?}");
            }
            other => panic!(
                "round {round} (kill {delay_ms} ms after the {point}): {} snapshots, sandbox running: {}; daemon logs: {} / {}",
                other.0,
                other.1,
                std::fs::read_to_string(tmp.path().join("d1.log")).unwrap_or_default(),
                std::fs::read_to_string(tmp.path().join("d2.log")).unwrap_or_default()
            ),
        }
        // Nothing is left in the work dir once recovery is done.
        wait_for_empty_work_dir(tmp.path(), round).await;
        daemon.kill9();
        drop(sb);
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
    let req = pb::CheckpointRequest {
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::RunscId(id.clone())),
        }),
        post_checkpoint: pb::PostCheckpoint::Stop as i32,
        ..Default::default()
    };
    let mut s = c.checkpoint(req).await.unwrap().into_inner();
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
    let jobs_dir = tmp.path().join("state/jobs");
    let records: Vec<serde_json::Value> = std::fs::read_dir(&jobs_dir)
        .unwrap()
        .flatten()
        .map(|e| {
            serde_json::from_slice(&std::fs::read(e.path().join("job.json")).unwrap()).unwrap()
        })
        .collect();
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
    std::fs::read_dir(jobs_dir)
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("job.json")).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
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
    let before = last_count(&log).unwrap();

    let (mut finished, mut rolled_back, mut recoveries) = (0, 0, 0);
    for (round, (after_job, delay_ms)) in KILL_POINTS.into_iter().enumerate() {
        let point = if after_job { "job started" } else { "call" };
        let new_id = unique_id(&format!("rcrash{round}"));
        let rlog = tmp.path().join(format!("restored{round}.log"));
        let mut daemon = spawn(&node, &format!("d{round}a.log"));
        let mut c = client(&node.sock).await;
        let call = {
            let (snapshot, bundle, new_id, rlog) = (
                snapshot.clone(),
                sb.bundle.path().to_path_buf(),
                new_id.clone(),
                rlog.clone(),
            );
            tokio::spawn(async move {
                common::restore(&mut c, &snapshot, &bundle, &new_id, Some(&rlog)).await
            })
        };
        if after_job {
            wait_for_job_record(&tmp.path().join("state/jobs"), "restore", &new_id).await;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.kill9();
        let _ = call.await;

        let blog = format!("d{round}b.log");
        let _daemon = spawn(&node, &blog);
        let mut c = client(&node.sock).await;
        settled_jobs(&mut c).await;
        if std::fs::read_to_string(tmp.path().join(&blog))
            .unwrap_or_default()
            .contains("recovering jobs")
        {
            recoveries += 1;
        }
        // The job's durable record (also for a restore that finished before the kill). The
        // daemon lists a job as finished only once its record on disk says so.
        let job = job_record(&tmp.path().join("state/jobs"), "restore", &new_id);
        if let Some(j) = &job {
            assert!(
                j["finished_at"].is_string(),
                "listed finished, recorded unfinished: {j}"
            );
        }
        let job_error = job
            .as_ref()
            .map(|j| j["error"].as_str().unwrap_or("").to_string());
        let running = RunscCmd::new(&node.root)
            .run(&["state", &new_id])
            .unwrap_or_default()
            .contains("\"running\"");
        eprintln!(
            "round {round}: kill {delay_ms} ms after the {point}: running {running}, job error {job_error:?}"
        );
        match (running, job_error) {
            (true, Some(e)) if e.is_empty() => {
                // Restored: the count continues from the checkpoint.
                wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
                let first = first_count(&rlog).unwrap();
                assert!(
                    first >= before && first < before + 10,
                    "round {round}: before {before}, after {first}"
                );
                finished += 1;
            }
            (false, error) => {
                // Rolled back (or never started): no container, and a retry works.
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
                common::restore(&mut c, &snapshot, sb.bundle.path(), &new_id, Some(&rlog))
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: retry after a rollback: {e:?}"));
                wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
                rolled_back += 1;
            }
            other => panic!(
                "round {round} (kill {delay_ms} ms after the {point}): running {running}, job {:?}; logs: {}",
                other.1,
                std::fs::read_to_string(tmp.path().join(&blog)).unwrap_or_default()
            ),
        }
        RunscCmd::new(&node.root).force_delete(&new_id);
        wait_for_empty_work_dir(tmp.path(), round).await;
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
