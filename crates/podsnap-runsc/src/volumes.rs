//! A restored pod's volumes outside the checkpoint (runc-shim path): the snapshot's
//! [`podsnap_volumes::FILE_NAME`], written by podsnapd while the old pod was paused for its
//! checkpoint, is unpacked into the NEW pod's emptyDir directories (matched by volume name)
//! and its `/dev/shm` at the pod sandbox's restoring `create`, before runsc runs at all.
//!
//! Why then: the kubelet mounts a pod's volumes before it asks for the sandbox, and the CRI
//! makes the sandbox's `/dev/shm` tmpfs before it creates the pause container, so every
//! target exists at that `create`. runsc opens them later: the pause container's `restore`
//! (replace-create: this `create`; restore-on-start: its `start`) and each app container's
//! `create`/`restore` only register their gofers, and runsc 20240729 loads the checkpoint
//! (and with it re-opens the gofer-served files) once the last container's `restore`
//! arrives ("Restored container N of N"). Unpacking writes into the directories in place
//! (never replacing them), so a gofer's bind mount of one sees the contents either way.
//!
//! A snapshot without the file (older ones, gVisor-shim ones) restores as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use podsnap_volumes::{layout, Limits, UnpackError, Unpacked, VolumeKey};

use crate::spec;

/// Why a restored pod's volumes could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "the snapshot carries the pod's emptyDir volumes, but this pod's uid is unknown (no {} \
         annotation)",
        spec::SANDBOX_UID
    )]
    NoPodUid,
    #[error("the snapshot carries {volume}, but this pod has no such volume (no directory {})", .dir.display())]
    NoVolume { volume: VolumeKey, dir: PathBuf },
    #[error(
        "the snapshot carries the pod's /dev/shm, but this pod has none of its own (its \
         /dev/shm is {}; a hostIPC pod shares the host's)",
        .found.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "not mounted".into())
    )]
    NoShm { found: Option<PathBuf> },
    #[error("cannot unpack the pod's volumes from {}", .archive.display())]
    Unpack {
        archive: PathBuf,
        #[source]
        source: UnpackError,
    },
}

/// Unpacks `<image_dir>/pod-volumes.psv`, if the snapshot has one, into pod sandbox `id`'s
/// volumes; `None` when there is nothing to unpack.
pub fn restore(
    kubelet_root: &Path,
    pod: &spec::Bundle,
    id: &str,
    image_dir: &Path,
) -> Result<Option<Unpacked>, VolumeError> {
    let archive = image_dir.join(podsnap_volumes::FILE_NAME);
    if !archive.is_file() {
        return Ok(None);
    }
    let unpack_err = |source| VolumeError::Unpack {
        archive: archive.clone(),
        source,
    };
    let limits = Limits::default();
    let keys = podsnap_volumes::volumes(&archive, &limits).map_err(unpack_err)?;
    let mut targets = BTreeMap::new();
    for key in keys {
        let dir = target(kubelet_root, pod, id, &key)?;
        targets.insert(key, dir);
    }
    podsnap_volumes::unpack(&archive, &targets, &limits)
        .map(Some)
        .map_err(unpack_err)
}

/// The new pod's directory for a volume of the snapshot.
fn target(
    kubelet_root: &Path,
    pod: &spec::Bundle,
    id: &str,
    key: &VolumeKey,
) -> Result<PathBuf, VolumeError> {
    match key {
        VolumeKey::EmptyDir(name) => {
            let uid = pod
                .pod_uid
                .as_deref()
                .filter(|u| {
                    u.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                .ok_or(VolumeError::NoPodUid)?;
            let dir = layout::empty_dir_in(&kubelet_root.join("pods").join(uid), name);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(dir),
                _ => Err(VolumeError::NoVolume {
                    volume: key.clone(),
                    dir,
                }),
            }
        }
        VolumeKey::Shm => {
            // Only the CRI's tmpfs of this very sandbox: never the host's /dev/shm.
            let own =
                (pod.dev_shm.as_ref()).filter(|p| layout::is_sandbox_shm(p, id) && p.is_dir());
            own.cloned().ok_or_else(|| VolumeError::NoShm {
                found: pod.dev_shm.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podsnap_volumes::{pack, Volume};

    fn pod(uid: Option<&str>, dev_shm: Option<PathBuf>) -> spec::Bundle {
        spec::Bundle {
            role: spec::Role::PodSandbox,
            restore_from: Some("s1".into()),
            container_name: None,
            pod_namespace: Some("ns".into()),
            pod_name: Some("p".into()),
            sandbox_id: None,
            network_namespace: false,
            pod_uid: uid.map(String::from),
            dev_shm,
        }
    }

    /// An image dir whose archive holds emptyDir "disk" (a file) and /dev/shm (a file).
    fn image(t: &Path) -> PathBuf {
        let (disk, shm, img) = (t.join("old/disk"), t.join("old/shm"), t.join("img"));
        for d in [&disk, &shm, &img] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(disk.join("counter.txt"), "0\n1\n").unwrap();
        std::fs::write(shm.join("seg"), "shared").unwrap();
        let vols = [
            Volume {
                key: VolumeKey::empty_dir("disk").unwrap(),
                dir: disk,
            },
            Volume {
                key: VolumeKey::Shm,
                dir: shm,
            },
        ];
        pack(
            &vols,
            &img.join(podsnap_volumes::FILE_NAME),
            &Limits::default(),
        )
        .unwrap();
        img
    }

    #[test]
    fn unpacks_into_the_new_pods_volumes_by_name() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path());
        let kubelet = t.path().join("kubelet");
        let disk = kubelet.join("pods/new-uid/volumes/kubernetes.io~empty-dir/disk");
        let shm = t.path().join("state/sandboxes/sb2/shm");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::create_dir_all(&shm).unwrap();
        let p = pod(Some("new-uid"), Some(shm.clone()));
        let u = restore(&kubelet, &p, "sb2", &img).unwrap().unwrap();
        assert_eq!((u.volumes, u.entries), (2, 2));
        assert_eq!(
            std::fs::read_to_string(disk.join("counter.txt")).unwrap(),
            "0\n1\n"
        );
        assert_eq!(std::fs::read_to_string(shm.join("seg")).unwrap(), "shared");
        // A snapshot without the archive restores as before.
        std::fs::remove_file(img.join(podsnap_volumes::FILE_NAME)).unwrap();
        assert_eq!(restore(&kubelet, &p, "sb2", &img).unwrap(), None);
    }

    #[test]
    fn refuses_a_pod_without_the_volumes_and_never_the_hosts_shm() {
        let t = tempfile::tempdir().unwrap();
        let img = image(t.path());
        let kubelet = t.path().join("kubelet");
        let shm = t.path().join("state/sandboxes/sb2/shm");
        std::fs::create_dir_all(&shm).unwrap();
        let e = restore(&kubelet, &pod(None, Some(shm.clone())), "sb2", &img).unwrap_err();
        assert!(matches!(e, VolumeError::NoPodUid), "{e}");
        let e = restore(&kubelet, &pod(Some("u"), Some(shm.clone())), "sb2", &img).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "the snapshot carries emptyDir \"disk\", but this pod has no such volume"
            ),
            "{e}"
        );
        let disk = kubelet.join("pods/u/volumes/kubernetes.io~empty-dir/disk");
        std::fs::create_dir_all(&disk).unwrap();
        for dev_shm in [Some(PathBuf::from("/dev/shm")), Some(shm.clone()), None] {
            let id = if dev_shm.as_deref() == Some(shm.as_path()) {
                "other-sb"
            } else {
                "sb2"
            };
            let e = restore(&kubelet, &pod(Some("u"), dev_shm.clone()), id, &img).unwrap_err();
            assert!(matches!(e, VolumeError::NoShm { .. }), "{dev_shm:?}: {e}");
        }
        // Refused before anything was written.
        assert_eq!(std::fs::read_dir(&disk).unwrap().count(), 0);
    }
}
