//! An in-process daemon for the tests of the layer above the runtime trait.

use std::path::PathBuf;
use std::sync::Arc;

use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_proto::v1::podsnap_server::PodsnapServer;
use podsnap_runtime::SandboxRuntime;
use podsnap_store::Store;
use podsnapd::config::{Args, Config, FileConfig};
use podsnapd::engine::Engine;
use podsnapd::metrics::Metrics;
use podsnapd::service::Service;
use tonic::transport::Channel;

/// A daemon (engine, service, Unix socket server) in this process, and a client of it.
pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub client: PodsnapClient<Channel>,
    pub store: Store,
    pub engine: Arc<Engine>,
    pub state_dir: PathBuf,
}

pub async fn harness(runtime: Arc<dyn SandboxRuntime>, store: Store) -> Harness {
    harness_with(runtime, store, Args::default()).await
}

/// [`harness`] with more daemon flags (state dir, store and node name are set here).
pub async fn harness_with(runtime: Arc<dyn SandboxRuntime>, store: Store, args: Args) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let cfg = Config::merge(
        Args {
            state_dir: Some(state_dir.clone()),
            store: Some("memory://".into()),
            node_name: Some("node-a".into()),
            ..args
        },
        FileConfig::default(),
    )
    .unwrap();
    let engine =
        Arc::new(Engine::new(cfg, store.clone(), runtime, Arc::new(Metrics::new())).unwrap());
    let sock = dir.path().join("d.sock");
    let listener = podsnapd::server::bind_unix(&sock, 0o660, None).unwrap();
    let svc = PodsnapServer::new(Service::new(engine.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    let client = podsnap_proto::client::podsnapd(&sock).await.unwrap();
    Harness {
        _dir: dir,
        client,
        store,
        engine,
        state_dir,
    }
}

pub fn memory_store() -> Store {
    Store::open("memory://").unwrap()
}

pub fn checkpoint_req(
    id: &str,
    labels: &[(&str, &str)],
    group_by: &[&str],
    keep: u32,
    stop: bool,
) -> pb::CheckpointRequest {
    pb::CheckpointRequest {
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::RunscId(id.into())),
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        group_by: group_by.iter().map(|s| s.to_string()).collect(),
        keep,
        post_checkpoint: if stop {
            pb::PostCheckpoint::Stop
        } else {
            pb::PostCheckpoint::Resume
        } as i32,
        parent: String::new(),
    }
}

/// Runs a checkpoint stream to its end: (progress events, final snapshot or status).
pub async fn run_checkpoint(
    client: &mut PodsnapClient<Channel>,
    req: pb::CheckpointRequest,
) -> (Vec<pb::Progress>, Result<pb::Snapshot, tonic::Status>) {
    let mut progress = Vec::new();
    let mut stream = match client.checkpoint(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (progress, Err(e)),
    };
    let mut snap = None;
    loop {
        match stream.message().await {
            Ok(Some(ev)) => match ev.event.unwrap() {
                pb::checkpoint_event::Event::Progress(p) => progress.push(p),
                pb::checkpoint_event::Event::Snapshot(s) => snap = Some(s),
            },
            Ok(None) => break,
            Err(e) => return (progress, Err(e)),
        }
    }
    (
        progress,
        snap.ok_or_else(|| tonic::Status::internal("no snapshot event")),
    )
}
