//! An in-memory double of the Kubernetes API ([`Cluster`]) and of the nodes' podsnapd
//! ([`NodeApi`]) for the reconcilers' tests: objects with resource versions (a stale status
//! write is a 409, as on a real API server), podsnapd jobs and a store, and failures to
//! inject by call name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use podsnap_proto::v1 as pb;

use crate::api::{Cluster, NodeApi, Note, Started};
use crate::crd::*;
use crate::model;
use crate::{Context, Ctx, Error};

type Key = (String, String);

#[derive(Default)]
pub struct State {
    rv: u64,
    pub triggers: BTreeMap<Key, PodSnapshotManualTrigger>,
    pub pods: BTreeMap<Key, Pod>,
    pub policies: BTreeMap<Key, PodSnapshotPolicy>,
    pub configs: BTreeMap<String, PodSnapshotStorageConfig>,
    pub snapshots: BTreeMap<Key, PodSnapshot>,
    /// Warning event messages by object uid (the kubelet's).
    pub warnings: BTreeMap<String, Vec<String>>,
    /// Events published: (object name, note).
    pub events: Vec<(String, Note)>,
    /// Every status write, in order: (kind/name, what).
    pub writes: Vec<String>,
    /// podsnapd: the store each node serves.
    pub node_store: BTreeMap<String, String>,
    pub jobs: BTreeMap<String, Vec<pb::Job>>,
    /// The shared store's snapshots.
    pub stored: Vec<pb::Snapshot>,
    pub checkpoints: Vec<pb::CheckpointRequest>,
    /// What the next checkpoint start answers (default: a running job `job-N`).
    pub start_answer: Option<Result<Started, Error>>,
    /// Calls that fail (by method name), each entry once.
    pub fail: Vec<(&'static str, Error)>,
    /// The cluster's Nodes, by name.
    pub nodes: BTreeMap<String, Node>,
    /// What each node's podsnapd answers to GetNodeInfo (a node up without one answers a
    /// default NodeInfo).
    pub node_info: BTreeMap<String, pb::NodeInfo>,
    /// How long a podsnapd takes to answer GetSnapshot.
    pub snapshot_delay: Option<std::time::Duration>,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

pub fn unavailable(node: &str) -> Error {
    Error::Podsnapd {
        node: node.into(),
        endpoint: "https://10.0.0.1:9443".into(),
        message: "cannot connect: connection refused".into(),
        code: tonic::Code::Unavailable,
    }
}

pub fn conflict() -> Error {
    Error::Kube(kube::Error::Api(
        kube::core::Status::failure("the object has been modified", "Conflict")
            .with_code(409)
            .boxed(),
    ))
}

fn key<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn k(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

impl Fake {
    pub fn ctx(&self) -> Ctx {
        Context::new(Arc::new(self.clone()), Arc::new(self.clone()))
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Fails the next call of `call` with `e`.
    pub fn fail(&self, call: &'static str, e: Error) {
        self.state().fail.push((call, e));
    }

    fn check(&self, call: &'static str) -> Result<(), Error> {
        let mut s = self.state();
        match s.fail.iter().position(|(c, _)| *c == call) {
            Some(i) => Err(s.fail.remove(i).1),
            None => Ok(()),
        }
    }

    /// Stamps a new resource version (and uid, creation time, generation if unset).
    pub fn stamp<K: Resource>(&self, o: &mut K) {
        let mut s = self.state();
        s.rv += 1;
        let m = o.meta_mut();
        m.resource_version = Some(s.rv.to_string());
        m.uid.get_or_insert_with(|| format!("uid-{}", s.rv));
        m.generation.get_or_insert(1);
        m.creation_timestamp
            .get_or_insert_with(|| Time(k8s_openapi::jiff::Timestamp::now()));
    }

    pub fn trigger(&self, ns: &str, name: &str) -> PodSnapshotManualTrigger {
        self.state().triggers[&k(ns, name)].clone()
    }

    pub fn snapshot(&self, ns: &str, name: &str) -> Option<PodSnapshot> {
        self.state().snapshots.get(&k(ns, name)).cloned()
    }

    pub fn add_trigger(&self, mut t: PodSnapshotManualTrigger) {
        self.stamp(&mut t);
        self.state().triggers.insert(key(&t), t);
    }

    pub fn add_pod(&self, mut p: Pod) {
        self.stamp(&mut p);
        self.state().pods.insert(key(&p), p);
    }

    pub fn add_policy(&self, mut p: PodSnapshotPolicy) {
        self.stamp(&mut p);
        self.state().policies.insert(key(&p), p);
    }

    pub fn add_config(&self, mut c: PodSnapshotStorageConfig) {
        self.stamp(&mut c);
        self.state().configs.insert(c.name_any(), c);
    }

    pub fn put_snapshot(&self, mut s: PodSnapshot) {
        self.stamp(&mut s);
        self.state().snapshots.insert(key(&s), s);
    }

    fn node_up(&self, node: &str) -> Result<(), Error> {
        if self.state().node_store.contains_key(node) {
            Ok(())
        } else {
            Err(unavailable(node))
        }
    }

    /// A stale write (its resourceVersion is not the stored one) is a conflict.
    fn fresh<K: Resource>(stored: Option<&K>, o: &K) -> Result<(), Error> {
        match (stored, o.meta().resource_version.as_ref()) {
            (None, _) => Err(Error::Kube(kube::Error::Api(
                kube::core::Status::failure("not found", "NotFound")
                    .with_code(404)
                    .boxed(),
            ))),
            (Some(s), Some(rv)) if s.meta().resource_version.as_ref() != Some(rv) => {
                Err(conflict())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Cluster for Fake {
    async fn trigger(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PodSnapshotManualTrigger>, Error> {
        self.check("trigger")?;
        Ok(self.state().triggers.get(&k(ns, name)).cloned())
    }

    async fn patch_trigger_status(
        &self,
        t: &PodSnapshotManualTrigger,
        status: &PodSnapshotManualTriggerStatus,
    ) -> Result<PodSnapshotManualTrigger, Error> {
        self.check("patch_trigger_status")?;
        let mut stored = {
            let s = self.state();
            Fake::fresh(s.triggers.get(&key(t)), t)?;
            s.triggers[&key(t)].clone()
        };
        stored.status = Some(status.clone());
        self.stamp(&mut stored);
        let c = status
            .conditions
            .iter()
            .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason));
        let what = c.collect::<Vec<_>>().join(",");
        let mut s = self.state();
        s.writes.push(format!("trigger/{} {what}", t.name_any()));
        s.triggers.insert(key(t), stored.clone());
        Ok(stored)
    }

    async fn annotate_trigger(
        &self,
        t: &PodSnapshotManualTrigger,
        key_: &str,
        value: &str,
    ) -> Result<(), Error> {
        self.check("annotate_trigger")?;
        let mut stored = self.state().triggers[&key(t)].clone();
        stored.annotations_mut().insert(key_.into(), value.into());
        self.stamp(&mut stored);
        self.state().triggers.insert(key(t), stored);
        Ok(())
    }

    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, Error> {
        self.check("pod")?;
        Ok(self.state().pods.get(&k(ns, name)).cloned())
    }

    async fn delete_pod(&self, ns: &str, name: &str, uid: Option<&str>) -> Result<(), Error> {
        self.check("delete_pod")?;
        let mut s = self.state();
        let ours = s
            .pods
            .get(&k(ns, name))
            .is_some_and(|p| uid.is_none() || p.uid().as_deref() == uid);
        if ours {
            s.pods.remove(&k(ns, name));
        }
        Ok(())
    }

    async fn patch_pod_condition(
        &self,
        ns: &str,
        name: &str,
        c: &PodCondition,
    ) -> Result<(), Error> {
        self.check("patch_pod_condition")?;
        let mut s = self.state();
        let pod = s.pods.get_mut(&k(ns, name)).expect("pod");
        let conds = pod
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new);
        conds.retain(|o| o.type_ != c.type_);
        conds.push(c.clone());
        s.writes.push(format!(
            "pod/{name} {}={}/{}",
            c.type_,
            c.status,
            c.reason.clone().unwrap_or_default()
        ));
        Ok(())
    }

    async fn warnings(&self, _ns: &str, uid: &str) -> Result<Vec<String>, Error> {
        self.check("warnings")?;
        Ok(self.state().warnings.get(uid).cloned().unwrap_or_default())
    }

    async fn policies(&self, ns: &str) -> Result<Vec<PodSnapshotPolicy>, Error> {
        self.check("policies")?;
        let s = self.state();
        Ok(s.policies
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn policy(&self, ns: &str, name: &str) -> Result<Option<PodSnapshotPolicy>, Error> {
        self.check("policy")?;
        Ok(self.state().policies.get(&k(ns, name)).cloned())
    }

    async fn storage_config(&self, name: &str) -> Result<Option<PodSnapshotStorageConfig>, Error> {
        self.check("storage_config")?;
        Ok(self.state().configs.get(name).cloned())
    }

    async fn snapshot(&self, ns: &str, name: &str) -> Result<Option<PodSnapshot>, Error> {
        self.check("snapshot")?;
        Ok(self.state().snapshots.get(&k(ns, name)).cloned())
    }

    async fn snapshots(&self, ns: &str, selector: &str) -> Result<Vec<PodSnapshot>, Error> {
        self.check("snapshots")?;
        let (lk, lv) = selector.split_once('=').expect("k=v selector");
        let s = self.state();
        Ok(s.snapshots
            .iter()
            .filter(|(k, o)| k.0 == ns && o.labels().get(lk).map(String::as_str) == Some(lv))
            .map(|(_, o)| o.clone())
            .collect())
    }

    async fn create_snapshot(&self, ns: &str, o: &PodSnapshot) -> Result<PodSnapshot, Error> {
        self.check("create_snapshot")?;
        if let Some(existing) = self.state().snapshots.get(&k(ns, &o.name_any())) {
            return Ok(existing.clone());
        }
        let mut o = o.clone();
        o.metadata.namespace = Some(ns.into());
        o.status = None;
        self.stamp(&mut o);
        self.state().snapshots.insert(key(&o), o.clone());
        Ok(o)
    }

    async fn patch_snapshot_status(
        &self,
        o: &PodSnapshot,
        status: &PodSnapshotStatus,
    ) -> Result<(), Error> {
        self.check("patch_snapshot_status")?;
        let mut stored = {
            let s = self.state();
            Fake::fresh(s.snapshots.get(&key(o)), o)?;
            s.snapshots[&key(o)].clone()
        };
        stored.status = Some(status.clone());
        self.stamp(&mut stored);
        let c = status
            .conditions
            .iter()
            .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason));
        let what = c.collect::<Vec<_>>().join(",");
        let mut s = self.state();
        s.writes.push(format!("snapshot/{} {what}", o.name_any()));
        s.snapshots.insert(key(o), stored);
        Ok(())
    }

    async fn delete_snapshot(&self, ns: &str, name: &str) -> Result<(), Error> {
        self.check("delete_snapshot")?;
        let mut s = self.state();
        s.writes.push(format!("delete snapshot/{name}"));
        if let Some(o) = s.snapshots.get_mut(&k(ns, name)) {
            if o.finalizers().is_empty() {
                s.snapshots.remove(&k(ns, name));
            } else {
                o.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            }
        }
        Ok(())
    }

    async fn set_finalizers(&self, o: &PodSnapshot, finalizers: Vec<String>) -> Result<(), Error> {
        self.check("set_finalizers")?;
        let mut s = self.state();
        let Some(stored) = s.snapshots.get_mut(&key(o)) else {
            return Ok(());
        };
        if stored.metadata.finalizers != o.metadata.finalizers {
            return Err(conflict());
        }
        stored.metadata.finalizers = Some(finalizers);
        if stored.metadata.deletion_timestamp.is_some() && stored.finalizers().is_empty() {
            s.snapshots.remove(&key(o));
        }
        Ok(())
    }

    async fn publish(&self, obj: &ObjectReference, note: Note) {
        self.state()
            .events
            .push((obj.name.clone().unwrap_or_default(), note));
    }

    async fn nodes(&self) -> Result<Vec<Node>, Error> {
        self.check("nodes")?;
        Ok(self.state().nodes.values().cloned().collect())
    }

    async fn patch_node_metadata(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.check("patch_node_metadata")?;
        let mut s = self.state();
        s.writes.push(format!("node/{name}"));
        let n = s.nodes.get_mut(name).expect("node");
        n.metadata
            .labels
            .get_or_insert_with(Default::default)
            .extend(labels.clone());
        n.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .extend(annotations.clone());
        Ok(())
    }
}

#[async_trait]
impl NodeApi for Fake {
    async fn store_url(&self, node: &str, _tp: &str) -> Result<String, Error> {
        self.check("store_url")?;
        self.node_up(node)?;
        Ok(self.state().node_store[node].clone())
    }

    async fn node_info(&self, node: &str, _tp: &str) -> Result<pb::NodeInfo, Error> {
        self.check("node_info")?;
        self.node_up(node)?;
        let s = self.state();
        Ok(s.node_info.get(node).cloned().unwrap_or_default())
    }

    async fn start_checkpoint(
        &self,
        node: &str,
        _tp: &str,
        req: pb::CheckpointRequest,
    ) -> Result<Started, Error> {
        self.check("start_checkpoint")?;
        self.node_up(node)?;
        let mut s = self.state();
        s.checkpoints.push(req.clone());
        if let Some(a) = s.start_answer.take() {
            return a;
        }
        let id = format!("job-{}", s.checkpoints.len());
        let target = match req.target.and_then(|t| t.kind) {
            Some(pb::target::Kind::Pod(p)) => format!("pod {}/{}", p.namespace, p.name),
            _ => String::new(),
        };
        s.jobs.entry(node.into()).or_default().push(pb::Job {
            id: id.clone(),
            kind: "checkpoint".into(),
            target,
            phase: pb::Phase::Uploading as i32,
            started_at: model::now_rfc3339(),
            ..Default::default()
        });
        Ok(Started::Job(id))
    }

    async fn jobs(&self, node: &str, _tp: &str) -> Result<Vec<pb::Job>, Error> {
        self.check("jobs")?;
        self.node_up(node)?;
        Ok(self.state().jobs.get(node).cloned().unwrap_or_default())
    }

    async fn snapshot(&self, node: &str, _tp: &str, id: &str) -> Result<pb::Snapshot, Error> {
        self.check("node_snapshot")?;
        self.node_up(node)?;
        let delay = self.state().snapshot_delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let s = self.state();
        s.stored
            .iter()
            .find(|x| x.id == id)
            .cloned()
            .ok_or_else(|| Error::Podsnapd {
                node: node.into(),
                endpoint: String::new(),
                message: format!("no snapshot {id}"),
                code: tonic::Code::NotFound,
            })
    }

    async fn find_snapshots(
        &self,
        node: &str,
        _tp: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Snapshot>, Error> {
        self.check("find_snapshots")?;
        self.node_up(node)?;
        let s = self.state();
        Ok(s.stored
            .iter()
            .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn delete_snapshot(&self, node: &str, _tp: &str, id: &str) -> Result<(), Error> {
        self.check("node_delete_snapshot")?;
        self.node_up(node)?;
        self.state().stored.retain(|x| x.id != id);
        Ok(())
    }

    async fn names(&self, preferred: Option<&str>) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = self.state().node_store.keys().cloned().collect();
        if let Some(p) = preferred {
            names.retain(|n| n != p);
            names.insert(0, p.to_string());
        }
        Ok(names)
    }
}

/// Node names that are up, for tests that take one down.
pub fn take_down(f: &Fake, node: &str) -> Option<String> {
    f.state().node_store.remove(node)
}

#[allow(dead_code)]
pub fn nodes(f: &Fake) -> BTreeSet<String> {
    f.state().node_store.keys().cloned().collect()
}

pub const NS: &str = "default";
pub const NODE: &str = "n1";
pub const STORE: &str = "file:///snaps";

pub fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": NODE, "runtimeClassName": "gvisor",
                 "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": "app", "image": "busybox", "imageID": "",
                       "ready": true, "restartCount": 0, "state": {"running": {}}}]}
    }))
    .unwrap()
}

pub fn policy(keep: i32, post: &str) -> PodSnapshotPolicy {
    let mut p = PodSnapshotPolicy::new(
        "p",
        PodSnapshotPolicySpec {
            storage_config_name: "local".into(),
            selector: LabelSelector {
                match_labels: BTreeMap::from([("app".into(), "web".into())]),
                match_expressions: vec![],
            },
            trigger_config: TriggerConfig {
                type_: "manual".into(),
                post_checkpoint: post.into(),
            },
            snapshot_grouping_rules: Some(SnapshotGroupingRules {
                group_by_label_value: None,
                group_retention_policy: Some(GroupRetentionPolicy {
                    max_snapshot_count_per_group: keep,
                }),
            }),
        },
    );
    p.metadata.namespace = Some(NS.into());
    p
}

pub fn trigger_for(name: &str, pod: &str) -> PodSnapshotManualTrigger {
    let mut t = PodSnapshotManualTrigger::new(
        name,
        PodSnapshotManualTriggerSpec {
            target_pod: pod.into(),
        },
    );
    t.metadata.namespace = Some(NS.into());
    t
}

/// One node serving the `local` store, policy `p` (keep 2, resume) selecting `app=web`,
/// pod `web-1` running on the node.
pub fn world() -> Fake {
    let f = Fake::default();
    f.state().node_store.insert(NODE.into(), STORE.into());
    f.add_config(PodSnapshotStorageConfig::new(
        "local",
        PodSnapshotStorageConfigSpec {
            snapshot_storage_config: SnapshotStorageConfig {
                local: Some(LocalStore {
                    path: "/snaps".into(),
                }),
                ..Default::default()
            },
        },
    ));
    f.add_policy(policy(2, "resume"));
    f.add_pod(pod(
        "web-1",
        &[("app", "web"), (model::SANDBOX_NAME_HASH_LABEL, "abc")],
    ));
    f
}

impl Fake {
    /// Ends checkpoint job `job` on the node as done with stored snapshot `id` (labels as
    /// the request had them).
    pub fn finish_job(&self, job: &str, id: &str) {
        let mut s = self.state();
        let n = job.trim_start_matches("job-").parse::<usize>().unwrap();
        let req = s.checkpoints[n - 1].clone();
        s.stored.push(pb::Snapshot {
            id: id.into(),
            labels: req.labels.clone(),
            logical_bytes: 1000,
            uploaded_bytes: 100,
            ..Default::default()
        });
        let j = s
            .jobs
            .get_mut(NODE)
            .unwrap()
            .iter_mut()
            .find(|j| j.id == job)
            .unwrap();
        j.phase = pb::Phase::Done as i32;
        j.snapshot_id = id.into();
        j.finished_at = model::now_rfc3339();
    }

    pub fn fail_job(&self, job: &str, error: &str) {
        let mut s = self.state();
        let j = s
            .jobs
            .get_mut(NODE)
            .unwrap()
            .iter_mut()
            .find(|j| j.id == job)
            .unwrap();
        j.phase = pb::Phase::Failed as i32;
        j.error = error.into();
        j.finished_at = model::now_rfc3339();
    }
}
