//! Durable jobs: runsc operations that outlive the daemon that started them.
//!
//! A checkpoint kills the sandbox it saves, so its outcome must never be lost with the daemon.
//! A durable job runs the command under `/bin/sh` in a new session (its own process group, no
//! controlling terminal), with stdin from `/dev/null` and its output in files of the job
//! directory. When the command ends, the shell writes its exit code to `exit-status`
//! (atomically, through a rename). A restarted daemon re-attaches with [`DurableJob::attach`]
//! and learns the outcome by polling that file.
//!
//! Files of a job directory:
//!
//! | file | content |
//! |---|---|
//! | `op` | the runsc subcommand (for messages) |
//! | `argv` | the command line, one JSON array |
//! | `pid` | pid of the job's shell (its process group and session id), written by the shell itself and by the spawner |
//! | `stdout`, `stderr` | the command's output (unless redirected to a log file) |
//! | `output` | path of the log file the output went to instead, when redirected |
//! | `exit-status` | the exit code, written last (128+N when killed by signal N) |

use super::error::{bounded_text, Error, Exit};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXIT_STATUS: &str = "exit-status";
const POLL: Duration = Duration::from_millis(50);

/// The shell program run by a job: records its own pid (so a job is found even when the daemon
/// that spawned it died before writing `pid`), runs "$@" with output to the job's files (or
/// the log file named by `PODSNAP_JOB_OUTPUT`), then records the exit code atomically.
const SCRIPT: &str = r#"echo $$ >pid.tmp && mv pid.tmp pid; if [ -n "$PODSNAP_JOB_OUTPUT" ]; then "$@" </dev/null >>"$PODSNAP_JOB_OUTPUT" 2>&1; else "$@" </dev/null >stdout 2>stderr; fi; echo $? >exit-status.tmp && mv exit-status.tmp exit-status"#;

/// Where a durable job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Still running.
    Running,
    /// Finished with this exit code.
    Exited(i32),
    /// Its process is gone and no exit status was recorded.
    Lost,
}

/// The outcome of a finished durable job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// The runsc subcommand.
    pub op: String,
    /// The exit code (128+N when killed by signal N).
    pub code: i32,
    /// Tail of stdout (bounded).
    pub stdout: String,
    /// Tail of stderr, or of the log file the output went to (bounded).
    pub stderr: String,
}

impl JobOutcome {
    /// `Ok(self)` for exit code 0, [`Error::CommandFailed`] otherwise.
    pub fn into_result(self) -> Result<JobOutcome, Error> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(Error::CommandFailed {
                op: self.op,
                status: Exit::Code(self.code),
                stdout: self.stdout,
                stderr: self.stderr,
            })
        }
    }
}

/// A runsc operation running (or finished) in its own session, tracked through a directory.
#[derive(Debug)]
pub struct DurableJob {
    dir: PathBuf,
    op: String,
    pid: i32,
    output: Option<PathBuf>,
    output_start: u64,
    child: Option<tokio::process::Child>,
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn tail_from(path: &Path, start: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = start.max(len.saturating_sub(64 * 1024));
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf);
    bounded_text(&buf)
}

impl DurableJob {
    /// Starts `program args...` as a durable job in `dir` (created if missing; it must not hold
    /// a finished job). With `output`, the command's stdout and stderr are appended to that
    /// file (a restored sandbox keeps writing there) instead of the job's own files.
    pub async fn spawn(
        op: &str,
        program: &Path,
        args: &[OsString],
        dir: &Path,
        output: Option<&Path>,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating job directory {}", dir.display()), e))?;
        if dir.join(EXIT_STATUS).exists() {
            return Err(Error::io(
                format!(
                    "job directory {} already holds a finished job",
                    dir.display()
                ),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let write = |name: &str, data: &[u8]| {
            std::fs::write(dir.join(name), data)
                .map_err(|e| Error::io(format!("writing {}", dir.join(name).display()), e))
        };
        let mut argv: Vec<String> = vec![program.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
        write("op", op.as_bytes())?;
        write(
            "argv",
            &serde_json::to_vec(&argv).expect("strings always serialise"),
        )?;
        let output_start = match output {
            Some(out) => {
                write("output", out.as_os_str().as_bytes())?;
                std::fs::metadata(out).map(|m| m.len()).unwrap_or(0)
            }
            None => 0,
        };

        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("podsnap-job")
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .env_remove("PODSNAP_JOB_OUTPUT");
        if let Some(out) = output {
            cmd.env("PODSNAP_JOB_OUTPUT", out);
        }
        new_session(&mut cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: PathBuf::from("/bin/sh"),
            source,
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        // The shell writes the same pid itself; both go through a rename, never half-written.
        write("pid.spawner", pid.to_string().as_bytes())?;
        std::fs::rename(dir.join("pid.spawner"), dir.join("pid"))
            .map_err(|e| Error::io(format!("writing {}", dir.join("pid").display()), e))?;
        tracing::debug!(op, pid, dir = %dir.display(), "started durable job");
        Ok(DurableJob {
            dir: dir.to_path_buf(),
            op: op.to_string(),
            pid,
            output: output.map(Path::to_path_buf),
            output_start,
            child: Some(child),
        })
    }

    /// Finds the job that an earlier process started in `dir`, if it started one: `None`
    /// when no job was ever spawned there. A spawner that died between writing `argv` and
    /// `pid` leaves it open whether the shell runs; the shell records its pid as its first
    /// action, so this waits up to `grace` for that (or an exit status) before concluding
    /// that nothing was spawned, and then clears the directory for a new [`DurableJob::spawn`].
    pub async fn find(dir: &Path, grace: Duration) -> Result<Option<Self>, Error> {
        let started = |d: &Path| d.join("pid").exists() || d.join(EXIT_STATUS).exists();
        if started(dir) {
            return Self::attach(dir).map(Some);
        }
        if !dir.join("argv").exists() {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if started(dir) {
                return Self::attach(dir).map(Some);
            }
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| Error::io(format!("clearing job directory {}", dir.display()), e))?;
        Ok(None)
    }

    /// Re-attaches to a job started earlier (possibly by another process) from its directory.
    /// A job whose exit status is recorded needs no pid.
    pub fn attach(dir: &Path) -> Result<Self, Error> {
        let pid = match std::fs::read_to_string(dir.join("pid")) {
            Ok(text) => text.trim().parse().map_err(|_| Error::Parse {
                op: "job".into(),
                reason: format!("bad pid file in {}", dir.display()),
            })?,
            Err(_) if dir.join(EXIT_STATUS).exists() => -1,
            Err(e) => {
                return Err(Error::io(
                    format!("reading {}", dir.join("pid").display()),
                    e,
                ))
            }
        };
        Ok(DurableJob {
            dir: dir.to_path_buf(),
            op: read_trim(&dir.join("op")).unwrap_or_else(|| "job".into()),
            pid,
            output: read_trim(&dir.join("output")).map(PathBuf::from),
            output_start: 0,
            child: None,
        })
    }

    /// The job directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the job's shell (its process group and session id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True while the job's shell process exists (checked through its working directory, so a
    /// reused pid is not mistaken for the job).
    fn shell_alive(&mut self) -> bool {
        if let Some(child) = self.child.as_mut() {
            // Reap our own child so it does not linger as a zombie.
            return matches!(child.try_wait(), Ok(None));
        }
        if self.pid <= 0 {
            return false;
        }
        match std::fs::read_link(format!("/proc/{}/cwd", self.pid)) {
            Ok(cwd) => {
                let ours = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
                cwd == ours
            }
            Err(_) => false,
        }
    }

    fn recorded_code(&self) -> Option<i32> {
        read_trim(&self.dir.join(EXIT_STATUS)).and_then(|s| s.parse().ok())
    }

    /// Where the job stands now.
    pub fn status(&mut self) -> JobStatus {
        if let Some(code) = self.recorded_code() {
            return JobStatus::Exited(code);
        }
        if self.shell_alive() {
            return JobStatus::Running;
        }
        // The shell may have finished between the two checks.
        match self.recorded_code() {
            Some(code) => JobStatus::Exited(code),
            None => JobStatus::Lost,
        }
    }

    /// The outcome when the job has finished.
    pub fn outcome(&mut self) -> Result<Option<JobOutcome>, Error> {
        match self.status() {
            JobStatus::Running => Ok(None),
            JobStatus::Lost => Err(Error::JobLost {
                dir: self.dir.clone(),
            }),
            JobStatus::Exited(code) => {
                let (stdout, stderr) = match &self.output {
                    Some(out) => (String::new(), tail_from(out, self.output_start)),
                    None => (
                        tail_from(&self.dir.join("stdout"), 0),
                        tail_from(&self.dir.join("stderr"), 0),
                    ),
                };
                Ok(Some(JobOutcome {
                    op: self.op.clone(),
                    code,
                    stdout,
                    stderr,
                }))
            }
        }
    }

    /// Waits until the job finishes (polling its status file). With a timeout, the job's
    /// whole process group is killed when it expires and [`Error::CommandTimeout`] returned.
    /// A job this process started is also awaited directly, so its end is seen at once
    /// rather than at the next poll.
    pub async fn wait(&mut self, timeout: Option<Duration>) -> Result<JobOutcome, Error> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            if let Some(outcome) = self.outcome()? {
                return Ok(outcome);
            }
            if let Some(d) = deadline {
                if tokio::time::Instant::now() >= d {
                    self.kill();
                    return Err(Error::CommandTimeout {
                        op: self.op.clone(),
                        after: timeout.unwrap_or_default(),
                    });
                }
            }
            match self.child.as_mut() {
                // The shell writes the exit status before it exits.
                Some(child) => {
                    let _ = tokio::time::timeout(POLL, child.wait()).await;
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Sends SIGKILL to the job's process group.
    pub fn kill(&mut self) {
        if self.pid > 0 && self.shell_alive() {
            kill_group(self.pid);
        }
    }
}

/// Puts the child into a new session (and so its own process group) before it runs.
fn new_session(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2), which
    // is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Sends SIGKILL to process group `pgid`.
pub(crate) fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[tokio::test]
    async fn durable_job_records_exit_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let job_dir = dir.path().join("job");
        let mut job = DurableJob::spawn(
            "checkpoint",
            Path::new("/bin/sh"),
            &args(&["-c", "echo out; echo err >&2; exit 3"]),
            &job_dir,
            None,
        )
        .await
        .unwrap();
        let outcome = job.wait(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(outcome.code, 3);
        assert_eq!(outcome.stdout, "out");
        assert_eq!(outcome.stderr, "err");
        let err = outcome.into_result().unwrap_err();
        assert!(
            matches!(&err, Error::CommandFailed { op, status: Exit::Code(3), .. } if op == "checkpoint"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(job_dir.join("exit-status"))
                .unwrap()
                .trim(),
            "3"
        );
    }

    #[tokio::test]
    async fn durable_job_runs_in_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = DurableJob::spawn(
            "probe",
            Path::new("/bin/sh"),
            &args(&["-c", "cat /proc/$$/stat"]),
            dir.path(),
            None,
        )
        .await
        .unwrap();
        let out = job.wait(Some(Duration::from_secs(10))).await.unwrap();
        // Fields after the command name: state ppid pgrp session.
        let after = out.stdout.rsplit_once(')').unwrap().1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let session: i32 = fields[3].parse().unwrap();
        assert_eq!(session, job.pid());
        let ours = std::fs::read_to_string("/proc/self/stat").unwrap();
        let our_session: i32 = ours
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(3)
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(session, our_session);
    }

    #[tokio::test]
    async fn reattached_job_sees_the_outcome_of_a_job_started_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let job_dir = dir.path().join("job");
        let job = DurableJob::spawn(
            "restore",
            Path::new("/bin/sh"),
            &args(&["-c", "sleep 0.3; echo done"]),
            &job_dir,
            None,
        )
        .await
        .unwrap();
        // Forget the handle as a crashed daemon would.
        drop(job);
        let mut again = DurableJob::attach(&job_dir).unwrap();
        assert_eq!(again.status(), JobStatus::Running);
        let outcome = again.wait(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(outcome.code, 0);
        assert_eq!(outcome.stdout, "done");
        assert_eq!(outcome.op, "restore");
    }

    #[tokio::test]
    async fn find_tells_a_started_job_from_one_that_never_started() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_millis(300);
        // Nothing there.
        let none = dir.path().join("none");
        assert!(DurableJob::find(&none, grace).await.unwrap().is_none());

        // The spawner died after `argv` and before the spawn: nothing appears, the directory
        // is cleared and a new job can be spawned there.
        let half = dir.path().join("half");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("argv"), "[]").unwrap();
        assert!(DurableJob::find(&half, grace).await.unwrap().is_none());
        assert!(!half.exists());
        DurableJob::spawn("x", Path::new("/bin/true"), &[], &half, None)
            .await
            .unwrap()
            .wait(Some(Duration::from_secs(10)))
            .await
            .unwrap();

        // The spawner died after the spawn and before writing `pid`: the shell recorded its
        // own pid, or the exit status is there; either way the outcome is found.
        let lost_pid = dir.path().join("lost-pid");
        DurableJob::spawn(
            "checkpoint",
            Path::new("/bin/sh"),
            &args(&["-c", "sleep 0.2; exit 3"]),
            &lost_pid,
            None,
        )
        .await
        .unwrap()
        .wait(Some(Duration::from_secs(10)))
        .await
        .unwrap();
        std::fs::remove_file(lost_pid.join("pid")).unwrap();
        let mut found = DurableJob::find(&lost_pid, grace).await.unwrap().unwrap();
        let outcome = found.wait(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!((outcome.op.as_str(), outcome.code), ("checkpoint", 3));
    }

    #[tokio::test]
    async fn a_job_whose_spawner_died_before_writing_pid_is_found_through_the_shell() {
        // What a spawner that died right after the spawn leaves: `argv`, and the job's shell
        // running without anyone writing `pid` for it.
        let dir = tempfile::tempdir().unwrap();
        let job_dir = dir.path().join("job");
        std::fs::create_dir_all(&job_dir).unwrap();
        std::fs::write(job_dir.join("op"), "restore").unwrap();
        std::fs::write(job_dir.join("argv"), "[]").unwrap();
        let mut shell = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("podsnap-job")
            .args(["/bin/sh", "-c", "sleep 0.3; exit 5"])
            .current_dir(&job_dir)
            .spawn()
            .unwrap();
        let mut found = DurableJob::find(&job_dir, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("the shell's own pid file makes the job findable");
        assert_eq!(found.pid(), shell.id() as i32);
        let outcome = found.wait(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(outcome.code, 5);
        shell.wait().unwrap();
    }

    #[tokio::test]
    async fn job_output_can_go_to_a_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sandbox.log");
        std::fs::write(&log, "earlier line\n").unwrap();
        let mut job = DurableJob::spawn(
            "restore",
            Path::new("/bin/sh"),
            &args(&["-c", "echo restore failed >&2; exit 1"]),
            &dir.path().join("job"),
            Some(&log),
        )
        .await
        .unwrap();
        let outcome = job.wait(Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(outcome.code, 1);
        assert_eq!(outcome.stderr, "restore failed");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "earlier line\nrestore failed\n");
    }

    #[tokio::test]
    async fn job_that_hangs_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = DurableJob::spawn(
            "checkpoint",
            Path::new("/bin/sleep"),
            &args(&["30"]),
            &dir.path().join("job"),
            None,
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let err = job
            .wait(Some(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::CommandTimeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The whole group died: the shell records the signal exit (128+9) or nothing at all.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_ne!(job.status(), JobStatus::Running);
    }

    #[test]
    fn job_whose_process_vanished_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pid"), "999999999").unwrap();
        std::fs::write(dir.path().join("op"), "checkpoint").unwrap();
        let mut job = DurableJob::attach(dir.path()).unwrap();
        assert_eq!(job.status(), JobStatus::Lost);
        assert!(matches!(job.outcome(), Err(Error::JobLost { .. })));
    }

    #[tokio::test]
    async fn job_dir_with_a_finished_job_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("exit-status"), "0").unwrap();
        let err = DurableJob::spawn("x", Path::new("/bin/true"), &[], dir.path(), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already holds a finished job"));
    }
}
