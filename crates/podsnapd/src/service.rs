//! The gRPC adapter: converts and validates wire types, delegates to the [`Engine`], and maps
//! errors through `From<DaemonError> for Status` (in `error`). No domain logic lives here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_server::Podsnap;
use podsnap_runtime::Target;
use podsnap_store::Manifest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::engine::{
    CheckpointSpec, Compat, ContainerSpec, Engine, PostAction, PrepareSpec, RestoreSpec, Update,
};
use crate::error::DaemonError;
use crate::jobs::{JobRecord, Phase};

pub struct Service {
    engine: Arc<Engine>,
}

impl Service {
    pub fn new(engine: Arc<Engine>) -> Self {
        Service { engine }
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub fn phase_to_pb(p: Phase) -> pb::Phase {
    match p {
        Phase::Queued => pb::Phase::Queued,
        Phase::Resolving => pb::Phase::Resolving,
        Phase::Checkpointing => pb::Phase::Checkpointing,
        Phase::Uploading => pb::Phase::Uploading,
        Phase::Committing => pb::Phase::Committing,
        Phase::Retention => pb::Phase::Retention,
        Phase::Resuming => pb::Phase::Resuming,
        Phase::Checking => pb::Phase::Checking,
        Phase::Downloading => pb::Phase::Downloading,
        Phase::Restoring => pb::Phase::Restoring,
        Phase::Done => pb::Phase::Done,
        Phase::Failed => pb::Phase::Failed,
    }
}

fn progress_pb(u: Update) -> pb::Progress {
    pb::Progress {
        job_id: u.job_id,
        phase: phase_to_pb(u.phase) as i32,
        bytes_done: u.done,
        bytes_total: u.total,
        message: u.message,
    }
}

pub fn cpu_to_pb(c: &podsnap_cpu::CpuInfo) -> pb::CpuInfo {
    pb::CpuInfo {
        vendor: c.vendor.clone(),
        family: c.family,
        model: c.model,
        stepping: c.stepping,
        cache_line_size: c.cache_line_size,
        features: c.features.clone(),
    }
}

pub fn snapshot_to_pb(m: &Manifest) -> pb::Snapshot {
    pb::Snapshot {
        id: m.id.to_string(),
        created_at: m.created.clone(),
        labels: m.labels.clone().into_iter().collect(),
        group: m.group.clone().unwrap_or_default(),
        parent: m.parent.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        format_version: m.format_version.clone(),
        source: Some(pb::SourceNode {
            node_name: m.source.node_name.clone(),
            cpu: m.source.cpu.as_ref().map(cpu_to_pb),
            runsc_version: m.source.runsc_version.clone().unwrap_or_default(),
            platform: m.source.platform.clone().unwrap_or_default(),
            rootfs_overlay: m
                .source
                .rootfs_overlay
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            extra: m.source.extra.clone().into_iter().collect(),
        }),
        files: m
            .files
            .iter()
            .map(|f| pb::SnapshotFile {
                name: f.path.clone(),
                size: f.size,
            })
            .collect(),
        logical_bytes: m.files.iter().map(|f| f.size).sum(),
        uploaded_bytes: m.totals.bytes_uploaded,
        runsc_metadata: m.runsc_metadata.clone().into_iter().collect(),
        containers: m
            .sandbox
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| pb::SnapshotContainer {
                name: c.name.clone(),
                role: match c.role {
                    podsnap_store::ContainerRole::Root => "root",
                    podsnap_store::ContainerRole::Container => "container",
                }
                .into(),
                source_id: c.id.clone(),
            })
            .collect(),
        pod: m
            .sandbox
            .as_ref()
            .and_then(|s| s.pod.as_ref())
            .map(|p| pb::PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone().unwrap_or_default(),
            }),
    }
}

fn compat_to_pb(c: &Compat) -> pb::CheckCompatibilityResponse {
    pb::CheckCompatibilityResponse {
        compatible: c.compatible(),
        missing_features: c.missing_features.clone(),
        snapshot_cache_line_size: c.snapshot_cache_line,
        node_cache_line_size: c.node_cache_line,
        problems: c.problems.clone(),
        warnings: c.warnings.clone(),
    }
}

pub fn job_to_pb(j: &JobRecord) -> pb::Job {
    pb::Job {
        id: j.id.clone(),
        kind: j.kind().as_str().into(),
        target: j.target.clone(),
        snapshot_id: j.snapshot_id.clone().unwrap_or_default(),
        phase: phase_to_pb(j.phase) as i32,
        bytes_done: j.bytes_done,
        bytes_total: j.bytes_total,
        started_at: j.started_at.clone(),
        finished_at: j.finished_at.clone().unwrap_or_default(),
        error: j.error.clone().unwrap_or_default(),
    }
}

fn target_from_pb(t: Option<pb::Target>) -> Result<Target, DaemonError> {
    let kind = t
        .and_then(|t| t.kind)
        .ok_or_else(|| DaemonError::InvalidArgument("target is required".into()))?;
    match kind {
        pb::target::Kind::RunscId(id) if !id.is_empty() => Ok(Target::Runsc { id }),
        pb::target::Kind::Containerd(c) if !c.container_id.is_empty() => Ok(Target::Containerd {
            namespace: if c.namespace.is_empty() {
                "default".into()
            } else {
                c.namespace
            },
            id: c.container_id,
        }),
        pb::target::Kind::Pod(p) if !p.namespace.is_empty() && !p.name.is_empty() => {
            Ok(Target::Pod {
                namespace: p.namespace,
                name: p.name,
            })
        }
        pb::target::Kind::Pod(_) => Err(DaemonError::InvalidArgument(
            "a pod target needs a namespace and a name".into(),
        )),
        _ => Err(DaemonError::InvalidArgument(
            "target needs a container id".into(),
        )),
    }
}

fn nonempty(v: String) -> Option<String> {
    (!v.is_empty()).then_some(v)
}

/// Runs `work` as a detached task (it finishes even when the caller hangs up) and streams its
/// progress, then its result, to the caller.
fn stream_job<T, R, F>(
    work: impl FnOnce(mpsc::UnboundedSender<Update>) -> F,
    progress: impl Fn(pb::Progress) -> T + Send + 'static,
    done: impl FnOnce(R) -> T + Send + 'static,
) -> EventStream<T>
where
    T: Send + 'static,
    R: Send + 'static,
    F: std::future::Future<Output = Result<R, DaemonError>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    // The call's span: kept open until the result is known, which then goes on it.
    let call = tracing::Span::current();
    let handle = tokio::spawn(work(tx).in_current_span());
    let updates = UnboundedReceiverStream::new(rx).map(move |u| Ok(progress(progress_pb(u))));
    let last = futures::stream::once(async move {
        match handle.await {
            Ok(Ok(r)) => Ok(done(r)),
            Ok(Err(e)) => Err(call.in_scope(|| Status::from(e))),
            Err(e) => Err(Status::internal(format!("job task failed: {e}"))),
        }
    });
    Box::pin(updates.chain(last))
}

/// How often a followed lazy restore's job is looked at.
const FOLLOW_PAGES_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// A lazy restore's job after the answer, as restore events: progress while pages arrive,
/// then the end of the stream, or an ABORTED status with the reason the sandbox was stopped.
fn follow_pages(engine: Arc<Engine>, job_id: String) -> EventStream<pb::RestoreEvent> {
    let last = None::<(u64, u64)>;
    Box::pin(futures::stream::unfold(
        (engine, job_id, last, false),
        |(engine, job_id, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let rec = engine.jobs().list().into_iter().find(|j| j.id == job_id);
                let Some(rec) = rec else {
                    let e = Status::internal(format!("restore job {job_id} is no longer listed"));
                    return Some((Err(e), (engine, job_id, last, true)));
                };
                if rec.finished_at.is_some() {
                    return rec
                        .error
                        .map(|e| (Err(Status::aborted(e)), (engine, job_id, last, true)));
                }
                let now = Some((rec.bytes_done, rec.bytes_total));
                if now != last {
                    let ev = pb::RestoreEvent {
                        event: Some(pb::restore_event::Event::Progress(pb::Progress {
                            job_id: rec.id.clone(),
                            phase: phase_to_pb(rec.phase) as i32,
                            bytes_done: rec.bytes_done,
                            bytes_total: rec.bytes_total,
                            message: "sandbox running; fetching the remaining pages".into(),
                        })),
                    };
                    return Some((Ok(ev), (engine, job_id, now, false)));
                }
                tokio::time::sleep(FOLLOW_PAGES_POLL).await;
            }
        },
    ))
}

#[tonic::async_trait]
impl Podsnap for Service {
    type CheckpointStream = EventStream<pb::CheckpointEvent>;
    type RestoreStream = EventStream<pb::RestoreEvent>;
    type PrefetchStream = EventStream<pb::PrefetchEvent>;

    async fn prefetch(
        &self,
        req: Request<pb::PrefetchRequest>,
    ) -> Result<Response<Self::PrefetchStream>, Status> {
        let r = req.into_inner();
        if r.snapshot_id.is_empty() {
            return Err(DaemonError::InvalidArgument("snapshot_id is required".into()).into());
        }
        let engine = self.engine.clone();
        let snapshot = r.snapshot_id.clone();
        Ok(Response::new(stream_job(
            move |tx| engine.prefetch(r.snapshot_id, Some(tx)),
            |p| pb::PrefetchEvent {
                event: Some(pb::prefetch_event::Event::Progress(p)),
            },
            move |rep: podsnap_store::PrefetchReport| pb::PrefetchEvent {
                event: Some(pb::prefetch_event::Event::Prefetched(pb::Prefetched {
                    snapshot_id: snapshot,
                    bytes_downloaded: rep.bytes_downloaded,
                    bytes_fetched: rep.bytes_fetched,
                    bytes_cached: rep.bytes_cached,
                })),
            },
        )))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<Self::CheckpointStream>, Status> {
        let r = req.into_inner();
        let post = match pb::PostCheckpoint::try_from(r.post_checkpoint) {
            Ok(pb::PostCheckpoint::Unspecified | pb::PostCheckpoint::Resume) => PostAction::Resume,
            Ok(pb::PostCheckpoint::Stop) => PostAction::Stop,
            Err(_) => {
                return Err(DaemonError::InvalidArgument(format!(
                    "unknown post_checkpoint {}",
                    r.post_checkpoint
                ))
                .into())
            }
        };
        let spec = CheckpointSpec {
            target: Some(target_from_pb(r.target)?),
            labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
            group_by: r.group_by,
            keep: r.keep,
            post,
            parent: nonempty(r.parent),
        };
        let engine = self.engine.clone();
        Ok(Response::new(stream_job(
            move |tx| engine.checkpoint(spec, Some(tx)),
            |p| pb::CheckpointEvent {
                event: Some(pb::checkpoint_event::Event::Progress(p)),
            },
            |m: Manifest| pb::CheckpointEvent {
                event: Some(pb::checkpoint_event::Event::Snapshot(snapshot_to_pb(&m))),
            },
        )))
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreStream>, Status> {
        let r = req.into_inner();
        if r.snapshot_id.is_empty() || r.bundle.is_empty() || r.container_id.is_empty() {
            return Err(DaemonError::InvalidArgument(
                "restore needs snapshot_id, bundle and container_id".into(),
            )
            .into());
        }
        let spec = RestoreSpec {
            snapshot: r.snapshot_id,
            bundle: PathBuf::from(r.bundle),
            container_id: r.container_id,
            log: nonempty(r.log_path).map(PathBuf::from),
            containers: r
                .containers
                .into_iter()
                .map(|c| ContainerSpec {
                    name: c.name,
                    container_id: c.container_id,
                    bundle: PathBuf::from(c.bundle),
                    log: nonempty(c.log_path).map(PathBuf::from),
                })
                .collect(),
        };
        let engine = self.engine.clone();
        let answer = stream_job(
            move |tx| engine.restore(spec, Some(tx)),
            |p| pb::RestoreEvent {
                event: Some(pb::restore_event::Event::Progress(p)),
            },
            |r: crate::engine::RestoredInfo| pb::RestoreEvent {
                event: Some(pb::restore_event::Event::Restored(pb::Restored {
                    container_id: r.container_id,
                    snapshot_id: r.snapshot,
                    pid: r.pid,
                    log_path: r.log.display().to_string(),
                    lazy: r.lazy,
                    job_id: r.job_id,
                })),
            },
        );
        if !r.wait_for_pages {
            return Ok(Response::new(answer));
        }
        // After a lazy `restored`: the job's progress until its last page, or its failure.
        let engine = self.engine.clone();
        let followed = futures::StreamExt::flat_map(answer, move |item| {
            let job = match &item {
                Ok(pb::RestoreEvent {
                    event: Some(pb::restore_event::Event::Restored(r)),
                }) if r.lazy => Some(r.job_id.clone()),
                _ => None,
            };
            let head = futures::stream::once(futures::future::ready(item));
            match job {
                Some(id) => {
                    Box::pin(head.chain(follow_pages(engine.clone(), id))) as EventStream<_>
                }
                None => Box::pin(head),
            }
        });
        Ok(Response::new(Box::pin(followed)))
    }

    async fn prepare_restore(
        &self,
        req: Request<pb::PrepareRestoreRequest>,
    ) -> Result<Response<pb::PrepareRestoreResponse>, Status> {
        let r = req.into_inner();
        if r.snapshot_id.is_empty() {
            return Err(DaemonError::InvalidArgument("snapshot_id is required".into()).into());
        }
        let spec = PrepareSpec {
            snapshot: r.snapshot_id,
            container_id: r.container_id,
            runsc_root: (!r.runsc_root.is_empty()).then(|| PathBuf::from(r.runsc_root)),
            background: r.background,
        };
        let engine = self.engine.clone();
        // Detached: a wrapper that gives up does not cancel a half-done verified fetch.
        let prepared = tokio::spawn(engine.prepare_restore(spec).in_current_span())
            .await
            .map_err(|e| Status::internal(format!("job task failed: {e}")))??;
        Ok(Response::new(pb::PrepareRestoreResponse {
            image_dir: prepared.image_dir.display().to_string(),
            snapshot: Some(snapshot_to_pb(&prepared.manifest)),
            lazy: prepared.lazy,
        }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        let labels: BTreeMap<_, _> = r.labels.into_iter().collect();
        let list = self.engine.list(&r.group, &labels).await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list.iter().map(snapshot_to_pb).collect(),
        }))
    }

    async fn get_snapshot(
        &self,
        req: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let m = self.engine.get(&req.into_inner().snapshot_id).await?;
        Ok(Response::new(snapshot_to_pb(&m)))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        self.engine.delete(&req.into_inner().snapshot_id).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn check_compatibility(
        &self,
        req: Request<pb::CheckCompatibilityRequest>,
    ) -> Result<Response<pb::CheckCompatibilityResponse>, Status> {
        let (_, c) = self
            .engine
            .check_compatibility(&req.into_inner().snapshot_id)
            .await?;
        Ok(Response::new(compat_to_pb(&c)))
    }

    async fn get_node_info(
        &self,
        _req: Request<pb::GetNodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let e = &self.engine;
        let runsc = e.runtime_info().await.ok().map(|i| {
            let c = &i.capabilities;
            let caps = [
                (c.compression, "compression"),
                (
                    c.exclude_committed_zero_pages,
                    "exclude-committed-zero-pages",
                ),
                (c.checkpoint_direct, "direct"),
                (c.leave_running, "leave-running"),
                (c.restore_background, "restore-background"),
                (c.cpu_features_command, "cpu-features"),
            ];
            pb::RunscInfo {
                path: i.runsc_path.display().to_string(),
                version: i.version.version.clone(),
                platform: i.platform.clone(),
                capabilities: caps
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| n.to_string())
                    .collect(),
                root: i.root.display().to_string(),
                rootfs_overlay: i.rootfs_overlay.label(),
                limits: i.policy().limits(),
            }
        });
        let shims = shims_of(&e.config().containerd_socket).await;
        Ok(Response::new(pb::NodeInfo {
            shims,
            node_name: e.config().node_name.clone(),
            podsnap_version: env!("CARGO_PKG_VERSION").into(),
            cpu: e.host_cpu().ok().map(cpu_to_pb),
            runsc,
            store_url: e.store().display_url().to_string(),
            state_dir: e.config().state_dir.display().to_string(),
            jobs_in_flight: e.jobs().in_flight() as u32,
            cache_dir: e
                .store()
                .cache()
                .map(|c| c.dir().display().to_string())
                .unwrap_or_default(),
            cache_max_bytes: e.store().cache().map_or(0, |c| c.max_bytes()),
            cache_bytes: e.store().cache().map_or(0, |c| c.stats().bytes),
            cached_snapshots: e.cached_snapshots().await,
        }))
    }

    async fn list_jobs(
        &self,
        _req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.engine.jobs().list().iter().map(job_to_pb).collect(),
        }))
    }
}

/// The containerd runtimes running gVisor containers (namespaces `k8s.io` and `default`):
/// one entry per runtime, binary and root, with its container count. Empty when containerd
/// does not answer within a second or two.
async fn shims_of(socket: &std::path::Path) -> Vec<pb::ShimInfo> {
    use podsnap_runtime::containerd::{ContainerdClient, ContainerdConfig};
    let client = ContainerdClient::new(ContainerdConfig {
        connect_attempts: 1,
        call_timeout: std::time::Duration::from_secs(2),
        ..ContainerdConfig::with_socket(socket)
    });
    let mut out: BTreeMap<(String, String, String, String), pb::ShimInfo> = BTreeMap::new();
    for ns in ["k8s.io", "default"] {
        let Ok(containers) = client.containers(ns).await else {
            continue;
        };
        for c in containers.iter().filter(|c| c.configured_for_runsc()) {
            let root = c
                .shim_root()
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            let key = (
                ns.to_string(),
                c.runtime.name.clone(),
                c.runtime.binary_name.clone(),
                root.clone(),
            );
            out.entry(key)
                .or_insert_with(|| pb::ShimInfo {
                    runtime: c.runtime.name.clone(),
                    binary: c.runtime.binary_name.clone(),
                    root,
                    config_path: c.runtime.config_path.clone(),
                    containers: 0,
                    namespace: ns.to_string(),
                })
                .containers += 1;
        }
    }
    out.into_values().collect()
}
