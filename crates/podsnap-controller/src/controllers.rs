//! The four `kube::runtime::Controller`s, one per kind, over the reconcilers: triggers
//! ([`crate::trigger`]), PodSnapshots ([`crate::snapshot`]) and restoring pods (those
//! labelled `podsnap.dev/restore=true`, [`crate::restore`]) and Nodes ([`crate::node`]: their
//! published facts). Each reconcile that fails goes
//! through [`error_policy`]: the requeue depends on the error ([`crate::error::Backoff`]),
//! and a success resets the object's backoff.

use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::crd::{PodSnapshot, PodSnapshotManualTrigger};
use crate::{node, restore, snapshot, trigger, Ctx, Error};

/// The backoff key of an object: its uid (a new object of the same name starts afresh).
fn key<K: Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

/// The requeue after a failed reconcile: by the kind of error, per object.
pub fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Ctx) -> Action {
    ctx.backoff.after(&key(obj.as_ref()), err)
}

/// `reconcile` with the object's backoff reset when it succeeds.
async fn with_backoff<K, F, Fut>(reconcile: F, obj: Arc<K>, ctx: Ctx) -> Result<Action, Error>
where
    K: Resource,
    F: FnOnce(Arc<K>, Ctx) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let k = key(obj.as_ref());
    let r = reconcile(obj, ctx.clone()).await;
    if r.is_ok() {
        ctx.backoff.reset(&k);
    }
    r
}

/// Runs one controller until its stream ends, logging failed reconciles.
fn run<K, F, Fut>(
    api: Api<K>,
    config: watcher::Config,
    reconcile: F,
    ctx: Ctx,
    what: &'static str,
) -> impl Future<Output = ()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(Arc<K>, Ctx) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let stream = Controller::new(api, config).run(
        move |obj, ctx| with_backoff(reconcile, obj, ctx),
        error_policy,
        ctx,
    );
    log_errors(stream, what)
}

async fn log_errors<T, E: std::fmt::Display>(s: impl Stream<Item = Result<T, E>>, what: &str) {
    s.for_each(|r| async move {
        if let Err(e) = r {
            warn!(error = %e, "{what} reconcile");
        }
    })
    .await
}

/// The four controllers; the future ends only if one of them stops.
pub async fn run_all(client: Client, ctx: Ctx) -> &'static str {
    let triggers = run(
        Api::<PodSnapshotManualTrigger>::all(client.clone()),
        watcher::Config::default(),
        trigger::reconcile,
        ctx.clone(),
        "trigger",
    );
    let snapshots = run(
        Api::<PodSnapshot>::all(client.clone()),
        watcher::Config::default(),
        snapshot::reconcile,
        ctx.clone(),
        "snapshot",
    );
    let nodes = run(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        node::reconcile_node,
        ctx.clone(),
        "node",
    );
    let pods = run(
        Api::<Pod>::all(client),
        watcher::Config::default().labels(&format!("{}=true", restore::RESTORE_LABEL)),
        restore::reconcile_pod,
        ctx,
        "pod",
    );
    tokio::select! {
        _ = triggers => "the trigger controller",
        _ = snapshots => "the snapshot controller",
        _ = pods => "the pod controller",
        _ = nodes => "the node controller",
    }
}
