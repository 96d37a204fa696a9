//! A typed client for the `runsc` CLI, in the manner of containerd's Rust `runc` crate.
//!
//! [`RunscBuilder`] collects the global flags (binary, `--root`, `--platform`, `--network`,
//! debug logging, any extra flag such as `--overlay2=root:memory`) and a default timeout;
//! [`Runsc`] runs one subcommand per method, each with its own options struct. Every call runs
//! runsc in its own process group, so a call that exceeds its timeout is killed with everything
//! it started in that group and reported as [`Error::CommandTimeout`]; a failing call becomes
//! [`Error::CommandFailed`] with the exit status and the tail of stderr.
//!
//! Detached operations (`run`, `restore --detach`) hand their stdout/stderr to the sandbox, so
//! they are never piped back to us (reading a pipe the sandbox holds would never end): their
//! output goes to a log file, and on failure the tail of what runsc wrote there becomes the
//! error text.
//!
//! Operations that must survive a daemon crash (checkpoint, restore) can run as a
//! [`job::DurableJob`]: set `job_dir` in their options.

pub mod error;
pub mod job;
pub mod types;

pub use error::{Error, Exit};
pub use job::{DurableJob, JobOutcome, JobStatus};
pub use types::{Capabilities, ContainerState, RunscVersion, Status};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default runsc binary.
pub const DEFAULT_BINARY: &str = "runsc";

/// Builder of a [`Runsc`] client: the global flags shared by every call.
#[derive(Clone, Debug, Default)]
pub struct RunscBuilder {
    binary: Option<PathBuf>,
    root: Option<PathBuf>,
    platform: Option<String>,
    network: Option<String>,
    debug: bool,
    debug_log: Option<PathBuf>,
    extra: Vec<String>,
    timeout: Option<Duration>,
}

impl RunscBuilder {
    /// A builder with runsc's defaults (`runsc` from `PATH`, no global flags, no timeout).
    pub fn new() -> Self {
        Self::default()
    }

    /// The runsc binary to run.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// `--root`: where runsc keeps container state.
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// `--platform` (`ptrace`, `kvm`, `systrap`).
    pub fn platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }

    /// `--network` (`sandbox`, `host`, `none`).
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// `--debug` and `--debug-log=PATH` (a file, or a directory ending in `/`).
    pub fn debug_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.debug = true;
        self.debug_log = Some(path.into());
        self
    }

    /// One more global flag, passed verbatim before the subcommand (`--overlay2=root:memory`).
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.extra.push(flag.into());
        self
    }

    /// More global flags.
    pub fn flags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, flags: I) -> Self {
        self.extra.extend(flags.into_iter().map(Into::into));
        self
    }

    /// Default timeout of every call (per-call options may override it).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The client.
    pub fn build(self) -> Runsc {
        Runsc {
            binary: self.binary.unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY)),
            root: self.root,
            platform: self.platform,
            network: self.network,
            debug: self.debug,
            debug_log: self.debug_log,
            extra: self.extra,
            timeout: self.timeout,
        }
    }
}

/// Options of `runsc checkpoint`.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOpts {
    /// `--image-path`: the directory runsc writes the image into (created if missing).
    pub image_path: PathBuf,
    /// `--leave-running`.
    pub leave_running: bool,
    /// `--compression=VALUE` (only on releases that have it).
    pub compression: Option<String>,
    /// `--exclude-committed-zero-pages`.
    pub exclude_committed_zero_pages: bool,
    /// `--direct`.
    pub direct: bool,
    /// Timeout of this call (overrides the client's).
    pub timeout: Option<Duration>,
    /// Run as a [`DurableJob`] in this directory.
    pub job_dir: Option<PathBuf>,
}

/// Options of `runsc restore`.
#[derive(Clone, Debug, Default)]
pub struct RestoreOpts {
    /// `--image-path`.
    pub image_path: PathBuf,
    /// `--bundle`.
    pub bundle: PathBuf,
    /// `--detach` (the default use: the restored sandbox keeps running after runsc returns).
    pub detach: bool,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--background` (only on releases that have it).
    pub background: bool,
    /// `--direct` (only on releases that have it).
    pub direct: bool,
    /// Where the restored sandbox's stdout/stderr go (appended); `/dev/null` when unset.
    pub log_file: Option<PathBuf>,
    /// Timeout of this call.
    pub timeout: Option<Duration>,
    /// Run as a [`DurableJob`] in this directory.
    pub job_dir: Option<PathBuf>,
}

/// Options of `runsc create` and `runsc run`.
#[derive(Clone, Debug, Default)]
pub struct CreateOpts {
    /// `--bundle`.
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// Where the container's stdout/stderr go (appended); `/dev/null` when unset.
    pub log_file: Option<PathBuf>,
    /// Timeout of this call.
    pub timeout: Option<Duration>,
}

/// Options of `runsc kill`.
#[derive(Clone, Debug, Default)]
pub struct KillOpts {
    /// `--all`: signal every process of the container.
    pub all: bool,
}

/// Options of `runsc delete`.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    /// `--force`: kill a running container first.
    pub force: bool,
}

/// Where a call's stdout/stderr go.
enum Io<'a> {
    /// Piped back and returned.
    Capture,
    /// Appended to a file the started sandbox keeps (or `/dev/null`).
    Detached(Option<&'a Path>),
}

/// Output of a successful call.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A runsc client: global flags plus one method per subcommand.
#[derive(Clone, Debug)]
pub struct Runsc {
    binary: PathBuf,
    root: Option<PathBuf>,
    platform: Option<String>,
    network: Option<String>,
    debug: bool,
    debug_log: Option<PathBuf>,
    extra: Vec<String>,
    timeout: Option<Duration>,
}

impl Default for Runsc {
    fn default() -> Self {
        RunscBuilder::new().build()
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn read_from(path: &Path, start: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file_len(path);
    let from = start.max(len.saturating_sub(64 * 1024));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f.take(64 * 1024).read_to_end(&mut buf);
    }
    buf
}

impl Runsc {
    /// A builder.
    pub fn builder() -> RunscBuilder {
        RunscBuilder::new()
    }

    /// The binary this client runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The `--root` this client passes, if any.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The `--platform` this client passes, if any.
    pub fn platform(&self) -> Option<&str> {
        self.platform.as_deref()
    }

    /// The extra global flags.
    pub fn extra_flags(&self) -> &[String] {
        &self.extra
    }

    /// The same client with another `--root` (a containerd shim's root, say).
    pub fn with_root(&self, root: impl Into<PathBuf>) -> Runsc {
        Runsc {
            root: Some(root.into()),
            ..self.clone()
        }
    }

    /// The same client with another default timeout.
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Runsc {
        Runsc {
            timeout,
            ..self.clone()
        }
    }

    /// The global flags, in the order they are passed.
    pub fn global_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(root) = &self.root {
            let mut s = OsString::from("--root=");
            s.push(root);
            a.push(s);
        }
        if let Some(p) = &self.platform {
            a.push(format!("--platform={p}").into());
        }
        if let Some(n) = &self.network {
            a.push(format!("--network={n}").into());
        }
        if self.debug {
            a.push("--debug".into());
        }
        if let Some(l) = &self.debug_log {
            let mut s = OsString::from("--debug-log=");
            s.push(l);
            a.push(s);
        }
        a.extend(self.extra.iter().map(OsString::from));
        a
    }

    /// The full argument list (after the binary) for a subcommand.
    pub fn args_for(&self, sub: &[OsString]) -> Vec<OsString> {
        let mut a = self.global_args();
        a.extend(sub.iter().cloned());
        a
    }

    async fn exec(
        &self,
        op: &str,
        sub: Vec<OsString>,
        io: Io<'_>,
        timeout: Option<Duration>,
    ) -> Result<Output, Error> {
        use std::process::Stdio;
        let args = self.args_for(&sub);
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut log_start = 0;
        let detached_log = match io {
            Io::Capture => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                None
            }
            Io::Detached(path) => {
                let path = path.unwrap_or(Path::new("/dev/null"));
                let open = || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| Error::io(format!("opening log {}", path.display()), e))
                };
                log_start = file_len(path);
                cmd.stdout(open()?).stderr(open()?);
                Some(path)
            }
        };
        tracing::debug!(op, root = ?self.root, ?args, "running runsc");
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let pid = child.id().map(|p| p as i32);
        let timeout = timeout.or(self.timeout);
        let waited = match timeout {
            Some(t) => match tokio::time::timeout(t, child.wait_with_output()).await {
                Ok(r) => r,
                Err(_) => {
                    if let Some(pid) = pid {
                        job::kill_group(pid);
                    }
                    tracing::warn!(after = ?t, "runsc timed out, killed its process group");
                    return Err(Error::CommandTimeout {
                        op: op.to_string(),
                        after: t,
                    });
                }
            },
            None => child.wait_with_output().await,
        };
        let out = waited.map_err(|e| Error::io(format!("waiting for runsc {op}"), e))?;
        let status = Exit::from_status(out.status);
        if !status.success() {
            let (stdout, stderr) = match detached_log {
                Some(path) => (
                    String::new(),
                    error::bounded_text(&read_from(path, log_start)),
                ),
                None => (
                    error::bounded_text(&out.stdout),
                    error::bounded_text(&out.stderr),
                ),
            };
            return Err(Error::CommandFailed {
                op: op.to_string(),
                status,
                stdout,
                stderr,
            });
        }
        Ok(Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a subcommand as a durable job and waits for it.
    async fn exec_durable(
        &self,
        op: &str,
        sub: Vec<OsString>,
        job_dir: &Path,
        output: Option<&Path>,
        timeout: Option<Duration>,
    ) -> Result<JobOutcome, Error> {
        let args = self.args_for(&sub);
        let mut job = DurableJob::spawn(op, &self.binary, &args, job_dir, output).await?;
        job.wait(timeout.or(self.timeout)).await?.into_result()
    }

    /// Starts a subcommand as a durable job without waiting (see [`DurableJob::attach`] to
    /// find it again later).
    pub async fn spawn_durable(
        &self,
        op: &str,
        sub: Vec<OsString>,
        job_dir: &Path,
        output: Option<&Path>,
    ) -> Result<DurableJob, Error> {
        DurableJob::spawn(op, &self.binary, &self.args_for(&sub), job_dir, output).await
    }

    /// Help text of runsc (`sub` = None) or of a subcommand. runsc prints help on stderr and
    /// exits 128 for `SUB --help` on some releases, so the exit status is ignored.
    pub async fn help(&self, sub: Option<&str>) -> Result<String, Error> {
        match sub {
            Some(s) => self.text_of("help", &[s, "--help"]).await,
            None => self.text_of("help", &["help"]).await,
        }
    }

    /// stdout + stderr of `runsc ARGS`, whatever its exit status.
    async fn text_of(&self, op: &str, args: &[&str]) -> Result<String, Error> {
        use std::process::Stdio;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let t = self.timeout.unwrap_or(Duration::from_secs(30));
        let out = tokio::time::timeout(t, child.wait_with_output())
            .await
            .map_err(|_| Error::CommandTimeout {
                op: op.into(),
                after: t,
            })?
            .map_err(|e| Error::io(format!("waiting for runsc {op}"), e))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }

    /// `runsc flags`: the global flags with their defaults.
    pub async fn flags_help(&self) -> Result<String, Error> {
        self.text_of("flags", &["flags"]).await
    }

    /// `runsc --version`, parsed.
    pub async fn version(&self) -> Result<RunscVersion, Error> {
        let out = self
            .exec("version", vec!["--version".into()], Io::Capture, None)
            .await?;
        RunscVersion::parse(&out.stdout).ok_or_else(|| Error::Parse {
            op: "--version".into(),
            reason: format!(
                "no `runsc version` line in {:?}",
                error::bounded_text(out.stdout.as_bytes())
            ),
        })
    }

    /// What this runsc supports, from its help texts.
    pub async fn capabilities(&self) -> Result<Capabilities, Error> {
        let top = self.help(None).await?;
        let ck = self.help(Some("checkpoint")).await?;
        let rs = self.help(Some("restore")).await?;
        let flags = self.flags_help().await?;
        Ok(Capabilities::from_help_and_flags(&top, &ck, &rs, &flags))
    }

    /// `runsc state ID`.
    pub async fn state(&self, id: &str) -> Result<ContainerState, Error> {
        let out = self
            .exec("state", vec!["state".into(), id.into()], Io::Capture, None)
            .await?;
        serde_json::from_str(&out.stdout).map_err(|e| Error::Parse {
            op: "state".into(),
            reason: e.to_string(),
        })
    }

    /// `runsc list -format=json` (an empty root prints `null`).
    pub async fn list(&self) -> Result<Vec<ContainerState>, Error> {
        let out = self
            .exec(
                "list",
                vec!["list".into(), "-format=json".into()],
                Io::Capture,
                None,
            )
            .await?;
        let list: Option<Vec<ContainerState>> =
            serde_json::from_str(out.stdout.trim()).map_err(|e| Error::Parse {
                op: "list".into(),
                reason: e.to_string(),
            })?;
        Ok(list.unwrap_or_default())
    }

    /// `runsc list -quiet`: container ids only.
    pub async fn list_ids(&self) -> Result<Vec<String>, Error> {
        let out = self
            .exec(
                "list",
                vec!["list".into(), "-quiet".into()],
                Io::Capture,
                None,
            )
            .await?;
        Ok(out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// `runsc checkpoint --image-path DIR [flags] ID`. The image directory is created first.
    pub async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<(), Error> {
        std::fs::create_dir_all(&opts.image_path).map_err(|e| {
            Error::io(
                format!("creating image dir {}", opts.image_path.display()),
                e,
            )
        })?;
        let mut sub: Vec<OsString> = vec!["checkpoint".into()];
        let mut ip = OsString::from("--image-path=");
        ip.push(&opts.image_path);
        sub.push(ip);
        if opts.leave_running {
            sub.push("--leave-running".into());
        }
        if let Some(c) = &opts.compression {
            sub.push(format!("--compression={c}").into());
        }
        if opts.exclude_committed_zero_pages {
            sub.push("--exclude-committed-zero-pages".into());
        }
        if opts.direct {
            sub.push("--direct".into());
        }
        sub.push(id.into());
        match &opts.job_dir {
            Some(dir) => self
                .exec_durable("checkpoint", sub, dir, None, opts.timeout)
                .await
                .map(drop),
            None => self
                .exec("checkpoint", sub, Io::Capture, opts.timeout)
                .await
                .map(drop),
        }
    }

    fn restore_args(id: &str, opts: &RestoreOpts) -> Vec<OsString> {
        let mut sub: Vec<OsString> = vec!["restore".into()];
        let mut ip = OsString::from("--image-path=");
        ip.push(&opts.image_path);
        sub.push(ip);
        let mut b = OsString::from("--bundle=");
        b.push(&opts.bundle);
        sub.push(b);
        if opts.detach {
            sub.push("--detach".into());
        }
        if let Some(p) = &opts.pid_file {
            let mut s = OsString::from("--pid-file=");
            s.push(p);
            sub.push(s);
        }
        if opts.background {
            sub.push("--background".into());
        }
        if opts.direct {
            sub.push("--direct".into());
        }
        sub.push(id.into());
        sub
    }

    /// `runsc restore --image-path DIR --bundle B [--detach] [--pid-file F] ID`, the restored
    /// sandbox's stdout/stderr appended to `log_file`.
    pub async fn restore(&self, id: &str, opts: &RestoreOpts) -> Result<(), Error> {
        let sub = Self::restore_args(id, opts);
        let log = opts.log_file.as_deref();
        match &opts.job_dir {
            Some(dir) => {
                let out = log.unwrap_or(Path::new("/dev/null"));
                self.exec_durable("restore", sub, dir, Some(out), opts.timeout)
                    .await
                    .map(drop)
            }
            None => self
                .exec("restore", sub, Io::Detached(log), opts.timeout)
                .await
                .map(drop),
        }
    }

    fn create_args(verb: &str, id: &str, opts: &CreateOpts) -> Vec<OsString> {
        let mut sub: Vec<OsString> = vec![verb.into()];
        if verb == "run" {
            sub.push("--detach".into());
        }
        let mut b = OsString::from("--bundle=");
        b.push(&opts.bundle);
        sub.push(b);
        if let Some(p) = &opts.pid_file {
            let mut s = OsString::from("--pid-file=");
            s.push(p);
            sub.push(s);
        }
        sub.push(id.into());
        sub
    }

    /// `runsc create --bundle B ID` (the container's stdio to `log_file`).
    pub async fn create(&self, id: &str, opts: &CreateOpts) -> Result<(), Error> {
        let sub = Self::create_args("create", id, opts);
        self.exec(
            "create",
            sub,
            Io::Detached(opts.log_file.as_deref()),
            opts.timeout,
        )
        .await
        .map(drop)
    }

    /// `runsc start ID`.
    pub async fn start(&self, id: &str) -> Result<(), Error> {
        self.exec("start", vec!["start".into(), id.into()], Io::Capture, None)
            .await
            .map(drop)
    }

    /// `runsc run --detach --bundle B ID` (the container's stdio to `log_file`).
    pub async fn run(&self, id: &str, opts: &CreateOpts) -> Result<(), Error> {
        let sub = Self::create_args("run", id, opts);
        self.exec(
            "run",
            sub,
            Io::Detached(opts.log_file.as_deref()),
            opts.timeout,
        )
        .await
        .map(drop)
    }

    /// `runsc pause ID`: freezes the whole sandbox when ID is its root container.
    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.exec("pause", vec!["pause".into(), id.into()], Io::Capture, None)
            .await
            .map(drop)
    }

    /// `runsc resume ID`.
    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        self.exec(
            "resume",
            vec!["resume".into(), id.into()],
            Io::Capture,
            None,
        )
        .await
        .map(drop)
    }

    /// `runsc kill [--all] ID SIGNAL`.
    pub async fn kill(&self, id: &str, signal: &str, opts: &KillOpts) -> Result<(), Error> {
        let mut sub: Vec<OsString> = vec!["kill".into()];
        if opts.all {
            sub.push("--all".into());
        }
        sub.push(id.into());
        sub.push(signal.into());
        self.exec("kill", sub, Io::Capture, None).await.map(drop)
    }

    /// `runsc delete [--force] ID`.
    pub async fn delete(&self, id: &str, opts: &DeleteOpts) -> Result<(), Error> {
        let mut sub: Vec<OsString> = vec!["delete".into()];
        if opts.force {
            sub.push("--force".into());
        }
        sub.push(id.into());
        self.exec("delete", sub, Io::Capture, None).await.map(drop)
    }
}

#[cfg(test)]
mod tests;
