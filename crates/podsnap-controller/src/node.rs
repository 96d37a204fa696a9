//! The Node reconciler: publishes each node's facts from its podsnapd on the Node, where
//! the webhook's placement ([`crate::placement`]) and the scheduler can read them.
//!
//! For every Node: `GetNodeInfo` on its podsnapd, then the labels and annotations of
//! [`placement::published`] (without the CPU features an operator hid on the Node,
//! [`placement::CPU_FEATURES_HIDDEN_ANNOTATION`]) are merged into the Node when they differ
//! from what it carries
//! (a Node that already says it all is not written). Looked at again every
//! [`REFRESH`] (the cached snapshots change as the node works). A node whose podsnapd does
//! not answer is not a podsnap node (or its podsnapd is down): nothing is written, what it
//! published before is kept (CPU and runsc do not change while podsnapd restarts), and it
//! is asked again after [`UNREACHABLE_RECHECK`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use tracing::{debug, info};

use crate::placement;
use crate::{Ctx, Error};

/// How often a node's published facts are refreshed.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long before a node whose podsnapd did not answer is asked again (short: on a fresh
/// install the controller is up before the DaemonSet's podsnapd; measured on the local
/// cluster, 120 s here delayed the first facts by two minutes).
pub const UNREACHABLE_RECHECK: Duration = Duration::from_secs(30);

pub async fn reconcile_node(node: Arc<Node>, ctx: Ctx) -> Result<Action, Error> {
    let name = node.name_any();
    let info = match ctx.nodes.node_info(&name, &crate::new_traceparent()).await {
        Ok(i) => i,
        Err(e) => {
            debug!(node = %name, error = %e, "no podsnapd answers for this node; nothing published");
            return Ok(Action::requeue(UNREACHABLE_RECHECK));
        }
    };
    let hidden = placement::hidden_features(&node);
    let (labels, annotations) = placement::published(&info, &hidden);
    if !placement::is_published(&node, &labels, &annotations) {
        info!(node = %name, runsc = ?labels.get(placement::RUNSC_RELEASE_LABEL),
              cached = %info.cached_snapshots.len(), "publishing node facts");
        ctx.cluster
            .patch_node_metadata(&name, &labels, &annotations)
            .await?;
    }
    Ok(Action::requeue(REFRESH))
}
