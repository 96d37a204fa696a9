//! What the wrapper reads from an OCI bundle: the restore annotation, and the CRI annotations
//! and namespaces that tell a pod's sandbox (pause) container from its app containers.

use std::path::Path;

/// The annotation that asks for a restore: `podsnap.dev/restore-from=<snapshot id>`.
pub const RESTORE_ANNOTATION: &str = "podsnap.dev/restore-from";

/// Why the annotation could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI config")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("annotation {RESTORE_ANNOTATION} in {path} is empty")]
    Empty { path: String },
}

/// The CRI annotation naming a container's role: `sandbox` (the pause container, which
/// creates the runsc sandbox) or `container` (an app container, a runsc sub-container).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation holding an app container's name in its pod.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// The CRI annotations holding the pod's namespace and name.
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// The CRI annotation holding an app container's pod sandbox id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The CRI annotation holding the pod's uid (containerd 1.6 and 2.x).
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

#[derive(serde::Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    linux: Option<Linux>,
    #[serde(default)]
    mounts: Option<Vec<Mount>>,
}

#[derive(serde::Deserialize)]
struct Mount {
    #[serde(default)]
    destination: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Linux {
    #[serde(default)]
    namespaces: Option<Vec<Namespace>>,
}

#[derive(serde::Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
}

/// A container's role, from the CRI's annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No CRI annotation: a container run by other means (`ctr run`, a standalone bundle).
    Plain,
    /// A pod's sandbox (pause) container: it creates the runsc sandbox.
    PodSandbox,
    /// An app container of a pod: a runsc sub-container in the pod's sandbox.
    PodContainer,
}

/// What the wrapper uses from a bundle's `config.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub role: Role,
    /// `podsnap.dev/restore-from`, if set.
    pub restore_from: Option<String>,
    /// The CRI container name (app containers).
    pub container_name: Option<String>,
    /// The pod's namespace and name (CRI containers).
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// The pod sandbox's container id (app containers).
    pub sandbox_id: Option<String>,
    /// Whether the spec asks for a network namespace. The CRI leaves it out for
    /// `hostNetwork` pods.
    pub network_namespace: bool,
    /// The pod's uid (CRI containers).
    pub pod_uid: Option<String>,
    /// The host directory bound at `/dev/shm` (the CRI's per-sandbox tmpfs, or the host's
    /// own for `hostIPC`), if any.
    pub dev_shm: Option<std::path::PathBuf>,
}

/// Reads `<bundle>/config.json`.
pub fn read(bundle: &Path) -> Result<Bundle, SpecError> {
    let path = bundle.join("config.json");
    let shown = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|source| SpecError::Read {
        path: shown.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse {
        path: shown.clone(),
        source,
    })?;
    let ann = spec.annotations.unwrap_or_default();
    let text = |k: &str| match ann.get(k) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let restore_from = match ann.get(RESTORE_ANNOTATION) {
        None => None,
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(_) => return Err(SpecError::Empty { path: shown }),
    };
    let role = match text(CONTAINER_TYPE).as_deref() {
        Some("sandbox") => Role::PodSandbox,
        Some("container") => Role::PodContainer,
        _ => Role::Plain,
    };
    let netns = spec
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|ns| ns.into_iter().find(|n| n.kind == "network"));
    let network_namespace = netns.is_some();
    let dev_shm = spec
        .mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| {
            m.destination == "/dev/shm"
                && podsnap_volumes::layout::is_bind(&m.kind, m.options.iter().map(String::as_str))
                && !m.source.is_empty()
        })
        .map(|m| std::path::PathBuf::from(m.source));
    Ok(Bundle {
        role,
        restore_from,
        container_name: text(CONTAINER_NAME),
        pod_namespace: text(SANDBOX_NAMESPACE),
        pod_name: text(SANDBOX_NAME),
        sandbox_id: text(SANDBOX_ID),
        network_namespace,
        pod_uid: text(SANDBOX_UID),
        dev_shm,
    })
}

/// The snapshot id in `<bundle>/config.json`'s annotations, if the annotation is there.
pub fn restore_from(bundle: &Path) -> Result<Option<String>, SpecError> {
    read(bundle).map(|b| b.restore_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_restore_annotation() {
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            (r#"{"ociVersion":"1.0.2"}"#, Ok(None)),
            (r#"{"annotations":null}"#, Ok(None)),
            (
                r#"{"annotations":{"io.kubernetes.cri.container-type":"container"}}"#,
                Ok(None),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":"snap-1"}}"#,
                Ok(Some("snap-1")),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":" snap-2\n"}}"#,
                Ok(Some("snap-2")),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":""}}"#,
                Err("is empty"),
            ),
            (
                r#"{"annotations":{"podsnap.dev/restore-from":7}}"#,
                Err("is empty"),
            ),
            (r#"{"annotations":"#, Err("not a valid OCI config")),
        ];
        for (json, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("config.json"), json).unwrap();
            match (restore_from(dir.path()), want) {
                (Ok(got), Ok(w)) => assert_eq!(got.as_deref(), *w, "{json}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{json}: {e}"),
                (got, want) => panic!("{json}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn tells_pod_sandboxes_from_app_containers_and_host_network() {
        let cases: &[(&str, Role, bool, Option<&str>)] = &[
            (
                r#"{"linux":{"namespaces":[{"type":"network"}]}}"#,
                Role::Plain,
                true,
                None,
            ),
            (
                r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-namespace":"ns1"},
                   "linux":{"namespaces":[{"type":"pid"},{"type":"ipc"}]}}"#,
                Role::PodSandbox,
                false,
                None,
            ),
            (
                r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"app"},
                   "linux":{"namespaces":[{"type":"network","path":"/proc/1/ns/net"}]}}"#,
                Role::PodContainer,
                true,
                Some("app"),
            ),
        ];
        for (json, role, netns, name) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("config.json"), json).unwrap();
            let b = read(dir.path()).unwrap();
            assert_eq!(b.role, *role, "{json}");
            assert_eq!(b.network_namespace, *netns, "{json}");
            assert_eq!(b.container_name.as_deref(), *name, "{json}");
        }
    }

    #[test]
    fn reads_the_pod_uid_and_the_dev_shm_bind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-uid":"u-1"},
               "mounts":[{"destination":"/dev/shm","type":"tmpfs","source":"shm"},
                         {"destination":"/dev/shm","source":"/run/c/sandboxes/s/shm","options":["rbind","ro"]}]}"#,
        )
        .unwrap();
        let b = read(dir.path()).unwrap();
        assert_eq!(b.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(
            b.dev_shm.as_deref(),
            Some(Path::new("/run/c/sandboxes/s/shm"))
        );
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let b = read(dir.path()).unwrap();
        assert_eq!((b.pod_uid, b.dev_shm), (None, None));
    }

    #[test]
    fn missing_config_json_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            restore_from(dir.path()),
            Err(SpecError::Read { .. })
        ));
    }
}
