//! containerd resolution over its gRPC socket, with the `containerd-client` crate.
//!
//! The crate's protos are containerd 2.x; Debian's containerd is 1.6.20. Only calls that 1.6
//! serves are used: `containers.Get/List`, `tasks.Get/List/Pause/Resume` and `version`. A
//! server that answers `Unimplemented` is reported as [`ContainerdError::Unsupported`]. The
//! namespace travels in the `containerd-namespace` metadata header.
//!
//! The connection is made lazily on first use and retried (the daemon starts before, or
//! without, containerd), and dropped after a transport failure so the next call reconnects.
//!
//! Facts found by experiment with containerd 1.6.20 and its runc v2 shim driving runsc:
//! the shim's runsc root is `<Options.root>/<namespace>` when the runtime options name a root
//! (`ctr run --runc-root DIR`), else `/run/containerd/runc/<namespace>` (whatever containerd's
//! own state dir is); the runtime options are `containerd.runc.v1.Options` with `binary_name`
//! (field 6) and `root` (field 7); the bundle is `<state>/io.containerd.runtime.v2.task/<ns>/<id>`
//! and runsc's state file records it, so it is read from there rather than guessed.
//!
//! gVisor's shim (`io.containerd.runsc.v1`, containerd 2.x's CRI): the runtime options are
//! containerd's `runtimeoptions.v1.Options` (`type_url` 1, `config_path` 2, `config_body` 3)
//! naming the shim's runsc.toml; its runsc root is that file's `root` (default
//! `/run/containerd/runsc`) + `/<namespace>`, and its runsc is the file's `binary_name`.

use containerd_client::services::v1::{
    containers_client::ContainersClient, tasks_client::TasksClient, version_client::VersionClient,
    GetContainerRequest, GetRequest, ListContainersRequest, ListTasksRequest, PauseTaskRequest,
    ResumeTaskRequest,
};
use podsnap_proto::client;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// Default containerd socket.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// Default root of the runc v2 shim (`process.RuncRoot`).
pub const RUNC_SHIM_DEFAULT_ROOT: &str = "/run/containerd/runc";
/// Default root of gVisor's own shim (`io.containerd.runsc.v1`).
pub const RUNSC_SHIM_DEFAULT_ROOT: &str = "/run/containerd/runsc";
/// Runtime name of the runc v2 shim.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// Runtime name of gVisor's shim.
pub const RUNSC_V1: &str = "io.containerd.runsc.v1";

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// No connection could be made.
    #[error("cannot connect to containerd at {socket} after {attempts} attempts: {reason}")]
    Unavailable {
        /// The socket.
        socket: PathBuf,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The container (or its task) does not exist.
    #[error("{what} not found in containerd namespace {namespace}")]
    NotFound {
        /// What was looked up.
        what: String,
        /// The namespace.
        namespace: String,
    },
    /// This containerd does not serve the call (an older server than the client's protos).
    #[error("containerd does not serve {call}: {message}")]
    Unsupported {
        /// The gRPC method.
        call: &'static str,
        /// containerd's message.
        message: String,
    },
    /// Any other gRPC failure.
    #[error("containerd {call} failed: {status}")]
    Call {
        /// The gRPC method.
        call: &'static str,
        /// The status returned.
        status: Box<tonic::Status>,
    },
    /// An argument cannot travel in gRPC metadata, or a reply could not be decoded.
    #[error("{0}")]
    Invalid(String),
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// The containerd socket.
    pub socket: PathBuf,
    /// Connection attempts per call before giving up.
    pub connect_attempts: u32,
    /// Delay between attempts.
    pub retry_delay: Duration,
    /// Timeout of each gRPC call.
    pub call_timeout: Duration,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            connect_attempts: 5,
            retry_delay: Duration::from_millis(200),
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl ContainerdConfig {
    /// Defaults with another socket.
    pub fn with_socket(socket: impl Into<PathBuf>) -> Self {
        ContainerdConfig {
            socket: socket.into(),
            ..Default::default()
        }
    }
}

/// runc v2 shim options (`containerd.runc.v1.Options`): only the fields podsnap reads.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
    #[prost(string, tag = "7")]
    root: String,
}

/// containerd's generic runtime options (`runtimeoptions.v1.Options`), what the CRI gives
/// gVisor's shim: the TOML file of the shim's own options, or its text.
#[derive(Clone, PartialEq, prost::Message)]
struct ShimConfigOptions {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    config_path: String,
    #[prost(bytes = "vec", tag = "3")]
    config_body: Vec<u8>,
}

/// `root` and `binary_name` of a gVisor shim options file (runsc.toml); empty when absent.
fn gvisor_shim_toml(text: &str) -> (String, String) {
    let Ok(v) = text.parse::<toml::Table>() else {
        return Default::default();
    };
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    (s("root"), s("binary_name"))
}

/// The runtime a container is configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Runtime (shim) name, `io.containerd.runc.v2`.
    pub name: String,
    /// Type URL of its options.
    pub options_type: String,
    /// `BinaryName` of the runc options (empty: the shim's default `runc`).
    pub binary_name: String,
    /// `Root` of the runc options, or `root` of gVisor's shim's runsc.toml (empty: the
    /// shim's default).
    pub root: String,
    /// gVisor's shim: the runsc.toml its options name (empty: none named).
    pub config_path: String,
    /// Why that runsc.toml could not be read (empty: it was, or none is named); `root` is
    /// then the shim's default, which may not be where the container runs.
    pub config_error: String,
}

/// Kubernetes facts of a CRI-managed container.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    /// Pod name.
    pub name: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod uid.
    pub uid: Option<String>,
    /// Container name in the pod.
    pub container_name: Option<String>,
    /// `sandbox` (the pause container) or `container`.
    pub container_type: Option<String>,
    /// Id of the pod's sandbox container.
    pub sandbox_id: Option<String>,
}

impl PodInfo {
    /// Reads CRI annotations (`io.kubernetes.cri.*`) and labels (`io.kubernetes.*`); `None`
    /// for a container not made by the CRI plugin.
    pub fn from_cri(
        annotations: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Option<PodInfo> {
        let a = |k: &str| annotations.get(k).cloned();
        let l = |k: &str| labels.get(k).cloned();
        let info = PodInfo {
            name: a("io.kubernetes.cri.sandbox-name").or_else(|| l("io.kubernetes.pod.name")),
            namespace: a("io.kubernetes.cri.sandbox-namespace")
                .or_else(|| l("io.kubernetes.pod.namespace")),
            uid: a("io.kubernetes.cri.sandbox-uid").or_else(|| l("io.kubernetes.pod.uid")),
            container_name: a("io.kubernetes.cri.container-name")
                .or_else(|| l("io.kubernetes.container.name")),
            container_type: a("io.kubernetes.cri.container-type")
                .or_else(|| l("io.cri-containerd.kind")),
            sandbox_id: a("io.kubernetes.cri.sandbox-id"),
        };
        (info != PodInfo::default()).then_some(info)
    }
}

/// A container as containerd describes it.
#[derive(Clone, Debug, Default)]
pub struct ContainerInfo {
    /// Namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Image reference (empty for `ctr run --rootfs`).
    pub image: String,
    /// Runtime and its options.
    pub runtime: RuntimeConfig,
    /// The OCI spec (JSON), when it decodes.
    pub spec: Option<serde_json::Value>,
}

impl ContainerInfo {
    /// The spec's annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .as_ref()
            .map(crate::rootdir::annotations_of)
            .unwrap_or_default()
    }

    /// Kubernetes facts, if CRI made the container.
    pub fn pod(&self) -> Option<PodInfo> {
        PodInfo::from_cri(&self.annotations(), &self.labels)
    }

    /// The runsc root its shim uses, when the runtime is one that can run runsc: runc v2 with
    /// a root option → `<root>/<ns>`, runc v2 → `/run/containerd/runc/<ns>`, gVisor's shim →
    /// its runsc.toml's `root` + `/<ns>`, by default `/run/containerd/runsc/<ns>`.
    pub fn shim_root(&self) -> Option<PathBuf> {
        let ns = &self.namespace;
        match self.runtime.name.as_str() {
            RUNC_V2 | "io.containerd.runc.v1" => Some(if self.runtime.root.is_empty() {
                Path::new(RUNC_SHIM_DEFAULT_ROOT).join(ns)
            } else {
                Path::new(&self.runtime.root).join(ns)
            }),
            RUNSC_V1 => Some(if self.runtime.root.is_empty() {
                Path::new(RUNSC_SHIM_DEFAULT_ROOT).join(ns)
            } else {
                Path::new(&self.runtime.root).join(ns)
            }),
            _ => None,
        }
    }

    /// True when the configuration alone says runsc runs it: gVisor's shim, or a runc shim
    /// whose `BinaryName` is a runsc (or a wrapper whose file name contains `runsc`).
    pub fn configured_for_runsc(&self) -> bool {
        if self.runtime.name == RUNSC_V1 {
            return true;
        }
        Path::new(&self.runtime.binary_name)
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.contains("runsc"))
    }
}

/// Task state as containerd reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Unknown.
    Unknown,
    /// Created.
    Created,
    /// Running.
    Running,
    /// Stopped.
    Stopped,
    /// Paused.
    Paused,
    /// Pausing.
    Pausing,
}

impl TaskStatus {
    fn from_i32(v: i32) -> Self {
        match v {
            1 => TaskStatus::Created,
            2 => TaskStatus::Running,
            3 => TaskStatus::Stopped,
            4 => TaskStatus::Paused,
            5 => TaskStatus::Pausing,
            _ => TaskStatus::Unknown,
        }
    }
}

/// A container's task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Container id.
    pub id: String,
    /// Pid of the task's init process (the runsc sandbox/gofer side pid seen by the shim).
    pub pid: u32,
    /// Status.
    pub status: TaskStatus,
    /// Exit status when stopped.
    pub exit_status: u32,
}

/// A lazily connecting containerd client.
#[derive(Debug)]
pub struct ContainerdClient {
    config: ContainerdConfig,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

fn status_error(
    call: &'static str,
    namespace: &str,
    what: &str,
    s: tonic::Status,
) -> ContainerdError {
    match s.code() {
        tonic::Code::NotFound => ContainerdError::NotFound {
            what: what.to_string(),
            namespace: namespace.to_string(),
        },
        tonic::Code::Unimplemented => ContainerdError::Unsupported {
            call,
            message: s.message().to_string(),
        },
        _ => ContainerdError::Call {
            call,
            status: Box::new(s),
        },
    }
}

impl ContainerdClient {
    /// A client; nothing is connected until the first call.
    pub fn new(config: ContainerdConfig) -> Self {
        ContainerdClient {
            config,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// The socket this client uses.
    pub fn socket(&self) -> &Path {
        &self.config.socket
    }

    async fn connect_once(socket: PathBuf, timeout: Duration) -> Result<Channel, String> {
        let endpoint = client::unix_endpoint()
            .connect_timeout(timeout)
            .timeout(timeout);
        client::connect_unix_with(endpoint, socket)
            .await
            .map_err(|e| client::error_chain(&e))
    }

    async fn channel(&self) -> Result<Channel, ContainerdError> {
        let mut guard = self.channel.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let attempts = self.config.connect_attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match Self::connect_once(self.config.socket.clone(), self.config.call_timeout).await {
                Ok(c) => {
                    tracing::debug!(socket = %self.config.socket.display(), attempt, "connected to containerd");
                    *guard = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    last = e;
                    if attempt < attempts {
                        tokio::time::sleep(self.config.retry_delay).await;
                    }
                }
            }
        }
        Err(ContainerdError::Unavailable {
            socket: self.config.socket.clone(),
            attempts,
            reason: last,
        })
    }

    /// Forgets the connection after a transport failure.
    async fn reset_on_transport_error<T>(
        &self,
        r: Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        if let Err(s) = &r {
            if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                *self.channel.lock().await = None;
            }
        }
        r
    }

    fn request<T>(namespace: &str, msg: T) -> Result<tonic::Request<T>, ContainerdError> {
        let mut req = tonic::Request::new(msg);
        let value = namespace.parse().map_err(|_| {
            ContainerdError::Invalid(format!(
                "namespace {namespace:?} is not valid gRPC metadata"
            ))
        })?;
        req.metadata_mut().insert("containerd-namespace", value);
        Ok(req)
    }

    /// containerd's version (`version.Version`).
    pub async fn version(&self) -> Result<(String, String), ContainerdError> {
        let ch = self.channel().await?;
        let r = VersionClient::new(ch).version(()).await;
        let r = self.reset_on_transport_error(r).await;
        let v = r.map_err(|s| status_error("version.Version", "", "version", s))?;
        let v = v.into_inner();
        Ok((v.version, v.revision))
    }

    /// `containers.Get`.
    pub async fn container(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<ContainerInfo, ContainerdError> {
        let ch = self.channel().await?;
        let req = Self::request(namespace, GetContainerRequest { id: id.to_string() })?;
        let r = ContainersClient::new(ch).get(req).await;
        let r = self.reset_on_transport_error(r).await;
        let c = r
            .map_err(|s| status_error("containers.Get", namespace, &format!("container {id}"), s))?
            .into_inner()
            .container
            .ok_or_else(|| {
                ContainerdError::Invalid("containers.Get returned no container".into())
            })?;
        Ok(container_info(namespace, c))
    }

    /// `containers.List` (all containers of a namespace).
    pub async fn containers(&self, namespace: &str) -> Result<Vec<ContainerInfo>, ContainerdError> {
        let ch = self.channel().await?;
        let req = Self::request(namespace, ListContainersRequest { filters: vec![] })?;
        let r = ContainersClient::new(ch).list(req).await;
        let r = self.reset_on_transport_error(r).await;
        Ok(
            r.map_err(|s| status_error("containers.List", namespace, "containers", s))?
                .into_inner()
                .containers
                .into_iter()
                .map(|c| container_info(namespace, c))
                .collect(),
        )
    }

    /// `tasks.Get`; `Ok(None)` when the container has no task.
    pub async fn task(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<TaskInfo>, ContainerdError> {
        let ch = self.channel().await?;
        let req = Self::request(
            namespace,
            GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            },
        )?;
        let r = TasksClient::new(ch).get(req).await;
        let r = self.reset_on_transport_error(r).await;
        match r {
            Ok(resp) => Ok(resp.into_inner().process.map(task_info)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(
                "tasks.Get",
                namespace,
                &format!("task {id}"),
                s,
            )),
        }
    }

    /// `tasks.List` of a namespace.
    pub async fn tasks(&self, namespace: &str) -> Result<Vec<TaskInfo>, ContainerdError> {
        let ch = self.channel().await?;
        let req = Self::request(
            namespace,
            ListTasksRequest {
                filter: String::new(),
            },
        )?;
        let r = TasksClient::new(ch).list(req).await;
        let r = self.reset_on_transport_error(r).await;
        Ok(
            r.map_err(|s| status_error("tasks.List", namespace, "tasks", s))?
                .into_inner()
                .tasks
                .into_iter()
                .map(task_info)
                .collect(),
        )
    }

    /// `tasks.Pause`.
    pub async fn pause(&self, namespace: &str, id: &str) -> Result<(), ContainerdError> {
        let ch = self.channel().await?;
        let req = Self::request(
            namespace,
            PauseTaskRequest {
                container_id: id.to_string(),
            },
        )?;
        let r = TasksClient::new(ch).pause(req).await;
        self.reset_on_transport_error(r)
            .await
            .map_err(|s| status_error("tasks.Pause", namespace, &format!("task {id}"), s))?;
        Ok(())
    }

    /// `tasks.Resume`.
    pub async fn resume(&self, namespace: &str, id: &str) -> Result<(), ContainerdError> {
        let ch = self.channel().await?;
        let req = Self::request(
            namespace,
            ResumeTaskRequest {
                container_id: id.to_string(),
            },
        )?;
        let r = TasksClient::new(ch).resume(req).await;
        self.reset_on_transport_error(r)
            .await
            .map_err(|s| status_error("tasks.Resume", namespace, &format!("task {id}"), s))?;
        Ok(())
    }
}

/// containerd 1.6 fills `id` (not `container_id`) in the processes `tasks.List` returns.
fn task_info(p: containerd_client::types::v1::Process) -> TaskInfo {
    TaskInfo {
        id: if p.container_id.is_empty() {
            p.id
        } else {
            p.container_id
        },
        pid: p.pid,
        status: TaskStatus::from_i32(p.status),
        exit_status: p.exit_status,
    }
}

fn container_info(namespace: &str, c: containerd_client::services::v1::Container) -> ContainerInfo {
    let runtime = c
        .runtime
        .map(|r| {
            let mut rc = RuntimeConfig {
                name: r.name,
                ..Default::default()
            };
            if let Some(opts) = r.options {
                rc.options_type = opts.type_url.clone();
                if opts.type_url.ends_with("containerd.runc.v1.Options") {
                    if let Ok(o) = <RuncOptions as prost::Message>::decode(opts.value.as_slice()) {
                        rc.binary_name = o.binary_name;
                        rc.root = o.root;
                    }
                } else if opts.type_url.ends_with("runtimeoptions.v1.Options") {
                    if let Ok(o) =
                        <ShimConfigOptions as prost::Message>::decode(opts.value.as_slice())
                    {
                        let text = if o.config_body.is_empty() {
                            std::fs::read_to_string(&o.config_path).unwrap_or_else(|e| {
                                rc.config_error = format!("cannot read {}: {e}", o.config_path);
                                String::new()
                            })
                        } else {
                            String::from_utf8_lossy(&o.config_body).into_owned()
                        };
                        (rc.root, rc.binary_name) = gvisor_shim_toml(&text);
                        rc.config_path = o.config_path;
                    }
                }
            }
            rc
        })
        .unwrap_or_default();
    let spec = c
        .spec
        .and_then(|any| serde_json::from_slice(&any.value).ok());
    ContainerInfo {
        namespace: namespace.to_string(),
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime,
        spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(runtime: &str, binary: &str, root: &str) -> ContainerInfo {
        ContainerInfo {
            namespace: "k8s.io".into(),
            id: "c".into(),
            runtime: RuntimeConfig {
                name: runtime.into(),
                binary_name: binary.into(),
                root: root.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn shim_root_follows_the_runc_options() {
        assert_eq!(
            info(RUNC_V2, "/usr/bin/runsc", "").shim_root().unwrap(),
            PathBuf::from("/run/containerd/runc/k8s.io")
        );
        assert_eq!(
            info(RUNC_V2, "runsc", "/tmp/r").shim_root().unwrap(),
            PathBuf::from("/tmp/r/k8s.io")
        );
        assert_eq!(
            info(RUNSC_V1, "", "").shim_root().unwrap(),
            PathBuf::from("/run/containerd/runsc/k8s.io")
        );
        assert!(info("io.containerd.kata.v2", "", "").shim_root().is_none());
    }

    #[test]
    fn gvisor_shim_root_comes_from_its_runsc_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runsc.toml");
        std::fs::write(
            &file,
            "binary_name = \"/usr/local/bin/podsnap-runsc\"\nroot = \"/run/x/runsc\"\n[runsc_config]\n  network = \"none\"\n",
        )
        .unwrap();
        let container = |opts: ShimConfigOptions| containerd_client::services::v1::Container {
            id: "x".into(),
            runtime: Some(containerd_client::services::v1::container::Runtime {
                name: RUNSC_V1.into(),
                options: Some(prost_types::Any {
                    type_url: "runtimeoptions.v1.Options".into(),
                    value: prost::Message::encode_to_vec(&opts),
                }),
            }),
            ..Default::default()
        };
        let i = container_info(
            "k8s.io",
            container(ShimConfigOptions {
                type_url: "io.containerd.runsc.v1.options".into(),
                config_path: file.display().to_string(),
                config_body: vec![],
            }),
        );
        assert_eq!(i.shim_root().unwrap(), PathBuf::from("/run/x/runsc/k8s.io"));
        assert_eq!(i.runtime.binary_name, "/usr/local/bin/podsnap-runsc");
        assert_eq!(i.runtime.config_path, file.display().to_string());
        // The body wins over the path; no root means the shim's default.
        let i = container_info(
            "k8s.io",
            container(ShimConfigOptions {
                type_url: "io.containerd.runsc.v1.options".into(),
                config_path: file.display().to_string(),
                config_body: b"binary_name = \"runsc\"\n".to_vec(),
            }),
        );
        assert_eq!(
            i.shim_root().unwrap(),
            PathBuf::from("/run/containerd/runsc/k8s.io")
        );
        // A file that is gone: the default, and the reason is kept.
        let i = container_info(
            "k8s.io",
            container(ShimConfigOptions {
                type_url: String::new(),
                config_path: "/nonexistent/runsc.toml".into(),
                config_body: vec![],
            }),
        );
        assert_eq!(
            i.shim_root().unwrap(),
            PathBuf::from("/run/containerd/runsc/k8s.io")
        );
        assert!(
            i.runtime
                .config_error
                .starts_with("cannot read /nonexistent/runsc.toml: "),
            "{:?}",
            i.runtime.config_error
        );
    }

    #[test]
    fn runsc_is_recognised_from_binary_name_or_shim() {
        assert!(info(RUNC_V2, "/usr/bin/runsc", "").configured_for_runsc());
        assert!(info(RUNC_V2, "/usr/local/bin/podsnap-runsc", "").configured_for_runsc());
        assert!(info(RUNSC_V1, "", "").configured_for_runsc());
        assert!(!info(RUNC_V2, "", "").configured_for_runsc());
        assert!(!info(RUNC_V2, "/usr/sbin/runc", "").configured_for_runsc());
    }

    #[test]
    fn runc_options_decode_binary_name_and_root() {
        let bytes = prost::Message::encode_to_vec(&RuncOptions {
            binary_name: "/usr/bin/runsc".into(),
            root: "/tmp/root".into(),
        });
        let c = containerd_client::services::v1::Container {
            id: "x".into(),
            runtime: Some(containerd_client::services::v1::container::Runtime {
                name: RUNC_V2.into(),
                options: Some(prost_types::Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value: bytes,
                }),
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb1","io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-name":"web-0"}}"#.to_vec(),
            }),
            ..Default::default()
        };
        let i = container_info("k8s.io", c);
        assert_eq!(i.runtime.binary_name, "/usr/bin/runsc");
        assert_eq!(i.runtime.root, "/tmp/root");
        let pod = i.pod().unwrap();
        assert_eq!(pod.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(pod.name.as_deref(), Some("web-0"));
        assert_eq!(pod.container_type.as_deref(), Some("container"));
    }

    #[test]
    fn grpc_codes_map_to_clear_errors() {
        let e = status_error(
            "sandbox.Store/List",
            "k8s.io",
            "x",
            tonic::Status::unimplemented("unknown service containerd.services.sandbox.v1.Store"),
        );
        assert!(matches!(e, ContainerdError::Unsupported { .. }));
        assert_eq!(
            e.to_string(),
            "containerd does not serve sandbox.Store/List: unknown service containerd.services.sandbox.v1.Store"
        );
        let e = status_error(
            "containers.Get",
            "k8s.io",
            "container c",
            tonic::Status::not_found("nope"),
        );
        assert_eq!(
            e.to_string(),
            "container c not found in containerd namespace k8s.io"
        );
        let e = status_error("tasks.Get", "ns", "task", tonic::Status::internal("boom"));
        assert!(matches!(e, ContainerdError::Call { .. }));
    }

    #[test]
    fn a_plain_container_has_no_pod_info() {
        assert!(PodInfo::from_cri(&BTreeMap::new(), &BTreeMap::new()).is_none());
    }

    #[tokio::test]
    async fn missing_socket_is_unavailable_after_retries() {
        let c = ContainerdClient::new(ContainerdConfig {
            socket: "/nonexistent/containerd.sock".into(),
            connect_attempts: 2,
            retry_delay: Duration::from_millis(10),
            call_timeout: Duration::from_secs(1),
        });
        let err = c.container("default", "x").await.unwrap_err();
        match &err {
            ContainerdError::Unavailable { attempts, .. } => assert_eq!(*attempts, 2),
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().starts_with(
            "cannot connect to containerd at /nonexistent/containerd.sock after 2 attempts"
        ));
    }

    #[test]
    fn invalid_namespace_is_refused_before_sending() {
        let err = ContainerdClient::request("bad\nns", ()).unwrap_err();
        assert!(matches!(err, ContainerdError::Invalid(_)));
    }
}
