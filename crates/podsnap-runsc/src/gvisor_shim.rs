//! podsnap-runsc behind gVisor's containerd shim (`containerd-shim-runsc-v1`, with
//! `binary_name` = podsnap-runsc in the runsc.toml its runtime options name).
//!
//! That shim handles pods itself (one runsc sub-container per app container, runsc's own
//! pids, its own reading of runsc's errors), so the wrapper only adds the restore and is
//! otherwise invisible: every call is exec'd unchanged (same argv after the configured
//! `runsc_flags`, same environment and stdio, no extra process). Two calls are looked at:
//!
//! - `create` of a container annotated `podsnap.dev/restore-from`: the pod's sandbox (pause)
//!   container, or a plain container, asks podsnapd for the image (PrepareRestore) and
//!   records a marker; an app container takes its pod sandbox's image (one image holds the
//!   pod) and records a marker, unless a container of its name was already restored in this
//!   pod (the kubelet restarting it: it starts fresh). The `create` runs unchanged.
//! - `start` of a marked container becomes `runsc <globals> restore --detach
//!   --image-path=DIR [--background] ID` with the stdio the shim gave (the app container's
//!   own pipes; `--background` for the sandbox container when the release has it).
//!
//! `delete` drops the markers of the containers it names. Nothing is left running that holds
//! the shim's stdio: the shim reads most calls' output to EOF.
//!
//! The mode is on when the config says `shim = "gvisor"` (or `PODSNAP_SHIM=gvisor`), or with
//! `shim = "auto"` (the default) when the parent process is `containerd-shim-runsc-v1*`.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use podsnap_runsc::args::Invocation;
use podsnap_runsc::config::{Config, Env, RestoreMode, Shim};
use podsnap_runsc::daemon::{self, PrepareError, Prepared, Want};
use podsnap_runsc::marker::{self, Marker};
use podsnap_runsc::pod::{self, PodRestoreError};
use podsnap_runsc::{resolve_runsc, restore_mode_for, runsc_log, spec};

/// runsc's global flag for how a restore compares the new spec with the checkpointed one
/// (`enforce` by default in the 2026 release). A pod restored into a new pod differs in what
/// the kubelet derives from the pod's uid (`dev.gvisor.spec.cgroup-parent`, volume paths), so
/// a restore the wrapper issues says `warning` (mismatches logged, the restore goes on)
/// unless the shim's `runsc_config` or the wrapper's `runsc_flags` set it.
const SPEC_VALIDATION: &str = "restore-spec-validation";

/// Whether `runsc flags` lists the global flag `name`.
fn runsc_has_global_flag(runsc: &Path, name: &str) -> bool {
    Command::new(runsc)
        .arg("flags")
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).lines().any(|l| {
                l.trim_start()
                    .trim_start_matches('-')
                    .split_whitespace()
                    .next()
                    == Some(name)
            })
        })
}

/// The shim's executable name (the test machine's build carries a suffix).
const GVISOR_SHIM: &str = "containerd-shim-runsc-v1";

/// Why a call behind gVisor's shim failed (one line each).
#[derive(Debug, thiserror::Error)]
pub enum GvisorShimError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("{0}")]
    Runsc(String),
    #[error("cannot restore container {id} from snapshot {snapshot}: {source}")]
    Prepare {
        id: String,
        snapshot: String,
        source: PrepareError,
    },
    #[error("cannot restore pod sandbox {id} from snapshot {snapshot}: not a snapshot of a pod")]
    NotAPodSnapshot { id: String, snapshot: String },
    #[error("cannot restore container {id} from snapshot {snapshot}: {source}")]
    Pod {
        id: String,
        snapshot: String,
        source: Box<PodRestoreError>,
    },
    #[error("cannot restore container {id}: image dir {dir} is missing")]
    ImageDirMissing { id: String, dir: PathBuf },
    #[error(
        "cannot restore container {id}: app container without {} annotation",
        spec::SANDBOX_ID
    )]
    NoSandboxId { id: String },
    #[error(
        "cannot restore container {id} from snapshot {snapshot}: its pod sandbox {sandbox} was not restored"
    )]
    SandboxNotRestored {
        id: String,
        snapshot: String,
        sandbox: String,
    },
    #[error("cannot restore container {id} from snapshot {snapshot}: its pod sandbox {sandbox} was restored from {restored}")]
    SandboxOfOtherSnapshot {
        id: String,
        snapshot: String,
        sandbox: String,
        restored: String,
    },
    #[error("cannot restore container {id} from snapshot {snapshot}: the snapshot has no container {name:?} (its containers: {})", .containers.join(", "))]
    NoSuchContainer {
        id: String,
        snapshot: String,
        name: String,
        containers: Vec<String>,
    },
    #[error("marker {path}: {source}")]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The wrapper's entry point behind gVisor's shim: `None` when the mode is off (the caller
/// goes on with the runc shim's handling, which also reports a config error), otherwise the
/// exit code of a failure (success execs runsc and does not return).
pub fn run(inv: &Invocation, env: &Env) -> Option<i32> {
    let cfg = Config::load(env).ok()?;
    let forced = std::env::var("PODSNAP_SHIM").ok();
    if !active(cfg.shim, forced.as_deref(), parent_is_gvisor_shim) {
        return None;
    }
    let result = resolve_runsc(&cfg.runsc)
        .map_err(|e| GvisorShimError::Runsc(e.to_string()))
        .and_then(|runsc| {
            let planner = Planner {
                inv,
                cfg: &cfg,
                prepare: &|want| daemon::prepare_restore(&cfg.socket, want, cfg.prepare_timeout),
                background: &|| restore_mode_for(&runsc) == RestoreMode::RestoreOnStart,
                spec_validation: &|| runsc_has_global_flag(&runsc, SPEC_VALIDATION),
            };
            planner.plan().map(|args| (runsc.clone(), args))
        });
    Some(match result {
        Ok((runsc, args)) => {
            let err = Command::new(&runsc).args(&args).exec();
            fail(inv, &format!("cannot run {}: {err}", runsc.display()))
        }
        Err(e) => fail(inv, &e.to_string()),
    })
}

/// Whether the mode is on: `PODSNAP_SHIM` (gvisor|runc) over the config's `shim`; `auto`
/// asks `parent_is_gvisor`.
fn active(shim: Shim, env: Option<&str>, parent_is_gvisor: impl Fn() -> bool) -> bool {
    let shim = match env.map(str::trim) {
        Some("gvisor") => Shim::Gvisor,
        Some("runc") => Shim::Runc,
        _ => shim,
    };
    match shim {
        Shim::Gvisor => true,
        Shim::Runc => false,
        Shim::Auto => parent_is_gvisor(),
    }
}

/// Whether the parent process's executable is `containerd-shim-runsc-v1*`.
fn parent_is_gvisor_shim() -> bool {
    let ppid = std::os::unix::process::parent_id();
    let exe = std::fs::read_link(format!("/proc/{ppid}/exe")).ok();
    let argv0 = || {
        std::fs::read(format!("/proc/{ppid}/cmdline"))
            .ok()
            .and_then(|c| c.split(|&b| b == 0).next().map(<[u8]>::to_vec))
            .map(|a| PathBuf::from(String::from_utf8_lossy(&a).into_owned()))
    };
    exe.or_else(argv0).is_some_and(|p| is_gvisor_shim(&p))
}

fn is_gvisor_shim(exe: &Path) -> bool {
    exe.file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with(GVISOR_SHIM))
}

fn fail(inv: &Invocation, msg: &str) -> i32 {
    let line = format!("podsnap-runsc: {}", daemon::one_line(msg));
    eprintln!("{line}");
    runsc_log::append(inv, &line);
    1
}

type PrepareFn<'a> = &'a dyn Fn(&Want<'_>) -> Result<Prepared, PrepareError>;

/// One call's planning; podsnapd and runsc's help are seams for tests.
struct Planner<'a> {
    inv: &'a Invocation,
    cfg: &'a Config,
    prepare: PrepareFn<'a>,
    /// Whether `runsc restore` has `--background`.
    background: &'a dyn Fn() -> bool,
    /// Whether runsc has the global `--restore-spec-validation`.
    spec_validation: &'a dyn Fn() -> bool,
}

impl Planner<'_> {
    /// runsc's argv (after argv[0]) for this call.
    fn plan(&self) -> Result<Vec<OsString>, GvisorShimError> {
        match self.inv.subcommand_name() {
            Some("create") => self.create(),
            Some("start") => self.start(),
            Some("delete") => Ok(self.delete()),
            _ => Ok(self.passthrough()),
        }
    }

    fn with_flags(&self, args: Vec<OsString>) -> Vec<OsString> {
        let mut all: Vec<OsString> = self.cfg.runsc_flags.iter().map(OsString::from).collect();
        all.extend(args);
        all
    }

    fn passthrough(&self) -> Vec<OsString> {
        self.with_flags(self.inv.args.clone())
    }

    fn marker(&self, id: &OsStr) -> PathBuf {
        marker::path(&self.cfg.marker_dir, &self.inv.root_or_default(), id)
    }

    fn create(&self) -> Result<Vec<OsString>, GvisorShimError> {
        let Some(id) = self.inv.single_id() else {
            return Ok(self.passthrough());
        };
        let marker_path = self.marker(id);
        let _ = marker::remove(&marker_path);
        let Some(bundle) = self.inv.create_bundle() else {
            return Ok(self.passthrough());
        };
        let bundle = absolute(PathBuf::from(bundle));
        let spec = match spec::read(&bundle) {
            Ok(s) => s,
            // A bundle runsc itself will reject with its own error.
            Err(spec::SpecError::Read { .. } | spec::SpecError::Parse { .. }) => {
                return Ok(self.passthrough())
            }
            Err(e) => return Err(e.into()),
        };
        let Some(snapshot) = spec.restore_from.clone() else {
            return Ok(self.passthrough());
        };
        let id_s = id.to_string_lossy().into_owned();
        let record = if spec.role == spec::Role::PodContainer {
            self.container_marker(&id_s, &snapshot, &spec, &bundle)?
        } else {
            Some(self.sandbox_marker(&id_s, &snapshot, &spec, &bundle)?)
        };
        let Some(record) = record else {
            return Ok(self.passthrough());
        };
        write_marker(&marker_path, &record)?;
        // The sandbox validates a restore with the flags its `create` had.
        let mut args = self.globals_for_restore();
        args.extend(self.inv.args[self.inv.globals().len()..].iter().cloned());
        Ok(self.with_flags(args))
    }

    /// This call's global flags, with `--restore-spec-validation=warning` when runsc has
    /// the flag and neither the shim nor the wrapper's config set it.
    fn globals_for_restore(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.inv.globals().to_vec();
        let validation_set = self.inv.has_global(SPEC_VALIDATION)
            || self
                .cfg
                .runsc_flags
                .iter()
                .any(|f| f.trim_start_matches('-').split('=').next() == Some(SPEC_VALIDATION));
        if !validation_set && (self.spec_validation)() {
            args.push(format!("--{SPEC_VALIDATION}=warning").into());
        }
        args
    }

    /// A pod sandbox or a plain container: the image podsnapd prepares.
    fn sandbox_marker(
        &self,
        id: &str,
        snapshot: &str,
        spec: &spec::Bundle,
        bundle: &Path,
    ) -> Result<Marker, GvisorShimError> {
        // The sandbox's restore runs with --background where runsc has it: podsnapd may then
        // serve the image lazily, following the sandbox under this root.
        let root = PathBuf::from(self.inv.root_or_default());
        let want = Want {
            snapshot,
            container_id: id,
            runsc_root: Some(&root),
            background: (self.background)(),
        };
        let prepared = (self.prepare)(&want).map_err(|source| GvisorShimError::Prepare {
            id: id.to_string(),
            snapshot: snapshot.to_string(),
            source,
        })?;
        let mut pod_containers = vec![];
        if spec.role == spec::Role::PodSandbox {
            let p = prepared
                .pod
                .as_ref()
                .ok_or_else(|| GvisorShimError::NotAPodSnapshot {
                    id: id.to_string(),
                    snapshot: snapshot.to_string(),
                })?;
            pod::check_pod_namespace(self.cfg, p, spec).map_err(|source| GvisorShimError::Pod {
                id: id.to_string(),
                snapshot: snapshot.to_string(),
                source: Box::new(source),
            })?;
            pod_containers = p.containers.clone();
        }
        if !prepared.image_dir.is_dir() {
            return Err(GvisorShimError::ImageDirMissing {
                id: id.to_string(),
                dir: prepared.image_dir,
            });
        }
        Ok(Marker {
            pod_containers,
            ..Marker::restore_on_start(snapshot, prepared.image_dir, bundle)
        })
    }

    /// An app container: its pod sandbox's image; `None` when a container of its name was
    /// restored in this pod before (a restart: fresh).
    fn container_marker(
        &self,
        id: &str,
        snapshot: &str,
        spec: &spec::Bundle,
        bundle: &Path,
    ) -> Result<Option<Marker>, GvisorShimError> {
        let sandbox = spec
            .sandbox_id
            .clone()
            .ok_or_else(|| GvisorShimError::NoSandboxId { id: id.to_string() })?;
        let sandbox_path = self.marker(OsStr::new(&sandbox));
        let mut sandbox_marker =
            read_marker(&sandbox_path)?.ok_or_else(|| GvisorShimError::SandboxNotRestored {
                id: id.to_string(),
                snapshot: snapshot.to_string(),
                sandbox: sandbox.clone(),
            })?;
        if sandbox_marker.snapshot_id != snapshot {
            return Err(GvisorShimError::SandboxOfOtherSnapshot {
                id: id.to_string(),
                snapshot: snapshot.to_string(),
                sandbox,
                restored: sandbox_marker.snapshot_id,
            });
        }
        let name = spec.container_name.clone().unwrap_or_default();
        if sandbox_marker.restored.contains(&name) {
            return Ok(None);
        }
        // runsc matches an app container to the image by its CRI name, in any order.
        let known = &sandbox_marker.pod_containers;
        if !known.is_empty() && !known.contains(&name) {
            return Err(GvisorShimError::NoSuchContainer {
                id: id.to_string(),
                snapshot: snapshot.to_string(),
                name,
                containers: known.clone(),
            });
        }
        sandbox_marker.restored.push(name);
        write_marker(&sandbox_path, &sandbox_marker)?;
        Ok(Some(Marker::restore_on_start(
            snapshot,
            sandbox_marker.image_dir,
            bundle,
        )))
    }

    /// `start` of a marked container: `restore` into the created container, same stdio.
    fn start(&self) -> Result<Vec<OsString>, GvisorShimError> {
        let Some(id) = self.inv.single_id() else {
            return Ok(self.passthrough());
        };
        let Some(m) = read_marker(&self.marker(id))? else {
            return Ok(self.passthrough());
        };
        let sandbox = spec::read(&m.bundle)
            .map(|s| s.role != spec::Role::PodContainer)
            .unwrap_or(false);
        let mut image = OsString::from("--image-path=");
        image.push(&m.image_dir);
        let mut args = self.globals_for_restore();
        args.extend(["restore".into(), "--detach".into(), image]);
        if sandbox && (self.background)() {
            args.push("--background".into());
        }
        args.push(id.to_os_string());
        Ok(self.with_flags(args))
    }

    /// `delete`: the named containers' markers go first.
    fn delete(&self) -> Vec<OsString> {
        for id in self.inv.delete_ids() {
            let _ = marker::remove(&self.marker(id));
        }
        self.passthrough()
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

fn read_marker(path: &Path) -> Result<Option<Marker>, GvisorShimError> {
    marker::read(path).map_err(|source| GvisorShimError::Marker {
        path: path.to_path_buf(),
        source,
    })
}

fn write_marker(path: &Path, m: &Marker) -> Result<(), GvisorShimError> {
    marker::write(path, m).map_err(|source| GvisorShimError::Marker {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podsnap_runsc::pod::PodSnapshot;
    use std::cell::RefCell;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn config(marker_dir: &Path) -> Config {
        let dir = marker_dir.join("cfg");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("podsnap.toml");
        std::fs::write(&file, format!("marker_dir = {:?}\n", marker_dir.display())).unwrap();
        Config::load(&Env {
            config: Some(file.into_os_string()),
            ..Env::default()
        })
        .unwrap()
    }

    fn bundle(dir: &Path, name: &str, ann: &[(&str, &str)]) -> PathBuf {
        let b = dir.join(name);
        std::fs::create_dir_all(&b).unwrap();
        let ann: serde_json::Map<String, serde_json::Value> = ann
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let spec =
            serde_json::json!({"annotations": ann, "linux": {"namespaces": [{"type": "pid"}]}});
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }

    struct World {
        dir: tempfile::TempDir,
        cfg: Config,
        image: PathBuf,
        /// (snapshot, container, runsc root, background) of each PrepareRestore.
        prepared: RefCell<Vec<(String, String, String, bool)>>,
    }

    impl World {
        fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(&dir.path().join("markers"));
            let image = dir.path().join("image");
            std::fs::create_dir_all(&image).unwrap();
            World {
                dir,
                cfg,
                image,
                prepared: RefCell::new(vec![]),
            }
        }

        fn plan(&self, argv: &[&str]) -> Result<Vec<OsString>, GvisorShimError> {
            let inv = Invocation::parse(os(argv));
            let prepare = |want: &Want<'_>| {
                let snapshot = want.snapshot;
                self.prepared.borrow_mut().push((
                    snapshot.to_string(),
                    want.container_id.to_string(),
                    want.runsc_root.unwrap().display().to_string(),
                    want.background,
                ));
                Ok(Prepared {
                    image_dir: self.image.clone(),
                    lazy: false,
                    pod: Some(PodSnapshot {
                        snapshot_id: snapshot.to_string(),
                        namespace: "default".into(),
                        name: "web".into(),
                        containers: vec!["app".into(), "side".into()],
                    }),
                    containers: 3,
                })
            };
            Planner {
                inv: &inv,
                cfg: &self.cfg,
                prepare: &prepare,
                background: &|| true,
                spec_validation: &|| true,
            }
            .plan()
        }
    }

    const G: &str = "--root=/run/r/k8s.io";

    #[test]
    fn mode_follows_config_env_and_parent() {
        assert!(active(Shim::Gvisor, None, || false));
        assert!(!active(Shim::Runc, None, || true));
        assert!(active(Shim::Auto, None, || true));
        assert!(!active(Shim::Auto, None, || false));
        assert!(active(Shim::Runc, Some("gvisor"), || false));
        assert!(!active(Shim::Gvisor, Some("runc"), || true));
        assert!(is_gvisor_shim(Path::new(
            "/opt/bin/containerd-shim-runsc-v1-testmachine"
        )));
        assert!(is_gvisor_shim(Path::new("containerd-shim-runsc-v1")));
        assert!(!is_gvisor_shim(Path::new(
            "/usr/bin/containerd-shim-runc-v2"
        )));
    }

    #[test]
    fn unannotated_calls_pass_through_unchanged() {
        let w = World::new();
        let b = bundle(
            w.dir.path(),
            "b",
            &[("io.kubernetes.cri.container-type", "container")],
        );
        for argv in [
            vec![
                G,
                "--log=/x/log.json",
                "create",
                "--bundle",
                b.to_str().unwrap(),
                "--pid-file",
                "/x/init.pid",
                "c1",
            ],
            vec![G, "start", "c1"],
            vec![G, "wait", "c1"],
            vec![G, "kill", "--all", "c1", "9"],
            vec![G, "delete", "--force", "c1"],
            vec![G, "events", "--stats", "c1"],
            vec!["--version"],
        ] {
            assert_eq!(w.plan(&argv).unwrap(), os(&argv), "{argv:?}");
        }
        assert!(w.prepared.borrow().is_empty());
    }

    impl World {
        /// Pod web-2 of namespace default, every container annotated to restore snap1: the
        /// bundles of its pause container and of its app containers `side` and `app`.
        fn web_pod(&self) -> (PathBuf, PathBuf, PathBuf) {
            let pause = bundle(
                self.dir.path(),
                "pause",
                &[
                    (spec::RESTORE_ANNOTATION, "snap1"),
                    ("io.kubernetes.cri.container-type", "sandbox"),
                    ("io.kubernetes.cri.sandbox-namespace", "default"),
                    ("io.kubernetes.cri.sandbox-name", "web-2"),
                ],
            );
            let app = |name: &str| {
                bundle(
                    self.dir.path(),
                    name,
                    &[
                        (spec::RESTORE_ANNOTATION, "snap1"),
                        ("io.kubernetes.cri.container-type", "container"),
                        ("io.kubernetes.cri.container-name", name),
                        ("io.kubernetes.cri.sandbox-id", "sb"),
                        ("io.kubernetes.cri.sandbox-namespace", "default"),
                    ],
                )
            };
            (pause, app("side"), app("app"))
        }

        /// `create` of `id` from `bundle` (`flags` before the id) is planned as it came, with
        /// `--restore-spec-validation=warning` as its first global flag.
        fn assert_create_warns(&self, bundle: &Path, flags: &[&str], id: &str) {
            let mut create = vec![G, "create", "--bundle", bundle.to_str().unwrap()];
            create.extend(flags);
            create.push(id);
            let mut want = create.clone();
            want.insert(1, "--restore-spec-validation=warning");
            assert_eq!(self.plan(&create).unwrap(), os(&want));
        }

        /// `argv` is planned unchanged: nothing to restore.
        fn assert_passes_through(&self, argv: &[&str]) {
            assert_eq!(self.plan(argv).unwrap(), os(argv), "{argv:?}");
        }
    }

    #[test]
    fn a_pod_restores_at_start_sandbox_first() {
        let w = World::new();
        let (pause, side, app) = w.web_pod();
        // The sandbox checks the restore with its create's flags.
        w.assert_create_warns(&pause, &["--pid-file", "/p", "--user-log", "/u"], "sb");
        // podsnapd is told the sandbox's root and that it restores in the background, so it
        // may serve the image lazily and follow the sandbox.
        assert_eq!(
            *w.prepared.borrow(),
            vec![(
                "snap1".to_string(),
                "sb".to_string(),
                "/run/r/k8s.io".to_string(),
                true
            )]
        );
        let img = format!("--image-path={}", w.image.display());
        assert_eq!(
            w.plan(&[G, "--log=/l", "start", "sb"]).unwrap(),
            os(&[
                G,
                "--log=/l",
                "--restore-spec-validation=warning",
                "restore",
                "--detach",
                &img,
                "--background",
                "sb"
            ])
        );
        // App containers in another order than the snapshot's: runsc matches them by name.
        for (b, id) in [(&side, "c-side"), (&app, "c-app")] {
            w.assert_create_warns(b, &["--pid-file", "/p"], id);
            assert_eq!(
                w.plan(&[G, "--restore-spec-validation=enforce", "start", id])
                    .unwrap(),
                os(&[
                    G,
                    "--restore-spec-validation=enforce",
                    "restore",
                    "--detach",
                    &img,
                    id
                ])
            );
        }
        assert_eq!(w.prepared.borrow().len(), 1, "one PrepareRestore per pod");
        // The kubelet restarting a container: fresh.
        w.assert_passes_through(&[G, "create", "--bundle", app.to_str().unwrap(), "c-app2"]);
        w.assert_passes_through(&[G, "start", "c-app2"]);
        // delete drops the markers.
        w.assert_passes_through(&[G, "delete", "--force", "sb"]);
        w.assert_passes_through(&[G, "start", "sb"]);
    }

    #[test]
    fn refusals_are_one_line() {
        let w = World::new();
        let other_ns = bundle(
            w.dir.path(),
            "p",
            &[
                (spec::RESTORE_ANNOTATION, "snap1"),
                ("io.kubernetes.cri.container-type", "sandbox"),
                ("io.kubernetes.cri.sandbox-namespace", "team-b"),
            ],
        );
        let e = w
            .plan(&[G, "create", "--bundle", other_ns.to_str().unwrap(), "sb"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("team-b") && !e.contains('\n'), "{e}");
        let orphan = bundle(
            w.dir.path(),
            "a",
            &[
                (spec::RESTORE_ANNOTATION, "snap1"),
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.container-name", "app"),
                ("io.kubernetes.cri.sandbox-id", "nosuch"),
            ],
        );
        let e = w
            .plan(&[G, "create", "--bundle", orphan.to_str().unwrap(), "c"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pod sandbox nosuch was not restored"), "{e}");
    }
}
