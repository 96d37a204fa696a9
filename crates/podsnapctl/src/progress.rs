//! Progress of long transfers (checkpoint, restore, image push and pull) on stderr: a bar when
//! stderr is a terminal, plain lines when it is not (a log, a CI job, a pipe), or nothing.
//! stdout never carries progress, so `$(podsnapctl checkpoint ...)` still captures only the id.
//!
//! Plain lines look like `push: uploading 12.0 MiB of 100.0 MiB (12%)`: one when a phase
//! starts and then at most one per [`PLAIN_INTERVAL`], so a log of a long transfer shows that
//! it moves without filling up.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use podsnap_store::{Progress, ProgressEvent};

/// How progress is shown (`--progress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always a bar (redrawn in place).
    Bar,
    /// Always plain lines.
    Plain,
    /// Nothing.
    None,
}

/// The least time between two plain lines of the same phase.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

static MODE: OnceLock<ProgressMode> = OnceLock::new();

/// Sets the mode for the whole process (from `--progress`); the first call wins.
pub fn set_mode(mode: ProgressMode) {
    let _ = MODE.set(mode);
}

fn mode() -> ProgressMode {
    match MODE.get().copied().unwrap_or_default() {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Plain,
        m => m,
    }
}

/// Reports one transfer; also a store [`Progress`] sink for `image push` and `pull`.
pub struct Reporter {
    verb: &'static str,
    view: View,
}

enum View {
    Bar(indicatif::ProgressBar),
    Plain(Mutex<Plain>),
    Quiet,
}

#[derive(Default)]
struct Plain {
    phase: String,
    done: u64,
    total: u64,
    last_line: Option<Instant>,
}

impl Plain {
    fn line(&mut self, verb: &str) {
        let mut line = format!("{verb}:");
        if !self.phase.is_empty() {
            line.push(' ');
            line.push_str(&self.phase);
        }
        if self.total > 0 {
            let pct = (self.done.min(self.total) as f64 * 100.0 / self.total as f64) as u64;
            line.push_str(&format!(
                " {} of {} ({pct}%)",
                human(self.done),
                human(self.total)
            ));
        } else if self.done > 0 {
            line.push_str(&format!(" {}", human(self.done)));
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        self.last_line = Some(Instant::now());
    }

    fn due(&self) -> bool {
        self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_INTERVAL)
    }
}

impl Reporter {
    /// A reporter for `verb` (`push`, `checkpoint`, ...) in the process's mode.
    pub fn new(verb: &'static str) -> Reporter {
        let view = match mode() {
            ProgressMode::Bar => {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(verb);
                bar.enable_steady_tick(Duration::from_millis(120));
                View::Bar(bar)
            }
            ProgressMode::Plain => View::Plain(Mutex::new(Plain::default())),
            ProgressMode::None | ProgressMode::Auto => View::Quiet,
        };
        Reporter { verb, view }
    }

    fn plain(&self, f: impl FnOnce(&mut Plain) -> bool) {
        if let View::Plain(p) = &self.view {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if f(&mut p) {
                p.line(self.verb);
            }
        }
    }

    /// A new phase (`uploading`, `restoring`, ...): a plain line at once.
    pub fn phase(&self, phase: &str) {
        match &self.view {
            View::Bar(b) => b.set_message(phase.to_string()),
            View::Plain(_) => self.plain(|p| {
                let changed = p.phase != phase;
                p.phase = phase.to_string();
                changed
            }),
            View::Quiet => {}
        }
    }

    /// Where a job stands (daemon progress events): a plain line at once when the phase
    /// changed, otherwise at most one per [`PLAIN_INTERVAL`]. An update without byte counts
    /// (a phase change: `done` and `total` both 0) keeps the counts shown so far.
    pub fn update(&self, phase: &str, done: u64, total: u64) {
        let counts = done > 0 || total > 0;
        match &self.view {
            View::Bar(b) => {
                b.set_message(phase.to_string());
                if total > 0 {
                    b.set_length(total);
                }
                if counts {
                    b.set_position(done);
                }
            }
            View::Plain(_) => self.plain(|p| {
                let changed = p.phase != phase;
                p.phase = phase.to_string();
                if total > 0 {
                    p.total = total;
                }
                if counts {
                    p.done = done;
                }
                changed || p.due()
            }),
            View::Quiet => {}
        }
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        match &self.view {
            View::Bar(b) => b.inc(n),
            View::Plain(_) => self.plain(|p| {
                p.done += n;
                p.due()
            }),
            View::Quiet => {}
        }
    }

    /// The transfer ended (either way): the bar is cleared; plain output ends with the state
    /// it reached, unless that line was just printed.
    pub fn finish(&self) {
        match &self.view {
            View::Bar(b) => b.finish_and_clear(),
            View::Plain(_) => self.plain(|p| {
                p.last_line
                    .is_some_and(|t| t.elapsed() >= Duration::from_millis(100))
            }),
            View::Quiet => {}
        }
    }
}

impl Progress for Reporter {
    fn event(&self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::Started { total_bytes } => {
                // The total first, silently, so the phase's first line carries it.
                match &self.view {
                    View::Bar(b) => b.set_length(total_bytes),
                    View::Plain(_) => self.plain(|p| {
                        p.total = total_bytes;
                        false
                    }),
                    View::Quiet => {}
                }
                self.phase(match self.verb {
                    "pull" => "downloading",
                    _ => "uploading",
                });
            }
            ProgressEvent::BytesRead(n) | ProgressEvent::BytesWritten(n) => self.add(n),
            ProgressEvent::Committing => self.phase("committing"),
            _ => {}
        }
    }
}

/// `1.5 MiB` and the like.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_due_at_once_then_after_the_interval() {
        let mut p = Plain::default();
        assert!(p.due());
        p.last_line = Some(Instant::now());
        assert!(!p.due());
        p.last_line = Some(Instant::now() - PLAIN_INTERVAL);
        assert!(p.due());
    }

    #[test]
    fn a_phase_change_without_counts_keeps_the_bytes_shown() {
        let r = Reporter {
            verb: "checkpoint",
            view: View::Plain(Mutex::new(Plain::default())),
        };
        let state = || match &r.view {
            View::Plain(p) => {
                let p = p.lock().unwrap();
                (p.phase.clone(), p.done, p.total)
            }
            _ => unreachable!(),
        };
        r.update("uploading", 512, 2048);
        r.update("uploading", 2048, 2048);
        r.update("done", 0, 0);
        assert_eq!(state(), ("done".to_string(), 2048, 2048));
        // Counts without a known total still move.
        r.update("uploading", 4096, 0);
        assert_eq!(state(), ("uploading".to_string(), 4096, 2048));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(100 << 20), "100.0 MiB");
    }
}
