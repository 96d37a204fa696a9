//! The wrapper's configuration: `/etc/podsnap/podsnap.toml` (or the file `PODSNAP_CONFIG`
//! names), then the environment on top.
//!
//! ```toml
//! runsc = "/usr/bin/runsc"                 # the real runsc
//! socket = "/run/podsnap/podsnapd.sock"    # podsnapd's socket (`unix://` accepted)
//! prepare_timeout = "110s"                 # how long a restoring create waits for podsnapd
//! runsc_flags = []                         # global flags put before the shim's on every call
//! marker_dir = "/run/podsnap/restored"     # restore markers (`start` after a restore)
//! restore_mode = "auto"                    # auto | replace-create | restore-on-start
//! host_network = "none"                    # hostNetwork pods: none (loopback only) | host
//! shim = "auto"                            # auto | runc | gvisor: the containerd shim in front
//! kubelet_root = "/var/lib/kubelet"        # where a restored pod's emptyDir volumes are
//!
//! [cross_namespace_restores]               # pods of namespace team-b may be restored from
//! team-b = ["team-a"]                      # snapshots of pods of team-a (none by default)
//! ```
//!
//! `PODSNAP_RUNSC`, `PODSNAP_SOCKET` and `PODSNAP_MARKER_DIR` override the file. A missing
//! default file means defaults; a file that `PODSNAP_CONFIG` names must exist, and unknown
//! keys are errors (a misspelt key would otherwise be ignored on every node).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The config file read when `PODSNAP_CONFIG` is not set.
pub const DEFAULT_CONFIG: &str = "/etc/podsnap/podsnap.toml";
/// podsnapd's default socket.
pub const DEFAULT_SOCKET: &str = "/run/podsnap/podsnapd.sock";
/// Where restore markers live by default (tmpfs: they must not survive a reboot).
pub const DEFAULT_MARKER_DIR: &str = "/run/podsnap/restored";
/// The default PrepareRestore deadline: under the kubelet's 2-minute CreateContainer deadline,
/// so that the wrapper reports its own error first.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(110);
/// runsc's usual place.
pub const DEFAULT_RUNSC: &str = "/usr/bin/runsc";
/// The kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";

/// How a restore is carried out for the installed runsc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Decide from the runsc binary (see [`crate::restore_mode_for`]).
    #[default]
    Auto,
    /// runsc 20221219: `restore` must not follow `create`, so `create` becomes
    /// `restore --detach` and the following `start` is answered with success.
    ReplaceCreate,
    /// Current runsc: `create` runs as given and `start` becomes `restore` into the created
    /// container.
    RestoreOnStart,
}

/// The network a pod gets that the CRI runs without a network namespace (`hostNetwork`):
/// runsc refuses to set up its own network from the host's namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostNetwork {
    /// `--network=none`: the pod has loopback only, and can be checkpointed.
    #[default]
    None,
    /// `--network=host`: the pod uses the host's network stack (runsc cannot checkpoint it).
    Host,
}

impl HostNetwork {
    /// runsc's global flag for it.
    pub fn flag(self) -> &'static str {
        match self {
            HostNetwork::None => "--network=none",
            HostNetwork::Host => "--network=host",
        }
    }
}

/// The containerd shim that runs this wrapper as its runsc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shim {
    /// gVisor's shim when the parent process is `containerd-shim-runsc-v1*`, containerd's
    /// runc v2 shim otherwise.
    #[default]
    Auto,
    /// containerd's runc v2 shim (`BinaryName`): waiters, pid files, reworded answers.
    Runc,
    /// gVisor's `containerd-shim-runsc-v1` (`binary_name` in its runsc.toml): every call is
    /// passed through but a restore's `start` (the binary's `gvisor_shim` module).
    Gvisor,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    runsc: Option<PathBuf>,
    socket: Option<String>,
    prepare_timeout: Option<String>,
    runsc_flags: Vec<String>,
    marker_dir: Option<PathBuf>,
    restore_mode: RestoreMode,
    host_network: HostNetwork,
    cross_namespace_restores: std::collections::BTreeMap<String, Vec<String>>,
    shim: Shim,
    kubelet_root: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The real runsc, as configured (a bare name is looked up on PATH).
    pub runsc: PathBuf,
    /// podsnapd's Unix socket.
    pub socket: PathBuf,
    /// PrepareRestore deadline.
    pub prepare_timeout: Duration,
    /// Global flags put before the shim's on every runsc call.
    pub runsc_flags: Vec<String>,
    /// Restore markers' directory.
    pub marker_dir: PathBuf,
    /// How restores are done.
    pub restore_mode: RestoreMode,
    /// The network of `hostNetwork` pods.
    pub host_network: HostNetwork,
    /// Target namespace -> the source namespaces whose pod snapshots its pods may restore
    /// (besides their own namespace's).
    pub cross_namespace_restores: std::collections::BTreeMap<String, Vec<String>>,
    /// The shim in front of the wrapper.
    pub shim: Shim,
    /// The kubelet's root directory: a restored pod's emptyDir volumes are
    /// `<kubelet_root>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<name>`.
    pub kubelet_root: PathBuf,
    /// The file read, if any.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Whether a pod of namespace `target` may be restored from a snapshot of a pod of
    /// namespace `source`.
    pub fn restore_allowed(&self, source: &str, target: &str) -> bool {
        source == target
            || self
                .cross_namespace_restores
                .get(target)
                .is_some_and(|from| from.iter().any(|f| f == source))
    }
}

/// A configuration error (one line).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The environment variables the wrapper reads (a seam for tests).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub config: Option<OsString>,
    pub runsc: Option<OsString>,
    pub socket: Option<OsString>,
    pub marker_dir: Option<OsString>,
}

impl Env {
    /// This process's environment.
    pub fn from_process() -> Env {
        let get = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            config: get("PODSNAP_CONFIG"),
            runsc: get("PODSNAP_RUNSC"),
            socket: get("PODSNAP_SOCKET"),
            marker_dir: get("PODSNAP_MARKER_DIR"),
        }
    }
}

/// `unix:///path` or `/path` -> `/path`.
pub fn socket_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix://").unwrap_or(s))
}

fn default_runsc() -> PathBuf {
    if Path::new(DEFAULT_RUNSC).is_file() {
        PathBuf::from(DEFAULT_RUNSC)
    } else {
        PathBuf::from("runsc")
    }
}

impl Config {
    /// Reads the config file and applies the environment on top.
    pub fn load(env: &Env) -> Result<Config, ConfigError> {
        let (path, must_exist) = match &env.config {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let (file, source) = match std::fs::read_to_string(&path) {
            Ok(text) => (Self::parse(&path, &text)?, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                (FileConfig::default(), None)
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: source.clone().unwrap_or_default(),
            message,
        };
        let prepare_timeout = match &file.prepare_timeout {
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| invalid(format!("prepare_timeout {t:?}: {e}")))?,
            None => DEFAULT_PREPARE_TIMEOUT,
        };
        let runsc = env
            .runsc
            .as_ref()
            .map(PathBuf::from)
            .or(file.runsc)
            .unwrap_or_else(default_runsc);
        if runsc.as_os_str().is_empty() {
            return Err(invalid("runsc is empty".into()));
        }
        let socket = match (&env.socket, &file.socket) {
            (Some(s), _) => socket_path(&s.to_string_lossy()),
            (None, Some(s)) => socket_path(s),
            (None, None) => PathBuf::from(DEFAULT_SOCKET),
        };
        let marker_dir = env
            .marker_dir
            .as_ref()
            .map(PathBuf::from)
            .or(file.marker_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MARKER_DIR));
        Ok(Config {
            runsc,
            socket,
            prepare_timeout,
            runsc_flags: file.runsc_flags,
            marker_dir,
            restore_mode: file.restore_mode,
            host_network: file.host_network,
            cross_namespace_restores: file.cross_namespace_restores,
            shim: file.shim,
            kubelet_root: file
                .kubelet_root
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBELET_ROOT)),
            source,
        })
    }

    fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            // toml's messages span lines (a source excerpt); keep the first.
            message: e
                .message()
                .lines()
                .next()
                .unwrap_or("parse error")
                .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> OsString {
        let p = dir.join("podsnap.toml");
        std::fs::write(&p, text).unwrap();
        p.into_os_string()
    }

    #[test]
    fn file_values_apply_and_env_overrides_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            r#"
runsc = "/opt/runsc"
socket = "unix:///run/x/podsnapd.sock"
prepare_timeout = "10m"
runsc_flags = ["--platform=systrap"]
marker_dir = "/run/x/restored"
restore_mode = "replace-create"
shim = "gvisor"
kubelet_root = "/srv/kubelet"
"#,
        );
        let env = Env {
            config: Some(file.clone()),
            ..Env::default()
        };
        let c = Config::load(&env).unwrap();
        assert_eq!(c.runsc, PathBuf::from("/opt/runsc"));
        assert_eq!(c.socket, PathBuf::from("/run/x/podsnapd.sock"));
        assert_eq!(c.prepare_timeout, Duration::from_secs(600));
        assert_eq!(c.runsc_flags, vec!["--platform=systrap".to_string()]);
        assert_eq!(c.marker_dir, PathBuf::from("/run/x/restored"));
        assert_eq!(c.restore_mode, RestoreMode::ReplaceCreate);
        assert_eq!(c.shim, Shim::Gvisor);
        assert_eq!(c.kubelet_root, PathBuf::from("/srv/kubelet"));
        assert_eq!(c.source.as_deref(), Some(Path::new(&file)));

        let env = Env {
            config: Some(file),
            runsc: Some("/env/runsc".into()),
            socket: Some("unix:///env/sock".into()),
            marker_dir: Some("/env/markers".into()),
        };
        let c = Config::load(&env).unwrap();
        assert_eq!(c.runsc, PathBuf::from("/env/runsc"));
        assert_eq!(c.socket, PathBuf::from("/env/sock"));
        assert_eq!(c.marker_dir, PathBuf::from("/env/markers"));
        // Keys the environment does not override stay.
        assert_eq!(c.prepare_timeout, Duration::from_secs(600));
    }

    #[test]
    fn env_socket_accepts_a_plain_path() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            config: Some(write(dir.path(), "")),
            socket: Some("/plain/sock".into()),
            ..Env::default()
        };
        assert_eq!(
            Config::load(&env).unwrap().socket,
            PathBuf::from("/plain/sock")
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            config: Some(write(dir.path(), "")),
            ..Env::default()
        };
        let c = Config::load(&env).unwrap();
        assert_eq!(c.runsc, default_runsc());
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.prepare_timeout, DEFAULT_PREPARE_TIMEOUT);
        assert_eq!(c.marker_dir, PathBuf::from(DEFAULT_MARKER_DIR));
        assert_eq!(c.restore_mode, RestoreMode::Auto);
        assert_eq!(c.shim, Shim::Auto);
        assert_eq!(c.kubelet_root, PathBuf::from("/var/lib/kubelet"));
        assert!(c.runsc_flags.is_empty());
    }

    #[test]
    fn named_config_file_must_exist() {
        let env = Env {
            config: Some("/nonexistent/podsnap.toml".into()),
            ..Env::default()
        };
        let e = Config::load(&env).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read config /nonexistent/podsnap.toml"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("sockt = \"/x\"\n", "unknown field `sockt`"),
            ("prepare_timeout = \"soon\"\n", "prepare_timeout \"soon\""),
            (
                "restore_mode = \"sometimes\"\n",
                "unknown variant `sometimes`",
            ),
            ("runsc = \"\"\n", "runsc is empty"),
        ] {
            let env = Env {
                config: Some(write(dir.path(), text)),
                ..Env::default()
            };
            let e = Config::load(&env).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn socket_path_strips_unix_scheme() {
        assert_eq!(socket_path("unix:///a/b"), PathBuf::from("/a/b"));
        assert_eq!(socket_path("/a/b"), PathBuf::from("/a/b"));
    }
}
