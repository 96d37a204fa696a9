//! Lazy restores with real components: the podsnapd binary, the 2026 runsc (which has
//! `restore --background`), a `file://` store shared by two daemons acting as two nodes, the
//! second with an empty page cache. Gated like the other real tests: skipped without root or
//! that runsc, unless `PODSNAP_REQUIRE_PRIVILEGED=1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_testkit::daemon::{Podsnapd, PodsnapdCmd};
use podsnap_testkit::runsc::{
    last_count, unique_id, wait_for_count, Bundle, CounterSandbox, Release, RunscCmd,
};
use podsnap_testkit::{require, require_that, Need};
use tonic::transport::Channel;

/// The 2026 runsc, or `None` (skipped) when it is not installed.
fn runsc_2026(test: &str) -> Option<PathBuf> {
    if !require(test, &[Need::Root]) {
        return None;
    }
    let missing = podsnap_lazy_fuse().err();
    if !require_that(test, missing) {
        return None;
    }
    Release::R2026.required()
}

fn podsnap_lazy_fuse() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// A podsnapd (`name`, on `store`) driving `runsc`, its metrics on a free local port.
fn daemon(dir: &Path, name: &str, store: &str, runsc: &Path) -> Daemon {
    Daemon::spawn(
        PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), dir, name)
            .store(store)
            .arg(format!("--runsc={}", runsc.display())),
    )
}

async fn client(d: &Podsnapd) -> PodsnapClient<Channel> {
    podsnap_proto::client::podsnapd(&d.sock).await.unwrap()
}

/// Checkpoints sandbox `id` (stopping it) in group `app=<app>`.
async fn checkpoint_stop(c: &mut PodsnapClient<Channel>, id: &str, app: &str) -> pb::Snapshot {
    common::checkpoint(
        c,
        common::harness::checkpoint_req(id, &[("app", app)], &["app"], 0, true),
    )
    .await
}

/// A counter (`bundle`) started on node `a`, counting past `min`, then checkpointed with
/// `--stop` in group `app=<app>`: the sandbox (for its bundle), the snapshot, and the last
/// count before the checkpoint.
async fn checkpointed_counter(
    a: &Podsnapd,
    dir: &Path,
    app: &str,
    bundle: Bundle,
    min: u64,
) -> (CounterSandbox, pb::Snapshot, u64) {
    let id = unique_id(app);
    let log = dir.join(format!("{app}.log"));
    let sb = CounterSandbox::start_on(Release::R2026, &a.root, &id, &log, &[], bundle)
        .expect("counter starts");
    wait_for_count(&log, min, Duration::from_secs(90)).unwrap();
    let snap = checkpoint_stop(&mut client(a).await, &id, app).await;
    (sb, snap, last_count(&log).unwrap())
}

/// PrepareRestore of `snapshot` for `container`, which runs under runsc root `root`.
async fn prepare(
    c: &mut PodsnapClient<Channel>,
    snapshot: &str,
    container: &str,
    root: &Path,
    background: bool,
) -> pb::PrepareRestoreResponse {
    c.prepare_restore(pb::PrepareRestoreRequest {
        snapshot_id: snapshot.into(),
        container_id: container.into(),
        runsc_root: root.display().to_string(),
        background,
    })
    .await
    .expect("prepare succeeds")
    .into_inner()
}

/// Waits for the restore job of `container` to finish; returns it.
async fn finished_restore_job(
    c: &mut PodsnapClient<Channel>,
    container: &str,
    within: Duration,
) -> pb::Job {
    finished_job(c, "restore", container, within).await
}

/// Waits for the job of `kind` on `target` to finish; returns it.
async fn finished_job(
    c: &mut PodsnapClient<Channel>,
    kind: &str,
    target: &str,
    within: Duration,
) -> pb::Job {
    let deadline = Instant::now() + within;
    loop {
        let job = listed_job(c, kind, target).await;
        if !job.finished_at.is_empty() {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} job still running: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listed_job(c: &mut PodsnapClient<Channel>, kind: &str, target: &str) -> pb::Job {
    let jobs = c
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    jobs.into_iter()
        .find(|j| j.kind == kind && j.target == target)
        .unwrap_or_else(|| panic!("the {kind} job of {target} is listed"))
}

/// A Restore call with `wait_for_pages`: its `restored` answer (if one came) and how the
/// stream ended (after the last page, or with the reason the sandbox was stopped).
async fn restore_waiting(
    c: &mut PodsnapClient<Channel>,
    snapshot: &str,
    bundle: &Path,
    id: &str,
    log: &Path,
) -> (Option<pb::Restored>, Result<(), tonic::Status>) {
    let call = c
        .restore(pb::RestoreRequest {
            snapshot_id: snapshot.into(),
            bundle: bundle.display().to_string(),
            container_id: id.into(),
            log_path: log.display().to_string(),
            wait_for_pages: true,
            ..Default::default()
        })
        .await;
    let mut stream = match call {
        Ok(s) => s.into_inner(),
        Err(e) => return (None, Err(e)),
    };
    let mut restored = None;
    loop {
        match stream.message().await {
            Ok(Some(pb::RestoreEvent {
                event: Some(pb::restore_event::Event::Restored(r)),
            })) => restored = Some(r),
            Ok(Some(_)) => {}
            Ok(None) => return (restored, Ok(())),
            Err(e) => return (restored, Err(e)),
        }
    }
}

/// Whether a podsnap lazy image is mounted at `path`.
fn lazy_mounted_at(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    podsnap_lazy::lazy_mount_points(&text)
        .iter()
        .any(|p| p == path)
}

/// A stopped counter checkpointed on node A, restored lazily on node B (empty cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_restores_lazily_on_a_cold_node_and_counts_on() {
    let test = "a_counter_restores_lazily_on_a_cold_node_and_counts_on";
    let Some(runsc) = runsc_2026(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    let a = daemon(dir.path(), "node-a", &store, &runsc);
    let b = daemon(dir.path(), "node-b", &store, &runsc);

    let (sb, snap, before) = checkpointed_counter(
        &a,
        dir.path(),
        "lazy-counter",
        Bundle::counter().unwrap(),
        3,
    )
    .await;

    let mut cb = client(&b).await;
    let new_id = unique_id("lazy-restored");
    let rlog = dir.path().join("restored.log");
    let t = Instant::now();
    let (restored, end) =
        restore_waiting(&mut cb, &snap.id, sb.bundle.path(), &new_id, &rlog).await;
    let answered = t.elapsed();
    end.expect("lazy restore succeeds to its last page");
    let restored = restored.expect("a restored answer");
    assert!(restored.lazy && !restored.job_id.is_empty(), "{restored:?}");
    wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
    // The stream ended only once every page was local.
    let job = listed_job(&mut cb, "restore", &new_id).await;
    assert!(!job.finished_at.is_empty(), "{job:?}");
    assert!(job.error.is_empty(), "{job:?}");
    assert!(
        job.bytes_total > 0 && job.bytes_done == job.bytes_total,
        "{job:?}"
    );
    // It took the lazy path: the image was mounted, and runsc restored in the background.
    let m = b.metrics();
    assert_eq!(
        m.histogram_count(
            "podsnap_phase_duration_seconds",
            &[("operation", "restore"), ("phase", "lazy_mount")]
        ),
        Some(1),
        "{}",
        m.text()
    );
    assert!(
        m.counter("podsnap_bytes", &[("direction", "downloaded")])
            .unwrap_or(0.0)
            > 0.0,
        "{}",
        m.text()
    );
    assert!(b.log_text().contains("lazy image mounted"));
    // The counter goes on from where it stopped, and keeps going once every page is local.
    let n = last_count(&rlog).unwrap();
    wait_for_count(&rlog, n + 2, Duration::from_secs(30)).unwrap();
    // The order the sandbox read pages became the group's hot pages (recorded for the first
    // 5 s at least).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hot: Vec<_> = std::fs::read_dir(store_dir.join("hot"))
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        if hot.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no hot pages record for the group"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("lazy restore answered in {answered:?}");

    // Once the sandbox is gone, the mount goes.
    RunscCmd::of(Release::R2026, &b.root).force_delete(&new_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains("fuse.podsnap") && l.contains(&*dir.path().to_string_lossy()))
    {
        assert!(
            Instant::now() < deadline,
            "the lazy mount outlived its sandbox"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The stored blobs (pack file, offset, length) only `pages.img` uses, not the small files
/// (which are fetched and verified before runsc runs).
fn pages_only_blobs(store_dir: &Path, snapshot: &str) -> Vec<(PathBuf, u64, u64)> {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store_dir.join(format!("manifests/{snapshot}.json"))).unwrap(),
    )
    .unwrap();
    let mut pages = Vec::new();
    let mut others = Vec::new();
    for f in m["files"].as_array().unwrap() {
        let digest = f["index"]["digest"].as_str().unwrap();
        let z = std::fs::read(store_dir.join("indexes").join(digest)).unwrap();
        let plain = zstd::decode_all(&z[..]).unwrap();
        let idx = podsnap_store::index::FileIndex::decode(&plain).unwrap();
        let blobs = idx.blobs.iter().map(|b| {
            let hex: String = idx.packs[b.pack as usize]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
            (
                store_dir.join("packs").join(hex),
                b.offset,
                b.stored_len as u64,
            )
        });
        if f["path"] == "pages.img" {
            pages.extend(blobs);
        } else {
            others.extend(blobs);
        }
    }
    pages.retain(|p| !others.contains(p));
    pages
}

/// A page of the image that fails verification after the sandbox started: the sandbox is
/// stopped and the job fails naming the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_page_stops_the_lazily_restored_sandbox_and_fails_the_job() {
    let test = "a_corrupt_page_stops_the_lazily_restored_sandbox_and_fails_the_job";
    let Some(runsc) = runsc_2026(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = format!("file://{}", store_dir.display());
    let a = daemon(dir.path(), "node-a", &store, &runsc);
    let b = daemon(dir.path(), "node-b", &store, &runsc);

    // ~32 MiB of random text in the shell's memory, so that pages.img has pages runsc does
    // not need to restore the kernel and the counter.
    let script = r#"echo "Count: 0"; x=$(head -c 24000000 /dev/urandom | base64); i=1; while :; do echo "Count: $i"; i=$((i+1)); sleep 1; done"#;
    let (sb, snap, _before) = checkpointed_counter(
        &a,
        dir.path(),
        "lazy-bad",
        Bundle::with_args(&["/bin/sh", "-c", script]).unwrap(),
        2,
    )
    .await;

    // Flip the bytes of pages.img's last blob (stored in a pack it may share).
    let blobs = pages_only_blobs(&store_dir, &snap.id);
    let (pack, offset, len) = blobs
        .last()
        .expect("pages.img has blobs of its own")
        .clone();
    let mut data = std::fs::read(&pack).unwrap();
    for b in &mut data[offset as usize..(offset + len) as usize] {
        *b ^= 0xa5;
    }
    std::fs::write(&pack, data).unwrap();

    let mut cb = client(&b).await;
    let new_id = unique_id("lazy-bad-restored");
    let rlog = dir.path().join("restored.log");
    let (answer, end) = restore_waiting(&mut cb, &snap.id, sb.bundle.path(), &new_id, &rlog).await;
    // The caller waiting for the pages learns the failure on its stream, with the reason.
    let end = end.expect_err("the restore stream fails");
    assert!(end.message().contains("pages.img"), "{end:?}");
    if answer.is_some() {
        assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
    }
    let job = finished_restore_job(&mut cb, &new_id, Duration::from_secs(120)).await;
    eprintln!(
        "restore answered {}; job error: {}",
        if answer.is_some() {
            "ok"
        } else {
            "with an error"
        },
        job.error
    );
    assert_eq!(
        job.phase,
        pb::Phase::Failed as i32,
        "{job:?} (answer {answer:?})"
    );
    assert!(
        job.error.contains("pages.img") && job.error.contains("at offset"),
        "the reason names the page: {}",
        job.error
    );
    if answer.is_some() {
        assert!(job.error.contains("was stopped"), "{}", job.error);
    }
    // Nothing runs on bad pages: the sandbox is gone (or stopped).
    let state = RunscCmd::of(Release::R2026, &b.root).run(&["state", &new_id]);
    assert!(
        state.as_ref().map_or(true, |s| !s.contains("\"running\"")),
        "{state:?}"
    );
    RunscCmd::of(Release::R2026, &b.root).force_delete(&new_id);
}

/// The Kubernetes path as the runsc wrapper behind gVisor's shim drives it: PrepareRestore,
/// told the sandbox's runsc root and that its restore runs with --background, answers on a
/// cold node with a lazily served image; `runsc create` then `runsc restore --background`
/// from it bring the counter back; the job follows the sandbox until every page is local,
/// and the mount and its directory go with the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_image_is_served_lazily_to_a_background_restore() {
    let test = "a_prepared_image_is_served_lazily_to_a_background_restore";
    let Some(runsc) = runsc_2026(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let a = daemon(dir.path(), "node-a", &store, &runsc);
    let b = daemon(dir.path(), "node-b", &store, &runsc);

    let (sb, snap, before) =
        checkpointed_counter(&a, dir.path(), "lazy-prep", Bundle::counter().unwrap(), 3).await;

    // The shim's root, not node B's daemon root: podsnapd follows the sandbox there.
    let shim_root = dir.path().join("shim-root");
    std::fs::create_dir_all(&shim_root).unwrap();
    let new_id = unique_id("lazy-prepared");
    let mut cb = client(&b).await;
    let prepared = prepare(&mut cb, &snap.id, &new_id, &shim_root, true).await;
    assert!(prepared.lazy, "{prepared:?}");
    let image = PathBuf::from(&prepared.image_dir);
    assert!(
        lazy_mounted_at(&image),
        "{} is not a lazy mount",
        image.display()
    );
    assert!(b.log_text().contains("lazy image mounted"));

    // What the wrapper runs: the shim's create, then its start as a background restore.
    let shim_runsc = RunscCmd::of(Release::R2026, &shim_root);
    let rlog = dir.path().join("restored.log");
    let out = std::fs::File::create(&rlog).unwrap();
    let status = shim_runsc
        .command(&[
            "create",
            &format!("--bundle={}", sb.bundle.path().display()),
            &new_id,
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    assert!(status.success(), "runsc create: {status}");
    shim_runsc
        .run(&[
            "restore",
            "--detach",
            "--background",
            &format!("--image-path={}", image.display()),
            &new_id,
        ])
        .expect("runsc restore --background from the lazy image");
    wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
    let job = finished_job(
        &mut cb,
        "prepare-restore",
        &new_id,
        Duration::from_secs(120),
    )
    .await;
    assert!(job.error.is_empty(), "{job:?}");
    assert!(
        job.bytes_total > 0 && job.bytes_done == job.bytes_total,
        "{job:?}"
    );
    let n = last_count(&rlog).unwrap();
    wait_for_count(&rlog, n + 2, Duration::from_secs(30)).unwrap();
    // Still mounted while the sandbox runs (runsc reads pages.img through it).
    assert!(lazy_mounted_at(&image));

    shim_runsc.force_delete(&new_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lazy_mounted_at(&image) || image.exists() {
        assert!(
            Instant::now() < deadline,
            "the lazy mount {} outlived its sandbox",
            image.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A PrepareRestore whose caller does not restore in the background gets a whole local
/// image, not a mount, even where runsc and FUSE allow a lazy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_without_background_pulls_the_whole_image() {
    let test = "a_prepare_without_background_pulls_the_whole_image";
    let Some(runsc) = runsc_2026(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let a = daemon(dir.path(), "node-a", &store, &runsc);
    let (_sb, snap, _before) =
        checkpointed_counter(&a, dir.path(), "eager-prep", Bundle::counter().unwrap(), 2).await;
    let mut ca = client(&a).await;
    let prepared = prepare(&mut ca, &snap.id, "eager-c", &a.root, false).await;
    assert!(!prepared.lazy, "{prepared:?}");
    let image = PathBuf::from(&prepared.image_dir);
    assert!(!lazy_mounted_at(&image));
    let pages = std::fs::metadata(image.join("pages.img")).expect("pages.img is local");
    assert!(pages.len() > 0);
    let job = listed_job(&mut ca, "prepare-restore", "eager-c").await;
    assert!(
        !job.finished_at.is_empty() && job.error.is_empty(),
        "{job:?}"
    );
    assert!(a.log_text().contains("restores without --background"));
}

/// A podsnapd killed while it serves a prepared image lazily (here before the wrapper created
/// the sandbox): the restarted daemon fails the job with the reason and removes the dead
/// mount, so nothing is left that reads through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_while_serving_a_prepared_image_fails_its_job_on_restart() {
    let test = "a_daemon_killed_while_serving_a_prepared_image_fails_its_job_on_restart";
    let Some(runsc) = runsc_2026(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let a = daemon(dir.path(), "node-a", &store, &runsc);
    let (_sb, snap, _before) =
        checkpointed_counter(&a, dir.path(), "lazy-kill", Bundle::counter().unwrap(), 2).await;

    let mut b = daemon(dir.path(), "node-b", &store, &runsc);
    let shim_root = dir.path().join("shim-root");
    let new_id = unique_id("lazy-killed");
    let prepared = prepare(&mut client(&b).await, &snap.id, &new_id, &shim_root, true).await;
    assert!(prepared.lazy, "{prepared:?}");
    let image = PathBuf::from(&prepared.image_dir);
    assert!(lazy_mounted_at(&image));

    b.kill9();
    let b = daemon(dir.path(), "node-b", &store, &runsc);
    let job = finished_job(
        &mut client(&b).await,
        "prepare-restore",
        &new_id,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job.phase, pb::Phase::Failed as i32, "{job:?}");
    assert!(
        job.error.contains("restarted while") && job.error.contains(&new_id),
        "{}",
        job.error
    );
    assert!(!lazy_mounted_at(&image), "the dead mount was left");
}

/// Many from one: four lazy restores of one snapshot at once on a cold node (as a warm pool
/// fills) each bring their own counter back, and the node downloads the snapshot about once.
/// Also the regression test of a deadlock: the runtime's workers read the image header through
/// the mount while the FUSE server needed a worker to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lazy_restores_of_one_snapshot_share_its_download() {
    let test = "concurrent_lazy_restores_of_one_snapshot_share_its_download";
    let Some(runsc) = runsc_2026(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let a = daemon(dir.path(), "node-a", &store, &runsc);
    let b = daemon(dir.path(), "node-b", &store, &runsc);
    // ~32 MiB of random text in the shell's memory: pages worth sharing.
    let script = r#"x=$(head -c 24000000 /dev/urandom | base64); i=0; while :; do echo "Count: $i"; i=$((i+1)); sleep 1; done"#;
    let (sb, snap, before) = checkpointed_counter(
        &a,
        dir.path(),
        "lazy-many",
        Bundle::with_args(&["/bin/sh", "-c", script]).unwrap(),
        2,
    )
    .await;

    let ids: Vec<String> = (0..4)
        .map(|i| unique_id(&format!("lazy-many-{i}")))
        .collect();
    let restores = ids.iter().map(|new_id| {
        let (snap, bundle) = (snap.id.clone(), sb.bundle.path().to_path_buf());
        let rlog = dir.path().join(format!("{new_id}.log"));
        let sock = b.sock.clone();
        async move {
            let mut c = podsnap_proto::client::podsnapd(&sock).await.unwrap();
            restore_waiting(&mut c, &snap, &bundle, new_id, &rlog).await
        }
    });
    for (new_id, (restored, end)) in ids.iter().zip(futures::future::join_all(restores).await) {
        end.unwrap_or_else(|e| panic!("restore of {new_id}: {e:?}"));
        assert!(
            restored.is_some_and(|r| r.lazy),
            "{new_id} was not restored lazily"
        );
        let rlog = dir.path().join(format!("{new_id}.log"));
        wait_for_count(&rlog, before + 1, Duration::from_secs(60)).unwrap();
    }
    let m = b.metrics();
    let downloaded = m
        .counter("podsnap_bytes", &[("direction", "downloaded")])
        .unwrap_or(0.0);
    let stored = snap.uploaded_bytes as f64;
    assert!(
        downloaded > 0.0 && downloaded <= 1.1 * stored,
        "4 restores downloaded {downloaded} bytes of a snapshot that stored {stored}"
    );
    for new_id in &ids {
        RunscCmd::of(Release::R2026, &b.root).force_delete(new_id);
    }
}
