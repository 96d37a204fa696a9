//! Errors of the runsc client.

use std::path::PathBuf;
use std::time::Duration;

/// Most bytes of stdout/stderr kept in an error (the tail, where runsc prints its reason).
pub const MAX_ERROR_OUTPUT: usize = 4096;

/// How a runsc process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    pub(crate) fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// An error from running runsc.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// runsc ran and failed; `stderr` is its trimmed tail (at most [`MAX_ERROR_OUTPUT`] bytes).
    #[error("runsc {op} failed with {status}: {stderr}")]
    CommandFailed {
        /// The subcommand (`checkpoint`, `restore`, ...).
        op: String,
        /// How it ended.
        status: Exit,
        /// Tail of its stdout.
        stdout: String,
        /// Tail of its stderr (for detached operations: of the log it wrote to).
        stderr: String,
    },
    /// runsc did not finish in time and was killed (with its process group).
    #[error("runsc {op} timed out after {after:?}")]
    CommandTimeout {
        /// The subcommand.
        op: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The binary could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file operation around a runsc call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// runsc's output could not be understood.
    #[error("cannot parse output of runsc {op}: {reason}")]
    Parse {
        /// The subcommand.
        op: String,
        /// What was wrong.
        reason: String,
    },
    /// A durable job's process is gone without recording an exit status (host reboot, kill -9
    /// of its session).
    #[error("durable job in {dir} ended without recording an exit status")]
    JobLost {
        /// The job directory.
        dir: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when runsc reported that the container does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::CommandFailed { stderr, .. } => {
                let s = stderr.to_ascii_lowercase();
                s.contains("does not exist")
                    || s.contains("not found")
                    || s.contains("no such file or directory")
            }
            _ => false,
        }
    }
}

/// Keeps the trimmed tail of `bytes`, at most [`MAX_ERROR_OUTPUT`] bytes, lossily decoded and
/// without NUL padding (a restored sandbox may leave holes in its log).
pub(crate) fn bounded_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_ERROR_OUTPUT);
    let text = String::from_utf8_lossy(&bytes[start..]).replace('\0', "");
    let trimmed = text.trim();
    if start > 0 {
        format!("...{trimmed}")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_keeps_the_tail() {
        let long = "x".repeat(10_000) + "the reason";
        let t = bounded_text(long.as_bytes());
        assert!(t.starts_with("..."));
        assert!(t.ends_with("the reason"));
        assert!(t.len() <= MAX_ERROR_OUTPUT + 3);
        assert_eq!(bounded_text(b"  short\n"), "short");
        assert_eq!(bounded_text(b"\0\0\0err"), "err");
    }

    #[test]
    fn not_found_is_recognised_from_stderr() {
        let e = Error::CommandFailed {
            op: "state".into(),
            status: Exit::Code(128),
            stdout: String::new(),
            stderr: "loading container: file does not exist".into(),
        };
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "runsc state failed with exit status 128: loading container: file does not exist"
        );
    }
}
