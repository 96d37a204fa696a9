//! Restore markers: a small file per restored container, keyed by runsc root and container
//! id, so that the shim's `start` after a restore is answered without calling runsc (runsc
//! 20221219's restore already started the container) and `delete` can clean up.
//!
//! Layout: `<marker_dir>/<root, %-escaped>/<container id>`, JSON inside. Checking for a
//! marker costs one failed `open` when there is none.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::RestoreMode;

/// What a marker records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    /// How the restore is done.
    pub mode: MarkerMode,
    pub snapshot_id: String,
    pub image_dir: PathBuf,
    pub bundle: PathBuf,
    /// A restored pod sandbox's: the snapshot's app containers, in restore order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_containers: Vec<String>,
    /// A restored pod sandbox's: the app containers restored into it so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
}

impl Marker {
    /// A container whose `create` ran as given and whose `start` becomes `restore` from
    /// `image_dir` (no pod containers listed, none restored yet).
    pub fn restore_on_start(
        snapshot_id: &str,
        image_dir: PathBuf,
        bundle: &std::path::Path,
    ) -> Marker {
        Marker {
            mode: MarkerMode::RestoreOnStart,
            snapshot_id: snapshot_id.to_string(),
            image_dir,
            bundle: bundle.to_path_buf(),
            pod_containers: vec![],
            restored: vec![],
        }
    }
}

/// How a marked container is restored: the [`RestoreMode`] the wrapper settled on at `create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MarkerMode {
    /// `create` ran as given; `start` becomes `restore`.
    RestoreOnStart,
    /// `create` became `restore --detach`; `start` is answered with success. Also what a
    /// marker with a mode this build does not know is read as.
    #[serde(other)]
    ReplaceCreate,
}

impl From<RestoreMode> for MarkerMode {
    /// `Auto` is decided before a marker is written; it is taken for `ReplaceCreate`.
    fn from(mode: RestoreMode) -> MarkerMode {
        match mode {
            RestoreMode::RestoreOnStart => MarkerMode::RestoreOnStart,
            RestoreMode::ReplaceCreate | RestoreMode::Auto => MarkerMode::ReplaceCreate,
        }
    }
}

/// `/run/containerd/runsc/k8s.io` -> `%2Frun%2Fcontainerd%2Frunsc%2Fk8s.io`: one path
/// component, distinct for distinct roots.
fn escape(s: &OsStr) -> String {
    let mut out = String::new();
    for (i, &b) in s.as_bytes().iter().enumerate() {
        // A leading dot is escaped too: no component is ever `.`, `..` or hidden.
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The marker file for container `id` under runsc root `root`.
pub fn path(marker_dir: &Path, root: &OsStr, id: &OsStr) -> PathBuf {
    let root = Path::new(root);
    let abs = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(root)
    };
    marker_dir.join(escape(abs.as_os_str())).join(escape(id))
}

/// Writes a marker atomically (temp file, then rename).
pub fn write(path: &Path, marker: &Marker) -> std::io::Result<()> {
    let dir = path.parent().expect("marker paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(marker).expect("markers serialise"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a marker; `Ok(None)` when there is none.
pub fn read(path: &Path) -> std::io::Result<Option<Marker>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a marker if there is one.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_keyed_by_root_and_id() {
        let d = Path::new("/m");
        let a = path(d, OsStr::new("/run/a"), OsStr::new("c1"));
        assert_eq!(a, PathBuf::from("/m/%2Frun%2Fa/c1"));
        assert_ne!(a, path(d, OsStr::new("/run/b"), OsStr::new("c1")));
        assert_ne!(a, path(d, OsStr::new("/run/a"), OsStr::new("c2")));
        // Escaping keeps distinct roots distinct.
        assert_ne!(
            path(d, OsStr::new("/a_b"), OsStr::new("c")),
            path(d, OsStr::new("/a/b"), OsStr::new("c"))
        );
        // An id cannot climb out of the marker dir.
        assert_eq!(
            path(d, OsStr::new("/r"), OsStr::new("../x")),
            PathBuf::from("/m/%2Fr/%2E.%2Fx")
        );
    }

    #[test]
    fn write_read_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), OsStr::new("/root"), OsStr::new("c1"));
        assert_eq!(read(&p).unwrap(), None);
        let m = Marker {
            mode: RestoreMode::ReplaceCreate.into(),
            snapshot_id: "s1".into(),
            image_dir: "/img".into(),
            bundle: "/b".into(),
            pod_containers: vec![],
            restored: vec![],
        };
        write(&p, &m).unwrap();
        assert_eq!(read(&p).unwrap(), Some(m.clone()));
        assert_eq!(m.mode, MarkerMode::ReplaceCreate);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(read(&p).unwrap(), None);
    }

    #[test]
    fn modes_are_written_as_before_and_unknown_ones_read_as_replace_create() {
        let json = |mode: &str| {
            format!(r#"{{"mode":"{mode}","snapshot_id":"s","image_dir":"/i","bundle":"/b"}}"#)
        };
        for (text, mode) in [
            ("replace-create", MarkerMode::ReplaceCreate),
            ("restore-on-start", MarkerMode::RestoreOnStart),
            ("something-newer", MarkerMode::ReplaceCreate),
        ] {
            let m: Marker = serde_json::from_str(&json(text)).unwrap();
            assert_eq!(m.mode, mode, "{text}");
        }
        let m = Marker {
            mode: RestoreMode::RestoreOnStart.into(),
            snapshot_id: "s".into(),
            image_dir: "/i".into(),
            bundle: "/b".into(),
            pod_containers: vec![],
            restored: vec![],
        };
        assert_eq!(serde_json::to_string(&m).unwrap(), json("restore-on-start"));
    }
}
