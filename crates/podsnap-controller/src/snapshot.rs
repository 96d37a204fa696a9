//! `PodSnapshot` deletion reaches the store: a finalizer deletes the stored snapshot through
//! a podsnapd that serves its store (the node that took it first, then any other node), and
//! only then lets the object go. A snapshot already gone from the store is not an error.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Api, ResourceExt};
use podsnap_proto::v1 as pb;
use tracing::{info, warn};

use crate::crd::PodSnapshot;
use crate::model::{self, STORE_FINALIZER};
use crate::{Ctx, Error};

pub async fn reconcile(snap: Arc<PodSnapshot>, ctx: Ctx) -> Result<Action, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let api: Api<PodSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, STORE_FINALIZER, snap, |event| async {
        match event {
            Event::Apply(_) => Ok(Action::await_change()),
            Event::Cleanup(s) => delete_stored(&s, &ctx)
                .await
                .map(|_| Action::await_change()),
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

async fn delete_stored(s: &PodSnapshot, ctx: &Ctx) -> Result<(), Error> {
    let Some(st) = s.status.as_ref() else {
        return Ok(()); // never stored
    };
    let Some(id) = st.snapshot_id.clone() else {
        return Ok(());
    };
    let wanted = st.store_url.clone().unwrap_or_default();
    let tp = crate::new_traceparent();
    let mut last = None;
    for node in ctx.nodes.names(st.node_name.as_deref()).await? {
        let nc = match ctx.nodes.connect(&node, &tp).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut client = nc.client.clone();
        match client
            .get_node_info(nc.request(pb::GetNodeInfoRequest {}))
            .await
        {
            Ok(info)
                if wanted.is_empty() || model::same_store(&info.get_ref().store_url, &wanted) => {}
            Ok(info) => {
                last = Some(Error::Invalid(format!(
                    "podsnapd on node {node} serves {}, not {wanted}",
                    info.get_ref().store_url
                )));
                continue;
            }
            Err(e) => {
                last = Some(nc.error("node info", &e));
                continue;
            }
        }
        return match client
            .delete_snapshot(nc.request(pb::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
            }))
            .await
        {
            Ok(_) => {
                info!(snapshot = %s.name_any(), id = %id, node = %node, "deleted from the store");
                Ok(())
            }
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(nc.error("delete", &e)),
        };
    }
    let e = last.unwrap_or_else(|| Error::NotFound("no node in the cluster".into()));
    warn!(snapshot = %s.name_any(), error = %e, "cannot delete the stored snapshot yet");
    Err(e)
}

pub fn retry_after(_e: &Error) -> Action {
    Action::requeue(Duration::from_secs(10))
}
