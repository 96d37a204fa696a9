//! The decisions of the controller as pure functions (no API calls): which policy selects a
//! pod, what a snapshot's group is, which snapshots retention removes, which snapshot a new
//! pod restores from, the pod-spec hash, store URLs and names. Unit-tested here; the
//! reconcilers only fetch, call these and write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{LabelSelector, PodSnapshot, PodSnapshotPolicy, SnapshotStorageConfig};
use crate::Error;

/// The label agent-sandbox puts on a Sandbox's pod; the SDK lists snapshots by it.
pub const SANDBOX_NAME_HASH_LABEL: &str = "agents.x-k8s.io/sandbox-name-hash";
/// On a PodSnapshot: the pod it was taken of (the SDK reads it).
pub const ORIGIN_POD_ANNOTATION: &str = "podsnapshot.gke.io/origin-pod";
/// On a pod: the PodSnapshot to restore from (set by a user, or by the webhook).
pub const PS_NAME_ANNOTATION: &str = "podsnapshot.gke.io/ps-name";
/// On a pod: podsnap's restore contract (the node's podsnap-runsc reads it).
pub const RESTORE_FROM_ANNOTATION: &str = "podsnap.dev/restore-from";
/// On a PodSnapshot: the hash of its group's label values, for one-selector listing.
pub const GROUP_LABEL: &str = "podsnap.dev/group";
/// On a PodSnapshot: the trigger that made it (its uid).
pub const TRIGGER_LABEL: &str = "podsnap.dev/trigger-uid";
/// The pod condition a restored pod gets (the SDK checks it), also its readiness gate.
pub const POD_RESTORED: &str = "PodRestored";
/// The PodSnapshot condition that says it is stored and restorable.
pub const READY: &str = "Ready";
/// Finalizer on PodSnapshots: the stored image is deleted before the object goes.
pub const STORE_FINALIZER: &str = "podsnap.dev/delete-stored-snapshot";

/// Whether `sel` selects an object with `labels` (an empty selector selects everything).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().all(|e| {
            let have = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| e.values.contains(v)),
                "NotIn" => have.is_none_or(|v| !e.values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// The one policy of `policies` that selects a pod with `labels`: the oldest by creation
/// (then by name) when several do, so the choice is stable.
pub fn policy_for<'a>(
    policies: &'a [PodSnapshotPolicy],
    labels: &BTreeMap<String, String>,
) -> Option<&'a PodSnapshotPolicy> {
    policies
        .iter()
        .filter(|p| selector_matches(&p.spec.selector, labels))
        .min_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        })
}

/// The labels of a snapshot's group: the policy's `groupByLabelValue` keys the pod has, and
/// the sandbox-name-hash label always (the SDK lists by it).
pub fn group_labels(
    policy: &PodSnapshotPolicy,
    pod_labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut keys: Vec<&str> = policy
        .spec
        .snapshot_grouping_rules
        .as_ref()
        .and_then(|r| r.group_by_label_value.as_ref())
        .map(|g| g.labels.iter().map(String::as_str).collect())
        .unwrap_or_default();
    keys.push(SANDBOX_NAME_HASH_LABEL);
    keys.into_iter()
        .filter_map(|k| pod_labels.get(k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

/// A short stable name of a group (label values are not length-safe as one label value).
pub fn group_hash(policy_name: &str, group: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(policy_name.as_bytes());
    for (k, v) in group {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// `maxSnapshotCountPerGroup` (0: keep all).
pub fn max_per_group(policy: &PodSnapshotPolicy) -> u32 {
    policy
        .spec
        .snapshot_grouping_rules
        .as_ref()
        .and_then(|r| r.group_retention_policy.as_ref())
        .map(|r| r.max_snapshot_count_per_group.max(0) as u32)
        .unwrap_or(0)
}

/// The store URL of a storage config (exactly one store kind must be set).
pub fn store_url(cfg: &SnapshotStorageConfig) -> Result<String, Error> {
    let join = |scheme: &str, bucket: &str, path: &Option<String>| {
        let path = path.as_deref().unwrap_or("").trim_matches('/');
        if path.is_empty() {
            format!("{scheme}://{bucket}")
        } else {
            format!("{scheme}://{bucket}/{path}")
        }
    };
    let mut urls = Vec::new();
    if let Some(g) = &cfg.gcs {
        urls.push(join("gs", &g.bucket, &g.path));
    }
    if let Some(s) = &cfg.s3 {
        urls.push(join("s3", &s.bucket, &s.path));
    }
    if let Some(a) = &cfg.azure {
        urls.push(join("az", &a.container, &a.path));
    }
    if let Some(l) = &cfg.local {
        if !l.path.starts_with('/') {
            return Err(Error::Invalid(format!(
                "local.path {:?} is not an absolute path",
                l.path
            )));
        }
        urls.push(format!("file://{}", l.path.trim_end_matches('/')));
    }
    match urls.len() {
        1 => Ok(urls.remove(0)),
        0 => Err(Error::Invalid(
            "snapshotStorageConfig sets no store (gcs, s3, azure or local)".into(),
        )),
        _ => Err(Error::Invalid(format!(
            "snapshotStorageConfig sets {} stores ({}); set exactly one",
            urls.len(),
            urls.join(", ")
        ))),
    }
}

/// Whether a node's podsnapd store URL is the storage config's (trailing slashes aside).
pub fn same_store(node_store: &str, wanted: &str) -> bool {
    node_store.trim_end_matches('/') == wanted.trim_end_matches('/')
}

/// Hash of a pod's spec without what differs between two pods of the same template: the node,
/// the generated service-account token volume, host names and scheduling results. Two pods
/// made from one template (a Sandbox's pod before and after replicas 0 -> 1) hash alike.
pub fn pod_spec_hash(pod: &Pod) -> String {
    let spec = serde_json::to_value(pod.spec.clone().unwrap_or_default()).unwrap_or(Value::Null);
    let generated_volume = |name: &str| name.starts_with("kube-api-access-");
    let container = |c: &Value| {
        let mounts: Vec<Value> = c["volumeMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| !generated_volume(m["name"].as_str().unwrap_or("")))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "name": c["name"], "image": c["image"], "command": c["command"], "args": c["args"],
            "workingDir": c["workingDir"], "env": c["env"], "ports": c["ports"],
            "resources": c["resources"], "volumeMounts": mounts,
        })
    };
    let list = |key: &str| -> Vec<Value> {
        let mut v: Vec<Value> = spec[key]
            .as_array()
            .map(|a| a.iter().map(container).collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c["name"].as_str().unwrap_or("").to_string());
        v
    };
    let volumes: Vec<Value> = spec["volumes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|v| !generated_volume(v["name"].as_str().unwrap_or("")))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let projection = json!({
        "containers": list("containers"),
        "initContainers": list("initContainers"),
        "runtimeClassName": spec["runtimeClassName"],
        "hostNetwork": spec["hostNetwork"],
        "shareProcessNamespace": spec["shareProcessNamespace"],
        "volumes": volumes,
    });
    let mut h = Sha256::new();
    h.update(projection.to_string().as_bytes());
    hex::encode(&h.finalize()[..12])
}

/// A PodSnapshot's name: the pod's name and the store's id, lowercased (Kubernetes names
/// are lowercase; ids are `20260101T120000Z-1a2b3c4d`).
pub fn snapshot_name(pod: &str, snapshot_id: &str) -> String {
    let id = snapshot_id.to_ascii_lowercase().replace('_', "-");
    let name = format!("{pod}-{id}");
    if name.len() <= 253 {
        name
    } else {
        id
    }
}

/// Whether a PodSnapshot is Ready (durable in the store).
pub fn is_ready(s: &PodSnapshot) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == READY && c.status == "True")
    })
}

/// Newest first: by creation time, then by name (ids sort by time).
fn newest_first(snaps: &mut [&PodSnapshot]) {
    snaps.sort_by(|a, b| {
        let key = |s: &PodSnapshot| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.metadata.name.clone(),
            )
        };
        key(b).cmp(&key(a))
    });
}

/// The Ready snapshots of a group that retention removes: all but the newest `max` (none
/// when `max` is 0). Snapshots being deleted are not counted.
pub fn retention_victims(group: &[PodSnapshot], max: u32) -> Vec<String> {
    if max == 0 {
        return vec![];
    }
    let mut ready: Vec<&PodSnapshot> = group
        .iter()
        .filter(|s| is_ready(s) && s.metadata.deletion_timestamp.is_none())
        .collect();
    newest_first(&mut ready);
    ready
        .into_iter()
        .skip(max as usize)
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}

/// The snapshot a new pod of the group restores from: the newest Ready one whose pod-spec
/// hash is the pod's. `None`: the pod starts fresh.
pub fn restore_candidate<'a>(group: &'a [PodSnapshot], spec_hash: &str) -> Option<&'a PodSnapshot> {
    let mut ok: Vec<&PodSnapshot> = group
        .iter()
        .filter(|s| {
            is_ready(s)
                && s.metadata.deletion_timestamp.is_none()
                && s.status.as_ref().and_then(|st| st.pod_spec_hash.as_deref()) == Some(spec_hash)
                && s.status
                    .as_ref()
                    .and_then(|st| st.snapshot_id.as_ref())
                    .is_some()
        })
        .collect();
    newest_first(&mut ok);
    ok.into_iter().next()
}

/// Now, RFC 3339 in UTC, seconds precision (what Kubernetes writes).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An RFC 6901 path segment (`/` and `~` escaped).
pub fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(name: &str, sel: &[(&str, &str)], group: &[&str], keep: u32) -> PodSnapshotPolicy {
        let mut p = PodSnapshotPolicy::new(
            name,
            PodSnapshotPolicySpec {
                storage_config_name: "local".into(),
                selector: LabelSelector {
                    match_labels: labels(sel),
                    match_expressions: vec![],
                },
                trigger_config: TriggerConfig {
                    type_: "manual".into(),
                    post_checkpoint: "resume".into(),
                },
                snapshot_grouping_rules: Some(SnapshotGroupingRules {
                    group_by_label_value: Some(GroupByLabelValue {
                        labels: group.iter().map(|s| s.to_string()).collect(),
                    }),
                    group_retention_policy: Some(GroupRetentionPolicy {
                        max_snapshot_count_per_group: keep as i32,
                    }),
                }),
            },
        );
        p.metadata.namespace = Some("default".into());
        p
    }

    fn snap(name: &str, secs: i64, ready: bool, hash: &str) -> PodSnapshot {
        let mut s = PodSnapshot::new(name, PodSnapshotSpec::default());
        s.metadata = ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap(),
            )),
            ..Default::default()
        };
        s.status = Some(PodSnapshotStatus {
            conditions: vec![crate::conditions::new(READY, ready, "Stored", "")],
            snapshot_id: Some(format!("id-{name}")),
            pod_spec_hash: Some(hash.into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let l = labels(&[("app", "agent-sandbox-workload"), ("tier", "a")]);
        let mut sel = LabelSelector {
            match_labels: labels(&[("app", "agent-sandbox-workload")]),
            match_expressions: vec![],
        };
        assert!(selector_matches(&sel, &l));
        sel.match_expressions.push(LabelSelectorRequirement {
            key: "tier".into(),
            operator: "In".into(),
            values: vec!["b".into()],
        });
        assert!(!selector_matches(&sel, &l));
        sel.match_expressions[0].operator = "NotIn".into();
        assert!(selector_matches(&sel, &l));
        sel.match_expressions[0].operator = "Bogus".into();
        assert!(
            !selector_matches(&sel, &l),
            "an unknown operator selects nothing"
        );
        assert!(!selector_matches(
            &LabelSelector {
                match_labels: labels(&[("app", "other")]),
                match_expressions: vec![]
            },
            &l
        ));
    }

    #[test]
    fn group_has_the_policy_keys_the_pod_has_and_the_sandbox_hash() {
        let p = policy(
            "p",
            &[("app", "x")],
            &[SANDBOX_NAME_HASH_LABEL, "tenant-id", "user-id"],
            2,
        );
        let pod = labels(&[
            ("app", "x"),
            (SANDBOX_NAME_HASH_LABEL, "abc"),
            ("tenant-id", "t1"),
        ]);
        let g = group_labels(&p, &pod);
        assert_eq!(
            g,
            labels(&[(SANDBOX_NAME_HASH_LABEL, "abc"), ("tenant-id", "t1")])
        );
        let other = labels(&[(SANDBOX_NAME_HASH_LABEL, "abd"), ("tenant-id", "t1")]);
        assert_ne!(group_hash("p", &g), group_hash("p", &other));
        assert_eq!(group_hash("p", &g).len(), 16);
        // Without grouping rules the sandbox hash still groups.
        let mut bare = p.clone();
        bare.spec.snapshot_grouping_rules = None;
        assert_eq!(
            group_labels(&bare, &pod),
            labels(&[(SANDBOX_NAME_HASH_LABEL, "abc")])
        );
        assert_eq!(max_per_group(&bare), 0);
    }

    #[test]
    fn store_urls_need_exactly_one_store() {
        let mut c = SnapshotStorageConfig {
            local: Some(LocalStore {
                path: "/var/lib/snaps/".into(),
            }),
            ..Default::default()
        };
        assert_eq!(store_url(&c).unwrap(), "file:///var/lib/snaps");
        c.gcs = Some(BucketStore {
            bucket: "b".into(),
            path: Some("/x/y/".into()),
        });
        let e = store_url(&c).unwrap_err().to_string();
        assert!(e.contains("2 stores"), "{e}");
        c.local = None;
        assert_eq!(store_url(&c).unwrap(), "gs://b/x/y");
        assert!(store_url(&SnapshotStorageConfig::default()).is_err());
        let rel = SnapshotStorageConfig {
            local: Some(LocalStore { path: "rel".into() }),
            ..Default::default()
        };
        assert!(store_url(&rel)
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        assert!(same_store("file:///a/", "file:///a"));
        assert!(!same_store("file:///a", "file:///b"));
    }

    #[test]
    fn retention_keeps_the_newest_ready_ones() {
        let g = vec![
            snap("a", 1, true, "h"),
            snap("b", 2, true, "h"),
            snap("c", 3, false, "h"),
            snap("d", 4, true, "h"),
        ];
        assert_eq!(retention_victims(&g, 2), vec!["a".to_string()]);
        assert_eq!(
            retention_victims(&g, 1),
            vec!["b".to_string(), "a".to_string()]
        );
        assert!(retention_victims(&g, 0).is_empty());
        assert!(retention_victims(&g, 5).is_empty());
    }

    #[test]
    fn restore_picks_the_newest_ready_snapshot_of_the_same_spec() {
        let g = vec![
            snap("a", 1, true, "h"),
            snap("b", 2, true, "other"),
            snap("c", 3, false, "h"),
            snap("d", 0, true, "h"),
        ];
        assert_eq!(
            restore_candidate(&g, "h").unwrap().metadata.name.as_deref(),
            Some("a")
        );
        assert!(restore_candidate(&g, "nope").is_none());
        assert!(restore_candidate(&[], "h").is_none());
    }

    #[test]
    fn pod_spec_hash_ignores_node_and_token_but_not_the_workload() {
        let pod = |node: &str, token: &str, image: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {
                    "nodeName": node,
                    "runtimeClassName": "gvisor",
                    "containers": [{"name": "c", "image": image, "command": ["sh"],
                        "volumeMounts": [{"name": token, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                    "volumes": [{"name": token, "projected": {"sources": []}}]
                }
            }))
            .unwrap()
        };
        let a = pod_spec_hash(&pod("n1", "kube-api-access-abcde", "busybox"));
        assert_eq!(
            a,
            pod_spec_hash(&pod("n2", "kube-api-access-zzzzz", "busybox"))
        );
        assert_ne!(
            a,
            pod_spec_hash(&pod("n1", "kube-api-access-abcde", "python"))
        );
    }

    #[test]
    fn names_times_and_pointers() {
        assert_eq!(
            snapshot_name("sb-1", "20261203T120000Z-1a2b3c4d"),
            "sb-1-20261203t120000z-1a2b3c4d"
        );
        assert_eq!(snapshot_name(&"x".repeat(260), "ID"), "id");
        assert!(now_rfc3339().ends_with('Z'));
        assert_eq!(
            pointer_segment("podsnap.dev/restore-from"),
            "podsnap.dev~1restore-from"
        );
    }
}
