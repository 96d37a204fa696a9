//! What runsc reports: its version, the capabilities read from its help texts, and container
//! state (`runsc state` / `runsc list -format=json`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Parsed `runsc --version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunscVersion {
    /// The version word as printed (`0.0~20221219.0`, `release-20240513.0`).
    pub version: String,
    /// The release date `YYYYMMDD` found in the version, when there is one.
    pub release_date: Option<u32>,
    /// The OCI spec version line (`1.0.2-dev`), when printed.
    pub spec: Option<String>,
    /// The whole output, trimmed.
    pub raw: String,
}

impl RunscVersion {
    /// Parses the output of `runsc --version`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut version = None;
        let mut spec = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("runsc version") {
                version = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("spec:") {
                spec = Some(rest.trim().to_string());
            }
        }
        let version = version?;
        Some(RunscVersion {
            release_date: release_date(&version),
            version,
            spec,
            raw: text.trim().to_string(),
        })
    }
}

/// The first run of exactly 8 digits starting with `20` (a gVisor release date).
fn release_date(version: &str) -> Option<u32> {
    let bytes = version.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let run = &version[start..i];
            if run.len() == 8 && run.starts_with("20") {
                return run.parse().ok();
            }
        } else {
            i += 1;
        }
    }
    None
}

/// What the installed runsc can do, read from its help texts (never assumed from a version).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `checkpoint --compression` (and so images other than one flate `checkpoint.img`).
    pub compression: bool,
    /// `checkpoint --exclude-committed-zero-pages`.
    pub exclude_committed_zero_pages: bool,
    /// `checkpoint --direct` (O_DIRECT image writes).
    pub checkpoint_direct: bool,
    /// `checkpoint --leave-running`.
    pub leave_running: bool,
    /// `restore --background`.
    pub restore_background: bool,
    /// `restore --direct`.
    pub restore_direct: bool,
    /// The `cpu-features` subcommand exists.
    pub cpu_features_command: bool,
    /// The platform used when none is given (`runsc flags`: `(default "systrap")`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_platform: Option<String>,
    /// The `--overlay2` value used when none is given (`root:self`), when runsc prints one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_overlay: Option<String>,
}

/// The default a Go `flag` help text prints for flag `name` (`(default "systrap")` or
/// `(default root:self)` at the end of the flag's description, which may span several lines:
/// 2026's `--overlay2` explains its format over seven).
pub fn flag_default(help: &str, name: &str) -> Option<String> {
    let is_flag_line = |l: &str| l.trim_start().starts_with('-') && !l.starts_with("    ");
    let mut lines = help.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let flag = t.trim_start_matches('-').split([' ', '\t', '=']).next();
        if !is_flag_line(line) || flag != Some(name) {
            continue;
        }
        // The description: the flag line's rest and every line up to the next flag.
        let mut text = line.to_string();
        for l in lines.by_ref().take_while(|l| !is_flag_line(l)) {
            text.push(' ');
            text.push_str(l);
        }
        let (_, rest) = text.rsplit_once("(default ")?;
        let value = rest.split(')').next()?.trim().trim_matches('"');
        return (!value.is_empty()).then(|| value.to_string());
    }
    None
}

/// The flag names listed in a Go `flag` help text (`  -image-path string`).
pub fn help_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|line| {
            let t = line.trim_start();
            // Flag lines are indented and start with one or two dashes; descriptions are
            // indented by a tab and do not start with a dash.
            let indent = &line[..line.len() - t.len()];
            if indent.contains('\t') || !t.starts_with('-') {
                return None;
            }
            let name = t.trim_start_matches('-').split([' ', '\t', '=']).next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The subcommand names listed by `runsc help`.
pub fn help_subcommands(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| l.starts_with('\t'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

impl Capabilities {
    /// Derives capabilities from `runsc help`, `runsc checkpoint --help` and
    /// `runsc restore --help` texts.
    pub fn from_help(top: &str, checkpoint: &str, restore: &str) -> Self {
        Self::from_help_and_flags(top, checkpoint, restore, "")
    }

    /// As [`Capabilities::from_help`], plus the defaults `runsc flags` prints.
    pub fn from_help_and_flags(top: &str, checkpoint: &str, restore: &str, flags: &str) -> Self {
        let ck = help_flags(checkpoint);
        let rs = help_flags(restore);
        let subs = help_subcommands(top);
        let has = |v: &[String], n: &str| v.iter().any(|f| f == n);
        Capabilities {
            compression: has(&ck, "compression"),
            exclude_committed_zero_pages: has(&ck, "exclude-committed-zero-pages"),
            checkpoint_direct: has(&ck, "direct"),
            leave_running: has(&ck, "leave-running"),
            restore_background: has(&rs, "background"),
            restore_direct: has(&rs, "direct"),
            cpu_features_command: has(&subs, "cpu-features"),
            default_platform: flag_default(flags, "platform"),
            default_overlay: flag_default(flags, "overlay2"),
        }
    }
}

/// The OCI status of a runsc container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Stopped (exited, or checkpointed).
    Stopped,
    /// Something this client does not know.
    Other(String),
}

impl From<String> for Status {
    fn from(s: String) -> Self {
        match s.as_str() {
            "creating" => Status::Creating,
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            _ => Status::Other(s),
        }
    }
}

impl From<Status> for String {
    fn from(s: Status) -> Self {
        s.to_string()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Other(s) => s,
        })
    }
}

/// One container as `runsc state` / `runsc list -format=json` print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Sandbox process pid (`-1` or `0` when not running).
    #[serde(default)]
    pub pid: i32,
    /// Bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
    /// Creation time, when printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKPOINT_HELP_20221219: &str = "checkpoint [flags] <container id> - save current state of container.\n  -image-path string\n    \tdirectory path to saved container image\n  -leave-running\n    \trestart the container after checkpointing\n  -work-path string\n    \tignored\n";
    const RESTORE_HELP_20221219: &str = "restore [flags] <container id> - restore saved state of container.\n  -bundle string\n    \tpath to the root of the bundle directory, defaults to the current directory\n  -detach\n    \tdetach from the container's process\n  -image-path string\n    \tdirectory path to saved container image\n  -pid-file string\n    \tfilename that the container pid will be written to\n";
    const TOP_HELP_20221219: &str = "Subcommands:\n\tcheckpoint       checkpoint current state of container (experimental)\n\tcreate           create a secure container\n\trestore          restore a saved state of container (experimental)\n";
    // Shape of a current release (flag names from gVisor's runsc/cmd/checkpoint.go and restore.go).
    const CHECKPOINT_HELP_NEW: &str = "checkpoint [flags] <container id>\n  -compression value\n    \tcompression to use (default flate-best-speed)\n  -direct\n    \tuse O_DIRECT\n  -exclude-committed-zero-pages\n    \texclude zero pages\n  -image-path string\n    \tpath\n  -leave-running\n    \trestart\n";
    const RESTORE_HELP_NEW: &str = "restore\n  -background\n    \trestore in background\n  -detach\n    \tdetach\n  -direct\n    \tO_DIRECT\n";
    const TOP_HELP_NEW: &str = "Subcommands:\n\tcheckpoint       checkpoint\n\tcpu-features     list CPU features supported on current machine\n";

    #[test]
    fn version_20221219_is_parsed() {
        let v = RunscVersion::parse("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n").unwrap();
        assert_eq!(v.version, "0.0~20221219.0");
        assert_eq!(v.release_date, Some(20221219));
        assert_eq!(v.spec.as_deref(), Some("1.0.2-dev"));
    }

    #[test]
    fn release_version_is_parsed() {
        let v =
            RunscVersion::parse("runsc version release-20240513.0\nspec: 1.1.0-rc.1\n").unwrap();
        assert_eq!(v.release_date, Some(20240513));
        let v = RunscVersion::parse("runsc version 1234\n").unwrap();
        assert_eq!(v.release_date, None);
        assert!(RunscVersion::parse("garbage").is_none());
    }

    #[test]
    fn capabilities_of_20221219_are_minimal() {
        let c = Capabilities::from_help(
            TOP_HELP_20221219,
            CHECKPOINT_HELP_20221219,
            RESTORE_HELP_20221219,
        );
        assert_eq!(
            c,
            Capabilities {
                leave_running: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn capabilities_of_a_current_release_are_detected() {
        let c = Capabilities::from_help(TOP_HELP_NEW, CHECKPOINT_HELP_NEW, RESTORE_HELP_NEW);
        assert!(c.compression && c.exclude_committed_zero_pages && c.checkpoint_direct);
        assert!(c.leave_running && c.restore_background && c.restore_direct);
        assert!(c.cpu_features_command);
    }

    #[test]
    fn flag_descriptions_are_not_flags() {
        let flags = help_flags("  -a\n    \t-b is mentioned here\n  --c=1\n");
        assert_eq!(flags, vec!["a", "c"]);
    }

    #[test]
    fn state_json_is_parsed() {
        let s: ContainerState = serde_json::from_str(
            r#"{"ociVersion":"1.0.2-dev","id":"c1","status":"running","pid":4583,"bundle":"/tmp/b"}"#,
        )
        .unwrap();
        assert_eq!(s.status, Status::Running);
        assert_eq!(s.pid, 4583);
        let s: ContainerState = serde_json::from_str(r#"{"id":"c1","status":"weird"}"#).unwrap();
        assert_eq!(s.status, Status::Other("weird".into()));
    }
}
