//! `podsnapctl image ...`: work on a snapshot store directly, without a daemon.
//!
//! Every subcommand takes `--store URL` (or `PODSNAP_STORE`): `file:///dir`, `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix`. `push` prints the snapshot id as stdout's last
//! line (`--json`: one JSON object instead); progress goes to stderr (see [`crate::progress`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::HumanBytes;
use podsnap_store::{Progress, PullOptions, PushOptions, SnapshotId, Store};

use crate::progress::Reporter;

/// Offline store commands.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCmd {
    /// Push every file under DIR as a new snapshot; prints its id as the last line.
    Push(PushArgs),
    /// Pull a snapshot into DIR (which must not exist or be empty); DIR appears only once
    /// every page has been verified.
    Pull {
        /// Snapshot id (as printed by `image push` or listed by `image ls`).
        id: String,
        /// Destination directory; created if missing, refused if not empty.
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        /// Skip the fsync of every file and directory before DIR appears.
        ///
        /// Faster (a pull of a large image otherwise waits for the disk to write it all), but
        /// after a power loss or kernel crash DIR may hold incomplete files. For scratch
        /// copies that are used right away and can be pulled again. Every page is still
        /// verified.
        #[arg(long)]
        no_fsync: bool,
    },
    /// List the snapshots in the store, newest first.
    Ls {
        #[command(flatten)]
        store: StoreArg,
        /// Print the manifests as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print a snapshot's manifest (JSON).
    Inspect {
        /// Snapshot id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a snapshot's manifest (its data goes at the next gc).
    Rm {
        /// Snapshot id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete data no snapshot references, if older than the grace period.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// Keep unreferenced objects younger than this (`30s`, `15m`, `1h`, `2d`).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        grace: Duration,
    },
}

/// `image push`'s arguments.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Directory holding the checkpoint image files.
    dir: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// Label to record, `key=value`; repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Parent snapshot: recorded, and its unchanged pages are not uploaded again.
    #[arg(long)]
    parent: Option<String>,
    /// Retention group the snapshot belongs to.
    #[arg(long)]
    group: Option<String>,
    /// Snapshot id to use instead of a generated one.
    #[arg(long)]
    id: Option<String>,
    /// Print one JSON object (id, bytes read, uploaded, ...) instead of the id.
    #[arg(long)]
    json: bool,
    /// Uploads in flight at once (each a ~4 MiB pack object); 0 means the store's default, 4.
    ///
    /// Hashing and compression always use one worker thread per CPU; this only bounds
    /// how many objects are being sent at the same time. Against a local `file://` store
    /// it changes little. Against a remote store each request waits at least one round
    /// trip, so with one upload in flight a push pays that latency once per object; more
    /// in flight hide it, at the cost of about 4 MiB of memory each. Raise it for a
    /// distant or high-latency store; lower it to limit bandwidth or memory.
    #[arg(long, value_name = "N", default_value_t = 0)]
    concurrency: usize,
}

/// `--store URL`, also from `PODSNAP_STORE`, and the group keys.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArg {
    /// Store URL: file:///dir, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix.
    #[arg(long = "store", env = "PODSNAP_STORE", value_name = "URL")]
    pub url: String,
    /// Key directory for encryption at rest, as podsnapd's --key-dir: pushes to a group with
    /// a key are encrypted, and pulling an encrypted snapshot needs its group's key.
    #[arg(long = "key-dir", env = "PODSNAP_KEY_DIR", value_name = "DIR")]
    pub key_dir: Option<PathBuf>,
}

impl StoreArg {
    fn open(&self) -> anyhow::Result<Store> {
        let store = Store::open(&self.url).context("cannot open store")?;
        match &self.key_dir {
            Some(dir) => {
                let keys = podsnap_store::Keyring::load_dir(dir).context("cannot load keys")?;
                Ok(store.with_keyring(keys))
            }
            None => Ok(store),
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not key=value")),
    }
}

/// Parses `90`, `90s`, `15m`, `1h`, `2d` (one number, one unit).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (s, m, h, d)"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} too large"))
}

fn snapshot_id(s: &str) -> anyhow::Result<SnapshotId> {
    SnapshotId::new(s).map_err(anyhow::Error::from)
}

/// Runs `f` with the process's progress view (a bar on a terminal, plain lines otherwise).
async fn with_progress<T, F, Fut>(verb: &'static str, f: F) -> T
where
    F: FnOnce(&'static dyn Progress) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    // 'static for the store's API; one per command, so leaking it costs nothing.
    let reporter: &'static Reporter = Box::leak(Box::new(Reporter::new(verb)));
    let out = f(reporter).await;
    reporter.finish();
    out
}

/// Runs one `image` subcommand.
pub async fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Push(a) => push(a).await,
        ImageCmd::Pull {
            id,
            dir,
            store,
            no_fsync,
        } => pull(&id, &dir, &store, no_fsync).await,
        ImageCmd::Ls { store, json } => ls(&store, json).await,
        ImageCmd::Inspect { id, store } => {
            let store = store.open()?;
            let id = snapshot_id(&id)?;
            let m = store
                .manifest(&id)
                .await
                .with_context(|| format!("cannot inspect {id}"))?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
        ImageCmd::Rm { id, store } => {
            let store = store.open()?;
            let id = snapshot_id(&id)?;
            store
                .delete(&id)
                .await
                .with_context(|| format!("cannot delete {id}"))?;
            println!("deleted {id}");
            Ok(())
        }
        ImageCmd::Gc { store, grace } => gc(&store, grace).await,
    }
}

async fn push(a: PushArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    let opts = PushOptions {
        id: a.id.as_deref().map(snapshot_id).transpose()?,
        parent: a.parent.as_deref().map(snapshot_id).transpose()?,
        labels: a.labels.into_iter().collect::<BTreeMap<_, _>>(),
        group: a.group,
        source: podsnap_store::NodeFacts {
            node_name: hostname(),
            ..Default::default()
        },
        concurrency: a.concurrency,
        ..Default::default()
    };
    let dir = a.dir;
    let report = with_progress("push", |p| store.push(&dir, opts, p))
        .await
        .with_context(|| {
            format!(
                "push of {} to {} failed",
                dir.display(),
                store.display_url()
            )
        })?;
    if a.json {
        let v = serde_json::json!({
            "id": report.id,
            "bytes_read": report.bytes_read,
            "bytes_uploaded": report.bytes_uploaded,
            "bytes_deduplicated": report.bytes_deduplicated,
            "bytes_zero": report.bytes_zero,
            "objects_written": report.objects_written,
            "files": report.manifest.files.len(),
            "store": store.display_url(),
        });
        println!("{v}");
    } else {
        eprintln!(
            "pushed {} files, read {}, uploaded {} ({} deduplicated, {} zero) to {}",
            report.manifest.files.len(),
            HumanBytes(report.bytes_read),
            HumanBytes(report.bytes_uploaded),
            HumanBytes(report.bytes_deduplicated),
            HumanBytes(report.bytes_zero),
            store.display_url()
        );
        println!("{}", report.id);
    }
    Ok(())
}

async fn pull(id: &str, dir: &Path, store: &StoreArg, no_fsync: bool) -> anyhow::Result<()> {
    let store = store.open()?;
    let id = snapshot_id(id)?;
    let opts = PullOptions { durable: !no_fsync };
    let report = with_progress("pull", |p| store.pull_with(&id, dir, p, opts))
        .await
        .with_context(|| format!("pull of {id} into {} failed", dir.display()))?;
    println!(
        "pulled {id} into {}: {} files, {} written, {} downloaded",
        dir.display(),
        report.files,
        HumanBytes(report.bytes_written),
        HumanBytes(report.bytes_downloaded)
    );
    Ok(())
}

async fn ls(store: &StoreArg, json: bool) -> anyhow::Result<()> {
    let store = store.open()?;
    let list = store
        .list()
        .await
        .with_context(|| format!("cannot list {}", store.display_url()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<34} {:<24} {:<16} {:>10} {:>5}  LABELS",
        "ID", "CREATED", "GROUP", "SIZE", "FILES"
    );
    for m in list {
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<34} {:<24} {:<16} {:>10} {:>5}  {}",
            m.id,
            m.created,
            m.group.as_deref().unwrap_or("-"),
            HumanBytes(m.totals.bytes).to_string(),
            m.files.len(),
            labels.join(",")
        );
    }
    Ok(())
}

async fn gc(store: &StoreArg, grace: Duration) -> anyhow::Result<()> {
    let store = store.open()?;
    let r = store
        .gc(grace)
        .await
        .with_context(|| format!("gc of {} failed", store.display_url()))?;
    println!(
        "gc: {} manifests, {} live objects, deleted {} objects ({}), kept {} young",
        r.manifests,
        r.live_objects,
        r.deleted_objects,
        HumanBytes(r.deleted_bytes),
        r.kept_young
    );
    if !r.broken_snapshots.is_empty() {
        bail!(
            "snapshots with unreadable indexes: {}",
            r.broken_snapshots.join(", ")
        );
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: ImageCmd,
    }

    #[test]
    fn parses_push_with_labels_and_parent() {
        let t = T::try_parse_from([
            "t",
            "push",
            "/d",
            "--store",
            "memory://",
            "--label",
            "a=b",
            "--label",
            "c=",
            "--parent",
            "p1",
            "--group",
            "g",
            "--json",
            "--concurrency",
            "16",
        ])
        .unwrap();
        match t.cmd {
            ImageCmd::Push(PushArgs {
                labels,
                parent,
                group,
                json,
                store,
                concurrency,
                ..
            }) => {
                assert_eq!(concurrency, 16);
                assert_eq!(
                    labels,
                    vec![("a".into(), "b".into()), ("c".into(), "".into())]
                );
                assert_eq!(parent.as_deref(), Some("p1"));
                assert_eq!(group.as_deref(), Some("g"));
                assert!(json);
                assert_eq!(store.url, "memory://");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            T::try_parse_from(["t", "push", "/d", "--store", "x", "--label", "nokey"]).is_err()
        );
        match T::try_parse_from(["t", "push", "/d", "--store", "x"])
            .unwrap()
            .cmd
        {
            ImageCmd::Push(a) => assert_eq!(a.concurrency, 0, "store default"),
            other => panic!("{other:?}"),
        }
        assert!(
            T::try_parse_from(["t", "push", "/d", "--store", "x", "--concurrency", "-1"]).is_err()
        );
    }

    #[test]
    fn grace_durations_parse() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[tokio::test]
    async fn push_pull_ls_rm_gc_against_a_file_store() {
        let work = tempfile_dir();
        let src = work.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("pages.img"), vec![7u8; 100_000]).unwrap();
        let url = format!("file://{}", work.join("store").display());
        let store = StoreArg {
            url: url.clone(),
            key_dir: None,
        };
        run(ImageCmd::Push(PushArgs {
            dir: src.clone(),
            store: store.clone(),
            labels: vec![("app".into(), "x".into())],
            parent: None,
            group: Some("g".into()),
            id: Some("cli-1".into()),
            json: true,
            concurrency: 1,
        }))
        .await
        .unwrap();
        let dest = work.join("out");
        run(ImageCmd::Pull {
            id: "cli-1".into(),
            dir: dest.clone(),
            store: store.clone(),
            no_fsync: false,
        })
        .await
        .unwrap();
        assert_eq!(
            std::fs::read(dest.join("pages.img")).unwrap(),
            vec![7u8; 100_000]
        );
        // The scratch pull verifies and writes the same bytes.
        let scratch = work.join("scratch");
        run(ImageCmd::Pull {
            id: "cli-1".into(),
            dir: scratch.clone(),
            store: store.clone(),
            no_fsync: true,
        })
        .await
        .unwrap();
        assert_eq!(
            std::fs::read(scratch.join("pages.img")).unwrap(),
            vec![7u8; 100_000]
        );
        let again = run(ImageCmd::Pull {
            id: "cli-1".into(),
            dir: dest.clone(),
            store: store.clone(),
            no_fsync: true,
        })
        .await
        .unwrap_err();
        assert!(
            format!("{again:#}").contains("not an empty directory"),
            "{again:#}"
        );
        run(ImageCmd::Rm {
            id: "cli-1".into(),
            store: store.clone(),
        })
        .await
        .unwrap();
        let gone = run(ImageCmd::Inspect {
            id: "cli-1".into(),
            store: store.clone(),
        })
        .await
        .unwrap_err();
        assert!(format!("{gone:#}").contains("not found"), "{gone:#}");
        run(ImageCmd::Gc {
            store,
            grace: Duration::ZERO,
        })
        .await
        .unwrap();
        let packs = std::fs::read_dir(work.join("store/packs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(packs, 0, "gc removed the deleted snapshot's packs");
        std::fs::remove_dir_all(&work).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "podsnapctl-image-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }
}
