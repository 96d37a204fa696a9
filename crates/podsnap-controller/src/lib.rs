//! podsnap-controller: serves GKE's Pod Snapshot API (`podsnapshot.gke.io/v1`) on any cluster
//! whose gVisor nodes run podsnapd.
//!
//! - [`crd`]: the four kinds, with generated schemas.
//! - [`model`]: every decision as a pure function (selection, groups, retention, the pod-spec
//!   hash, which snapshot a new pod restores from).
//! - [`api`]: what the reconcilers call, as traits ([`api::Cluster`] for the Kubernetes API,
//!   [`api::NodeApi`] for the nodes' podsnapd), so they are tested over a double.
//! - [`nodes`]: finding a node's podsnapd and calling it over mutual TLS.
//! - [`conditions`]: the one way a status condition is set; [`error`]: errors and backoff.
//! - One reconciler per kind, each short, returning an `Action`:
//!   [`trigger`] (`PodSnapshotManualTrigger` -> a checkpoint job on the pod's node, polled
//!   until it ends -> a Ready `PodSnapshot`, retention), [`snapshot`] (`PodSnapshot`
//!   deletion reaches the store), [`restore`] (the admission decision that points a new pod
//!   at its snapshot, and its `PodRestored` condition from the node's restore job), [`node`]
//!   (each node's facts from its podsnapd, published on the Node).
//! - [`placement`]: which nodes can run a snapshot and which hold its pages; the webhook
//!   puts that on a restoring pod as node affinity.
//! - [`controllers`]: the four `kube::runtime::Controller`s over those reconcilers;
//!   [`webhook`]: the HTTPS server and its registration; [`election`]: one active controller.

pub mod api;
pub mod conditions;
pub mod controllers;
pub mod crd;
pub mod election;
pub mod error;
pub mod model;
pub mod node;
pub mod nodes;
pub mod placement;
pub mod restore;
pub mod snapshot;
pub mod trigger;
pub mod webhook;

#[cfg(test)]
mod testing;

use std::sync::Arc;

pub use error::Error;
pub use nodes::Nodes;

/// What every reconciler shares.
pub struct Context {
    pub cluster: Arc<dyn api::Cluster>,
    pub nodes: Arc<dyn api::NodeApi>,
    pub backoff: error::Backoff,
}

impl Context {
    pub fn new(cluster: Arc<dyn api::Cluster>, nodes: Arc<dyn api::NodeApi>) -> Ctx {
        Arc::new(Context {
            cluster,
            nodes,
            backoff: error::Backoff::default(),
        })
    }
}

pub type Ctx = Arc<Context>;

/// A W3C `traceparent` for a new trace (one per reconcile), passed to podsnapd so that its
/// spans and logs carry the same trace id.
pub fn new_traceparent() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    let trace: [u8; 16] = r.gen();
    let span: [u8; 8] = r.gen();
    format!("00-{}-{}-01", hex::encode(trace), hex::encode(span))
}

/// Seconds since an object's creation (0 when unknown or in the future).
pub fn age_secs(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| (k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()).max(0))
        .unwrap_or(0)
}
