//! Deciding what to do with one call: [`plan`] reads the config, finds runsc and hands the
//! call to the step of its subcommand. Only `create` reads the bundle or talks to podsnapd.
//!
//! - `create`: a host-network pod sandbox gets the configured `--network`; a container
//!   without the restore annotation is created as asked (a pod's app container through its
//!   waiter, see [`crate::pod`]); an annotated one is restored: a pod's app container from
//!   its sandbox's image, anything else from the image podsnapd prepares (a pod sandbox's
//!   emptyDirs and `/dev/shm` first get the contents the snapshot carries, see [`volumes`]).
//! - `start`: a pod's app container starts (or restores) with its waiter's stdio; otherwise
//!   the restore marker decides between `start`, `restore` and answering success.
//! - `delete` and `kill`: markers and waiters are forgotten, runsc's answers reworded.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::args::Invocation;
use crate::config::{Config, Env, RestoreMode};
use crate::error::{PlanError, RestoreError};
use crate::marker::{self, Marker, MarkerMode};
use crate::{absolute, daemon, pod, resolve_runsc, restore_mode_for, spec, volumes, Plan};

/// Decides what to do with a call.
pub fn plan(inv: &Invocation, env: &Env) -> Result<Plan, PlanError> {
    let cfg = Config::load(env)?;
    let runsc = resolve_runsc(&cfg.runsc)?;
    let planner = Planner {
        inv,
        cfg: &cfg,
        runsc,
    };
    match inv.subcommand_name() {
        Some("create") => planner.create(),
        Some("start") => planner.start(),
        Some("delete") => Ok(planner.delete()),
        Some("kill") => Ok(planner.kill()),
        _ => Ok(planner.passthrough()),
    }
}

/// One call's planning: the call, the config and the real runsc.
struct Planner<'a> {
    inv: &'a Invocation,
    cfg: &'a Config,
    runsc: PathBuf,
}

/// A `create` of a container with a readable bundle.
struct Create<'a> {
    id: &'a OsStr,
    root: OsString,
    /// The container's restore marker.
    marker: PathBuf,
    bundle: PathBuf,
    spec: spec::Bundle,
    /// The call, with the network flag of a host-network pod sandbox added.
    inv: Invocation,
}

impl Planner<'_> {
    /// runsc's arguments: the configured flags, then `args`.
    fn runsc_args(&self, args: Vec<OsString>) -> Vec<OsString> {
        let mut all: Vec<OsString> = self.cfg.runsc_flags.iter().map(OsString::from).collect();
        all.extend(args);
        all
    }

    fn exec(&self, args: Vec<OsString>) -> Plan {
        Plan::Exec {
            runsc: self.runsc.clone(),
            args: self.runsc_args(args),
        }
    }

    fn passthrough(&self) -> Plan {
        self.exec(self.inv.args.clone())
    }

    fn create(&self) -> Result<Plan, PlanError> {
        let Some(id) = self.inv.single_id() else {
            return Ok(self.passthrough());
        };
        let root = self.inv.root_or_default();
        let marker = marker::path(&self.cfg.marker_dir, &root, id);
        let bundle = absolute(
            self.inv
                .create_bundle()
                .map(PathBuf::from)
                .unwrap_or_default(),
        );
        let spec = match spec::read(&bundle) {
            Ok(b) => b,
            // A bundle runsc itself will reject with its own error.
            Err(spec::SpecError::Read { .. } | spec::SpecError::Parse { .. }) => {
                let _ = marker::remove(&marker);
                return Ok(self.passthrough());
            }
            Err(e) => return Err(e.into()),
        };
        let inv = Invocation::parse(self.host_network_args(&spec, &root, id)?);
        let c = Create {
            id,
            root,
            marker,
            bundle,
            spec,
            inv,
        };
        let Some(snapshot) = c.spec.restore_from.clone() else {
            let _ = marker::remove(&c.marker);
            return Ok(self.create_fresh(&c));
        };
        self.restore(&c, &snapshot)
            .map_err(|source| PlanError::Restore {
                id: id.to_string_lossy().into_owned(),
                snapshot,
                source: Box::new(source),
            })
    }

    /// `create`'s arguments, with `--network=none|host` first for a pod sandbox the CRI
    /// runs without a network namespace and that no flag gives a network (remembered for
    /// its `start`).
    fn host_network_args(
        &self,
        spec: &spec::Bundle,
        root: &OsStr,
        id: &OsStr,
    ) -> Result<Vec<OsString>, PlanError> {
        let mut args = self.inv.args.clone();
        let network_flagged = self.inv.has_global("network")
            || self.cfg.runsc_flags.iter().any(|f| {
                f.trim_start_matches('-')
                    .split('=')
                    .next()
                    .is_some_and(|n| n == "network")
            });
        if spec.role == spec::Role::PodSandbox && !spec.network_namespace && !network_flagged {
            let flag = self.cfg.host_network.flag();
            pod::record_network_flag(&self.cfg.marker_dir, root, id, flag)
                .map_err(PlanError::RecordNetwork)?;
            args.insert(0, flag.into());
        }
        Ok(args)
    }

    /// A `create` without a restore: as asked, a pod's app container through its waiter.
    fn create_fresh(&self, c: &Create) -> Plan {
        if c.spec.role == spec::Role::PodContainer {
            self.create_container(c)
        } else {
            self.exec(c.inv.args.clone())
        }
    }

    /// `create` of a pod's app container: runsc as a child, then its waiter.
    fn create_container(&self, c: &Create) -> Plan {
        // The waiter's arguments: ID, then the global flags of its runsc calls.
        let mut waiter_args: Vec<OsString> = vec![c.id.to_os_string()];
        waiter_args.extend(self.cfg.runsc_flags.iter().map(OsString::from));
        waiter_args.extend_from_slice(c.inv.globals());
        Plan::CreateContainer {
            runsc: self.runsc.clone(),
            args: self.runsc_args(c.inv.args.clone()),
            waiter_args,
            pid_file: c.inv.create_pid_file().map(|p| absolute(p.into()).into()),
            record: pod::waiter_dir(&self.cfg.marker_dir, &c.root, c.id),
        }
    }

    fn restore(&self, c: &Create, snapshot: &str) -> Result<Plan, RestoreError> {
        if c.spec.role == spec::Role::PodContainer {
            self.restore_pod_container(c)
        } else {
            self.restore_sandbox(c, snapshot)
        }
    }

    /// An app container of a pod being restored: the pod's sandbox was restored from the
    /// whole pod's image; this container is restored from the same directory into the
    /// restoring sandbox.
    fn restore_pod_container(&self, c: &Create) -> Result<Plan, RestoreError> {
        let record =
            pod::container_restore_marker(&self.cfg.marker_dir, &c.root, &c.spec, &c.bundle)?;
        match record {
            Some(record) => write_marker(&c.marker, &record)?,
            // Restored before in this pod: the kubelet restarts it, fresh.
            None => {
                let _ = marker::remove(&c.marker);
            }
        }
        Ok(self.create_container(c))
    }

    /// A sandbox (a pod's, or a plain container's) restored from the image podsnapd
    /// prepares, in the restore mode the installed runsc needs.
    fn restore_sandbox(&self, c: &Create, snapshot: &str) -> Result<Plan, RestoreError> {
        let mode = match self.cfg.restore_mode {
            RestoreMode::Auto => restore_mode_for(&self.runsc),
            m => m,
        };
        // This path restores without --background: the image is pulled whole.
        let id = c.id.to_string_lossy();
        let prepared = daemon::prepare_restore(
            &self.cfg.socket,
            &daemon::Want::pulled(snapshot, &id),
            self.cfg.prepare_timeout,
        )?;
        let pod_containers = if c.spec.role == spec::Role::PodSandbox {
            self.pod_containers(&prepared, &c.spec)?
        } else {
            vec![]
        };
        let image_dir = prepared.image_dir;
        if !image_dir.is_dir() {
            return Err(RestoreError::ImageDirMissing(image_dir));
        }
        if c.spec.role == spec::Role::PodSandbox {
            // Before runsc runs for this pod (see `volumes`).
            volumes::restore(&self.cfg.kubelet_root, &c.spec, &id, &image_dir)?;
        }
        let record = Marker {
            mode: mode.into(),
            snapshot_id: snapshot.to_string(),
            image_dir: image_dir.clone(),
            bundle: c.bundle.clone(),
            pod_containers,
            restored: vec![],
        };
        write_marker(&c.marker, &record)?;
        Ok(match mode {
            RestoreMode::RestoreOnStart => self.exec(c.inv.args.clone()),
            _ => self.exec(c.inv.create_as_restore(image_dir.as_os_str())),
        })
    }

    /// The refusals before a pod's sandbox is restored (a pod is restored only from a
    /// snapshot of a pod, of its own namespace unless the operator allowed another); the
    /// snapshot's app containers, in restore order.
    fn pod_containers(
        &self,
        prepared: &daemon::Prepared,
        spec: &spec::Bundle,
    ) -> Result<Vec<String>, RestoreError> {
        let p = prepared.pod.as_ref().ok_or(RestoreError::NotAPodSnapshot)?;
        pod::check_pod_namespace(self.cfg, p, spec)?;
        Ok(p.containers.clone())
    }

    fn start(&self) -> Result<Plan, PlanError> {
        let Some(id) = self.inv.single_id() else {
            return Ok(self.passthrough());
        };
        let root = self.inv.root_or_default();
        let path = marker::path(&self.cfg.marker_dir, &root, id);
        let record = pod::waiter_dir(&self.cfg.marker_dir, &root, id);
        if record.is_dir() {
            return self.start_pod_container(id, &path, record);
        }
        let mut start_args = self.inv.args.clone();
        if let Some(flag) = pod::recorded_network_flag(&self.cfg.marker_dir, &root, id) {
            start_args.insert(0, flag.into());
        }
        let inv = Invocation::parse(start_args);
        Ok(match read_marker(&path)? {
            None => self.exec(inv.args.clone()),
            Some(m) => match m.mode {
                MarkerMode::RestoreOnStart => self.exec(inv.start_as_restore(
                    m.image_dir.as_os_str(),
                    m.bundle.as_os_str(),
                    id,
                )),
                MarkerMode::ReplaceCreate => Plan::Exit0,
            },
        })
    }

    /// `start` of a pod's app container (it has a waiter): `start`, or `restore` when its
    /// marker says so, with the waiter's stdio.
    fn start_pod_container(
        &self,
        id: &OsStr,
        marker: &Path,
        record: PathBuf,
    ) -> Result<Plan, PlanError> {
        let args = match read_marker(marker)? {
            Some(m) => self
                .inv
                .start_as_restore(m.image_dir.as_os_str(), m.bundle.as_os_str(), id),
            None => self.inv.args.clone(),
        };
        Ok(Plan::StartContainer {
            runsc: self.runsc.clone(),
            args: self.runsc_args(args),
            record,
        })
    }

    /// `delete`: every named container's marker, network record and waiter go first.
    fn delete(&self) -> Plan {
        let root = self.inv.root_or_default();
        let dir = &self.cfg.marker_dir;
        for id in self.inv.delete_ids() {
            let _ = marker::remove(&marker::path(dir, &root, id));
            let _ = std::fs::remove_file(pod::net_record(dir, &root, id));
            pod::forget_container(&pod::waiter_dir(dir, &root, id));
        }
        Plan::Reworded {
            runsc: self.runsc.clone(),
            args: self.runsc_args(self.inv.args.clone()),
            waiter: None,
        }
    }

    /// `kill [flags] ID SIGNAL`: the container is the first argument after the flags.
    fn kill(&self) -> Plan {
        let waiter = self
            .inv
            .delete_ids()
            .first()
            .map(|id| pod::waiter_dir(&self.cfg.marker_dir, &self.inv.root_or_default(), id))
            .filter(|w| w.is_dir());
        Plan::Reworded {
            runsc: self.runsc.clone(),
            args: self.runsc_args(self.inv.args.clone()),
            waiter,
        }
    }
}

fn read_marker(path: &Path) -> Result<Option<Marker>, PlanError> {
    marker::read(path).map_err(|source| PlanError::ReadMarker {
        path: path.to_path_buf(),
        source,
    })
}

fn write_marker(path: &Path, record: &Marker) -> Result<(), RestoreError> {
    marker::write(path, record).map_err(|source| RestoreError::WriteMarker {
        path: path.to_path_buf(),
        source,
    })
}
