//! The checkpoint flow: validate -> resolve -> decide what becomes of the sandbox (the release
//! policy, asked once) -> lock -> job record (stage `Resolved`) -> then one step per stage,
//! each recording the stage it reached: `runsc checkpoint` (`Checkpointed`) -> restore in place
//! when runsc stopped a sandbox that is to resume (`Resumed`) -> push and commit (`Committed`)
//! -> retention.
//!
//! [`Engine::run_checkpoint`] works from the job's durable record alone, so the same steps
//! carry a checkpoint that a killed daemon left to the end, from its recorded stage (see
//! `recovery`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use podsnap_cpu::CpuInfo;
use podsnap_runtime::runtime::{CheckpointImage, CheckpointRefusal};
use podsnap_runtime::{
    CheckpointOpts, ContainerRole, RestoreRequest, RootfsOverlay, RuntimeError, RuntimeInfo,
    Sandbox, SandboxKind, Target,
};
use podsnap_store::{
    ContainerRecord, Follow, Manifest, NodeFacts, OverlayMedium, PodRef, PushOptions,
    SandboxRecord, SnapshotId, StoreError, WriterState,
};
use tracing::{info, info_span, warn};

use super::progress::{phase_update, JobProgress};
use super::{group_key, snapshot_id, validate_label, Engine, Updates};
use crate::error::{DaemonError, Result};
use crate::jobs::{AfterCheckpoint, CheckpointJob, CheckpointStage, JobHandle, JobSpec, Phase};

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

/// How `post` is honoured for `sb` on this runsc ([`Sandbox::after_checkpoint`] asks the
/// release policy), decided before the sandbox is touched; or why it cannot be.
pub(super) fn after_checkpoint(
    post: PostAction,
    sb: &Sandbox,
    info: &RuntimeInfo,
    target: &Target,
) -> Result<AfterCheckpoint> {
    let policy = info.policy();
    sb.after_checkpoint(&policy, post == PostAction::Resume)
        .map_err(|refusal| {
            DaemonError::Unsupported(match refusal {
                CheckpointRefusal::MultiContainer(why) => {
                    format!("cannot checkpoint {target}: {why}")
                }
                CheckpointRefusal::NoRestoreInPlace => format!(
                    "post-checkpoint resume of {target} is not available with runsc {}: a sandbox of several containers cannot be restored in place; use --stop",
                    policy.version()
                ),
                CheckpointRefusal::NoResume(reason) => format!(
                    "post-checkpoint resume is not available for {target}: {reason}; use --stop"
                ),
            })
        })
}

/// The manifest's record of the sandbox: its containers in restore order and its pod.
fn sandbox_record(sb: &Sandbox) -> Option<SandboxRecord> {
    let pod = match &sb.kind {
        SandboxKind::Containerd { pod: Some(p), .. } => match (&p.namespace, &p.name) {
            (Some(namespace), Some(name)) => Some(PodRef {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: p.uid.clone(),
            }),
            _ => None,
        },
        _ => None,
    };
    if sb.containers.is_empty() && pod.is_none() {
        return None;
    }
    Some(SandboxRecord {
        containers: sb
            .containers
            .iter()
            .map(|c| ContainerRecord {
                name: c.name.clone(),
                role: match c.role {
                    ContainerRole::Root => podsnap_store::ContainerRole::Root,
                    ContainerRole::Container => podsnap_store::ContainerRole::Container,
                },
                id: c.id.clone(),
            })
            .collect(),
        pod,
    })
}

/// What the stages of one checkpoint job share.
#[derive(Clone, Copy)]
struct Run<'a> {
    job: &'a JobHandle,
    /// The job's record as this run found it (its stage is where the run starts).
    cp: &'a CheckpointJob,
    info: &'a RuntimeInfo,
    /// The snapshot the job commits.
    id: &'a SnapshotId,
    /// Where runsc writes the image.
    image_dir: &'a Path,
    tx: &'a Option<Updates>,
}

/// What a push reads: an image runsc has written, or one it is still writing (its metadata
/// comes when runsc is done).
enum ImageSource {
    Written(CheckpointImage),
    Writing(Follow),
}

/// How the manifest names a rootfs overlay whose writes travel with the checkpoint; `None`
/// when the writes stayed on this node's rootfs.
fn overlay_medium(o: &RootfsOverlay) -> Option<OverlayMedium> {
    match o {
        RootfsOverlay::Memory => Some(OverlayMedium::Memory),
        RootfsOverlay::SelfBacked => Some(OverlayMedium::SelfBacked),
        RootfsOverlay::Dir(p) => Some(OverlayMedium::Dir(p.clone())),
        RootfsOverlay::None | RootfsOverlay::Unknown => None,
    }
}

impl Engine {
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
        let span = info_span!("checkpoint", target = %target, group = %group, snapshot = tracing::field::Empty);
        let work = self
            .clone()
            .start_checkpoint(spec, target, group, parent, tx);
        self.operation("checkpoint", span, work).await
    }

    /// Resolves the target, decides how to honour the post-checkpoint action, locks the
    /// sandbox and writes the job record; then runs the job.
    async fn start_checkpoint(
        self: Arc<Self>,
        spec: CheckpointSpec,
        target: Target,
        group: String,
        parent: Option<SnapshotId>,
        tx: Option<Updates>,
    ) -> Result<Manifest> {
        let info = self.runtime.info().await?;
        let sb = self.runtime.resolve(&target).await?;
        // Decide how to honour the post-checkpoint action before touching the sandbox.
        let after = after_checkpoint(spec.post, &sb, &info, &target)?;
        let _guard = self.locks.lock_container(&sb.root, &sb.container_id).await;
        let cp = CheckpointJob {
            sandbox: sb,
            group,
            labels: spec.labels,
            keep: spec.keep,
            parent,
            after,
            stage: CheckpointStage::Resolved,
        };
        let job = self
            .jobs
            .start(
                JobSpec::Checkpoint(Box::new(cp.clone())),
                target.to_string(),
                None,
            )
            .map_err(|e| DaemonError::io("writing the job record", e))?;
        let res = self
            .clone()
            .run_checkpoint(&job, &cp, None, &info, &tx)
            .await;
        job.finish(res.as_ref().err().map(DaemonError::message));
        if res.is_ok() {
            // The image is in the store: the work dir goes.
            self.remove_work_dir_later(&job.id);
        }
        res
    }

    /// Runs (or, after a restart, resumes) a checkpoint job from its durable record `cp`
    /// and the snapshot id it recorded: its stages from the one after `cp.stage` to
    /// `Committed`, then retention.
    pub(super) async fn run_checkpoint(
        self: Arc<Self>,
        job: &JobHandle,
        cp: &CheckpointJob,
        snapshot: Option<&str>,
        info: &RuntimeInfo,
        tx: &Option<Updates>,
    ) -> Result<Manifest> {
        let id = match snapshot {
            Some(s) => snapshot_id(s)?,
            None => {
                let id = SnapshotId::generate();
                job.set_snapshot(id.as_str());
                id
            }
        };
        tracing::Span::current().record("snapshot", id.as_str());
        let image_dir = self.work_dir(&job.id).join("image");
        let run = Run {
            job,
            cp,
            info,
            id: &id,
            image_dir: &image_dir,
            tx,
        };
        let manifest = self.run_stages(&run).await?;
        if cp.keep > 0 {
            phase_update(job, tx, Phase::Retention, "applying retention");
            self.apply_retention(&cp.group, cp.keep).await;
        }
        phase_update(job, tx, Phase::Done, "done");
        Ok(manifest)
    }

    /// Steps from the recorded stage to `Committed`, one step per stage; each step records
    /// the stage it reached. From `Resolved`, runsc and the upload may run as one step
    /// ([`Engine::overlap_upload`]).
    async fn run_stages(&self, run: &Run<'_>) -> Result<Manifest> {
        let Run { job, cp, tx, .. } = *run;
        if cp.stage >= CheckpointStage::Checkpointed && cp.after == AfterCheckpoint::Stop {
            // An earlier run checkpointed and may have died before runsc's record of the
            // stopped sandbox was settled (that runs beside the upload).
            self.runtime.settle_stopped(&cp.sandbox).await;
        }
        let mut settle = None;
        let mut stage = cp.stage;
        let manifest = loop {
            stage = match stage {
                CheckpointStage::Resolved => {
                    if let Some((files, slot)) = self.overlap_upload(job, cp, run.info) {
                        phase_update(
                            job,
                            tx,
                            Phase::Checkpointing,
                            "runsc checkpoint, uploading pages as runsc writes them",
                        );
                        break self.checkpoint_while_uploading(run, files, slot).await?;
                    }
                    phase_update(job, tx, Phase::Checkpointing, "runsc checkpoint");
                    settle = self.runsc_checkpoint(job, cp, run.image_dir).await?;
                    CheckpointStage::Checkpointed
                }
                CheckpointStage::Checkpointed if cp.after == AfterCheckpoint::RestoreInPlace => {
                    // runsc stopped the sandbox: bring it back under the same id from the
                    // local image, before the upload.
                    phase_update(job, tx, Phase::Resuming, "restoring the sandbox in place");
                    self.resume_in_place(job, &cp.sandbox, run.image_dir)
                        .await?;
                    CheckpointStage::Resumed
                }
                CheckpointStage::Checkpointed | CheckpointStage::Resumed => {
                    break self.upload(run).await?
                }
                CheckpointStage::Committed => break self.store.manifest(run.id).await?,
            };
        };
        if let Some(settle) = settle {
            let _ = settle.await;
        }
        Ok(manifest)
    }

    /// The image runsc wrote into `dir`, read through the runtime.
    fn open_image(&self, dir: &Path) -> Result<CheckpointImage> {
        self.runtime.open_image(dir).map_err(|e| match e {
            RuntimeError::Image { dir, source } => DaemonError::Internal(format!(
                "runsc wrote an image without a valid header in {}: {source}",
                dir.display()
            )),
            e => e.into(),
        })
    }

    /// The upload stage after runsc: pushes the image and commits its manifest, unless an
    /// earlier run committed it already (and stopped before recording so).
    async fn upload(&self, run: &Run<'_>) -> Result<Manifest> {
        let manifest = match self.store.manifest(run.id).await {
            Ok(m) => m,
            Err(StoreError::SnapshotNotFound(_)) => {
                let slot = self.transfer_slot(run.job, run.tx, Phase::Uploading).await;
                let image = self.open_image(run.image_dir)?;
                return self
                    .push_image(run, ImageSource::Written(image), slot)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        run.job.stage_done(CheckpointStage::Committed);
        Ok(manifest)
    }

    /// The `Checkpointed` step: `runsc checkpoint` into `image_dir`, as a durable runsc job
    /// in the job's dir; after a restart, the outcome of the one an earlier run started.
    ///
    /// A checkpoint that stops the sandbox for good returns as soon as runsc has, with the
    /// task that waits for the sandbox to exit and settles runsc's record of it: the caller
    /// uploads meanwhile and awaits it before answering (the exit took 1.2-2.2 s on a test
    /// machine whose init reaps slowly, longer than the upload of an incremental snapshot).
    async fn runsc_checkpoint(
        &self,
        job: &JobHandle,
        cp: &CheckpointJob,
        image_dir: &Path,
    ) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let runsc_job = job.dir().join("runsc-checkpoint");
        let t = Instant::now();
        // A resume in place restores under the same id, which needs the record settled first.
        let defer_settle = cp.after == AfterCheckpoint::Stop;
        let mut settle = None;
        if self.await_earlier_runsc(&runsc_job).await? {
            // An earlier run's runsc finished it: runsc's record may still say running.
            if cp.after.runsc_stops() {
                self.runtime.settle_stopped(&cp.sandbox).await;
            }
        } else {
            std::fs::create_dir_all(image_dir)
                .map_err(|e| DaemonError::io(format!("creating {}", image_dir.display()), e))?;
            self.runtime
                .checkpoint(
                    &cp.sandbox,
                    image_dir,
                    &CheckpointOpts {
                        leave_running: !cp.after.runsc_stops(),
                        job_dir: Some(runsc_job),
                        timeout: Some(self.cfg.runsc_timeout),
                        defer_settle,
                    },
                )
                .await?;
            if defer_settle {
                let (runtime, sb) = (self.runtime.clone(), cp.sandbox.clone());
                settle = Some(tokio::spawn(async move {
                    runtime.settle_stopped(&sb).await;
                }));
            }
        }
        self.metrics
            .phase("checkpoint", "runsc_checkpoint", t.elapsed());
        job.stage_done(CheckpointStage::Checkpointed);
        Ok(settle)
    }

    /// The image files to upload while runsc writes them, and the transfer slot for it; `None`
    /// to upload after runsc. Only for a fresh `runsc checkpoint` (not one an earlier run
    /// started) that leaves nothing to do between runsc and the upload (no resume in place),
    /// on a release that writes those files front to back, when the daemon is configured
    /// to (by default only when the sandbox stops: with `--leave-running` the overlap
    /// lengthens the sandbox's freeze, see `UploadWhileCheckpointing`), and when a transfer
    /// slot is free now (rather than wait for one while runsc runs). While runsc writes, the
    /// store hashes at idle CPU priority and holds new packs in memory.
    fn overlap_upload(
        &self,
        job: &JobHandle,
        cp: &CheckpointJob,
        info: &RuntimeInfo,
    ) -> Option<(Vec<String>, tokio::sync::OwnedSemaphorePermit)> {
        let files = info.policy().image_files_written_in_order();
        if !self
            .cfg
            .upload_while_checkpointing
            .applies(!cp.after.runsc_stops())
            || files.is_empty()
            || cp.stage >= CheckpointStage::Checkpointed
            || cp.after == AfterCheckpoint::RestoreInPlace
            || job.dir().join("runsc-checkpoint").exists()
        {
            return None;
        }
        let slot = self.transfers.clone().try_acquire_owned().ok()?;
        Some((files.iter().map(|f| f.to_string()).collect(), slot))
    }

    /// The `Checkpointed` and `Committed` steps at once: `runsc checkpoint` and the push of
    /// its image, which reads `files` while runsc appends to them and commits only once
    /// runsc has succeeded. runsc's error wins over the push's (which then only says the
    /// image was not finished).
    async fn checkpoint_while_uploading(
        &self,
        run: &Run<'_>,
        files: Vec<String>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Manifest> {
        let Run {
            job,
            cp,
            image_dir,
            tx,
            ..
        } = *run;
        // Whatever an earlier, unrecorded attempt left must not be read as this image.
        if image_dir.exists() {
            std::fs::remove_dir_all(image_dir)
                .map_err(|e| DaemonError::io(format!("clearing {}", image_dir.display()), e))?;
        }
        let (state_tx, state_rx) = tokio::sync::watch::channel(WriterState::Writing);
        let runsc = async {
            let r = self.runsc_checkpoint(job, cp, image_dir).await;
            let r = r.and_then(|settle| Ok((self.open_image(image_dir)?, settle)));
            match &r {
                Ok((image, _)) => {
                    phase_update(job, tx, Phase::Uploading, "uploading the rest of the image");
                    let _ = state_tx.send(WriterState::Done {
                        runsc_metadata: Some(image.metadata.clone()),
                    });
                }
                Err(e) => {
                    let _ = state_tx.send(WriterState::Failed(e.message()));
                }
            }
            r.map(|(_, settle)| (Instant::now(), settle))
        };
        let follow = Follow {
            files,
            state: state_rx,
            // A sandbox that keeps running is frozen while runsc writes: stay out of its way.
            yield_to_writer: cp.after != AfterCheckpoint::Stop,
        };
        let push = self.push_image(run, ImageSource::Writing(follow), slot);
        let (runsc, pushed) = tokio::join!(runsc, push);
        let (runsc_done, settle) = runsc?;
        let manifest = pushed?;
        self.metrics
            .phase("checkpoint", "upload_after_runsc", runsc_done.elapsed());
        if let Some(settle) = settle {
            let _ = settle.await;
        }
        Ok(manifest)
    }

    /// The `Resumed` step: restores a sandbox that runsc stopped under its own id from the
    /// local image.
    async fn resume_in_place(&self, job: &JobHandle, sb: &Sandbox, image_dir: &Path) -> Result<()> {
        let runsc_job = job.dir().join("runsc-resume");
        if self.await_earlier_runsc(&runsc_job).await? {
            job.stage_done(CheckpointStage::Resumed);
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
                id: sb.container_id.clone(),
                bundle: sb.bundle.clone(),
                image_dir: image_dir.to_path_buf(),
                log_file: Some(log),
                root: Some(sb.root.clone()),
                job_dir: Some(runsc_job),
                pid_file: None,
                timeout: Some(self.cfg.runsc_timeout),
                background: false,
                containers: Vec::new(),
            })
            .await?;
        self.metrics
            .phase("checkpoint", "runsc_restore", t.elapsed());
        job.stage_done(CheckpointStage::Resumed);
        Ok(())
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

    /// The facts a restore checks: this node, the CPU features the sandbox saw, runsc's
    /// version and platform, the rootfs overlay, and what the sandbox was.
    fn node_facts(&self, sb: &Sandbox, info: &RuntimeInfo) -> NodeFacts {
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
        NodeFacts {
            node_name: self.cfg.node_name.clone(),
            cpu: self.sandbox_cpu(sb, info),
            runsc_version: Some(info.version.version.clone()),
            platform: sb.platform.clone().or_else(|| Some(info.platform.clone())),
            rootfs_overlay: overlay_medium(&sb.rootfs_overlay),
            extra,
        }
    }

    /// Pushes the image in the work dir as the job's snapshot, deduplicating against the
    /// named parent or the group's newest snapshot; commits the manifest last and records
    /// the `Committed` stage. From [`ImageSource::Writing`], the push starts while runsc still
    /// writes the image.
    async fn push_image(
        &self,
        run: &Run<'_>,
        image: ImageSource,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Manifest> {
        let Run {
            job,
            cp,
            info,
            id,
            image_dir,
            tx,
        } = *run;
        let (runsc_metadata, follow) = match image {
            ImageSource::Written(image) => (image.metadata, None),
            ImageSource::Writing(follow) => (BTreeMap::new(), Some(follow)),
        };
        let source = self.node_facts(&cp.sandbox, info);
        let parent = match &cp.parent {
            Some(p) => Some(p.clone()),
            None => self
                .store
                .latest_in_group(&cp.group)
                .await
                .ok()
                .flatten()
                .map(|m| m.id),
        };

        if follow.is_none() {
            phase_update(job, tx, Phase::Uploading, "uploading");
        }
        let t = Instant::now();
        let progress = JobProgress::new(job, tx.clone(), Phase::Uploading, self.metrics.clone());
        let opts = PushOptions {
            id: Some(id.clone()),
            labels: cp.labels.clone(),
            group: Some(cp.group.clone()),
            parent,
            dedup_from: Vec::new(),
            source,
            runsc_metadata,
            sandbox: sandbox_record(&cp.sandbox),
            concurrency: self.cfg.concurrency,
            // `auto`: a checkpoint races its durability deadline, and zstd would cost about
            // as much CPU as the rest of the push (docs/benchmarks.md) for disk space on a
            // local store.
            compression: self.cfg.checkpoint_compression.push_option(),
        };
        let report = match follow {
            Some(f) => {
                self.store
                    .push_following(image_dir, opts, &progress, f)
                    .await?
            }
            None => self.store.push(image_dir, opts, &progress).await?,
        };
        job.stage_done(CheckpointStage::Committed);
        self.metrics.phase("checkpoint", "upload", t.elapsed());
        self.metrics
            .bytes("deduplicated", report.bytes_deduplicated);
        self.metrics.objects_written(report.objects_written);
        info!(snapshot = %report.id, bytes_read = report.bytes_read, bytes_uploaded = report.bytes_uploaded, "snapshot committed");
        Ok(report.manifest)
    }

    /// Keeps the newest `keep` snapshots of the group. The snapshot is committed already: a
    /// failure is logged and retried by the next checkpoint.
    async fn apply_retention(&self, group: &str, keep: u32) {
        let t = Instant::now();
        match self.store.retain(group, keep as usize).await {
            Ok(deleted) if !deleted.is_empty() => {
                info!(group = %group, deleted = deleted.len(), "retention removed old snapshots")
            }
            Ok(_) => {}
            Err(e) => warn!(group = %group, error = %e, "retention failed"),
        }
        self.metrics.phase("checkpoint", "retention", t.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podsnap_runtime::testing::fake_info;

    fn target() -> Target {
        Target::Runsc { id: "c".into() }
    }

    #[test]
    fn resume_follows_the_release_policy() {
        use podsnap_runtime::testing::fake_sandbox;
        use AfterCheckpoint::*;
        let mut info = fake_info();
        let mut sb = fake_sandbox("c");
        let after =
            |post, sb: &Sandbox, info: &RuntimeInfo| after_checkpoint(post, sb, info, &target());
        // 20221219: standalone resumes in place, containerd is refused, pods are refused.
        assert_eq!(
            after(PostAction::Resume, &sb, &info).unwrap(),
            RestoreInPlace
        );
        assert_eq!(after(PostAction::Stop, &sb, &info).unwrap(), Stop);
        sb.kind = SandboxKind::Containerd {
            namespace: "k8s.io".into(),
            container: "c".into(),
            runtime: "io.containerd.runc.v2".into(),
            pod: None,
            task_status: None,
            task_pid: None,
        };
        let err = after(PostAction::Resume, &sb, &info).unwrap_err();
        assert!(err.to_string().contains("hangs under containerd"), "{err}");
        assert_eq!(after(PostAction::Stop, &sb, &info).unwrap(), Stop);
        sb.container_count = 2;
        let err = after(PostAction::Stop, &sb, &info).unwrap_err();
        assert!(err.to_string().contains("2 containers"), "{err}");
        // 20240729: --leave-running everywhere, pods allowed.
        info.version =
            podsnap_runtime::RunscVersion::parse("runsc version 0.0~20240729.0").unwrap();
        assert_eq!(after(PostAction::Resume, &sb, &info).unwrap(), LeaveRunning);
        assert_eq!(after(PostAction::Stop, &sb, &info).unwrap(), Stop);
    }

    #[test]
    fn only_overlays_whose_writes_travel_reach_the_manifest() {
        assert_eq!(
            overlay_medium(&RootfsOverlay::Memory),
            Some(OverlayMedium::Memory)
        );
        assert_eq!(
            overlay_medium(&RootfsOverlay::Dir("/var/Fs".into())),
            Some(OverlayMedium::Dir("/var/Fs".into()))
        );
        for o in [RootfsOverlay::None, RootfsOverlay::Unknown] {
            assert_eq!(overlay_medium(&o), None);
        }
        for o in [
            RootfsOverlay::Memory,
            RootfsOverlay::SelfBacked,
            RootfsOverlay::Dir("/d".into()),
            RootfsOverlay::None,
            RootfsOverlay::Unknown,
        ] {
            assert_eq!(
                overlay_medium(&o).is_some(),
                o.writes_travel_with_checkpoint()
            );
        }
    }
}
