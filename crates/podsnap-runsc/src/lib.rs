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
//!   `start` into the `restore`. If podsnapd says no, the create fails with its reason. A pod
//!   sandbox's emptyDirs and `/dev/shm` get the contents the snapshot carries first
//!   ([`volumes`]).
//! - `start`: if a marker says the container was already restored, exit 0.
//! - `delete`: remove the container's marker, then pass through.
//!
//! Layers: [`args`] parses runsc's command line (no I/O), [`config`] finds runsc and the
//! socket, [`spec`] reads the annotation, [`daemon`] is the gRPC client, [`marker`] keeps the
//! markers, [`runsc_log`] writes failures where the shim looks for them; [`plan`] decides
//! what to do with a call, one step per subcommand, refusing with a typed [`PlanError`];
//! [`run`] carries the plan out.

pub mod args;
pub mod config;
pub mod daemon;
pub mod error;
pub mod marker;
pub mod plan;
pub mod pod;
pub mod runsc_log;
pub mod spec;
pub mod volumes;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use args::Invocation;
use config::{Env, RestoreMode};
pub use error::PlanError;
pub use plan::plan;

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
            .unwrap_or_else(|e| fail(inv, &error::one_line(&e))),
        Ok(Plan::StartContainer {
            runsc,
            args,
            record,
        }) => pod::start_container(&runsc, &args, &record)
            .unwrap_or_else(|e| fail(inv, &error::one_line(&e))),
        Ok(Plan::Reworded {
            runsc,
            args,
            waiter,
        }) => pod::run_reworded(&runsc, &args, inv, waiter.as_deref())
            .unwrap_or_else(|e| fail(inv, &error::one_line(&e))),
        Err(e) => fail(inv, &error::one_line(&e)),
    }
}

/// Reports a failure as one line on stderr (and in runsc's log), returns the exit code.
fn fail(inv: &Invocation, msg: &str) -> i32 {
    let line = format!("podsnap-runsc: {}", daemon::one_line(msg));
    eprintln!("{line}");
    runsc_log::append(inv, &line);
    1
}

pub(crate) fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

/// Finds the configured runsc (a bare name on PATH) and refuses this wrapper itself.
pub fn resolve_runsc(configured: &Path) -> Result<PathBuf, PlanError> {
    let resolved = if configured.as_os_str().as_encoded_bytes().contains(&b'/') {
        configured.to_path_buf()
    } else {
        find_on_path(configured.as_os_str()).ok_or_else(|| PlanError::RunscNotFound {
            name: configured.to_path_buf(),
        })?
    };
    if let (Ok(target), Ok(me)) = (
        std::fs::metadata(&resolved),
        std::env::current_exe().and_then(std::fs::metadata),
    ) {
        if target.dev() == me.dev() && target.ino() == me.ino() {
            return Err(PlanError::RunscIsWrapper { path: resolved });
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
    fn runsc_20221219_needs_replace_create() {
        let Some(runsc) = podsnap_testkit::runsc::Release::R20221219.required() else {
            return;
        };
        assert_eq!(restore_mode_for(&runsc), RestoreMode::ReplaceCreate);
    }

    /// `restore --background` came with 20240930: from then on runsc restores into the
    /// created container.
    #[test]
    fn system_runsc_restore_mode_follows_its_release() {
        use podsnap_testkit::runsc::Release;
        let date = Release::System.release_date();
        let missing = date.is_none().then(|| "runsc not on PATH".to_string());
        if !podsnap_testkit::require_that("system_runsc_restore_mode", missing) {
            return;
        }
        let want = if date.is_some_and(|d| d >= 20240930) {
            RestoreMode::RestoreOnStart
        } else {
            RestoreMode::ReplaceCreate
        };
        assert_eq!(restore_mode_for(&Release::System.binary()), want);
    }

    #[test]
    fn refuses_to_exec_itself() {
        let me = std::env::current_exe().unwrap();
        let e = resolve_runsc(&me).unwrap_err().to_string();
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
        let e = resolve_runsc(Path::new("no-such-runsc-here"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found on PATH"), "{e}");
    }
}
