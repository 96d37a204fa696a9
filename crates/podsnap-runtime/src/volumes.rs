//! A pod's filesystem state outside its gVisor checkpoint, on the runc-shim path: which host
//! directories hold its emptyDir volumes and its `/dev/shm` (read from its containers' OCI
//! specs), and the record of a sandbox paused while they are packed.
//!
//! Behind containerd's runc v2 shim the CRI's specs reach runsc unchanged: an emptyDir is a
//! bind mount of `<kubelet root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<name>` (a
//! `subPath` mount binds `<kubelet root>/pods/<uid>/volume-subpaths/<name>/...`: the whole
//! volume is taken), and `/dev/shm` a bind mount of the CRI's per-sandbox tmpfs
//! `<containerd state>/io.containerd.grpc.v1.cri/sandboxes/<sandbox id>/shm` (a pod with
//! `hostIPC` binds the host's `/dev/shm`, which is not the pod's and is never taken). runsc
//! serves them through its gofer, outside the checkpoint. gVisor's own shim rewrites those
//! mounts into sandbox-internal tmpfs mounts (mount hints) whose contents the checkpoint
//! saves, so its pods have none here: nothing is carried twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use podsnap_volumes::{layout, Volume, VolumeKey};

use crate::containerd::RUNC_V2;
use crate::runtime::{RuntimeError, Sandbox, SandboxKind};

/// In a checkpoint's durable job dir: the sandbox runsc was asked to pause before its
/// volumes were packed (`{"root": ..., "id": ...}`), until it is resumed or gone.
pub const PAUSED_RECORD: &str = "paused-for-volumes.json";

/// The paused sandbox a [`PAUSED_RECORD`] names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Paused {
    pub root: PathBuf,
    pub id: String,
}

/// The volumes of `sb` that its checkpoint does not save: those of a CRI pod behind the runc
/// v2 shim, read from every container's `config.json`; none for anything else.
pub fn outside_checkpoint(sb: &Sandbox) -> Result<Vec<Volume>, RuntimeError> {
    let SandboxKind::Containerd {
        runtime,
        pod: Some(pod),
        ..
    } = &sb.kind
    else {
        return Ok(Vec::new());
    };
    if runtime != RUNC_V2 {
        return Ok(Vec::new());
    }
    let bundles: Vec<&Path> = if sb.containers.is_empty() {
        vec![sb.bundle.as_path()]
    } else {
        sb.containers.iter().map(|c| c.bundle.as_path()).collect()
    };
    let mut found = BTreeMap::new();
    for bundle in bundles {
        let path = bundle.join("config.json");
        let spec: serde_json::Value = std::fs::read(&path)
            .and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other))
            .map_err(|source| RuntimeError::Io {
                context: format!("reading {} for the pod's volumes", path.display()),
                source,
            })?;
        for (key, dir) in from_spec(&spec, pod.uid.as_deref(), &sb.sandbox_id) {
            found.entry(key).or_insert(dir);
        }
    }
    Ok(found
        .into_iter()
        .map(|(key, dir)| Volume { key, dir })
        .collect())
}

/// The emptyDir and `/dev/shm` bind mounts of one OCI spec.
fn from_spec(
    spec: &serde_json::Value,
    pod_uid: Option<&str>,
    sandbox_id: &str,
) -> Vec<(VolumeKey, PathBuf)> {
    let mounts = spec.get("mounts").and_then(|m| m.as_array());
    let mut out = Vec::new();
    for m in mounts.into_iter().flatten() {
        let s = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let options = m.get("options").and_then(|o| o.as_array());
        let bind = layout::is_bind(
            s("type"),
            options.into_iter().flatten().filter_map(|o| o.as_str()),
        );
        if !bind || s("source").is_empty() {
            continue;
        }
        let source = Path::new(s("source"));
        if s("destination") == "/dev/shm" {
            if layout::is_sandbox_shm(source, sandbox_id) {
                out.push((VolumeKey::Shm, source.to_path_buf()));
            }
        } else if let Some(v) = empty_dir(source, pod_uid) {
            out.push(v);
        }
    }
    out
}

/// The emptyDir a mount source is (or is a subPath of) in pod `pod_uid`'s directory.
fn empty_dir(source: &Path, pod_uid: Option<&str>) -> Option<(VolumeKey, PathBuf)> {
    let c: Vec<&str> = source.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    let pods = c.iter().rposition(|x| *x == "pods")?;
    let uid = *c.get(pods + 1)?;
    if pod_uid.is_some_and(|u| u != uid) {
        return None;
    }
    let base: PathBuf = c[..pods + 2].iter().collect();
    let name = match c.get(pods + 2..) {
        Some(["volumes", "kubernetes.io~empty-dir", name]) => *name,
        Some(["volume-subpaths", name, ..]) => *name,
        _ => return None,
    };
    let dir = layout::empty_dir_in(&base, name);
    // A subPath of another kind of volume has no emptyDir directory.
    if !dir.is_dir() {
        return None;
    }
    Some((VolumeKey::empty_dir(name)?, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_empty_dirs_and_the_sandbox_shm_but_not_the_hosts() {
        let t = tempfile::tempdir().unwrap();
        let pod = t.path().join("kubelet/pods/uid-1");
        for v in ["disk", "mem"] {
            std::fs::create_dir_all(pod.join("volumes/kubernetes.io~empty-dir").join(v)).unwrap();
        }
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~configmap/cfg")).unwrap();
        let ed = |v: &str| pod.join("volumes/kubernetes.io~empty-dir").join(v);
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/disk", "type": "bind", "source": ed("disk"), "options": ["rbind", "rw"]},
            {"destination": "/sub", "source": pod.join("volume-subpaths/mem/app/0"), "options": ["rbind"]},
            {"destination": "/cfg", "type": "bind", "source": pod.join("volumes/kubernetes.io~configmap/cfg")},
            {"destination": "/cfgsub", "type": "bind", "source": pod.join("volume-subpaths/cfg/app/1")},
            {"destination": "/other", "type": "bind", "source": t.path().join("kubelet/pods/uid-2/volumes/kubernetes.io~empty-dir/disk")},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/shm"},
        ]});
        let got = from_spec(&spec, Some("uid-1"), "sb1");
        assert_eq!(
            got,
            vec![
                (VolumeKey::empty_dir("disk").unwrap(), ed("disk")),
                (VolumeKey::empty_dir("mem").unwrap(), ed("mem")),
                (
                    VolumeKey::Shm,
                    "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/shm".into()
                ),
            ]
        );
        // hostIPC: the host's /dev/shm, and another sandbox's, are not this pod's.
        for src in [
            "/dev/shm",
            "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/sb2/shm",
        ] {
            let spec = serde_json::json!({"mounts": [
                {"destination": "/dev/shm", "type": "bind", "source": src},
            ]});
            assert_eq!(from_spec(&spec, Some("uid-1"), "sb1"), vec![], "{src}");
        }
    }
}
