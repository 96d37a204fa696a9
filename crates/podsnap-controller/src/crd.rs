//! The kinds of `podsnapshot.gke.io/v1`, field for field as GKE's Pod Snapshot API and the
//! agent-sandbox SDK use them, plus podsnap's extensions (`s3`, `azure` and `local` stores, and
//! the status fields that tie a `PodSnapshot` to its stored image).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "podsnapshot.gke.io";
pub const VERSION: &str = "v1";

/// A cluster-wide place where snapshots are stored. Exactly one store kind is set.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "podsnapshot.gke.io",
    version = "v1",
    kind = "PodSnapshotStorageConfig",
    plural = "podsnapshotstorageconfigs",
    status = "StorageConfigStatus",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".status.storeURL"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotStorageConfigSpec {
    pub snapshot_storage_config: SnapshotStorageConfig,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStorageConfig {
    /// Google Cloud Storage (GKE's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<BucketStore>,
    /// S3 or an S3-compatible server (podsnap extension). Endpoint and credentials are the
    /// node's podsnapd configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
    /// Azure Blob Storage (podsnap extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStore>,
    /// A directory on the nodes (podsnap extension): shared storage mounted at the same path
    /// on every node, or one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalStore>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketStore {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureStore {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalStore {
    /// Absolute path of the store directory on the node.
    pub path: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageConfigStatus {
    /// The store URL podsnapd nodes must serve (`file:///...`, `gs://...`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "storeURL")]
    pub store_url: Option<String>,
}

/// Which pods are snapshotted, how, into which store, grouped and kept how.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "podsnapshot.gke.io",
    version = "v1",
    kind = "PodSnapshotPolicy",
    plural = "podsnapshotpolicies",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotPolicySpec {
    /// The cluster-scoped PodSnapshotStorageConfig to store into.
    pub storage_config_name: String,
    /// The pods this policy applies to (same namespace).
    pub selector: LabelSelector,
    #[serde(default)]
    pub trigger_config: TriggerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_grouping_rules: Option<SnapshotGroupingRules>,
}

/// A label selector (`matchLabels` and `matchExpressions`, as everywhere in Kubernetes).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerConfig {
    /// `manual` (PodSnapshotManualTrigger) or `workload` (not implemented by podsnap: such a
    /// policy still serves manual triggers and restores).
    #[serde(default = "default_trigger_type", rename = "type")]
    pub type_: String,
    /// `resume` (the pod keeps running) or `stop`.
    #[serde(default = "default_post_checkpoint")]
    pub post_checkpoint: String,
}

fn default_trigger_type() -> String {
    "manual".into()
}

fn default_post_checkpoint() -> String {
    "resume".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotGroupingRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by_label_value: Option<GroupByLabelValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_retention_policy: Option<GroupRetentionPolicy>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupByLabelValue {
    /// Pod label keys whose values form the group (keys a pod lacks are left out).
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupRetentionPolicy {
    /// Keep at most this many Ready snapshots per group, oldest deleted first (0: keep all).
    #[serde(default)]
    pub max_snapshot_count_per_group: i32,
}

/// One snapshot of one pod, now.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "podsnapshot.gke.io",
    version = "v1",
    kind = "PodSnapshotManualTrigger",
    plural = "podsnapshotmanualtriggers",
    namespaced,
    status = "PodSnapshotManualTriggerStatus",
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.targetPod"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotCreated.name"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotManualTriggerSpec {
    /// Name of the pod (same namespace) to snapshot.
    pub target_pod: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotManualTriggerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_created: Option<SnapshotRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    pub name: String,
}

/// A stored snapshot of a pod. Deleting it deletes the stored image.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "podsnapshot.gke.io",
    version = "v1",
    kind = "PodSnapshot",
    plural = "podsnapshots",
    namespaced,
    status = "PodSnapshotStatus",
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.sourcePod"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotSpec {
    /// The pod the snapshot was taken of.
    pub source_pod: String,
    /// The policy that applied.
    pub policy_name: String,
    /// The PodSnapshotStorageConfig it is stored in.
    pub storage_config_name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSnapshotStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// podsnap's snapshot id in the store.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "snapshotID"
    )]
    pub snapshot_id: Option<String>,
    /// The store URL it was written to.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "storeURL")]
    pub store_url: Option<String>,
    /// The node whose podsnapd took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Hash of the source pod's spec without node-specific fields: a pod restores only from
    /// a snapshot whose hash equals its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_spec_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runsc_version: Option<String>,
}

/// A status condition (metav1.Condition's fields).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Every CRD of the API, as YAML documents (what `podsnap-controller crds` prints).
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        PodSnapshotStorageConfig::crd(),
        PodSnapshotPolicy::crd(),
        PodSnapshotManualTrigger::crd(),
        PodSnapshot::crd(),
    ]
}

/// The CRDs as one multi-document YAML (`podsnap-controller crds`, and
/// daemonset/controller/crds.yaml, which a test keeps equal to it).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `podsnap-controller crds` from crates/podsnap-controller/src/crd.rs; do not edit.\n",
    );
    for c in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&c)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_crds_are_the_generated_ones() {
        let shipped = include_str!("../../../daemonset/controller/crds.yaml");
        assert!(
            shipped == crds_yaml().unwrap(),
            "daemonset/controller/crds.yaml is stale: run target/debug/podsnap-controller crds > daemonset/controller/crds.yaml"
        );
    }

    #[test]
    fn the_tutorial_policy_parses() {
        let yaml = r#"
apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata: {name: example-policy, namespace: default}
spec:
  storageConfigName: example-pod-snapshot-storage-config
  selector:
    matchLabels: {app: agent-sandbox-workload}
  triggerConfig: {type: manual, postCheckpoint: resume}
  snapshotGroupingRules:
    groupByLabelValue:
      labels: ["agents.x-k8s.io/sandbox-name-hash", "tenant-id", "user-id"]
    groupRetentionPolicy: {maxSnapshotCountPerGroup: 2}
"#;
        let p: PodSnapshotPolicy = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(p.spec.trigger_config.post_checkpoint, "resume");
        let rules = p.spec.snapshot_grouping_rules.unwrap();
        assert_eq!(rules.group_by_label_value.unwrap().labels.len(), 3);
        assert_eq!(
            rules
                .group_retention_policy
                .unwrap()
                .max_snapshot_count_per_group,
            2
        );
    }

    #[test]
    fn crds_are_served_in_the_gke_group_with_status() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "podsnapshotstorageconfigs.podsnapshot.gke.io",
                "podsnapshotpolicies.podsnapshot.gke.io",
                "podsnapshotmanualtriggers.podsnapshot.gke.io",
                "podsnapshots.podsnapshot.gke.io"
            ]
        );
        assert_eq!(crds[0].spec.scope, "Cluster");
        assert_eq!(crds[3].spec.scope, "Namespaced");
        let v = &crds[3].spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        // The SDK reads these paths; the schema must keep them.
        let schema = serde_json::to_string(&v.schema).unwrap();
        for field in [
            "conditions",
            "lastTransitionTime",
            "snapshotID",
            "podSpecHash",
        ] {
            assert!(schema.contains(field), "{field} missing from the schema");
        }
    }
}
