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
//! 2. The pod reconciler watches pods labelled `podsnap.dev/restore=true`: once every
//!    container runs (podsnap-runsc restores or fails the sandbox, it never starts a restoring
//!    pod fresh) it sets `PodRestored=True` naming the PodSnapshot; if the kubelet reports
//!    the restore failing, `PodRestored=False/RestoreFailed` with the node's reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use tracing::info;

use crate::crd::{PodSnapshot, PodSnapshotPolicy};
use crate::model::{self, *};
use crate::{Ctx, Error};

/// The label the webhook puts on restoring pods (what the pod reconciler watches).
pub const RESTORE_LABEL: &str = "podsnap.dev/restore";

/// The webhook's decision for one pod.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not ours: admit unchanged.
    Fresh,
    /// Admit with this JSON patch (RFC 6902 operations).
    Restore { snapshot: String, patch: Vec<Value> },
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

/// Decides for a pod being created in `ns` (see the module docs).
pub async fn decide(ctx: &Ctx, pod: &Pod, ns: &str) -> Result<Decision, Error> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key(RESTORE_FROM_ANNOTATION) {
        // podsnap's own contract, set by the user: nothing to add.
        return Ok(Decision::Fresh);
    }
    let snaps: Api<PodSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(ps) = annotations.get(PS_NAME_ANNOTATION) {
        let Some(s) = snaps.get_opt(ps).await? else {
            return Ok(Decision::Deny(format!(
                "{PS_NAME_ANNOTATION}={ps}: no PodSnapshot {ps} in namespace {ns}"
            )));
        };
        let id = s.status.as_ref().and_then(|st| st.snapshot_id.clone());
        return Ok(match id {
            Some(id) if model::is_ready(&s) => Decision::Restore {
                snapshot: ps.clone(),
                patch: restore_patch(pod, ps, &id),
            },
            _ => Decision::Deny(format!(
                "{PS_NAME_ANNOTATION}={ps}: PodSnapshot {ps} is not Ready"
            )),
        });
    }
    let labels = pod.labels().clone();
    let policies = Api::<PodSnapshotPolicy>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    let Some(policy) = model::policy_for(&policies, &labels) else {
        return Ok(Decision::Fresh);
    };
    let group = model::group_labels(policy, &labels);
    let hash = model::group_hash(&policy.name_any(), &group);
    let candidates = snaps
        .list(&ListParams::default().labels(&format!("{GROUP_LABEL}={hash}")))
        .await?
        .items;
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
            }
        }
        None => Decision::Fresh,
    })
}

/// Sets `PodRestored` on restoring pods (see the module docs).
pub async fn reconcile_pod(pod: Arc<Pod>, ctx: Ctx) -> Result<Action, Error> {
    let annotations = pod.annotations();
    let (Some(ps), Some(id)) = (
        annotations.get(PS_NAME_ANNOTATION),
        annotations.get(RESTORE_FROM_ANNOTATION),
    ) else {
        return Ok(Action::await_change());
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let status = pod.status.clone().unwrap_or_default();
    let current = status
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == POD_RESTORED));
    if current.is_some_and(|c| c.status == "True") {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let want = pod.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
    let running = status
        .container_statuses
        .as_ref()
        .map(|cs| {
            cs.iter()
                .filter(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
                .count()
        })
        .unwrap_or(0);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if want > 0 && running == want {
        info!(pod = %name, snapshot = %ps, "restored");
        set_pod_condition(
            &api,
            &name,
            true,
            "Restored",
            &format!("restored from PodSnapshot {ps} (podsnap snapshot {id})"),
        )
        .await?;
        return Ok(Action::await_change());
    }
    // Not running yet: did the node refuse the restore?
    let uid = pod.uid().unwrap_or_default();
    let events = Api::<Event>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await?
        .items;
    let failure = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.message.as_deref())
        .find(|m| m.contains("restore"));
    if let Some(msg) = failure {
        let msg = format!("restore from PodSnapshot {ps} failed: {msg}");
        if current.is_none_or(|c| c.message.as_deref() != Some(msg.as_str())) {
            set_pod_condition(&api, &name, false, "RestoreFailed", &msg).await?;
        }
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

async fn set_pod_condition(
    api: &Api<Pod>,
    name: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let c = json!({
        "type": POD_RESTORED,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": model::now_rfc3339(),
    });
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [c]}})),
    )
    .await?;
    Ok(())
}

pub fn retry_after(_e: &Error) -> Action {
    Action::requeue(Duration::from_secs(3))
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
