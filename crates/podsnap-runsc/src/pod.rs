//! Kubernetes pods through containerd's runc v2 shim: what the wrapper does so that a pod's
//! app containers (runsc sub-containers) run, exit and get cleaned up as the shim expects.
//!
//! The shim treats every container like a runc container: it runs `create` with the
//! container's stdio pipes and `--pid-file`, then `start` through a command whose output it
//! reads until EOF, and it learns that the container exited when the pid from the pid file
//! exits (it is the children's subreaper). runsc differs for sub-containers in two ways:
//! `runsc start` hands its own stdin/stdout/stderr to the sandbox, which keeps them for the
//! container's life (so the shim's read of `start`'s output never ends: `StartContainer`
//! hangs), and `create` writes the *sandbox's* pid, shared by every container of the pod.
//!
//! So, for an app container (CRI annotation `io.kubernetes.cri.container-type=container`):
//!
//! - `create` runs `runsc create` as a child, then spawns a **waiter**: this binary again
//!   (argv[1] = [`WAITER_ARG`]) in its own process group, inheriting the shim's stdio for the
//!   container. Its pid replaces the sandbox's in the pid file, and a record of it is kept in
//!   `<marker_dir>/waiters/<root>/<id>/pid`. The wrapper exits; the waiter becomes the shim's
//!   child (subreaper), the container's "init" process as far as the shim knows.
//! - `start` runs `runsc start` with the waiter's stdio (reopened through
//!   `/proc/<waiter>/fd/{0,1,2}`) instead of its own, so the shim's pipe sees EOF when the
//!   wrapper exits; then it writes `go` into the record. The waiter, which polls for that file,
//!   runs `runsc wait` and exits with the container's exit status (128+n for a signal, as
//!   `runsc wait` reports it, and 137 if the sandbox is gone). The shim reaps it: a
//!   `TaskExit` with the container's status.
//! - `delete` kills a waiter that is still there (a container deleted before it started) and
//!   removes the record.
//!
//! For every container, runsc's answers the shim cannot place are reworded: `kill` of a
//! container whose sandbox is gone (`connecting to control server ... connection refused`,
//! `sandbox is not running`) adds the shim's "container not running" (which it maps to
//! not-found, so `StopPodSandbox` proceeds), and `delete` that runsc refuses "without
//! --force" (runsc 20240729 keeps reporting a dead sandbox as running) is retried with
//! `--force`: the shim deletes only containers whose process it has seen exit.
//!
//! A pod sandbox (pause container) created without a network namespace (`hostNetwork`) gets
//! the configured `--network=none|host` on its `create`, `start` and `restore`, remembered in
//! `<marker_dir>/net/<root>/<id>`: runsc refuses to build its own network from the host's
//! namespace. Pods with a network namespace of their own (the CNI's) are passed through as
//! they are: runsc 20240729 then refuses them on kernels that show
//! `/proc/sys/net/core/rmem_default` in every network namespace, as this one does (it takes
//! that file for the sign of the host's namespace: "cannot run with network enabled in root
//! network namespace").

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::args::Invocation;
use crate::error::ContainerError;
use crate::marker::{self, Marker};
use crate::spec;

/// argv[1] of a waiter process.
pub const WAITER_ARG: &str = "podsnap-waiter";

/// How often a waiter looks for its `go` file between `create` and `start`.
const POLL: Duration = Duration::from_millis(25);

/// The exit status a waiter reports when `runsc wait` cannot tell (the sandbox is gone):
/// what a process killed with SIGKILL reports.
const GONE_STATUS: i32 = 137;

/// The waiter record of container `id` under runsc root `root`.
pub fn waiter_dir(marker_dir: &Path, root: &OsStr, id: &OsStr) -> PathBuf {
    record_path(marker_dir, "waiters", root, id)
}

/// The host-network record of pod sandbox `id` under runsc root `root`.
pub fn net_record(marker_dir: &Path, root: &OsStr, id: &OsStr) -> PathBuf {
    record_path(marker_dir, "net", root, id)
}

/// `<marker_dir>/<kind>/<root, escaped>/<id, escaped>`. Restore markers live at
/// `<marker_dir>/<root, escaped>/...`, and an escaped absolute root starts with `%2F`, so
/// the kinds never collide with them.
fn record_path(marker_dir: &Path, kind: &str, root: &OsStr, id: &OsStr) -> PathBuf {
    marker::path(&marker_dir.join(kind), root, id)
}

/// The global flag recorded for a host-network pod sandbox, if any.
pub fn recorded_network_flag(marker_dir: &Path, root: &OsStr, id: &OsStr) -> Option<String> {
    std::fs::read_to_string(net_record(marker_dir, root, id))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("--network="))
}

/// Records the network flag of a host-network pod sandbox.
pub fn record_network_flag(
    marker_dir: &Path,
    root: &OsStr,
    id: &OsStr,
    flag: &str,
) -> std::io::Result<()> {
    write_atomic(&net_record(marker_dir, root, id), flag.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("record paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// Why an app container or a pod sandbox may not be restored from a pod snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PodRestoreError {
    #[error("the OCI config has no {} annotation", spec::SANDBOX_ID)]
    NoSandboxId,
    #[error("cannot read the pod sandbox's restore marker")]
    ReadSandboxMarker(#[source] std::io::Error),
    #[error("its pod sandbox {sandbox} was not restored from snapshot {snapshot}")]
    SandboxNotRestored { sandbox: String, snapshot: String },
    #[error("its pod sandbox {sandbox} was restored from snapshot {restored}, not {snapshot}")]
    SandboxOfOtherSnapshot {
        sandbox: String,
        restored: String,
        snapshot: String,
    },
    #[error("cannot update the pod sandbox's restore marker")]
    UpdateSandboxMarker(#[source] std::io::Error),
    #[error(
        "the pod's namespace is unknown (no {} annotation)",
        spec::SANDBOX_NAMESPACE
    )]
    UnknownNamespace,
    #[error(
        "snapshot {snapshot} is of pod {namespace}/{name}: a pod of namespace {target} may not \
         be restored from a snapshot of namespace {namespace} (an operator may allow it with \
         cross_namespace_restores in the node's podsnap.toml)"
    )]
    OtherNamespace {
        snapshot: String,
        namespace: String,
        name: String,
        target: String,
    },
    #[error(
        "the container has no {} annotation to match it by",
        spec::CONTAINER_NAME
    )]
    NoContainerName,
    #[error("snapshot {snapshot} has no container {name:?} (its containers: {})", .containers.join(", "))]
    NoSuchContainer {
        snapshot: String,
        name: String,
        containers: Vec<String>,
    },
    #[error("container {name:?} of snapshot {snapshot} is already restored in this pod")]
    AlreadyRestored { snapshot: String, name: String },
    #[error(
        "snapshot {snapshot} restores its containers in the order {}: {next:?} comes before {name:?}",
        .containers.join(", ")
    )]
    OutOfOrder {
        snapshot: String,
        containers: Vec<String>,
        next: String,
        name: String,
    },
    #[error("every container of snapshot {snapshot} is already restored")]
    AllRestored { snapshot: String },
}

/// The restore marker of an app container of a pod being restored: the image its pod
/// sandbox was restored from (one image holds the whole pod), restored on `start` into the
/// created container (`runsc create` + `runsc restore`, what runsc 20240729 needs for a
/// sub-container). The container must be the snapshot's next one by name; `None` when a
/// container of that name was already restored in this pod (the kubelet restarting it: it
/// starts fresh). Refused unless the sandbox was restored from the same snapshot.
pub fn container_restore_marker(
    marker_dir: &Path,
    root: &OsStr,
    spec: &spec::Bundle,
    bundle: &Path,
) -> Result<Option<Marker>, PodRestoreError> {
    let snapshot = spec.restore_from.as_deref().unwrap_or_default();
    let sandbox = spec
        .sandbox_id
        .as_deref()
        .ok_or(PodRestoreError::NoSandboxId)?;
    let sandbox_path = marker::path(marker_dir, root, OsStr::new(sandbox));
    let mut sandbox_marker = marker::read(&sandbox_path)
        .map_err(PodRestoreError::ReadSandboxMarker)?
        .ok_or_else(|| PodRestoreError::SandboxNotRestored {
            sandbox: sandbox.to_string(),
            snapshot: snapshot.to_string(),
        })?;
    if sandbox_marker.snapshot_id != snapshot {
        return Err(PodRestoreError::SandboxOfOtherSnapshot {
            sandbox: sandbox.to_string(),
            restored: sandbox_marker.snapshot_id,
            snapshot: snapshot.to_string(),
        });
    }
    let name = spec.container_name.as_deref();
    if name.is_some_and(|n| sandbox_marker.restored.iter().any(|r| r == n)) {
        return Ok(None);
    }
    let snap = PodSnapshot {
        snapshot_id: snapshot.to_string(),
        namespace: String::new(),
        name: String::new(),
        containers: sandbox_marker.pod_containers.clone(),
    };
    // A snapshot that records no containers leaves the matching to runsc (by order).
    if !snap.containers.is_empty() {
        check_container_name(&snap, &sandbox_marker.restored, name)?;
    }
    sandbox_marker
        .restored
        .push(name.unwrap_or_default().to_string());
    marker::write(&sandbox_path, &sandbox_marker).map_err(PodRestoreError::UpdateSandboxMarker)?;
    Ok(Some(Marker::restore_on_start(
        snapshot,
        sandbox_marker.image_dir,
        bundle,
    )))
}

/// `create` of an app container: `runsc create` as a child, then the waiter. Returns the
/// exit code.
pub fn create_container(
    runsc: &Path,
    args: &[OsString],
    waiter_args: &[OsString],
    pid_file: Option<&OsStr>,
    record: &Path,
) -> Result<i32, ContainerError> {
    let status = Command::new(runsc)
        .args(args)
        .status()
        .map_err(|source| run_failed(runsc, source))?;
    if !status.success() {
        // runsc said why on stderr and in its log.
        return Ok(status.code().unwrap_or(1));
    }
    let _ = std::fs::remove_dir_all(record);
    std::fs::create_dir_all(record).map_err(|source| ContainerError::CreateRecord {
        record: record.to_path_buf(),
        source,
    })?;
    let me = std::env::current_exe().map_err(ContainerError::CurrentExe)?;
    use std::os::unix::process::CommandExt;
    let waiter = Command::new(me)
        .arg(WAITER_ARG)
        .arg(record)
        .arg(runsc)
        .args(waiter_args)
        .process_group(0)
        .spawn()
        .map_err(ContainerError::StartWaiter)?;
    let pid = waiter.id();
    write_atomic(&record.join("pid"), pid.to_string().as_bytes()).map_err(|source| {
        ContainerError::WriteRecord {
            record: record.to_path_buf(),
            source,
        }
    })?;
    if let Some(pid_file) = pid_file {
        let path = Path::new(pid_file);
        write_atomic(path, pid.to_string().as_bytes()).map_err(|source| {
            ContainerError::WritePidFile {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(0)
}

fn run_failed(runsc: &Path, source: std::io::Error) -> ContainerError {
    ContainerError::RunRunsc {
        runsc: runsc.to_path_buf(),
        source,
    }
}

/// The pid of the live waiter recorded at `record`, if it is there.
pub fn waiter_pid(record: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(record.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_waiter(pid, record).then_some(pid)
}

/// Whether `pid` is the waiter of `record` (its argv names the record): a recycled pid is
/// never mistaken for it.
fn is_waiter(pid: i32, record: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).skip(1);
    args.next() == Some(WAITER_ARG.as_bytes())
        && args.next() == Some(record.as_os_str().as_encoded_bytes())
}

/// `start` (or `restore`) of an app container: runsc runs with the waiter's stdio, then
/// the waiter is told to wait for the container. Returns the exit code.
pub fn start_container(
    runsc: &Path,
    args: &[OsString],
    record: &Path,
) -> Result<i32, ContainerError> {
    let pid = waiter_pid(record).ok_or_else(|| ContainerError::WaiterGone {
        record: record.to_path_buf(),
    })?;
    let open = |fd: u32, write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|source| ContainerError::OpenStdio { fd, source })
    };
    let (stdin, stdout, stderr) = (open(0, false)?, open(1, true)?, open(2, true)?);
    let status = Command::new(runsc)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .map_err(|source| run_failed(runsc, source))?;
    let verdict: &[u8] = if status.success() { b"go" } else { b"fail" };
    write_atomic(&record.join("go"), verdict).map_err(|source| ContainerError::SignalWaiter {
        record: record.to_path_buf(),
        source,
    })?;
    if !status.success() {
        return Err(ContainerError::RunscFailed {
            subcommand: args
                .iter()
                .find(|a| *a == "start" || *a == "restore")
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            status,
        });
    }
    Ok(0)
}

/// `delete`'s side: a waiter still there (the container never started) is killed and the
/// record removed.
pub fn forget_container(record: &Path) {
    if let Some(pid) = waiter_pid(record) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_dir_all(record);
}

/// The waiter's main: `podsnap-waiter RECORD RUNSC ID GLOBALS...`. Never returns.
///
/// After `go`, it runs `runsc GLOBALS wait ID` and exits with the container's status. A wait
/// that returns while `runsc state` still reports the container running in a live sandbox
/// is repeated: runsc 20221219 ends every sub-container's wait when any one of them exits.
pub fn waiter_main(args: &[OsString]) -> ! {
    let (Some(record), Some(runsc), Some(id)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("podsnap-runsc: usage: {WAITER_ARG} RECORD RUNSC ID ARGS...");
        std::process::exit(2);
    };
    let globals = &args[3..];
    let record = Path::new(record);
    let go = record.join("go");
    loop {
        match std::fs::read(&go) {
            Ok(v) if v == b"go" => break,
            Ok(_) => std::process::exit(GONE_STATUS),
            Err(_) if !record.exists() => std::process::exit(GONE_STATUS),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    let runsc_out = |sub: &str| {
        Command::new(runsc)
            .args(globals)
            .arg(sub)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .ok()
    };
    loop {
        let waited = runsc_out("wait");
        let code = waited
            .as_ref()
            .filter(|o| o.status.success())
            .and_then(|o| exit_status(&o.stdout));
        let gone = waited.as_ref().is_some_and(|o| {
            !o.status.success()
                && sandbox_gone(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ))
        });
        if gone {
            std::process::exit(GONE_STATUS);
        }
        if !runsc_out("state").is_some_and(|o| o.status.success() && still_running(&o.stdout)) {
            std::process::exit(code.unwrap_or(GONE_STATUS));
        }
        // Still running: the wait ended early (or failed while the sandbox lives).
        std::thread::sleep(Duration::from_millis(if code.is_some() { 10 } else { 500 }));
    }
}

/// Whether `runsc state`'s output says the container runs in a sandbox that is alive
/// (runsc 20240729 keeps saying `running` for a sandbox that died).
fn still_running(state: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct State {
        status: String,
        #[serde(default)]
        pid: i32,
    }
    serde_json::from_slice::<State>(state).is_ok_and(|s| {
        s.status == "running" && s.pid > 0 && Path::new(&format!("/proc/{}", s.pid)).exists()
    })
}

/// The exit status in `runsc wait`'s output, `{"id":"...","exitStatus":N}`.
pub fn exit_status(stdout: &[u8]) -> Option<i32> {
    #[derive(serde::Deserialize)]
    struct Wait {
        #[serde(rename = "exitStatus")]
        exit_status: i32,
    }
    let w: Wait = serde_json::from_slice(stdout).ok()?;
    Some(w.exit_status & 0xff)
}

/// What runsc says when the sandbox it was asked about is gone.
pub fn sandbox_gone(output: &str) -> bool {
    output.contains("sandbox is not running")
        || (output.contains("control server") && output.contains("connection refused"))
}

/// Runs `kill`/`delete` as a child and rewords what the shim cannot place (see the module
/// docs). Returns the exit code.
///
/// `kill` of an app container whose sandbox is gone ends the container's waiter instead (the
/// process the shim knows for it), so the shim sees the container exit, as it would have.
pub fn run_reworded(
    runsc: &Path,
    args: &[OsString],
    inv: &Invocation,
    waiter: Option<&Path>,
) -> Result<i32, ContainerError> {
    let run = |args: &[OsString]| {
        Command::new(runsc)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| run_failed(runsc, source))
    };
    let mut out = run(args)?;
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let mut note = None;
    if !out.status.success() {
        match inv.subcommand_name() {
            Some("delete") if text(&out).contains("without --force") => {
                let mut forced = args.to_vec();
                if let Some(i) = forced.iter().position(|a| a == "delete") {
                    forced.insert(i + 1, "--force".into());
                }
                out = run(&forced)?;
            }
            Some("kill") if sandbox_gone(&text(&out)) => {
                if let Some(pid) = waiter.and_then(waiter_pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return Ok(0);
                }
                note = Some("container not running: its sandbox is gone");
            }
            _ => {}
        }
    }
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stderr().write_all(&out.stderr);
    if let Some(n) = note {
        eprintln!("podsnap-runsc: {n}");
    }
    Ok(out.status.code().unwrap_or(1))
}

/// What a pod snapshot's manifest says about the pod it was taken from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSnapshot {
    pub snapshot_id: String,
    pub namespace: String,
    pub name: String,
    /// The app containers' CRI names, in restore order.
    pub containers: Vec<String>,
}

/// The refusal of a pod sandbox's restore: the pod's namespace must be the snapshot's, or
/// one the operator allowed (`cross_namespace_restores` in the wrapper's config).
pub fn check_pod_namespace(
    cfg: &crate::config::Config,
    snap: &PodSnapshot,
    pod: &spec::Bundle,
) -> Result<(), PodRestoreError> {
    let target = pod
        .pod_namespace
        .as_deref()
        .ok_or(PodRestoreError::UnknownNamespace)?;
    if cfg.restore_allowed(&snap.namespace, target) {
        return Ok(());
    }
    Err(PodRestoreError::OtherNamespace {
        snapshot: snap.snapshot_id.clone(),
        namespace: snap.namespace.clone(),
        name: snap.name.clone(),
        target: target.to_string(),
    })
}

/// The refusal of an app container's restore: it must be the snapshot's next container, by
/// name (`already` are the names restored into this pod so far).
pub fn check_container_name(
    snap: &PodSnapshot,
    already: &[String],
    name: Option<&str>,
) -> Result<(), PodRestoreError> {
    let name = name.ok_or(PodRestoreError::NoContainerName)?;
    let snapshot = snap.snapshot_id.clone();
    match snap.containers.get(already.len()) {
        Some(next) if next == name => Ok(()),
        _ if !snap.containers.iter().any(|c| c == name) => Err(PodRestoreError::NoSuchContainer {
            snapshot,
            name: name.to_string(),
            containers: snap.containers.clone(),
        }),
        _ if already.iter().any(|c| c == name) => Err(PodRestoreError::AlreadyRestored {
            snapshot,
            name: name.to_string(),
        }),
        Some(next) => Err(PodRestoreError::OutOfOrder {
            snapshot,
            containers: snap.containers.clone(),
            next: next.clone(),
            name: name.to_string(),
        }),
        None => Err(PodRestoreError::AllRestored { snapshot }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> PodSnapshot {
        PodSnapshot {
            snapshot_id: "s1".into(),
            namespace: "team-a".into(),
            name: "web".into(),
            containers: vec!["app".into(), "sidecar".into()],
        }
    }

    fn pod_in(ns: &str) -> spec::Bundle {
        spec::Bundle {
            role: spec::Role::PodSandbox,
            restore_from: Some("s1".into()),
            container_name: None,
            pod_namespace: Some(ns.into()),
            pod_name: Some("web-2".into()),
            sandbox_id: None,
            network_namespace: false,
            pod_uid: None,
            dev_shm: None,
        }
    }

    #[test]
    fn restore_refuses_a_pod_of_another_namespace_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |text: &str| {
            let p = dir.path().join("podsnap.toml");
            std::fs::write(&p, text).unwrap();
            crate::config::Config::load(&crate::config::Env {
                config: Some(p.into_os_string()),
                ..Default::default()
            })
            .unwrap()
        };
        let strict = cfg("");
        assert!(check_pod_namespace(&strict, &snap(), &pod_in("team-a")).is_ok());
        let e = check_pod_namespace(&strict, &snap(), &pod_in("team-b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespace team-b may not be restored"), "{e}");
        assert!(e.contains("cross_namespace_restores"), "{e}");
        let mut unknown = pod_in("x");
        unknown.pod_namespace = None;
        assert!(check_pod_namespace(&strict, &snap(), &unknown).is_err());
        // Allowed one way only, for the named pair only.
        let allowed = cfg("[cross_namespace_restores]\nteam-b = [\"team-a\"]\n");
        assert!(check_pod_namespace(&allowed, &snap(), &pod_in("team-b")).is_ok());
        assert!(check_pod_namespace(&allowed, &snap(), &pod_in("team-c")).is_err());
    }

    #[test]
    fn restore_matches_containers_by_name_in_order() {
        let s = snap();
        assert!(check_container_name(&s, &[], Some("app")).is_ok());
        assert!(check_container_name(&s, &["app".into()], Some("sidecar")).is_ok());
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (&[], Some("db"), "has no container \"db\""),
            (&[], Some("sidecar"), "comes before"),
            (&["app"], Some("app"), "already restored"),
            (&["app", "sidecar"], Some("app"), "already restored"),
            (&[], None, "no io.kubernetes.cri.container-name"),
        ];
        for (already, name, want) in cases {
            let already: Vec<String> = already.iter().map(|s| s.to_string()).collect();
            let e = check_container_name(&s, &already, *name)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{name:?} after {already:?}: {e}");
        }
    }

    #[test]
    fn reads_runsc_waits_exit_status() {
        assert_eq!(exit_status(br#"{"id":"a","exitStatus":143}"#), Some(143));
        assert_eq!(exit_status(br#"{"id":"a","exitStatus":0}"#), Some(0));
        assert_eq!(exit_status(br#"{"id":"a","exitStatus":256}"#), Some(0));
        assert_eq!(exit_status(b"garbage"), None);
    }

    #[test]
    fn a_container_runs_only_in_a_live_sandbox() {
        let me = std::process::id();
        let running = format!(r#"{{"id":"a","status":"running","pid":{me}}}"#);
        assert!(still_running(running.as_bytes()));
        let stopped = format!(r#"{{"id":"a","status":"stopped","pid":{me}}}"#);
        assert!(!still_running(stopped.as_bytes()));
        // A pid that no process has.
        assert!(!still_running(
            br#"{"id":"a","status":"running","pid":2147483646}"#
        ));
        assert!(!still_running(b"not json"));
    }

    #[test]
    fn knows_runscs_wordings_for_a_gone_sandbox() {
        assert!(sandbox_gone(
            "signaling container \"x\": connecting to control server at PID 31219: connection refused"
        ));
        assert!(sandbox_gone("sandbox is not running"));
        assert!(!sandbox_gone(
            "signaling process in container \"a\" PID 0: no such process"
        ));
    }

    #[test]
    fn records_do_not_collide_with_markers() {
        let m = Path::new("/m");
        let w = waiter_dir(m, OsStr::new("/r"), OsStr::new("c1"));
        assert_eq!(w, PathBuf::from("/m/waiters/%2Fr/c1"));
        assert_ne!(w, marker::path(m, OsStr::new("/r"), OsStr::new("c1")));
        assert_eq!(
            net_record(m, OsStr::new("/r"), OsStr::new("c1")),
            PathBuf::from("/m/net/%2Fr/c1")
        );
    }

    #[test]
    fn a_recycled_pid_is_not_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pid"), std::process::id().to_string()).unwrap();
        assert_eq!(waiter_pid(dir.path()), None);
    }

    #[test]
    fn a_runsc_that_cannot_run_is_named_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let runsc = Path::new("/nonexistent/runsc");
        let e = create_container(runsc, &[], &[], None, &dir.path().join("rec")).unwrap_err();
        assert!(matches!(e, ContainerError::RunRunsc { .. }), "{e:?}");
        assert_eq!(
            crate::error::one_line(&e),
            "cannot run /nonexistent/runsc: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_start_without_its_waiter_says_to_create_the_container_again() {
        let dir = tempfile::tempdir().unwrap();
        let e = start_container(Path::new("/bin/true"), &[], dir.path()).unwrap_err();
        assert!(matches!(e, ContainerError::WaiterGone { .. }), "{e:?}");
        assert!(
            e.to_string()
                .ends_with("is gone; delete and create the container again"),
            "{e}"
        );
    }
}
