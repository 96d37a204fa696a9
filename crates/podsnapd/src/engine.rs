//! The node engine: checkpoint, restore, prepare-restore and compatibility, over a
//! [`SandboxRuntime`] and a [`Store`]. Domain types only; the gRPC layer converts.
//!
//! Checkpoint: resolve -> lock the sandbox -> job record -> runsc checkpoint into the job's
//! work dir -> (resume: restore it in place) -> push (dedup against the group's newest
//! snapshot) -> commit -> retention -> answer, and remove the work dir in the background.
//! Restore: manifest -> compatibility check (before any chunk is fetched) -> pull (verified)
//! -> runsc restore -> answer, and remove the work dir in the background.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podsnap_cpu::CpuInfo;
use podsnap_runtime::{
    CheckpointOpts, RestoreRequest, RuntimeError, RuntimeInfo, Sandbox, SandboxKind,
    SandboxRuntime, Status, Target,
};
use podsnap_store::{
    Manifest, NodeFacts, Progress, ProgressEvent, PullOptions, PushOptions, SnapshotId, Store,
};
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Config;
use crate::error::{DaemonError, Result};
use crate::jobs::{JobHandle, JobKind, JobRecord, Jobs, Phase};
use crate::metrics::Metrics;

/// What to do with the sandbox after its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PostAction {
    #[default]
    Resume,
    Stop,
}

#[derive(Clone, Debug, Default)]
pub struct CheckpointSpec {
    pub target: Option<Target>,
    pub labels: BTreeMap<String, String>,
    pub group_by: Vec<String>,
    pub keep: u32,
    pub post: PostAction,
    pub parent: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct RestoreSpec {
    pub snapshot: String,
    pub bundle: PathBuf,
    pub container_id: String,
    pub log: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct RestoredInfo {
    pub container_id: String,
    pub snapshot: String,
    pub pid: i32,
    pub log: PathBuf,
}

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

/// The verdict of a compatibility check.
#[derive(Clone, Debug, Default)]
pub struct Compat {
    pub missing_features: Vec<String>,
    pub snapshot_cache_line: u32,
    pub node_cache_line: u32,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Compat {
    pub fn compatible(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A job an earlier run of the daemon left unfinished, adopted by this run, with its
/// sandbox's lock held until [`Engine::recover`] is done with it.
pub struct Adopted {
    pub job: JobHandle,
    pub rec: JobRecord,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Per-sandbox locks: one operation at a time per sandbox, many sandboxes at once.
#[derive(Default)]
pub struct Locks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut g = self.map.lock().expect("locks");
            g.retain(|_, v| Arc::strong_count(v) > 1);
            g.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}

pub struct Engine {
    pub cfg: Config,
    pub store: Store,
    pub runtime: Arc<dyn SandboxRuntime>,
    pub jobs: Jobs,
    pub metrics: Arc<Metrics>,
    host_cpu: Result<CpuInfo, String>,
    locks: Locks,
    /// Bounds the snapshot uploads and downloads running at once (`max_transfers`).
    transfers: Arc<tokio::sync::Semaphore>,
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

/// Sends progress to the job registry and the caller, throttled.
struct JobProgress {
    job: JobHandle,
    tx: Option<Updates>,
    phase: Phase,
    done: AtomicU64,
    total: AtomicU64,
    last: Mutex<Instant>,
    metrics: Arc<Metrics>,
}

impl JobProgress {
    fn new(job: &JobHandle, tx: Option<Updates>, phase: Phase, metrics: Arc<Metrics>) -> Self {
        JobProgress {
            job: job.clone(),
            tx,
            phase,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            metrics,
        }
    }

    fn send(&self, force: bool) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().expect("progress");
            if !force && now.duration_since(*last).as_millis() < 250 {
                return;
            }
            *last = now;
        }
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        self.job.progress(done, total);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Update {
                job_id: self.job.id.clone(),
                phase: self.phase,
                done,
                total,
                message: String::new(),
            });
        }
    }
}

impl Progress for JobProgress {
    fn event(&self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::Started { total_bytes } => {
                self.total.store(total_bytes, Ordering::Relaxed);
                self.send(true);
            }
            ProgressEvent::BytesRead(n) => {
                self.metrics.bytes("read", n);
                self.done.fetch_add(n, Ordering::Relaxed);
                self.send(false);
            }
            ProgressEvent::BytesWritten(n) => {
                self.done.fetch_add(n, Ordering::Relaxed);
                self.send(false);
            }
            ProgressEvent::BytesUploaded(n) => self.metrics.bytes("uploaded", n),
            ProgressEvent::BytesDownloaded(n) => self.metrics.bytes("downloaded", n),
            ProgressEvent::Committing => self.send(true),
            _ => {}
        }
    }
}

fn phase_update(job: &JobHandle, tx: &Option<Updates>, phase: Phase, message: &str) {
    job.phase(phase);
    if let Some(tx) = tx {
        let _ = tx.send(Update {
            job_id: job.id.clone(),
            phase,
            done: 0,
            total: 0,
            message: message.to_string(),
        });
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> DaemonError {
    DaemonError::Internal(format!("{what} {}: {e}", p.display()))
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
        })
    }

    pub fn host_cpu(&self) -> Result<&CpuInfo> {
        self.host_cpu
            .as_ref()
            .map_err(|e| DaemonError::Internal(format!("this host's CPU feature set: {e}")))
    }

    pub async fn runtime_info(&self) -> Result<RuntimeInfo> {
        Ok(self.runtime.info().await?)
    }

    fn lock_key(root: &Path, id: &str) -> String {
        format!("{}\0{id}", root.display())
    }

    /// The CPU features the sandbox saw: the host's, narrowed by the gVisor allow-list
    /// annotation when this runsc honours it.
    fn sandbox_cpu(&self, sb: &Sandbox, info: &RuntimeInfo) -> Option<CpuInfo> {
        let host = self.host_cpu.as_ref().ok()?.clone();
        match sb.annotations.get(podsnap_cpu::CPUFEATURES_ANNOTATION) {
            Some(list) if info.capabilities.cpu_features_command => {
                match podsnap_cpu::apply_allow_list(&host, list) {
                    Ok(narrowed) => Some(narrowed),
                    Err(e) => {
                        warn!(error = %e, "ignoring the sandbox's CPU feature allow-list");
                        Some(host)
                    }
                }
            }
            _ => Some(host),
        }
    }

    /// Checkpoints a sandbox into the store. Runs to completion even if the caller goes away.
    pub async fn checkpoint(
        self: Arc<Self>,
        spec: CheckpointSpec,
        tx: Option<Updates>,
    ) -> Result<Manifest> {
        let target = spec
            .target
            .clone()
            .ok_or_else(|| DaemonError::InvalidArgument("a checkpoint needs a target".into()))?;
        if spec.labels.len() > 64 {
            return Err(DaemonError::InvalidArgument(
                "at most 64 labels per snapshot".into(),
            ));
        }
        for (k, v) in &spec.labels {
            validate_label(k, v)?;
        }
        let group = group_key(&spec.labels, &spec.group_by, &target)?;
        let parent = spec.parent.as_deref().map(snapshot_id).transpose()?;
        let started = Instant::now();
        let _inflight = self.metrics.in_flight("checkpoint");
        let span = info_span!("checkpoint", target = %target, group = %group, snapshot = tracing::field::Empty);
        let res = self
            .clone()
            .checkpoint_inner(spec, target, group, parent, tx)
            .instrument(span)
            .await;
        self.metrics
            .operation("checkpoint", started.elapsed(), res.as_ref().err());
        res
    }

    async fn checkpoint_inner(
        self: Arc<Self>,
        spec: CheckpointSpec,
        target: Target,
        group: String,
        parent: Option<SnapshotId>,
        tx: Option<Updates>,
    ) -> Result<Manifest> {
        let info = self.runtime.info().await?;
        let sb = self.runtime.resolve(&target).await?;
        let containerd = matches!(sb.kind, SandboxKind::Containerd { .. });
        // Decide how to honour `resume` before touching the sandbox.
        let release = info.version.release_date.unwrap_or(0);
        let leave_running_works = info.capabilities.leave_running && release > 20221219;
        if spec.post == PostAction::Resume && containerd && !leave_running_works {
            return Err(DaemonError::Unsupported(format!(
                "post-checkpoint resume is not available for containerd-managed sandboxes with runsc {} (--leave-running hangs under containerd on this release); use --stop",
                info.version.version
            )));
        }
        let _guard = self
            .locks
            .lock(&Self::lock_key(&sb.root, &sb.container_id))
            .await;
        let job = self
            .jobs
            .start(
                JobKind::Checkpoint,
                target.to_string(),
                None,
                serde_json::json!({
                    "sandbox": sb,
                    "group": group,
                    "labels": spec.labels,
                    "keep": spec.keep,
                    "resume": spec.post == PostAction::Resume,
                    "parent": parent,
                    "leave_running": spec.post == PostAction::Resume && leave_running_works,
                }),
            )
            .map_err(|e| DaemonError::Internal(format!("writing the job record: {e}")))?;
        let res = self.clone().run_checkpoint(&job, &info, &tx).await;
        job.finish(res.as_ref().err().map(|e| e.to_string()));
        if res.is_ok() {
            // The image is in the store: the work dir goes.
            self.remove_work_dir_later(&job.id);
        }
        res
    }

    /// Removes a job's work dir in the background, after the caller has its answer: freeing
    /// a checkpoint image of several hundred MiB takes the filesystem a noticeable time
    /// (0.2-0.5 s for 450 MiB on ext4), which would otherwise be added to every checkpoint
    /// and restore. Only finished jobs' dirs are removed this way; if the daemon stops first,
    /// the next start removes every work dir that no unfinished job owns.
    fn remove_work_dir_later(&self, job_id: &str) {
        let dir = self.cfg.work_dir.join(job_id);
        if !dir.exists() {
            return;
        }
        tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(dir = %dir.display(), error = %e, "could not remove a work dir");
                }
            }
        });
    }

    /// Runs (or, after a restart, resumes) a checkpoint job from its durable record: each
    /// stage records its completion, and a re-run skips what is done.
    async fn run_checkpoint(
        self: Arc<Self>,
        job: &JobHandle,
        info: &RuntimeInfo,
        tx: &Option<Updates>,
    ) -> Result<Manifest> {
        let rec = job
            .record()
            .ok_or_else(|| DaemonError::Internal(format!("job {} vanished", job.id)))?;
        let d = &rec.details;
        let field = |k: &str| d.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let flag = |k: &str| field(k).as_bool().unwrap_or(false);
        let bad =
            |k: &str| DaemonError::Internal(format!("job {} record lacks a valid {k:?}", job.id));
        let sb: Sandbox = serde_json::from_value(field("sandbox")).map_err(|_| bad("sandbox"))?;
        let group: String = serde_json::from_value(field("group")).map_err(|_| bad("group"))?;
        let labels: BTreeMap<String, String> =
            serde_json::from_value(field("labels")).unwrap_or_default();
        let parent: Option<SnapshotId> = serde_json::from_value(field("parent")).unwrap_or(None);
        let keep = field("keep").as_u64().unwrap_or(0);
        let resume = flag("resume");
        let leave_running = flag("leave_running");

        let work = self.cfg.work_dir.join(&job.id);
        let image_dir = work.join("image");
        let runsc_job = job.dir().join("runsc-checkpoint");
        if !flag("checkpointed") {
            phase_update(job, tx, Phase::Checkpointing, "runsc checkpoint");
            let t = Instant::now();
            if !self.await_earlier_runsc(&runsc_job).await? {
                std::fs::create_dir_all(&image_dir)
                    .map_err(|e| io_err("creating", &image_dir, e))?;
                self.runtime
                    .checkpoint(
                        &sb,
                        &image_dir,
                        &CheckpointOpts {
                            leave_running,
                            job_dir: Some(runsc_job.clone()),
                            timeout: Some(self.cfg.runsc_timeout),
                        },
                    )
                    .await?;
            }
            self.metrics
                .phase("checkpoint", "runsc_checkpoint", t.elapsed());
            job.set_details("checkpointed", serde_json::json!(true));
        }

        if resume && !leave_running && !flag("resumed") {
            // runsc stopped the sandbox: bring it back under the same id from the local image.
            phase_update(job, tx, Phase::Resuming, "restoring the sandbox in place");
            self.resume_in_place(job, &sb, &image_dir).await?;
        }

        let id = match rec.snapshot_id.as_deref() {
            Some(s) => snapshot_id(s)?,
            None => {
                let id = SnapshotId::generate();
                job.set_snapshot(id.as_str());
                id
            }
        };
        tracing::Span::current().record("snapshot", id.as_str());
        // Committed before a crash: nothing left to push.
        let manifest = match self.store.manifest(&id).await {
            Ok(m) => m,
            Err(podsnap_store::StoreError::SnapshotNotFound(_)) => {
                self.clone()
                    .push_image(
                        job,
                        &sb,
                        info,
                        &image_dir,
                        id,
                        labels,
                        group.clone(),
                        parent,
                        tx,
                    )
                    .await?
            }
            Err(e) => return Err(e.into()),
        };

        if keep > 0 {
            phase_update(job, tx, Phase::Retention, "applying retention");
            let t = Instant::now();
            match self.store.retain(&group, keep as usize).await {
                Ok(deleted) if !deleted.is_empty() => {
                    info!(group = %group, deleted = deleted.len(), "retention removed old snapshots")
                }
                Ok(_) => {}
                // The snapshot is committed; a failed retention is retried by the next one.
                Err(e) => warn!(group = %group, error = %e, "retention failed"),
            }
            self.metrics.phase("checkpoint", "retention", t.elapsed());
        }
        phase_update(job, tx, Phase::Done, "done");
        Ok(manifest)
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_image(
        self: Arc<Self>,
        job: &JobHandle,
        sb: &Sandbox,
        info: &RuntimeInfo,
        image_dir: &Path,
        id: SnapshotId,
        labels: BTreeMap<String, String>,
        group: String,
        parent: Option<SnapshotId>,
        tx: &Option<Updates>,
    ) -> Result<Manifest> {
        let cpu = self.sandbox_cpu(sb, info);
        let runsc_metadata = podsnap_runtime::read_image_dir_header(image_dir)
            .map(|h| h.metadata)
            .map_err(|e| {
                DaemonError::Internal(format!(
                    "runsc wrote an image without a valid header in {}: {e}",
                    image_dir.display()
                ))
            })?;
        let mut extra = BTreeMap::new();
        extra.insert("container_id".to_string(), sb.container_id.clone());
        if let SandboxKind::Containerd {
            namespace,
            container,
            pod,
            ..
        } = &sb.kind
        {
            extra.insert("containerd_namespace".into(), namespace.clone());
            extra.insert("containerd_container".into(), container.clone());
            if let Some(p) = pod {
                if let (Some(ns), Some(name)) = (&p.namespace, &p.name) {
                    extra.insert("pod".into(), format!("{ns}/{name}"));
                }
            }
        }
        let source = NodeFacts {
            node_name: self.cfg.node_name.clone(),
            cpu,
            runsc_version: Some(info.version.version.clone()),
            platform: Some(info.platform.clone()),
            rootfs_overlay: sb
                .rootfs_in_memory()
                .then(|| format!("{:?}", sb.rootfs_overlay).to_lowercase()),
            extra,
        };
        let parent = match parent {
            Some(p) => Some(p),
            None => self
                .store
                .latest_in_group(&group)
                .await
                .ok()
                .flatten()
                .map(|m| m.id),
        };

        let _slot = self.transfer_slot(job, tx, Phase::Uploading).await;
        phase_update(job, tx, Phase::Uploading, "uploading");
        let t = Instant::now();
        let progress = JobProgress::new(job, tx.clone(), Phase::Uploading, self.metrics.clone());
        let report = self
            .store
            .push(
                image_dir,
                PushOptions {
                    id: Some(id),
                    labels,
                    group: Some(group),
                    parent,
                    dedup_from: Vec::new(),
                    source,
                    runsc_metadata,
                    sandbox: None,
                    concurrency: self.cfg.concurrency,
                },
                &progress,
            )
            .await?;
        self.metrics.phase("checkpoint", "upload", t.elapsed());
        self.metrics
            .bytes("deduplicated", report.bytes_deduplicated);
        self.metrics.objects_written(report.objects_written);
        info!(snapshot = %report.id, bytes_read = report.bytes_read, bytes_uploaded = report.bytes_uploaded, "snapshot committed");
        Ok(report.manifest)
    }

    /// Takes the jobs an earlier run of the daemon left unfinished into this run's job list,
    /// for [`Engine::recover`], and locks their sandboxes: a new call for one of them waits
    /// until its interrupted job has been finished or rolled back (a rollback must not
    /// delete a container that a newer restore created).
    pub async fn adopt_unfinished(&self) -> Vec<Adopted> {
        let mut out = Vec::new();
        for rec in self.jobs.unfinished_on_disk() {
            let guard = self.lock_for_recovery(&rec).await;
            out.push(Adopted {
                job: self.jobs.adopt(rec.clone()),
                rec,
                guard,
            });
        }
        out
    }

    /// The lock of the sandbox an unfinished job worked on; `None` when the record does not
    /// name one (such a job fails in recovery before touching anything) or, for a restore,
    /// the runtime cannot say its root yet.
    async fn lock_for_recovery(&self, rec: &JobRecord) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let key = match rec.kind {
            JobKind::Checkpoint => {
                let sb: Sandbox = serde_json::from_value(rec.details["sandbox"].clone()).ok()?;
                Self::lock_key(&sb.root, &sb.container_id)
            }
            JobKind::Restore => {
                let id = rec.details["container_id"].as_str()?;
                Self::lock_key(&self.runtime.info().await.ok()?.root, id)
            }
            JobKind::PrepareRestore => return None,
        };
        Some(self.locks.lock(&key).await)
    }

    /// Finishes or rolls back the jobs an earlier run of the daemon left unfinished.
    /// Checkpoints are carried to the end (the image is uploaded and committed, the sandbox
    /// resumed if that was asked); restores are finished or rolled back (`recover_restore`);
    /// prepared restores are reported failed. Work dirs are removed.
    ///
    /// Call [`Engine::adopt_unfinished`] first, before serving, so that the jobs are listed
    /// (unfinished) from the first call on.
    pub async fn recover(self: Arc<Self>, pending: Vec<Adopted>) {
        if pending.is_empty() {
            return;
        }
        info!(
            jobs = pending.len(),
            "recovering jobs left by an earlier run"
        );
        for Adopted { job, rec, guard } in pending {
            let span = info_span!("recover", job = %rec.id, kind = rec.kind.as_str(), target = %rec.target);
            let res = async {
                // Held since adoption; taken now if the runtime could not be asked then.
                let _guard = match guard {
                    Some(g) => Some(g),
                    None => self.lock_for_recovery(&rec).await,
                };
                match rec.kind {
                    JobKind::Checkpoint => {
                        // run_checkpoint reads the sandbox from the record too.
                        serde_json::from_value::<Sandbox>(rec.details["sandbox"].clone()).map_err(
                            |_| DaemonError::Internal("job record lacks the sandbox".into()),
                        )?;
                        let info = self.runtime.info().await?;
                        self.clone()
                            .run_checkpoint(&job, &info, &None)
                            .await
                            .map(|m| {
                                info!(snapshot = %m.id, "checkpoint finished after restart");
                            })
                    }
                    JobKind::Restore => self.recover_restore(&job, &rec).await,
                    JobKind::PrepareRestore => Err(DaemonError::Unavailable(format!(
                        "podsnapd restarted during {} in phase {:?}; retry it",
                        rec.kind.as_str(),
                        rec.phase
                    ))),
                }
            }
            .instrument(span)
            .await;
            if let Err(e) = &res {
                warn!(job = %rec.id, error = %e, "job could not be finished after restart");
            }
            job.finish(res.err().map(|e| e.to_string()));
            // A finished checkpoint's image is in the store; a failed one keeps its image for
            // a retry only if runsc produced one.
            let work = self.cfg.work_dir.join(&rec.id);
            let keep_image = rec.kind == JobKind::Checkpoint
                && job.record().map(|r| r.error.is_some()).unwrap_or(false)
                && work.join("image/checkpoint.img").exists();
            if !keep_image {
                let _ = std::fs::remove_dir_all(&work);
            }
        }
        // Half-written prepared restores (a pull writes into a hidden sibling first).
        if let Ok(rd) = std::fs::read_dir(self.cfg.prepared_dir()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Takes the outcome of a runsc operation that an earlier run of the daemon started as a
    /// durable job in `dir` (runsc ran in its own session and outlived that daemon): waits for
    /// it if it still runs. `Ok(false)` when no such operation was started.
    async fn await_earlier_runsc(&self, dir: &Path) -> Result<bool> {
        let found = podsnap_runtime::runsc::job::DurableJob::find(dir, Duration::from_secs(5))
            .await
            .map_err(RuntimeError::from)?;
        let Some(mut dj) = found else {
            return Ok(false);
        };
        dj.wait(Some(self.cfg.runsc_timeout))
            .await
            .and_then(|o| o.into_result())
            .map_err(RuntimeError::from)?;
        Ok(true)
    }

    /// Finishes or rolls back a restore that a killed daemon left: if runsc restore had been
    /// started, its outcome decides (a failed or unknown one leaves no container behind);
    /// if not, nothing was restored and the job fails asking for a retry.
    /// The caller holds the container's lock ([`Engine::lock_for_recovery`]).
    async fn recover_restore(&self, job: &JobHandle, rec: &JobRecord) -> Result<()> {
        let container_id = rec.details["container_id"]
            .as_str()
            .ok_or_else(|| DaemonError::Internal("job record lacks the container id".into()))?
            .to_string();
        let outcome = self
            .await_earlier_runsc(&job.dir().join("runsc-restore"))
            .await;
        let outcome = match outcome {
            Ok(true) => match self.runtime.state(None, &container_id).await {
                Ok(st) if st.status == Status::Running => {
                    info!(container = %container_id, "restore finished after restart");
                    return Ok(());
                }
                Ok(st) => Err(DaemonError::Internal(format!(
                    "runsc restore of {container_id} succeeded but the container is {:?}",
                    st.status
                ))),
                Err(e) => Err(e.into()),
            },
            Ok(false) => {
                return Err(DaemonError::Unavailable(format!(
                    "podsnapd restarted during restore in phase {:?}, before runsc restore \
                     ran: nothing was restored; retry it",
                    rec.phase
                )))
            }
            Err(e) => Err(e),
        };
        // runsc restore failed, or left something that is not a running sandbox: remove it so
        // that a retry under the same id can succeed.
        match self.runtime.delete(None, &container_id, true).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => {
                warn!(container = %container_id, error = %e, "cannot remove a failed restore")
            }
        }
        outcome
    }

    async fn resume_in_place(&self, job: &JobHandle, sb: &Sandbox, image_dir: &Path) -> Result<()> {
        let runsc_job = job.dir().join("runsc-resume");
        if self.await_earlier_runsc(&runsc_job).await? {
            job.set_details("resumed", serde_json::json!(true));
            return Ok(());
        }
        // runsc refuses to restore over an existing (stopped) container record.
        if let Err(e) = self
            .runtime
            .delete(Some(&sb.root), &sb.container_id, true)
            .await
        {
            if !matches!(e, RuntimeError::NotFound { .. }) {
                return Err(e.into());
            }
        }
        let log = self.cfg.logs_dir().join(format!("{}.log", sb.container_id));
        let t = Instant::now();
        self.runtime
            .restore(&RestoreRequest {
                containers: Vec::new(),
                id: sb.container_id.clone(),
                bundle: sb.bundle.clone(),
                image_dir: image_dir.to_path_buf(),
                log_file: Some(log),
                root: Some(sb.root.clone()),
                job_dir: Some(runsc_job),
                pid_file: None,
                timeout: Some(self.cfg.runsc_timeout),
            })
            .await?;
        self.metrics
            .phase("checkpoint", "runsc_restore", t.elapsed());
        job.set_details("resumed", serde_json::json!(true));
        Ok(())
    }

    /// Compares a snapshot's recorded node facts with this node.
    pub async fn compat_of(&self, m: &Manifest) -> Compat {
        let mut c = Compat::default();
        match (&m.source.cpu, self.host_cpu.as_ref()) {
            (Some(saved), Ok(host)) => {
                c.snapshot_cache_line = saved.cache_line_size;
                c.node_cache_line = host.cache_line_size;
                if let Err(inc) = podsnap_cpu::check(saved, host) {
                    c.missing_features = inc.missing.clone();
                    c.problems.push(inc.to_string());
                }
            }
            (Some(_), Err(e)) => c
                .problems
                .push(format!("cannot read this node's CPU feature set: {e}")),
            (None, _) => c.warnings.push(
                "the snapshot records no CPU feature set; compatibility cannot be checked".into(),
            ),
        }
        if let (Some(theirs), Ok(info)) = (&m.source.runsc_version, self.runtime.info().await) {
            if *theirs != info.version.version {
                let msg = format!(
                    "snapshot taken with runsc {theirs}, this node runs {}",
                    info.version.version
                );
                // Releases after 20221219 refuse images from another runsc version.
                if info.version.release_date.unwrap_or(0) > 20221219 {
                    c.problems.push(msg);
                } else {
                    c.warnings.push(msg);
                }
            }
        }
        if m.source.rootfs_overlay.is_none()
            && !m.source.node_name.is_empty()
            && m.source.node_name != self.cfg.node_name
        {
            c.warnings.push(format!(
                "the container's filesystem writes stayed on node {} (no rootfs overlay); a restore here will not see them",
                m.source.node_name
            ));
        }
        c
    }

    pub async fn check_compatibility(&self, snapshot: &str) -> Result<(Manifest, Compat)> {
        let id = snapshot_id(snapshot)?;
        let m = self.store.manifest(&id).await?;
        let c = self.compat_of(&m).await;
        Ok((m, c))
    }

    /// Fails with the list of reasons when the snapshot cannot run here; nothing is fetched
    /// but the manifest.
    async fn require_compatible(&self, m: &Manifest) -> Result<Compat> {
        let c = self.compat_of(m).await;
        for w in &c.warnings {
            warn!(snapshot = %m.id, "{w}");
        }
        if !c.compatible() {
            let reason = if c.missing_features.is_empty() {
                "other"
            } else {
                "cpu_features"
            };
            self.metrics.refusal(reason);
            return Err(DaemonError::Incompatible(format!(
                "snapshot {} cannot be restored on node {}: {}",
                m.id,
                self.cfg.node_name,
                c.problems.join("; ")
            )));
        }
        Ok(c)
    }

    /// Fetches and verifies a snapshot into `dest` (which must not exist).
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
        phase_update(job, tx, phase, "waiting for a transfer slot");
        self.transfers
            .clone()
            .acquire_owned()
            .await
            .expect("the transfer semaphore is never closed")
    }

    async fn fetch(
        &self,
        job: &JobHandle,
        m: &Manifest,
        dest: &Path,
        op: &str,
        tx: &Option<Updates>,
    ) -> Result<()> {
        let _slot = self.transfer_slot(job, tx, Phase::Downloading).await;
        phase_update(job, tx, Phase::Downloading, "downloading");
        let t = Instant::now();
        let progress = JobProgress::new(job, tx.clone(), Phase::Downloading, self.metrics.clone());
        // A standalone restore's image is read by runsc right away and removed afterwards
        // (also after a crash): no fsync. A prepared image waits for the runsc wrapper and
        // may be reused by a retried create, so it must survive a power loss intact.
        let opts = PullOptions {
            durable: op != "restore",
        };
        self.store.pull_with(&m.id, dest, &progress, opts).await?;
        self.metrics.phase(op, "download", t.elapsed());
        Ok(())
    }

    /// Standalone restore under the daemon's runsc root.
    pub async fn restore(
        self: Arc<Self>,
        spec: RestoreSpec,
        tx: Option<Updates>,
    ) -> Result<RestoredInfo> {
        let started = Instant::now();
        let _inflight = self.metrics.in_flight("restore");
        let span = info_span!("restore", snapshot = %spec.snapshot, container = %spec.container_id);
        let res = self.clone().restore_inner(spec, tx).instrument(span).await;
        self.metrics
            .operation("restore", started.elapsed(), res.as_ref().err());
        res
    }

    async fn restore_inner(
        self: Arc<Self>,
        spec: RestoreSpec,
        tx: Option<Updates>,
    ) -> Result<RestoredInfo> {
        let id = snapshot_id(&spec.snapshot)?;
        if spec.container_id.is_empty() {
            return Err(DaemonError::InvalidArgument(
                "a restore needs a new container id".into(),
            ));
        }
        if !spec.bundle.is_absolute() || !spec.bundle.join("config.json").is_file() {
            return Err(DaemonError::InvalidArgument(format!(
                "bundle {} must be an absolute path to a directory holding config.json",
                spec.bundle.display()
            )));
        }
        let root = self.runtime.info().await?.root;
        let _guard = self
            .locks
            .lock(&Self::lock_key(&root, &spec.container_id))
            .await;
        match self.runtime.state(None, &spec.container_id).await {
            Ok(_) => {
                return Err(DaemonError::AlreadyExists(format!(
                    "container {} already exists under {}",
                    spec.container_id,
                    root.display()
                )))
            }
            Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let job = self
            .jobs
            .start(
                JobKind::Restore,
                spec.container_id.clone(),
                Some(id.to_string()),
                serde_json::json!({"bundle": spec.bundle, "container_id": spec.container_id}),
            )
            .map_err(|e| DaemonError::Internal(format!("writing the job record: {e}")))?;
        let res = self.run_restore(&job, &spec, &id, &tx).await;
        job.finish(res.as_ref().err().map(|e| e.to_string()));
        // runsc has read the image (or failed): the local copy goes.
        self.remove_work_dir_later(&job.id);
        res
    }

    async fn run_restore(
        &self,
        job: &JobHandle,
        spec: &RestoreSpec,
        id: &SnapshotId,
        tx: &Option<Updates>,
    ) -> Result<RestoredInfo> {
        phase_update(job, tx, Phase::Checking, "checking compatibility");
        let m = self.store.manifest(id).await?;
        self.require_compatible(&m).await?;
        let work = self.cfg.work_dir.join(&job.id);
        std::fs::create_dir_all(&work).map_err(|e| io_err("creating", &work, e))?;
        let image_dir = work.join("image");
        self.fetch(job, &m, &image_dir, "restore", tx).await?;

        phase_update(job, tx, Phase::Restoring, "runsc restore");
        let log = spec.log.clone().unwrap_or_else(|| {
            self.cfg
                .logs_dir()
                .join(format!("{}.log", spec.container_id))
        });
        let t = Instant::now();
        let restored = self
            .runtime
            .restore(&RestoreRequest {
                containers: Vec::new(),
                id: spec.container_id.clone(),
                bundle: spec.bundle.clone(),
                image_dir: image_dir.clone(),
                log_file: Some(log.clone()),
                root: None,
                job_dir: Some(job.dir().join("runsc-restore")),
                pid_file: None,
                timeout: Some(self.cfg.runsc_timeout),
            })
            .await?;
        self.metrics.phase("restore", "runsc_restore", t.elapsed());
        phase_update(job, tx, Phase::Done, "done");
        info!(pid = ?restored.pid, "sandbox restored");
        Ok(RestoredInfo {
            container_id: restored.id,
            snapshot: id.to_string(),
            pid: restored.pid.unwrap_or(0),
            log,
        })
    }

    /// Fetches, verifies and checks a snapshot for the runsc wrapper; returns the local image
    /// directory (under `<state-dir>/prepared/`).
    pub async fn prepare_restore(
        self: Arc<Self>,
        snapshot: String,
        container_id: String,
    ) -> Result<(Manifest, PathBuf)> {
        let started = Instant::now();
        let _inflight = self.metrics.in_flight("prepare-restore");
        let span = info_span!("prepare-restore", snapshot = %snapshot, container = %container_id);
        let res = self
            .clone()
            .prepare_inner(snapshot, container_id)
            .instrument(span)
            .await;
        self.metrics
            .operation("prepare-restore", started.elapsed(), res.as_ref().err());
        res
    }

    async fn prepare_inner(
        self: Arc<Self>,
        snapshot: String,
        container_id: String,
    ) -> Result<(Manifest, PathBuf)> {
        let id = snapshot_id(&snapshot)?;
        if !container_id.is_empty()
            && !container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(DaemonError::InvalidArgument(format!(
                "container id {container_id:?} must be [A-Za-z0-9_.-]"
            )));
        }
        let m = self.store.manifest(&id).await?;
        self.require_compatible(&m).await?;
        let job = self
            .jobs
            .start(
                JobKind::PrepareRestore,
                container_id.clone(),
                Some(id.to_string()),
                serde_json::json!({}),
            )
            .map_err(|e| DaemonError::Internal(format!("writing the job record: {e}")))?;
        let name = if container_id.is_empty() {
            format!("{id}--{}", job.id)
        } else {
            format!("{id}--{container_id}")
        };
        let dest = self.cfg.prepared_dir().join(name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| io_err("removing", &dest, e))?;
        }
        let res = self.fetch(&job, &m, &dest, "prepare-restore", &None).await;
        job.finish(res.as_ref().err().map(|e| e.to_string()));
        res.map(|_| (m, dest))
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

    #[tokio::test]
    async fn locks_serialize_one_key_and_not_two() {
        let locks = Arc::new(Locks::default());
        let g1 = locks.lock("a").await;
        // Another key is free.
        let g2 = tokio::time::timeout(std::time::Duration::from_millis(100), locks.lock("b")).await;
        assert!(g2.is_ok());
        // The same key waits.
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_err());
        drop(g1);
        let again =
            tokio::time::timeout(std::time::Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_ok());
    }
}
