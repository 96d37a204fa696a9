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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::{PodSnapshotSpec, PodSnapshotStatus};
    use crate::error::Retry;
    use crate::testing::*;
    use podsnap_proto::v1 as pb;

    fn stored(f: &Fake, name: &str, id: &str) {
        let mut s = PodSnapshot::new(name, PodSnapshotSpec::default());
        s.metadata.namespace = Some(NS.into());
        s.metadata.finalizers = Some(vec![STORE_FINALIZER.into()]);
        s.status = Some(PodSnapshotStatus {
            conditions: vec![conditions::new(READY, true, "Stored", "")],
            snapshot_id: Some(id.into()),
            store_url: Some(STORE.into()),
            node_name: Some(NODE.into()),
            ..Default::default()
        });
        f.put_snapshot(s);
        f.state().stored.push(pb::Snapshot {
            id: id.into(),
            ..Default::default()
        });
    }

    fn deleting(f: &Fake, name: &str) -> Arc<PodSnapshot> {
        let mut st = f.state();
        let s = st
            .snapshots
            .get_mut(&(NS.to_string(), name.to_string()))
            .unwrap();
        s.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        Arc::new(s.clone())
    }

    #[tokio::test]
    async fn a_deleted_snapshot_reads_not_ready_then_its_image_then_the_object_goes() {
        let f = world();
        stored(&f, "s1", "ID1");
        let s = deleting(&f, "s1");
        assert_eq!(reconcile(s, f.ctx()).await.unwrap(), Action::await_change());
        let st = f.state();
        assert!(st.stored.is_empty(), "the image is deleted from the store");
        assert!(st.snapshots.is_empty(), "the finalizer is removed");
        assert_eq!(st.writes, ["snapshot/s1 Ready=False/Deleting"]);
        assert!(st.events.iter().any(|(_, n)| n.reason == "SnapshotDeleted"));
    }

    #[tokio::test]
    async fn no_node_to_delete_the_image_keeps_the_finalizer_and_is_retried() {
        let f = world();
        stored(&f, "s1", "ID1");
        take_down(&f, NODE);
        let e = reconcile(deleting(&f, "s1"), f.ctx()).await.unwrap_err();
        assert_eq!(e.retry(), Retry::Transient);
        let s = f.snapshot(NS, "s1").expect("still there");
        assert_eq!(s.finalizers(), [STORE_FINALIZER]);
        assert!(!model::is_ready(&s), "no longer offered for restore");
        f.state().node_store.insert(NODE.into(), STORE.into());
        reconcile(Arc::new(s), f.ctx()).await.unwrap();
        assert!(f.snapshot(NS, "s1").is_none());
        assert!(f.state().stored.is_empty());
    }

    #[tokio::test]
    async fn only_a_node_serving_the_snapshots_store_deletes_it() {
        let f = world();
        stored(&f, "s1", "ID1");
        f.state()
            .node_store
            .insert(NODE.into(), "gs://other".into());
        f.state().node_store.insert("n2".into(), STORE.into());
        reconcile(deleting(&f, "s1"), f.ctx()).await.unwrap();
        assert!(f.state().stored.is_empty());
        let st = f.state();
        assert!(st.events.iter().any(|(_, n)| n.message.contains("node n2")));
    }

    #[tokio::test]
    async fn a_snapshot_without_the_finalizer_gets_it() {
        let f = world();
        let mut s = PodSnapshot::new("s1", PodSnapshotSpec::default());
        s.metadata.namespace = Some(NS.into());
        f.put_snapshot(s);
        let s = Arc::new(f.snapshot(NS, "s1").unwrap());
        assert_eq!(reconcile(s, f.ctx()).await.unwrap(), Action::await_change());
        assert_eq!(
            f.snapshot(NS, "s1").unwrap().finalizers(),
            [STORE_FINALIZER]
        );
    }

    #[tokio::test]
    async fn retention_also_deletes_a_victim_marked_earlier_but_not_deleted() {
        let f = world();
        for (name, secs) in [("a", 1), ("b", 2), ("c", 3)] {
            stored(&f, name, name);
            let mut st = f.state();
            let s = st
                .snapshots
                .get_mut(&(NS.to_string(), name.to_string()))
                .unwrap();
            s.metadata.labels = Some([(GROUP_LABEL.to_string(), "g".to_string())].into());
            s.metadata.creation_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
            ));
        }
        // "a" was marked by an earlier retention whose delete failed.
        let a = f.snapshot(NS, "a").unwrap();
        mark_deleting(&f.ctx(), &a, "earlier").await.unwrap();
        let newest = f.snapshot(NS, "c").unwrap();
        retention(&f.ctx(), &newest, 1).await.unwrap();
        let st = f.state();
        let deleted: Vec<_> = st
            .writes
            .iter()
            .filter(|w| w.starts_with("delete"))
            .collect();
        assert_eq!(deleted.len(), 2, "{:?}", st.writes);
        assert!(st.writes.iter().any(|w| w == "delete snapshot/a"));
        assert!(st.writes.iter().any(|w| w == "delete snapshot/b"));
        assert!(model::is_ready(
            &st.snapshots[&(NS.to_string(), "c".to_string())]
        ));
    }
}
