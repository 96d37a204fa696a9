//! `PodSnapshot`: its deletion reaches the store, and retention trims a group.
//!
//! Every PodSnapshot carries the finalizer `podsnap.dev/delete-stored-snapshot` (added here
//! if missing). When one is deleted, its reconcile sets `Ready=False/Deleting` first (so no
//! client or admission decision takes it for restorable any more), deletes the stored image
//! through a podsnapd that serves its store (the node that took it first, then any other;
//! an image already gone is fine), and only then removes the finalizer. A failure is
//! retried with the controller's backoff.
//!
//! [`retention`] (called by the trigger reconciler once a snapshot is recorded) marks the
//! group's oldest Ready snapshots beyond the policy's count `Ready=False/Deleting` and
//! deletes them, before the trigger says Complete.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::Note;
use crate::conditions;
use crate::crd::PodSnapshot;
use crate::model::{self, GROUP_LABEL, READY, STORE_FINALIZER};
use crate::{Ctx, Error};

/// The `Ready=False` reason of a snapshot being deleted (by a user or by retention).
pub const DELETING: &str = "Deleting";

pub async fn reconcile(snap: Arc<PodSnapshot>, ctx: Ctx) -> Result<Action, Error> {
    let has_finalizer = snap.finalizers().iter().any(|f| f == STORE_FINALIZER);
    if snap.metadata.deletion_timestamp.is_none() {
        if !has_finalizer {
            let mut fs = snap.finalizers().to_vec();
            fs.push(STORE_FINALIZER.to_string());
            ctx.cluster.set_finalizers(&snap, fs).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        return Ok(Action::await_change());
    }
    mark_deleting(&ctx, &snap, "being deleted; its stored image goes first").await?;
    delete_stored(&snap, &ctx).await?;
    let rest = snap
        .finalizers()
        .iter()
        .filter(|f| *f != STORE_FINALIZER)
        .cloned()
        .collect();
    ctx.cluster.set_finalizers(&snap, rest).await?;
    Ok(Action::await_change())
}

/// Sets `Ready=False/Deleting` (a no-op when it already says so).
pub async fn mark_deleting(ctx: &Ctx, s: &PodSnapshot, why: &str) -> Result<(), Error> {
    let mut status = s.status.clone().unwrap_or_default();
    let c = conditions::new(READY, false, DELETING, why);
    if conditions::set(&mut status.conditions, c, s.metadata.generation) {
        ctx.cluster.patch_snapshot_status(s, &status).await?;
    }
    Ok(())
}

/// Whether retention (or a deletion) already marked the snapshot.
fn marked_deleting(s: &PodSnapshot) -> bool {
    s.status
        .as_ref()
        .and_then(|st| conditions::get(&st.conditions, READY))
        .is_some_and(|c| c.status == "False" && c.reason == DELETING)
}

/// Deletes the oldest Ready snapshots of `newest`'s group beyond `max` (0: keep all): each
/// reads `Ready=False/Deleting` before its deletion is asked for. Snapshots marked earlier
/// and not yet deleted (a failure in between) are deleted too.
pub async fn retention(ctx: &Ctx, newest: &PodSnapshot, max: u32) -> Result<(), Error> {
    let Some(group) = newest.labels().get(GROUP_LABEL).filter(|_| max > 0) else {
        return Ok(());
    };
    let ns = newest.namespace().unwrap_or_default();
    let members = ctx
        .cluster
        .snapshots(&ns, &format!("{GROUP_LABEL}={group}"))
        .await?;
    let victims = model::retention_victims(&members, max);
    let why = format!("retention: its group keeps the newest {max}");
    for s in &members {
        let name = s.name_any();
        let leftover = marked_deleting(s) && s.metadata.deletion_timestamp.is_none();
        if !victims.contains(&name) && !leftover {
            continue;
        }
        info!(snapshot = %name, keep = max, "retention: deleting");
        mark_deleting(ctx, s, &why).await?;
        ctx.cluster.delete_snapshot(&ns, &name).await?;
        let note = Note::normal("RetentionDeleting", "Retention", why.clone());
        ctx.cluster.publish(&s.object_ref(&()), note).await;
    }
    Ok(())
}

/// Deletes the stored image through a podsnapd serving its store.
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
        match ctx.nodes.store_url(&node, &tp).await {
            Ok(url) if wanted.is_empty() || model::same_store(&url, &wanted) => {}
            Ok(url) => {
                last = Some(Error::Invalid(format!(
                    "podsnapd on node {node} serves {url}, not {wanted}"
                )));
                continue;
            }
            Err(e) => {
                last = Some(e);
                continue;
            }
        }
        ctx.nodes.delete_snapshot(&node, &tp, &id).await?;
        info!(snapshot = %s.name_any(), id = %id, node = %node, "deleted from the store");
        let note = Note::normal(
            "SnapshotDeleted",
            "Delete",
            format!("snapshot {id} deleted from {wanted} by node {node}"),
        );
        ctx.cluster.publish(&s.object_ref(&()), note).await;
        return Ok(());
    }
    let why = last.map_or_else(|| "no node in the cluster".to_string(), |e| e.to_string());
    warn!(snapshot = %s.name_any(), error = %why, "cannot delete the stored snapshot yet");
    // Nodes come and go: retried with backoff, never given up.
    Err(Error::Podsnapd {
        node: "(any)".into(),
        endpoint: wanted,
        message: format!("no podsnapd serving the store could delete snapshot {id}: {why}"),
        code: tonic::Code::Unavailable,
    })
}
