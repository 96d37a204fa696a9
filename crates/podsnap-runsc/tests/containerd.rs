//! podsnap-runsc under a real containerd 1.6 + runc v2 shim + runsc (20221219 here), as
//! `ctr run --runc-binary`: a container without the annotation runs exactly as with plain
//! runsc; one with `podsnap.dev/restore-from` comes up restored from a runsc checkpoint that a
//! fake podsnapd hands over (the daemon's own path is tested end to end elsewhere).
//!
//! Gated by podsnap-testkit's `require` (root, runsc, containerd). One test per file's process
//! because the wrapper's config reaches it through containerd's environment (containerd
//! passes its environment to the shim, the shim to its runsc): the test sets
//! `PODSNAP_CONFIG` before starting its private containerd.

mod common;

use std::path::Path;
use std::time::Duration;

use podsnap_testkit::containerd::Containerd;
use podsnap_testkit::runsc::{self as tk, COUNTER_SCRIPT};
use podsnap_testkit::{require, Need};

const WRAPPER: &str = env!("CARGO_BIN_EXE_podsnap-runsc");

fn task_status(c: &Containerd, ns: &str, id: &str) -> Option<String> {
    let out = c.ctr(ns, &["task", "ls"]).ok()?;
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.get(2).map(|s| s.to_string()))
}

#[test]
fn wrapper_runs_plain_containers_like_runsc_and_restores_annotated_ones() {
    if !require(
        "wrapper_under_containerd",
        &[Need::Root, Need::Runsc, Need::Containerd],
    ) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let runsc = which("runsc").expect("runsc on PATH");
    // The wrapper's config: the real runsc with --network=none (ctr's spec has a network
    // namespace without a path), a socket served by the fake daemon below, private markers.
    std::fs::write(
        s.join("podsnap.toml"),
        format!(
            "runsc = \"{}\"\nrunsc_flags = [\"--network=none\"]\nsocket = \"{}\"\nmarker_dir = \"{}\"\n",
            runsc.display(),
            s.join("podsnapd.sock").display(),
            s.join("markers").display()
        ),
    )
    .unwrap();
    // Edition 2021, and this file's only test, before any thread reads the environment.
    std::env::set_var("PODSNAP_CONFIG", s.join("podsnap.toml"));
    let c = Containerd::start().expect("containerd starts");
    let t = Case {
        c: &c,
        ns: "podsnap-runsc-test",
        scratch: s,
        rootfs: s.join("rootfs"),
    };
    tk::busybox_rootfs(&t.rootfs).unwrap();
    let (wrapped_id, wrapped_log) = plain_and_wrapped_run_alike(&t);
    annotated_container_comes_up_restored(&t, &wrapped_id, &wrapped_log);

    // Step 3: a snapshot the daemon refuses: ctr reports the daemon's reason.
    let refused_id = tk::unique_id("refused");
    let err = t
        .ctr_run_wrapped(&refused_id, "podsnap.dev/restore-from=snap-missing", None)
        .expect_err("a refused restore fails the create");
    assert!(
        err.contains("cannot restore container") && err.contains("snapshot snap-missing not found"),
        "{err}"
    );
    c.remove(t.ns, &refused_id);
}

/// The test's containerd, namespace, scratch dir and busybox rootfs.
struct Case<'a> {
    c: &'a Containerd,
    ns: &'a str,
    scratch: &'a Path,
    rootfs: std::path::PathBuf,
}

impl Case<'_> {
    /// `ctr run -d` of a counter with podsnap-runsc as the runc binary and `annotation`.
    fn ctr_run_wrapped(
        &self,
        id: &str,
        annotation: &str,
        log: Option<&Path>,
    ) -> Result<String, String> {
        let runc_root = self.c.runc_root().display().to_string();
        let rootfs = self.rootfs.display().to_string();
        let log_uri = log.map(|l| format!("file://{}", l.display()));
        let mut args = vec![
            "run",
            "-d",
            "--rootfs",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-root",
            &runc_root,
        ];
        if let Some(uri) = &log_uri {
            args.extend(["--log-uri", uri]);
        }
        args.extend(["--runc-binary", WRAPPER, "--annotation", annotation]);
        args.extend([rootfs.as_str(), id, "/bin/sh", "-c", COUNTER_SCRIPT]);
        self.c.ctr(self.ns, &args)
    }
}

/// Step 1: plain runsc (the testkit's wrapper script) and podsnap-runsc, side by side, run the
/// same counter the same way. Returns the wrapped container's id and log; the plain one is
/// removed.
fn plain_and_wrapped_run_alike(t: &Case) -> (String, std::path::PathBuf) {
    let (c, ns, s) = (t.c, t.ns, t.scratch);
    let plain_id = tk::unique_id("plain");
    let plain_log = s.join("plain.log");
    c.run_counter(ns, &plain_id, &t.rootfs, &plain_log)
        .expect("plain runsc counter runs");
    let wrapped_id = tk::unique_id("wrapped");
    let wrapped_log = s.join("wrapped.log");
    c.run_container(
        ns,
        &wrapped_id,
        &t.rootfs,
        Some(Path::new(WRAPPER)),
        &wrapped_log,
        &["/bin/sh", "-c", COUNTER_SCRIPT],
    )
    .expect("podsnap-runsc counter runs");
    tk::wait_for_count(&plain_log, 2, Duration::from_secs(30)).unwrap();
    tk::wait_for_count(&wrapped_log, 2, Duration::from_secs(30)).unwrap();
    assert_eq!(task_status(c, ns, &plain_id).as_deref(), Some("RUNNING"));
    assert_eq!(task_status(c, ns, &wrapped_id).as_deref(), Some("RUNNING"));
    // Both count from 0 in steps of 1: the wrapper changed nothing.
    for log in [&plain_log, &wrapped_log] {
        let counts = tk::counts(log);
        assert_eq!(counts[..3], [0, 1, 2], "{}", log.display());
    }
    // runsc sees the wrapped container under the shim's root, like the plain one.
    let list = tk::RunscCmd::new(&c.runsc_root(ns)).run(&["list"]).unwrap();
    assert!(
        list.contains(&wrapped_id) && list.contains(&plain_id),
        "{list}"
    );
    c.remove(ns, &plain_id);
    (wrapped_id, wrapped_log)
}

/// Step 2, restore through containerd: checkpoint the wrapped counter with runsc under the shim's
/// runsc root (containerd's own checkpoint path does not work with runsc), serve its image
/// from a fake PrepareRestore, and `ctr run` a container with the same spec plus the
/// annotation: it continues where the checkpoint stopped.
fn annotated_container_comes_up_restored(t: &Case, wrapped_id: &str, wrapped_log: &Path) {
    let (c, ns, s) = (t.c, t.ns, t.scratch);
    let image = s.join("image");
    let image_arg = format!("--image-path={}", image.display());
    tk::RunscCmd::new(&c.runsc_root(ns))
        .run(&["checkpoint", &image_arg, wrapped_id])
        .expect("runsc checkpoint");
    let before = tk::last_count(wrapped_log).unwrap();
    c.remove(ns, wrapped_id);
    assert_eq!(task_status(c, ns, wrapped_id), None);
    let _daemon = common::fake_daemon::serve(&s.join("podsnapd.sock"), "snap-counter", &image);

    let restored_id = tk::unique_id("restored");
    let restored_log = s.join("restored.log");
    t.ctr_run_wrapped(
        &restored_id,
        "podsnap.dev/restore-from=snap-counter",
        Some(&restored_log),
    )
    .expect("annotated container comes up");
    let after = tk::wait_for_count(&restored_log, before + 2, Duration::from_secs(30)).unwrap();
    assert_eq!(task_status(c, ns, &restored_id).as_deref(), Some("RUNNING"));
    // It continued where the checkpoint stopped instead of starting from 0.
    let first = tk::first_count(&restored_log).unwrap();
    assert!(
        first > 0 && first >= before,
        "restored counter starts at {first}, source reached {before}"
    );
    assert!(after > first);
    c.remove(ns, &restored_id);
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
