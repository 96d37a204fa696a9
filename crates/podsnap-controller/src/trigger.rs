//! `PodSnapshotManualTrigger`: one checkpoint of one pod, as a short reconcile that runs
//! again until the trigger is done. Where a trigger is ([`Stage`]) is read from the object
//! itself, so a restarted controller picks up where the last one stopped:
//!
//! - **Start** (no `Triggered` condition, or `InProgress` without a job): resolve the pod's
//!   policy, store and node ([`plan`]); check that the node's podsnapd serves that store;
//!   set `Triggered=False/InProgress`; start the checkpoint on the node and record its job as
//!   the annotation `podsnap.dev/checkpoint-job: <node>/<job id>`; requeue. podsnapd runs the
//!   job in a task of its own, so nothing here waits for it. An `InProgress` trigger without
//!   that annotation (a restart between the start and the record) first looks for its
//!   snapshot in the store (labelled with the trigger's uid) or its job on the node.
//! - **Running**: ask the node for the job. Still running: requeue (the condition's message
//!   follows its phase). Done: [`finish`]. Failed: `Triggered=False/Error` with the node's
//!   error. Unknown to the node: the store decides (the trigger's snapshot or a failure).
//! - **Finish**: the Ready `PodSnapshot` (idempotent: found by the trigger's uid first),
//!   retention (victims read `Ready=False/Deleting` before they are deleted), the pod deleted
//!   for `postCheckpoint: stop`, and only then `Triggered=True/Complete` with
//!   `snapshotCreated.name`: a client that lists the group after that sees no more Ready
//!   snapshots than the policy keeps.
//!
//! Failures: a fault of the request (no pod, no policy, a store the node does not serve)
//! is `Triggered=False/Failed` at once; anything in the way (API server, node, store) is
//! retried with backoff for [`START_WINDOW_SECS`] (before the checkpoint started) or
//! [`POLL_WINDOW_SECS`] (while it runs) of the trigger's age, then `Triggered=False/Error`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use podsnap_proto::v1 as pb;
use tracing::{info, warn};

use crate::api::{Note, Started};
use crate::conditions;
use crate::crd::*;
use crate::error::Retry;
use crate::model::{self, *};
use crate::{Ctx, Error};

/// The condition type and reasons the SDK reads.
pub const TRIGGERED: &str = "Triggered";
pub const IN_PROGRESS: &str = "InProgress";
pub const COMPLETE: &str = "Complete";
/// The request cannot succeed as it stands.
pub const FAILED: &str = "Failed";
/// Something in the way (a node, the store, the API): a new trigger may succeed.
pub const ERROR: &str = "Error";
/// On a trigger: `<node>/<job id>` of podsnapd's checkpoint job for it.
pub const JOB_ANNOTATION: &str = "podsnap.dev/checkpoint-job";
/// On a PodSnapshot: the uid of the pod it was taken of (`postCheckpoint: stop` deletes
/// that pod, never a later one of the same name).
pub const SOURCE_UID_ANNOTATION: &str = "podsnap.dev/source-pod-uid";
/// On a stored snapshot: the uid of the pod checkpointed (the pod may be replaced by one of
/// the same name before the snapshot is recorded).
pub const POD_UID_LABEL: &str = "podsnap.dev/pod-uid";
/// How often a running checkpoint is asked about.
pub const POLL: Duration = Duration::from_secs(2);
/// Transient failures before the checkpoint starts are retried while the trigger is younger.
pub const START_WINDOW_SECS: i64 = 30;
/// A running checkpoint's node may be unreachable while the trigger is younger than this.
pub const POLL_WINDOW_SECS: i64 = 1800;

/// Where a trigger is (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Start,
    Running { node: String, job: String },
    Done,
}

pub fn stage(t: &PodSnapshotManualTrigger) -> Stage {
    let c = t
        .status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, TRIGGERED));
    if c.is_some_and(|c| c.status == "True" || c.reason != IN_PROGRESS) {
        return Stage::Done;
    }
    match t
        .annotations()
        .get(JOB_ANNOTATION)
        .and_then(|v| v.split_once('/'))
    {
        Some((node, job)) if c.is_some() => Stage::Running {
            node: node.into(),
            job: job.into(),
        },
        _ => Stage::Start,
    }
}

pub async fn reconcile(
    cached: std::sync::Arc<PodSnapshotManualTrigger>,
    ctx: Ctx,
) -> Result<Action, Error> {
    if stage(&cached) == Stage::Done {
        return Ok(Action::await_change());
    }
    // The cache may lag behind this controller's own last write: decide on the object now.
    let ns = cached.namespace().unwrap_or_default();
    let Some(t) = ctx.cluster.trigger(&ns, &cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let tp = crate::new_traceparent();
    match stage(&t) {
        Stage::Done => Ok(Action::await_change()),
        Stage::Start => start(&t, &ctx, &tp).await,
        Stage::Running { node, job } => poll(&t, &ctx, &tp, &node, &job).await,
    }
}

/// What a trigger resolves to before anything is checkpointed.
pub struct Plan {
    pub pod: Pod,
    pub policy: PodSnapshotPolicy,
    pub store_url: String,
    pub node: String,
    pub group: BTreeMap<String, String>,
    pub group_hash: String,
}

/// Resolves the trigger's pod, policy, store and node (`running`: the pod must be Running).
pub async fn plan(t: &PodSnapshotManualTrigger, ctx: &Ctx, running: bool) -> Result<Plan, Error> {
    let ns = t.namespace().unwrap_or_default();
    let target = &t.spec.target_pod;
    if target.is_empty() {
        return Err(Error::Invalid("spec.targetPod is empty".into()));
    }
    let pod = ctx
        .cluster
        .pod(&ns, target)
        .await?
        .ok_or_else(|| Error::NotFound(format!("pod {target} not found in namespace {ns}")))?;
    let labels = pod.labels().clone();
    let policies = ctx.cluster.policies(&ns).await?;
    let policy = model::policy_for(&policies, &labels)
        .cloned()
        .ok_or_else(|| {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Error::NotFound(format!(
                "no PodSnapshotPolicy in namespace {ns} selects pod {target} (its labels: {})",
                l.join(",")
            ))
        })?;
    let cfg_name = &policy.spec.storage_config_name;
    let storage = ctx.cluster.storage_config(cfg_name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "PodSnapshotPolicy {} names PodSnapshotStorageConfig {cfg_name}, which does not exist",
            policy.name_any()
        ))
    })?;
    let store_url = model::store_url(&storage.spec.snapshot_storage_config)
        .map_err(|e| Error::Invalid(format!("PodSnapshotStorageConfig {cfg_name}: {e}")))?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or_else(|| Error::Invalid(format!("pod {target} is not scheduled to a node yet")))?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    if running && phase.as_deref() != Some("Running") {
        return Err(Error::Invalid(format!(
            "pod {target} is not running (phase {:?}); only a running pod can be snapshotted",
            phase.unwrap_or_default()
        )));
    }
    let group = model::group_labels(&policy, &labels);
    let group_hash = model::group_hash(&policy.name_any(), &group);
    Ok(Plan {
        pod,
        policy,
        store_url,
        node,
        group,
        group_hash,
    })
}

async fn start(t: &PodSnapshotManualTrigger, ctx: &Ctx, tp: &str) -> Result<Action, Error> {
    let plan = match plan(t, ctx, true).await {
        Ok(p) => p,
        Err(e) => return give_up_or_retry(t, ctx, e, START_WINDOW_SECS).await,
    };
    // `begin` writes the status: it keeps `t` as written, for the next write's precondition.
    let mut t = t.clone();
    match begin(&mut t, ctx, tp, &plan).await {
        Ok(a) => Ok(a),
        Err(e) => give_up_or_retry(&t, ctx, e, START_WINDOW_SECS).await,
    }
}

/// Adopts what an earlier start left, or starts the checkpoint and records its job.
async fn begin(
    t: &mut PodSnapshotManualTrigger,
    ctx: &Ctx,
    tp: &str,
    plan: &Plan,
) -> Result<Action, Error> {
    if stage_condition(t).is_some() {
        if let Some(a) = adopt(t, ctx, tp, plan).await? {
            return Ok(a);
        }
    }
    let served = ctx.nodes.store_url(&plan.node, tp).await?;
    if !model::same_store(&served, &plan.store_url) {
        return Err(Error::Invalid(format!(
            "podsnapd on node {} stores into {served}, but PodSnapshotStorageConfig {} names {}; \
             configure that node's podsnapd with --store {}",
            plan.node, plan.policy.spec.storage_config_name, plan.store_url, plan.store_url
        )));
    }
    let pod = plan.pod.name_any();
    let msg = format!("checkpointing pod {pod} on node {}", plan.node);
    *t = set_triggered(t, ctx, false, IN_PROGRESS, &msg, None).await?;
    info!(%pod, node = %plan.node, group = %plan.group_hash, "checkpointing");
    match ctx
        .nodes
        .start_checkpoint(&plan.node, tp, checkpoint_request(t, plan))
        .await?
    {
        Started::Job(job) => {
            let value = format!("{}/{job}", plan.node);
            ctx.cluster
                .annotate_trigger(t, JOB_ANNOTATION, &value)
                .await?;
            let note = format!(
                "podsnapd on node {} checkpoints pod {pod} (job {job})",
                plan.node
            );
            publish(
                t,
                ctx,
                Note::normal("CheckpointStarted", "Checkpoint", note),
            )
            .await;
            Ok(Action::requeue(POLL))
        }
        Started::Done(s) => finish(t, ctx, &plan.node, &s).await,
    }
}

fn stage_condition(t: &PodSnapshotManualTrigger) -> Option<&Condition> {
    t.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, TRIGGERED))
}

/// An `InProgress` trigger without a recorded job: its snapshot in the store, or its
/// checkpoint still running on the node (then recorded), or `None` (start one).
async fn adopt(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    tp: &str,
    plan: &Plan,
) -> Result<Option<Action>, Error> {
    let mine = BTreeMap::from([(TRIGGER_LABEL.to_string(), t.uid().unwrap_or_default())]);
    if let Some(s) = ctx
        .nodes
        .find_snapshots(&plan.node, tp, mine)
        .await?
        .first()
    {
        return finish(t, ctx, &plan.node, s).await.map(Some);
    }
    let target = format!(
        "pod {}/{}",
        t.namespace().unwrap_or_default(),
        plan.pod.name_any()
    );
    let jobs = ctx.nodes.jobs(&plan.node, tp).await?;
    let running = jobs
        .iter()
        .find(|j| j.kind == "checkpoint" && j.target == target && j.finished_at.is_empty());
    match running {
        Some(j) => {
            let value = format!("{}/{}", plan.node, j.id);
            ctx.cluster
                .annotate_trigger(t, JOB_ANNOTATION, &value)
                .await?;
            Ok(Some(Action::requeue(POLL)))
        }
        None => Ok(None),
    }
}

fn checkpoint_request(t: &PodSnapshotManualTrigger, plan: &Plan) -> pb::CheckpointRequest {
    let ns = t.namespace().unwrap_or_default();
    let mut labels = plan.group.clone();
    labels.insert(TRIGGER_LABEL.into(), t.uid().unwrap_or_default());
    labels.insert(POD_UID_LABEL.into(), plan.pod.uid().unwrap_or_default());
    labels.insert("podsnap.dev/policy".into(), plan.policy.name_any());
    labels.insert("podsnap.dev/namespace".into(), ns.clone());
    pb::CheckpointRequest {
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::Pod(pb::PodTarget {
                namespace: ns,
                name: plan.pod.name_any(),
            })),
        }),
        labels: labels.into_iter().collect(),
        group_by: plan.group.keys().cloned().collect(),
        // The controller owns retention (PodSnapshots and images go together).
        keep: 0,
        post_checkpoint: post_checkpoint(&plan.policy) as i32,
        parent: String::new(),
    }
}

fn post_checkpoint(policy: &PodSnapshotPolicy) -> pb::PostCheckpoint {
    match policy.spec.trigger_config.post_checkpoint.as_str() {
        "stop" => pb::PostCheckpoint::Stop,
        _ => pb::PostCheckpoint::Resume,
    }
}

async fn poll(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    tp: &str,
    node: &str,
    job: &str,
) -> Result<Action, Error> {
    match poll_job(t, ctx, tp, node, job).await {
        Ok(a) => Ok(a),
        Err(e) => give_up_or_retry(t, ctx, e, POLL_WINDOW_SECS).await,
    }
}

async fn poll_job(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    tp: &str,
    node: &str,
    job: &str,
) -> Result<Action, Error> {
    let jobs = ctx.nodes.jobs(node, tp).await?;
    let Some(j) = jobs.into_iter().find(|j| j.id == job) else {
        // podsnapd restarted (and finished or rolled the job back) or forgot it: the store
        // has the trigger's snapshot or nothing.
        let mine = BTreeMap::from([(TRIGGER_LABEL.to_string(), t.uid().unwrap_or_default())]);
        return match ctx.nodes.find_snapshots(node, tp, mine).await?.first() {
            Some(s) => finish(t, ctx, node, s).await,
            None => {
                let msg = format!(
                    "podsnapd on node {node} no longer knows checkpoint job {job} and the store \
                     holds no snapshot of this trigger; create a new trigger"
                );
                fail(t, ctx, ERROR, &msg).await
            }
        };
    };
    match pb::Phase::try_from(j.phase).unwrap_or(pb::Phase::Unspecified) {
        pb::Phase::Done => {
            let s = ctx.nodes.snapshot(node, tp, &j.snapshot_id).await?;
            finish(t, ctx, node, &s).await
        }
        pb::Phase::Failed => {
            let msg = format!(
                "podsnapd on node {node}: checkpoint job {job} failed: {}",
                j.error
            );
            fail(t, ctx, ERROR, &msg).await
        }
        phase => {
            let what = phase
                .as_str_name()
                .trim_start_matches("PHASE_")
                .to_lowercase();
            let msg = format!(
                "checkpointing pod {} on node {node}: {what} (job {job})",
                t.spec.target_pod
            );
            // A failed write is retried; the job's phase is only news.
            set_triggered(t, ctx, false, IN_PROGRESS, &msg, None).await?;
            Ok(Action::requeue(POLL))
        }
    }
}

/// The checkpoint is stored: its PodSnapshot, retention, `postCheckpoint: stop`, Complete.
async fn finish(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    node: &str,
    s: &pb::Snapshot,
) -> Result<Action, Error> {
    let ns = t.namespace().unwrap_or_default();
    let selector = format!("{TRIGGER_LABEL}={}", t.uid().unwrap_or_default());
    let existing = ctx.cluster.snapshots(&ns, &selector).await?;
    let ps = match existing.into_iter().find(model::is_ready) {
        Some(ps) => ps,
        None => record(t, ctx, &plan(t, ctx, false).await?, node, s).await?,
    };
    let policy = ctx.cluster.policy(&ns, &ps.spec.policy_name).await?;
    if let Some(p) = &policy {
        crate::snapshot::retention(ctx, &ps, model::max_per_group(p)).await?;
        if post_checkpoint(p) == pb::PostCheckpoint::Stop {
            let uid = ps.annotations().get(SOURCE_UID_ANNOTATION).cloned();
            ctx.cluster
                .delete_pod(&ns, &ps.spec.source_pod, uid.as_deref())
                .await?;
            info!(namespace = %ns, pod = %ps.spec.source_pod, "postCheckpoint stop: pod deleted");
        }
    }
    let name = ps.name_any();
    info!(trigger = %t.name_any(), snapshot = %name, "trigger complete");
    let msg = format!("PodSnapshot {name} is ready");
    set_triggered(t, ctx, true, COMPLETE, &msg, Some(name.clone())).await?;
    let note = format!(
        "snapshot {} of pod {} is PodSnapshot {name}",
        s.id, ps.spec.source_pod
    );
    publish(t, ctx, Note::normal("SnapshotCreated", "Checkpoint", note)).await;
    Ok(Action::await_change())
}

/// Creates the Ready PodSnapshot of a stored snapshot (idempotent).
async fn record(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    plan: &Plan,
    node: &str,
    s: &pb::Snapshot,
) -> Result<PodSnapshot, Error> {
    let ns = t.namespace().unwrap_or_default();
    let pod_name = plan.pod.name_any();
    let mut obj = PodSnapshot::new(
        &model::snapshot_name(&pod_name, &s.id),
        PodSnapshotSpec {
            source_pod: pod_name.clone(),
            policy_name: plan.policy.name_any(),
            storage_config_name: plan.policy.spec.storage_config_name.clone(),
        },
    );
    let mut labels = plan.group.clone();
    labels.insert(GROUP_LABEL.into(), plan.group_hash.clone());
    labels.insert(TRIGGER_LABEL.into(), t.uid().unwrap_or_default());
    let meta = obj.meta_mut();
    meta.namespace = Some(ns.clone());
    meta.labels = Some(labels);
    meta.annotations = Some(BTreeMap::from([
        (ORIGIN_POD_ANNOTATION.to_string(), pod_name.clone()),
        (
            SOURCE_UID_ANNOTATION.to_string(),
            s.labels
                .get(POD_UID_LABEL)
                .cloned()
                .or_else(|| plan.pod.uid())
                .unwrap_or_default(),
        ),
    ]));
    meta.finalizers = Some(vec![STORE_FINALIZER.to_string()]);
    let mut created = ctx.cluster.create_snapshot(&ns, &obj).await?;
    let mut status = created.status.clone().unwrap_or_default();
    let msg = format!(
        "snapshot {} of pod {pod_name} is durable in {}",
        s.id, plan.store_url
    );
    let generation = created.metadata.generation;
    conditions::set(
        &mut status.conditions,
        conditions::new(READY, true, "Stored", msg),
        generation,
    );
    status.snapshot_id = Some(s.id.clone());
    status.store_url = Some(plan.store_url.clone());
    status.node_name = Some(node.to_string());
    status.pod_spec_hash = Some(model::pod_spec_hash(&plan.pod));
    status.logical_bytes = Some(s.logical_bytes as i64);
    status.uploaded_bytes = Some(s.uploaded_bytes as i64);
    status.runsc_version = s.source.as_ref().map(|n| n.runsc_version.clone());
    ctx.cluster.patch_snapshot_status(&created, &status).await?;
    created.status = Some(status);
    Ok(created)
}

/// A failure that retrying cannot fix, or that has been retried long enough, ends the
/// trigger (`Failed` for the request's faults, `Error` otherwise); any other is returned
/// for the controller's backoff.
async fn give_up_or_retry(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    e: Error,
    window_secs: i64,
) -> Result<Action, Error> {
    let expired = crate::age_secs(&t.metadata) > window_secs;
    match e.retry() {
        Retry::Permanent => {}
        Retry::Transient if expired => {}
        _ => {
            warn!(trigger = %t.name_any(), error = %e, "will retry");
            return Err(e);
        }
    }
    let reason = if e.is_request_fault() { FAILED } else { ERROR };
    fail(t, ctx, reason, &e.to_string()).await
}

async fn fail(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    warn!(trigger = %t.name_any(), reason, error = %message, "trigger failed");
    set_triggered(t, ctx, false, reason, message, None).await?;
    publish(
        t,
        ctx,
        Note::warning("CheckpointFailed", "Checkpoint", message),
    )
    .await;
    Ok(Action::await_change())
}

/// Sets `Triggered` (and `snapshotCreated`) through the conditions helper; writes only
/// when something changed. Returns the trigger as it now is.
async fn set_triggered(
    t: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    ok: bool,
    reason: &str,
    message: &str,
    created: Option<String>,
) -> Result<PodSnapshotManualTrigger, Error> {
    let mut status = t.status.clone().unwrap_or_default();
    let c = conditions::new(TRIGGERED, ok, reason, message);
    let changed = conditions::set(&mut status.conditions, c, t.metadata.generation);
    let created = created.map(|name| SnapshotRef { name });
    if !changed && (created.is_none() || status.snapshot_created == created) {
        return Ok(t.clone());
    }
    if created.is_some() {
        status.snapshot_created = created;
    }
    ctx.cluster.patch_trigger_status(t, &status).await
}

async fn publish(t: &PodSnapshotManualTrigger, ctx: &Ctx, note: Note) {
    ctx.cluster.publish(&t.object_ref(&()), note).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::error::Retry;
    use crate::testing::*;

    async fn run(f: &Fake, name: &str) -> Result<Action, Error> {
        reconcile(Arc::new(f.trigger(NS, name)), f.ctx()).await
    }

    fn triggered(f: &Fake, name: &str) -> Condition {
        let t = f.trigger(NS, name);
        conditions::get(&t.status.unwrap().conditions, TRIGGERED)
            .cloned()
            .expect("Triggered")
    }

    fn ready(s: &PodSnapshot) -> (String, String) {
        let c = conditions::get(&s.status.as_ref().unwrap().conditions, READY).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    /// A trigger older than every retry window.
    fn aged(mut t: PodSnapshotManualTrigger) -> PodSnapshotManualTrigger {
        let then = k8s_openapi::jiff::Timestamp::now().as_second() - 3600;
        t.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(then).unwrap(),
        ));
        t
    }

    /// A Ready PodSnapshot of web-1's group, `secs` after some fixed time.
    fn group_member(f: &Fake, name: &str, secs: i64) {
        let mut s = PodSnapshot::new(name, PodSnapshotSpec::default());
        s.metadata.namespace = Some(NS.into());
        let group = model::group_labels(
            &policy(2, "resume"),
            &BTreeMap::from([(SANDBOX_NAME_HASH_LABEL.to_string(), "abc".to_string())]),
        );
        let hash = model::group_hash("p", &group);
        s.metadata.labels = Some(BTreeMap::from([(GROUP_LABEL.to_string(), hash)]));
        s.metadata.finalizers = Some(vec![STORE_FINALIZER.into()]);
        s.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
        ));
        s.status = Some(PodSnapshotStatus {
            conditions: vec![conditions::new(READY, true, "Stored", "")],
            snapshot_id: Some(format!("id-{name}")),
            ..Default::default()
        });
        f.put_snapshot(s);
    }

    #[tokio::test]
    async fn a_new_trigger_starts_a_checkpoint_on_the_pods_node_and_records_its_job() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        assert_eq!(run(&f, "t1").await.unwrap(), Action::requeue(POLL));
        let c = triggered(&f, "t1");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", IN_PROGRESS)
        );
        assert_eq!(c.observed_generation, Some(1));
        let t = f.trigger(NS, "t1");
        assert_eq!(t.annotations()[JOB_ANNOTATION], "n1/job-1");
        let s = f.state();
        let req = &s.checkpoints[0];
        assert_eq!(req.keep, 0, "the controller owns retention");
        assert_eq!(req.post_checkpoint, pb::PostCheckpoint::Resume as i32);
        assert_eq!(req.labels[TRIGGER_LABEL], t.uid().unwrap());
        assert!(matches!(
            req.target.as_ref().unwrap().kind,
            Some(pb::target::Kind::Pod(ref p)) if p.name == "web-1" && p.namespace == NS
        ));
        assert_eq!(s.events[0].1.reason, "CheckpointStarted");
    }

    #[tokio::test]
    async fn a_running_job_keeps_the_trigger_in_progress_and_its_message_follows_the_phase() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        let before = triggered(&f, "t1");
        assert_eq!(run(&f, "t1").await.unwrap(), Action::requeue(POLL));
        let c = triggered(&f, "t1");
        assert_eq!(c.reason, IN_PROGRESS);
        assert!(c.message.contains("uploading"), "{}", c.message);
        assert_eq!(c.last_transition_time, before.last_transition_time);
        assert_eq!(f.state().checkpoints.len(), 1, "one checkpoint per trigger");
    }

    #[tokio::test]
    async fn a_done_job_becomes_a_ready_podsnapshot_and_completes_the_trigger() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        f.finish_job("job-1", "20261206T120000Z-0a0b0c0d");
        assert_eq!(run(&f, "t1").await.unwrap(), Action::await_change());
        let c = triggered(&f, "t1");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", COMPLETE));
        let t = f.trigger(NS, "t1");
        let name = t.status.unwrap().snapshot_created.unwrap().name;
        assert_eq!(name, "web-1-20261206t120000z-0a0b0c0d");
        let ps = f.snapshot(NS, &name).unwrap();
        assert_eq!(ready(&ps), ("True".into(), "Stored".into()));
        let st = ps.status.as_ref().unwrap();
        assert_eq!(st.snapshot_id.as_deref(), Some("20261206T120000Z-0a0b0c0d"));
        assert_eq!(st.store_url.as_deref(), Some(STORE));
        assert_eq!(st.node_name.as_deref(), Some(NODE));
        assert_eq!(st.uploaded_bytes, Some(100));
        assert!(st.pod_spec_hash.is_some());
        assert_eq!(ps.finalizers(), [STORE_FINALIZER]);
        assert_eq!(ps.annotations()[ORIGIN_POD_ANNOTATION], "web-1");
        assert_eq!(ps.labels()[SANDBOX_NAME_HASH_LABEL], "abc");
        assert!(f
            .state()
            .events
            .iter()
            .any(|(_, n)| n.reason == "SnapshotCreated"));
        // Done is done.
        assert_eq!(run(&f, "t1").await.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn retention_unreadies_the_oldest_before_the_trigger_says_complete() {
        let f = world();
        group_member(&f, "old", 1);
        group_member(&f, "mid", 2);
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        f.finish_job("job-1", "20261206T120000Z-0a0b0c0d");
        run(&f, "t1").await.unwrap();
        let s = f.state();
        let pos = |w: &str| s.writes.iter().position(|x| x.starts_with(w)).unwrap();
        let unready = pos("snapshot/old Ready=False/Deleting");
        let deleted = pos("delete snapshot/old");
        let complete = pos("trigger/t1 Triggered=True/Complete");
        assert!(unready < deleted && deleted < complete, "{:#?}", s.writes);
        assert!(!s
            .writes
            .iter()
            .any(|w| w.contains("snapshot/mid Ready=False")));
        // What a client listing the group now sees: at most 2 Ready.
        let ready_now = s.snapshots.values().filter(|x| model::is_ready(x)).count();
        assert_eq!(ready_now, 2);
    }

    #[tokio::test]
    async fn a_failed_job_fails_the_trigger_with_the_nodes_error() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        f.fail_job("job-1", "runsc checkpoint: exit status 128");
        assert_eq!(run(&f, "t1").await.unwrap(), Action::await_change());
        let c = triggered(&f, "t1");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", ERROR));
        assert!(c.message.contains("exit status 128") && c.message.contains(NODE));
        let s = f.state();
        assert!(s
            .events
            .iter()
            .any(|(_, n)| n.warning && n.reason == "CheckpointFailed"));
        assert!(s.snapshots.is_empty());
    }

    #[tokio::test]
    async fn faults_of_the_request_fail_the_trigger_at_once() {
        let f = world();
        f.add_trigger(trigger_for("missing", "no-such-pod"));
        assert_eq!(run(&f, "missing").await.unwrap(), Action::await_change());
        let c = triggered(&f, "missing");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", FAILED));
        assert!(c.message.contains("no-such-pod not found"), "{}", c.message);

        f.add_pod(pod("plain", &[("app", "other")]));
        f.add_trigger(trigger_for("unselected", "plain"));
        run(&f, "unselected").await.unwrap();
        let c = triggered(&f, "unselected");
        assert!(
            c.reason == FAILED && c.message.contains("no PodSnapshotPolicy"),
            "{c:?}"
        );

        f.state()
            .node_store
            .insert(NODE.into(), "gs://elsewhere".into());
        f.add_trigger(trigger_for("elsewhere", "web-1"));
        run(&f, "elsewhere").await.unwrap();
        let c = triggered(&f, "elsewhere");
        assert_eq!(c.reason, FAILED);
        assert!(
            c.message.contains("gs://elsewhere") && c.message.contains(STORE),
            "{c:?}"
        );
        assert!(f.state().checkpoints.is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_node_is_retried_with_backoff_then_the_trigger_errors() {
        let f = world();
        take_down(&f, NODE);
        f.add_trigger(trigger_for("young", "web-1"));
        let e = run(&f, "young").await.unwrap_err();
        assert_eq!(e.retry(), Retry::Transient);
        assert!(f.trigger(NS, "young").status.is_none(), "nothing final yet");
        f.add_trigger(aged(trigger_for("old", "web-1")));
        assert_eq!(run(&f, "old").await.unwrap(), Action::await_change());
        let c = triggered(&f, "old");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", ERROR));
        assert!(
            c.message.contains("cannot connect") && c.message.contains(NODE),
            "{c:?}"
        );
    }

    #[tokio::test]
    async fn a_node_unreachable_while_its_job_runs_is_retried() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        let store = take_down(&f, NODE).unwrap();
        assert_eq!(run(&f, "t1").await.unwrap_err().retry(), Retry::Transient);
        assert_eq!(triggered(&f, "t1").reason, IN_PROGRESS);
        f.state().node_store.insert(NODE.into(), store);
        f.finish_job("job-1", "S1");
        run(&f, "t1").await.unwrap();
        assert_eq!(triggered(&f, "t1").reason, COMPLETE);
    }

    /// An InProgress trigger without a recorded job: what a controller killed between
    /// starting the checkpoint and recording it leaves.
    fn orphan(f: &Fake) {
        let mut t = trigger_for("t1", "web-1");
        t.status = Some(PodSnapshotManualTriggerStatus {
            conditions: vec![conditions::new(TRIGGERED, false, IN_PROGRESS, "")],
            snapshot_created: None,
        });
        t.metadata.uid = Some("uid-t1".into());
        f.add_trigger(t);
    }

    #[tokio::test]
    async fn a_restarted_controller_adopts_the_checkpoint_still_running_on_the_node() {
        let f = world();
        f.state().jobs.insert(
            NODE.into(),
            vec![pb::Job {
                id: "job-7".into(),
                kind: "checkpoint".into(),
                target: format!("pod {NS}/web-1"),
                phase: pb::Phase::Uploading as i32,
                ..Default::default()
            }],
        );
        orphan(&f);
        assert_eq!(run(&f, "t1").await.unwrap(), Action::requeue(POLL));
        assert_eq!(
            f.trigger(NS, "t1").annotations()[JOB_ANNOTATION],
            "n1/job-7"
        );
        assert!(f.state().checkpoints.is_empty(), "no second checkpoint");
    }

    #[tokio::test]
    async fn a_restarted_controller_completes_from_the_snapshot_in_the_store() {
        let f = world();
        f.state().stored.push(pb::Snapshot {
            id: "S9".into(),
            labels: [(TRIGGER_LABEL.to_string(), "uid-t1".to_string())].into(),
            ..Default::default()
        });
        orphan(&f);
        assert_eq!(run(&f, "t1").await.unwrap(), Action::await_change());
        assert_eq!(triggered(&f, "t1").reason, COMPLETE);
        assert!(f.snapshot(NS, "web-1-s9").is_some());
        assert!(f.state().checkpoints.is_empty());
    }

    #[tokio::test]
    async fn a_job_the_node_forgot_is_settled_by_the_store() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        f.state().jobs.clear(); // podsnapd restarted
        run(&f, "t1").await.unwrap();
        let c = triggered(&f, "t1");
        assert_eq!(c.reason, ERROR);
        assert!(c.message.contains("no longer knows"), "{}", c.message);
    }

    #[tokio::test]
    async fn a_stale_status_write_is_a_conflict_retried_on_the_object_as_it_is() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        f.fail("patch_trigger_status", conflict());
        assert_eq!(run(&f, "t1").await.unwrap_err().retry(), Retry::Conflict);
        assert!(f.state().checkpoints.is_empty());
        assert_eq!(run(&f, "t1").await.unwrap(), Action::requeue(POLL));
        assert_eq!(triggered(&f, "t1").reason, IN_PROGRESS);
    }

    #[tokio::test]
    async fn a_failure_after_the_checkpoint_is_retried_and_records_one_snapshot() {
        let f = world();
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        f.finish_job("job-1", "S1");
        f.fail("delete_snapshot", unavailable("api"));
        group_member(&f, "a", 1);
        group_member(&f, "b", 2);
        assert!(run(&f, "t1").await.is_err());
        assert_eq!(
            triggered(&f, "t1").reason,
            IN_PROGRESS,
            "not Complete before retention"
        );
        run(&f, "t1").await.unwrap();
        assert_eq!(triggered(&f, "t1").reason, COMPLETE);
        let s = f.state();
        let mine = s
            .snapshots
            .values()
            .filter(|x| x.labels().contains_key(TRIGGER_LABEL));
        assert_eq!(mine.count(), 1);
        assert!(s.snapshots[&(NS.to_string(), "a".to_string())]
            .metadata
            .deletion_timestamp
            .is_some());
    }

    #[tokio::test]
    async fn post_checkpoint_stop_deletes_the_checkpointed_pod_only() {
        let f = world();
        f.add_policy(policy(0, "stop"));
        f.add_trigger(trigger_for("t1", "web-1"));
        run(&f, "t1").await.unwrap();
        assert_eq!(
            f.state().checkpoints[0].post_checkpoint,
            pb::PostCheckpoint::Stop as i32
        );
        // The pod was replaced by a new one of the same name meanwhile: not deleted.
        let mut again = f.state().pods[&(NS.to_string(), "web-1".to_string())].clone();
        again.metadata.uid = Some("new-uid".into());
        f.finish_job("job-1", "S1");
        run(&f, "t1").await.unwrap();
        assert!(f.state().pods.is_empty(), "the checkpointed pod is deleted");
        f.add_pod(again);
        f.add_trigger(trigger_for("t2", "web-1"));
        run(&f, "t2").await.unwrap();
        f.finish_job("job-2", "S2");
        f.state()
            .pods
            .get_mut(&(NS.to_string(), "web-1".to_string()))
            .unwrap()
            .metadata
            .uid = Some("newer-uid".into());
        run(&f, "t2").await.unwrap();
        assert_eq!(triggered(&f, "t2").reason, COMPLETE);
        assert_eq!(
            f.state().pods.len(),
            1,
            "a pod other than the checkpointed one stays"
        );
    }

    #[test]
    fn stages_are_read_from_the_condition_and_the_job_annotation() {
        let mut t = trigger_for("t", "p");
        assert_eq!(stage(&t), Stage::Start);
        t.annotations_mut()
            .insert(JOB_ANNOTATION.into(), "n/j".into());
        assert_eq!(stage(&t), Stage::Start, "no condition yet");
        t.status = Some(PodSnapshotManualTriggerStatus {
            conditions: vec![conditions::new(TRIGGERED, false, IN_PROGRESS, "")],
            snapshot_created: None,
        });
        assert_eq!(
            stage(&t),
            Stage::Running {
                node: "n".into(),
                job: "j".into()
            }
        );
        t.status.as_mut().unwrap().conditions[0].reason = FAILED.into();
        assert_eq!(stage(&t), Stage::Done);
    }
}
