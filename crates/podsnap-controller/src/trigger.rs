//! `PodSnapshotManualTrigger`: processed once. The pod's policy and store are resolved, the
//! node's podsnapd checkpoints the whole pod (by its CRI identity) into the policy's group, a
//! Ready `PodSnapshot` records it, retention trims the group, and the trigger's status says
//! `Triggered=True/Complete` with `snapshotCreated.name`, or `Triggered=False/Failed` with why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use podsnap_proto::v1 as pb;
use serde_json::json;
use tracing::{info, warn};

use crate::crd::*;
use crate::model::{self, *};
use crate::nodes::NodeClient;
use crate::{Ctx, Error};

/// Condition type and reasons the SDK reads.
pub const TRIGGERED: &str = "Triggered";
const IN_PROGRESS: &str = "InProgress";

/// What a finished checkpoint left, for the PodSnapshot.
struct Taken {
    name: String,
}

pub async fn reconcile(trigger: Arc<PodSnapshotManualTrigger>, ctx: Ctx) -> Result<Action, Error> {
    let ns = trigger.namespace().unwrap_or_default();
    let name = trigger.name_any();
    let api: Api<PodSnapshotManualTrigger> = Api::namespaced(ctx.client.clone(), &ns);
    let previous = trigger
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == TRIGGERED).cloned());
    let traceparent = crate::new_traceparent();
    match previous {
        Some(c) if c.status == "True" || c.reason != IN_PROGRESS => {
            // Processed (Complete, Failed or Error): a trigger runs once.
            return Ok(Action::await_change());
        }
        Some(_) => {
            // InProgress in the cache. The cache may only lag behind this controller's own
            // last write: read the trigger itself before deciding.
            let fresh = api.get_status(&name).await?;
            let done = fresh
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == TRIGGERED))
                .is_some_and(|c| c.status == "True" || c.reason != IN_PROGRESS);
            if done {
                return Ok(Action::await_change());
            }
            // Still InProgress: an earlier controller stopped mid-way.
            let outcome = recover(&trigger, &ctx, &traceparent).await;
            finish(&api, &name, outcome).await?;
            return Ok(Action::await_change());
        }
        None => {}
    }
    set_status(
        &api,
        &name,
        condition(TRIGGERED, false, IN_PROGRESS, "checkpointing the pod"),
        None,
    )
    .await?;
    let outcome = take(&trigger, &ctx, &traceparent).await;
    finish(&api, &name, outcome).await?;
    Ok(Action::await_change())
}

async fn finish(
    api: &Api<PodSnapshotManualTrigger>,
    name: &str,
    outcome: Result<Taken, Error>,
) -> Result<(), Error> {
    match outcome {
        Ok(t) => {
            info!(trigger = name, snapshot = %t.name, "trigger complete");
            set_status(
                api,
                name,
                condition(
                    TRIGGERED,
                    true,
                    "Complete",
                    format!("PodSnapshot {} is ready", t.name),
                ),
                Some(t.name),
            )
            .await
        }
        Err(e) => {
            warn!(trigger = name, error = %e, "trigger failed");
            // Failed: the request cannot succeed as it stands; Error: something to retry with
            // a new trigger once fixed (a node, the store, the API).
            let reason = match e {
                Error::Invalid(_) | Error::NotFound(_) => "Failed",
                _ => "Error",
            };
            set_status(
                api,
                name,
                condition(TRIGGERED, false, reason, e.to_string()),
                None,
            )
            .await
        }
    }
}

async fn set_status(
    api: &Api<PodSnapshotManualTrigger>,
    name: &str,
    c: Condition,
    created: Option<String>,
) -> Result<(), Error> {
    let mut status = json!({ "conditions": [c] });
    if let Some(n) = created {
        status["snapshotCreated"] = json!({ "name": n });
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// What a trigger resolves to before anything is checkpointed.
struct Plan {
    pod: Pod,
    policy: PodSnapshotPolicy,
    store_url: String,
    node: String,
    group: BTreeMap<String, String>,
    group_hash: String,
}

async fn plan(trigger: &PodSnapshotManualTrigger, ctx: &Ctx) -> Result<Plan, Error> {
    let ns = trigger.namespace().unwrap_or_default();
    let target = &trigger.spec.target_pod;
    if target.is_empty() {
        return Err(Error::Invalid("spec.targetPod is empty".into()));
    }
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .get_opt(target)
        .await?
        .ok_or_else(|| Error::NotFound(format!("pod {target} not found in namespace {ns}")))?;
    let labels = pod.labels().clone();
    let policies = Api::<PodSnapshotPolicy>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let policy = model::policy_for(&policies, &labels)
        .cloned()
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no PodSnapshotPolicy in namespace {ns} selects pod {target} (its labels: {})",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        })?;
    let cfg_name = &policy.spec.storage_config_name;
    let storage = Api::<PodSnapshotStorageConfig>::all(ctx.client.clone())
        .get_opt(cfg_name)
        .await?
        .ok_or_else(|| {
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
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Running" {
        return Err(Error::Invalid(format!(
            "pod {target} is not running (phase {phase:?}); only a running pod can be snapshotted"
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

async fn take(trigger: &PodSnapshotManualTrigger, ctx: &Ctx, tp: &str) -> Result<Taken, Error> {
    let plan = plan(trigger, ctx).await?;
    let nc = ctx.nodes.connect(&plan.node, tp).await?;
    let mut client = nc.client.clone();
    let info = client
        .get_node_info(nc.request(pb::GetNodeInfoRequest {}))
        .await
        .map_err(|s| nc.error("node info", &s))?
        .into_inner();
    if !model::same_store(&info.store_url, &plan.store_url) {
        return Err(Error::Invalid(format!(
            "podsnapd on node {} stores into {}, but PodSnapshotStorageConfig {} names {}; \
             configure that node's podsnapd with --store {}",
            plan.node,
            info.store_url,
            plan.policy.spec.storage_config_name,
            plan.store_url,
            plan.store_url
        )));
    }
    let ns = trigger.namespace().unwrap_or_default();
    let pod_name = plan.pod.name_any();
    let mut labels = plan.group.clone();
    labels.insert(TRIGGER_LABEL.into(), trigger.uid().unwrap_or_default());
    labels.insert("podsnap.dev/policy".into(), plan.policy.name_any());
    labels.insert("podsnap.dev/namespace".into(), ns.clone());
    let post = match plan.policy.spec.trigger_config.post_checkpoint.as_str() {
        "stop" => pb::PostCheckpoint::Stop,
        _ => pb::PostCheckpoint::Resume,
    };
    let req = pb::CheckpointRequest {
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::Pod(pb::PodTarget {
                namespace: ns.clone(),
                name: pod_name.clone(),
            })),
        }),
        labels: labels.into_iter().collect(),
        group_by: plan.group.keys().cloned().collect(),
        keep: 0,
        post_checkpoint: post as i32,
        parent: String::new(),
    };
    info!(pod = %pod_name, node = %plan.node, group = %plan.group_hash, "checkpointing");
    let mut stream = client
        .checkpoint(nc.request(req))
        .await
        .map_err(|s| nc.error("checkpoint", &s))?
        .into_inner();
    let mut snapshot = None;
    while let Some(ev) = stream.next().await {
        match ev.map_err(|s| nc.error("checkpoint", &s))?.event {
            Some(pb::checkpoint_event::Event::Snapshot(s)) => snapshot = Some(s),
            Some(pb::checkpoint_event::Event::Progress(p)) => {
                tracing::debug!(phase = p.phase, message = %p.message, "checkpoint progress")
            }
            None => {}
        }
    }
    let snapshot = snapshot.ok_or_else(|| Error::Podsnapd {
        node: plan.node.clone(),
        endpoint: nc.endpoint.clone(),
        message: "the checkpoint stream ended without a snapshot".into(),
    })?;
    let name = record(trigger, ctx, &plan, &nc, &snapshot).await?;
    retention(ctx, &ns, &plan).await;
    if post == pb::PostCheckpoint::Stop {
        delete_stopped_pod(ctx, &ns, &pod_name).await;
    }
    Ok(Taken { name })
}

/// `postCheckpoint: stop`: the checkpoint stopped the pod's sandbox, but the pod object stays,
/// and the kubelet restarts its containers fresh in a new sandbox (`restartPolicy`), seen
/// under both gVisor's shim and the runc shim: a pod that silently lost its state. Stop
/// means the pod goes, so it is deleted (an owner such as a Sandbox may make a new one, which
/// restores from this snapshot through the webhook). A failure is logged: the snapshot
/// stands either way.
async fn delete_stopped_pod(ctx: &Ctx, ns: &str, pod: &str) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    match pods.delete(pod, &params).await {
        Ok(_) => info!(namespace = %ns, %pod, "postCheckpoint stop: pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            warn!(namespace = %ns, %pod, error = %e, "postCheckpoint stop: cannot delete the pod")
        }
    }
}

/// Creates the Ready PodSnapshot of a stored snapshot (idempotent).
async fn record(
    trigger: &PodSnapshotManualTrigger,
    ctx: &Ctx,
    plan: &Plan,
    nc: &NodeClient,
    s: &pb::Snapshot,
) -> Result<String, Error> {
    let ns = trigger.namespace().unwrap_or_default();
    let pod_name = plan.pod.name_any();
    let name = model::snapshot_name(&pod_name, &s.id);
    let api: Api<PodSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let mut obj = PodSnapshot::new(
        &name,
        PodSnapshotSpec {
            source_pod: pod_name.clone(),
            policy_name: plan.policy.name_any(),
            storage_config_name: plan.policy.spec.storage_config_name.clone(),
        },
    );
    let mut labels = plan.group.clone();
    labels.insert(GROUP_LABEL.into(), plan.group_hash.clone());
    labels.insert(TRIGGER_LABEL.into(), trigger.uid().unwrap_or_default());
    obj.meta_mut().labels = Some(labels);
    obj.meta_mut().annotations = Some(BTreeMap::from([(
        ORIGIN_POD_ANNOTATION.to_string(),
        pod_name.clone(),
    )]));
    obj.meta_mut().finalizers = Some(vec![STORE_FINALIZER.to_string()]);
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let status = PodSnapshotStatus {
        conditions: vec![condition(
            "Ready",
            true,
            "Stored",
            format!(
                "snapshot {} of pod {pod_name} is durable in {}",
                s.id, plan.store_url
            ),
        )],
        snapshot_id: Some(s.id.clone()),
        store_url: Some(plan.store_url.clone()),
        node_name: Some(nc.node.clone()),
        pod_spec_hash: Some(model::pod_spec_hash(&plan.pod)),
        logical_bytes: Some(s.logical_bytes as i64),
        uploaded_bytes: Some(s.uploaded_bytes as i64),
        runsc_version: s.source.as_ref().map(|n| n.runsc_version.clone()),
    };
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(name)
}

/// Deletes the group's oldest Ready snapshots beyond the policy's count (the finalizer then
/// deletes their stored images). Failures are logged, not the trigger's: the snapshot exists.
async fn retention(ctx: &Ctx, ns: &str, plan: &Plan) {
    let max = model::max_per_group(&plan.policy);
    if max == 0 {
        return;
    }
    let api: Api<PodSnapshot> = Api::namespaced(ctx.client.clone(), ns);
    let group = match api
        .list(&ListParams::default().labels(&format!("{GROUP_LABEL}={}", plan.group_hash)))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            warn!(error = %e, "retention: listing the group failed");
            return;
        }
    };
    for victim in model::retention_victims(&group, max) {
        info!(snapshot = %victim, keep = max, "retention: deleting");
        if let Err(e) = api.delete(&victim, &Default::default()).await {
            warn!(snapshot = %victim, error = %e, "retention: delete failed");
        }
    }
}

/// An InProgress trigger found at start: complete it from what exists (a PodSnapshot, or a
/// stored snapshot labelled with the trigger), or fail it.
async fn recover(trigger: &PodSnapshotManualTrigger, ctx: &Ctx, tp: &str) -> Result<Taken, Error> {
    let ns = trigger.namespace().unwrap_or_default();
    let uid = trigger.uid().unwrap_or_default();
    let api: Api<PodSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api
        .list(&ListParams::default().labels(&format!("{TRIGGER_LABEL}={uid}")))
        .await?
        .items;
    if let Some(s) = existing.iter().find(|s| model::is_ready(s)) {
        return Ok(Taken { name: s.name_any() });
    }
    let plan = plan(trigger, ctx).await.map_err(|e| {
        Error::Invalid(format!(
            "the controller restarted while this trigger was in progress, and it cannot be resumed: {e}"
        ))
    })?;
    let nc = ctx.nodes.connect(&plan.node, tp).await?;
    let listed = nc
        .client
        .clone()
        .list_snapshots(nc.request(pb::ListSnapshotsRequest {
            group: String::new(),
            labels: [(TRIGGER_LABEL.to_string(), uid)].into_iter().collect(),
        }))
        .await
        .map_err(|s| nc.error("list snapshots", &s))?
        .into_inner();
    match listed.snapshots.first() {
        Some(s) => {
            let name = record(trigger, ctx, &plan, &nc, s).await?;
            retention(ctx, &ns, &plan).await;
            Ok(Taken { name })
        }
        None => Err(Error::Invalid(
            "the controller restarted while this trigger was checkpointing and the store holds \
             no snapshot from it; create a new trigger"
                .into(),
        )),
    }
}

/// How long a failed reconcile waits before it is retried.
pub fn retry_after(_e: &Error) -> Action {
    Action::requeue(Duration::from_secs(5))
}
