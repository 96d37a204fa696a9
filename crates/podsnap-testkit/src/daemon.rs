//! A podsnapd process for tests: the flags every test passes, its output in a log file,
//! readiness by connecting to its socket, and a bounded stop when it is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Builds a podsnapd command line. Defaults, all under `dir`: socket `NAME.sock`, runsc root
/// `NAME-root` (created), state dir `NAME-state`, log `NAME.log`, store `file://DIR/store`,
/// and `--runsc-flag=--network=none`, `--node-name=NAME`, `RUST_LOG=info`.
#[derive(Debug, Clone)]
pub struct PodsnapdCmd {
    bin: PathBuf,
    name: String,
    sock: PathBuf,
    root: PathBuf,
    state: PathBuf,
    log: PathBuf,
    store: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
}

impl PodsnapdCmd {
    pub fn new(bin: impl Into<PathBuf>, dir: &Path, name: &str) -> PodsnapdCmd {
        PodsnapdCmd {
            bin: bin.into(),
            name: name.to_string(),
            sock: dir.join(format!("{name}.sock")),
            root: dir.join(format!("{name}-root")),
            state: dir.join(format!("{name}-state")),
            log: dir.join(format!("{name}.log")),
            store: format!("file://{}", dir.join("store").display()),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
        }
    }

    pub fn store(mut self, url: &str) -> Self {
        self.store = url.to_string();
        self
    }

    pub fn sock(mut self, p: impl Into<PathBuf>) -> Self {
        self.sock = p.into();
        self
    }

    pub fn runsc_root(mut self, p: impl Into<PathBuf>) -> Self {
        self.root = p.into();
        self
    }

    pub fn state_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.state = p.into();
        self
    }

    pub fn log(mut self, p: impl Into<PathBuf>) -> Self {
        self.log = p.into();
        self
    }

    /// One more podsnapd argument, e.g. `--metrics-listen=127.0.0.1:9090`.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Does not pass this variable of the test's environment on.
    pub fn env_remove(mut self, k: impl Into<String>) -> Self {
        self.env_remove.push(k.into());
        self
    }

    /// Starts podsnapd and waits (up to 30 s) until its socket accepts connections; panics
    /// with the daemon's log otherwise.
    pub fn spawn(self) -> Podsnapd {
        std::fs::create_dir_all(&self.root).expect("creating the runsc root");
        let out = std::fs::File::create(&self.log).expect("creating the daemon log");
        let mut cmd = Command::new(&self.bin);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        let child = cmd
            .arg(format!("--listen=unix://{}", self.sock.display()))
            .arg(format!("--store={}", self.store))
            .arg(format!("--runsc-root={}", self.root.display()))
            .arg(format!("--state-dir={}", self.state.display()))
            .arg("--runsc-flag=--network=none")
            .arg(format!("--node-name={}", self.name))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let mut d = Podsnapd {
            child,
            sock: self.sock,
            root: self.root,
            state: self.state,
            log: self.log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&d.sock).is_err() {
            if Instant::now() > deadline || matches!(d.child.try_wait(), Ok(Some(_))) {
                let log = d.log_text();
                d.kill9();
                panic!("podsnapd did not listen on {}: {log}", d.sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

/// A running podsnapd; stopped like a service manager would (SIGTERM, then SIGKILL after
/// 10 s) when dropped, also when a test panics.
#[derive(Debug)]
pub struct Podsnapd {
    pub child: Child,
    pub sock: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Podsnapd {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `within` for the exit status (`None`: still running).
    pub fn sigterm(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        // Our own child, not yet reaped: the pid is still its.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 10 s to exit on its own, then SIGKILL. Always reaps the process.
    pub fn terminate(&mut self) {
        if self.sigterm(Duration::from_secs(10)).is_none() {
            self.kill9();
        }
    }
}

impl Drop for Podsnapd {
    fn drop(&mut self) {
        self.terminate();
    }
}
