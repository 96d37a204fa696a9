//! Unit tests of the client against stand-in binaries (`/bin/true`, `/bin/false`, scripts that
//! echo their argv, fail with a message, or hang), as the `runc` crate's tests do.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A script that prints each argument on its own line.
fn echo_args(dir: &Path) -> PathBuf {
    script(dir, "echo-args", r#"for a in "$@"; do echo "$a"; done"#)
}

#[tokio::test]
async fn true_binary_succeeds() {
    let c = Runsc::builder().binary("/bin/true").build();
    c.delete("c1", &DeleteOpts::default()).await.unwrap();
    c.start("c1").await.unwrap();
    c.kill("c1", "KILL", &KillOpts::default()).await.unwrap();
}

#[tokio::test]
async fn false_binary_is_command_failed_with_status() {
    let c = Runsc::builder().binary("/bin/false").build();
    let err = c
        .delete("c1", &DeleteOpts { force: true })
        .await
        .unwrap_err();
    match err {
        Error::CommandFailed { op, status, .. } => {
            assert_eq!(op, "delete");
            assert_eq!(status, Exit::Code(1));
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn missing_binary_is_spawn_error() {
    let c = Runsc::builder().binary("/nonexistent/runsc").build();
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert_eq!(err.to_string(), "cannot start /nonexistent/runsc");
}

#[tokio::test]
async fn global_flags_come_before_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let bin = echo_args(dir.path());
    let c = Runsc::builder()
        .binary(&bin)
        .root("/run/r")
        .platform("ptrace")
        .network("none")
        .flag("--overlay2=root:memory")
        .debug_log("/tmp/dbg/")
        .build();
    // `list -quiet` prints our argv back, one per line.
    let ids = c.list_ids().await.unwrap();
    assert_eq!(
        ids,
        vec![
            "--root=/run/r",
            "--platform=ptrace",
            "--network=none",
            "--debug",
            "--debug-log=/tmp/dbg/",
            "--overlay2=root:memory",
            "list",
            "-quiet"
        ]
    );
    let other = c.with_root("/other").list_ids().await.unwrap();
    assert_eq!(other[0], "--root=/other");
}

#[tokio::test]
async fn pause_and_resume_name_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv");
    let bin = script(
        dir.path(),
        "rec",
        &format!(r#"echo "$@" >> {}"#, log.display()),
    );
    let c = Runsc::builder().binary(&bin).root("/r").build();
    c.pause("sb").await.unwrap();
    c.resume("sb").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "--root=/r pause sb\n--root=/r resume sb\n"
    );
}

#[tokio::test]
async fn checkpoint_passes_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv");
    let bin = script(
        dir.path(),
        "rec",
        &format!(r#"for a in "$@"; do echo "$a"; done > {}"#, log.display()),
    );
    let c = Runsc::builder().binary(&bin).root("/r").build();
    let img = dir.path().join("img");
    c.checkpoint(
        "c1",
        &CheckpointOpts {
            image_path: img.clone(),
            leave_running: true,
            compression: Some("none".into()),
            exclude_committed_zero_pages: true,
            direct: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(img.is_dir(), "image dir is created before runsc runs");
    let argv = std::fs::read_to_string(&log).unwrap();
    let argv: Vec<&str> = argv.lines().collect();
    let image_flag = format!("--image-path={}", img.display());
    assert_eq!(
        argv,
        vec![
            "--root=/r",
            "checkpoint",
            image_flag.as_str(),
            "--leave-running",
            "--compression=none",
            "--exclude-committed-zero-pages",
            "--direct",
            "c1"
        ]
    );
}

#[tokio::test]
async fn restore_output_goes_to_the_log_file_and_failures_quote_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "fail",
        r#"echo "restoring: some reason" >&2; exit 128"#,
    );
    let log = dir.path().join("sandbox.log");
    std::fs::write(&log, "old output\n").unwrap();
    let c = Runsc::builder().binary(&bin).build();
    let err = c
        .restore(
            "new",
            &RestoreOpts {
                image_path: dir.path().into(),
                bundle: dir.path().into(),
                detach: true,
                log_file: Some(log.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    match err {
        Error::CommandFailed { status, stderr, .. } => {
            assert_eq!(status, Exit::Code(128));
            // Only what this call wrote, not the older content of the log.
            assert_eq!(stderr, "restoring: some reason");
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn failing_runsc_reports_exit_status_and_bounded_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "noisy",
        r#"i=0; while [ $i -lt 2000 ]; do echo "noise line $i" >&2; i=$((i+1)); done; echo "final reason" >&2; exit 2"#,
    );
    let c = Runsc::builder().binary(&bin).build();
    let err = c.state("c1").await.unwrap_err();
    match &err {
        Error::CommandFailed { status, stderr, .. } => {
            assert_eq!(*status, Exit::Code(2));
            assert!(stderr.len() <= error::MAX_ERROR_OUTPUT + 3);
            assert!(stderr.ends_with("final reason"));
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn hanging_runsc_times_out_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    let bin = script(
        dir.path(),
        "hang",
        &format!("sleep 30; touch {}", marker.display()),
    );
    let c = Runsc::builder()
        .binary(&bin)
        .timeout(Duration::from_millis(300))
        .build();
    let started = std::time::Instant::now();
    let err = c.state("c1").await.unwrap_err();
    assert!(
        matches!(&err, Error::CommandTimeout { op, after } if op == "state" && *after == Duration::from_millis(300)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Per-call timeouts override the client's.
    let err = c
        .checkpoint(
            "c1",
            &CheckpointOpts {
                image_path: dir.path().join("img"),
                timeout: Some(Duration::from_millis(100)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CommandTimeout { after, .. } if *after == Duration::from_millis(100)),
        "{err}"
    );
    assert_eq!(err.to_string(), "runsc checkpoint timed out after 100ms");
}

#[tokio::test]
async fn durable_checkpoint_leaves_its_outcome_in_the_job_dir() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "ck",
        r#"echo "checkpoint failed: busy" >&2; exit 7"#,
    );
    let c = Runsc::builder().binary(&bin).root("/r").build();
    let job_dir = dir.path().join("job");
    let err = c
        .checkpoint(
            "c1",
            &CheckpointOpts {
                image_path: dir.path().join("img"),
                job_dir: Some(job_dir.clone()),
                timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CommandFailed { status: Exit::Code(7), stderr, .. } if stderr == "checkpoint failed: busy"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(job_dir.join("exit-status"))
            .unwrap()
            .trim(),
        "7"
    );
    let argv: Vec<String> =
        serde_json::from_slice(&std::fs::read(job_dir.join("argv")).unwrap()).unwrap();
    assert_eq!(argv[1], "--root=/r");
    assert_eq!(argv[2], "checkpoint");
    // A re-attached handle reads the same outcome.
    let mut again = DurableJob::attach(&job_dir).unwrap();
    let outcome = again.outcome().unwrap().unwrap();
    assert_eq!(outcome.code, 7);
}

#[tokio::test]
async fn version_output_is_parsed_and_garbage_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = script(
        dir.path(),
        "v",
        r#"echo "runsc version 0.0~20221219.0"; echo "spec: 1.0.2-dev""#,
    );
    let v = Runsc::builder()
        .binary(&good)
        .build()
        .version()
        .await
        .unwrap();
    assert_eq!(v.release_date, Some(20221219));
    let bad = script(dir.path(), "b", "echo hello");
    let err = Runsc::builder()
        .binary(&bad)
        .build()
        .version()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
}

#[tokio::test]
async fn help_is_read_despite_exit_128() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "h",
        "echo 'checkpoint [flags] <container id>' >&2; printf '  -image-path string\\n    \\tdir\\n  -leave-running\\n    \\trestart\\n' >&2; exit 128",
    );
    let c = Runsc::builder().binary(&bin).build();
    let caps = c.capabilities().await.unwrap();
    assert!(caps.leave_running);
    assert!(!caps.compression);
}

#[tokio::test]
async fn list_json_null_is_empty_and_state_json_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "l",
        r#"case "$1" in list) echo null;; state) echo '{"id":"c1","status":"stopped","pid":-1,"bundle":"/b"}';; esac"#,
    );
    let c = Runsc::builder().binary(&bin).build();
    assert!(c.list().await.unwrap().is_empty());
    let s = c.state("c1").await.unwrap();
    assert_eq!(s.status, Status::Stopped);
    assert_eq!(s.bundle, PathBuf::from("/b"));
}
