//! Checkpoint and restore through [`RunscRuntime`] against the real runsc on this machine.
//! Gated by `podsnap_testkit::require` (root + runsc).

use podsnap_runtime::image::read_image_dir_header;
use podsnap_runtime::runsc::{self, Exit};
use podsnap_runtime::*;
use podsnap_testkit::runsc::{
    first_count, last_count, unique_id, wait_for_count, Bundle, CounterSandbox,
};
use podsnap_testkit::{require, Need};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn runtime(root: &Path, extra: &[&str]) -> RunscRuntime {
    RunscRuntime::new(
        Runsc::builder()
            .root(root)
            .network("none")
            .flags(extra.iter().copied())
            .timeout(T)
            .build(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointed_counter_continues_after_restore_under_a_new_id() {
    if !require(
        "checkpointed_counter_continues_after_restore_under_a_new_id",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let log = tmp.path().join("counter.log");
    let id = unique_id("ckpt");
    let counter = CounterSandbox::start(&root, &id, &log, &[]).unwrap();
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();

    let rt = runtime(&root, &[]);
    let info = rt.info().await.unwrap();
    eprintln!("runtime info: {info:?}");
    assert_eq!(info.platform, "ptrace");

    let sb = rt.resolve(&Target::Runsc { id: id.clone() }).await.unwrap();
    assert_eq!(sb.status, Status::Running);
    assert_eq!(sb.sandbox_id, id);
    assert_eq!(sb.container_count, 1);
    assert_eq!(sb.kind, SandboxKind::Standalone);
    assert_eq!(sb.bundle, counter.bundle.path());
    assert_eq!(sb.rootfs_overlay, RootfsOverlay::None);
    assert!(!sb.rootfs_in_memory());
    assert!(sb.pid.is_some());

    let image = tmp.path().join("image");
    let job = tmp.path().join("job");
    let started = Instant::now();
    rt.checkpoint(
        &sb,
        &image,
        &CheckpointOpts {
            job_dir: Some(job.clone()),
            timeout: Some(T),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eprintln!("checkpoint took {:?}", started.elapsed());
    let before = last_count(&log).unwrap();
    assert_eq!(
        std::fs::read_to_string(job.join("exit-status"))
            .unwrap()
            .trim(),
        "0"
    );

    // The header runsc 20221219 writes.
    let header = read_image_dir_header(&image).unwrap();
    eprintln!("checkpoint.img header: {:?}", header.metadata);
    assert!(header.metadata.contains_key("_timestamp"));
    assert!(header.data_offset > 16);

    // A checkpoint stops the sandbox.
    let st = rt.state(None, &id).await.unwrap();
    assert_eq!(st.status, Status::Stopped);
    rt.delete(None, &id, true).await.unwrap();

    let new_id = unique_id("rest");
    let new_log = tmp.path().join("restored.log");
    let started = Instant::now();
    let restored = rt
        .restore(&RestoreRequest {
            id: new_id.clone(),
            bundle: counter.bundle.path().to_path_buf(),
            image_dir: image.clone(),
            log_file: Some(new_log.clone()),
            timeout: Some(T),
            ..Default::default()
        })
        .await
        .unwrap();
    eprintln!("restore took {:?}", started.elapsed());
    assert_eq!(restored.status, Status::Running);
    assert_eq!(restored.root, root);
    wait_for_count(&new_log, before + 1, Duration::from_secs(30)).unwrap();
    let first = first_count(&new_log).unwrap();
    eprintln!("last count before checkpoint {before}, first after restore {first}");
    assert!(first >= before, "counter went back: {first} < {before}");
    assert!(
        first < before + 10,
        "counter restarted or jumped: {first} vs {before}"
    );

    // The root now holds the restored id: the same id, and ids that are prefixes of it (or
    // that it prefixes), are refused before runsc runs.
    let listed = rt.runsc().list().await.unwrap();
    assert!(listed
        .iter()
        .any(|c| c.id == new_id && c.status == Status::Running));
    assert!(rt.runsc().list_ids().await.unwrap().contains(&new_id));
    for clash in [
        new_id.clone(),
        new_id[..new_id.len() - 1].to_string(),
        format!("{new_id}y"),
    ] {
        let err = rt
            .restore(&RestoreRequest {
                id: clash.clone(),
                bundle: counter.bundle.path().to_path_buf(),
                image_dir: image.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidRequest(_)),
            "{clash}: {err}"
        );
    }
    rt.delete(None, &new_id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_overlay_is_detected_from_the_sandbox() {
    if !require(
        "memory_overlay_is_detected_from_the_sandbox",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let log = tmp.path().join("counter.log");
    let id = unique_id("ovl");
    let _counter = CounterSandbox::start(&root, &id, &log, &["--overlay2=root:memory"]).unwrap();
    // The runtime itself is configured without the flag: the value comes from the sandbox.
    let rt = runtime(&root, &[]);
    let sb = rt.resolve(&Target::Runsc { id: id.clone() }).await.unwrap();
    assert_eq!(sb.rootfs_overlay, RootfsOverlay::Memory);
    assert!(sb.rootfs_in_memory());
}

#[tokio::test]
async fn unknown_container_is_not_found() {
    if !require("unknown_container_is_not_found", &[Need::Root, Need::Runsc]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(tmp.path(), &[]);
    let err = rt
        .resolve(&Target::Runsc {
            id: "no-such-container".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "runsc container no-such-container not found"
    );
    assert!(matches!(
        rt.state(None, "no-such-container").await,
        Err(RuntimeError::NotFound { .. })
    ));
    assert!(matches!(
        rt.delete(None, "no-such-container", false).await,
        Err(RuntimeError::NotFound { .. })
    ));
    // runsc's `delete --force` of a missing container succeeds: deleting is idempotent.
    rt.delete(None, "no-such-container", true).await.unwrap();
}

fn phantom(root: &Path, id: &str, count: usize) -> Sandbox {
    Sandbox {
        root: root.to_path_buf(),
        container_id: id.into(),
        sandbox_id: id.into(),
        kind: SandboxKind::Standalone,
        bundle: root.into(),
        annotations: Default::default(),
        container_count: count,
        status: Status::Running,
        pid: None,
        rootfs_overlay: RootfsOverlay::None,
    }
}

#[tokio::test]
async fn failing_runsc_reports_exit_status_and_stderr() {
    if !require(
        "failing_runsc_reports_exit_status_and_stderr",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(tmp.path(), &[]);
    let err = rt
        .checkpoint(
            &phantom(tmp.path(), "vanished", 1),
            &tmp.path().join("img"),
            &CheckpointOpts::default(),
        )
        .await
        .unwrap_err();
    eprintln!("{err}");
    match err {
        RuntimeError::Runsc(runsc::Error::CommandFailed {
            op, status, stderr, ..
        }) => {
            assert_eq!(op, "checkpoint");
            assert_eq!(status, Exit::Code(128));
            assert!(stderr.contains("does not exist"), "{stderr}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_multi_container_sandbox_is_counted_and_refused() {
    if !require(
        "real_multi_container_sandbox_is_counted_and_refused",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let pod = unique_id("pod");
    let app = unique_id("app");
    let sandbox_bundle = Bundle::counter_with_annotations(&[
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("io.kubernetes.cri.sandbox-id", &pod),
    ])
    .unwrap();
    let app_bundle = Bundle::counter_with_annotations(&[
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", &pod),
    ])
    .unwrap();
    let _pod = CounterSandbox::start_bundle(
        &root,
        &pod,
        &tmp.path().join("pod.log"),
        &[],
        sandbox_bundle,
    )
    .unwrap();
    let _app =
        CounterSandbox::start_bundle(&root, &app, &tmp.path().join("app.log"), &[], app_bundle)
            .unwrap();
    let rt = runtime(&root, &[]);
    let sb = rt
        .resolve(&Target::Runsc { id: app.clone() })
        .await
        .unwrap();
    assert_eq!(sb.sandbox_id, pod);
    assert_eq!(sb.container_count, 2);
    assert_eq!(
        sb.annotations.get("io.kubernetes.cri.sandbox-id"),
        Some(&pod)
    );
    let err = rt
        .checkpoint(&sb, &tmp.path().join("img"), &CheckpointOpts::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err}");
    eprintln!("{err}");
    // Refused before runsc ran: both containers still run.
    assert_eq!(rt.state(None, &app).await.unwrap().status, Status::Running);
    assert_eq!(rt.state(None, &pod).await.unwrap().status, Status::Running);
}

#[tokio::test]
async fn multi_container_sandbox_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(tmp.path(), &[]);
    let err = rt
        .checkpoint(
            &phantom(tmp.path(), "pod", 2),
            &tmp.path().join("img"),
            &CheckpointOpts::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("2 containers"), "{err}");
}

#[tokio::test]
async fn hanging_runsc_times_out() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("runsc-hangs");
    std::fs::write(&bin, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rt = RunscRuntime::new(Runsc::builder().binary(&bin).root(tmp.path()).build());
    let started = Instant::now();
    let err = rt
        .checkpoint(
            &phantom(tmp.path(), "c", 1),
            &tmp.path().join("img"),
            &CheckpointOpts {
                timeout: Some(Duration::from_millis(500)),
                job_dir: Some(tmp.path().join("job")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Runsc(runsc::Error::CommandTimeout { .. })
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn restore_refuses_a_directory_without_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = runtime(tmp.path(), &[]);
    let err = rt
        .restore(&RestoreRequest {
            id: "r1".into(),
            bundle: tmp.path().into(),
            image_dir: tmp.path().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Image { .. }), "{err}");
    let err = rt
        .restore(&RestoreRequest {
            id: "bad/id".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidRequest(_)), "{err}");
}
