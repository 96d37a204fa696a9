//! The Kubernetes path end to end with the real daemon: a private containerd 1.6 whose runc v2
//! shim runs `podsnap-runsc` as its runsc binary (runsc 20221219 behind it), and the podsnapd
//! binary with `--containerd-socket` pointing at that containerd.
//!
//! 1. A counter container started with `ctr run --runc-binary podsnap-runsc`.
//! 2. `Checkpoint` of it as a containerd target with `POST_CHECKPOINT_RESUME` is refused with
//!    `FAILED_PRECONDITION` (no leave-running under containerd on 20221219) and leaves it
//!    counting.
//! 3. `Checkpoint` with `POST_CHECKPOINT_STOP` commits a snapshot that records the containerd
//!    container, and the counter stops.
//! 4. A new container annotated `podsnap.dev/restore-from=<snapshot>` comes up RUNNING
//!    through the wrapper's `PrepareRestore` call to the daemon, continuing the count.
//! 5. One annotated with an unknown snapshot fails to start, and containerd reports the
//!    daemon's reason.
//!
//! Gated by podsnap-testkit's `require` (root, runsc, containerd). The wrapper's config and
//! the daemon's socket reach it through containerd's environment (containerd passes it to the
//! shim, the shim to its runsc binary).

use std::path::{Path, PathBuf};
use std::time::Duration;

use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_testkit::containerd::Containerd;
use podsnap_testkit::daemon::{Podsnapd, PodsnapdCmd};
use podsnap_testkit::runsc::{
    busybox_rootfs, first_count, last_count, unique_id, wait_for_count, COUNTER_SCRIPT,
};
use podsnap_testkit::{require, Need};
use tonic::transport::Channel;

const NS: &str = "podsnapd-containerd-test";
const ANNOTATION: &str = "podsnap.dev/restore-from";

/// The wrapper binary, built next to this test's podsnapd (`make test` builds every bin).
fn wrapper_binary() -> PathBuf {
    let podsnapd = Path::new(env!("CARGO_BIN_EXE_podsnapd"));
    let p = podsnapd
        .parent()
        .expect("podsnapd has a parent dir")
        .join("podsnap-runsc");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (with the same CARGO_TARGET_DIR) \
         before this test",
        p.display()
    );
    p
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A podsnapd that reaches the private containerd.
fn start_daemon(dir: &Path, sock: &Path, store: &str, containerd_socket: &Path) -> Podsnapd {
    PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), dir, "cd-node")
        .sock(sock)
        .store(store)
        .arg(format!(
            "--containerd-socket={}",
            containerd_socket.display()
        ))
        .spawn()
}

async fn client(sock: &Path) -> PodsnapClient<Channel> {
    podsnap_proto::client::podsnapd(sock).await.unwrap()
}

/// Checkpoints containerd container `id` in [`NS`]; the snapshot, or the call's error.
async fn checkpoint(
    c: &mut PodsnapClient<Channel>,
    id: &str,
    post: pb::PostCheckpoint,
) -> Result<pb::Snapshot, tonic::Status> {
    let mut stream = c
        .checkpoint(pb::CheckpointRequest {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Containerd(pb::ContainerdTarget {
                    namespace: NS.into(),
                    container_id: id.into(),
                })),
            }),
            labels: [("app".to_string(), "counter".to_string())].into(),
            group_by: vec!["app".into()],
            keep: 0,
            post_checkpoint: post as i32,
            parent: String::new(),
        })
        .await?
        .into_inner();
    let mut snap = None;
    while let Some(ev) = stream.message().await? {
        if let Some(pb::checkpoint_event::Event::Snapshot(s)) = ev.event {
            snap = Some(s);
        }
    }
    Ok(snap.expect("a successful checkpoint stream ends with a snapshot event"))
}

/// The STATUS column of `ctr task ls` for `id`.
fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr(NS, &["task", "ls"]).ok()?;
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.get(2).map(|s| s.to_string()))
}

/// `ctr run -d` of the counter through the wrapper, optionally annotated to restore from
/// `snapshot`; stdout/stderr to `log`.
fn run_counter(
    c: &Containerd,
    wrapper: &Path,
    rootfs: &Path,
    id: &str,
    log: &Path,
    snapshot: Option<&str>,
) -> Result<(), String> {
    let runc_root = c.runc_root().display().to_string();
    let log_uri = format!("file://{}", log.display());
    let rootfs = rootfs.display().to_string();
    let wrapper = wrapper.display().to_string();
    let annotation = snapshot.map(|s| format!("{ANNOTATION}={s}"));
    let mut args = vec![
        "run",
        "-d",
        "--rootfs",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-root",
        &runc_root,
        "--log-uri",
        &log_uri,
        "--runc-binary",
        &wrapper,
    ];
    if let Some(a) = &annotation {
        args.extend(["--annotation", a.as_str()]);
    }
    args.extend([rootfs.as_str(), id, "/bin/sh", "-c", COUNTER_SCRIPT]);
    c.ctr(NS, &args).map(drop)
}

/// Removes a container (and its task) when dropped, so a failing assertion cleans up too.
/// Declared after the daemon and containerd, so dropped before them.
struct Removed<'a> {
    c: &'a Containerd,
    id: String,
}

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        self.c.remove(NS, &self.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_container_checkpointed_through_podsnapd_restores_from_its_annotation() {
    if !require(
        "containerd_container_checkpointed_through_podsnapd_restores_from_its_annotation",
        &[Need::Root, Need::Runsc, Need::Containerd],
    ) {
        return;
    }
    let wrapper = wrapper_binary();
    let scratch = tempfile::Builder::new()
        .prefix("podsnapd-containerd")
        .tempdir()
        .unwrap();
    let s = scratch.path();
    let sock = s.join("podsnapd.sock");
    let store_dir = s.join("store");
    let runsc = which("runsc").expect("runsc on PATH");

    // The wrapper's config: the real runsc, podsnapd's flags, private restore markers. The
    // daemon's socket comes from PODSNAP_SOCKET (the override the contract names).
    let config = s.join("podsnap.toml");
    std::fs::write(
        &config,
        format!(
            "runsc = \"{}\"\nrunsc_flags = [\"--network=none\"]\nmarker_dir = \"{}\"\n",
            runsc.display(),
            s.join("markers").display()
        ),
    )
    .unwrap();
    let c = Containerd::start_with_env(&[
        ("PODSNAP_CONFIG", config.as_os_str()),
        ("PODSNAP_SOCKET", sock.as_os_str()),
    ])
    .expect("containerd starts");
    let daemon = start_daemon(
        s,
        &sock,
        &format!("file://{}", store_dir.display()),
        &c.socket(),
    );
    let rootfs = s.join("rootfs");
    busybox_rootfs(&rootfs).unwrap();

    // 1. The source container, through the wrapper.
    let id = unique_id("cd-counter");
    let log = s.join("counter.log");
    let source = Removed {
        c: &c,
        id: id.clone(),
    };
    run_counter(&c, &wrapper, &rootfs, &id, &log, None).expect("counter container runs");
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();
    assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));

    let mut client = client(&sock).await;

    // 2. RESUME: on runsc 20221219 it is refused before the sandbox is touched; on later
    // releases the container keeps running through `--leave-running` (the same task).
    let res = checkpoint(&mut client, &id, pb::PostCheckpoint::Resume).await;
    if podsnap_testkit::runsc::Release::System.is_limited() {
        let err = res.expect_err("resume of a containerd container on runsc 20221219 is refused");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("--leave-running") && err.message().contains("--stop"),
            "the refusal names leave-running and --stop: {:?}",
            err.message()
        );
        eprintln!("resume refused: {}", err.message());
    } else {
        let snap = res.unwrap_or_else(|e| panic!("checkpoint --resume: {e:?}"));
        eprintln!("resumed after snapshot {}", snap.id);
    }
    let n = last_count(&log).unwrap();
    wait_for_count(&log, n + 2, Duration::from_secs(20))
        .expect("the container keeps counting after the resume (or the refused resume)");
    assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));

    // 3. STOP: a snapshot that records the containerd container; the counter stops.
    let snap = checkpoint(&mut client, &id, pb::PostCheckpoint::Stop)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "checkpoint --stop: {e:?}; daemon log: {}",
                daemon.log_text()
            )
        });
    let before = last_count(&log).unwrap();
    assert!(!snap.id.is_empty());
    assert_eq!(snap.group, "app=counter");
    assert!(
        !snap.runsc_metadata.is_empty(),
        "runsc's image header metadata is recorded"
    );
    let src = snap.source.as_ref().expect("source node facts");
    assert_eq!(src.node_name, "cd-node");
    assert!(!src.runsc_version.is_empty(), "{src:?}");
    // The manifest (the file store's JSON) names the containerd container it came from.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            store_dir
                .join("manifests")
                .join(format!("{}.json", snap.id)),
        )
        .expect("the manifest is in the file store"),
    )
    .unwrap();
    let extra = &manifest["source"]["extra"];
    assert_eq!(extra["containerd_namespace"], NS, "{manifest}");
    assert_eq!(extra["containerd_container"], id.as_str(), "{manifest}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        last_count(&log),
        Some(before),
        "the container kept counting after a STOP checkpoint"
    );
    drop(source);
    assert_eq!(task_status(&c, &id), None);

    // 4. A new container annotated with the snapshot comes up restored, through the wrapper's
    // PrepareRestore to this daemon.
    let rid = unique_id("cd-restored");
    let rlog = s.join("restored.log");
    let _restored = Removed {
        c: &c,
        id: rid.clone(),
    };
    run_counter(&c, &wrapper, &rootfs, &rid, &rlog, Some(&snap.id)).unwrap_or_else(|e| {
        panic!(
            "annotated container comes up: {e}; daemon log: {}",
            daemon.log_text()
        )
    });
    let after = wait_for_count(&rlog, before + 2, Duration::from_secs(30)).unwrap();
    assert_eq!(task_status(&c, &rid).as_deref(), Some("RUNNING"));
    let first = first_count(&rlog).unwrap();
    assert!(
        first >= before && first < before + 10,
        "checkpointed at {before}, the restored container's first count is {first}"
    );
    assert!(after > first);
    eprintln!("checkpointed at {before}; restored container counted {first}..={after}");

    // 5. An unknown snapshot: the create fails with the daemon's reason.
    let missing = "20000101T000000Z-deadbeef";
    let mid = unique_id("cd-missing");
    let _missing = Removed {
        c: &c,
        id: mid.clone(),
    };
    let err = run_counter(
        &c,
        &wrapper,
        &rootfs,
        &mid,
        &s.join("missing.log"),
        Some(missing),
    )
    .expect_err("a container annotated with an unknown snapshot does not start");
    assert!(
        err.contains("podsnap-runsc: cannot restore container")
            && err.contains(missing)
            && err.contains("not found")
            && err.contains("(NOT_FOUND)"),
        "{err}"
    );
    eprintln!("unknown snapshot refused: {err}");
    assert_ne!(task_status(&c, &mid).as_deref(), Some("RUNNING"));
}
