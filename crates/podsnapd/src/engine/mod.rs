//! The node engine: checkpoint, restore, prepare-restore and compatibility, over a
//! [`SandboxRuntime`] and a [`Store`]. Domain types only; the gRPC layer converts.
//!
//! One file per flow, each an `impl Engine` block:
//!
//! - [`checkpoint`](self::checkpoint): resolve -> lock the sandbox -> job record -> runsc
//!   checkpoint into the job's work dir -> (resume: restore it in place) -> push (dedup against
//!   the group's newest snapshot) -> commit -> retention -> answer, and remove the work dir in
//!   the background.
//! - [`restore`](self::restore): manifest -> compatibility check (before any chunk is fetched)
//!   -> pull (verified) -> runsc restore -> answer, and remove the work dir in the background.
//! - [`prepare`](self::prepare): manifest -> compatibility check -> pull into
//!   `<state-dir>/prepared/` for the runsc wrapper.
//! - [`recovery`](self::recovery): at start, adopt the jobs a killed daemon left and finish or
//!   roll back each one from its typed record ([`crate::jobs::JobSpec`]).
//!
//! Shared pieces: [`locks`](self::locks) (one operation at a time per sandbox),
//! [`progress`](self::progress) (throttled progress to the job registry and the caller),
//! [`compat`](self::compat) (a snapshot's node facts against this node). Every public
//! operation runs through [`Engine::operation`]: its span, the in-flight gauge and the
//! operation's duration and outcome.

mod cached;
mod checkpoint;
mod compat;
mod locks;
mod prefetch;
mod prepare;
mod progress;
mod recovery;
mod restore;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use podsnap_cpu::CpuInfo;
use podsnap_runtime::{RuntimeInfo, SandboxRuntime, Target};
use podsnap_store::{Manifest, SnapshotId, Store};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::error::{DaemonError, Result};
use crate::jobs::{JobHandle, Jobs, Phase};
use crate::metrics::Metrics;

pub use checkpoint::{CheckpointSpec, PostAction};
pub use compat::Compat;
pub use prepare::{PrepareSpec, PreparedImage};
pub use recovery::Adopted;
pub use restore::{ContainerSpec, RestoreSpec, RestoredInfo};

use locks::Locks;

/// A progress update sent to the caller's stream.
#[derive(Clone, Debug)]
pub struct Update {
    pub job_id: String,
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

pub type Updates = mpsc::UnboundedSender<Update>;

pub struct Engine {
    cfg: Config,
    store: Store,
    runtime: Arc<dyn SandboxRuntime>,
    jobs: Jobs,
    metrics: Arc<Metrics>,
    host_cpu: Result<CpuInfo, String>,
    locks: Locks,
    /// Bounds the snapshot uploads and downloads running at once (`max_transfers`).
    transfers: Arc<tokio::sync::Semaphore>,
    /// The lazy images this node serves, one per snapshot (`restore.rs`, lazy path).
    lazy: podsnap_lazy::Registry,
    /// Snapshots' page-cache keys, for `cached_snapshots` (`cached.rs`).
    cache_keys: cached::CacheKeys,
}

/// Below the state dir, beside the work dir: the local files and mounts of lazy images. Not
/// in the work dir, which holds one directory per job and is empty when no job runs. Emptied
/// at start: the mounts a stopped daemon left are dead (their server was that process).
const LAZY_DIR: &str = "lazy";

/// The node's page cache, or `None` when it is off (`cache_max_bytes` 0) or cannot be
/// opened: the cache is best effort, a daemon without one still restores (downloading all).
fn open_cache(cfg: &Config, metrics: &Arc<Metrics>) -> Option<podsnap_store::PageCache> {
    if cfg.cache_max_bytes == 0 {
        info!("page cache off (cache_max_bytes 0)");
        return None;
    }
    match podsnap_store::PageCache::open(
        &cfg.cache_dir,
        cfg.cache_max_bytes,
        Some(metrics.cache_observer()),
    ) {
        Ok(c) => {
            metrics
                .cache_observer()
                .event(podsnap_store::CacheEvent::Bytes(c.stats().bytes));
            Some(c)
        }
        Err(e) => {
            warn!(dir = %cfg.cache_dir.display(), error = %podsnap_proto::client::error_chain(&e),
                "cannot open the page cache; restores download every page");
            None
        }
    }
}

/// Label keys and values: what Kubernetes allows, bounded.
fn validate_label(k: &str, v: &str) -> Result<()> {
    let ok = |s: &str, allow_empty: bool| {
        (allow_empty || !s.is_empty())
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    if !ok(k, false) || !ok(v, true) {
        return Err(DaemonError::InvalidArgument(format!(
            "label {k:?}={v:?}: keys and values are at most 253 characters of [A-Za-z0-9._/-]"
        )));
    }
    Ok(())
}

fn snapshot_id(s: &str) -> Result<SnapshotId> {
    SnapshotId::new(s).map_err(|e| DaemonError::InvalidArgument(e.to_string()))
}

/// The group a snapshot belongs to: the values of the `group_by` label keys, or the target.
pub fn group_key(
    labels: &BTreeMap<String, String>,
    group_by: &[String],
    target: &Target,
) -> Result<String> {
    if group_by.is_empty() {
        return Ok(match target {
            Target::Runsc { id } => id.clone(),
            Target::Containerd { namespace, id } => format!("{namespace}/{id}"),
            Target::Pod { namespace, name } => format!("{namespace}/{name}"),
        });
    }
    let mut parts = Vec::new();
    for k in group_by {
        let v = labels.get(k).ok_or_else(|| {
            DaemonError::InvalidArgument(format!(
                "group-by key {k:?} is not among the snapshot's labels"
            ))
        })?;
        parts.push(format!("{k}={v}"));
    }
    Ok(parts.join(","))
}

impl Engine {
    pub fn new(
        cfg: Config,
        store: Store,
        runtime: Arc<dyn SandboxRuntime>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Engine> {
        let max_transfers = cfg.max_transfers;
        use anyhow::Context;
        for d in [
            &cfg.state_dir,
            &cfg.work_dir,
            &cfg.logs_dir(),
            &cfg.prepared_dir(),
        ] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let jobs = Jobs::new(cfg.jobs_dir()).context("opening the job journal")?;
        // Work dirs of jobs that finished (or never got a record) are leftovers of a crash;
        // those of unfinished jobs stay for recovery. This runs before anything is served.
        // Lazy image mounts an earlier run left are dead (their server was that process):
        // unmount them first, or their directories cannot be removed.
        let lazy_dir = cfg.state_dir.join(LAZY_DIR);
        let stale = podsnap_lazy::unmount_stale(&cfg.work_dir)
            + podsnap_lazy::unmount_stale(&lazy_dir)
            + podsnap_lazy::unmount_stale(&cfg.prepared_dir());
        if let Ok(rd) = std::fs::read_dir(&lazy_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        if stale > 0 {
            warn!(
                mounts = stale,
                "unmounted lazy image mounts a stopped podsnapd left"
            );
        }
        let pending: std::collections::HashSet<String> = jobs
            .unfinished_on_disk()
            .into_iter()
            .map(|j| j.id)
            .collect();
        if let Ok(rd) = std::fs::read_dir(&cfg.work_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !pending.contains(&name) {
                    info!(dir = %e.path().display(), "removing a work dir no unfinished job owns");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let store = store.with_cache(open_cache(&cfg, &metrics));
        let lazy = podsnap_lazy::Registry::new(store.clone(), lazy_dir);
        let host_cpu = podsnap_cpu::host().map_err(|e| e.to_string());
        if let Err(e) = &host_cpu {
            warn!(error = %e, "cannot read this host's CPU feature set; compatibility checks will refuse");
        }
        Ok(Engine {
            cfg,
            store,
            runtime,
            jobs,
            metrics,
            host_cpu,
            locks: Locks::default(),
            transfers: Arc::new(tokio::sync::Semaphore::new(max_transfers)),
            lazy,
            cache_keys: Default::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn host_cpu(&self) -> Result<&CpuInfo> {
        self.host_cpu
            .as_ref()
            .map_err(|e| DaemonError::Internal(format!("this host's CPU feature set: {e}")))
    }

    pub async fn runtime_info(&self) -> Result<RuntimeInfo> {
        Ok(self.runtime.info().await?)
    }

    /// Runs one operation (`checkpoint`, `restore`, `prepare-restore`) in `span`, counted in
    /// the in-flight gauge while it runs and recorded with its duration and outcome.
    async fn operation<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let _inflight = self.metrics.in_flight(op);
        let res = work.instrument(span).await;
        self.metrics
            .operation(op, started.elapsed(), res.as_ref().err());
        res
    }

    /// Removes a job's work dir in the background, after the caller has its answer: freeing
    /// a checkpoint image of several hundred MiB takes the filesystem a noticeable time
    /// (0.2-0.5 s for 450 MiB on ext4), which would otherwise be added to every checkpoint
    /// and restore. Only finished jobs' dirs are removed this way; if the daemon stops first,
    /// the next start removes every work dir that no unfinished job owns.
    fn remove_work_dir_later(&self, job_id: &str) {
        remove_dir_later(self.work_dir(job_id));
    }

    /// Takes the outcome of a runsc operation that an earlier run of the daemon started as a
    /// durable job in `dir` (runsc ran in its own session and outlived that daemon): waits for
    /// it if it still runs. `Ok(false)` when no such operation was started.
    async fn await_earlier_runsc(&self, dir: &Path) -> Result<bool> {
        Ok(self
            .runtime
            .await_earlier(dir, Some(self.cfg.runsc_timeout))
            .await?)
    }

    /// One of the `max_transfers` slots for an upload or download; says so when it waits.
    async fn transfer_slot(
        &self,
        job: &JobHandle,
        tx: &Option<Updates>,
        phase: Phase,
    ) -> tokio::sync::OwnedSemaphorePermit {
        if let Ok(p) = self.transfers.clone().try_acquire_owned() {
            return p;
        }
        progress::phase_update(job, tx, phase, "waiting for a transfer slot");
        self.transfers
            .clone()
            .acquire_owned()
            .await
            .expect("the transfer semaphore is never closed")
    }

    /// A job's work dir, `<work-dir>/<job>`.
    fn work_dir(&self, job_id: &str) -> PathBuf {
        self.cfg.work_dir.join(job_id)
    }

    pub async fn list(
        &self,
        group: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Manifest>> {
        let all = self.store.list().await?;
        Ok(all
            .into_iter()
            .filter(|m| group.is_empty() || m.group.as_deref() == Some(group))
            .filter(|m| labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)))
            .collect())
    }

    pub async fn get(&self, snapshot: &str) -> Result<Manifest> {
        Ok(self.store.manifest(&snapshot_id(snapshot)?).await?)
    }

    pub async fn delete(&self, snapshot: &str) -> Result<()> {
        Ok(self.store.delete(&snapshot_id(snapshot)?).await?)
    }
}

/// Removes a directory (a job's work dir, a lazy image's mount point) in the background.
fn remove_dir_later(dir: PathBuf) {
    if !dir.exists() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %dir.display(), error = %e, "could not remove a directory");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_key_uses_the_named_label_values_in_order() {
        let labels: BTreeMap<_, _> = [("app", "web"), ("tier", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let t = Target::Runsc { id: "c1".into() };
        assert_eq!(
            group_key(&labels, &["tier".into(), "app".into()], &t).unwrap(),
            "tier=a,app=web"
        );
        assert_eq!(group_key(&labels, &[], &t).unwrap(), "c1");
        let err = group_key(&labels, &["missing".into()], &t).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn labels_are_validated() {
        assert!(validate_label("app", "web-1").is_ok());
        assert!(validate_label("", "x").is_err());
        assert!(validate_label("a b", "x").is_err());
        assert!(validate_label("k", &"v".repeat(300)).is_err());
    }
}
