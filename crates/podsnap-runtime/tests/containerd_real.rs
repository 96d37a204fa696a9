//! Resolution, checkpoint and standalone restore of containers that a private containerd 1.6
//! runs through its runc v2 shim with runsc as the runc binary. Gated by
//! `podsnap_testkit::require` (root + runsc + containerd).

use podsnap_runtime::containerd::{ContainerdClient, ContainerdConfig, TaskStatus};
use podsnap_runtime::*;
use podsnap_testkit::containerd::Containerd;
use podsnap_testkit::runsc::{busybox_rootfs, first_count, last_count, unique_id, wait_for_count};
use podsnap_testkit::{require, Need};
use std::path::Path;
use std::time::{Duration, Instant};

const NS: &str = "podsnap-test";
const T: Duration = Duration::from_secs(120);

fn runtime(ctd: &Containerd, root: &Path) -> RunscRuntime {
    RunscRuntime::new(
        Runsc::builder()
            .root(root)
            .network("none")
            .timeout(T)
            .build(),
    )
    .with_containerd(ContainerdClient::new(ContainerdConfig::with_socket(
        ctd.socket(),
    )))
}

fn needs(name: &str) -> bool {
    require(name, &[Need::Root, Need::Runsc, Need::Containerd])
}

/// The running containerd container `id` in [`NS`], resolved: runsc's root and the bundle
/// are containerd's, one container, and its containerd kind with the running task.
fn assert_resolved_containerd_counter(sb: &Sandbox, ctd: &Containerd, id: &str) {
    assert_eq!(sb.root, ctd.runsc_root(NS));
    assert_eq!(sb.container_id, id);
    assert_eq!(sb.sandbox_id, id);
    assert_eq!(sb.container_count, 1);
    assert_eq!(sb.status, Status::Running);
    assert_eq!(
        sb.bundle,
        ctd.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(NS)
            .join(id)
    );
    match &sb.kind {
        SandboxKind::Containerd {
            namespace,
            container,
            runtime,
            pod,
            task_status,
            task_pid,
        } => {
            assert_eq!(namespace, NS);
            assert_eq!(container, id);
            assert_eq!(runtime, "io.containerd.runc.v2");
            assert!(pod.is_none());
            assert_eq!(*task_status, Some(TaskStatus::Running));
            assert!(task_pid.is_some_and(|p| p > 0));
        }
        other => panic!("unexpected kind {other:?}"),
    }
}

/// runsc 20221219's --leave-running is refused under containerd before anything runs;
/// later releases checkpoint (into `image`, removed again) and keep the task running.
async fn assert_leave_running_refused_or_kept_running(
    rt: &RunscRuntime,
    sb: &Sandbox,
    image: &Path,
) {
    let res = rt
        .checkpoint(
            sb,
            image,
            &CheckpointOpts {
                leave_running: true,
                ..Default::default()
            },
        )
        .await;
    if podsnap_testkit::runsc::Release::System.is_limited() {
        let err = res.unwrap_err();
        assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err}");
    } else {
        res.unwrap();
        assert_eq!(sb.status, Status::Running);
        std::fs::remove_dir_all(image).unwrap();
    }
}

/// Waits (up to 20 s) until containerd sees the task of `id` stopped.
async fn wait_for_task_stopped(client: &ContainerdClient, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let task = client.task(NS, id).await.unwrap();
        if task
            .as_ref()
            .is_some_and(|t| t.status == TaskStatus::Stopped)
        {
            return;
        }
        assert!(Instant::now() < deadline, "task still {task:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A standalone bundle in `dir/bundle` from a copy of the containerd bundle's spec (its
/// rootfs path is absolute).
fn standalone_bundle(sb: &Sandbox, dir: &Path) -> std::path::PathBuf {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::copy(sb.bundle.join("config.json"), bundle.join("config.json")).unwrap();
    bundle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_counter_is_resolved_checkpointed_and_restored_standalone() {
    if !needs("containerd_counter_is_resolved_checkpointed_and_restored_standalone") {
        return;
    }
    let ctd = Containerd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs).unwrap();
    let log = tmp.path().join("ctr.log");
    let id = unique_id("ctrc");
    let started = Instant::now();
    ctd.run_counter(NS, &id, &rootfs, &log).unwrap();
    eprintln!("ctr run took {:?}", started.elapsed());
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();

    let rt = runtime(&ctd, &tmp.path().join("standalone-root"));
    let client = rt.containerd().unwrap();
    let (version, _) = client.version().await.unwrap();
    eprintln!("containerd version {version}");

    let target = Target::Containerd {
        namespace: NS.into(),
        id: id.clone(),
    };
    let sb = rt.resolve(&target).await.unwrap();
    eprintln!("resolved: {sb:?}");
    assert_resolved_containerd_counter(&sb, &ctd, &id);
    let image = tmp.path().join("image");
    assert_leave_running_refused_or_kept_running(&rt, &sb, &image).await;

    let started = Instant::now();
    rt.checkpoint(
        &sb,
        &image,
        &CheckpointOpts {
            timeout: Some(T),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eprintln!("checkpoint took {:?}", started.elapsed());
    let before = last_count(&log).unwrap();
    let header = podsnap_runtime::image::read_image_dir_header(&image).unwrap();
    eprintln!("header: {:?}", header.metadata);
    wait_for_task_stopped(client, &id).await;

    // Restore standalone, under a new id.
    let bundle = standalone_bundle(&sb, tmp.path());
    let new_id = unique_id("ctrr");
    let new_log = tmp.path().join("restored.log");
    let restored = rt
        .restore(&RestoreRequest {
            id: new_id.clone(),
            bundle: bundle.clone(),
            image_dir: image.clone(),
            log_file: Some(new_log.clone()),
            timeout: Some(T),
            // As the daemon runs it: durable, outliving a daemon crash.
            job_dir: Some(tmp.path().join("restore-job")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(restored.status, Status::Running);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("restore-job/exit-status"))
            .unwrap()
            .trim(),
        "0"
    );
    wait_for_count(&new_log, before + 1, Duration::from_secs(30)).unwrap();
    let first = first_count(&new_log).unwrap();
    eprintln!("last count before {before}, first after restore {first}");
    assert!(
        first >= before && first < before + 10,
        "{first} vs {before}"
    );
    rt.delete(None, &new_id, true).await.unwrap();
    ctd.remove(NS, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_task_pause_and_resume() {
    if !needs("containerd_task_pause_and_resume") {
        return;
    }
    let ctd = Containerd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs).unwrap();
    let log = tmp.path().join("ctr.log");
    let id = unique_id("paus");
    ctd.run_counter(NS, &id, &rootfs, &log).unwrap();
    wait_for_count(&log, 1, Duration::from_secs(30)).unwrap();
    let client = ContainerdClient::new(ContainerdConfig::with_socket(ctd.socket()));
    client.pause(NS, &id).await.unwrap();
    let t = client.task(NS, &id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Paused);
    let tasks = client.tasks(NS).await.unwrap();
    assert!(tasks.iter().any(|t| t.id == id));
    client.resume(NS, &id).await.unwrap();
    let t = client.task(NS, &id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Running);
    let listed = client.containers(NS).await.unwrap();
    assert!(listed
        .iter()
        .any(|c| c.id == id && c.configured_for_runsc()));
    ctd.remove(NS, &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_errors_are_clear() {
    if !needs("containerd_errors_are_clear") {
        return;
    }
    let ctd = Containerd::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(&ctd, &tmp.path().join("standalone-root"));

    // Unknown container.
    let err = rt
        .resolve(&Target::Containerd {
            namespace: NS.into(),
            id: "nothing-here".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "containerd container podsnap-test/nothing-here not found"
    );

    // A container run by plain runc (the shim's default binary).
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs).unwrap();
    let id = unique_id("runc");
    ctd.run_container(
        NS,
        &id,
        &rootfs,
        None,
        &tmp.path().join("runc.log"),
        &["/bin/sleep", "60"],
    )
    .unwrap();
    let err = rt
        .resolve(&Target::Containerd {
            namespace: NS.into(),
            id: id.clone(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotRunsc { .. }), "{err}");
    eprintln!("{err}");
    ctd.remove(NS, &id);

    // No containerd configured.
    let plain = RunscRuntime::new(Runsc::builder().root(tmp.path()).build());
    let err = plain
        .resolve(&Target::Containerd {
            namespace: NS.into(),
            id: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NoContainerd { .. }), "{err}");
}
