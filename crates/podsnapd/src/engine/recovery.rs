//! Crash recovery: at start, before serving, the jobs an earlier run of the daemon left
//! unfinished are adopted (listed, their sandboxes locked); then each is finished or rolled
//! back from its typed record, and only then its lock released.
//!
//! Checkpoints are carried to the end by the same [`Engine::run_checkpoint`] a live call runs,
//! from the stage the record says is done; restores are finished or rolled back by the
//! outcome of the runsc restore the killed daemon started; prepared restores are failed.

use std::sync::Arc;

use podsnap_runtime::{RuntimeError, Status};
use tracing::{info, info_span, warn, Instrument};

use super::locks::Guard;
use super::Engine;
use crate::error::{DaemonError, Result};
use crate::jobs::{JobHandle, JobKind, JobRecord, JobSpec, RestoreJob};

/// A job an earlier run of the daemon left unfinished, adopted by this run, with its
/// sandbox's lock held until [`Engine::recover`] is done with it.
pub struct Adopted {
    pub job: JobHandle,
    pub rec: JobRecord,
    guard: Option<Guard>,
}

impl Engine {
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

    /// The lock of the sandbox an unfinished job worked on; `None` for a prepared restore
    /// (it holds no sandbox) or, for a restore, when the runtime cannot say its root yet.
    async fn lock_for_recovery(&self, rec: &JobRecord) -> Option<Guard> {
        match &rec.spec {
            JobSpec::Checkpoint(cp) => Some(
                self.locks
                    .lock_container(&cp.sandbox.root, &cp.sandbox.container_id)
                    .await,
            ),
            JobSpec::Restore(r) => {
                let root = self.runtime.info().await.ok()?.root;
                Some(self.locks.lock_container(&root, &r.container_id).await)
            }
            JobSpec::PrepareRestore(_) | JobSpec::Prefetch(_) => None,
        }
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
            let span = info_span!("recover", job = %rec.id, kind = rec.kind().as_str(), target = %rec.target);
            let res = async {
                // Held since adoption; taken now if the runtime could not be asked then.
                let _guard = match guard {
                    Some(g) => Some(g),
                    None => self.lock_for_recovery(&rec).await,
                };
                self.clone().recover_one(&job, &rec).await
            }
            .instrument(span)
            .await;
            if let Err(e) = &res {
                warn!(job = %rec.id, error = %e.message(), "job could not be finished after restart");
            }
            job.finish(res.err().map(|e| e.message()));
            // A finished checkpoint's image is in the store; a failed one keeps its image for
            // a retry only if runsc produced one.
            let work = self.work_dir(&rec.id);
            let keep_image = rec.kind() == JobKind::Checkpoint
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

    /// Finishes or rolls back one adopted job; the caller holds its sandbox's lock.
    async fn recover_one(self: Arc<Self>, job: &JobHandle, rec: &JobRecord) -> Result<()> {
        match &rec.spec {
            JobSpec::Checkpoint(cp) => {
                let info = self.runtime.info().await?;
                let snapshot = rec.snapshot_id.as_deref();
                let m = self.run_checkpoint(job, cp, snapshot, &info, &None).await?;
                info!(snapshot = %m.id, "checkpoint finished after restart");
                Ok(())
            }
            JobSpec::Restore(r) => self.recover_restore(job, rec, r).await,
            JobSpec::PrepareRestore(p) if p.lazy => {
                // The sandbox read its pages through the daemon that stopped: stop it too.
                let id = &rec.target;
                match self.runtime.delete(p.runsc_root.as_deref(), id, true).await {
                    Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                    Err(e) => {
                        warn!(container = %id, error = %e, "cannot remove a lazily restored sandbox")
                    }
                }
                Err(DaemonError::Unavailable(format!(
                    "podsnapd restarted while {id} was restored lazily (phase {:?}): its pages \
                     were served by that daemon, so the sandbox was stopped; restore it again",
                    rec.phase
                )))
            }
            JobSpec::PrepareRestore(_) | JobSpec::Prefetch(_) => {
                Err(DaemonError::Unavailable(format!(
                    "podsnapd restarted during {} in phase {:?}; retry it",
                    rec.kind().as_str(),
                    rec.phase
                )))
            }
        }
    }

    /// Finishes or rolls back a restore that a killed daemon left: if runsc restore had been
    /// started, its outcome decides (a failed or unknown one leaves no container behind);
    /// if not, nothing was restored and the job fails asking for a retry.
    /// The caller holds the container's lock ([`Engine::lock_for_recovery`]).
    async fn recover_restore(
        &self,
        job: &JobHandle,
        rec: &JobRecord,
        restore: &RestoreJob,
    ) -> Result<()> {
        let container_id = &restore.container_id;
        if restore.lazy {
            // Its pages were served by the daemon that stopped: what the sandbox reads now
            // fails. Stop it; the caller may restore again.
            match self.runtime.delete(None, container_id, true).await {
                Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => {
                    warn!(container = %container_id, error = %e, "cannot remove a lazily restored sandbox")
                }
            }
            return Err(DaemonError::Unavailable(format!(
                "podsnapd restarted while {container_id} was restored lazily (phase {:?}): its \
                 pages were served by that daemon, so the sandbox was stopped; retry the restore",
                rec.phase
            )));
        }
        let outcome = self
            .await_earlier_runsc(&job.dir().join("runsc-restore"))
            .await;
        let outcome = match outcome {
            Ok(true) => match self.runtime.state(None, container_id).await {
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
        match self.runtime.delete(None, container_id, true).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => {
                warn!(container = %container_id, error = %e, "cannot remove a failed restore")
            }
        }
        outcome
    }
}
