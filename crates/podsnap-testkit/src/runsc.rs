//! Real runsc sandboxes for tests: an OCI bundle with a busybox-static rootfs running a
//! counter, started detached under a private `--root`, and readers of its `Count: N` log.
//!
//! Facts this relies on (runsc 20221219, ptrace platform): a sandbox outside a network
//! namespace needs `--network=none`; `runsc run --detach` hands its stdout/stderr to the
//! sandbox, so they must be a file, not a pipe; a restored sandbox keeps writing at the file
//! offset it had when checkpointed, so a fresh log may start with NUL padding (the readers
//! skip it); container ids that are prefixes of each other are ambiguous to runsc, so
//! [`unique_id`] makes ids that are not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The counter the test sandboxes run.
pub const COUNTER_SCRIPT: &str = r#"i=0; while :; do echo "Count: $i"; i=$((i+1)); sleep 1; done"#;

/// Path of the static busybox used as the rootfs.
pub const BUSYBOX: &str = "/bin/busybox";

/// A container id unique in this process and not a prefix of any other id it makes
/// (`<prefix>-<pid>-<n>x`: the trailing `x` ends every id, so none is a prefix of another).
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}x",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Makes `dir` a busybox rootfs: `/bin/busybox` plus links for the applets the tests use.
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(BUSYBOX, bin.join("busybox"))?;
    for applet in ["sh", "sleep", "echo", "cat", "ls", "touch", "dd"] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    Ok(())
}

/// An OCI spec (config.json) running `args`: no terminal, read-only root, the minimal mounts,
/// pid/ipc/uts/mount/network namespaces (fine with `--network=none`).
pub fn oci_spec(args: &[&str]) -> serde_json::Value {
    let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    serde_json::json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "podsnap-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ]
        }
    })
}

/// A bundle directory (`config.json` + `rootfs/`) in a temp dir that lives as long as this.
pub struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    /// A bundle running the counter.
    pub fn counter() -> std::io::Result<Bundle> {
        Bundle::with_args(&["/bin/sh", "-c", COUNTER_SCRIPT])
    }

    /// A bundle running `args`.
    pub fn with_args(args: &[&str]) -> std::io::Result<Bundle> {
        let dir = tempfile::Builder::new()
            .prefix("podsnap-bundle")
            .tempdir()?;
        busybox_rootfs(&dir.path().join("rootfs"))?;
        Bundle::write_spec(dir.path(), &oci_spec(args))?;
        Ok(Bundle { dir })
    }

    /// A counter bundle whose spec carries `annotations` (the CRI annotations
    /// `io.kubernetes.cri.container-type` = `sandbox`/`container` and
    /// `io.kubernetes.cri.sandbox-id` make runsc put several containers in one sandbox).
    pub fn counter_with_annotations(annotations: &[(&str, &str)]) -> std::io::Result<Bundle> {
        let b = Bundle::counter()?;
        let mut spec = oci_spec(&["/bin/sh", "-c", COUNTER_SCRIPT]);
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        spec["annotations"] = serde_json::Value::Object(map);
        Bundle::write_spec(b.path(), &spec)?;
        Ok(b)
    }

    /// Writes `spec` as `config.json` in `dir`.
    pub fn write_spec(dir: &Path, spec: &serde_json::Value) -> std::io::Result<()> {
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(spec).expect("json values serialise"),
        )
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The rootfs directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}

/// Where bookworm's runsc 20221219 is kept beside the system runsc (see `scripts/`), unless
/// `PODSNAP_RUNSC_20221219` names another path.
pub const RUNSC_20221219_DEFAULT: &str = "/opt/podsnap/runsc-20221219/runsc";

/// Where current gVisor's runsc (built from the Go module proxy by `scripts/gvisor/build.sh`)
/// is installed, unless `PODSNAP_RUNSC_2026` names another path.
pub const RUNSC_2026_DEFAULT: &str = "/opt/podsnap/gvisor/runsc";

/// The runsc releases the tests run on: the system `runsc` (Debian trixie's 20240729 where the
/// set-up script installed it), bookworm's 20221219 and current gVisor's 2026 build, the last
/// two kept at fixed paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The `runsc` on PATH.
    System,
    /// runsc 20221219 (`PODSNAP_RUNSC_20221219`, or [`RUNSC_20221219_DEFAULT`]).
    R20221219,
    /// runsc built from 2026's gVisor (`PODSNAP_RUNSC_2026`, or [`RUNSC_2026_DEFAULT`]).
    R2026,
}

impl Release {
    /// The binary of this release.
    pub fn binary(self) -> PathBuf {
        match self {
            Release::System => PathBuf::from("runsc"),
            Release::R20221219 => std::env::var_os("PODSNAP_RUNSC_20221219")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(RUNSC_20221219_DEFAULT)),
            Release::R2026 => std::env::var_os("PODSNAP_RUNSC_2026")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(RUNSC_2026_DEFAULT)),
        }
    }

    /// The environment variable that names this release's binary (`None` for the system one).
    pub fn env_var(self) -> Option<&'static str> {
        match self {
            Release::System => None,
            Release::R20221219 => Some("PODSNAP_RUNSC_20221219"),
            Release::R2026 => Some("PODSNAP_RUNSC_2026"),
        }
    }

    /// The binary of this release when it runs; `None` when it is not installed, which fails
    /// the test when privileged tests are required (`make test` as root) and skips otherwise.
    pub fn required(self) -> Option<PathBuf> {
        if self.available() {
            return Some(self.binary());
        }
        let msg = format!(
            "runsc {self:?} not found at {} (set {})",
            self.binary().display(),
            self.env_var().unwrap_or("PATH")
        );
        if crate::privileged_required() {
            panic!("{msg} (PODSNAP_REQUIRE_PRIVILEGED=1)");
        }
        eprintln!("{msg}: skipped");
        None
    }

    /// The release date in `runsc --version` (`None` when it cannot be run or has none).
    pub fn release_date(self) -> Option<u32> {
        let out = Command::new(self.binary()).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let word = text
            .lines()
            .find_map(|l| l.strip_prefix("runsc version "))?
            .trim()
            .to_string();
        word.split(|c: char| !c.is_ascii_digit())
            .find(|d| d.len() == 8 && d.starts_with("20"))
            .and_then(|d| d.parse().ok())
    }

    /// True when the binary runs.
    pub fn available(self) -> bool {
        self.release_date().is_some()
    }

    /// True when this release has the limits of 20221219 (one flate image, no pods, no
    /// reliable `--leave-running`).
    pub fn is_limited(self) -> bool {
        self.release_date().is_some_and(|d| d <= 20221219)
    }

    /// The releases a test that differs by release runs on: the system runsc and, when they
    /// are installed (they must be when privileged tests are required), 20221219 and the 2026
    /// build; a release whose date equals the system runsc's is not run twice.
    pub fn all() -> Vec<Release> {
        let mut out = vec![Release::System];
        let system = Release::System.release_date();
        for r in [Release::R20221219, Release::R2026] {
            if r.required().is_some() && r.release_date() != system {
                out.push(r);
            }
        }
        out
    }
}

/// A runsc invocation with a private root and the flags the tests use.
#[derive(Clone, Debug)]
pub struct RunscCmd {
    /// The runsc binary.
    pub binary: PathBuf,
    /// `--root`.
    pub root: PathBuf,
    /// Other global flags (`--network=none` by default).
    pub flags: Vec<String>,
}

impl RunscCmd {
    /// `runsc --root=ROOT --network=none`.
    pub fn new(root: &Path) -> RunscCmd {
        RunscCmd::of(Release::System, root)
    }

    /// Like [`RunscCmd::new`] with the binary of `release`.
    pub fn of(release: Release, root: &Path) -> RunscCmd {
        RunscCmd {
            binary: release.binary(),
            root: root.to_path_buf(),
            flags: vec!["--network=none".to_string()],
        }
    }

    /// A `Command` for `runsc <global flags> args...`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg(format!("--root={}", self.root.display()))
            .args(&self.flags)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs a subcommand, returning stdout; an error carries status and stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| format!("cannot run runsc: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "runsc {args:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Force-deletes a container, ignoring errors.
    pub fn force_delete(&self, id: &str) {
        let _ = self
            .command(&["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A detached counter sandbox; force-deleted on drop.
pub struct CounterSandbox {
    /// Container id.
    pub id: String,
    /// The runsc invocation (root and flags).
    pub runsc: RunscCmd,
    /// Its bundle.
    pub bundle: Bundle,
    /// Where its output goes.
    pub log: PathBuf,
}

impl CounterSandbox {
    /// Starts a counter sandbox `id` under `root` with `runsc --network=none` plus
    /// `extra_flags`, output to `log`; waits until it printed its first count.
    pub fn start(
        root: &Path,
        id: &str,
        log: &Path,
        extra_flags: &[&str],
    ) -> Result<CounterSandbox, String> {
        let bundle = Bundle::counter().map_err(|e| format!("making bundle: {e}"))?;
        CounterSandbox::start_bundle(root, id, log, extra_flags, bundle)
    }

    /// Like [`CounterSandbox::start`] with a bundle of the caller's (whose process prints
    /// `Count: N` lines, or at least something before the wait ends).
    pub fn start_bundle(
        root: &Path,
        id: &str,
        log: &Path,
        extra_flags: &[&str],
        bundle: Bundle,
    ) -> Result<CounterSandbox, String> {
        CounterSandbox::start_on(Release::System, root, id, log, extra_flags, bundle)
    }

    /// Like [`CounterSandbox::start_bundle`] with the runsc of `release`.
    pub fn start_on(
        release: Release,
        root: &Path,
        id: &str,
        log: &Path,
        extra_flags: &[&str],
        bundle: Bundle,
    ) -> Result<CounterSandbox, String> {
        let mut runsc = RunscCmd::of(release, root);
        runsc
            .flags
            .extend(extra_flags.iter().map(|s| s.to_string()));
        std::fs::create_dir_all(root).map_err(|e| format!("creating root: {e}"))?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening log: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let bundle_arg = format!("--bundle={}", bundle.path().display());
        let status = runsc
            .command(&["run", "--detach", &bundle_arg, id])
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| format!("cannot run runsc: {e}"))?;
        let sb = CounterSandbox {
            id: id.to_string(),
            runsc,
            bundle,
            log: log.to_path_buf(),
        };
        if !status.success() {
            return Err(format!(
                "runsc run failed with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        wait_for_count(log, 0, Duration::from_secs(20))?;
        Ok(sb)
    }
}

impl Drop for CounterSandbox {
    fn drop(&mut self) {
        self.runsc.force_delete(&self.id);
    }
}

/// All `Count: N` values in a log, in order (NUL padding and garbage lines skipped).
pub fn counts(log: &Path) -> Vec<u64> {
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .split(['\n', '\0'])
        .filter_map(|l| l.trim().strip_prefix("Count: "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The last `Count: N` in a log.
pub fn last_count(log: &Path) -> Option<u64> {
    counts(log).last().copied()
}

/// The first `Count: N` in a log.
pub fn first_count(log: &Path) -> Option<u64> {
    counts(log).first().copied()
}

/// Waits until the log's last count is at least `min`; returns it.
pub fn wait_for_count(log: &Path, min: u64, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = last_count(log).filter(|n| *n >= min) {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no `Count: {min}` or later in {} after {timeout:?}; log: {:?}",
                log.display(),
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).replace('\0', "")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_skip_nul_padding_and_noise() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(
            &log,
            b"\0\0\0\0Count: 11\nCount: 12\nnoise\nCount: x\nCount: 13\n",
        )
        .unwrap();
        assert_eq!(counts(&log), vec![11, 12, 13]);
        assert_eq!(first_count(&log), Some(11));
        assert_eq!(last_count(&log), Some(13));
        assert_eq!(
            wait_for_count(&log, 12, Duration::from_millis(10)).unwrap(),
            13
        );
        assert!(wait_for_count(&log, 99, Duration::from_millis(10)).is_err());
    }

    #[test]
    fn unique_ids_are_not_prefixes_of_each_other() {
        let ids: Vec<String> = (0..20).map(|_| unique_id("c")).collect();
        for a in &ids {
            for b in &ids {
                assert!(
                    a == b || !b.starts_with(a.as_str()),
                    "{a} is a prefix of {b}"
                );
            }
        }
    }

    #[test]
    fn spec_has_no_terminal_and_runs_the_args() {
        let s = oci_spec(&["/bin/sh", "-c", "true"]);
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["process"]["args"][2], "true");
    }
}
