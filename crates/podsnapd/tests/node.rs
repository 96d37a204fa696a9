//! The node-level story with real components: the podsnapd binary over its Unix socket, real
//! runsc sandboxes, and a real S3 server (moto) shared by two daemons acting as two nodes.
//! Gated by `podsnap_testkit::require` (root, runsc, moto); `make test` requires them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::Daemon;
use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_testkit::daemon::PodsnapdCmd;
use podsnap_testkit::metrics::Exposition;
use podsnap_testkit::runsc::{
    first_count, last_count, unique_id, wait_for_count, Bundle, CounterSandbox, Release, RunscCmd,
    COUNTER_SCRIPT,
};
use podsnap_testkit::{require, Need};
use tonic::transport::Channel;

/// A controller's trace context, sent with every checkpoint.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A podsnapd (`name`, on `store`) with its metrics on a free local port, `env` in its
/// environment and `args` on its command line.
fn node(
    dir: &Path,
    name: &str,
    store: &str,
    env: &[(&'static str, String)],
    args: &[String],
) -> Daemon {
    let mut cmd = PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), dir, name).store(store);
    for a in args {
        cmd = cmd.arg(a.clone());
    }
    for (k, v) in env {
        cmd = cmd.env(*k, v);
    }
    Daemon::spawn(cmd)
}

async fn checkpoint(
    c: &mut PodsnapClient<Channel>,
    id: &str,
    stop: bool,
    labels: &[(&str, &str)],
    group_by: &[&str],
) -> pb::Snapshot {
    let mut req = tonic::Request::new(common::harness::checkpoint_req(
        id, labels, group_by, 0, stop,
    ));
    req.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    common::checkpoint(c, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_counter_resumes_on_a_second_node_sharing_an_s3_store() {
    if !require(
        "a_stopped_counter_resumes_on_a_second_node_sharing_an_s3_store",
        &[Need::Root, Need::Runsc, Need::Moto],
    ) {
        return;
    }
    let moto = podsnap_testkit::moto::Moto::start("podsnap-e2e").expect("moto starts");
    let dir = tempfile::tempdir().unwrap();
    let store = "s3://podsnap-e2e/snapshots";
    let a = node(dir.path(), "node-a", store, &moto.env(), &[]);
    // Node B pulls the whole image before runsc restores (the metrics below count that
    // path's phases); where runsc has --background the default is a lazy restore, which
    // crates/podsnapd/tests/lazy.rs covers.
    let b = node(
        dir.path(),
        "node-b",
        store,
        &moto.env(),
        &["--lazy-restore=never".to_string()],
    );

    let id = unique_id("e2e-counter");
    let log = dir.path().join("counter.log");
    let sb = CounterSandbox::start(&a.root, &id, &log, &[]).expect("counter starts");
    wait_for_count(&log, 3, Duration::from_secs(30)).unwrap();

    let mut ca = a.client().await;
    let snap = checkpoint(&mut ca, &id, true, &[("app", "counter")], &["app"]).await;
    let before = last_count(&log).unwrap();
    assert_eq!(snap.group, "app=counter");
    assert_eq!(snap.source.as_ref().unwrap().node_name, "node-a");
    assert!(
        !snap.runsc_metadata.is_empty(),
        "runsc's image header metadata is recorded"
    );

    // Stopped: the count does not move while it is down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        last_count(&log),
        Some(before),
        "the sandbox kept running after a --stop checkpoint"
    );

    // Node B sees it through the shared store and restores it.
    let mut cb = b.client().await;
    assert_listed_and_compatible(&mut cb, &snap).await;
    let new_id = unique_id("e2e-restored");
    let rlog = dir.path().join("restored.log");
    let r = common::restore(&mut cb, &snap.id, sb.bundle.path(), &new_id, Some(&rlog))
        .await
        .expect("restore succeeds");
    assert_eq!(r.container_id, new_id);
    wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
    let after = first_count(&rlog).unwrap();
    RunscCmd::new(&b.root).force_delete(&new_id);
    assert!(
        after >= before && after < before + 5,
        "before {before}, first count after restore {after}"
    );

    // Metrics moved by the right amounts on each node.
    assert_one_checkpoint_counted(&a.metrics(), &snap);
    assert_one_restore_counted(&b.metrics());
    // The caller's trace continues into the node: the commit is logged under its trace id.
    let alog = std::fs::read_to_string(dir.path().join("node-a.log")).unwrap();
    assert!(
        alog.lines()
            .any(|l| l.contains("snapshot committed")
                && l.contains("4bf92f3577b34da6a3ce929d0e0e4736")),
        "{alog}"
    );
    drop(sb);
}

/// The labels of a successful checkpoint in `podsnap_operations`.
const CHECKPOINTED: [(&str, &str); 3] = [
    ("operation", "checkpoint"),
    ("outcome", "success"),
    ("error_kind", ""),
];

/// A node that shares the store lists `snap` in its group, and may restore it.
async fn assert_listed_and_compatible(c: &mut PodsnapClient<Channel>, snap: &pb::Snapshot) {
    let listed = c
        .list_snapshots(pb::ListSnapshotsRequest {
            group: snap.group.clone(),
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert!(
        listed.iter().any(|s| s.id == snap.id),
        "node B does not list {}",
        snap.id
    );
    let compat = c
        .check_compatibility(pb::CheckCompatibilityRequest {
            snapshot_id: snap.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(compat.compatible, "{:?}", compat.problems);
}

/// Node A's metrics after its one checkpoint, `snap`: the operation, its duration and phases,
/// the bytes it read and the objects it wrote.
fn assert_one_checkpoint_counted(ma: &Exposition, snap: &pb::Snapshot) {
    assert_eq!(
        ma.counter("podsnap_operations", &CHECKPOINTED),
        Some(1.0),
        "{}",
        ma.text()
    );
    assert_eq!(
        ma.label_sets("podsnap_operations").len(),
        1,
        "only the one checkpoint ran on node A:\n{}",
        ma.text()
    );
    assert_eq!(
        ma.histogram_count(
            "podsnap_operation_duration_seconds",
            &[("operation", "checkpoint")]
        ),
        Some(1),
        "{}",
        ma.text()
    );
    assert!(
        ma.counter("podsnap_bytes", &[("direction", "read")])
            .unwrap_or_else(|| panic!("no bytes read:\n{}", ma.text()))
            >= snap.logical_bytes as f64,
        "{}",
        ma.text()
    );
    for phase in ["runsc_checkpoint", "upload"] {
        assert_eq!(
            ma.histogram_count(
                "podsnap_phase_duration_seconds",
                &[("operation", "checkpoint"), ("phase", phase)]
            ),
            Some(1),
            "{phase}:\n{}",
            ma.text()
        );
    }
    // On a release that writes pages.img front to back, the upload followed runsc's write,
    // and the part of it left after runsc is timed on its own.
    let overlapped = !podsnap_testkit::runsc::Release::System.is_limited();
    assert_eq!(
        ma.histogram_count(
            "podsnap_phase_duration_seconds",
            &[("operation", "checkpoint"), ("phase", "upload_after_runsc")]
        ),
        overlapped.then_some(1),
        "{}",
        ma.text()
    );
    assert!(
        ma.counter("podsnap_objects_written", &[]).unwrap_or(0.0) >= 1.0,
        "{}",
        ma.text()
    );
}

/// Node B's metrics after its one (eager) restore: the operation and its phases, bytes
/// downloaded through timed store reads, and no checkpoint.
fn assert_one_restore_counted(mb: &Exposition) {
    assert_eq!(
        mb.counter(
            "podsnap_operations",
            &[
                ("operation", "restore"),
                ("outcome", "success"),
                ("error_kind", "")
            ]
        ),
        Some(1.0),
        "{}",
        mb.text()
    );
    assert_eq!(
        mb.counter("podsnap_operations", &CHECKPOINTED),
        None,
        "node B checkpointed nothing:\n{}",
        mb.text()
    );
    for phase in ["download", "runsc_restore"] {
        assert_eq!(
            mb.histogram_count(
                "podsnap_phase_duration_seconds",
                &[("operation", "restore"), ("phase", phase)]
            ),
            Some(1),
            "{phase}:\n{}",
            mb.text()
        );
    }
    assert!(
        mb.counter("podsnap_bytes", &[("direction", "downloaded")])
            .unwrap_or(0.0)
            > 0.0,
        "{}",
        mb.text()
    );
    let store_reads = ["get_range", "get"]
        .iter()
        .filter_map(|m| {
            mb.histogram_count("podsnap_store_request_duration_seconds", &[("method", m)])
        })
        .sum::<u64>();
    assert!(store_reads > 0, "{}", mb.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_with_resume_keeps_the_sandbox_running_and_restores_under_another_id() {
    if !require(
        "checkpoint_with_resume_keeps_the_sandbox_running_and_restores_under_another_id",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let a = node(dir.path(), "node-r", &store, &[], &[]);
    let id = unique_id("e2e-resume");
    let log = dir.path().join("counter.log");
    let sb = CounterSandbox::start(&a.root, &id, &log, &[]).expect("counter starts");
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();

    let mut c = a.client().await;
    let snap = checkpoint(&mut c, &id, false, &[], &[]).await;
    let at_checkpoint = last_count(&log).unwrap();
    // Still running under the same id; on runsc 20221219 it was restored in place, writing
    // to the daemon's log for it.
    let state = RunscCmd::new(&a.root)
        .run(&["state", &id])
        .expect("runsc state");
    assert!(state.contains("\"running\""), "{state}");
    // On later releases --leave-running keeps the same sandbox writing to its own log.
    let resumed_log = if podsnap_testkit::runsc::Release::System.is_limited() {
        a.state.join("logs").join(format!("{id}.log"))
    } else {
        log.clone()
    };
    let n = wait_for_count(&resumed_log, at_checkpoint + 2, Duration::from_secs(30)).unwrap();
    assert!(n >= at_checkpoint + 2);

    // And the snapshot restores under another id, from the checkpointed count.
    let other = unique_id("e2e-second");
    let rlog = dir.path().join("second.log");
    common::restore(&mut c, &snap.id, sb.bundle.path(), &other, Some(&rlog))
        .await
        .expect("restore succeeds");
    wait_for_count(&rlog, at_checkpoint + 1, Duration::from_secs(30)).unwrap();
    let first = first_count(&rlog).unwrap();
    RunscCmd::new(&a.root).force_delete(&other);
    assert!(
        first >= at_checkpoint && first < at_checkpoint + 5,
        "checkpointed at {at_checkpoint}, restored copy started at {first}"
    );
    // A restore under an id that exists is refused.
    let err = common::restore(&mut c, &snap.id, sb.bundle.path(), &id, None)
        .await
        .expect_err("restore over a live container id succeeded");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    drop(sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_snapshot_restores_only_on_a_node_holding_its_group_key() {
    if !require(
        "an_encrypted_snapshot_restores_only_on_a_node_holding_its_group_key",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    // A Secret-like key directory: the group's key, named as `podsnapctl keygen` names it.
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let group = "app=vault";
    std::fs::write(
        keys.join(podsnap_store::Keyring::file_name(group)),
        format!("{}\n", "5a".repeat(32)),
    )
    .unwrap();
    let with_key = [("PODSNAPD_KEY_DIR", keys.display().to_string())];
    let a = node(dir.path(), "node-ka", &store, &with_key, &[]);
    let b = node(dir.path(), "node-kb", &store, &with_key, &[]);
    let c = node(dir.path(), "node-kc", &store, &[], &[]);

    let id = unique_id("e2e-sealed");
    let log = dir.path().join("counter.log");
    let sb = CounterSandbox::start(&a.root, &id, &log, &[]).expect("counter starts");
    wait_for_count(&log, 3, Duration::from_secs(30)).unwrap();
    let snap = checkpoint(
        &mut a.client().await,
        &id,
        true,
        &[("app", "vault")],
        &["app"],
    )
    .await;
    let before = last_count(&log).unwrap();
    assert_eq!(snap.group, group);

    // The stored manifest names the key; no node needs the key to list it.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store_dir.join(format!("manifests/{}.json", snap.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["encryption"]["key_id"],
        podsnap_store::Key::from_bytes(&[0x5a; 32]).id()
    );

    // A node without the key refuses before downloading anything, with the reason.
    let mut cc = c.client().await;
    let err = common::restore(
        &mut cc,
        &snap.id,
        sb.bundle.path(),
        &unique_id("e2e-nokey"),
        None,
    )
    .await
    .expect_err("restore without the group key succeeded");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("no key for group app=vault"),
        "{err:?}"
    );

    // A node with the key restores it and the count continues.
    let new_id = unique_id("e2e-unsealed");
    let rlog = dir.path().join("restored.log");
    common::restore(
        &mut b.client().await,
        &snap.id,
        sb.bundle.path(),
        &new_id,
        Some(&rlog),
    )
    .await
    .expect("restore succeeds");
    wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
    let after = first_count(&rlog).unwrap();
    RunscCmd::new(&b.root).force_delete(&new_id);
    assert!(
        after >= before && after < before + 5,
        "before {before}, first count after restore {after}"
    );
    drop(sb);
}

/// A tmpfs of `size` mounted at `dir` for the life of the value.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "podsnap-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_dir_that_fills_up_mid_checkpoint_fails_it_commits_nothing_and_the_sandbox_runs_on()
{
    if !require(
        "a_work_dir_that_fills_up_mid_checkpoint_fails_it_commits_nothing_and_the_sandbox_runs_on",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Room for the job's small files, not for the sandbox's pages: the sandbox holds 4 MiB of
    // random data (a counter alone checkpoints to 1.6 MB on 20240729 but 0.4 MB on 2026).
    let work = dir.path().join("small-work");
    let _disk = SmallDisk::mount(&work, "1m");
    let store = format!("file://{}", dir.path().join("store").display());
    let a = node(
        dir.path(),
        "node-full",
        &store,
        &[],
        &[
            format!("--work-dir={}", work.display()),
            // A checkpoint that leaves the sandbox running uploads after runsc by default:
            // make this one read the image while runsc writes it.
            "--upload-while-checkpointing=always".to_string(),
        ],
    );
    let id = unique_id("e2e-full");
    let log = dir.path().join("counter.log");
    let script =
        format!("dd if=/dev/urandom of=/dev/blob bs=1M count=4 2>/dev/null; {COUNTER_SCRIPT}");
    let bundle = Bundle::with_args(&["/bin/sh", "-c", &script]).unwrap();
    let sb = CounterSandbox::start_on(Release::System, &a.root, &id, &log, &[], bundle)
        .expect("counter starts");
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();

    let mut c = a.client().await;
    let req = common::harness::checkpoint_req(&id, &[], &[], 0, false);
    let err = match c.checkpoint(req).await {
        Err(e) => e,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(pb::CheckpointEvent {
                        event: Some(pb::checkpoint_event::Event::Snapshot(s)),
                    })) => panic!("a checkpoint into a full work dir succeeded: {s:?}"),
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a checkpoint stream ended without a snapshot or error"),
                    Err(e) => break e,
                }
            }
        }
    };
    let msg = err.message().to_lowercase();
    assert!(
        msg.contains("no space") && msg.contains("checkpoint"),
        "runsc's own error is reported: {err:?}"
    );
    assert!(
        !msg.contains("was not finished"),
        "the push's follow-up error does not hide runsc's: {err:?}"
    );
    let listed = c
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.snapshots.is_empty(), "nothing committed: {listed:?}");
    // The sandbox was left running and keeps counting.
    let at = last_count(&log).unwrap();
    wait_for_count(&log, at + 2, Duration::from_secs(30)).unwrap();
    drop(sb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_leaves_the_sandbox_running_follows_runscs_write_only_when_told_always() {
    if !require(
        "a_checkpoint_that_leaves_the_sandbox_running_follows_runscs_write_only_when_told_always",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    // Only releases traced to write pages.img front to back are followed.
    let traced = !podsnap_testkit::runsc::Release::System.is_limited();
    let dir = tempfile::tempdir().unwrap();
    // By default only checkpoints that stop the sandbox follow runsc (a `--stop` one is
    // checked in `checkpoint_on_node_a_restore_on_node_b...`): a `--resume` one uploads after
    // runsc unless the daemon says `always`.
    for (name, args, follows) in [
        ("node-default", vec![], false),
        (
            "node-always",
            vec!["--upload-while-checkpointing=always".to_string()],
            traced,
        ),
    ] {
        let store = format!("file://{}", dir.path().join(name).join("store").display());
        let d = node(dir.path(), name, &store, &[], &args);
        let id = unique_id("e2e-follow");
        let log = dir.path().join(format!("counter-{name}.log"));
        let sb = CounterSandbox::start(&d.root, &id, &log, &[]).expect("counter starts");
        wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();
        let mut c = d.client().await;
        let (_, snap) = common::harness::run_checkpoint(
            &mut c,
            common::harness::checkpoint_req(&id, &[], &[], 0, false),
        )
        .await;
        let snap = snap.unwrap_or_else(|e| panic!("{name}: checkpoint failed: {e:?}"));
        assert!(snap.logical_bytes > 0, "{name}: {snap:?}");
        let m = d.metrics();
        assert_eq!(
            m.histogram_count(
                "podsnap_phase_duration_seconds",
                &[("operation", "checkpoint"), ("phase", "upload_after_runsc")]
            ),
            follows.then_some(1),
            "{name}: the upload followed runsc's write: expected {follows}\n{}",
            m.text()
        );
        // Left running either way.
        let at = last_count(&log).unwrap();
        wait_for_count(&log, at + 2, Duration::from_secs(30)).unwrap();
        drop(sb);
    }
}
