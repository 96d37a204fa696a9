//! The [`SandboxRuntime`] trait the daemon drives, its domain types, and the real
//! implementation [`RunscRuntime`] (a runsc client plus an optional containerd client).

use crate::containerd::{ContainerdClient, ContainerdError, PodInfo, TaskStatus};
use crate::image::{self, HeaderError};
use crate::policy::{Manager, ReleasePolicy, ResumeMethod};
use crate::rootdir::{self, RootfsOverlay};
use crate::runsc::{self, Capabilities, Runsc, RunscVersion, Status};
use crate::volumes;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// runsc's default `--root`.
pub const DEFAULT_RUNSC_ROOT: &str = "/var/run/runsc";

/// What to checkpoint or inspect.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// A runsc container id under the runtime's configured root.
    Runsc {
        /// Container id.
        id: String,
    },
    /// A containerd container.
    Containerd {
        /// containerd namespace (`k8s.io`, `default`).
        namespace: String,
        /// Container id.
        id: String,
    },
    /// A Kubernetes pod, found through the CRI's labels in containerd's `k8s.io` namespace:
    /// the whole sandbox (pause and app containers) is checkpointed as one.
    Pod {
        /// Kubernetes namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

/// containerd namespace the CRI plugin keeps pods in.
pub const CRI_NAMESPACE: &str = "k8s.io";

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Runsc { id } => write!(f, "runsc container {id}"),
            Target::Containerd { namespace, id } => {
                write!(f, "containerd container {namespace}/{id}")
            }
            Target::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
        }
    }
}

/// How a sandbox is managed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SandboxKind {
    /// Started with runsc directly.
    Standalone,
    /// Started by containerd (a runc v2 shim driving runsc, or gVisor's shim).
    Containerd {
        /// containerd namespace.
        namespace: String,
        /// containerd container id.
        container: String,
        /// Runtime name (`io.containerd.runc.v2`).
        runtime: String,
        /// Kubernetes facts when CRI made it.
        pod: Option<Box<PodInfo>>,
        /// containerd's task status at resolution time.
        task_status: Option<TaskStatus>,
        /// containerd's task pid.
        task_pid: Option<u32>,
    },
}

/// A resolved sandbox: everything needed to checkpoint it and to describe it in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    /// The runsc root its state lives under.
    pub root: PathBuf,
    /// The runsc container id.
    pub container_id: String,
    /// The runsc sandbox id (equal to the container id for single-container sandboxes started
    /// directly; the pause container's id in a pod).
    pub sandbox_id: String,
    /// Standalone or containerd-managed.
    pub kind: SandboxKind,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// OCI annotations of the container's spec.
    pub annotations: BTreeMap<String, String>,
    /// Containers in this sandbox (runsc 20221219 checkpoints only sandboxes with one).
    pub container_count: usize,
    /// The sandbox's containers, root first then in creation order (empty in job records
    /// written before containers were recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<SandboxContainer>,
    /// The platform the sandbox runs on (its `--platform`, or the release's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Container status.
    pub status: Status,
    /// Sandbox process pid (when running).
    pub pid: Option<i32>,
    /// The root filesystem overlay.
    pub rootfs_overlay: RootfsOverlay,
}

/// The part a container plays in its sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerRole {
    /// The root container: its id is the sandbox id (the pause container of a pod). Restoring
    /// it restores the whole sandbox.
    Root,
    /// Any other container of the sandbox, restored after the root.
    Container,
}

impl std::fmt::Display for ContainerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerRole::Root => "root",
            ContainerRole::Container => "container",
        })
    }
}

/// One container of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxContainer {
    /// runsc container id.
    pub id: String,
    /// Its name: the CRI container name when the CRI made it, else its id.
    pub name: String,
    /// Root or not.
    pub role: ContainerRole,
    /// Its bundle directory.
    pub bundle: PathBuf,
}

impl Sandbox {
    /// True when the sandbox holds more than one container (a pod).
    pub fn is_multi_container(&self) -> bool {
        self.container_count > 1
    }

    /// The id runsc checkpoints: the root container's, which saves the whole sandbox.
    pub fn checkpoint_id(&self) -> &str {
        if self.is_multi_container() {
            &self.sandbox_id
        } else {
            &self.container_id
        }
    }

    /// Who manages the sandbox, for release policy.
    pub fn manager(&self) -> Manager {
        match self.kind {
            SandboxKind::Standalone => Manager::Standalone,
            SandboxKind::Containerd { .. } => Manager::Containerd,
        }
    }

    /// True when the container's filesystem writes travel with a checkpoint.
    pub fn rootfs_in_memory(&self) -> bool {
        self.rootfs_overlay.writes_travel_with_checkpoint()
    }

    /// What becomes of this sandbox after a checkpoint on the release `policy` describes,
    /// with a resume asked or not; or why the release cannot do it. The one place a
    /// checkpoint asks the release policy (the daemon before touching the sandbox,
    /// [`SandboxRuntime::checkpoint`] before running runsc).
    pub fn after_checkpoint(
        &self,
        policy: &ReleasePolicy,
        resume: bool,
    ) -> Result<AfterCheckpoint, CheckpointRefusal> {
        if self.is_multi_container() {
            if let Some(reason) = policy.multi_container_checkpoint().reason() {
                return Err(CheckpointRefusal::MultiContainer(format!(
                    "sandbox {} holds {} containers and {reason}",
                    self.sandbox_id, self.container_count
                )));
            }
        }
        if !resume {
            return Ok(AfterCheckpoint::Stop);
        }
        match policy.resume_method(self.manager()) {
            ResumeMethod::LeaveRunning => Ok(AfterCheckpoint::LeaveRunning),
            ResumeMethod::RestoreInPlace if self.is_multi_container() => {
                Err(CheckpointRefusal::NoRestoreInPlace)
            }
            ResumeMethod::RestoreInPlace => Ok(AfterCheckpoint::RestoreInPlace),
            ResumeMethod::Unsupported(reason) => Err(CheckpointRefusal::NoResume(reason)),
        }
    }
}

/// What becomes of a sandbox once runsc wrote its image: the post-checkpoint action as this
/// runsc release can honour it ([`Sandbox::after_checkpoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCheckpoint {
    /// runsc keeps it running (`--leave-running`).
    LeaveRunning,
    /// runsc stops it; it is restored in place under the same id, from the local image.
    RestoreInPlace,
    /// runsc stops it and it stays down.
    Stop,
}

impl AfterCheckpoint {
    /// Whether runsc stops the sandbox when it checkpoints it.
    pub fn runsc_stops(self) -> bool {
        self != AfterCheckpoint::LeaveRunning
    }
}

/// Why this release cannot checkpoint a sandbox as asked ([`Sandbox::after_checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointRefusal {
    /// The sandbox holds several containers and this release cannot checkpoint that; says
    /// which sandbox and why.
    MultiContainer(String),
    /// The sandbox cannot be resumed after its checkpoint: the release policy's reason.
    NoResume(String),
    /// A resume would restore the sandbox in place, which a sandbox of several containers
    /// cannot be.
    NoRestoreInPlace,
}

/// Options of a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOpts {
    /// Keep the sandbox running afterwards (`--leave-running`), when runsc can.
    pub leave_running: bool,
    /// Run runsc as a durable job in this directory (survives a daemon crash).
    pub job_dir: Option<PathBuf>,
    /// Timeout of the runsc call.
    pub timeout: Option<Duration>,
    /// For a checkpoint that stops the sandbox: return once runsc has, without waiting for
    /// runsc's record to say stopped; the caller then calls
    /// [`SandboxRuntime::settle_stopped`] itself (while it uploads, say). The sandbox's exit
    /// takes from a fraction of a second to seconds after runsc returns (its adopter must
    /// reap it: 1.2-2.2 s here).
    pub defer_settle: bool,
}

/// A checkpoint image runsc wrote: its directory and the metadata of its header (what a
/// manifest records), read once through [`SandboxRuntime::open_image`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointImage {
    /// The directory holding `checkpoint.img` (and, on current runsc, the pages files).
    pub dir: PathBuf,
    /// The JSON metadata of `checkpoint.img`'s header.
    pub metadata: BTreeMap<String, String>,
}

/// A standalone restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreRequest {
    /// Container id of the restored sandbox (must not exist, nor be a prefix of, or prefixed
    /// by, another id under the root).
    pub id: String,
    /// Bundle directory (its `config.json` must match the checkpointed container's).
    pub bundle: PathBuf,
    /// Directory holding `checkpoint.img` (and, on current runsc, the pages files).
    pub image_dir: PathBuf,
    /// Where the restored sandbox's stdout/stderr go; `/dev/null` when unset.
    pub log_file: Option<PathBuf>,
    /// The runsc root to restore under instead of the configured one.
    pub root: Option<PathBuf>,
    /// Run runsc as a durable job in this directory.
    pub job_dir: Option<PathBuf>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// Timeout of the runsc call.
    pub timeout: Option<Duration>,
    /// `runsc restore --background`: runsc returns once the kernel state is loaded and reads
    /// the pages while the sandbox runs (only on releases that have the flag).
    pub background: bool,
    /// The other containers of a multi-container image, restored after the root (`id` and
    /// `bundle` above) in this order. Each bundle's `io.kubernetes.cri.sandbox-id` annotation
    /// must name `id`, the restored root.
    pub containers: Vec<ContainerRestore>,
}

/// A non-root container of a multi-container restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRestore {
    /// Its name in the snapshot (for messages).
    pub name: String,
    /// Its new container id.
    pub id: String,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Where its stdout/stderr go; the root's log when unset.
    pub log_file: Option<PathBuf>,
}

/// The result of a restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Container id.
    pub id: String,
    /// The runsc root it lives under.
    pub root: PathBuf,
    /// Sandbox pid.
    pub pid: Option<i32>,
    /// Its status after the restore.
    pub status: Status,
}

/// State of a runsc container.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxState {
    /// Container id.
    pub id: String,
    /// Root it lives under.
    pub root: PathBuf,
    /// Status.
    pub status: Status,
    /// Sandbox pid (`None` when not running).
    pub pid: Option<i32>,
    /// Bundle.
    pub bundle: PathBuf,
}

/// Facts about the runtime on this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeInfo {
    /// The runsc binary.
    pub runsc_path: PathBuf,
    /// Its version.
    pub version: RunscVersion,
    /// What it can do.
    pub capabilities: Capabilities,
    /// The platform passed (`ptrace` when none is).
    pub platform: String,
    /// The configured runsc root.
    pub root: PathBuf,
    /// Extra global flags passed to every call.
    pub global_flags: Vec<String>,
    /// The rootfs overlay those flags configure for sandboxes this daemon starts.
    pub rootfs_overlay: RootfsOverlay,
}

impl RuntimeInfo {
    /// What this runsc release can do.
    pub fn policy(&self) -> ReleasePolicy {
        ReleasePolicy::new(&self.version, &self.capabilities)
    }
}

/// Errors of the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// runsc failed, timed out or could not be run.
    #[error(transparent)]
    Runsc(#[from] runsc::Error),
    /// containerd failed or could not be reached.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The target does not exist.
    #[error("{target} not found")]
    NotFound {
        /// What was looked for.
        target: String,
    },
    /// The target exists but is not run by runsc.
    #[error("{target} does not run under runsc (runtime {runtime}, binary {binary:?})")]
    NotRunsc {
        /// The target.
        target: String,
        /// Its runtime name.
        runtime: String,
        /// Its runtime binary (empty: the shim's default).
        binary: String,
    },
    /// The operation is not possible with this runsc or this sandbox.
    #[error("cannot {op} {target}: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The sandbox.
        target: String,
        /// Why.
        reason: String,
    },
    /// A containerd target was given but no containerd client is configured.
    #[error("containerd target {target} given but no containerd socket is configured")]
    NoContainerd {
        /// The target.
        target: String,
    },
    /// The sandbox is not in a state that allows the operation.
    #[error("cannot {op} {target}: it is {status}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The sandbox.
        target: String,
        /// Its status.
        status: Status,
    },
    /// The image directory holds no valid image.
    #[error("invalid checkpoint image in {dir}")]
    Image {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: HeaderError,
    },
    /// A file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A request was malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The pod's volumes outside the checkpoint could not be carried in its image.
    #[error("cannot carry the volumes of {target} in its snapshot")]
    Volumes {
        /// The sandbox.
        target: String,
        /// Why.
        #[source]
        source: podsnap_volumes::PackError,
    },
}

/// The runtime operations the daemon needs, object safe so it can hold `Arc<dyn SandboxRuntime>`.
#[async_trait]
pub trait SandboxRuntime: Send + Sync {
    /// runsc path, version, capabilities and platform.
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError>;
    /// Finds a target and describes its sandbox.
    async fn resolve(&self, target: &Target) -> Result<Sandbox, RuntimeError>;
    /// Checkpoints a resolved sandbox into `image_dir` (runsc stops it unless it can and is
    /// asked to leave it running).
    async fn checkpoint(
        &self,
        sb: &Sandbox,
        image_dir: &Path,
        opts: &CheckpointOpts,
    ) -> Result<(), RuntimeError>;
    /// Restores an image as a new standalone sandbox.
    async fn restore(&self, req: &RestoreRequest) -> Result<Restored, RuntimeError>;
    /// After a checkpoint that stopped `sb` and that ran outside [`SandboxRuntime::checkpoint`]
    /// (a durable runsc job found finished after a daemon restart) or asked it to
    /// [`CheckpointOpts::defer_settle`], makes runsc's record of it say stopped once the
    /// sandbox has exited (see [`SandboxRuntime::checkpoint`]).
    async fn settle_stopped(&self, _sb: &Sandbox) {}
    /// Takes the outcome of an operation that an earlier run of the daemon started as a
    /// durable job in `job_dir` (its [`CheckpointOpts::job_dir`] or
    /// [`RestoreRequest::job_dir`]; runsc ran in its own session and outlived that daemon),
    /// waiting up to `timeout` if it still runs: `Ok(true)` when it succeeded, `Ok(false)`
    /// when none was started there, an error when it failed. A runtime without durable jobs
    /// has none to take.
    async fn await_earlier(
        &self,
        _job_dir: &Path,
        _timeout: Option<Duration>,
    ) -> Result<bool, RuntimeError> {
        Ok(false)
    }
    /// The image in `dir` that a checkpoint wrote, with its header's metadata.
    fn open_image(&self, dir: &Path) -> Result<CheckpointImage, RuntimeError> {
        let header = image::read_image_dir_header(dir).map_err(|source| RuntimeError::Image {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(CheckpointImage {
            dir: dir.to_path_buf(),
            metadata: header.metadata,
        })
    }
    /// State of a container under `root` (the configured root when `None`).
    async fn state(&self, root: Option<&Path>, id: &str) -> Result<SandboxState, RuntimeError>;
    /// Deletes a container under `root` (the configured root when `None`).
    async fn delete(&self, root: Option<&Path>, id: &str, force: bool) -> Result<(), RuntimeError>;
}

/// The real runtime: runsc on this host, and containerd when a socket is configured.
#[derive(Debug)]
pub struct RunscRuntime {
    runsc: Runsc,
    containerd: Option<ContainerdClient>,
    facts: tokio::sync::OnceCell<(RunscVersion, Capabilities)>,
    /// How much of a pod's volumes a checkpoint may carry (see [`volumes`]).
    volume_limits: podsnap_volumes::Limits,
}

fn valid_id(id: &str) -> Result<(), RuntimeError> {
    if id.is_empty()
        || id.len() > 256
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(RuntimeError::InvalidRequest(format!(
            "container id {id:?} must be 1-256 characters of [A-Za-z0-9_.-]"
        )));
    }
    Ok(())
}

impl RunscRuntime {
    /// A runtime over a runsc client, without containerd.
    pub fn new(runsc: Runsc) -> Self {
        RunscRuntime {
            runsc,
            containerd: None,
            facts: tokio::sync::OnceCell::new(),
            volume_limits: podsnap_volumes::Limits::default(),
        }
    }

    /// Other limits for the pod volumes a checkpoint carries.
    pub fn with_volume_limits(mut self, limits: podsnap_volumes::Limits) -> Self {
        self.volume_limits = limits;
        self
    }

    /// Adds a containerd client (connected lazily).
    pub fn with_containerd(mut self, client: ContainerdClient) -> Self {
        self.containerd = Some(client);
        self
    }

    /// The runsc client.
    pub fn runsc(&self) -> &Runsc {
        &self.runsc
    }

    /// The containerd client, or why `target` cannot be reached without one.
    fn containerd_for(&self, target: &str) -> Result<&ContainerdClient, RuntimeError> {
        self.containerd
            .as_ref()
            .ok_or_else(|| RuntimeError::NoContainerd {
                target: target.to_string(),
            })
    }

    /// The containerd client, if any.
    pub fn containerd(&self) -> Option<&ContainerdClient> {
        self.containerd.as_ref()
    }

    /// The configured runsc root.
    pub fn root(&self) -> PathBuf {
        self.runsc
            .root()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNSC_ROOT))
    }

    fn client_for(&self, root: Option<&Path>) -> Runsc {
        match root {
            Some(r) => self.runsc.with_root(r),
            None => self.runsc.with_root(self.root()),
        }
    }

    async fn facts(&self) -> Result<&(RunscVersion, Capabilities), RuntimeError> {
        self.facts
            .get_or_try_init(|| async {
                let v = self.runsc.version().await?;
                let c = self.runsc.capabilities().await?;
                Ok::<_, RuntimeError>((v, c))
            })
            .await
    }

    async fn policy(&self) -> Result<ReleasePolicy, RuntimeError> {
        let (v, c) = self.facts().await?;
        Ok(ReleasePolicy::new(v, c))
    }

    /// The overlay of sandboxes this runsc starts with the configured flags: the flag's, or
    /// the release's default.
    fn configured_overlay(&self, policy: &ReleasePolicy) -> RootfsOverlay {
        RootfsOverlay::from_flags(self.runsc.extra_flags())
            .unwrap_or_else(|| policy.default_overlay())
    }

    /// The platform of sandboxes this runsc starts with the configured flags.
    fn configured_platform(&self, policy: &ReleasePolicy) -> String {
        self.runsc
            .platform()
            .map(str::to_string)
            .unwrap_or_else(|| policy.default_platform())
    }

    /// After a checkpoint that stopped the sandbox, makes runsc's record say so. runsc
    /// 20240729 keeps reporting the container `running` with the dead sandbox's pid; a `kill`
    /// makes it notice (it then fails, since nothing is left to signal) and record `stopped`.
    async fn settle_after_stop(&self, root: &Path, id: &str) {
        let client = self.runsc.with_root(root);
        let Ok(state) = client.state(id).await else {
            return;
        };
        if state.status != Status::Running {
            return;
        }
        // The sandbox exits shortly after runsc checkpoint returns.
        let alive = |pid: i32| {
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(state.pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !alive(state.pid) {
            let _ = client.kill(id, "KILL", &runsc::KillOpts::default()).await;
            match client.state(id).await {
                Ok(s) if s.status != Status::Running => {
                    tracing::debug!(container = id, status = %s.status, "runsc state settled after checkpoint")
                }
                Ok(_) => tracing::warn!(
                    container = id,
                    "runsc still reports a checkpointed container running"
                ),
                Err(e) => {
                    tracing::debug!(container = id, error = %e, "runsc state after checkpoint")
                }
            }
        }
    }

    /// Describes container `id` under `root` from runsc's state and its root directory.
    async fn describe(
        &self,
        root: &Path,
        id: &str,
        target: &str,
        kind: SandboxKind,
    ) -> Result<Sandbox, RuntimeError> {
        let client = self.runsc.with_root(root);
        let state = match client.state(id).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => {
                return Err(RuntimeError::NotFound {
                    target: target.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let io = |e| RuntimeError::Io {
            context: format!("reading runsc root {}", root.display()),
            source: e,
        };
        let found = rootdir::find_state_file(root, id).map_err(io)?;
        let (sandbox_id, file) = match &found {
            Some((name, path)) => (name.sandbox_id.clone(), rootdir::StateFile::read(path).ok()),
            None => (id.to_string(), None),
        };
        let files = rootdir::sandbox_container_files(root, &sandbox_id).map_err(io)?;
        let container_count = files.len().max(1);
        let containers = files
            .into_iter()
            .map(|f| SandboxContainer {
                name: f.cri_name.unwrap_or_else(|| f.id.clone()),
                role: if f.root {
                    ContainerRole::Root
                } else {
                    ContainerRole::Container
                },
                id: f.id,
                bundle: f.bundle,
            })
            .collect();
        let policy = self.policy().await?;
        let pid = (state.pid > 0).then_some(state.pid);
        let annotations = file.as_ref().map(|f| f.annotations()).unwrap_or_default();
        let sandbox_pid = file
            .as_ref()
            .and_then(|f| f.sandbox.as_ref())
            .map(|s| s.pid)
            .filter(|p| *p > 0)
            .or(pid);
        let sandbox_args = sandbox_pid.and_then(rootdir::sandbox_args);
        let platform = match &sandbox_args {
            Some(args) => rootdir::platform_from_sandbox_args(args)
                .or_else(|| Some(policy.default_platform())),
            None => None,
        };
        let rootfs_overlay = sandbox_args
            .as_deref()
            .map(|args| {
                RootfsOverlay::from_sandbox_args(args).unwrap_or_else(|| policy.default_overlay())
            })
            .or_else(|| {
                annotations
                    .get("dev.gvisor.flag.overlay2")
                    .map(|v| RootfsOverlay::from_overlay2(v))
            })
            .unwrap_or_else(|| match kind {
                SandboxKind::Standalone => self.configured_overlay(&policy),
                SandboxKind::Containerd { .. } => RootfsOverlay::Unknown,
            });
        Ok(Sandbox {
            root: root.to_path_buf(),
            container_id: id.to_string(),
            sandbox_id,
            kind,
            bundle: state.bundle,
            annotations,
            container_count,
            containers,
            platform,
            status: state.status,
            pid,
            rootfs_overlay,
        })
    }

    async fn resolve_containerd(&self, namespace: &str, id: &str) -> Result<Sandbox, RuntimeError> {
        let target = Target::Containerd {
            namespace: namespace.to_string(),
            id: id.to_string(),
        }
        .to_string();
        let client = self.containerd_for(&target)?;
        let info = match client.container(namespace, id).await {
            Ok(i) => i,
            Err(ContainerdError::NotFound { .. }) => return Err(RuntimeError::NotFound { target }),
            Err(e) => return Err(e.into()),
        };
        let not_runsc = || RuntimeError::NotRunsc {
            target: target.clone(),
            runtime: info.runtime.name.clone(),
            binary: info.runtime.binary_name.clone(),
        };
        let root = info.shim_root().ok_or_else(not_runsc)?;
        // A wrapper with another name is still runsc if runsc's state file is in the root.
        let has_runsc_state = rootdir::find_state_file(&root, id).ok().flatten().is_some();
        if !has_runsc_state && !info.runtime.config_error.is_empty() {
            // The shim's runsc.toml names the root; without it the default was a guess.
            return Err(RuntimeError::NotFound {
                target: format!(
                    "runsc state of {target} under the default root {} (its runtime's \
                     options file, which names the root, is unreadable here: {})",
                    root.display(),
                    info.runtime.config_error
                ),
            });
        }
        if !info.configured_for_runsc() && !has_runsc_state {
            return Err(not_runsc());
        }
        let task = client.task(namespace, id).await?;
        let kind = SandboxKind::Containerd {
            namespace: namespace.to_string(),
            container: id.to_string(),
            runtime: info.runtime.name.clone(),
            pod: info.pod().map(Box::new),
            task_status: task.as_ref().map(|t| t.status),
            task_pid: task.as_ref().map(|t| t.pid),
        };
        let mut sb = self.describe(&root, id, &target, kind).await?;
        if sb.annotations.is_empty() {
            sb.annotations = info.annotations();
        }
        Ok(sb)
    }
}

/// A non-root container's bundle must join the restored root: its spec's
/// `io.kubernetes.cri.sandbox-id` names `root_id`.
fn check_sub_bundle(c: &ContainerRestore, root_id: &str) -> Result<(), RuntimeError> {
    let path = c.bundle.join("config.json");
    let spec: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            RuntimeError::InvalidRequest(format!(
                "bundle {} of container {} has no readable config.json",
                c.bundle.display(),
                c.name
            ))
        })?;
    let ann = rootdir::annotations_of(&spec);
    match ann.get(rootdir::CRI_SANDBOX_ID) {
        Some(s) if s == root_id => Ok(()),
        other => Err(RuntimeError::InvalidRequest(format!(
            "bundle {} of container {} must carry the annotation {}={root_id} (the restored root), found {}",
            c.bundle.display(),
            c.name,
            rootdir::CRI_SANDBOX_ID,
            other.map(String::as_str).unwrap_or("none")
        ))),
    }
}

impl RunscRuntime {
    async fn restore_container(
        &self,
        client: &Runsc,
        req: &RestoreRequest,
        c: &ContainerRestore,
    ) -> Result<(), RuntimeError> {
        let log = c.log_file.clone().or_else(|| req.log_file.clone());
        tracing::info!(container = %c.id, name = %c.name, sandbox = %req.id, "restoring a container into the sandbox");
        client
            .create(
                &c.id,
                &runsc::CreateOpts {
                    bundle: c.bundle.clone(),
                    pid_file: None,
                    log_file: log.clone(),
                    timeout: req.timeout,
                },
            )
            .await?;
        client
            .restore(
                &c.id,
                &runsc::RestoreOpts {
                    image_path: req.image_dir.clone(),
                    bundle: c.bundle.clone(),
                    detach: true,
                    log_file: log,
                    timeout: req.timeout,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }
}

impl RunscRuntime {
    /// `runsc checkpoint` of a runc-shim pod whose volumes live outside the checkpoint: the
    /// sandbox is paused, its volumes packed into the image ([`podsnap_volumes::FILE_NAME`]),
    /// checkpointed (the same moment as the pack: nothing written after the checkpoint is in
    /// the pack) and resumed (a sandbox the checkpoint stopped exits then). A record in the
    /// job dir lets a restarted daemon resume it ([`SandboxRuntime::await_earlier`]).
    async fn checkpoint_with_volumes(
        &self,
        sb: &Sandbox,
        target: &str,
        outside: Vec<podsnap_volumes::Volume>,
        ck: &runsc::CheckpointOpts,
    ) -> Result<(), RuntimeError> {
        let client = self.runsc.with_root(&sb.root);
        let id = sb.checkpoint_id();
        let was_paused = matches!(client.state(id).await, Ok(s) if s.status == Status::Paused);
        // Only a pause of ours is recorded for a restarted daemon to undo.
        let record = (!was_paused)
            .then(|| ck.job_dir.as_ref().map(|d| d.join(volumes::PAUSED_RECORD)))
            .flatten();
        if let Some(r) = &record {
            let paused = volumes::Paused {
                root: sb.root.clone(),
                id: id.to_string(),
            };
            write_record(r, &paused)?;
        }
        if !was_paused {
            client.pause(id).await?;
        }
        let out = ck.image_path.join(podsnap_volumes::FILE_NAME);
        let limits = self.volume_limits;
        let t = std::time::Instant::now();
        let packed = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(out.parent().expect("a file in the image dir")).map_err(
                |source| podsnap_volumes::PackError::Write {
                    path: out.clone(),
                    source,
                },
            )?;
            podsnap_volumes::pack(&outside, &out, &limits)
        })
        .await
        .map_err(|e| RuntimeError::Io {
            context: "packing the pod's volumes".into(),
            source: std::io::Error::other(e),
        })?;
        let res = match packed {
            Ok(p) => {
                tracing::info!(sandbox = %sb.sandbox_id, volumes = p.volumes, entries = p.entries, bytes = p.bytes, took = ?t.elapsed(), "packed the pod's volumes");
                if !p.skipped.is_empty() {
                    tracing::warn!(sandbox = %sb.sandbox_id, skipped = ?p.skipped, "left out of the pod's volumes: sockets and device nodes");
                }
                client.checkpoint(id, ck).await.map_err(RuntimeError::from)
            }
            Err(source) => Err(RuntimeError::Volumes {
                target: target.to_string(),
                source,
            }),
        };
        // Resumed after `--leave-running` (it runs on), unless it was paused before: then it
        // stays as it was found. Resumed always after a checkpoint that stops it: runsc
        // 20240729 leaves a paused sandbox paused (seen: saved, alive, frozen) and it exits
        // only once resumed, without running again.
        let resumed = if was_paused && ck.leave_running {
            Ok(())
        } else {
            client.resume(id).await
        };
        if let Some(r) = &record {
            let _ = std::fs::remove_file(r);
        }
        match resumed {
            Err(e) if res.is_ok() && ck.leave_running => {
                tracing::error!(sandbox = %sb.sandbox_id, error = %e, "cannot resume the sandbox paused for its checkpoint");
                Err(e.into())
            }
            Err(e) => {
                tracing::warn!(sandbox = %sb.sandbox_id, error = %e, "resuming the sandbox after its checkpoint");
                res
            }
            Ok(()) => res,
        }
    }

    /// Resumes the sandbox a checkpoint job dir's [`volumes::PAUSED_RECORD`] names, if any.
    async fn resume_recorded_pause(&self, job_dir: &Path) {
        let path = job_dir.join(volumes::PAUSED_RECORD);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        if let Ok(p) = serde_json::from_slice::<volumes::Paused>(&bytes) {
            let client = self.runsc.with_root(&p.root);
            if matches!(client.state(&p.id).await, Ok(s) if s.status == Status::Paused) {
                match client.resume(&p.id).await {
                    Ok(()) => {
                        tracing::info!(sandbox = %p.id, "resumed a sandbox paused by an earlier run's checkpoint")
                    }
                    Err(e) => {
                        tracing::error!(sandbox = %p.id, error = %e, "cannot resume a sandbox paused by an earlier run's checkpoint")
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

fn write_record(path: &Path, paused: &volumes::Paused) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec(paused).expect("records serialise");
    std::fs::create_dir_all(path.parent().expect("a file in the job dir"))
        .and_then(|()| std::fs::write(path, bytes))
        .map_err(|source| RuntimeError::Io {
            context: format!("writing {}", path.display()),
            source,
        })
}

impl RunscRuntime {
    /// The pod's sandbox (pause) container in containerd's CRI namespace, resolved as a
    /// containerd target. Of several sandboxes of one pod (a pod recreated under its name),
    /// the one whose task runs wins.
    async fn resolve_pod(&self, namespace: &str, name: &str) -> Result<Sandbox, RuntimeError> {
        let target = Target::Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
        .to_string();
        if namespace.is_empty() || name.is_empty() {
            return Err(RuntimeError::InvalidRequest(
                "a pod is named NAMESPACE/NAME".into(),
            ));
        }
        let client = self.containerd_for(&target)?;
        let mut candidates = Vec::new();
        for c in client.containers(CRI_NAMESPACE).await? {
            let Some(pod) = c.pod() else { continue };
            let is_sandbox = pod.container_type.as_deref() == Some("sandbox")
                || c.labels.get("io.cri-containerd.kind").map(String::as_str) == Some("sandbox");
            if is_sandbox
                && pod.namespace.as_deref() == Some(namespace)
                && pod.name.as_deref() == Some(name)
            {
                candidates.push(c.id);
            }
        }
        let mut found = None;
        for id in candidates {
            let task = client.task(CRI_NAMESPACE, &id).await?;
            let running = task.is_some_and(|t| t.status == TaskStatus::Running);
            if running || found.is_none() {
                found = Some(id);
            }
            if running {
                break;
            }
        }
        let id = found.ok_or(RuntimeError::NotFound { target })?;
        self.resolve_containerd(CRI_NAMESPACE, &id).await
    }
}

fn describe_target(sb: &Sandbox) -> String {
    match &sb.kind {
        SandboxKind::Standalone => format!("runsc container {}", sb.container_id),
        SandboxKind::Containerd {
            namespace,
            container,
            ..
        } => format!("containerd container {namespace}/{container}"),
    }
}

#[async_trait]
impl SandboxRuntime for RunscRuntime {
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError> {
        let (version, capabilities) = self.facts().await?.clone();
        let policy = ReleasePolicy::new(&version, &capabilities);
        Ok(RuntimeInfo {
            runsc_path: self.runsc.binary().to_path_buf(),
            platform: self.configured_platform(&policy),
            rootfs_overlay: self.configured_overlay(&policy),
            version,
            capabilities,
            root: self.root(),
            global_flags: self.runsc.extra_flags().to_vec(),
        })
    }

    async fn resolve(&self, target: &Target) -> Result<Sandbox, RuntimeError> {
        match target {
            Target::Runsc { id } => {
                valid_id(id)?;
                self.describe(
                    &self.root(),
                    id,
                    &target.to_string(),
                    SandboxKind::Standalone,
                )
                .await
            }
            Target::Containerd { namespace, id } => {
                valid_id(id)?;
                self.resolve_containerd(namespace, id).await
            }
            Target::Pod { namespace, name } => self.resolve_pod(namespace, name).await,
        }
    }

    async fn checkpoint(
        &self,
        sb: &Sandbox,
        image_dir: &Path,
        opts: &CheckpointOpts,
    ) -> Result<(), RuntimeError> {
        let target = describe_target(sb);
        let policy = self.policy().await?;
        let after = sb.after_checkpoint(&policy, opts.leave_running);
        if let Err(CheckpointRefusal::MultiContainer(reason)) = after {
            return Err(RuntimeError::Unsupported {
                op: "checkpoint",
                target,
                reason,
            });
        }
        if !matches!(sb.status, Status::Running | Status::Paused) {
            return Err(RuntimeError::InvalidState {
                op: "checkpoint",
                target,
                status: sb.status.clone(),
            });
        }
        // `leave_running` asks for a resume; refused unless runsc itself can keep it running.
        let refused = match after {
            Err(CheckpointRefusal::NoResume(reason)) => Some(reason),
            Ok(AfterCheckpoint::RestoreInPlace) | Err(CheckpointRefusal::NoRestoreInPlace) => {
                Some(format!(
                    "--leave-running of runsc {} is unreliable; resume by restoring in place",
                    policy.version()
                ))
            }
            Ok(_) | Err(CheckpointRefusal::MultiContainer(_)) => None,
        };
        if let Some(reason) = refused {
            return Err(RuntimeError::Unsupported {
                op: "checkpoint",
                target,
                reason,
            });
        }
        let id = sb.checkpoint_id();
        tracing::info!(sandbox = %sb.sandbox_id, container = %id, root = %sb.root.display(), image = %image_dir.display(), "checkpointing");
        let ck = runsc::CheckpointOpts {
            image_path: image_dir.to_path_buf(),
            leave_running: opts.leave_running,
            compression: policy.checkpoint_compression().map(str::to_string),
            exclude_committed_zero_pages: policy.exclude_committed_zero_pages(),
            timeout: opts.timeout,
            job_dir: opts.job_dir.clone(),
            ..Default::default()
        };
        let outside = volumes::outside_checkpoint(sb)?;
        if outside.is_empty() {
            self.runsc.with_root(&sb.root).checkpoint(id, &ck).await?;
        } else {
            self.checkpoint_with_volumes(sb, &target, outside, &ck)
                .await?;
        }
        if !opts.leave_running && !opts.defer_settle {
            self.settle_stopped(sb).await;
        }
        Ok(())
    }

    async fn await_earlier(
        &self,
        job_dir: &Path,
        timeout: Option<Duration>,
    ) -> Result<bool, RuntimeError> {
        // A job whose argv is written but whose process has not started yet gets this long
        // to show its pid.
        const START_GRACE: Duration = Duration::from_secs(5);
        let Some(mut job) = runsc::DurableJob::find(job_dir, START_GRACE).await? else {
            return Ok(false);
        };
        let outcome = job.wait(timeout).await;
        // A checkpoint that paused its sandbox to pack the pod's volumes, whose daemon died
        // before it resumed it: resume it now (a stopped sandbox is gone, and runsc says so).
        self.resume_recorded_pause(job_dir).await;
        outcome?.into_result()?;
        Ok(true)
    }

    async fn settle_stopped(&self, sb: &Sandbox) {
        let id = sb.checkpoint_id();
        for c in sb.containers.iter().map(|c| c.id.as_str()).chain([id]) {
            self.settle_after_stop(&sb.root, c).await;
        }
    }

    async fn restore(&self, req: &RestoreRequest) -> Result<Restored, RuntimeError> {
        valid_id(&req.id)?;
        // Off the async workers: the image may be a mount served by this very process.
        let dir = req.image_dir.clone();
        tokio::task::spawn_blocking(move || image::read_image_dir_header(&dir))
            .await
            .map_err(|e| RuntimeError::Io {
                context: format!("reading the header in {}", req.image_dir.display()),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| RuntimeError::Image {
                dir: req.image_dir.clone(),
                source,
            })?;
        if !req.bundle.join("config.json").is_file() {
            return Err(RuntimeError::InvalidRequest(format!(
                "bundle {} has no config.json",
                req.bundle.display()
            )));
        }
        let client = self.client_for(req.root.as_deref());
        let root = client.root().map(Path::to_path_buf).unwrap_or_default();
        let existing = rootdir::state_files(&root).map_err(|e| RuntimeError::Io {
            context: format!("reading runsc root {}", root.display()),
            source: e,
        })?;
        let mut ids: Vec<&str> = vec![&req.id];
        for c in &req.containers {
            valid_id(&c.id)?;
            check_sub_bundle(c, &req.id)?;
            ids.push(&c.id);
        }
        for (i, id) in ids.iter().enumerate() {
            let clash = existing
                .iter()
                .map(|(n, _)| n.container_id.as_str())
                .chain(ids[..i].iter().copied())
                .find(|other| other.starts_with(id) || id.starts_with(other));
            if let Some(other) = clash {
                let reason = if other == *id {
                    "already exists".to_string()
                } else {
                    format!("is ambiguous with container {other} (runsc matches id prefixes)")
                };
                return Err(RuntimeError::InvalidRequest(format!(
                    "container id {id} {reason} under {}",
                    root.display()
                )));
            }
        }
        tracing::info!(container = %req.id, root = %root.display(), image = %req.image_dir.display(), "restoring");
        client
            .restore(
                &req.id,
                &runsc::RestoreOpts {
                    image_path: req.image_dir.clone(),
                    bundle: req.bundle.clone(),
                    detach: true,
                    pid_file: req.pid_file.clone(),
                    log_file: req.log_file.clone(),
                    timeout: req.timeout,
                    job_dir: req.job_dir.clone(),
                    background: req.background,
                    ..Default::default()
                },
            )
            .await?;
        // The other containers join the restored sandbox: create, then restore from the same
        // image. Any failure removes everything this call created, so nothing is left
        // half-started.
        for (done, c) in req.containers.iter().enumerate() {
            if let Err(e) = self.restore_container(&client, req, c).await {
                tracing::warn!(container = %c.id, name = %c.name, error = %e, "restoring a container of the sandbox failed; removing the sandbox");
                for undo in req.containers[..=done].iter().rev() {
                    let _ = client
                        .delete(&undo.id, &runsc::DeleteOpts { force: true })
                        .await;
                }
                let _ = client
                    .delete(&req.id, &runsc::DeleteOpts { force: true })
                    .await;
                return Err(e);
            }
        }
        let state = client.state(&req.id).await?;
        Ok(Restored {
            id: req.id.clone(),
            root,
            pid: (state.pid > 0).then_some(state.pid),
            status: state.status,
        })
    }

    async fn state(&self, root: Option<&Path>, id: &str) -> Result<SandboxState, RuntimeError> {
        let client = self.client_for(root);
        let root = client.root().map(Path::to_path_buf).unwrap_or_default();
        match client.state(id).await {
            Ok(s) => Ok(SandboxState {
                id: s.id,
                root,
                status: s.status,
                pid: (s.pid > 0).then_some(s.pid),
                bundle: s.bundle,
            }),
            Err(e) if e.is_not_found() => Err(RuntimeError::NotFound {
                target: format!("runsc container {id} under {}", root.display()),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, root: Option<&Path>, id: &str, force: bool) -> Result<(), RuntimeError> {
        let client = self.client_for(root);
        match client.delete(id, &runsc::DeleteOpts { force }).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Err(RuntimeError::NotFound {
                target: format!(
                    "runsc container {id} under {}",
                    client.root().unwrap_or(Path::new("")).display()
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
