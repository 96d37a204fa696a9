//! What the reconcilers call, as two traits: [`Cluster`] (the Kubernetes API: reads, status
//! patches, Events) and [`NodeApi`] (the nodes' podsnapd). The binary runs them over
//! [`KubeCluster`] (a `kube::Client` and kube's event [`Recorder`]) and [`crate::Nodes`]
//! (mutual TLS to each node); the reconcilers' tests over an in-memory double of both, so
//! every status transition is tested without a cluster.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference, Pod, PodCondition};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use podsnap_proto::v1 as pb;
use serde_json::json;

use crate::crd::{
    PodSnapshot, PodSnapshotManualTrigger, PodSnapshotManualTriggerStatus, PodSnapshotPolicy,
    PodSnapshotStatus, PodSnapshotStorageConfig,
};
use crate::Error;

/// The controller's name on the Events it publishes.
pub const REPORTER: &str = "podsnap-controller";

/// An Event about an object (kube's `Recorder` publishes it as an `events.k8s.io` Event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    /// PascalCase, what happened (`CheckpointStarted`, `SnapshotDeleted`, ...).
    pub reason: String,
    /// PascalCase, what the controller did (`Checkpoint`, `Retention`, ...).
    pub action: String,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &str, action: &str, message: impl Into<String>) -> Note {
        Note {
            warning: false,
            reason: reason.into(),
            action: action.into(),
            message: message.into(),
        }
    }

    pub fn warning(reason: &str, action: &str, message: impl Into<String>) -> Note {
        Note {
            warning: true,
            ..Note::normal(reason, action, message)
        }
    }
}

/// The Kubernetes API calls of the reconcilers. Status writes carry the `resourceVersion`
/// of the object they were computed from (a stale one is a conflict, [`crate::error::Retry`]).
#[async_trait]
pub trait Cluster: Send + Sync {
    async fn trigger(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PodSnapshotManualTrigger>, Error>;
    /// Writes a trigger's status; returns the trigger as written.
    async fn patch_trigger_status(
        &self,
        t: &PodSnapshotManualTrigger,
        status: &PodSnapshotManualTriggerStatus,
    ) -> Result<PodSnapshotManualTrigger, Error>;
    /// Sets one annotation on a trigger (metadata only; the status is untouched).
    async fn annotate_trigger(
        &self,
        t: &PodSnapshotManualTrigger,
        key: &str,
        value: &str,
    ) -> Result<(), Error>;
    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, Error>;
    /// Deletes a pod at once (grace 0), only if its uid is `uid` (when given); a pod
    /// already gone, or replaced by another of the same name, is not an error.
    async fn delete_pod(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<(), Error>;
    /// Writes one pod condition (merged by type with the kubelet's).
    async fn patch_pod_condition(
        &self,
        ns: &str,
        name: &str,
        c: &PodCondition,
    ) -> Result<(), Error>;
    /// The messages of the Warning events about the object with `uid`.
    async fn warnings(&self, ns: &str, uid: &str) -> Result<Vec<String>, Error>;
    async fn policies(&self, ns: &str) -> Result<Vec<PodSnapshotPolicy>, Error>;
    async fn policy(&self, ns: &str, name: &str) -> Result<Option<PodSnapshotPolicy>, Error>;
    async fn storage_config(&self, name: &str) -> Result<Option<PodSnapshotStorageConfig>, Error>;
    async fn snapshot(&self, ns: &str, name: &str) -> Result<Option<PodSnapshot>, Error>;
    /// The PodSnapshots of `ns` matching a label selector.
    async fn snapshots(&self, ns: &str, selector: &str) -> Result<Vec<PodSnapshot>, Error>;
    /// Creates a PodSnapshot; one of that name already there is returned instead.
    async fn create_snapshot(&self, ns: &str, s: &PodSnapshot) -> Result<PodSnapshot, Error>;
    async fn patch_snapshot_status(
        &self,
        s: &PodSnapshot,
        status: &PodSnapshotStatus,
    ) -> Result<(), Error>;
    /// Deletes a PodSnapshot (its finalizer then runs); one already gone is not an error.
    async fn delete_snapshot(&self, ns: &str, name: &str) -> Result<(), Error>;
    /// Replaces a PodSnapshot's finalizers with `finalizers`, if the object still has the
    /// ones `s` was read with (a conflict otherwise, as kube's finalizer helper does).
    async fn set_finalizers(&self, s: &PodSnapshot, finalizers: Vec<String>) -> Result<(), Error>;
    /// Publishes an Event about `obj`. Never fails a reconcile: a lost Event is logged.
    async fn publish(&self, obj: &ObjectReference, note: Note);
    /// Every Node.
    async fn nodes(&self) -> Result<Vec<Node>, Error>;
    /// Sets labels and annotations on a Node (a merge patch: others are kept).
    async fn patch_node_metadata(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), Error>;
}

/// The outcome of starting a checkpoint on a node: podsnapd's job (it runs on when the
/// caller goes away), or, for a checkpoint that finished before any progress, its snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Started {
    Job(String),
    Done(Box<pb::Snapshot>),
}

/// The podsnapd calls of the reconcilers, by node name; `tp` is the reconcile's W3C
/// `traceparent`, passed on so that podsnapd's spans share its trace.
#[async_trait]
pub trait NodeApi: Send + Sync {
    /// The store URL the node's podsnapd serves.
    async fn store_url(&self, node: &str, tp: &str) -> Result<String, Error>;
    /// What the node's podsnapd says of its node (`GetNodeInfo`).
    async fn node_info(&self, node: &str, tp: &str) -> Result<pb::NodeInfo, Error>;
    /// Starts a checkpoint and returns as soon as podsnapd names its job.
    async fn start_checkpoint(
        &self,
        node: &str,
        tp: &str,
        req: pb::CheckpointRequest,
    ) -> Result<Started, Error>;
    /// The node's in-flight and recent jobs.
    async fn jobs(&self, node: &str, tp: &str) -> Result<Vec<pb::Job>, Error>;
    async fn snapshot(&self, node: &str, tp: &str, id: &str) -> Result<pb::Snapshot, Error>;
    /// Stored snapshots carrying all of `labels`, newest first.
    async fn find_snapshots(
        &self,
        node: &str,
        tp: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Snapshot>, Error>;
    /// Deletes a stored snapshot; one already gone is not an error.
    async fn delete_snapshot(&self, node: &str, tp: &str, id: &str) -> Result<(), Error>;
    /// Every node's name, `preferred` first.
    async fn names(&self, preferred: Option<&str>) -> Result<Vec<String>, Error>;
}

/// [`Cluster`] over the API server.
pub struct KubeCluster {
    client: Client,
    recorder: Recorder,
    event_failure_logged: AtomicBool,
}

impl KubeCluster {
    pub fn new(client: Client, instance: Option<String>) -> KubeCluster {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance,
        };
        KubeCluster {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            event_failure_logged: AtomicBool::new(false),
        }
    }

    fn ns<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }
}

/// A merge patch of `status` that only applies to the object version `rv` was read from.
fn status_patch<S: serde::Serialize>(rv: Option<String>, status: &S) -> serde_json::Value {
    match rv {
        Some(rv) => json!({ "metadata": { "resourceVersion": rv }, "status": status }),
        None => json!({ "status": status }),
    }
}

fn gone_is_ok<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn trigger(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PodSnapshotManualTrigger>, Error> {
        Ok(self
            .ns::<PodSnapshotManualTrigger>(ns)
            .get_opt(name)
            .await?)
    }

    async fn patch_trigger_status(
        &self,
        t: &PodSnapshotManualTrigger,
        status: &PodSnapshotManualTriggerStatus,
    ) -> Result<PodSnapshotManualTrigger, Error> {
        let patch = status_patch(t.resource_version(), status);
        Ok(self
            .ns::<PodSnapshotManualTrigger>(&t.namespace().unwrap_or_default())
            .patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?)
    }

    async fn annotate_trigger(
        &self,
        t: &PodSnapshotManualTrigger,
        key: &str,
        value: &str,
    ) -> Result<(), Error> {
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.ns::<PodSnapshotManualTrigger>(&t.namespace().unwrap_or_default())
            .patch(&t.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, Error> {
        Ok(self.ns::<Pod>(ns).get_opt(name).await?)
    }

    async fn delete_pod(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<(), Error> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: uid.filter(|u| !u.is_empty()).map(|u| Preconditions {
                uid: Some(u.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.ns::<Pod>(ns).delete(name, &params).await {
            // The uid precondition failed: a new pod of that name, not ours to delete.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            r => gone_is_ok(r),
        }
    }

    async fn patch_pod_condition(
        &self,
        ns: &str,
        name: &str,
        c: &PodCondition,
    ) -> Result<(), Error> {
        let patch = json!({ "status": { "conditions": [c] } });
        self.ns::<Pod>(ns)
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        Ok(())
    }

    async fn warnings(&self, ns: &str, uid: &str) -> Result<Vec<String>, Error> {
        let params = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
        let events = self.ns::<CoreEvent>(ns).list(&params).await?.items;
        Ok(events
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            // Not this controller's own Events.
            .filter(|e| e.reporting_component.as_deref() != Some(REPORTER))
            .filter_map(|e| e.message)
            .collect())
    }

    async fn policies(&self, ns: &str) -> Result<Vec<PodSnapshotPolicy>, Error> {
        Ok(self
            .ns::<PodSnapshotPolicy>(ns)
            .list(&Default::default())
            .await?
            .items)
    }

    async fn policy(&self, ns: &str, name: &str) -> Result<Option<PodSnapshotPolicy>, Error> {
        Ok(self.ns::<PodSnapshotPolicy>(ns).get_opt(name).await?)
    }

    async fn storage_config(&self, name: &str) -> Result<Option<PodSnapshotStorageConfig>, Error> {
        Ok(Api::<PodSnapshotStorageConfig>::all(self.client.clone())
            .get_opt(name)
            .await?)
    }

    async fn snapshot(&self, ns: &str, name: &str) -> Result<Option<PodSnapshot>, Error> {
        Ok(self.ns::<PodSnapshot>(ns).get_opt(name).await?)
    }

    async fn snapshots(&self, ns: &str, selector: &str) -> Result<Vec<PodSnapshot>, Error> {
        let params = ListParams::default().labels(selector);
        Ok(self.ns::<PodSnapshot>(ns).list(&params).await?.items)
    }

    async fn create_snapshot(&self, ns: &str, s: &PodSnapshot) -> Result<PodSnapshot, Error> {
        let api = self.ns::<PodSnapshot>(ns);
        match api.create(&PostParams::default(), s).await {
            Ok(created) => Ok(created),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&s.name_any()).await?),
            Err(e) => Err(e.into()),
        }
    }

    async fn patch_snapshot_status(
        &self,
        s: &PodSnapshot,
        status: &PodSnapshotStatus,
    ) -> Result<(), Error> {
        let patch = status_patch(s.resource_version(), status);
        self.ns::<PodSnapshot>(&s.namespace().unwrap_or_default())
            .patch_status(&s.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn delete_snapshot(&self, ns: &str, name: &str) -> Result<(), Error> {
        gone_is_ok(
            self.ns::<PodSnapshot>(ns)
                .delete(name, &Default::default())
                .await,
        )
    }

    async fn set_finalizers(&self, s: &PodSnapshot, finalizers: Vec<String>) -> Result<(), Error> {
        // An empty list is absent on the server: tested as null, as kube's helper does.
        let current = s.finalizers();
        let test = match current.is_empty() {
            false => json!({ "op": "test", "path": "/metadata/finalizers", "value": current }),
            true => json!({ "op": "test", "path": "/metadata/finalizers", "value": null }),
        };
        let patch: json_patch::Patch = serde_json::from_value(json!([
            test,
            { "op": "add", "path": "/metadata/finalizers", "value": finalizers },
        ]))
        .map_err(|e| Error::Invalid(format!("finalizer patch: {e}")))?;
        let r = self
            .ns::<PodSnapshot>(&s.namespace().unwrap_or_default())
            .patch(
                &s.name_any(),
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await;
        match r {
            // The test failed: someone changed the list; retried on a fresh read.
            Err(kube::Error::Api(e)) if e.code == 422 => Err(Error::Kube(kube::Error::Api(
                kube::core::Status::failure(&e.message, "Conflict")
                    .with_code(409)
                    .boxed(),
            ))),
            r => gone_is_ok(r),
        }
    }

    async fn nodes(&self) -> Result<Vec<Node>, Error> {
        Ok(Api::<Node>::all(self.client.clone())
            .list(&Default::default())
            .await?
            .items)
    }

    async fn patch_node_metadata(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let patch = json!({ "metadata": { "labels": labels, "annotations": annotations } });
        Api::<Node>::all(self.client.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn publish(&self, obj: &ObjectReference, note: Note) {
        let ev = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason,
            note: Some(note.message),
            action: note.action,
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, obj).await {
            // Once at WARN (RBAC may lack events.k8s.io), then at DEBUG.
            if !self.event_failure_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot publish Events (further failures at debug level)");
            } else {
                tracing::debug!(error = %e, "cannot publish an Event");
            }
        }
    }
}
