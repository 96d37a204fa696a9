//! podsnap-controller: serves GKE's Pod Snapshot API (`podsnapshot.gke.io/v1`) on any cluster
//! whose gVisor nodes run podsnapd.
//!
//! - [`crd`]: the four kinds, with generated schemas.
//! - [`model`]: every decision as a pure function (selection, groups, retention, the pod-spec
//!   hash, which snapshot a new pod restores from).
//! - [`nodes`]: finding a node's podsnapd and calling it over mutual TLS.
//! - [`trigger`]: `PodSnapshotManualTrigger` -> checkpoint -> `PodSnapshot`, retention.
//! - [`snapshot`]: `PodSnapshot` deletion reaches the store (finalizer).
//! - [`restore`]: the mutating admission webhook that points a new pod at its snapshot, and
//!   the `PodRestored` condition once it runs.
//! - [`webhook`]: the HTTPS server and its registration; [`election`]: one active controller.

pub mod crd;
pub mod election;
pub mod model;
pub mod nodes;
pub mod restore;
pub mod snapshot;
pub mod trigger;
pub mod webhook;

use std::sync::Arc;

pub use nodes::Nodes;

/// Errors of the controller's library; the binary adds context with anyhow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Bad input in an object (a policy, a storage config, an annotation).
    #[error("{0}")]
    Invalid(String),
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The node's podsnapd could not be reached or refused.
    #[error("podsnapd on node {node} ({endpoint}): {message}")]
    Podsnapd {
        node: String,
        endpoint: String,
        message: String,
    },
    #[error("{0}")]
    Finalizer(String),
}

/// What every reconciler shares.
pub struct Context {
    pub client: kube::Client,
    pub nodes: Nodes,
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
