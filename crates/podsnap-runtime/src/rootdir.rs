//! What runsc leaves in its `--root` directory, and what its sandbox process was started with.
//!
//! runsc (20221219 and current) keeps one file per container in its root, named
//! `<container id>_sandbox:<sandbox id>.state`, holding JSON with the container's OCI spec,
//! bundle directory, status and the sandbox's pid. From those names alone we learn which
//! sandbox a container belongs to and how many containers share that sandbox (a count > 1 is a
//! multi-container sandbox, which runsc 20221219 cannot checkpoint).
//!
//! Whether the root filesystem is overlaid in sandbox memory is a runsc global flag
//! (`--overlay2=root:memory`, `--overlay2=all:self`, the deprecated `--overlay`), visible on the
//! sandbox process's command line (`runsc-sandbox --root=... --overlay2=... boot ...`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Parsed name of a state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFileName {
    /// Container id.
    pub container_id: String,
    /// Sandbox id.
    pub sandbox_id: String,
}

/// Parses `<cid>_sandbox:<sid>.state`.
pub fn parse_state_file_name(name: &str) -> Option<StateFileName> {
    let stem = name.strip_suffix(".state")?;
    let (cid, sid) = stem.rsplit_once("_sandbox:")?;
    (!cid.is_empty() && !sid.is_empty()).then(|| StateFileName {
        container_id: cid.to_string(),
        sandbox_id: sid.to_string(),
    })
}

/// All state files in a runsc root (an absent root has none).
pub fn state_files(root: &Path) -> std::io::Result<Vec<(StateFileName, PathBuf)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str().and_then(parse_state_file_name) {
            out.push((name, entry.path()));
        }
    }
    out.sort_by(|a, b| a.0.container_id.cmp(&b.0.container_id));
    Ok(out)
}

/// The state file of container `id` (exact id match: ids that are prefixes of others do not
/// collide here).
pub fn find_state_file(root: &Path, id: &str) -> std::io::Result<Option<(StateFileName, PathBuf)>> {
    Ok(state_files(root)?
        .into_iter()
        .find(|(n, _)| n.container_id == id))
}

/// Ids of the containers of sandbox `sandbox_id`.
pub fn containers_in_sandbox(root: &Path, sandbox_id: &str) -> std::io::Result<Vec<String>> {
    Ok(state_files(root)?
        .into_iter()
        .filter(|(n, _)| n.sandbox_id == sandbox_id)
        .map(|(n, _)| n.container_id)
        .collect())
}

/// The annotation the CRI puts on every container it creates: `sandbox` (the pause container)
/// or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The annotation holding a CRI container's name in its pod.
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// The annotation naming the sandbox (root container id) a CRI container joins.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// One container of a sandbox, as its state file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFile {
    /// Container id.
    pub id: String,
    /// True for the sandbox's root container (its id is the sandbox id).
    pub root: bool,
    /// The CRI container name, when the CRI created it.
    pub cri_name: Option<String>,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Creation time as runsc wrote it.
    pub created_at: String,
    /// Status word.
    pub status: String,
}

/// The containers of sandbox `sandbox_id`: the root first, then the others in creation order.
pub fn sandbox_container_files(
    root: &Path,
    sandbox_id: &str,
) -> std::io::Result<Vec<ContainerFile>> {
    let mut out = Vec::new();
    for (name, path) in state_files(root)? {
        if name.sandbox_id != sandbox_id {
            continue;
        }
        let file = StateFile::read(&path).unwrap_or_default();
        let annotations = file.annotations();
        out.push(ContainerFile {
            root: name.container_id == sandbox_id,
            cri_name: annotations.get(CRI_CONTAINER_NAME).cloned(),
            id: name.container_id,
            bundle: file.bundle_dir,
            created_at: file.created_at,
            status: file.status,
        });
    }
    out.sort_by(|a, b| {
        b.root
            .cmp(&a.root)
            .then_with(|| a.created_at.cmp(&b.created_at))
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

/// The parts of a state file podsnap uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StateFile {
    /// Container id.
    #[serde(default)]
    pub id: String,
    /// The container's OCI spec.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Bundle directory.
    #[serde(default, rename = "bundleDir")]
    pub bundle_dir: PathBuf,
    /// Status word.
    #[serde(default)]
    pub status: String,
    /// Creation time (RFC 3339), orders the containers of a sandbox.
    #[serde(default, rename = "createdAt")]
    pub created_at: String,
    /// The sandbox.
    #[serde(default)]
    pub sandbox: Option<StateSandbox>,
}

/// The sandbox part of a state file.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StateSandbox {
    /// Sandbox id.
    #[serde(default)]
    pub id: String,
    /// Sandbox process pid.
    #[serde(default)]
    pub pid: i32,
}

impl StateFile {
    /// Reads a state file (bounded to 16 MiB: specs are small).
    pub fn read(path: &Path) -> std::io::Result<StateFile> {
        use std::io::Read;
        let mut buf = Vec::new();
        std::fs::File::open(path)?
            .take(16 * 1024 * 1024)
            .read_to_end(&mut buf)?;
        serde_json::from_slice(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The spec's annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        annotations_of(&self.spec)
    }
}

/// Annotations of an OCI spec given as JSON (non-string values are skipped).
pub fn annotations_of(spec: &serde_json::Value) -> BTreeMap<String, String> {
    spec.get("annotations")
        .and_then(|a| a.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// How the sandbox's root filesystem is overlaid.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum RootfsOverlay {
    /// No overlay: the container's writes go to the host rootfs and stay on this node.
    None,
    /// `root:memory` / `all:memory`: writes live in sandbox memory.
    Memory,
    /// `root:self` / `all:self`: a filestore inside the rootfs backs the overlay.
    SelfBacked,
    /// A filestore in this host directory backs the overlay.
    Dir(PathBuf),
    /// Could not be determined (sandbox not running and no flag configured).
    Unknown,
}

impl RootfsOverlay {
    /// True when the container's filesystem writes are part of sandbox state, so they travel
    /// with a checkpoint to another node.
    pub fn writes_travel_with_checkpoint(&self) -> bool {
        matches!(
            self,
            RootfsOverlay::Memory | RootfsOverlay::SelfBacked | RootfsOverlay::Dir(_)
        )
    }

    /// A stable word for reports: `memory`, `self`, `dir:PATH`, `none`, `unknown`.
    pub fn label(&self) -> String {
        match self {
            RootfsOverlay::None => "none".into(),
            RootfsOverlay::Memory => "memory".into(),
            RootfsOverlay::SelfBacked => "self".into(),
            RootfsOverlay::Dir(p) => format!("dir:{}", p.display()),
            RootfsOverlay::Unknown => "unknown".into(),
        }
    }

    /// Interprets one `--overlay2` value (`{mount}:{medium}`).
    pub fn from_overlay2(value: &str) -> RootfsOverlay {
        let (mount, medium) = match value.split_once(':') {
            Some(p) => p,
            None => {
                return if value == "none" {
                    RootfsOverlay::None
                } else {
                    RootfsOverlay::Unknown
                }
            }
        };
        if mount != "root" && mount != "all" {
            return RootfsOverlay::None;
        }
        match medium {
            "memory" => RootfsOverlay::Memory,
            "self" => RootfsOverlay::SelfBacked,
            "" | "none" => RootfsOverlay::None,
            dir if dir.starts_with('/') => RootfsOverlay::Dir(PathBuf::from(dir)),
            _ => RootfsOverlay::Unknown,
        }
    }

    /// Finds the overlay setting in runsc global flags (the last one wins, as in Go's flag
    /// package). `None` when no overlay flag is present.
    pub fn from_flags<S: AsRef<str>>(args: &[S]) -> Option<RootfsOverlay> {
        let mut found = None;
        let mut iter = args.iter().map(AsRef::as_ref).peekable();
        while let Some(arg) = iter.next() {
            let flag = arg.trim_start_matches('-');
            if !arg.starts_with('-') {
                // The first non-flag is the subcommand: global flags end there.
                break;
            }
            if let Some(v) = flag.strip_prefix("overlay2=") {
                found = Some(RootfsOverlay::from_overlay2(v));
            } else if flag == "overlay2" {
                if let Some(v) = iter.next() {
                    found = Some(RootfsOverlay::from_overlay2(v));
                }
            } else if flag == "overlay" || flag == "overlay=true" {
                found = Some(RootfsOverlay::Memory);
            } else if flag == "overlay=false" {
                found = Some(RootfsOverlay::None);
            }
        }
        found
    }

    /// Reads the overlay setting from a running sandbox process's command line. `None` when the
    /// process cannot be read or names no overlay (then the release's default applies).
    pub fn from_sandbox_pid(pid: i32) -> Option<RootfsOverlay> {
        RootfsOverlay::from_sandbox_args(&sandbox_args(pid)?)
    }

    /// The overlay a sandbox process's arguments (after the program name) show: the global
    /// `--overlay2` flag, or else the root mount's medium in `boot --gofer-mount-confs=`
    /// (`lisafs:self`, `lisafs:memory`, `lisafs:none`), which releases that overlay by default
    /// pass even when no flag was given.
    pub fn from_sandbox_args<S: AsRef<str>>(args: &[S]) -> Option<RootfsOverlay> {
        if let Some(o) = RootfsOverlay::from_flags(args) {
            return Some(o);
        }
        let confs = flag_value(args, "gofer-mount-confs")?;
        let root = confs.split(',').next()?;
        let medium = root.split_once(':').map(|(_, m)| m).unwrap_or("");
        Some(match medium {
            "none" | "" => RootfsOverlay::None,
            "memory" => RootfsOverlay::Memory,
            "self" => RootfsOverlay::SelfBacked,
            _ => RootfsOverlay::Unknown,
        })
    }
}

/// The arguments of a running sandbox process after the program name (`runsc-sandbox`).
pub fn sandbox_args(pid: i32) -> Option<Vec<String>> {
    if pid <= 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The value of `--name=V` / `-name=V` / `--name V` anywhere in `args` (last one wins).
pub fn flag_value<S: AsRef<str>>(args: &[S], name: &str) -> Option<String> {
    let mut found = None;
    let mut iter = args.iter().map(AsRef::as_ref);
    while let Some(arg) = iter.next() {
        if !arg.starts_with('-') {
            continue;
        }
        let flag = arg.trim_start_matches('-');
        if let Some(v) = flag.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        } else if flag == name {
            found = iter.next().map(str::to_string);
        }
    }
    found
}

/// The platform a sandbox process was started with (`--platform=systrap`), when it names one.
pub fn platform_from_sandbox_args<S: AsRef<str>>(args: &[S]) -> Option<String> {
    flag_value(args, "platform")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_names_are_parsed() {
        assert_eq!(
            parse_state_file_name("c1_sandbox:c1.state"),
            Some(StateFileName {
                container_id: "c1".into(),
                sandbox_id: "c1".into()
            })
        );
        let n = parse_state_file_name("app_x_sandbox:pod123.state").unwrap();
        assert_eq!(n.container_id, "app_x");
        assert_eq!(n.sandbox_id, "pod123");
        assert!(parse_state_file_name("c1_sandbox:c1.lock").is_none());
        assert!(parse_state_file_name("c1.state").is_none());
        assert!(parse_state_file_name("_sandbox:x.state").is_none());
    }

    #[test]
    fn containers_are_grouped_by_sandbox_and_ids_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "pause_sandbox:pause.state",
            "app_sandbox:pause.state",
            "app2_sandbox:app2.state",
            "app2_sandbox:app2.lock",
        ] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        assert_eq!(
            containers_in_sandbox(dir.path(), "pause").unwrap(),
            vec!["app", "pause"]
        );
        let (n, _) = find_state_file(dir.path(), "app").unwrap().unwrap();
        assert_eq!(n.sandbox_id, "pause");
        assert!(find_state_file(dir.path(), "ap").unwrap().is_none());
        assert!(state_files(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn the_overlay_of_a_current_release_is_read_from_its_gofer_mount_confs() {
        let args = [
            "--network=none",
            "--root=/r",
            "boot",
            "--bundle=/b",
            "--gofer-mount-confs=lisafs:self,lisafs:none",
            "c2",
        ];
        assert_eq!(
            RootfsOverlay::from_sandbox_args(&args),
            Some(RootfsOverlay::SelfBacked)
        );
        let ro = ["--root=/r", "boot", "--gofer-mount-confs=lisafs:none", "c"];
        assert_eq!(
            RootfsOverlay::from_sandbox_args(&ro),
            Some(RootfsOverlay::None)
        );
        let flag = [
            "--overlay2=root:memory",
            "boot",
            "--gofer-mount-confs=lisafs:self",
        ];
        assert_eq!(
            RootfsOverlay::from_sandbox_args(&flag),
            Some(RootfsOverlay::Memory)
        );
        assert_eq!(RootfsOverlay::from_sandbox_args(&["boot", "c"]), None);
        assert_eq!(
            platform_from_sandbox_args(&["--platform=systrap", "boot"]),
            Some("systrap".into())
        );
        assert_eq!(platform_from_sandbox_args(&["--root=/r", "boot"]), None);
    }

    #[test]
    fn overlay_flags_are_interpreted() {
        assert_eq!(
            RootfsOverlay::from_flags(&["--root=/r", "--overlay2=root:memory", "boot"]),
            Some(RootfsOverlay::Memory)
        );
        assert_eq!(
            RootfsOverlay::from_flags(&["--overlay2", "all:self", "boot"]),
            Some(RootfsOverlay::SelfBacked)
        );
        assert_eq!(
            RootfsOverlay::from_flags(&["-overlay2=root:/var/fs", "boot"]),
            Some(RootfsOverlay::Dir("/var/fs".into()))
        );
        assert_eq!(
            RootfsOverlay::from_flags(&["--overlay2=none", "boot"]),
            Some(RootfsOverlay::None)
        );
        assert_eq!(
            RootfsOverlay::from_flags(&["--overlay", "boot"]),
            Some(RootfsOverlay::Memory)
        );
        assert_eq!(RootfsOverlay::from_flags(&["--network=none", "boot"]), None);
        // Flags after the subcommand are not global flags.
        assert_eq!(
            RootfsOverlay::from_flags(&["boot", "--overlay2=root:memory"]),
            None
        );
        assert!(RootfsOverlay::Memory.writes_travel_with_checkpoint());
        assert!(!RootfsOverlay::None.writes_travel_with_checkpoint());
        assert!(!RootfsOverlay::Unknown.writes_travel_with_checkpoint());
    }

    #[test]
    fn state_file_exposes_sandbox_and_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c_sandbox:s.state");
        std::fs::write(
            &p,
            r#"{"id":"c","spec":{"annotations":{"a":"b","n":1}},"bundleDir":"/b","status":"running","sandbox":{"id":"s","pid":42}}"#,
        )
        .unwrap();
        let s = StateFile::read(&p).unwrap();
        assert_eq!(s.bundle_dir, PathBuf::from("/b"));
        assert_eq!(s.sandbox.as_ref().unwrap().pid, 42);
        assert_eq!(s.annotations().len(), 1);
    }
}
