//! Playing the kubelet: a private containerd with its CRI plugin, local images, and a CRI
//! client that runs pods the way the kubelet does.
//!
//! Found by experiment with Debian's containerd 1.6.20 on these machines:
//!
//! - The CRI plugin loads with a private root/state; `default_runtime_name` must name a
//!   configured runtime. Host-network pods need no CNI configuration; pods with a network
//!   namespace of their own need one whose result has an `eth0` with an address (a
//!   loopback-only one fails `RunPodSandbox`): a `ptp` network on a private subnet, with the
//!   plugins in `/usr/lib/cni` (Debian's `containernetworking-plugins`).
//! - Root here lacks CAP_SYS_RESOURCE, so the sandbox's `oomScoreAdj: -998` cannot be applied:
//!   `restrict_oom_score_adj = true`.
//! - No registry is reachable: images are OCI layout archives built here around
//!   busybox-static and imported with `ctr -n k8s.io images import`; `sandbox_image` names
//!   the local pause image, so the CRI never pulls.
//! - CRI writes each container's output to `<pod log_directory>/<container log_path>` in the
//!   CRI log format: `<RFC 3339 nano time> <stdout|stderr> <F|P> <text>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;

/// The CRI API types (`runtime.v1`).
pub use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::Containerd;

/// The pause image the test containerd uses as its sandbox image.
pub const PAUSE_IMAGE: &str = "podsnap.local/pause:test";
/// A busybox image whose default command is the counter.
pub const COUNTER_IMAGE: &str = "podsnap.local/counter:test";
/// The CRI runtime handler the test containerd configures.
pub const RUNTIME_HANDLER: &str = "runsc";
/// The containerd namespace of CRI containers.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// The pause container's command: sleeps until told to stop.
const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done";

/// How the CRI plugin is configured.
#[derive(Clone, Debug)]
pub struct CriSettings {
    /// The runtime handler's `BinaryName` (podsnap-runsc, or runsc).
    pub binary: PathBuf,
    /// CNI configuration directory (a `ptp` conflist is written there).
    pub cni_conf_dir: Option<PathBuf>,
}

impl CriSettings {
    pub fn new(binary: impl Into<PathBuf>) -> CriSettings {
        CriSettings {
            binary: binary.into(),
            cni_conf_dir: None,
        }
    }

    /// The `plugins` part of containerd's config: the CRI plugin with runtime handler
    /// [`RUNTIME_HANDLER`] on the runc v2 shim, runsc state under `runc_root`.
    pub fn config_section(&self, dir: &Path, runc_root: &Path) -> String {
        let cni = self.cni_conf_dir.clone().unwrap_or_else(|| dir.join("cni"));
        let _ = std::fs::create_dir_all(&cni);
        // A point-to-point veth per pod on a private subnet, addresses kept in `dir`: the
        // CRI of containerd 1.6 wants an `eth0` with an address in the pod's namespace.
        let subnet = 16 + std::process::id() % 200;
        let _ = std::fs::write(
            cni.join("10-podsnap-test.conflist"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "podsnap-test",
                "plugins": [{
                    "type": "ptp",
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "subnet": format!("10.251.{subnet}.0/24"),
                        "dataDir": dir.join("cni-ipam").display().to_string(),
                    },
                }],
            })
            .to_string(),
        );
        format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "{RUNTIME_HANDLER}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNTIME_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["podsnap.dev/*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNTIME_HANDLER}.options]
        BinaryName = "{binary}"
        Root = "{root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            binary = self.binary.display(),
            root = runc_root.display(),
            cni = cni.display(),
        )
    }
}

/// Writes an OCI image layout archive (`oci-layout`, `index.json`, `blobs/sha256/...`) of
/// one uncompressed layer holding `rootfs`, named `name`, whose default command is `cmd`.
pub fn build_image(rootfs: &Path, name: &str, cmd: &[&str], out: &Path) -> Result<(), String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let blobs = work.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let layer = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name"])
        .arg("-C")
        .arg(rootfs)
        .args(["-cf", "-", "."])
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !layer.status.success() {
        return Err(format!(
            "tar of {} failed: {}",
            rootfs.display(),
            String::from_utf8_lossy(&layer.stderr)
        ));
    }
    let put = |bytes: &[u8]| -> Result<(String, usize), String> {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest[7..]), bytes).map_err(|e| e.to_string())?;
        Ok((digest, bytes.len()))
    };
    let (layer_digest, layer_size) = put(&layer.stdout)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest"),
            },
        }],
    });
    std::fs::write(work.path().join("index.json"), index.to_string()).map_err(|e| e.to_string())?;
    std::fs::write(
        work.path().join("oci-layout"),
        r#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .map_err(|e| e.to_string())?;
    let st = Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !st.success() {
        return Err(format!("tar of the image layout failed: {st}"));
    }
    Ok(())
}

/// A private containerd with the CRI plugin and the test images imported, and a CRI client.
pub struct CriContainerd {
    // Dropped after the client: the pods are removed before containerd stops.
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    pods: std::sync::Mutex<Vec<String>>,
    containerd: Containerd,
}

impl CriContainerd {
    /// Starts containerd with `settings` and `env` (see [`Containerd::start_with_env`]),
    /// builds and imports [`PAUSE_IMAGE`] and [`COUNTER_IMAGE`], and connects.
    pub fn start(
        settings: &CriSettings,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<CriContainerd, String> {
        let containerd = Containerd::start_with(env, Some(settings))?;
        let rootfs = containerd.dir().join("image-rootfs");
        crate::runsc::busybox_rootfs(&rootfs).map_err(|e| format!("busybox rootfs: {e}"))?;
        for (name, script) in [
            (PAUSE_IMAGE, PAUSE_SCRIPT),
            (COUNTER_IMAGE, crate::runsc::COUNTER_SCRIPT),
        ] {
            let tar = containerd
                .dir()
                .join(format!("{}.tar", name.replace(['/', ':'], "_")));
            build_image(&rootfs, name, &["/bin/sh", "-c", script], &tar)?;
            containerd.ctr(
                K8S_NAMESPACE,
                &["images", "import", &tar.display().to_string()],
            )?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let sock = containerd.socket();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://localhost").connect_with_connector(
                    tower::service_fn(move |_: Uri| {
                        let sock = sock.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(sock).await?,
                            ))
                        }
                    }),
                ),
            )
            .map_err(|e| format!("cannot connect to containerd's CRI: {e}"))?;
        let c = CriContainerd {
            rt,
            client: RuntimeServiceClient::new(channel),
            pods: std::sync::Mutex::new(Vec::new()),
            containerd,
        };
        c.call(|mut cl| async move {
            cl.version(cri::VersionRequest::default())
                .await
                .map(|r| r.into_inner())
        })
        .map_err(|e| format!("the CRI plugin does not answer: {e}"))?;
        Ok(c)
    }

    /// The containerd underneath.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The runsc root of CRI containers (the runtime's `Root` plus the namespace).
    pub fn runsc_root(&self) -> PathBuf {
        self.containerd.runsc_root(K8S_NAMESPACE)
    }

    fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.rt.block_on(f(self.client.clone()))
    }

    /// `RunPodSandbox`; returns the pod sandbox id.
    pub fn run_pod(&self, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: RUNTIME_HANDLER.to_string(),
        };
        let id = self.call(|mut c| async move {
            c.run_pod_sandbox(req)
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
        })?;
        self.pods.lock().unwrap().push(id.clone());
        Ok(id)
    }

    /// `CreateContainer` then `StartContainer`; returns the container id.
    pub fn run_container(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let id = self.create_container(pod_id, pod, config)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// `CreateContainer`; returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        };
        self.call(|mut c| async move {
            c.create_container(req)
                .await
                .map(|r| r.into_inner().container_id)
        })
    }

    /// `StartContainer`, bounded: a start that hangs fails the test instead of hanging it.
    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move {
            match tokio::time::timeout(Duration::from_secs(60), c.start_container(req)).await {
                Ok(r) => r.map(drop),
                Err(_) => Err(tonic::Status::deadline_exceeded(
                    "StartContainer did not return within 60s",
                )),
            }
        })
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.call(|mut c| async move {
            c.container_status(req)
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
        })
    }

    /// Waits until `ContainerStatus` reports `state`; returns the status.
    pub fn wait_container_state(
        &self,
        id: &str,
        state: cri::ContainerState,
        timeout: Duration,
    ) -> Result<cri::ContainerStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(id).map_err(|e| e.to_string())?;
            if st.state == state as i32 {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "container {id} is {:?}, not {state:?}, after {timeout:?}",
                    cri::ContainerState::try_from(st.state)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ExecSync`.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        self.call(|mut c| async move { c.exec_sync(req).await.map(|r| r.into_inner()) })
    }

    /// `StopContainer` with the kubelet's grace period.
    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<(), tonic::Status> {
        let req = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace.as_secs() as i64,
        };
        self.call(|mut c| async move { c.stop_container(req).await.map(drop) })
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_container(req).await.map(drop) })
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await.map(drop) })
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await.map(drop) })?;
        self.pods.lock().unwrap().retain(|p| p != id);
        Ok(())
    }

    /// `PodSandboxStatus`.
    pub fn pod_status(&self, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        self.call(|mut c| async move {
            c.pod_sandbox_status(req)
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
        })
    }

    /// `ListPodSandbox`: every pod sandbox's id.
    pub fn list_pods(&self) -> Result<Vec<String>, tonic::Status> {
        self.call(|mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
        })
    }

    /// `ListContainers`: every container's id.
    pub fn list_containers(&self) -> Result<Vec<String>, tonic::Status> {
        self.call(|mut c| async move {
            c.list_containers(cri::ListContainersRequest::default())
                .await
                .map(|r| {
                    r.into_inner()
                        .containers
                        .into_iter()
                        .map(|c| c.id)
                        .collect()
                })
        })
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(|p| p.into_inner()));
        for id in pods {
            let _ = self.stop_pod(&id);
            let _ = self.remove_pod(&id);
        }
    }
}

/// A pod sandbox config as the kubelet writes it: `namespace/name`, a fresh uid, logs under
/// `log_dir`, host network or a network namespace of its own.
pub fn pod_config(
    namespace: &str,
    name: &str,
    log_dir: &Path,
    host_network: bool,
    annotations: &[(&str, &str)],
) -> cri::PodSandboxConfig {
    let uid = format!("{name}-{}", crate::runsc::unique_id("uid"));
    let network = if host_network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid,
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".to_string(), name.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                namespace.to_string(),
            ),
        ]),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An app container config: `name` (attempt `attempt`) from [`COUNTER_IMAGE`] running
/// `/bin/sh -c script`, logging to `<name>/<attempt>.log` under the pod's log directory.
pub fn container_config(name: &str, attempt: u32, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: COUNTER_IMAGE.to_string(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/{attempt}.log"),
        labels: HashMap::from([("io.kubernetes.container.name".to_string(), name.to_string())]),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// `F` (full line) or `P` (partial).
    pub tag: String,
    pub text: String,
}

/// Parses a CRI log file; a line that is not in the CRI format is an error.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (time, stream, tag) = (parts.next(), parts.next(), parts.next());
            let (Some(time), Some(stream), Some(tag)) = (time, stream, tag) else {
                return Err(format!("not a CRI log line: {l:?}"));
            };
            let ok_time = time.len() > 20 && time.as_bytes()[4] == b'-' && time.contains('T');
            if !ok_time || !matches!(stream, "stdout" | "stderr") || !matches!(tag, "F" | "P") {
                return Err(format!("not a CRI log line: {l:?}"));
            }
            Ok(LogLine {
                time: time.to_string(),
                stream: stream.to_string(),
                tag: tag.to_string(),
                text: parts.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The `Count: N` values of a CRI log file's stdout lines, in order.
pub fn log_counts(path: &Path) -> Vec<u64> {
    read_log(path)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.stream == "stdout")
        .filter_map(|l| l.text.strip_prefix("Count: ")?.trim().parse().ok())
        .collect()
}

/// Waits until a CRI log file's last count is at least `min`; returns it.
pub fn wait_for_log_count(path: &Path, min: u64, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = log_counts(path).last().copied().filter(|n| *n >= min) {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no `Count: {min}` or later in {} after {timeout:?}; log: {:?}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cri_log_lines_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(
            &p,
            "2026-12-03T08:00:00.123456789Z stdout F Count: 3\n\
             2026-12-03T08:00:01.123456789Z stderr F oops\n\
             2026-12-03T08:00:02.123456789Z stdout P Count: 4\n",
        )
        .unwrap();
        let lines = read_log(&p).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].stream, "stderr");
        assert_eq!(log_counts(&p), vec![3, 4]);
        std::fs::write(&p, "Count: 3\n").unwrap();
        assert!(read_log(&p).is_err());
        assert!(log_counts(&p).is_empty());
    }

    #[test]
    fn builds_an_oci_layout_archive() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/hello"), b"hi").unwrap();
        let out = dir.path().join("img.tar");
        build_image(&rootfs, "podsnap.local/x:1", &["/bin/hello"], &out).unwrap();
        let list = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            list.contains("index.json") && list.contains("oci-layout"),
            "{list}"
        );
        assert_eq!(list.matches("blobs/sha256/").count(), 3 + 1, "{list}");
    }
}
