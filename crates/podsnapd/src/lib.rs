//! podsnapd: the node daemon that checkpoints gVisor sandboxes into an object store and
//! restores them, here or on any node sharing the store.
//!
//! Layers: [`config`] (flags, env, TOML) -> [`engine`] (the flows, over the runtime trait and
//! the store) -> [`service`] (gRPC adapter, no logic) -> [`server`] (listeners). [`error`] is
//! the one place where domain errors become gRPC statuses; [`jobs`] is the durable journal;
//! [`metrics`] the Prometheus registry; [`telemetry`] logging and OTLP trace export.

pub mod config;
pub mod engine;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store_metrics;
pub mod telemetry;

use std::sync::Arc;

use anyhow::Context;

/// Builds the engine from a configuration: the store, the runtime (runsc + containerd).
pub async fn build_engine(cfg: config::Config) -> anyhow::Result<Arc<engine::Engine>> {
    let metrics = Arc::new(metrics::Metrics::new());
    let store = podsnap_store::Store::open(&cfg.store)
        .with_context(|| format!("opening store {}", podsnap_store::redact_url(&cfg.store)))?;
    let store = match &cfg.key_dir {
        Some(dir) => {
            let keys = podsnap_store::Keyring::load_dir(dir)
                .with_context(|| format!("loading group keys from {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), keys = keys.len(), "encryption at rest: group keys loaded");
            store.with_keyring(keys)
        }
        None => store,
    };
    let store = store_metrics::instrument(store, metrics.clone());
    let mut runsc = podsnap_runtime::Runsc::builder()
        .binary(&cfg.runsc)
        .root(&cfg.runsc_root);
    for f in &cfg.runsc_flags {
        runsc = runsc.flag(f);
    }
    let runtime = podsnap_runtime::RunscRuntime::new(runsc.build()).with_containerd(
        podsnap_runtime::ContainerdClient::new(podsnap_runtime::ContainerdConfig::with_socket(
            &cfg.containerd_socket,
        )),
    );
    let runtime: Arc<dyn podsnap_runtime::SandboxRuntime> = Arc::new(runtime);
    match runtime.info().await {
        Ok(info) => {
            tracing::info!(runsc = %info.runsc_path.display(), version = %info.version.version, root = %info.root.display(), "runsc found");
            metrics.build_info(&info.version.version);
        }
        Err(e) => {
            tracing::warn!(error = %error::chain(&e), "runsc is not usable yet; checkpoints and restores will fail until it is");
            metrics.build_info("unknown");
        }
    }
    Ok(Arc::new(engine::Engine::new(cfg, store, runtime, metrics)?))
}
