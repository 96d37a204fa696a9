//! A private containerd 1.6 for tests, and counter containers run through it with runsc.
//!
//! Found by experiment with Debian's containerd 1.6.20, its runc v2 shim and runsc 20221219:
//!
//! - containerd runs with a config of its own (root, state, gRPC/ttrpc/debug sockets in a temp
//!   dir) and the CRI plugin disabled (it needs CNI and more); the snapshotters that cannot load
//!   (aufs, btrfs, zfs, devmapper) only log warnings.
//! - `ctr run` needs an image unless `--rootfs DIR` is given; with it, the busybox rootfs works
//!   directly. There is no `PATH` in that spec, so the command must be absolute (`/bin/sh`).
//! - `--runc-binary` becomes the runc options' `BinaryName`. runsc needs `--network=none` here
//!   (ctr's spec has a network namespace without a path, and runsc refuses to set up a network
//!   from the root namespace), and the shim passes no extra flags, so the binary is a wrapper
//!   script `exec runsc --network=none "$@"` (its name contains `runsc`).
//! - `--runc-root DIR` becomes the options' `Root`; the shim then keeps runsc state in
//!   `DIR/<namespace>`. Without it the shim uses `/run/containerd/runc/<namespace>` even for a
//!   private containerd, which would mix with the host's containers: tests always pass it.
//! - `--log-uri file:///PATH` sends the container's stdout/stderr to a file.
//! - Removing a task whose sandbox runsc already stopped (checkpointed) prints an error from
//!   the shim's kill but still removes it; `ctr task rm -f` then `ctr container rm` cleans up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A containerd daemon with private dirs; killed (with its containers removed) on drop.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    namespaces: std::sync::Mutex<Vec<String>>,
}

impl Containerd {
    /// Starts containerd with a private config and waits for its socket to answer.
    pub fn start() -> Result<Containerd, String> {
        Containerd::start_with_env(&[])
    }

    /// Like [`Containerd::start`], with `env` added to containerd's environment. containerd
    /// passes its environment to the shims it starts, and a shim to its runc binary, so this
    /// is how a test configures a runsc wrapper (`PODSNAP_CONFIG`, `PODSNAP_SOCKET`) without
    /// touching its own process's environment.
    pub fn start_with_env(env: &[(&str, &std::ffi::OsStr)]) -> Result<Containerd, String> {
        Containerd::start_with(env, None)
    }

    /// Like [`Containerd::start_with_env`], with the CRI plugin enabled as `cri` says (see
    /// [`crate::cri`]).
    pub fn start_with(
        env: &[(&str, &std::ffi::OsStr)],
        cri: Option<&crate::cri::CriSettings>,
    ) -> Result<Containerd, String> {
        let dir = tempfile::Builder::new()
            .prefix("podsnap-containerd")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path();
        let plugins = match cri {
            None => "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string(),
            Some(c) => c.config_section(d, &d.join("runc-root")),
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{plugins}
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{debug}"
  level = "info"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            debug = d.join("debug.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(d.join("runc-root")).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(d.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        let c = Containerd {
            dir,
            child: Some(child),
            namespaces: std::sync::Mutex::new(Vec::new()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.socket().exists() && c.ctr("default", &["version"]).is_ok() {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "containerd did not answer on {} within 30s; log: {}",
                    c.socket().display(),
                    std::fs::read_to_string(c.dir.path().join("containerd.log"))
                        .unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's state dir (bundles are `<state>/io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The runc root passed to the shim (`--runc-root`); runsc state is in `<it>/<namespace>`.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc-root")
    }

    /// The runsc root the shim uses for `namespace`.
    pub fn runsc_root(&self, namespace: &str) -> PathBuf {
        self.runc_root().join(namespace)
    }

    /// The private temp dir (for wrappers, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ctr -a SOCKET -n NS args...`; stdout, or an error with stderr.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {args:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Writes an executable wrapper `runsc-wrapper` that runs `runsc --network=none` plus
    /// `flags` with the shim's arguments; returns its path.
    pub fn runsc_wrapper(&self, flags: &[&str]) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join("runsc-wrapper");
        let script = format!(
            "#!/bin/sh\nexec runsc --network=none {} \"$@\"\n",
            flags.join(" ")
        );
        std::fs::write(&p, script).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Runs a detached container `id` in `namespace` with `ctr run --rootfs ROOTFS`, runtime
    /// `io.containerd.runc.v2`, runc binary `runc_binary` (a runsc wrapper, or `None` for the
    /// shim's default runc), the private runc root, and stdout/stderr to `log`.
    pub fn run_container(
        &self,
        namespace: &str,
        id: &str,
        rootfs: &Path,
        runc_binary: Option<&Path>,
        log: &Path,
        args: &[&str],
    ) -> Result<(), String> {
        self.remember(namespace);
        let log_uri = format!("file://{}", log.display());
        let runc_root = self.runc_root().display().to_string();
        let rootfs = rootfs.display().to_string();
        let mut a: Vec<&str> = vec![
            "run",
            "-d",
            "--rootfs",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-root",
            &runc_root,
            "--log-uri",
            &log_uri,
        ];
        let binary;
        if let Some(b) = runc_binary {
            binary = b.display().to_string();
            a.extend(["--runc-binary", &binary]);
        }
        a.push(&rootfs);
        a.push(id);
        a.extend(args);
        self.ctr(namespace, &a).map(drop)
    }

    /// Runs the counter (`/bin/sh -c COUNTER`) under runsc through the shim.
    pub fn run_counter(
        &self,
        namespace: &str,
        id: &str,
        rootfs: &Path,
        log: &Path,
    ) -> Result<(), String> {
        let wrapper = self.runsc_wrapper(&[])?;
        self.run_container(
            namespace,
            id,
            rootfs,
            Some(&wrapper),
            log,
            &["/bin/sh", "-c", crate::runsc::COUNTER_SCRIPT],
        )
    }

    /// Removes a container and its task, ignoring errors.
    pub fn remove(&self, namespace: &str, id: &str) {
        let _ = self.ctr(namespace, &["task", "kill", "-s", "KILL", id]);
        let _ = self.ctr(namespace, &["task", "rm", "-f", id]);
        let _ = self.ctr(namespace, &["container", "rm", id]);
        // A task whose runsc sandbox is already gone may need a second pass.
        let _ = self.ctr(namespace, &["task", "rm", "-f", id]);
        let _ = self.ctr(namespace, &["container", "rm", id]);
    }

    fn remember(&self, namespace: &str) {
        let mut ns = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        if !ns.iter().any(|n| n == namespace) {
            ns.push(namespace.to_string());
        }
    }

    fn cleanup(&mut self) {
        let namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ns in namespaces {
            let ids = self
                .ctr(&ns, &["container", "ls", "-q"])
                .unwrap_or_default();
            for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
                self.remove(&ns, id);
            }
            // Whatever runsc state the shims left behind.
            let root = self.runsc_root(&ns);
            if let Ok(entries) = std::fs::read_dir(&root) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some((cid, _)) = name.split_once("_sandbox:") {
                        let _ = Command::new("runsc")
                            .arg(format!("--root={}", root.display()))
                            .args(["delete", "--force", cid])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims of this containerd that outlived it (they name its socket on their command
        // line, which lives in our private temp dir).
        let socket = self.socket().display().to_string();
        for pid in pids_with_arg(&socket) {
            signal(pid, Signal::SIGKILL);
        }
    }
}

fn signal(pid: i32, sig: Signal) {
    if pid > 1 {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// Pids of processes one of whose arguments is exactly `arg`.
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}
