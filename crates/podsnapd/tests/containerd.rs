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

/// The test's node: a private containerd whose runc shim runs the wrapper, and a podsnapd that
/// reaches it, in one scratch directory. (Fields drop in order: the daemon, containerd, then
/// the directory.)
struct World {
    daemon: Podsnapd,
    c: Containerd,
    wrapper: PathBuf,
    rootfs: PathBuf,
    sock: PathBuf,
    store_dir: PathBuf,
    scratch: tempfile::TempDir,
}

impl World {
    fn start() -> World {
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
        World {
            daemon,
            c,
            wrapper,
            rootfs,
            sock,
            store_dir,
            scratch,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// `ctr run -d` of the counter through the wrapper, optionally annotated to restore from
    /// `snapshot`; stdout/stderr to `log`.
    fn run_counter(&self, id: &str, log: &Path, snapshot: Option<&str>) -> Result<(), String> {
        let runc_root = self.c.runc_root().display().to_string();
        let log_uri = format!("file://{}", log.display());
        let rootfs = self.rootfs.display().to_string();
        let wrapper = self.wrapper.display().to_string();
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
        self.c.ctr(NS, &args).map(drop)
    }

    /// Removes container `id` (and its task) when the guard drops.
    fn removed(&self, id: &str) -> Removed<'_> {
        Removed {
            c: &self.c,
            id: id.to_string(),
        }
    }

    /// The manifest of `snapshot`, read from the file store as JSON.
    fn manifest(&self, snapshot: &str) -> serde_json::Value {
        let path = self
            .store_dir
            .join("manifests")
            .join(format!("{snapshot}.json"));
        serde_json::from_slice(&std::fs::read(path).expect("the manifest is in the file store"))
            .unwrap()
    }
}

/// Removes a container (and its task) when dropped, so a failing assertion cleans up too.
/// Declared after the [`World`], so dropped before its daemon and containerd.
struct Removed<'a> {
    c: &'a Containerd,
    id: String,
}

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        self.c.remove(NS, &self.id);
    }
}

/// Step 2, RESUME: on runsc 20221219 it is refused before the sandbox is touched; on later
/// releases the container keeps running through `--leave-running` (the same task). Either
/// way the counter in `log` keeps counting.
async fn assert_resume_keeps_it_counting(
    w: &World,
    client: &mut PodsnapClient<Channel>,
    id: &str,
    log: &Path,
) {
    let res = checkpoint(client, id, pb::PostCheckpoint::Resume).await;
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
    let n = last_count(log).unwrap();
    wait_for_count(log, n + 2, Duration::from_secs(20))
        .expect("the container keeps counting after the resume (or the refused resume)");
    assert_eq!(task_status(&w.c, id).as_deref(), Some("RUNNING"));
}

/// Step 3: a STOP checkpoint's snapshot records the group, runsc's metadata, this node and,
/// in its manifest, the containerd container it came from.
fn assert_stop_snapshot_records_its_source(w: &World, snap: &pb::Snapshot, id: &str) {
    assert!(!snap.id.is_empty());
    assert_eq!(snap.group, "app=counter");
    assert!(
        !snap.runsc_metadata.is_empty(),
        "runsc's image header metadata is recorded"
    );
    let src = snap.source.as_ref().expect("source node facts");
    assert_eq!(src.node_name, "cd-node");
    assert!(!src.runsc_version.is_empty(), "{src:?}");
    let manifest = w.manifest(&snap.id);
    let extra = &manifest["source"]["extra"];
    assert_eq!(extra["containerd_namespace"], NS, "{manifest}");
    assert_eq!(extra["containerd_container"], id, "{manifest}");
}

/// Step 4: a new container annotated with the snapshot comes up restored, through the
/// wrapper's PrepareRestore to this daemon, continuing from `before`.
fn assert_annotated_container_restores(w: &World, snapshot: &str, before: u64) {
    let rid = unique_id("cd-restored");
    let rlog = w.path("restored.log");
    let _restored = w.removed(&rid);
    w.run_counter(&rid, &rlog, Some(snapshot))
        .unwrap_or_else(|e| {
            panic!(
                "annotated container comes up: {e}; daemon log: {}",
                w.daemon.log_text()
            )
        });
    let after = wait_for_count(&rlog, before + 2, Duration::from_secs(30)).unwrap();
    assert_eq!(task_status(&w.c, &rid).as_deref(), Some("RUNNING"));
    let first = first_count(&rlog).unwrap();
    assert!(
        first >= before && first < before + 10,
        "checkpointed at {before}, the restored container's first count is {first}"
    );
    assert!(after > first);
    eprintln!("checkpointed at {before}; restored container counted {first}..={after}");
}

/// Step 5: a container annotated with an unknown snapshot fails to create, with the
/// daemon's reason.
fn assert_unknown_snapshot_refused(w: &World) {
    let missing = "20000101T000000Z-deadbeef";
    let mid = unique_id("cd-missing");
    let _missing = w.removed(&mid);
    let err = w
        .run_counter(&mid, &w.path("missing.log"), Some(missing))
        .expect_err("a container annotated with an unknown snapshot does not start");
    assert!(
        err.contains("podsnap-runsc: cannot restore container")
            && err.contains(missing)
            && err.contains("not found")
            && err.contains("(NOT_FOUND)"),
        "{err}"
    );
    eprintln!("unknown snapshot refused: {err}");
    assert_ne!(task_status(&w.c, &mid).as_deref(), Some("RUNNING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_container_checkpointed_through_podsnapd_restores_from_its_annotation() {
    if !require(
        "containerd_container_checkpointed_through_podsnapd_restores_from_its_annotation",
        &[Need::Root, Need::Runsc, Need::Containerd],
    ) {
        return;
    }
    let w = World::start();

    // 1. The source container, through the wrapper.
    let id = unique_id("cd-counter");
    let log = w.path("counter.log");
    let source = w.removed(&id);
    w.run_counter(&id, &log, None)
        .expect("counter container runs");
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();
    assert_eq!(task_status(&w.c, &id).as_deref(), Some("RUNNING"));

    let mut client = client(&w.sock).await;
    assert_resume_keeps_it_counting(&w, &mut client, &id, &log).await;

    // 3. STOP: a snapshot that records the containerd container; the counter stops.
    let snap = checkpoint(&mut client, &id, pb::PostCheckpoint::Stop)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "checkpoint --stop: {e:?}; daemon log: {}",
                w.daemon.log_text()
            )
        });
    let before = last_count(&log).unwrap();
    assert_stop_snapshot_records_its_source(&w, &snap, &id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        last_count(&log),
        Some(before),
        "the container kept counting after a STOP checkpoint"
    );
    drop(source);
    assert_eq!(task_status(&w.c, &id), None);

    assert_annotated_container_restores(&w, &snap.id, before);
    assert_unknown_snapshot_refused(&w);
}
