//! PrepareRestore, the Kubernetes path: manifest -> compatibility (before any chunk is
//! fetched) -> pull (verified, durable) into `<state-dir>/prepared/`, whose path the runsc
//! wrapper hands to `runsc restore`.

use std::path::PathBuf;
use std::sync::Arc;

use podsnap_store::Manifest;
use tracing::info_span;

use super::restore::PullFor;
use super::{snapshot_id, Engine};
use crate::error::{DaemonError, Result};
use crate::jobs::{JobSpec, PrepareJob};

impl Engine {
    /// Fetches, verifies and checks a snapshot for the runsc wrapper; returns the local image
    /// directory (under `<state-dir>/prepared/`).
    pub async fn prepare_restore(
        self: Arc<Self>,
        snapshot: String,
        container_id: String,
    ) -> Result<(Manifest, PathBuf)> {
        let span = info_span!("prepare-restore", snapshot = %snapshot, container = %container_id);
        let work = self.clone().run_prepare(snapshot, container_id);
        self.operation("prepare-restore", span, work).await
    }

    async fn run_prepare(
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
                JobSpec::PrepareRestore(PrepareJob {}),
                container_id.clone(),
                Some(id.to_string()),
            )
            .map_err(|e| DaemonError::io("writing the job record", e))?;
        let name = if container_id.is_empty() {
            format!("{id}--{}", job.id)
        } else {
            format!("{id}--{container_id}")
        };
        let dest = self.cfg.prepared_dir().join(name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .map_err(|e| DaemonError::io(format!("removing {}", dest.display()), e))?;
        }
        let res = self.fetch(&job, &m, &dest, PullFor::Prepare, &None).await;
        job.finish(res.as_ref().err().map(DaemonError::message));
        res.map(|_| (m, dest))
    }
}
