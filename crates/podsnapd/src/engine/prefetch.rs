//! Prefetch: warm this node's page cache with a snapshot before a pod is scheduled here.
//! manifest -> job record -> (a transfer slot) -> download and verify the pages the cache
//! lacks, storing them in the cache. Nothing else is written.

use std::sync::Arc;
use std::time::Instant;

use podsnap_store::PrefetchReport;
use tracing::{info, info_span};

use super::progress::{phase_update, JobProgress};
use super::{snapshot_id, Engine, Updates};
use crate::error::{DaemonError, Result};
use crate::jobs::{JobSpec, Phase, PrepareJob};

impl Engine {
    /// Downloads what the node's page cache lacks of `snapshot`; reports bytes fetched and
    /// bytes already cached.
    pub async fn prefetch(
        self: Arc<Self>,
        snapshot: String,
        tx: Option<Updates>,
    ) -> Result<PrefetchReport> {
        let span = info_span!("prefetch", snapshot = %snapshot);
        let work = self.clone().run_prefetch(snapshot, tx);
        self.operation("prefetch", span, work).await
    }

    async fn run_prefetch(
        self: Arc<Self>,
        snapshot: String,
        tx: Option<Updates>,
    ) -> Result<PrefetchReport> {
        let id = snapshot_id(&snapshot)?;
        if self.store.cache().is_none() {
            return Err(DaemonError::Store(podsnap_store::StoreError::Cache(
                "this node's page cache is off (cache_max_bytes 0, or it could not be opened)"
                    .into(),
            )));
        }
        // The snapshot must exist before a job is recorded for it.
        self.store.manifest(&id).await?;
        let job = self
            .jobs
            .start(
                JobSpec::Prefetch(PrepareJob::default()),
                String::new(),
                Some(id.to_string()),
            )
            .map_err(|e| DaemonError::io("writing the job record", e))?;
        let res = async {
            let _slot = self.transfer_slot(&job, &tx, Phase::Downloading).await;
            phase_update(
                &job,
                &tx,
                Phase::Downloading,
                "prefetching into the page cache",
            );
            let t = Instant::now();
            let progress =
                JobProgress::new(&job, tx.clone(), Phase::Downloading, self.metrics.clone());
            let r = self.store.prefetch(&id, &progress).await?;
            self.metrics.phase("prefetch", "download", t.elapsed());
            phase_update(&job, &tx, Phase::Done, "done");
            info!(
                bytes_downloaded = r.bytes_downloaded,
                bytes_fetched = r.bytes_fetched,
                bytes_cached = r.bytes_cached,
                "prefetched"
            );
            Ok(r)
        }
        .await;
        job.finish(res.as_ref().err().map(DaemonError::message));
        res
    }
}
