//! Plumbing shared by podsnapd's tests (each test binary uses part of it). The process-level
//! tests start podsnapd with `podsnap_testkit::daemon`.

#![allow(dead_code)]

pub mod daemon;
pub mod harness;

use std::path::Path;

use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use tonic::transport::Channel;

/// Runs a Restore call to its end: the restored event, or the call's error. `log` `None`
/// leaves the sandbox's output to the daemon's default log.
pub async fn restore(
    c: &mut PodsnapClient<Channel>,
    snapshot: &str,
    bundle: &Path,
    id: &str,
    log: Option<&Path>,
) -> Result<pb::Restored, tonic::Status> {
    let mut stream = c
        .restore(pb::RestoreRequest {
            snapshot_id: snapshot.into(),
            bundle: bundle.display().to_string(),
            container_id: id.into(),
            log_path: log.map(|l| l.display().to_string()).unwrap_or_default(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut restored = None;
    while let Some(ev) = stream.message().await? {
        if let Some(pb::restore_event::Event::Restored(r)) = ev.event {
            restored = Some(r);
        }
    }
    restored.ok_or_else(|| tonic::Status::internal("the restore stream ended without a result"))
}

/// Runs a Checkpoint call that must succeed to its end: its snapshot.
pub async fn checkpoint(
    c: &mut PodsnapClient<Channel>,
    req: impl tonic::IntoRequest<pb::CheckpointRequest>,
) -> pb::Snapshot {
    let mut stream = c
        .checkpoint(req)
        .await
        .expect("checkpoint call")
        .into_inner();
    let mut snap = None;
    while let Some(ev) = stream.message().await.expect("checkpoint succeeds") {
        if let Some(pb::checkpoint_event::Event::Snapshot(s)) = ev.event {
            snap = Some(s);
        }
    }
    snap.expect("a snapshot event")
}

/// Every job record readable under a state dir's `jobs` directory (`<job>/job.json`).
pub fn job_records(jobs_dir: &Path) -> Vec<serde_json::Value> {
    let Ok(dir) = std::fs::read_dir(jobs_dir) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("job.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}
