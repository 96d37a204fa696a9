//! Where the kubelet and the CRI keep a pod's volumes on the node, as both sides of the
//! runc-shim path see them: podsnapd finds them in the old pod's OCI specs, podsnap-runsc
//! puts the contents back into the new pod's.

use std::path::{Path, PathBuf};

/// The emptyDir directory of kubelet volume `name` under a pod's directory
/// (`<kubelet root>/pods/<uid>`): `<pod dir>/volumes/kubernetes.io~empty-dir/<name>`.
pub fn empty_dir_in(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes/kubernetes.io~empty-dir").join(name)
}

/// Whether `path` is the CRI's `/dev/shm` tmpfs of sandbox `sandbox_id`
/// (`.../sandboxes/<sandbox id>/shm`), never the host's own (a `hostIPC` pod's).
pub fn is_sandbox_shm(path: &Path, sandbox_id: &str) -> bool {
    let c: Vec<_> = path.iter().collect();
    c.len() >= 3
        && c[c.len() - 1] == "shm"
        && c[c.len() - 2] == sandbox_id
        && c[c.len() - 3] == "sandboxes"
}

/// Whether an OCI mount of this `type` and these options is a bind mount.
pub fn is_bind<'o>(kind: &str, mut options: impl Iterator<Item = &'o str>) -> bool {
    kind == "bind" || options.any(|o| o == "bind" || o == "rbind")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_shm_is_this_sandboxs_only() {
        let p = Path::new("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/shm");
        assert!(is_sandbox_shm(p, "sb1"));
        assert!(!is_sandbox_shm(p, "sb2"));
        assert!(!is_sandbox_shm(Path::new("/dev/shm"), "sb1"));
        assert!(!is_sandbox_shm(Path::new("sb1/shm"), "sb1"));
    }

    #[test]
    fn bind_by_type_or_option() {
        assert!(is_bind("bind", std::iter::empty()));
        assert!(is_bind("", ["rw", "rbind"].into_iter()));
        assert!(!is_bind("tmpfs", ["rw"].into_iter()));
    }

    #[test]
    fn empty_dir_path() {
        assert_eq!(
            empty_dir_in(Path::new("/k/pods/u"), "disk"),
            Path::new("/k/pods/u/volumes/kubernetes.io~empty-dir/disk")
        );
    }
}
