//! Restore: how a new pod learns its snapshot before its containers start, and how it then
//! says it was restored.
//!
//! 1. The mutating admission webhook sees every pod CREATE. A pod annotated
//!    `podsnapshot.gke.io/ps-name` restores from that PodSnapshot (which must exist and be
//!    Ready, or the pod is refused). Otherwise, a pod that a policy selects restores from the
//!    newest Ready PodSnapshot of its group whose pod-spec hash is the pod's; a pod with none
//!    starts fresh and is left alone. A restoring pod gets `podsnap.dev/restore-from=<store
//!    id>` (what the node's podsnap-runsc restores from), `podsnapshot.gke.io/ps-name`, the
//!    label `podsnap.dev/restore=true` and a readiness gate on `PodRestored`, so it is not
//!    Ready before its condition is set.
//! 2. The pod reconciler watches pods labelled `podsnap.dev/restore=true` and asks the pod's
//!    node (podsnapd's jobs) what it did: its `prepare-restore` job for the pod's snapshot,
//!    started since the pod was created, is the node's record of this restore. That job
//!    failed: `PodRestored=False/RestoreFailed` with podsnapd's error. It is done (or, for a
//!    lazy restore, still filling in pages) and the pod's sandbox is up (runsc restored it
//!    from that image; podsnap-runsc never starts a restoring pod fresh):
//!    `PodRestored=True/Restored`. Refusals before podsnapd records a
//!    job (an unknown snapshot, an incompatible node, the wrapper's checks) and runsc failing
//!    after the image was ready reach the controller only as the kubelet's Warning events:
//!    for those, and only those, a Warning about the restore is the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use podsnap_proto::v1 as pb;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::api::Note;
use crate::conditions;
use crate::model::{self, *};
use crate::placement;
use crate::{Ctx, Error};

/// The label the webhook puts on restoring pods (what the pod reconciler watches).
pub const RESTORE_LABEL: &str = "podsnap.dev/restore";

/// The webhook's decision for one pod.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not ours: admit unchanged.
    Fresh,
    /// Admit with this JSON patch (RFC 6902 operations).
    Restore {
        /// The PodSnapshot's name.
        snapshot: String,
        patch: Vec<Value>,
        /// The stored snapshot's id, and the node that took it.
        id: String,
        source_node: Option<String>,
    },
    /// Refuse the pod, saying why.
    Deny(String),
}

/// The JSON patch that makes `pod` restore from PodSnapshot `ps_name` (store id `id`).
pub fn restore_patch(pod: &Pod, ps_name: &str, id: &str) -> Vec<Value> {
    let mut ops = Vec::new();
    let add_map = |ops: &mut Vec<Value>, path: &str, present: bool, kv: &[(&str, &str)]| {
        if present {
            for (k, v) in kv {
                ops.push(json!({"op": "add", "path": format!("{path}/{}", model::pointer_segment(k)), "value": v}));
            }
        } else {
            let m: BTreeMap<&str, &str> = kv.iter().cloned().collect();
            ops.push(json!({"op": "add", "path": path, "value": m}));
        }
    };
    add_map(
        &mut ops,
        "/metadata/annotations",
        pod.metadata.annotations.is_some(),
        &[(RESTORE_FROM_ANNOTATION, id), (PS_NAME_ANNOTATION, ps_name)],
    );
    add_map(
        &mut ops,
        "/metadata/labels",
        pod.metadata.labels.is_some(),
        &[(RESTORE_LABEL, "true")],
    );
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref());
    let gate = json!({"conditionType": POD_RESTORED});
    match gates {
        Some(g) if g.iter().any(|g| g.condition_type == POD_RESTORED) => {}
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/readinessGates/-", "value": gate})),
        None => ops.push(json!({"op": "add", "path": "/spec/readinessGates", "value": [gate]})),
    }
    ops
}

/// Decides for a pod being created in `ns` (see the module docs), with the placement of a
/// restoring pod ([`crate::placement`]). A placement that cannot be worked out within
/// [`placement::PLAN_TIMEOUT`] (no node answers for the snapshot) leaves the pod
/// unconstrained, as before placement existed: the webhook's own deadline (5 s, then
/// `failurePolicy: Ignore` admits the pod unchanged, without its restore) is never at risk.
pub async fn decide(ctx: &Ctx, pod: &Pod, ns: &str) -> Result<Decision, Error> {
    let mut d = choose(ctx, pod, ns).await?;
    if let Decision::Restore {
        patch,
        id,
        source_node,
        snapshot,
    } = &mut d
    {
        let plan = placement::plan(ctx, id, source_node.as_deref());
        let plan = tokio::time::timeout(placement::PLAN_TIMEOUT, plan)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Podsnapd {
                    node: source_node.clone().unwrap_or_default(),
                    endpoint: String::new(),
                    message: format!(
                        "no answer within {:?} for snapshot {id}",
                        placement::PLAN_TIMEOUT
                    ),
                    code: tonic::Code::DeadlineExceeded,
                })
            });
        match plan {
            Ok(Some((needs, p))) => {
                if p.fit.is_empty() {
                    warn!(namespace = %ns, %snapshot, refused = ?p.refused, "no node can restore this snapshot");
                }
                patch.extend(placement::affinity_ops(pod, &needs, &p));
            }
            Ok(None) => {}
            Err(e) => {
                warn!(namespace = %ns, %snapshot, error = %e, "cannot place the restoring pod; admitting it unconstrained")
            }
        }
    }
    Ok(d)
}

/// Which snapshot, if any, a pod restores from.
async fn choose(ctx: &Ctx, pod: &Pod, ns: &str) -> Result<Decision, Error> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key(RESTORE_FROM_ANNOTATION) {
        // podsnap's own contract, set by the user: nothing to add.
        return Ok(Decision::Fresh);
    }
    if let Some(ps) = annotations.get(PS_NAME_ANNOTATION) {
        let Some(s) = ctx.cluster.snapshot(ns, ps).await? else {
            return Ok(Decision::Deny(format!(
                "{PS_NAME_ANNOTATION}={ps}: no PodSnapshot {ps} in namespace {ns}"
            )));
        };
        let id = s.status.as_ref().and_then(|st| st.snapshot_id.clone());
        return Ok(match id {
            Some(id) if model::is_ready(&s) && s.metadata.deletion_timestamp.is_none() => {
                Decision::Restore {
                    snapshot: ps.clone(),
                    patch: restore_patch(pod, ps, &id),
                    source_node: s.status.as_ref().and_then(|st| st.node_name.clone()),
                    id,
                }
            }
            _ => Decision::Deny(format!(
                "{PS_NAME_ANNOTATION}={ps}: PodSnapshot {ps} is not Ready"
            )),
        });
    }
    let labels = pod.labels().clone();
    let policies = ctx.cluster.policies(ns).await?;
    let Some(policy) = model::policy_for(&policies, &labels) else {
        return Ok(Decision::Fresh);
    };
    let group = model::group_labels(policy, &labels);
    let hash = model::group_hash(&policy.name_any(), &group);
    let candidates = ctx
        .cluster
        .snapshots(ns, &format!("{GROUP_LABEL}={hash}"))
        .await?;
    let spec_hash = model::pod_spec_hash(pod);
    Ok(match model::restore_candidate(&candidates, &spec_hash) {
        Some(s) => {
            let name = s.name_any();
            let id = s
                .status
                .as_ref()
                .and_then(|st| st.snapshot_id.clone())
                .unwrap_or_default();
            Decision::Restore {
                patch: restore_patch(pod, &name, &id),
                snapshot: name,
                source_node: s.status.as_ref().and_then(|st| st.node_name.clone()),
                id,
            }
        }
        None => Decision::Fresh,
    })
}

/// `PodRestored=True`'s reason.
pub const RESTORED: &str = "Restored";
/// `PodRestored=False`'s reason.
pub const RESTORE_FAILED: &str = "RestoreFailed";
/// podsnapd's kind of the job that prepares a pod's image on its node.
pub const PREPARE_JOB: &str = "prepare-restore";
/// A node job may start this much before the pod's creation time (clock skew).
pub const CLOCK_SLACK_SECS: i64 = 30;
/// A pod running this long whose node lists no restore job for it (podsnapd keeps only its
/// recent jobs) counts as restored: podsnap-runsc never starts a restoring pod fresh.
pub const UNRECORDED_AFTER_SECS: i64 = 120;
/// How often a restoring pod is looked at until its condition is final.
pub const RECHECK: Duration = Duration::from_secs(3);

/// What a restoring pod's `PodRestored` should say.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Restored(String),
    Failed(String),
    /// Not known yet: look again.
    Wait,
}

/// The newest job of `jobs` that prepared `snapshot` since the pod was created (`since`,
/// Unix seconds): podsnapd's record of this pod's restore on its node.
pub fn restore_job<'a>(jobs: &'a [pb::Job], snapshot: &str, since: i64) -> Option<&'a pb::Job> {
    let started = |j: &pb::Job| {
        time::OffsetDateTime::parse(
            &j.started_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t.unix_timestamp())
        .unwrap_or(0)
    };
    jobs.iter()
        .filter(|j| j.kind == PREPARE_JOB && j.snapshot_id == snapshot)
        .filter(|j| started(j) >= since - CLOCK_SLACK_SECS)
        .max_by_key(|j| (started(j), j.id.clone()))
}

/// Every container of the pod running (the sandbox came up).
fn all_running(pod: &Pod) -> bool {
    let want = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let running = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter()
                .filter(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
                .count()
        });
    want > 0 && running == want
}

/// A restoring pod: its PodSnapshot, its store id and its node.
struct Restoring<'a> {
    ps: &'a str,
    id: &'a str,
    node: &'a str,
}

impl<'a> Restoring<'a> {
    fn of(pod: &'a Pod) -> Option<Restoring<'a>> {
        let a = pod.metadata.annotations.as_ref()?;
        Some(Restoring {
            ps: a.get(PS_NAME_ANNOTATION)?,
            id: a.get(RESTORE_FROM_ANNOTATION)?,
            node: pod.spec.as_ref()?.node_name.as_deref()?,
        })
    }
}

/// Sets `PodRestored` on restoring pods from their node's restore job (see the module docs).
pub async fn reconcile_pod(pod: Arc<Pod>, ctx: Ctx) -> Result<Action, Error> {
    if let Some(why) = unplaceable(&pod) {
        return no_compatible_node(&pod, why, &ctx).await;
    }
    let Some(r) = Restoring::of(&pod) else {
        return Ok(Action::await_change()); // not restoring, or not scheduled yet
    };
    let conds = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let done = conds
        .iter()
        .any(|c| c.type_ == POD_RESTORED && c.status == "True");
    if done || pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let jobs = ctx.nodes.jobs(r.node, &crate::new_traceparent()).await?;
    let since = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let verdict = judge(&pod, &r, restore_job(&jobs, r.id, since), &ctx).await?;
    let (ok, reason, message) = match verdict {
        Verdict::Wait => return Ok(Action::requeue(RECHECK)),
        Verdict::Restored(m) => (true, RESTORED, m),
        Verdict::Failed(m) => (false, RESTORE_FAILED, m),
    };
    let generation = pod.metadata.generation;
    let Some(c) = conditions::pod_condition(&conds, POD_RESTORED, ok, reason, &message, generation)
    else {
        return Ok(Action::requeue(RECHECK));
    };
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    info!(pod = %name, snapshot = %r.ps, reason, "PodRestored");
    ctx.cluster.patch_pod_condition(&ns, &name, &c).await?;
    let note = match ok {
        true => Note::normal(reason, "Restore", message),
        false => Note::warning(reason, "Restore", message),
    };
    ctx.cluster.publish(&pod.object_ref(&()), note).await;
    // A failed restore may still succeed when the kubelet retries the sandbox.
    Ok(if ok {
        Action::await_change()
    } else {
        Action::requeue(RECHECK)
    })
}

/// What each node lacks, for a restoring pod that the webhook found no node for and that is
/// still unscheduled.
fn unplaceable(pod: &Pod) -> Option<&str> {
    let unscheduled = pod.spec.as_ref().is_none_or(|s| s.node_name.is_none());
    let why = pod
        .metadata
        .annotations
        .as_ref()?
        .get(placement::NO_COMPATIBLE_NODE_ANNOTATION)?;
    unscheduled.then_some(why.as_str())
}

/// `PodRestored=False/NoCompatibleNode` and a Warning Event naming what each node lacks,
/// once (the condition, when it already says so, is not written again).
async fn no_compatible_node(pod: &Pod, why: &str, ctx: &Ctx) -> Result<Action, Error> {
    let conds = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let ps = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PS_NAME_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    let message = format!(
        "no node can restore PodSnapshot {ps}: {why}; the pod stays Pending (create it again once a node that can run the snapshot is in the cluster)"
    );
    let reason = placement::NO_COMPATIBLE_NODE;
    let c = conditions::pod_condition(
        &conds,
        POD_RESTORED,
        false,
        reason,
        &message,
        pod.metadata.generation,
    );
    if let Some(c) = c {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        info!(pod = %name, snapshot = %ps, "no compatible node");
        ctx.cluster.patch_pod_condition(&ns, &name, &c).await?;
        let note = Note::warning(reason, "Place", message);
        ctx.cluster.publish(&pod.object_ref(&()), note).await;
    }
    Ok(Action::await_change())
}

/// The verdict from the node's job, and from the pod's Warning events only for what the
/// node cannot tell (a refusal before podsnapd recorded a job: an unknown snapshot, an
/// incompatible node, the wrapper's own checks; or runsc failing after the image was ready).
async fn judge(
    pod: &Pod,
    r: &Restoring<'_>,
    job: Option<&pb::Job>,
    ctx: &Ctx,
) -> Result<Verdict, Error> {
    let name = pod.name_any();
    let running = all_running(pod);
    let phase = job.map(|j| pb::Phase::try_from(j.phase).unwrap_or(pb::Phase::Unspecified));
    match (job, phase) {
        (Some(j), Some(pb::Phase::Failed)) => {
            return Ok(Verdict::Failed(format!(
                "cannot restore pod {name} from PodSnapshot {}: podsnapd on node {} (job {}): {}",
                r.ps, r.node, j.id, j.error
            )))
        }
        // Done: the image was ready before runsc restored from it. Still running with the
        // sandbox up: a lazy restore, whose job ends when every page is local.
        (Some(j), Some(phase)) if running => {
            let lazy = match phase {
                pb::Phase::Done => "",
                _ => ", pages still arriving (lazy restore)",
            };
            return Ok(Verdict::Restored(format!(
                "restored from PodSnapshot {} (podsnap snapshot {}; image prepared by podsnapd on node {}, job {}{lazy})",
                r.ps, r.id, r.node, j.id
            )));
        }
        (None, _) if running && crate::age_secs(&pod.metadata) > UNRECORDED_AFTER_SECS => {
            return Ok(Verdict::Restored(format!(
                "restored from PodSnapshot {} (podsnap snapshot {}; node {} no longer lists its restore job)",
                r.ps, r.id, r.node
            )))
        }
        _ if running => return Ok(Verdict::Wait),
        _ => {}
    }
    let uid = pod.uid().unwrap_or_default();
    let warnings = ctx
        .cluster
        .warnings(&pod.namespace().unwrap_or_default(), &uid)
        .await?;
    Ok(match warnings.iter().find(|m| m.contains("restore")) {
        Some(m) => Verdict::Failed(format!("restore from PodSnapshot {} failed: {m}", r.ps)),
        None => Verdict::Wait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_adds_annotations_label_and_gate_to_a_bare_pod() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {}, "spec": {"containers": []}})).unwrap();
        let ops = restore_patch(&pod, "ps-1", "ID-1");
        assert_eq!(ops[0]["path"], "/metadata/annotations");
        assert_eq!(ops[0]["value"][RESTORE_FROM_ANNOTATION], "ID-1");
        assert_eq!(ops[0]["value"][PS_NAME_ANNOTATION], "ps-1");
        assert_eq!(ops[1]["value"][RESTORE_LABEL], "true");
        assert_eq!(ops[2]["path"], "/spec/readinessGates");
        // It applies as a JSON patch.
        let mut doc = serde_json::to_value(&pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc["spec"]["readinessGates"][0]["conditionType"],
            POD_RESTORED
        );
    }

    #[test]
    fn the_patch_extends_what_the_pod_has() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"annotations": {"a": "b"}, "labels": {"app": "x"}},
            "spec": {"containers": [], "readinessGates": [{"conditionType": "Other"}]}
        }))
        .unwrap();
        let ops = restore_patch(&pod, "ps-1", "ID-1");
        let mut doc = serde_json::to_value(&pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["a"], "b");
        assert_eq!(
            doc["metadata"]["annotations"][RESTORE_FROM_ANNOTATION],
            "ID-1"
        );
        assert_eq!(doc["metadata"]["labels"]["app"], "x");
        assert_eq!(doc["metadata"]["labels"][RESTORE_LABEL], "true");
        assert_eq!(doc["spec"]["readinessGates"].as_array().unwrap().len(), 2);
        // A gate already there is not added twice.
        let again: Pod = serde_json::from_value(doc).unwrap();
        let ops = restore_patch(&again, "ps-1", "ID-1");
        assert!(ops
            .iter()
            .all(|o| !o["path"].as_str().unwrap().contains("readinessGates")));
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use crate::crd::{PodSnapshot, PodSnapshotSpec, PodSnapshotStatus};
    use crate::error::Retry;
    use crate::testing::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A pod the webhook pointed at PodSnapshot `ps1` (store id `S1`), created now.
    fn restoring(f: &Fake, running: bool) -> Arc<Pod> {
        let mut p = pod("r1", &[(RESTORE_LABEL, "true")]);
        p.metadata.annotations = Some(
            [
                (PS_NAME_ANNOTATION.to_string(), "ps1".to_string()),
                (RESTORE_FROM_ANNOTATION.to_string(), "S1".to_string()),
            ]
            .into(),
        );
        if !running {
            p.status.as_mut().unwrap().container_statuses = None;
            p.status.as_mut().unwrap().phase = Some("Pending".into());
        }
        f.add_pod(p);
        Arc::new(f.state().pods[&(NS.to_string(), "r1".to_string())].clone())
    }

    fn prepare_job(f: &Fake, id: &str, phase: pb::Phase, error: &str, started: &str) {
        f.state()
            .jobs
            .entry(NODE.into())
            .or_default()
            .push(pb::Job {
                id: id.into(),
                kind: PREPARE_JOB.into(),
                target: "sandbox-id".into(),
                snapshot_id: "S1".into(),
                phase: phase as i32,
                error: error.into(),
                started_at: started.into(),
                ..Default::default()
            });
    }

    fn restored_condition(f: &Fake) -> Option<(String, String, String)> {
        let st = f.state();
        let p = &st.pods[&(NS.to_string(), "r1".to_string())];
        let cs = p.status.as_ref()?.conditions.as_ref()?;
        let c = cs.iter().find(|c| c.type_ == POD_RESTORED)?;
        Some((
            c.status.clone(),
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        ))
    }

    #[tokio::test]
    async fn the_nodes_done_restore_job_and_a_running_sandbox_make_pod_restored_true() {
        let f = world();
        let p = restoring(&f, true);
        prepare_job(&f, "j1", pb::Phase::Done, "", &model::now_rfc3339());
        let a = reconcile_pod(p.clone(), f.ctx()).await.unwrap();
        assert_eq!(a, Action::await_change());
        let (status, reason, message) = restored_condition(&f).unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("True", RESTORED));
        assert!(
            message.contains("ps1") && message.contains("job j1"),
            "{message}"
        );
        assert!(f
            .state()
            .events
            .iter()
            .any(|(_, n)| n.reason == RESTORED && !n.warning));
    }

    #[tokio::test]
    async fn a_lazy_restore_still_filling_pages_with_its_sandbox_up_is_restored() {
        let f = world();
        let p = restoring(&f, true);
        prepare_job(&f, "j1", pb::Phase::Downloading, "", &model::now_rfc3339());
        reconcile_pod(p, f.ctx()).await.unwrap();
        let (status, _, message) = restored_condition(&f).unwrap();
        assert_eq!(status, "True");
        assert!(message.contains("lazy"), "{message}");
    }

    #[tokio::test]
    async fn a_prepared_image_whose_sandbox_is_not_up_is_not_restored_yet() {
        let f = world();
        let p = restoring(&f, false);
        prepare_job(&f, "j1", pb::Phase::Done, "", &model::now_rfc3339());
        assert_eq!(
            reconcile_pod(p, f.ctx()).await.unwrap(),
            Action::requeue(RECHECK)
        );
        assert!(restored_condition(&f).is_none());
    }

    #[tokio::test]
    async fn running_containers_without_the_nodes_record_are_not_yet_restored() {
        let f = world();
        let p = restoring(&f, true);
        assert_eq!(
            reconcile_pod(p.clone(), f.ctx()).await.unwrap(),
            Action::requeue(RECHECK)
        );
        assert!(restored_condition(&f).is_none());
        // A job of the same snapshot from before this pod existed is another pod's.
        prepare_job(&f, "old", pb::Phase::Done, "", "2020-01-01T00:00:00Z");
        assert_eq!(
            reconcile_pod(p, f.ctx()).await.unwrap(),
            Action::requeue(RECHECK)
        );
        assert!(restored_condition(&f).is_none());
    }

    #[tokio::test]
    async fn a_failed_restore_job_sets_restore_failed_with_the_nodes_error() {
        let f = world();
        let p = restoring(&f, false);
        prepare_job(
            &f,
            "j1",
            pb::Phase::Failed,
            "chunk abc failed verification",
            &model::now_rfc3339(),
        );
        // The kubelet's warning must not be what decides when the node can tell.
        f.state()
            .warnings
            .insert(p.uid().unwrap(), vec!["some restore text".into()]);
        assert_eq!(
            reconcile_pod(p, f.ctx()).await.unwrap(),
            Action::requeue(RECHECK)
        );
        let (status, reason, message) = restored_condition(&f).unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", RESTORE_FAILED)
        );
        assert!(
            message.contains("cannot restore") && message.contains("chunk abc"),
            "{message}"
        );
        assert!(!message.contains("some restore text"));
        assert!(f
            .state()
            .events
            .iter()
            .any(|(_, n)| n.warning && n.reason == RESTORE_FAILED));
    }

    #[tokio::test]
    async fn a_refusal_before_the_node_records_a_job_is_read_from_the_pods_warnings() {
        let f = world();
        let p = restoring(&f, false);
        assert_eq!(
            reconcile_pod(p.clone(), f.ctx()).await.unwrap(),
            Action::requeue(RECHECK)
        );
        assert!(restored_condition(&f).is_none(), "nothing known yet");
        let msg = "podsnap-runsc: cannot restore container x from snapshot S1: not found";
        f.state().warnings.insert(
            p.uid().unwrap(),
            vec!["Back-off pulling".into(), msg.into()],
        );
        reconcile_pod(p.clone(), f.ctx()).await.unwrap();
        let (_, reason, message) = restored_condition(&f).unwrap();
        assert_eq!(reason, RESTORE_FAILED);
        assert!(
            message.contains("ps1") && message.contains(msg),
            "{message}"
        );
        // Said once: the same verdict again writes nothing.
        let writes = f.state().writes.len();
        let p = Arc::new(f.state().pods[&(NS.to_string(), "r1".to_string())].clone());
        reconcile_pod(p, f.ctx()).await.unwrap();
        assert_eq!(f.state().writes.len(), writes);
    }

    #[tokio::test]
    async fn a_pod_restored_long_ago_whose_job_the_node_forgot_is_restored() {
        let f = world();
        let mut p = (*restoring(&f, true)).clone();
        let then = k8s_openapi::jiff::Timestamp::now().as_second() - 3600;
        p.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(then).unwrap(),
        ));
        reconcile_pod(Arc::new(p), f.ctx()).await.unwrap();
        assert_eq!(restored_condition(&f).unwrap().1, RESTORED);
    }

    #[tokio::test]
    async fn an_unreachable_node_is_retried_and_a_pod_already_restored_is_left_alone() {
        let f = world();
        let p = restoring(&f, true);
        let store = take_down(&f, NODE).unwrap();
        let e = reconcile_pod(p, f.ctx()).await.unwrap_err();
        assert_eq!(e.retry(), Retry::Transient);
        f.state().node_store.insert(NODE.into(), store);
        prepare_job(&f, "j1", pb::Phase::Done, "", &model::now_rfc3339());
        let p = Arc::new(f.state().pods[&(NS.to_string(), "r1".to_string())].clone());
        reconcile_pod(p, f.ctx()).await.unwrap();
        let p = Arc::new(f.state().pods[&(NS.to_string(), "r1".to_string())].clone());
        take_down(&f, NODE);
        assert_eq!(
            reconcile_pod(p, f.ctx()).await.unwrap(),
            Action::await_change()
        );
    }

    fn snapshot_named(f: &Fake, name: &str, ready: bool) {
        let mut s = PodSnapshot::new(name, PodSnapshotSpec::default());
        s.metadata.namespace = Some(NS.into());
        s.status = Some(PodSnapshotStatus {
            conditions: vec![conditions::new(READY, ready, "Stored", "")],
            snapshot_id: Some(format!("id-{name}")),
            ..Default::default()
        });
        f.put_snapshot(s);
    }

    #[tokio::test]
    async fn admission_restores_only_from_a_ready_snapshot_not_being_deleted() {
        let f = world();
        snapshot_named(&f, "good", true);
        snapshot_named(&f, "notready", false);
        snapshot_named(&f, "going", true);
        f.state()
            .snapshots
            .get_mut(&(NS.to_string(), "going".to_string()))
            .unwrap()
            .metadata
            .deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let ask = |ps: &str| {
            let mut p = pod("new", &[]);
            p.metadata.annotations =
                Some([(PS_NAME_ANNOTATION.to_string(), ps.to_string())].into());
            p
        };
        let ctx = f.ctx();
        assert!(matches!(
            decide(&ctx, &ask("good"), NS).await.unwrap(),
            Decision::Restore { .. }
        ));
        for ps in ["notready", "going", "absent"] {
            assert!(
                matches!(decide(&ctx, &ask(ps), NS).await.unwrap(), Decision::Deny(_)),
                "{ps}"
            );
        }
        // A pod no policy selects, without ps-name: fresh.
        assert_eq!(
            decide(&ctx, &pod("x", &[("app", "none")]), NS)
                .await
                .unwrap(),
            Decision::Fresh
        );
    }
}
