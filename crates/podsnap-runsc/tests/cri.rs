//! Pods under runsc through a real containerd's CRI, driven as the kubelet drives it: the
//! runtime handler `runsc` is containerd's runc v2 shim with podsnap-runsc as its
//! `BinaryName`. A pod of a pause container and two app containers runs; both counters
//! advance in the CRI log files; `ContainerStatus`, `ExecSync`, a container restart,
//! `StopPodSandbox` and `RemovePodSandbox` behave as the kubelet expects, and nothing is left
//! behind (no runsc state, no waiter process).
//!
//! Gated by podsnap-testkit's `require` (root, runsc, containerd). The tests of this file run
//! one at a time (each starts a containerd and sandboxes; the machine has two cores).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use podsnap_runsc::pod::WAITER_ARG;
use podsnap_testkit::cri::api::ContainerState;
use podsnap_testkit::cri::{self, CriContainerd, CriSettings};
use podsnap_testkit::runsc::COUNTER_SCRIPT;
use podsnap_testkit::{require, Need};

const WRAPPER: &str = env!("CARGO_BIN_EXE_podsnap-runsc");

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A containerd whose CRI runs podsnap-runsc in front of `runsc`, with private markers.
fn start(scratch: &Path, runsc: &Path) -> CriContainerd {
    let config = scratch.join("podsnap.toml");
    std::fs::write(
        &config,
        format!(
            "runsc = \"{}\"\nsocket = \"{}\"\nmarker_dir = \"{}\"\nkubelet_root = \"{}\"\n{}",
            runsc.display(),
            scratch.join("podsnapd.sock").display(),
            scratch.join("markers").display(),
            scratch.join("kubelet").display(),
            // Set PODSNAP_TEST_RUNSC_DEBUG=DIR/ to get runsc's debug logs there.
            std::env::var("PODSNAP_TEST_RUNSC_DEBUG")
                .map(|d| format!("runsc_flags = [\"--debug\", \"--debug-log={d}\"]\n"))
                .unwrap_or_default()
        ),
    )
    .unwrap();
    CriContainerd::start(
        &CriSettings::new(WRAPPER),
        &[("PODSNAP_CONFIG", config.as_os_str())],
    )
    .expect("containerd with the CRI plugin starts")
}

/// Live waiter processes whose record is under `marker_dir`.
fn waiters(marker_dir: &Path) -> Vec<i32> {
    let dir = marker_dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.get(1) == Some(&WAITER_ARG.as_bytes())
                && args.get(2).is_some_and(|a| a.starts_with(dir.as_bytes()))
        })
        .collect()
}

/// The container ids runsc still knows under `root`.
fn runsc_ids(runsc: &Path, root: &Path) -> Vec<String> {
    let out = std::process::Command::new(runsc)
        .arg(format!("--root={}", root.display()))
        .args(["list", "-quiet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Each container counts from 0 in its CRI log (stdout, complete lines) and runs.
fn count_from_zero_in_cri_logs(c: &CriContainerd, containers: &[(&String, &PathBuf)]) {
    for (_, log) in containers {
        cri::wait_for_log_count(log, 3, Duration::from_secs(60)).unwrap();
        let counts = cri::log_counts(log);
        assert_eq!(counts[..3], [0, 1, 2], "{}", log.display());
        // Every line is in the CRI format, on stdout, complete.
        let lines = cri::read_log(log).unwrap();
        assert!(lines.iter().all(|l| l.stream == "stdout" && l.tag == "F"));
    }
    for (id, _) in containers {
        let st = c.container_status(id).unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
        assert!(st.log_path.ends_with(".log"), "{st:?}");
    }
}

/// ExecSync: output of both streams and the exit code, in the container's own rootfs.
fn exec_sync_reports_both_streams_and_the_exit_code(c: &CriContainerd, id: &str) {
    let r = c
        .exec_sync(
            id,
            &["/bin/sh", "-c", "echo out; ls /bin/busybox >&2; exit 3"],
            Duration::from_secs(30),
        )
        .expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "/bin/busybox\n");
    assert_eq!(r.exit_code, 3);
}

/// Runs the whole kubelet sequence on one host-network pod; `two_apps`: whether a second app
/// container runs beside the one that is restarted. (Pods with a CNI network namespace are
/// refused by runsc 20240729 on this kernel; see the wrapper's `pod` module.)
fn pod_lifecycle(runsc: &Path, two_apps: bool) {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let c = start(s, runsc);
    let logs = s.join("pod-logs");
    let pod = cri::pod_config("podsnap-test", "counters", &logs, true, &[]);
    let pod_id = c.run_pod(&pod).expect("RunPodSandbox");

    let a = c
        .run_container(
            &pod_id,
            &pod,
            &cri::container_config("counter-a", 0, COUNTER_SCRIPT),
        )
        .expect("the first app container starts");
    let (b, log_b) = if two_apps {
        let b = c
            .run_container(
                &pod_id,
                &pod,
                &cri::container_config("counter-b", 0, COUNTER_SCRIPT),
            )
            .expect("the second app container starts");
        (b, logs.join("counter-b/0.log"))
    } else {
        (a.clone(), logs.join("counter-a/0.log"))
    };
    let log_a = logs.join("counter-a/0.log");
    count_from_zero_in_cri_logs(&c, &[(&a, &log_a), (&b, &log_b)]);
    exec_sync_reports_both_streams_and_the_exit_code(&c, &b);

    // A container restart, as the kubelet does it: stop, then a new container of the same
    // name with the next attempt number in the same pod.
    c.stop_container(&a, Duration::from_secs(2))
        .expect("StopContainer");
    let st = c
        .wait_container_state(&a, ContainerState::ContainerExited, Duration::from_secs(30))
        .unwrap();
    assert_ne!(
        st.exit_code, 0,
        "a stopped counter exits by a signal: {st:?}"
    );
    let stopped_at = cri::log_counts(&log_a).last().copied().unwrap();
    let a1 = c
        .run_container(
            &pod_id,
            &pod,
            &cri::container_config("counter-a", 1, COUNTER_SCRIPT),
        )
        .expect("the restarted container starts");
    let log_a1 = logs.join("counter-a/1.log");
    cri::wait_for_log_count(&log_a1, 2, Duration::from_secs(60)).unwrap();
    c.remove_container(&a)
        .expect("RemoveContainer of the exited one");
    if two_apps {
        // The other container went on counting meanwhile; the stopped one stays stopped.
        let b_now = cri::log_counts(&log_b).last().copied().unwrap();
        cri::wait_for_log_count(&log_b, b_now + 2, Duration::from_secs(30)).unwrap();
        assert_eq!(
            c.container_status(&b).unwrap().state,
            ContainerState::ContainerRunning as i32
        );
    }
    assert_eq!(cri::log_counts(&log_a).last().copied(), Some(stopped_at));
    assert_eq!(
        c.container_status(&a1).unwrap().state,
        ContainerState::ContainerRunning as i32
    );

    // StopPodSandbox stops every container; RemovePodSandbox removes everything.
    c.stop_pod(&pod_id).expect("StopPodSandbox");
    let running: Vec<&String> = if two_apps { vec![&a1, &b] } else { vec![&a1] };
    for id in running {
        let st = c.container_status(id).unwrap();
        assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    }
    c.remove_pod(&pod_id).expect("RemovePodSandbox");
    assert!(c.list_pods().unwrap().is_empty());
    assert!(c.list_containers().unwrap().is_empty());
    assert_eq!(runsc_ids(runsc, &c.runsc_root()), Vec::<String>::new());
    assert_eq!(waiters(&s.join("markers")), Vec::<i32>::new());
}

fn system_runsc() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("runsc"))
        .find(|p| p.is_file())
        .expect("runsc on PATH")
}

#[test]
fn host_network_pod_of_two_app_containers_runs_through_the_cri() {
    if !require(
        "cri_host_network_pod",
        &[Need::Root, Need::Runsc, Need::Containerd],
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    pod_lifecycle(&system_runsc(), true);
}

/// runsc 20221219 runs a pod of one app container through the CRI. Not two: it puts the
/// app containers' processes in one pid namespace whose init is the first container's, so
/// when one app container exits, runsc kills the other's processes too (seen in its debug
/// log: "Init process terminating, killing namespace").
#[test]
fn pod_of_one_app_container_runs_through_the_cri_on_runsc_20221219() {
    if !require("cri_pod_20221219", &[Need::Root, Need::Containerd]) {
        return;
    }
    let Some(runsc) = podsnap_testkit::runsc::Release::R20221219.required() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    pod_lifecycle(&runsc, false);
}

/// A binary built next to the wrapper (`make test` builds every bin first).
fn sibling_binary(name: &str) -> PathBuf {
    let p = Path::new(WRAPPER).parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before this test",
        p.display()
    );
    p
}

/// A counter that also appends each count to `/data.txt` in its rootfs, to `/vol/NAME.txt`
/// on the pod's emptyDir volume `vol` and to `/dev/shm/NAME.txt`.
fn file_counter(name: &str) -> String {
    format!(
        r#"i=0; while :; do echo "Count: $i"; echo "$i" >> /data.txt; echo "$i" >> /vol/{name}.txt; echo "$i" >> /dev/shm/{name}.txt; i=$((i+1)); sleep 1; done"#
    )
}

/// The kubelet's part for emptyDir volume `vol`: its host directory (the kubelet makes it
/// before it asks for the pod) and the app container's bind mount of it at `/vol`.
fn with_empty_dir(
    scratch: &Path,
    pod: &cri::api::PodSandboxConfig,
    mut config: cri::api::ContainerConfig,
) -> cri::api::ContainerConfig {
    let dir = empty_dir(scratch, pod);
    std::fs::create_dir_all(&dir).unwrap();
    config.mounts.push(cri::api::Mount {
        container_path: "/vol".into(),
        host_path: dir.display().to_string(),
        ..Default::default()
    });
    config
}

/// `<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/vol` of `pod`.
fn empty_dir(scratch: &Path, pod: &cri::api::PodSandboxConfig) -> PathBuf {
    let uid = &pod.metadata.as_ref().unwrap().uid;
    scratch
        .join("kubelet/pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/vol")
}

/// The numbers in `path` inside container `id`, one per line.
fn lines_of(c: &CriContainerd, id: &str, path: &str) -> Vec<u64> {
    let r = c
        .exec_sync(id, &["/bin/cat", path], Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        r.exit_code,
        0,
        "cat {path}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `podsnapctl checkpoint --pod NAMESPACE/NAME --stop|--resume`; returns the snapshot id.
fn checkpoint_pod(sock: &Path, pod: &str, post: &str) -> String {
    let out = std::process::Command::new(sibling_binary("podsnapctl"))
        .arg(format!("--socket={}", sock.display()))
        .args(["checkpoint", "--pod", pod, post])
        .output()
        .unwrap();
    assert!(out.status.success(), "podsnapctl checkpoint --pod: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string()
}

/// The app containers of the test pods.
const POD_CONTAINERS: [&str; 2] = ["counter-a", "counter-b"];

/// A checkpointed pod: its snapshot, and each container's last count before the checkpoint.
struct Source {
    snapshot: String,
    last: Vec<u64>,
}

/// The source pod (`tenant-a/counters`, two file counters) runs, is checkpointed with
/// `podsnapctl checkpoint --pod --stop` and removed as the kubelet would; then its emptyDir
/// is emptied, so that what comes back can only come from the snapshot.
fn checkpoint_source_pod(c: &CriContainerd, sock: &Path, scratch: &Path) -> Source {
    let (names, logs) = (POD_CONTAINERS, scratch.join("pod-logs"));
    // The source pod.
    let pod = cri::pod_config("tenant-a", "counters", &logs.join("src"), true, &[]);
    let pod_id = c.run_pod(&pod).expect("RunPodSandbox");
    for name in names {
        let config = cri::container_config(name, 0, &file_counter(name));
        c.run_container(&pod_id, &pod, &with_empty_dir(scratch, &pod, config))
            .expect("app container starts");
    }
    for name in names {
        cri::wait_for_log_count(
            &logs.join(format!("src/{name}/0.log")),
            3,
            Duration::from_secs(60),
        )
        .unwrap();
    }
    // A checkpoint that resumes the pod (its sandbox is paused while its volumes are packed)
    // leaves it counting.
    let log_a = logs.join(format!("src/{}/0.log", names[0]));
    let at = *cri::log_counts(&log_a).last().unwrap();
    checkpoint_pod(sock, "tenant-a/counters", "--resume");
    cri::wait_for_log_count(&log_a, at + 3, Duration::from_secs(30))
        .expect("the pod counts on after a --resume checkpoint");
    let snapshot = checkpoint_pod(sock, "tenant-a/counters", "--stop");
    let last: Vec<u64> = names
        .iter()
        .map(|n| {
            *cri::log_counts(&logs.join(format!("src/{n}/0.log")))
                .last()
                .unwrap()
        })
        .collect();
    // The checkpoint stopped the sandbox: the kubelet's StopPodSandbox/RemovePodSandbox of
    // the source pod still succeed.
    c.stop_pod(&pod_id)
        .expect("StopPodSandbox of the checkpointed pod");
    // The containers' exits reach the CRI as events; until they are handled it says a
    // container is still running, and the kubelet retries RemovePodSandbox: so does this.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = c.remove_pod(&pod_id) {
        assert!(
            std::time::Instant::now() < deadline,
            "RemovePodSandbox of the checkpointed pod: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let old = empty_dir(scratch, &pod);
    for name in names {
        std::fs::remove_file(old.join(format!("{name}.txt"))).unwrap();
    }
    Source { snapshot, last }
}

/// The restored pod comes up with every container continuing its count and its files on
/// the rootfs, the emptyDir and /dev/shm complete.
fn restored_pod_continues(c: &CriContainerd, scratch: &Path, source: &Source) {
    let (names, snapshot, last) = (POD_CONTAINERS, &source.snapshot, &source.last);
    let logs = scratch.join("pod-logs");
    // The restored pod: same namespace, containers of the same names, created in order.
    let pod = cri::pod_config(
        "tenant-a",
        "counters-restored",
        &logs.join("dst"),
        true,
        &[("podsnap.dev/restore-from", snapshot.as_str())],
    );
    // The kubelet mounts the new pod's (empty) volumes before it asks for the pod.
    std::fs::create_dir_all(empty_dir(scratch, &pod)).unwrap();
    let pod_id = c.run_pod(&pod).expect("RunPodSandbox of the restored pod");
    // The snapshot's emptyDir contents are in the new pod's directory before any app
    // container exists (checked once they run: a pod whose restore is left half done
    // cannot be stopped).
    let unpacked: Vec<String> = names
        .iter()
        .map(|name| {
            std::fs::read_to_string(empty_dir(scratch, &pod).join(format!("{name}.txt")))
                .unwrap_or_default()
        })
        .collect();
    let ids: Vec<String> = names
        .iter()
        .map(|name| {
            let config = cri::container_config(name, 0, &file_counter(name));
            c.run_container(&pod_id, &pod, &with_empty_dir(scratch, &pod, config))
                .unwrap_or_else(|e| panic!("restored {name} starts: {e}"))
        })
        .collect();
    for (name, on_host) in names.iter().zip(&unpacked) {
        assert!(on_host.starts_with("0\n1\n2\n"), "{name}: {on_host:?}");
    }
    for ((name, id), before) in names.iter().zip(&ids).zip(last) {
        let log = logs.join(format!("dst/{name}/0.log"));
        cri::wait_for_log_count(&log, before + 2, Duration::from_secs(60)).unwrap();
        let counts = cri::log_counts(&log);
        // It continued where it was: no fresh start from 0.
        assert!(
            counts[0] > 0 && counts[0] <= before + 1,
            "{name}: {counts:?} after {before}"
        );
        assert!(
            counts.windows(2).all(|w| w[1] == w[0] + 1),
            "{name}: {counts:?}"
        );
        let st = c.container_status(id).unwrap();
        assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
        // The rootfs file written before the checkpoint is all there, and goes on.
        let lines = lines_of(c, id, "/data.txt");
        assert_eq!(
            lines[..=*before as usize],
            (0..=*before).collect::<Vec<_>>()[..],
            "{name}"
        );
        // So are the files on the emptyDir and /dev/shm, outside the checkpoint: complete
        // from 0, one line a count (nothing written after the checkpoint came back with
        // them), and going on past the restore.
        let last_count = *counts.last().unwrap();
        for path in [format!("/vol/{name}.txt"), format!("/dev/shm/{name}.txt")] {
            let lines = lines_of(c, id, &path);
            assert_eq!(lines, (0..lines.len() as u64).collect::<Vec<_>>(), "{path}");
            assert!(
                lines.len() as u64 >= last_count,
                "{path}: {lines:?} (count {last_count})"
            );
        }
    }
    c.stop_pod(&pod_id).expect("StopPodSandbox");
    c.remove_pod(&pod_id).expect("RemovePodSandbox");
}

/// Refusals, as pod sandbox (or container) errors the kubelet shows, before anything runs.
fn refused_restores_fail_the_pod_sandbox(c: &CriContainerd, logs: &Path, snapshot: &str) {
    let refused = |ns: &str, snap: &str| {
        let pod = cri::pod_config(
            ns,
            "refused",
            &logs.join("refused"),
            true,
            &[("podsnap.dev/restore-from", snap)],
        );
        c.run_pod(&pod)
            .expect_err("RunPodSandbox must fail")
            .message()
            .to_string()
    };
    let e = refused("tenant-b", snapshot);
    assert!(
        e.contains("may not be restored from a snapshot of namespace tenant-a"),
        "{e}"
    );
    let e = refused("tenant-a", "20260101T000000Z-00000000");
    assert!(e.contains("NOT_FOUND"), "{e}");
}

/// A pod of two app containers is checkpointed with `podsnapctl checkpoint --pod --stop`; a
/// new pod annotated `podsnap.dev/restore-from` comes up with both containers restored by
/// name: RUNNING, their counters continuing in the new pod's CRI log files, their files on
/// the rootfs, on an emptyDir volume (a host directory under the kubelet's root, bind
/// mounted, outside the checkpoint: emptied after the checkpoint) and on /dev/shm (the CRI's
/// per-sandbox tmpfs) complete. A pod of another namespace and an unknown snapshot are
/// refused.
#[test]
fn annotated_pod_comes_up_with_every_container_restored() {
    if !require(
        "cri_pod_restore",
        &[Need::Root, Need::Runsc, Need::Containerd],
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let runsc = system_runsc();
    let help = std::process::Command::new(&runsc)
        .args(["checkpoint", "--help"])
        .output()
        .unwrap();
    let missing = (!String::from_utf8_lossy(&[help.stdout, help.stderr].concat())
        .contains("-compression"))
    .then(|| {
        format!(
            "{} cannot checkpoint pods (runsc 20240729 or later can)",
            runsc.display()
        )
    });
    if !podsnap_testkit::require_that("cri_pod_restore", missing) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let store = format!("file://{}", s.join("store").display());
    let c = start(s, &runsc);
    let daemon = podsnap_testkit::daemon::PodsnapdCmd::new(sibling_binary("podsnapd"), s, "node")
        .store(&store)
        .sock(s.join("podsnapd.sock"))
        .arg(format!(
            "--containerd-socket={}",
            c.containerd().socket().display()
        ))
        .spawn();
    let logs = s.join("pod-logs");
    let source = checkpoint_source_pod(&c, &daemon.sock, s);
    restored_pod_continues(&c, s, &source);
    refused_restores_fail_the_pod_sandbox(&c, &logs, &source.snapshot);
    assert_eq!(runsc_ids(&runsc, &c.runsc_root()), Vec::<String>::new());
    assert_eq!(waiters(&s.join("markers")), Vec::<i32>::new());
    drop(daemon);
}
