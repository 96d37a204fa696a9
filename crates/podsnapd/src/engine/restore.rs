//! The standalone restore flow: validate -> lock the new container id -> job record ->
//! manifest -> compatibility (before any chunk is fetched) -> pull (verified) ->
//! `runsc restore` under the daemon's root. Also the pull both restore flows share.
//!
//! The lazy path (where [`eager_reason`] finds nothing against it): instead of the pull, the
//! snapshot's small files are fetched and verified and the image is mounted read-only through
//! podsnap-lazy's FUSE filesystem, whose every read is answered with verified bytes only;
//! `runsc restore --background` then starts from the mount. The answer goes back once runsc
//! has; the job stays in `Downloading` while the rest of the pages arrive, and finishes when
//! the last one is local. A page that cannot be fetched or verified stops the sandbox and
//! fails the job with the reason. The mount stays while the sandbox exists (runsc keeps
//! `pages.img` open) and goes (lazy unmount) once it is gone, or when the daemon stops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podsnap_lazy::LazyMount;
use podsnap_runtime::{ContainerRestore, RestoreRequest, RuntimeError, Status};
use podsnap_store::{LazyStatus, Manifest, PullOptions, SnapshotId, StoreError};
use tracing::{error, info, info_span, warn, Instrument};

use super::progress::{phase_update, JobProgress};
use super::{remove_dir_later, snapshot_id, Engine, Updates};
use crate::config::LazyRestore;
use crate::error::{DaemonError, Result};
use crate::jobs::{JobHandle, JobSpec, Phase, RestoreJob};

#[derive(Clone, Debug, Default)]
pub struct RestoreSpec {
    pub snapshot: String,
    pub bundle: PathBuf,
    pub container_id: String,
    pub log: Option<PathBuf>,
    /// The non-root containers of a multi-container snapshot, by name.
    pub containers: Vec<ContainerSpec>,
}

/// Where a non-root container of a snapshot is restored.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub container_id: String,
    pub bundle: PathBuf,
    pub log: Option<PathBuf>,
}

/// Matches the snapshot's non-root containers to the request's, by name: every one needs an
/// entry, and no entry may name a container the snapshot does not have. Returns them in the
/// snapshot's order (the order runsc restores them in).
pub(super) fn match_containers(
    m: &Manifest,
    given: &[ContainerSpec],
) -> Result<Vec<ContainerRestore>> {
    let wanted: Vec<&str> = m
        .sandbox
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.role == podsnap_store::ContainerRole::Container)
        .map(|c| c.name.as_str())
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !given.iter().any(|g| g.name == *w))
        .collect();
    if !missing.is_empty() {
        return Err(DaemonError::InvalidArgument(format!(
            "snapshot {} holds containers {} besides its root; give each a bundle and id (podsnapctl restore --container NAME=ID:DIR), missing: {}",
            m.id,
            wanted.join(", "),
            missing.join(", ")
        )));
    }
    if let Some(extra) = given.iter().find(|g| !wanted.contains(&g.name.as_str())) {
        return Err(DaemonError::InvalidArgument(format!(
            "snapshot {} has no container named {:?} (it has: {})",
            m.id,
            extra.name,
            if wanted.is_empty() {
                "only its root".to_string()
            } else {
                wanted.join(", ")
            }
        )));
    }
    Ok(wanted
        .iter()
        .filter_map(|w| given.iter().find(|g| g.name == *w))
        .map(|g| ContainerRestore {
            name: g.name.clone(),
            id: g.container_id.clone(),
            bundle: g.bundle.clone(),
            log_file: g.log.clone(),
        })
        .collect())
}

/// How often a lazily restored sandbox is looked at, to unmount its image once it is gone.
const SANDBOX_POLL: Duration = Duration::from_secs(2);
/// How long a prepared lazy image waits for the sandbox that reads it to be created (the
/// kubelet's CreateContainer deadline is 2 minutes), and how often it looks.
const SANDBOX_APPEAR_TIMEOUT: Duration = Duration::from_secs(240);
const SANDBOX_APPEAR_POLL: Duration = Duration::from_millis(200);

/// The sandbox a lazy image serves: the runsc container that reads it.
#[derive(Clone, Debug)]
pub(super) struct Followed {
    /// Its runsc root (`None`: the daemon's).
    pub root: Option<PathBuf>,
    pub id: String,
    /// Created only after the image is ready (the Kubernetes path): the fill of the rest of
    /// the pages waits for it, and the image goes if it never comes.
    pub appears_later: bool,
}

/// Why a standalone restore pulls its image whole instead of serving it lazily; `None` when
/// nothing is against the lazy path. The one place that decides it (with `--lazy-restore`).
pub(super) fn eager_reason(
    restore_background: bool,
    runsc_version: &str,
    m: &Manifest,
    other_containers: usize,
    fuse: std::result::Result<(), String>,
) -> Option<String> {
    if !restore_background {
        return Some(format!(
            "runsc {runsc_version} has no `restore --background`"
        ));
    }
    if !m.files.iter().any(|f| podsnap_lazy::is_lazy_file(&f.path)) {
        return Some(format!(
            "the image has no {} (one checkpoint.img, as runsc 20221219 writes)",
            podsnap_lazy::PAGES_FILE
        ));
    }
    match m.runsc_metadata.get("compression").map(String::as_str) {
        Some("none") => {}
        other => {
            return Some(format!(
                "the image is compressed ({}); runsc restores in the background only uncompressed images",
                other.unwrap_or("flate, the legacy default")
            ))
        }
    }
    if other_containers > 0 {
        return Some("a sandbox of several containers restores from a pulled image".into());
    }
    if let Some(f) = m.files.iter().find(|f| f.path.contains('/')) {
        return Some(format!("the image has a file in a directory ({})", f.path));
    }
    fuse.err()
}

/// A failed lazy image as the daemon's error (data loss for a page that did not verify).
fn image_failure(e: &StoreError) -> DaemonError {
    match e {
        StoreError::Corrupt {
            file,
            offset,
            reason,
        } => DaemonError::Store(StoreError::Corrupt {
            file: file.clone(),
            offset: *offset,
            reason: reason.clone(),
        }),
        StoreError::MissingObject {
            file,
            offset,
            object,
        } => DaemonError::Store(StoreError::MissingObject {
            file: file.clone(),
            offset: *offset,
            object: object.clone(),
        }),
        other => DaemonError::Unavailable(podsnap_proto::client::error_chain(other)),
    }
}

fn lazy_error(e: podsnap_lazy::LazyError) -> DaemonError {
    match e {
        podsnap_lazy::LazyError::Store(s) => DaemonError::Store(s),
        podsnap_lazy::LazyError::Fetch(f) => image_failure(&f),
        podsnap_lazy::LazyError::Unsupported(m) => DaemonError::Unsupported(m),
        other => DaemonError::Internal(podsnap_proto::client::error_chain(&other)),
    }
}

#[derive(Clone, Debug)]
pub struct RestoredInfo {
    pub container_id: String,
    pub snapshot: String,
    pub pid: i32,
    pub log: PathBuf,
    /// The restore's job (a lazy one goes on until every page is local).
    pub job_id: String,
    pub lazy: bool,
}

/// Which flow a pull serves; it decides whether the image must survive a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PullFor {
    /// A standalone restore's scratch image: runsc reads it right away and it is removed
    /// afterwards (also after a crash), so it is not fsynced.
    Restore,
    /// A prepared image waits for the runsc wrapper and may be reused by a retried create,
    /// so it must survive a power loss intact.
    Prepare,
}

impl PullFor {
    /// The operation's name in metrics.
    fn operation(self) -> &'static str {
        match self {
            PullFor::Restore => "restore",
            PullFor::Prepare => "prepare-restore",
        }
    }

    fn options(self) -> PullOptions {
        PullOptions {
            durable: self == PullFor::Prepare,
        }
    }
}

impl Engine {
    /// Standalone restore under the daemon's runsc root.
    pub async fn restore(
        self: Arc<Self>,
        spec: RestoreSpec,
        tx: Option<Updates>,
    ) -> Result<RestoredInfo> {
        let span = info_span!("restore", snapshot = %spec.snapshot, container = %spec.container_id);
        let work = self.clone().start_restore(spec, tx);
        self.operation("restore", span, work).await
    }

    /// Validates the request, locks the new container id, checks that it is free and writes
    /// the job record; then runs the job.
    async fn start_restore(
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
        let _guard = self.locks.lock_container(&root, &spec.container_id).await;
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
                JobSpec::Restore(RestoreJob {
                    bundle: spec.bundle.clone(),
                    container_id: spec.container_id.clone(),
                    lazy: false,
                }),
                spec.container_id.clone(),
                Some(id.to_string()),
            )
            .map_err(|e| DaemonError::io("writing the job record", e))?;
        match self.run_restore(&job, &spec, &id, &tx).await {
            Ok((info, Some(mount))) => {
                // The job goes on until the last page is local; the work dir (the mount
                // point) goes with the sandbox.
                let work = self.work_dir(&job.id);
                let sandbox = Followed {
                    root: None,
                    id: spec.container_id.clone(),
                    appears_later: false,
                };
                self.clone().follow_lazy(job, mount, sandbox, work);
                Ok(info)
            }
            res => {
                let res = res.map(|(info, _)| info);
                job.finish(res.as_ref().err().map(DaemonError::message));
                // runsc has read the image (or failed): the local copy goes.
                self.remove_work_dir_later(&job.id);
                res
            }
        }
    }

    async fn run_restore(
        &self,
        job: &JobHandle,
        spec: &RestoreSpec,
        id: &SnapshotId,
        tx: &Option<Updates>,
    ) -> Result<(RestoredInfo, Option<LazyMount>)> {
        phase_update(job, tx, Phase::Checking, "checking compatibility");
        let m = self.store.manifest(id).await?;
        self.require_compatible(&m).await?;
        let containers = match_containers(&m, &spec.containers)?;
        let work = self.work_dir(&job.id);
        std::fs::create_dir_all(&work)
            .map_err(|e| DaemonError::io(format!("creating {}", work.display()), e))?;
        let image_dir = work.join("image");
        let mount = self
            .image_for_restore(job, &m, containers.len(), &image_dir, tx)
            .await?;

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
                id: spec.container_id.clone(),
                bundle: spec.bundle.clone(),
                image_dir: image_dir.clone(),
                log_file: Some(log.clone()),
                root: None,
                job_dir: Some(job.dir().join("runsc-restore")),
                pid_file: None,
                timeout: Some(self.cfg.runsc_timeout),
                background: mount.is_some(),
                containers,
            })
            .await;
        let restored = match (restored, &mount) {
            (Ok(r), _) => r,
            (Err(e), Some(mount)) => {
                // runsc failing on a page we refused says less than our reason.
                if let LazyStatus::Failed(f) = mount.image().status() {
                    warn!(error = %e, "runsc restore failed on a lazy image that had failed");
                    return Err(image_failure(&f));
                }
                return Err(e.into());
            }
            (Err(e), None) => return Err(e.into()),
        };
        self.metrics.phase("restore", "runsc_restore", t.elapsed());
        if let Some(mount) = &mount {
            // runsc runs: the rest of the pages may come now.
            mount.start_fill();
        }
        if mount.is_some() {
            phase_update(
                job,
                tx,
                Phase::Downloading,
                "sandbox running; fetching the remaining pages",
            );
        } else {
            phase_update(job, tx, Phase::Done, "done");
        }
        info!(pid = ?restored.pid, lazy = mount.is_some(), "sandbox restored");
        Ok((
            RestoredInfo {
                container_id: restored.id,
                snapshot: id.to_string(),
                pid: restored.pid.unwrap_or(0),
                log,
                job_id: job.id.clone(),
                lazy: mount.is_some(),
            },
            mount,
        ))
    }

    /// The image a standalone restore reads: pulled whole into `image_dir`, or (`Some`) the
    /// lazy mount there.
    async fn image_for_restore(
        &self,
        job: &JobHandle,
        m: &Manifest,
        other_containers: usize,
        image_dir: &Path,
        tx: &Option<Updates>,
    ) -> Result<Option<LazyMount>> {
        let against = self
            .lazy_refusal("restore", m, other_containers, None)
            .await?;
        let mount = match against {
            Some(reason) => {
                info!(%reason, "pulling the whole image before runsc restore (not lazy)");
                self.fetch(job, m, image_dir, PullFor::Restore, tx).await?;
                None
            }
            None => Some(self.mount_lazy(job, &m.id, image_dir, tx).await?),
        };
        Ok(mount)
    }

    /// Why a restore (`op`) pulls its image whole rather than serving it lazily (`None`:
    /// lazy): `--lazy-restore never`, else what the caller knows against it (`caller`), else
    /// [`eager_reason`]. The one place `--lazy-restore` is read.
    pub(super) async fn lazy_refusal(
        &self,
        op: &str,
        m: &Manifest,
        other_containers: usize,
        caller: Option<String>,
    ) -> Result<Option<String>> {
        let reason = if self.cfg.lazy_restore == LazyRestore::Never {
            Some("lazy restores are off (--lazy-restore never)".to_string())
        } else if caller.is_some() {
            caller
        } else {
            let info = self.runtime.info().await?;
            eager_reason(
                info.capabilities.restore_background,
                &info.version.version,
                m,
                other_containers,
                podsnap_lazy::fuse_available(),
            )
        };
        self.unless_lazy_required(op, m, reason)
    }

    /// `reason` against a lazy restore, or the error it is under `--lazy-restore always`.
    pub(super) fn unless_lazy_required(
        &self,
        op: &str,
        m: &Manifest,
        reason: Option<String>,
    ) -> Result<Option<String>> {
        match reason {
            Some(reason) if self.cfg.lazy_restore == LazyRestore::Always => {
                Err(DaemonError::Unsupported(format!(
                    "cannot {op} {} lazily (--lazy-restore always): {reason}",
                    m.id
                )))
            }
            r => Ok(r),
        }
    }

    /// The lazy path's "pull": the node's shared image of the snapshot (its small files local
    /// and verified), mounted at `image_dir`.
    pub(super) async fn mount_lazy(
        &self,
        job: &JobHandle,
        id: &SnapshotId,
        image_dir: &Path,
        tx: &Option<Updates>,
    ) -> Result<LazyMount> {
        let _slot = self.transfer_slot(job, tx, Phase::Downloading).await;
        phase_update(
            job,
            tx,
            Phase::Downloading,
            "fetching the image's small files (lazy restore)",
        );
        let t = Instant::now();
        job.mark_lazy();
        let lease = self.lazy.acquire(id).await.map_err(lazy_error)?;
        self.report_lazy_bytes(lease.image());
        let mount = LazyMount::mount(lease, image_dir, tokio::runtime::Handle::current())
            .await
            .map_err(lazy_error)?;
        self.metrics.phase("restore", "lazy_mount", t.elapsed());
        Ok(mount)
    }

    /// Counts the bytes a lazy image moved since it was last asked (by any restore sharing it).
    fn report_lazy_bytes(&self, image: &podsnap_store::LazyImage) {
        let (downloaded, cached) = image.take_unreported();
        if downloaded > 0 {
            self.metrics.bytes("downloaded", downloaded);
        }
        if cached > 0 {
            self.metrics.bytes("cached", cached);
        }
    }

    /// After the answer: follows a lazy restore's image until every page is local (the job
    /// finishes) or one fails (the sandbox is stopped and the job fails with the reason);
    /// then keeps the mount until the sandbox is gone, unmounts it and removes `leftover`.
    pub(super) fn follow_lazy(
        self: Arc<Self>,
        job: JobHandle,
        mount: LazyMount,
        sandbox: Followed,
        leftover: PathBuf,
    ) {
        let span = info_span!("lazy-restore", container = %sandbox.id, job = %job.id);
        tokio::spawn(
            async move {
                if sandbox.appears_later {
                    if let Err(e) = self.await_sandbox_appears(&sandbox).await {
                        job.finish(Some(e));
                        drop(mount);
                        remove_dir_later(leftover);
                        return;
                    }
                    // runsc has the image: the rest of the pages may come now.
                    mount.start_fill();
                }
                let image = mount.image().clone();
                match self.await_settled(&job, &image).await {
                    Ok(()) => {
                        info!(
                            bytes = image.progress().bytes_total,
                            "lazy restore complete: every page is local"
                        );
                        job.finish(None);
                    }
                    Err(e) => {
                        let msg = format!(
                            "lazy restore failed after the sandbox started, so sandbox \
                             {} was stopped: {}",
                            sandbox.id,
                            podsnap_proto::client::error_chain(&*e)
                        );
                        error!(error = %msg, "stopping a lazily restored sandbox");
                        match self
                            .runtime
                            .delete(sandbox.root.as_deref(), &sandbox.id, true)
                            .await
                        {
                            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                            Err(e) => warn!(error = %e, "cannot stop the sandbox"),
                        }
                        job.finish(Some(msg));
                    }
                }
                self.await_sandbox_gone(&sandbox).await;
                drop(mount);
                remove_dir_later(leftover);
            }
            .instrument(span),
        );
    }

    /// Reports a lazy image's progress until every page is local or one failed.
    async fn await_settled(
        &self,
        job: &JobHandle,
        image: &podsnap_store::LazyImage,
    ) -> std::result::Result<(), Arc<StoreError>> {
        let settled = loop {
            tokio::select! {
                r = image.settled() => break r,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let p = image.progress();
                    job.progress(p.bytes_local, p.bytes_total);
                    self.report_lazy_bytes(image);
                }
            }
        };
        self.report_lazy_bytes(image);
        let p = image.progress();
        job.progress(p.bytes_local, p.bytes_total);
        settled
    }

    /// Waits for a prepared image's sandbox to be created (the runsc wrapper creates it
    /// after PrepareRestore answers); the reason when it is not within
    /// [`SANDBOX_APPEAR_TIMEOUT`].
    async fn await_sandbox_appears(&self, sandbox: &Followed) -> std::result::Result<(), String> {
        let deadline = Instant::now() + SANDBOX_APPEAR_TIMEOUT;
        loop {
            match self
                .runtime
                .state(sandbox.root.as_deref(), &sandbox.id)
                .await
            {
                Ok(_) => return Ok(()),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => warn!(error = %e, "cannot read the sandbox's state"),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "container {} was not created under {} within {:?} of the image being \
                     prepared; its lazy image was removed",
                    sandbox.id,
                    sandbox
                        .root
                        .as_deref()
                        .map(|r| r.display().to_string())
                        .unwrap_or_else(|| "the daemon's runsc root".into()),
                    SANDBOX_APPEAR_TIMEOUT
                ));
            }
            tokio::time::sleep(SANDBOX_APPEAR_POLL).await;
        }
    }

    /// Returns once the sandbox no longer runs (gone, or stopped).
    async fn await_sandbox_gone(&self, sandbox: &Followed) {
        loop {
            match self
                .runtime
                .state(sandbox.root.as_deref(), &sandbox.id)
                .await
            {
                Ok(st) if st.status != Status::Stopped => {}
                Ok(_) | Err(RuntimeError::NotFound { .. }) => return,
                Err(e) => warn!(error = %e, "cannot read the sandbox's state"),
            }
            tokio::time::sleep(SANDBOX_POLL).await;
        }
    }

    /// Fetches and verifies a snapshot into `dest` (which must not exist), in one of the
    /// `max_transfers` slots.
    pub(super) async fn fetch(
        &self,
        job: &JobHandle,
        m: &Manifest,
        dest: &Path,
        pull_for: PullFor,
        tx: &Option<Updates>,
    ) -> Result<()> {
        let _slot = self.transfer_slot(job, tx, Phase::Downloading).await;
        phase_update(job, tx, Phase::Downloading, "downloading");
        let t = Instant::now();
        let progress = JobProgress::new(job, tx.clone(), Phase::Downloading, self.metrics.clone());
        self.store
            .pull_with(&m.id, dest, &progress, pull_for.options())
            .await?;
        self.metrics
            .phase(pull_for.operation(), "download", t.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_manifest() -> Manifest {
        use podsnap_store::{ContainerRecord, ContainerRole, SandboxRecord};
        let c = |name: &str, role| ContainerRecord {
            name: name.into(),
            role,
            id: name.into(),
        };
        let json = serde_json::json!({
            "format_version": "1.0", "id": "snap-1", "created": "2026-01-01T00:00:00Z",
            "files": [],
        });
        let mut m: Manifest = serde_json::from_value(json).unwrap();
        m.sandbox = Some(SandboxRecord {
            containers: vec![
                c("pause", ContainerRole::Root),
                c("app", ContainerRole::Container),
                c("side", ContainerRole::Container),
            ],
            pod: None,
        });
        m
    }

    fn spec(name: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            container_id: format!("new-{name}"),
            bundle: PathBuf::from("/b"),
            log: None,
        }
    }

    #[test]
    fn containers_are_matched_by_name_in_the_snapshots_order() {
        let m = pod_manifest();
        let got = match_containers(&m, &[spec("side"), spec("app")]).unwrap();
        let ids: Vec<_> = got.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["new-app", "new-side"]);
    }

    #[test]
    fn a_restore_missing_a_container_or_naming_an_unknown_one_is_refused() {
        let m = pod_manifest();
        let err = match_containers(&m, &[spec("app")]).unwrap_err();
        assert!(err.to_string().contains("missing: side"), "{err}");
        let err = match_containers(&m, &[spec("app"), spec("side"), spec("db")]).unwrap_err();
        assert!(err.to_string().contains("\"db\""), "{err}");
        let mut single = pod_manifest();
        single.sandbox = None;
        assert!(match_containers(&single, &[]).unwrap().is_empty());
        assert!(match_containers(&single, &[spec("app")]).is_err());
    }

    fn image(files: &[&str], compression: Option<&str>) -> Manifest {
        let mut m = pod_manifest();
        m.sandbox = None;
        m.files = files
            .iter()
            .map(|p| {
                serde_json::from_value(serde_json::json!({
                    "path": p, "size": 4096, "mode": 420,
                    "index": {"digest": "00", "size": 1}, "zero_bytes": 0,
                }))
                .unwrap()
            })
            .collect();
        if let Some(c) = compression {
            m.runsc_metadata.insert("compression".into(), c.into());
        }
        m
    }

    #[test]
    fn a_restore_is_lazy_only_where_runsc_the_image_and_the_node_allow_it() {
        let current = image(
            &["checkpoint.img", "pages.img", "pages_meta.img"],
            Some("none"),
        );
        assert_eq!(eager_reason(true, "r", &current, 0, Ok(())), None);
        let why = |r: Option<String>| r.expect("eager");
        assert!(why(eager_reason(
            false,
            "release-20221219.0",
            &current,
            0,
            Ok(())
        ))
        .contains("restore --background"));
        let legacy = image(&["checkpoint.img"], None);
        assert!(why(eager_reason(true, "r", &legacy, 0, Ok(()))).contains("no pages.img"));
        let flate = image(&["checkpoint.img", "pages.img"], Some("flate-best-speed"));
        assert!(why(eager_reason(true, "r", &flate, 0, Ok(()))).contains("compressed"));
        assert!(why(eager_reason(true, "r", &current, 1, Ok(()))).contains("containers"));
        let nested = image(&["pages.img", "d/checkpoint.img"], Some("none"));
        assert!(why(eager_reason(true, "r", &nested, 0, Ok(()))).contains("directory"));
        assert_eq!(
            eager_reason(true, "r", &current, 0, Err("no /dev/fuse".into())),
            Some("no /dev/fuse".into())
        );
    }

    #[test]
    fn only_a_prepared_image_is_pulled_durably() {
        assert!(PullFor::Prepare.options().durable);
        assert!(!PullFor::Restore.options().durable);
        assert_eq!(PullFor::Prepare.operation(), "prepare-restore");
        assert_eq!(PullFor::Restore.operation(), "restore");
    }
}
