//! podsnap-runsc: the runsc binary that containerd's runc v2 shim runs (its `BinaryName`, or
//! `ctr run --runc-binary`), standing in front of the real runsc.
//!
//! Every call is handed to the real runsc with `execve`: same arguments, environment and
//! stdio, no extra process. Three subcommands are looked at first:
//!
//! - `create` of a container whose OCI config carries `podsnap.dev/restore-from=<snapshot>`:
//!   the wrapper asks podsnapd (`PrepareRestore` over its Unix socket) for the verified local
//!   image and then, for runsc 20221219 (which cannot restore into a created container),
//!   execs `runsc <globals> restore --image-path DIR --detach <create's arguments>` and records
//!   a marker; with a current runsc it execs the `create` unchanged and turns the following
//!   `start` into the `restore`. If podsnapd says no, the create fails with its reason.
//! - `start`: if a marker says the container was already restored, exit 0.
//! - `delete`: remove the container's marker, then pass through.
//!
//! Layers: [`args`] parses runsc's command line (no I/O), [`config`] finds runsc and the
//! socket, [`spec`] reads the annotation, [`daemon`] is the gRPC client, [`marker`] keeps the
//! markers, [`runsc_log`] writes failures where the shim looks for them; [`run`] ties them.

pub mod args;
pub mod config;
pub mod daemon;
pub mod marker;
pub mod pod;
pub mod runsc_log;
pub mod spec;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use args::Invocation;
use config::{Config, Env, RestoreMode};
use marker::{Marker, MarkerMode};

/// What to do with a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// exec `runsc` with these arguments (argv[1..]).
    Exec { runsc: PathBuf, args: Vec<OsString> },
    /// Exit 0 without calling runsc (the `start` of a container runsc already restored).
    Exit0,
    /// `create` of a pod's app container: runsc as a child, then a waiter (see [`pod`]).
    CreateContainer {
        runsc: PathBuf,
        args: Vec<OsString>,
        waiter_args: Vec<OsString>,
        pid_file: Option<OsString>,
        record: PathBuf,
    },
    /// `start` of a pod's app container, with its waiter's stdio.
    StartContainer {
        runsc: PathBuf,
        args: Vec<OsString>,
        record: PathBuf,
    },
    /// `kill` and `delete`: runsc as a child, its answers reworded for the shim (`waiter`:
    /// the killed app container's waiter record).
    Reworded {
        runsc: PathBuf,
        args: Vec<OsString>,
        waiter: Option<PathBuf>,
    },
}

/// Runs the wrapper: execs runsc (never returns) or returns the exit code.
pub fn run(inv: &Invocation, env: &Env) -> i32 {
    match plan(inv, env) {
        Ok(Plan::Exit0) => 0,
        Ok(Plan::Exec { runsc, args }) => {
            let err = Command::new(&runsc).args(&args).exec();
            fail(inv, &format!("cannot run {}: {err}", runsc.display()))
        }
        Ok(Plan::CreateContainer {
            runsc,
            args,
            waiter_args,
            pid_file,
            record,
        }) => pod::create_container(&runsc, &args, &waiter_args, pid_file.as_deref(), &record)
            .unwrap_or_else(|msg| fail(inv, &msg)),
        Ok(Plan::StartContainer {
            runsc,
            args,
            record,
        }) => pod::start_container(&runsc, &args, &record).unwrap_or_else(|msg| fail(inv, &msg)),
        Ok(Plan::Reworded {
            runsc,
            args,
            waiter,
        }) => pod::run_reworded(&runsc, &args, inv, waiter.as_deref())
            .unwrap_or_else(|msg| fail(inv, &msg)),
        Err(msg) => fail(inv, &msg),
    }
}

/// Reports a failure as one line on stderr (and in runsc's log), returns the exit code.
fn fail(inv: &Invocation, msg: &str) -> i32 {
    let line = format!("podsnap-runsc: {}", daemon::one_line(msg));
    eprintln!("{line}");
    runsc_log::append(inv, &line);
    1
}

/// Decides what to do with a call. Only `create` reads the bundle or talks to podsnapd.
pub fn plan(inv: &Invocation, env: &Env) -> Result<Plan, String> {
    let cfg = Config::load(env).map_err(|e| e.to_string())?;
    let runsc = resolve_runsc(&cfg.runsc)?;
    let exec = |args: Vec<OsString>| {
        let mut all: Vec<OsString> = cfg.runsc_flags.iter().map(OsString::from).collect();
        all.extend(args);
        Plan::Exec {
            runsc: runsc.clone(),
            args: all,
        }
    };
    let passthrough = || exec(inv.args.clone());
    match inv.subcommand_name() {
        Some("create") => {
            let Some(id) = inv.single_id() else {
                return Ok(passthrough());
            };
            let root = inv.root_or_default();
            let marker = marker::path(&cfg.marker_dir, &root, id);
            let bundle = absolute(inv.create_bundle().map(PathBuf::from).unwrap_or_default());
            let spec = match spec::read(&bundle) {
                Ok(b) => b,
                // A bundle runsc itself will reject with its own error.
                Err(spec::SpecError::Read { .. } | spec::SpecError::Parse { .. }) => {
                    let _ = marker::remove(&marker);
                    return Ok(passthrough());
                }
                Err(e) => return Err(e.to_string()),
            };
            let mut create_args = inv.args.clone();
            if spec.role == spec::Role::PodSandbox
                && !spec.network_namespace
                && !inv.has_global("network")
                && !cfg.runsc_flags.iter().any(|f| {
                    f.trim_start_matches('-')
                        .split('=')
                        .next()
                        .is_some_and(|n| n == "network")
                })
            {
                let flag = cfg.host_network.flag();
                pod::record_network_flag(&cfg.marker_dir, &root, id, flag).map_err(|e| {
                    format!("cannot record the network of host-network pod sandbox: {e}")
                })?;
                create_args.insert(0, flag.into());
            }
            let create_container = |inv: &Invocation| {
                // The waiter's arguments: ID, then the global flags of its runsc calls.
                let mut waiter_args: Vec<OsString> = vec![id.to_os_string()];
                waiter_args.extend(cfg.runsc_flags.iter().map(OsString::from));
                waiter_args.extend_from_slice(inv.globals());
                let Plan::Exec { runsc, args } = exec(inv.args.clone()) else {
                    unreachable!("exec makes an Exec plan")
                };
                Plan::CreateContainer {
                    runsc,
                    args,
                    waiter_args,
                    pid_file: inv.create_pid_file().map(|p| absolute(p.into()).into()),
                    record: pod::waiter_dir(&cfg.marker_dir, &root, id),
                }
            };
            let Some(snapshot) = spec.restore_from.clone() else {
                let _ = marker::remove(&marker);
                if spec.role == spec::Role::PodContainer {
                    return Ok(create_container(&Invocation::parse(create_args)));
                }
                return Ok(exec(create_args));
            };
            let inv = &Invocation::parse(create_args);
            let id_text = id.to_string_lossy();
            let what = format!("cannot restore container {id_text} from snapshot {snapshot}");
            if spec.role == spec::Role::PodContainer {
                // The pod's sandbox was restored from the whole pod's image: this container
                // is restored from the same directory into the restoring sandbox.
                let record = pod::container_restore_marker(&cfg.marker_dir, &root, &spec, &bundle)
                    .map_err(|e| format!("{what}: {e}"))?;
                let Some(record) = record else {
                    // Restored before in this pod: the kubelet restarts it, fresh.
                    let _ = marker::remove(&marker);
                    return Ok(create_container(inv));
                };
                marker::write(&marker, &record).map_err(|e| {
                    format!(
                        "{what}: cannot write restore marker {}: {e}",
                        marker.display()
                    )
                })?;
                return Ok(create_container(inv));
            }
            let mode = match cfg.restore_mode {
                RestoreMode::Auto => restore_mode_for(&runsc),
                m => m,
            };
            let prepared =
                daemon::prepare_restore(&cfg.socket, &snapshot, &id_text, cfg.prepare_timeout)
                    .map_err(|e| format!("{what}: {e}"))?;
            let mut pod_containers = Vec::new();
            if spec.role == spec::Role::PodSandbox {
                // Refusals before anything starts: a pod is restored only from a snapshot of
                // a pod, of its own namespace unless the operator allowed another.
                let Some(p) = &prepared.pod else {
                    return Err(format!(
                        "{what}: it is not a snapshot of a Kubernetes pod (its manifest records no \
                         pod); a pod is restored only from a pod snapshot (podsnapctl checkpoint --pod)"
                    ));
                };
                pod::check_pod_namespace(&cfg, p, &spec).map_err(|e| format!("{what}: {e}"))?;
                pod_containers = p.containers.clone();
            }
            let image_dir = prepared.image_dir;
            if !image_dir.is_dir() {
                return Err(format!(
                    "{what}: podsnapd's image dir {} is not a directory on this host",
                    image_dir.display()
                ));
            }
            let record = Marker {
                mode: mode.into(),
                snapshot_id: snapshot.clone(),
                image_dir: image_dir.clone(),
                bundle,
                pod_containers,
                restored: vec![],
            };
            marker::write(&marker, &record).map_err(|e| {
                format!(
                    "{what}: cannot write restore marker {}: {e}",
                    marker.display()
                )
            })?;
            Ok(match mode {
                RestoreMode::RestoreOnStart => exec(inv.args.clone()),
                _ => exec(inv.create_as_restore(image_dir.as_os_str())),
            })
        }
        Some("start") => {
            let Some(id) = inv.single_id() else {
                return Ok(passthrough());
            };
            let root = inv.root_or_default();
            let record = pod::waiter_dir(&cfg.marker_dir, &root, id);
            if record.is_dir() {
                let path = marker::path(&cfg.marker_dir, &root, id);
                let restore = marker::read(&path)
                    .map_err(|e| format!("cannot read restore marker {}: {e}", path.display()))?;
                let Plan::Exec { runsc, args } = (match restore {
                    Some(m) => exec(inv.start_as_restore(
                        m.image_dir.as_os_str(),
                        m.bundle.as_os_str(),
                        id,
                    )),
                    None => passthrough(),
                }) else {
                    unreachable!("exec makes an Exec plan")
                };
                return Ok(Plan::StartContainer {
                    runsc,
                    args,
                    record,
                });
            }
            let mut start_args = inv.args.clone();
            if let Some(flag) = pod::recorded_network_flag(&cfg.marker_dir, &root, id) {
                start_args.insert(0, flag.into());
            }
            let path = marker::path(&cfg.marker_dir, &root, id);
            let inv = &Invocation::parse(start_args);
            match marker::read(&path) {
                Ok(None) => Ok(exec(inv.args.clone())),
                Ok(Some(m)) => Ok(match m.mode {
                    MarkerMode::RestoreOnStart => exec(inv.start_as_restore(
                        m.image_dir.as_os_str(),
                        m.bundle.as_os_str(),
                        id,
                    )),
                    MarkerMode::ReplaceCreate => Plan::Exit0,
                }),
                Err(e) => Err(format!(
                    "cannot read restore marker {}: {e}",
                    path.display()
                )),
            }
        }
        Some("delete") => {
            let root = inv.root_or_default();
            for id in inv.delete_ids() {
                let _ = marker::remove(&marker::path(&cfg.marker_dir, &root, id));
                let _ = std::fs::remove_file(pod::net_record(&cfg.marker_dir, &root, id));
                pod::forget_container(&pod::waiter_dir(&cfg.marker_dir, &root, id));
            }
            let Plan::Exec { runsc, args } = passthrough() else {
                unreachable!("exec makes an Exec plan")
            };
            Ok(Plan::Reworded {
                runsc,
                args,
                waiter: None,
            })
        }
        Some("kill") => {
            let Plan::Exec { runsc, args } = passthrough() else {
                unreachable!("exec makes an Exec plan")
            };
            // `kill [flags] ID SIGNAL`: the first argument after the flags.
            let waiter = inv
                .delete_ids()
                .first()
                .map(|id| pod::waiter_dir(&cfg.marker_dir, &inv.root_or_default(), id))
                .filter(|w| w.is_dir());
            Ok(Plan::Reworded {
                runsc,
                args,
                waiter,
            })
        }
        _ => Ok(passthrough()),
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

/// Finds the configured runsc (a bare name on PATH) and refuses this wrapper itself.
pub fn resolve_runsc(configured: &Path) -> Result<PathBuf, String> {
    let resolved = if configured.as_os_str().as_encoded_bytes().contains(&b'/') {
        configured.to_path_buf()
    } else {
        find_on_path(configured.as_os_str()).ok_or_else(|| {
            format!(
                "runsc {:?} not found on PATH; set runsc in the config file or PODSNAP_RUNSC",
                configured
            )
        })?
    };
    if let (Ok(target), Ok(me)) = (
        std::fs::metadata(&resolved),
        std::env::current_exe().and_then(std::fs::metadata),
    ) {
        if target.dev() == me.dev() && target.ino() == me.ino() {
            return Err(format!(
                "configured runsc {} is podsnap-runsc itself; point runsc (config file or PODSNAP_RUNSC) at the real runsc",
                resolved.display()
            ));
        }
    }
    Ok(resolved)
}

fn find_on_path(name: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Which restore path the installed runsc needs. Releases with `restore --background`
/// (2024 on) restore into a created container, as gVisor documents (`runsc create`, then
/// `runsc restore`); older ones, 20221219 among them, must restore instead of creating.
pub fn restore_mode_for(runsc: &Path) -> RestoreMode {
    let out = Command::new(runsc)
        .args(["restore", "--help"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = [o.stdout, o.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            if text.contains("-background") {
                RestoreMode::RestoreOnStart
            } else {
                RestoreMode::ReplaceCreate
            }
        }
        Err(_) => RestoreMode::ReplaceCreate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_mode_follows_the_binarys_restore_flags() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "  -detach\n  -image-path string\n",
                RestoreMode::ReplaceCreate,
            ),
            ("  -background\n  -detach\n", RestoreMode::RestoreOnStart),
        ];
        for (i, (help, want)) in cases.into_iter().enumerate() {
            let p = dir.path().join(format!("runsc{i}"));
            std::fs::write(&p, format!("#!/bin/sh\ncat >&2 <<'X'\n{help}X\nexit 128\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(restore_mode_for(&p), want, "{help}");
        }
        assert_eq!(
            restore_mode_for(Path::new("/nonexistent/runsc")),
            RestoreMode::ReplaceCreate
        );
    }

    #[test]
    fn installed_runsc_20221219_needs_replace_create() {
        let runsc = Path::new(config::DEFAULT_RUNSC);
        if !runsc.exists() {
            eprintln!("skipping: no {}", runsc.display());
            return;
        }
        assert_eq!(restore_mode_for(runsc), RestoreMode::ReplaceCreate);
    }

    #[test]
    fn refuses_to_exec_itself() {
        let me = std::env::current_exe().unwrap();
        let e = resolve_runsc(&me).unwrap_err();
        assert!(e.contains("is podsnap-runsc itself"), "{e}");
        // A symlink to it too.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("runsc");
        std::os::unix::fs::symlink(&me, &link).unwrap();
        assert!(resolve_runsc(&link).is_err());
    }

    #[test]
    fn bare_names_are_found_on_path() {
        assert_eq!(
            resolve_runsc(Path::new("sh")).unwrap().file_name().unwrap(),
            "sh"
        );
        let e = resolve_runsc(Path::new("no-such-runsc-here")).unwrap_err();
        assert!(e.contains("not found on PATH"), "{e}");
    }
}
