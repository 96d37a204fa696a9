//! Crash safety with real runsc: podsnapd is SIGKILLed at several points of a checkpoint and
//! restarted on the same state dir. Whatever the point, the outcome is one of two: the
//! snapshot is committed (and restores with the counter continuing), or the sandbox was never
//! checkpointed and still runs. Never a stopped sandbox without a snapshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
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

/// A podsnapd process, SIGKILLed when dropped (also when a test panics).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        kill9(&mut self.0);
    }
}

fn spawn(node: &Node, log_name: &str) -> Daemon {
    let log = std::fs::File::create(node.dir.join(log_name)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_podsnapd"))
        .arg(format!("--listen=unix://{}", node.sock.display()))
        .arg(format!("--store={}", node.store))
        .arg(format!("--runsc-root={}", node.root.display()))
        .arg(format!("--state-dir={}", node.dir.join("state").display()))
        .arg("--runsc-flag=--network=none")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("podsnapd starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&node.sock).is_err() {
        assert!(Instant::now() < deadline, "podsnapd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

async fn client(sock: &Path) -> PodsnapClient<Channel> {
    podsnapd::client::connect_unix(sock).await.unwrap()
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
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
    for (round, delay_ms) in [0u64, 120, 250, 400, 700].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let node = Node {
            dir: tmp.path().to_path_buf(),
            sock: tmp.path().join("d.sock"),
            root: tmp.path().join("root"),
            store: format!("file://{}", tmp.path().join("store").display()),
        };
        std::fs::create_dir_all(&node.root).unwrap();
        let id = unique_id(&format!("crash{round}"));
        let log = tmp.path().join("counter.log");
        let sb = CounterSandbox::start(&node.root, &id, &log, &[]).expect("counter starts");
        wait_for_count(&log, 1, Duration::from_secs(30)).unwrap();

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
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        kill9(&mut daemon.0);
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
        eprintln!("round {round}: kill after {delay_ms} ms: {} snapshot(s), sandbox running: {running}, recovery ran: {recovered}", snaps.len());
        match (snaps.len(), running) {
            (1, false) => {
                // Committed: it restores, continuing the count.
                let before = last_count(&log).unwrap();
                let new_id = unique_id(&format!("crash{round}r"));
                let rlog = tmp.path().join("restored.log");
                let mut s = c
                    .restore(pb::RestoreRequest {
                        snapshot_id: snaps[0].id.clone(),
                        bundle: sb.bundle.path().display().to_string(),
                        container_id: new_id.clone(),
                        log_path: rlog.display().to_string(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                while s.message().await.expect("restore after recovery").is_some() {}
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
                "round {round} (kill after {delay_ms} ms): {} snapshots, sandbox running: {}; daemon logs: {} / {}",
                other.0,
                other.1,
                std::fs::read_to_string(tmp.path().join("d1.log")).unwrap_or_default(),
                std::fs::read_to_string(tmp.path().join("d2.log")).unwrap_or_default()
            ),
        }
        // Nothing is left in the work dir once recovery is done (a restore's dir goes in
        // the background, just after its answer).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let work: Vec<_> = std::fs::read_dir(tmp.path().join("state/work"))
                .map(|r| r.flatten().collect())
                .unwrap_or_default();
            if work.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: work dir not cleaned: {work:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill9(&mut daemon.0);
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
    let node = Node {
        dir: tmp.path().to_path_buf(),
        sock: tmp.path().join("d.sock"),
        root: tmp.path().join("root"),
        store: format!("file://{}", tmp.path().join("store").display()),
    };
    std::fs::create_dir_all(&node.root).unwrap();
    let id = unique_id("term");
    let log = tmp.path().join("counter.log");
    let sb = CounterSandbox::start(&node.root, &id, &log, &[]).expect("counter starts");
    wait_for_count(&log, 1, Duration::from_secs(30)).unwrap();
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
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = daemon.0.try_wait().unwrap() {
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
