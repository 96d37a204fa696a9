//! runsc's command line as the shim gives it: global flags, a subcommand, its arguments.
//!
//! runsc parses flags with Go's `flag` package: `-name` and `--name` are the same, a value is
//! `--name=value` or the next argument, a bool flag takes a value only after `=`, and `--`
//! ends the flags. Telling a value flag from a bool one needs the flag set, so the tables
//! below list runsc 20221219's global flags (`runsc flags`); a flag missing from them (a newer
//! release) is taken as a bool when the argument after it is a subcommand name and as a value
//! flag otherwise. Nothing here touches the file system: parsing is free, so calls that are
//! passed through cost nothing more than the exec.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// runsc 20221219's global bool flags.
const BOOL_FLAGS: &[&str] = &[
    "EXPERIMENTAL-afxdp",
    "TESTONLY-allow-packet-endpoint-write",
    "TESTONLY-unsafe-nonroot",
    "allow-flag-override",
    "alsologtostderr",
    "buffer-pooling",
    "cgroupfs",
    "cpu-num-from-quota",
    "debug",
    "enable-core-tags",
    "fsgofer-host-uds",
    "fuse",
    "gso",
    "ignore-cgroups",
    "lisafs",
    "log-packets",
    "net-raw",
    "oci-seccomp",
    "overlay",
    "profile",
    "rootless",
    "rx-checksum-offload",
    "software-gso",
    "strace",
    "strace-event",
    "systemd-cgroup",
    "tx-checksum-offload",
    "version",
    "vfs2",
    "help",
    "h",
];

/// runsc 20221219's global flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    "TESTONLY-test-name-env",
    "coverage-fd",
    "coverage-report",
    "dcache",
    "debug-command",
    "debug-log",
    "debug-log-fd",
    "debug-log-format",
    "fdlimit",
    "file-access",
    "file-access-mounts",
    "gvisor-gro",
    "host-fifo",
    "host-uds",
    "log",
    "log-fd",
    "log-format",
    "network",
    "num-network-channels",
    "overlay2",
    "panic-log",
    "panic-log-fd",
    "panic-signal",
    "pcap-log",
    "platform",
    "platform_device_path",
    "pod-init-config",
    "profile-block",
    "profile-cpu",
    "profile-heap",
    "profile-mutex",
    "qdisc",
    "ref-leak-mode",
    "root",
    "strace-log-size",
    "strace-syscalls",
    "trace",
    "traceback",
    "watchdog-action",
];

/// runsc's subcommands (20221219 plus later ones), used only to classify unknown flags.
const SUBCOMMANDS: &[&str] = &[
    "checkpoint",
    "create",
    "delete",
    "do",
    "events",
    "exec",
    "flags",
    "help",
    "kill",
    "list",
    "pause",
    "port-forward",
    "ps",
    "restore",
    "resume",
    "run",
    "spec",
    "start",
    "state",
    "wait",
    "debug",
    "read-control",
    "symbolize",
    "usage",
    "write-control",
    "install",
    "mitigate",
    "trace",
    "uninstall",
    "boot",
    "gofer",
    "umount",
    "cpu-features",
    "metric-server",
    "metric-metadata",
    "metric-export",
    "tar",
];

/// runsc's root when `--root` is not given.
pub const DEFAULT_ROOT: &str = "/var/run/runsc";

/// A flag argument split into name and inline value: `--name=value` -> ("name", Some(value)).
fn split_flag(arg: &OsStr) -> Option<(&str, Option<&OsStr>)> {
    let b = arg.as_bytes();
    let rest = b.strip_prefix(b"--").or_else(|| b.strip_prefix(b"-"))?;
    if rest.is_empty() || rest[0] == b'-' || rest[0] == b'=' {
        return None;
    }
    let (name, value) = match rest.iter().position(|&c| c == b'=') {
        Some(i) => (&rest[..i], Some(OsStr::from_bytes(&rest[i + 1..]))),
        None => (rest, None),
    };
    Some((std::str::from_utf8(name).ok()?, value))
}

/// The shim's runsc call, parsed just enough to route it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// argv[1..], exactly as given.
    pub args: Vec<OsString>,
    /// Index in `args` of the subcommand (None: no subcommand, e.g. `runsc --version`).
    pub subcommand: Option<usize>,
    /// `--root`, as given.
    pub root: Option<OsString>,
    /// `--log`, as given.
    pub log: Option<OsString>,
    /// `--log-format`, as given.
    pub log_format: Option<String>,
}

impl Invocation {
    /// Parses runsc's global flags up to the subcommand.
    pub fn parse(args: Vec<OsString>) -> Invocation {
        let mut inv = Invocation {
            args,
            subcommand: None,
            root: None,
            log: None,
            log_format: None,
        };
        let mut i = 0;
        while i < inv.args.len() {
            let arg = inv.args[i].as_os_str();
            if arg == "--" {
                if i + 1 < inv.args.len() {
                    inv.subcommand = Some(i + 1);
                }
                break;
            }
            let Some((name, inline)) = split_flag(arg) else {
                // The first non-flag argument is the subcommand (a lone "-" too, as in Go).
                inv.subcommand = Some(i);
                break;
            };
            let takes_value = if BOOL_FLAGS.contains(&name) {
                false
            } else if VALUE_FLAGS.contains(&name) {
                true
            } else {
                // Unknown flag: a bool if a subcommand follows it, else it takes a value.
                let next = inv.args.get(i + 1).and_then(|a| a.to_str());
                !next.is_some_and(|n| SUBCOMMANDS.contains(&n))
            };
            let value = match (inline, takes_value) {
                (Some(v), _) => Some(v.to_os_string()),
                (None, true) => {
                    i += 1;
                    inv.args.get(i).cloned()
                }
                (None, false) => None,
            };
            match name {
                "root" => inv.root = value,
                "log" => inv.log = value,
                "log-format" => inv.log_format = value.map(|v| v.to_string_lossy().into_owned()),
                _ => {}
            }
            i += 1;
        }
        inv
    }

    /// The subcommand's name, when it is valid UTF-8.
    pub fn subcommand_name(&self) -> Option<&str> {
        self.subcommand.and_then(|i| self.args[i].to_str())
    }

    /// The subcommand's own arguments.
    pub fn sub_args(&self) -> &[OsString] {
        match self.subcommand {
            Some(i) => &self.args[i + 1..],
            None => &[],
        }
    }

    /// The global flags (everything before the subcommand).
    pub fn globals(&self) -> &[OsString] {
        match self.subcommand {
            Some(i) => &self.args[..i],
            None => &self.args,
        }
    }

    /// `--root`, or runsc's default.
    pub fn root_or_default(&self) -> OsString {
        self.root
            .clone()
            .unwrap_or_else(|| OsString::from(DEFAULT_ROOT))
    }

    /// The container id of a subcommand that takes exactly one (`create`, `start`, `restore`):
    /// its last argument, unless that is a flag.
    pub fn single_id(&self) -> Option<&OsStr> {
        let last = self.sub_args().last()?;
        (split_flag(last).is_none() && last != "--").then_some(last.as_os_str())
    }

    /// The container ids of `delete [--force] ID...`: the arguments after its flags.
    pub fn delete_ids(&self) -> Vec<&OsStr> {
        let args = self.sub_args();
        let mut i = 0;
        while i < args.len() {
            if args[i] == "--" {
                i += 1;
                break;
            }
            match split_flag(&args[i]) {
                Some(_) => i += 1,
                None => break,
            }
        }
        args[i..].iter().map(|a| a.as_os_str()).collect()
    }

    /// `create`'s `--bundle` (or `-bundle`, `--bundle=DIR`, `-b`), if given.
    pub fn create_bundle(&self) -> Option<OsString> {
        self.create_flag(&["bundle", "b"])
    }

    /// `create`'s `--pid-file`, if given.
    pub fn create_pid_file(&self) -> Option<OsString> {
        self.create_flag(&["pid-file"])
    }

    /// The value of one of `create`'s flags (named by any of `names`), if given.
    fn create_flag(&self, names: &[&str]) -> Option<OsString> {
        let args = self.sub_args();
        let mut i = 0;
        let mut found = None;
        while i < args.len() {
            let Some((name, inline)) = split_flag(&args[i]) else {
                break;
            };
            // create's flags all take a value (bundle, console-socket, pid-file, user-log).
            let value = match inline {
                Some(v) => Some(v.to_os_string()),
                None => {
                    i += 1;
                    args.get(i).cloned()
                }
            };
            if names.contains(&name) {
                found = value;
            }
            i += 1;
        }
        found
    }

    /// Whether a global flag named `name` is among these arguments' global flags.
    pub fn has_global(&self, name: &str) -> bool {
        self.globals()
            .iter()
            .filter_map(|a| split_flag(a))
            .any(|(n, _)| n == name)
    }

    /// The argv that turns this `create` into
    /// `restore --image-path DIR --detach <create's arguments>`, global flags unchanged.
    pub fn create_as_restore(&self, image_dir: &OsStr) -> Vec<OsString> {
        let sub = self
            .subcommand
            .expect("create_as_restore on a create invocation");
        let mut out = Vec::with_capacity(self.args.len() + 3);
        out.extend_from_slice(&self.args[..sub]);
        out.push("restore".into());
        out.push("--image-path".into());
        out.push(image_dir.to_os_string());
        out.push("--detach".into());
        out.extend_from_slice(&self.args[sub + 1..]);
        out
    }

    /// The argv of `restore --image-path DIR --detach --bundle BUNDLE ID` with this call's
    /// global flags: what `start` becomes when runsc restores into a created container.
    pub fn start_as_restore(&self, image_dir: &OsStr, bundle: &OsStr, id: &OsStr) -> Vec<OsString> {
        let mut out: Vec<OsString> = self.globals().to_vec();
        out.extend([
            OsString::from("restore"),
            "--image-path".into(),
            image_dir.to_os_string(),
            "--detach".into(),
            "--bundle".into(),
            bundle.to_os_string(),
            id.to_os_string(),
        ]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(s: &str) -> Invocation {
        Invocation::parse(s.split_whitespace().map(OsString::from).collect())
    }

    /// What the parse found, in one line: the subcommand (`-` for none), then `root=`,
    /// `log=` and `log-format=` for those that are set.
    fn summary(i: &Invocation) -> String {
        let mut out = i.subcommand_name().unwrap_or("-").to_string();
        let fields = [
            ("root", i.root.as_deref().and_then(|r| r.to_str())),
            ("log", i.log.as_deref().and_then(|r| r.to_str())),
            ("log-format", i.log_format.as_deref()),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                out += &format!(" {name}={v}");
            }
        }
        out
    }

    #[test]
    fn finds_the_subcommand_behind_every_flag_form() {
        let cases: &[(&str, &str)] = &[
            ("create c1", "create"),
            (
                "--root /r --log /l.json --log-format json create --bundle /b c1",
                "create root=/r log=/l.json log-format=json",
            ),
            ("--root=/r -log=/l start c1", "start root=/r log=/l"),
            ("-root /r --systemd-cgroup create c1", "create root=/r"),
            ("--systemd-cgroup=true --debug start c1", "start"),
            (
                "--network=none --root /r delete --force c1",
                "delete root=/r",
            ),
            ("--network none --platform ptrace state c1", "state"),
            ("--debug-log /tmp/x/ --debug create c1", "create"),
            // A flag runsc 20221219 does not know: bool when a subcommand follows.
            ("--some-new-bool create c1", "create"),
            ("--some-new-value v1 --root /r kill c1 9", "kill root=/r"),
            ("--root /r -- create c1", "create root=/r"),
            ("--version", "-"),
            ("", "-"),
            // A value that looks like a subcommand stays a value.
            ("--root create start c1", "start root=create"),
        ];
        for (argv, want) in cases {
            assert_eq!(summary(&inv(argv)), *want, "{argv}");
        }
    }

    #[test]
    fn reads_create_bundle_and_id() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                "create --bundle /b --pid-file /p c1",
                Some("/b"),
                Some("c1"),
            ),
            ("create --bundle=/b c1", Some("/b"), Some("c1")),
            (
                "create -bundle /b --console-socket /s c1",
                Some("/b"),
                Some("c1"),
            ),
            ("create --pid-file /p c1", None, Some("c1")),
            ("create c1", None, Some("c1")),
            ("create", None, None),
            ("create --bundle", None, None),
        ];
        for (argv, bundle, id) in cases {
            let i = inv(&format!("--root /r {argv}"));
            assert_eq!(
                i.create_bundle().as_deref().and_then(|b| b.to_str()),
                *bundle,
                "{argv}"
            );
            assert_eq!(i.single_id().and_then(|b| b.to_str()), *id, "{argv}");
        }
        let i = inv("--root /r --network=none create --bundle /b --pid-file=/b/init.pid c1");
        assert_eq!(
            i.create_pid_file().as_deref(),
            Some(OsStr::new("/b/init.pid"))
        );
        assert!(i.has_global("network"));
        assert!(!i.has_global("bundle"));
    }

    #[test]
    fn reads_delete_ids() {
        let cases: &[(&str, &[&str])] = &[
            ("delete c1", &["c1"]),
            ("delete --force c1", &["c1"]),
            ("delete -force=true c1 c2", &["c1", "c2"]),
            ("delete -- -odd", &["-odd"]),
            ("delete", &[]),
        ];
        for (argv, ids) in cases {
            let i = inv(argv);
            let got: Vec<&str> = i.delete_ids().iter().map(|s| s.to_str().unwrap()).collect();
            assert_eq!(got, *ids, "{argv}");
        }
    }

    #[test]
    fn create_becomes_restore_with_everything_else_unchanged() {
        let cases: &[(&str, &str)] = &[
            (
                "--root /r --log /b/log.json --log-format json create --bundle /b --pid-file /b/init.pid c1",
                "--root /r --log /b/log.json --log-format json restore --image-path /img --detach --bundle /b --pid-file /b/init.pid c1",
            ),
            (
                "--root=/r --systemd-cgroup create --bundle=/b --console-socket /s --pid-file /p c1",
                "--root=/r --systemd-cgroup restore --image-path /img --detach --bundle=/b --console-socket /s --pid-file /p c1",
            ),
            ("create c1", "restore --image-path /img --detach c1"),
        ];
        for (argv, want) in cases {
            let got = inv(argv).create_as_restore(OsStr::new("/img"));
            let want: Vec<OsString> = want.split_whitespace().map(OsString::from).collect();
            assert_eq!(got, want, "{argv}");
        }
    }

    #[test]
    fn start_becomes_restore_into_the_created_container() {
        let got = inv("--root /r --log /l start c1").start_as_restore(
            OsStr::new("/img"),
            OsStr::new("/b"),
            OsStr::new("c1"),
        );
        let want: Vec<OsString> =
            "--root /r --log /l restore --image-path /img --detach --bundle /b c1"
                .split_whitespace()
                .map(OsString::from)
                .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn non_utf8_arguments_survive_parsing() {
        let weird = OsString::from(OsStr::from_bytes(b"/r\xff"));
        let i = Invocation::parse(vec![
            "--root".into(),
            weird.clone(),
            "start".into(),
            "c".into(),
        ]);
        assert_eq!(i.root, Some(weird));
        assert_eq!(i.subcommand_name(), Some("start"));
    }
}
