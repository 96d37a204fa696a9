//! podsnapctl: the command line of podsnap. Talks to podsnapd over its Unix socket
//! (checkpoint, restore, list, inspect, delete, compat, node-info, jobs) and works offline on
//! stores and CPU feature sets (image, cpu-features, cpu-check).

mod cpu;
mod daemon;
mod image;
mod keygen;
mod progress;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// Checkpoint and restore gVisor sandboxes with podsnapd, and manage snapshot stores.
///
/// Daemon commands talk to podsnapd over --socket. `image`, `cpu-features` and `cpu-check`
/// work without a daemon.
///
/// Examples:
///   podsnapctl checkpoint counter --label app=demo --group-by app --keep 3 --stop
///   podsnapctl restore 20261129T070102Z-3fa9c2d1 --bundle /srv/bundle --id counter-2
///   podsnapctl prefetch 20261129T070102Z-3fa9c2d1
///   podsnapctl list --group app=demo
///   podsnapctl image push ./image --store s3://bucket/snaps
///   podsnapctl cpu-features --json > node-a.json
///   podsnapctl keygen /etc/podsnap/keys --group app=demo
#[derive(Parser, Debug)]
#[command(name = "podsnapctl", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// podsnapd's Unix socket (`unix://` prefix accepted).
    #[arg(
        long,
        global = true,
        env = "PODSNAP_SOCKET",
        default_value = "/run/podsnap/podsnapd.sock"
    )]
    socket: String,
    /// Progress of long transfers on stderr: a bar on a terminal and plain lines otherwise
    /// (auto), or always one of them, or none.
    #[arg(
        long,
        global = true,
        env = "PODSNAP_PROGRESS",
        value_enum,
        default_value_t = progress::ProgressMode::Auto
    )]
    progress: progress::ProgressMode,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Checkpoint a sandbox into the store; prints the snapshot id as the last line.
    Checkpoint(daemon::CheckpointArgs),
    /// Restore a snapshot as a new standalone sandbox under the daemon's runsc root.
    Restore(daemon::RestoreArgs),
    /// Warm the daemon's node-local page cache with a snapshot before a restore there;
    /// prints the bytes fetched and the bytes already cached.
    Prefetch(daemon::PrefetchArgs),
    /// List the snapshots in the daemon's store (newest first).
    List(daemon::ListArgs),
    /// Show one snapshot's manifest summary.
    Inspect(daemon::InspectArgs),
    /// Delete a snapshot (its chunks go at the next garbage collection).
    Delete(daemon::DeleteArgs),
    /// Would this snapshot restore on the daemon's node? Exit 0 if yes, 1 if not.
    Compat(daemon::CompatArgs),
    /// The daemon's node: CPU feature set, runsc version and capabilities, store, jobs.
    NodeInfo(daemon::JsonArgs),
    /// In-flight and recent jobs with their phase and progress.
    Jobs(daemon::JsonArgs),
    /// Work on a store directly, without a daemon.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Print this host's CPU feature set (gVisor's names), or the common set of several.
    CpuFeatures(cpu::CpuFeaturesArgs),
    /// Check a recorded CPU feature set (JSON or snapshot manifest) against this host.
    CpuCheck(cpu::CpuCheckArgs),
    /// Write a new group key for encryption at rest into a key directory.
    Keygen(keygen::KeygenArgs),
    /// Print a shell completion script for podsnapctl.
    ///
    /// bash: `podsnapctl completions bash > /etc/bash_completion.d/podsnapctl`;
    /// zsh: `podsnapctl completions zsh > "${fpath[1]}/_podsnapctl"`;
    /// fish: `podsnapctl completions fish > ~/.config/fish/completions/podsnapctl.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write podsnapctl's man pages (podsnapctl.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

fn main() {
    // Before any thread starts: bounds the memory the allocator keeps (see the function).
    podsnap_store::limit_malloc_arenas(2);
    let cli = Cli::parse();
    progress::set_mode(cli.progress);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podsnapctl: {}", format!("{e:#}").replace('\n', " "));
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.cmd {
        Cmd::CpuFeatures(a) => cpu::run_cpu_features(a).map(|_| 0),
        Cmd::CpuCheck(a) => cpu::run_cpu_check(a),
        Cmd::Keygen(a) => keygen::run(a).map(|_| 0),
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "podsnapctl", &mut script);
            match std::io::stdout().write_all(&script) {
                // `podsnapctl completions bash | head` is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(e).context("writing the completion script"))
                }
                _ => Ok(0),
            }
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            Ok(0)
        }
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match other {
                    Cmd::Image(c) => image::run(c).await.map(|_| 0),
                    Cmd::Checkpoint(a) => daemon::checkpoint(&cli.socket, a).await,
                    Cmd::Restore(a) => daemon::restore(&cli.socket, a).await,
                    Cmd::Prefetch(a) => daemon::prefetch(&cli.socket, a).await,
                    Cmd::List(a) => daemon::list(&cli.socket, a).await,
                    Cmd::Inspect(a) => daemon::inspect(&cli.socket, a).await,
                    Cmd::Delete(a) => daemon::delete(&cli.socket, a).await,
                    Cmd::Compat(a) => daemon::compat(&cli.socket, a).await,
                    Cmd::NodeInfo(a) => daemon::node_info(&cli.socket, a).await,
                    Cmd::Jobs(a) => daemon::jobs(&cli.socket, a).await,
                    Cmd::CpuFeatures(_)
                    | Cmd::CpuCheck(_)
                    | Cmd::Keygen(_)
                    | Cmd::Completions { .. }
                    | Cmd::Man { .. } => {
                        unreachable!("handled above")
                    }
                }
            })
        }
    }
}
