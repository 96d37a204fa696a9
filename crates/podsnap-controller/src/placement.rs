//! Placement: restoring pods go only to nodes that can run their snapshot, preferably to
//! one whose page cache already holds it.
//!
//! 1. Published facts. The node reconciler ([`crate::node`]) asks each node's podsnapd
//!    (`GetNodeInfo`) and writes what it says on the Node ([`published`]): the label
//!    [`RUNSC_RELEASE_LABEL`] (for selectors and `kubectl get nodes -L`), and the annotations
//!    [`RUNSC_VERSION_ANNOTATION`] (runsc's exact version), [`CPU_FEATURES_ANNOTATION`]
//!    (gVisor's feature names, comma separated), [`CACHE_LINE_ANNOTATION`] and
//!    [`CACHED_SNAPSHOTS_ANNOTATION`] (the snapshot ids whose pages its cache holds).
//! 2. The rule ([`place`]), gVisor's and podsnapd's own: a node can run a snapshot iff it
//!    has every CPU feature the snapshot recorded, the same cache line size and the same runsc
//!    version (runsc restores only images of its own version). Nodes with no published facts
//!    are not podsnap nodes and are left out; when no node has any, placement is unknown and
//!    the pod is not constrained.
//! 3. The pod ([`affinity_ops`]): the webhook adds to the restoring pod a required node
//!    affinity on `metadata.name` for the nodes that can run it (ANDed with the pod's own
//!    terms) and a preferred term (weight 100) for each of those whose cache holds it. When
//!    none can, the required term matches no node ([`NO_NODE_LABEL`]): the pod is admitted
//!    and stays Pending, and [`NO_COMPATIBLE_NODE_ANNOTATION`] says per node why; the pod
//!    reconciler turns that into `PodRestored=False/NoCompatibleNode` and a Warning Event.
//!    The summary of every decision is the pod's [`PLACEMENT_ANNOTATION`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PreferredSchedulingTerm,
};
use podsnap_proto::v1 as pb;
use serde_json::{json, Value};

use crate::model::pointer_segment;
use crate::{Ctx, Error};

pub const RUNSC_RELEASE_LABEL: &str = "podsnap.dev/runsc-release";
pub const RUNSC_VERSION_ANNOTATION: &str = "podsnap.dev/runsc-version";
pub const CPU_FEATURES_ANNOTATION: &str = "podsnap.dev/cpu-features";
pub const CACHE_LINE_ANNOTATION: &str = "podsnap.dev/cpu-cache-line-size";
pub const CACHED_SNAPSHOTS_ANNOTATION: &str = "podsnap.dev/cached-snapshots";
/// Set by an operator on a Node: CPU features placement treats as absent there (comma
/// separated); they are left out of its published [`CPU_FEATURES_ANNOTATION`].
pub const CPU_FEATURES_HIDDEN_ANNOTATION: &str = "podsnap.dev/cpu-features-hidden";
/// On a restoring pod: where it may go and why (set by the webhook).
pub const PLACEMENT_ANNOTATION: &str = "podsnap.dev/placement";
/// On a restoring pod that no node can run: what each node lacks.
pub const NO_COMPATIBLE_NODE_ANNOTATION: &str = "podsnap.dev/no-compatible-node";
/// A node label nobody sets: the required term of a pod that no node can run.
pub const NO_NODE_LABEL: &str = "podsnap.dev/no-node-can-restore";
/// `PodRestored=False`'s reason, and the Warning Event's, when no node can run the snapshot.
pub const NO_COMPATIBLE_NODE: &str = "NoCompatibleNode";
/// Weight of the preferred term for nodes holding the snapshot's pages.
pub const CACHE_WEIGHT: i32 = 100;
/// How long the webhook waits for [`plan`] (the webhook's own deadline is 5 s).
pub const PLAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a node published (from its annotations and label).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub runsc_version: String,
    pub features: Vec<String>,
    pub cache_line: Option<u32>,
    pub cached: BTreeSet<String>,
}

/// What a snapshot needs of a node (from its stored record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub id: String,
    /// `None`: the snapshot recorded no CPU feature set (not checked).
    pub features: Option<Vec<String>>,
    pub cache_line: Option<u32>,
    pub runsc_version: Option<String>,
}

impl Needs {
    pub fn of(s: &pb::Snapshot) -> Needs {
        let src = s.source.as_ref();
        let cpu = src.and_then(|n| n.cpu.as_ref());
        Needs {
            id: s.id.clone(),
            features: cpu.map(|c| c.features.clone()),
            cache_line: cpu.map(|c| c.cache_line_size).filter(|n| *n > 0),
            runsc_version: src
                .map(|n| n.runsc_version.clone())
                .filter(|v| !v.is_empty()),
        }
    }
}

/// Where a snapshot may go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Nodes that can run it, by name.
    pub fit: Vec<String>,
    /// Of those, the ones whose page cache holds it.
    pub holders: Vec<String>,
    /// Every other podsnap node, with why not ("n2 lacks avx512f").
    pub refused: Vec<String>,
}

/// A label value for a runsc version: `[A-Za-z0-9._-]`, at most 63 characters, alphanumeric
/// at both ends (`0.0~20221219.0` -> `0.0_20221219.0`).
pub fn label_value(v: &str) -> String {
    let s: String = v
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '_',
        })
        .take(63)
        .collect();
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The features an operator hid on `node` ([`CPU_FEATURES_HIDDEN_ANNOTATION`]).
pub fn hidden_features(node: &Node) -> BTreeSet<String> {
    let a = node.metadata.annotations.as_ref();
    list(a.and_then(|a| a.get(CPU_FEATURES_HIDDEN_ANNOTATION)))
        .into_iter()
        .collect()
}

/// The labels and annotations that publish a node's facts (see the module docs), without
/// the features in `hidden`. A node whose podsnapd reports no runsc or CPU leaves those keys
/// out.
pub fn published(
    info: &pb::NodeInfo,
    hidden: &BTreeSet<String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    if let Some(r) = info.runsc.as_ref().filter(|r| !r.version.is_empty()) {
        labels.insert(RUNSC_RELEASE_LABEL.into(), label_value(&r.version));
        annotations.insert(RUNSC_VERSION_ANNOTATION.into(), r.version.clone());
    }
    if let Some(c) = info.cpu.as_ref() {
        let features: Vec<&str> = c
            .features
            .iter()
            .map(String::as_str)
            .filter(|f| !hidden.contains(*f))
            .collect();
        annotations.insert(CPU_FEATURES_ANNOTATION.into(), features.join(","));
        annotations.insert(CACHE_LINE_ANNOTATION.into(), c.cache_line_size.to_string());
    }
    annotations.insert(
        CACHED_SNAPSHOTS_ANNOTATION.into(),
        info.cached_snapshots.join(","),
    );
    (labels, annotations)
}

/// Whether `node` already carries every label and annotation of `published`.
pub fn is_published(
    node: &Node,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> bool {
    let has = |have: Option<&BTreeMap<String, String>>, want: &BTreeMap<String, String>| {
        want.iter()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    };
    has(node.metadata.labels.as_ref(), labels)
        && has(node.metadata.annotations.as_ref(), annotations)
}

fn list(s: Option<&String>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

impl NodeFacts {
    /// A node's published facts; `None` for a node with none (no podsnapd reached yet).
    pub fn of(node: &Node) -> Option<NodeFacts> {
        let a = node.metadata.annotations.as_ref()?;
        let runsc_version = a.get(RUNSC_VERSION_ANNOTATION)?.clone();
        Some(NodeFacts {
            name: node.metadata.name.clone()?,
            runsc_version,
            features: list(a.get(CPU_FEATURES_ANNOTATION)),
            cache_line: a.get(CACHE_LINE_ANNOTATION).and_then(|s| s.parse().ok()),
            cached: list(a.get(CACHED_SNAPSHOTS_ANNOTATION))
                .into_iter()
                .collect(),
        })
    }

    /// Why this node cannot run a snapshot with `needs`; `None` when it can.
    pub fn refusal(&self, needs: &Needs) -> Option<String> {
        let mut why = Vec::new();
        if let Some(features) = &needs.features {
            let cpu = |features: Vec<String>, cache_line: u32| podsnap_cpu::CpuInfo {
                vendor: String::new(),
                family: 0,
                model: 0,
                stepping: 0,
                cache_line_size: cache_line,
                features,
            };
            // A cache line size either side does not know is not compared.
            let (saved_line, host_line) = match (needs.cache_line, self.cache_line) {
                (Some(s), Some(h)) => (s, h),
                _ => (0, 0),
            };
            let saved = cpu(features.clone(), saved_line);
            let host = cpu(self.features.clone(), host_line);
            if let Err(inc) = podsnap_cpu::check(&saved, &host) {
                if !inc.missing.is_empty() {
                    why.push(format!("lacks {}", inc.missing.join(", ")));
                }
                if let Some(c) = inc.cache_line {
                    why.push(format!(
                        "has cache line size {} (the snapshot's is {})",
                        c.host, c.saved
                    ));
                }
            }
        }
        match &needs.runsc_version {
            Some(v) if *v != self.runsc_version => why.push(format!(
                "runs runsc {} (the snapshot was taken with runsc {v})",
                self.runsc_version
            )),
            _ => {}
        }
        (!why.is_empty()).then(|| format!("{} {}", self.name, why.join(" and ")))
    }
}

/// Which of `nodes` can run a snapshot with `needs`, and which of those hold it.
pub fn place(needs: &Needs, nodes: &[NodeFacts]) -> Placement {
    let mut p = Placement::default();
    for n in nodes {
        match n.refusal(needs) {
            Some(why) => p.refused.push(why),
            None => {
                p.fit.push(n.name.clone());
                if n.cached.contains(&needs.id) {
                    p.holders.push(n.name.clone());
                }
            }
        }
    }
    p
}

fn by_name(node: &str) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    }
}

/// `term` ANDed with `extra` (a term's requirements all hold).
fn and(term: &NodeSelectorTerm, extra: &NodeSelectorTerm) -> NodeSelectorTerm {
    let join = |a: &Option<Vec<NodeSelectorRequirement>>,
                b: &Option<Vec<NodeSelectorRequirement>>| {
        let v: Vec<_> = a.iter().chain(b.iter()).flatten().cloned().collect();
        (!v.is_empty()).then_some(v)
    };
    NodeSelectorTerm {
        match_expressions: join(&term.match_expressions, &extra.match_expressions),
        match_fields: join(&term.match_fields, &extra.match_fields),
    }
}

/// The pod's affinity constrained to `p` (see the module docs). `metadata.name` takes one
/// value per requirement, so each node is a term of its own (terms are ORed), each ANDed
/// with each of the pod's own required terms.
pub fn constrained_affinity(pod: &Pod, p: &Placement) -> Affinity {
    let mut affinity = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.clone())
        .unwrap_or_default();
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let ours: Vec<NodeSelectorTerm> = match p.fit.is_empty() {
        true => vec![NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: NO_NODE_LABEL.into(),
                operator: "Exists".into(),
                values: None,
            }]),
            match_fields: None,
        }],
        false => p.fit.iter().map(|n| by_name(n)).collect(),
    };
    let theirs = na
        .required_during_scheduling_ignored_during_execution
        .take()
        .map(|s| s.node_selector_terms)
        .unwrap_or_default();
    let terms = match theirs.is_empty() {
        true => ours,
        false => theirs
            .iter()
            .flat_map(|t| ours.iter().map(move |o| and(t, o)))
            .collect(),
    };
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: terms,
    });
    let preferred = na
        .preferred_during_scheduling_ignored_during_execution
        .get_or_insert_with(Vec::new);
    for h in &p.holders {
        preferred.push(PreferredSchedulingTerm {
            weight: CACHE_WEIGHT,
            preference: by_name(h),
        });
    }
    affinity
}

/// One line for the pod's [`PLACEMENT_ANNOTATION`].
pub fn summary(needs: &Needs, p: &Placement) -> String {
    if p.fit.is_empty() {
        return format!(
            "no node can restore snapshot {}: {}",
            needs.id,
            p.refused.join("; ")
        );
    }
    let mut s = format!(
        "nodes that can restore snapshot {}: {}",
        needs.id,
        p.fit.join(", ")
    );
    if !p.holders.is_empty() {
        s.push_str(&format!(
            "; preferred (its pages are cached there): {}",
            p.holders.join(", ")
        ));
    }
    if !p.refused.is_empty() {
        s.push_str(&format!("; not: {}", p.refused.join("; ")));
    }
    s
}

/// The JSON patch operations that place `pod` (applied after the restore patch, which made
/// sure the pod has annotations).
pub fn affinity_ops(pod: &Pod, needs: &Needs, p: &Placement) -> Vec<Value> {
    let ann = |k: &str, v: &str| json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_segment(k)), "value": v});
    let mut ops = vec![
        json!({"op": "add", "path": "/spec/affinity", "value": constrained_affinity(pod, p)}),
        ann(PLACEMENT_ANNOTATION, &summary(needs, p)),
    ];
    if p.fit.is_empty() {
        ops.push(ann(NO_COMPATIBLE_NODE_ANNOTATION, &p.refused.join("; ")));
    }
    ops
}

/// Where a restore of stored snapshot `id` may go, from the nodes' published facts and the
/// snapshot's record (read through a podsnapd: `hint` first, the node that took it). `None`
/// when no node has published facts (placement unknown: the pod is not constrained).
pub async fn plan(
    ctx: &Ctx,
    id: &str,
    hint: Option<&str>,
) -> Result<Option<(Needs, Placement)>, Error> {
    let facts: Vec<NodeFacts> = ctx
        .cluster
        .nodes()
        .await?
        .iter()
        .filter_map(NodeFacts::of)
        .collect();
    if facts.is_empty() {
        return Ok(None);
    }
    let tp = crate::new_traceparent();
    let mut askable: Vec<&str> = hint.into_iter().collect();
    askable.extend(
        facts
            .iter()
            .map(|f| f.name.as_str())
            .filter(|n| Some(*n) != hint),
    );
    let mut last = None;
    for node in askable.into_iter().take(3) {
        match ctx.nodes.snapshot(node, &tp, id).await {
            Ok(s) => {
                let needs = Needs::of(&s);
                let p = place(&needs, &facts);
                return Ok(Some((needs, p)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("no node to read snapshot {id} from"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNSC: &str = "release-20260905.0";

    fn facts(name: &str, features: &str, runsc: &str, cached: &[&str]) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            runsc_version: runsc.into(),
            features: features.split(',').map(String::from).collect(),
            cache_line: Some(64),
            cached: cached.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn needs(features: &str) -> Needs {
        Needs {
            id: "S1".into(),
            features: Some(features.split(',').map(String::from).collect()),
            cache_line: Some(64),
            runsc_version: Some(RUNSC.into()),
        }
    }

    #[test]
    fn only_nodes_with_every_feature_and_the_same_runsc_fit_and_cache_holders_are_preferred() {
        let nodes = [
            facts("n1", "fpu,sse2,avx512f", RUNSC, &["S1"]),
            facts("n2", "fpu,sse2,avx512f,avx512bw", RUNSC, &["S9"]),
            facts("n3", "fpu,sse2", RUNSC, &["S1"]),
            facts("n4", "fpu,sse2,avx512f", "0.0~20240729.0", &[]),
        ];
        let p = place(&needs("fpu,avx512f"), &nodes);
        assert_eq!(p.fit, ["n1", "n2"]);
        assert_eq!(p.holders, ["n1"], "n3 holds it but cannot run it");
        assert_eq!(p.refused.len(), 2);
        assert_eq!(p.refused[0], "n3 lacks avx512f");
        assert!(
            p.refused[1].starts_with("n4 runs runsc 0.0~20240729.0")
                && p.refused[1].contains(RUNSC),
            "{}",
            p.refused[1]
        );
    }

    #[test]
    fn a_node_is_refused_for_every_reason_at_once_and_unknowns_are_not_checked() {
        let mut n = facts("n2", "fpu", "old", &[]);
        n.cache_line = Some(128);
        let why = n.refusal(&needs("fpu,avx512f,sse4_1")).unwrap();
        assert!(why.starts_with("n2 lacks "), "{why}");
        assert!(why.contains("avx512f") && why.contains("sse4_1"), "{why}");
        assert!(
            why.contains("cache line size 128 (the snapshot's is 64)"),
            "{why}"
        );
        assert!(why.contains("runs runsc old"), "{why}");
        // A snapshot that recorded neither CPU nor runsc fits anywhere.
        let unknown = Needs {
            id: "S0".into(),
            ..Needs::default()
        };
        assert_eq!(n.refusal(&unknown), None);
    }

    #[test]
    fn facts_round_trip_through_the_nodes_labels_and_annotations() {
        let info = pb::NodeInfo {
            runsc: Some(pb::RunscInfo {
                version: "0.0~20221219.0".into(),
                ..Default::default()
            }),
            cpu: Some(pb::CpuInfo {
                cache_line_size: 64,
                features: vec!["fpu".into(), "avx512f".into()],
                ..Default::default()
            }),
            cached_snapshots: vec!["S1".into(), "S2".into()],
            ..Default::default()
        };
        let (labels, annotations) = published(&info, &BTreeSet::new());
        assert_eq!(labels[RUNSC_RELEASE_LABEL], "0.0_20221219.0");
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        assert!(!is_published(&node, &labels, &annotations));
        assert_eq!(NodeFacts::of(&node), None, "nothing published yet");
        node.metadata.labels = Some(labels.clone());
        node.metadata.annotations = Some(annotations.clone());
        assert!(is_published(&node, &labels, &annotations));
        let f = NodeFacts::of(&node).unwrap();
        assert_eq!(f.runsc_version, "0.0~20221219.0");
        assert_eq!(f.features, ["fpu", "avx512f"]);
        assert_eq!(f.cache_line, Some(64));
        assert!(f.cached.contains("S2"));
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(label_value("~v1~"), "v1");
    }

    fn pod_with(affinity: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {}},
            "spec": {"containers": [{"name": "app"}], "affinity": affinity}
        }))
        .unwrap()
    }

    fn applied(pod: &Pod, ops: Vec<Value>) -> Value {
        let mut doc = serde_json::to_value(pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn the_required_terms_name_one_node_each_and_keep_the_pods_own_terms() {
        let own = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]}
        ]}}});
        let pod = pod_with(own);
        let p = Placement {
            fit: vec!["n1".into(), "n2".into()],
            holders: vec!["n2".into()],
            refused: vec!["n3 lacks avx512f".into()],
        };
        let doc = applied(&pod, affinity_ops(&pod, &needs("fpu"), &p));
        let na = &doc["spec"]["affinity"]["nodeAffinity"];
        let terms = na["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            .as_array()
            .unwrap();
        // (pool a or pool b) and (n1 or n2): four terms.
        assert_eq!(terms.len(), 4);
        for t in terms {
            assert_eq!(t["matchExpressions"].as_array().unwrap().len(), 1);
            let f = &t["matchFields"][0];
            assert_eq!(f["key"], "metadata.name");
            assert_eq!(
                f["values"].as_array().unwrap().len(),
                1,
                "one value per name"
            );
        }
        let preferred = na["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .unwrap();
        assert_eq!(preferred.len(), 1);
        assert_eq!(preferred[0]["weight"], CACHE_WEIGHT);
        assert_eq!(
            preferred[0]["preference"]["matchFields"][0]["values"][0],
            "n2"
        );
        let summary = doc["metadata"]["annotations"][PLACEMENT_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(
            summary.contains("n1, n2") && summary.contains("n3 lacks avx512f"),
            "{summary}"
        );
        assert!(doc["metadata"]["annotations"][NO_COMPATIBLE_NODE_ANNOTATION].is_null());
    }

    #[test]
    fn with_no_fitting_node_the_pod_gets_a_term_no_node_matches_and_the_reasons() {
        let pod = pod_with(Value::Null);
        let p = Placement {
            refused: vec!["n2 lacks avx512f".into()],
            ..Default::default()
        };
        let doc = applied(&pod, affinity_ops(&pod, &needs("avx512f"), &p));
        let term = &doc["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], NO_NODE_LABEL);
        assert_eq!(term["matchExpressions"][0]["operator"], "Exists");
        assert_eq!(
            doc["metadata"]["annotations"][NO_COMPATIBLE_NODE_ANNOTATION],
            "n2 lacks avx512f"
        );
    }
}

#[cfg(test)]
mod admission_tests {
    use super::*;
    use crate::conditions;
    use crate::crd::{PodSnapshot, PodSnapshotSpec, PodSnapshotStatus};
    use crate::model::{POD_RESTORED, PS_NAME_ANNOTATION, READY};
    use crate::node::{reconcile_node, REFRESH, UNREACHABLE_RECHECK};
    use crate::restore::{decide, reconcile_pod, Decision};
    use crate::testing::*;
    use kube::runtime::controller::Action;
    use std::sync::Arc;

    const RUNSC: &str = "release-20260905.0";
    const ALL: &str = "fpu,sse2,avx2,avx512f";

    /// Nodes n1..n3 whose podsnapd answers with `features[i]`, runsc `runsc[i]` and the
    /// cached snapshots `cached[i]`; a Ready PodSnapshot `ps1` of stored snapshot S1 taken on
    /// n1 with `needs` features.
    fn cluster(nodes: &[(&str, &str, &str, &[&str])], needs: &str) -> Fake {
        let f = world();
        for (name, features, runsc, cached) in nodes {
            let mut n = Node::default();
            n.metadata.name = Some(name.to_string());
            f.state().nodes.insert(name.to_string(), n);
            f.state().node_store.insert(name.to_string(), STORE.into());
            f.state().node_info.insert(
                name.to_string(),
                pb::NodeInfo {
                    runsc: Some(pb::RunscInfo {
                        version: runsc.to_string(),
                        ..Default::default()
                    }),
                    cpu: Some(pb::CpuInfo {
                        cache_line_size: 64,
                        features: features.split(',').map(String::from).collect(),
                        ..Default::default()
                    }),
                    cached_snapshots: cached.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            );
        }
        f.state().stored.push(pb::Snapshot {
            id: "S1".into(),
            source: Some(pb::SourceNode {
                node_name: NODE.into(),
                cpu: Some(pb::CpuInfo {
                    cache_line_size: 64,
                    features: needs.split(',').map(String::from).collect(),
                    ..Default::default()
                }),
                runsc_version: RUNSC.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut s = PodSnapshot::new("ps1", PodSnapshotSpec::default());
        s.metadata.namespace = Some(NS.into());
        s.status = Some(PodSnapshotStatus {
            conditions: vec![conditions::new(READY, true, "Stored", "")],
            snapshot_id: Some("S1".into()),
            node_name: Some(NODE.into()),
            ..Default::default()
        });
        f.put_snapshot(s);
        f
    }

    /// Every node's facts published by the node reconciler.
    async fn publish_all(f: &Fake) {
        let nodes: Vec<Node> = f.state().nodes.values().cloned().collect();
        for n in nodes {
            reconcile_node(Arc::new(n), f.ctx()).await.unwrap();
        }
    }

    fn restoring_pod() -> Pod {
        let mut p = pod("new", &[]);
        p.spec.as_mut().unwrap().node_name = None;
        p.status = None;
        p.metadata.annotations = Some([(PS_NAME_ANNOTATION.to_string(), "ps1".to_string())].into());
        p
    }

    /// The webhook's decision for a new pod, applied to it.
    async fn admit(f: &Fake) -> Pod {
        let pod = restoring_pod();
        let Decision::Restore { patch, .. } = decide(&f.ctx(), &pod, NS).await.unwrap() else {
            panic!("not a restore");
        };
        let mut doc = serde_json::to_value(&pod).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(patch)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn required_names(p: &Pod) -> Vec<String> {
        let terms = p
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms
            .clone();
        terms
            .iter()
            .flat_map(|t| t.match_fields.clone().unwrap_or_default())
            .flat_map(|r| r.values.unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn the_node_reconciler_publishes_facts_once_and_skips_nodes_without_podsnapd() {
        let f = cluster(
            &[("n1", ALL, RUNSC, &["S1"]), ("n2", "fpu", RUNSC, &[])],
            ALL,
        );
        let n1 = Arc::new(f.state().nodes["n1"].clone());
        assert_eq!(
            reconcile_node(n1, f.ctx()).await.unwrap(),
            Action::requeue(REFRESH)
        );
        let n1 = f.state().nodes["n1"].clone();
        let a = n1.metadata.annotations.clone().unwrap();
        assert_eq!(a[CPU_FEATURES_ANNOTATION], ALL);
        assert_eq!(a[CACHED_SNAPSHOTS_ANNOTATION], "S1");
        assert_eq!(
            n1.metadata.labels.clone().unwrap()[RUNSC_RELEASE_LABEL],
            RUNSC
        );
        // Unchanged: not written again.
        let writes = f.state().writes.len();
        reconcile_node(Arc::new(n1), f.ctx()).await.unwrap();
        assert_eq!(f.state().writes.len(), writes);
        // A node whose podsnapd does not answer: nothing written, asked again later.
        take_down(&f, "n2");
        let n2 = Arc::new(f.state().nodes["n2"].clone());
        assert_eq!(
            reconcile_node(n2, f.ctx()).await.unwrap(),
            Action::requeue(UNREACHABLE_RECHECK)
        );
        assert!(f.state().nodes["n2"].metadata.annotations.is_none());
    }

    #[tokio::test]
    async fn a_restoring_pod_may_go_only_to_compatible_nodes_preferring_cache_holders() {
        let f = cluster(
            &[
                ("n1", ALL, RUNSC, &[]),
                ("n2", "fpu,sse2,avx2", RUNSC, &["S1"]),
                ("n3", ALL, RUNSC, &["S1"]),
            ],
            "fpu,avx512f",
        );
        publish_all(&f).await;
        let p = admit(&f).await;
        assert_eq!(required_names(&p), ["n1", "n3"]);
        let na = p
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap();
        let preferred = na
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(preferred.len(), 1);
        assert_eq!(
            preferred[0].preference.match_fields.clone().unwrap()[0].values,
            Some(vec!["n3".to_string()])
        );
        let a = p.metadata.annotations.clone().unwrap();
        assert!(
            a[PLACEMENT_ANNOTATION].contains("n2 lacks avx512f"),
            "{}",
            a[PLACEMENT_ANNOTATION]
        );
        assert!(!a.contains_key(NO_COMPATIBLE_NODE_ANNOTATION));
    }

    #[tokio::test]
    async fn features_an_operator_hides_on_a_node_keep_restores_needing_them_off_it() {
        let f = cluster(&[("n1", ALL, RUNSC, &[]), ("n2", ALL, RUNSC, &[])], ALL);
        f.state().nodes.get_mut("n2").unwrap().metadata.annotations = Some(
            [(
                CPU_FEATURES_HIDDEN_ANNOTATION.to_string(),
                "avx512f".to_string(),
            )]
            .into(),
        );
        publish_all(&f).await;
        let n2 = f.state().nodes["n2"].clone();
        assert_eq!(
            n2.metadata.annotations.unwrap()[CPU_FEATURES_ANNOTATION],
            "fpu,sse2,avx2"
        );
        let p = admit(&f).await;
        assert_eq!(required_names(&p), ["n1"]);
        let summary = &p.metadata.annotations.clone().unwrap()[PLACEMENT_ANNOTATION];
        assert!(summary.contains("n2 lacks avx512f"), "{summary}");
    }

    #[tokio::test]
    async fn a_node_on_another_runsc_release_is_not_a_place_to_restore() {
        let f = cluster(
            &[
                ("n1", ALL, RUNSC, &[]),
                ("n2", ALL, "release-20250820.0", &["S1"]),
            ],
            ALL,
        );
        publish_all(&f).await;
        let p = admit(&f).await;
        assert_eq!(required_names(&p), ["n1"]);
        let na = p
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap();
        assert!(na
            .preferred_during_scheduling_ignored_during_execution
            .unwrap()
            .is_empty());
        let summary = &p.metadata.annotations.clone().unwrap()[PLACEMENT_ANNOTATION];
        assert!(
            summary.contains("n2 runs runsc release-20250820.0"),
            "{summary}"
        );
    }

    #[tokio::test]
    async fn with_no_compatible_node_the_pod_is_admitted_unschedulable_and_told_why() {
        let f = cluster(
            &[
                ("n1", "fpu,sse2", RUNSC, &[]),
                ("n2", "fpu,avx2", RUNSC, &[]),
            ],
            "fpu,sse2,avx512f",
        );
        publish_all(&f).await;
        let p = admit(&f).await;
        assert!(required_names(&p).is_empty());
        let a = p.metadata.annotations.clone().unwrap();
        assert_eq!(
            a[NO_COMPATIBLE_NODE_ANNOTATION],
            "n1 lacks avx512f; n2 lacks sse2, avx512f"
        );
        // The pod reconciler turns it into PodRestored=False and one Warning Event.
        f.add_pod(p);
        let p = Arc::new(f.state().pods[&(NS.to_string(), "new".to_string())].clone());
        assert_eq!(
            reconcile_pod(p, f.ctx()).await.unwrap(),
            Action::await_change()
        );
        let p = f.state().pods[&(NS.to_string(), "new".to_string())].clone();
        let c = p.status.as_ref().unwrap().conditions.clone().unwrap();
        let c = c.iter().find(|c| c.type_ == POD_RESTORED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some(NO_COMPATIBLE_NODE))
        );
        let events: Vec<_> = f
            .state()
            .events
            .iter()
            .filter(|(_, n)| n.reason == NO_COMPATIBLE_NODE)
            .cloned()
            .collect();
        assert_eq!(events.len(), 1);
        assert!(events[0].1.warning);
        assert!(
            events[0].1.message.contains("n1 lacks avx512f"),
            "{}",
            events[0].1.message
        );
        // Said once.
        reconcile_pod(Arc::new(p), f.ctx()).await.unwrap();
        assert_eq!(
            f.state()
                .events
                .iter()
                .filter(|(_, n)| n.reason == NO_COMPATIBLE_NODE)
                .count(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_podsnapd_too_slow_for_the_webhooks_deadline_leaves_the_pod_unconstrained() {
        let f = cluster(&[("n1", "fpu", RUNSC, &[])], ALL);
        publish_all(&f).await;
        f.state().snapshot_delay = Some(std::time::Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let p = admit(&f).await;
        assert_eq!(started.elapsed(), PLAN_TIMEOUT);
        // n1 lacks features, but nobody could tell in time: restored, not constrained.
        assert!(p.spec.as_ref().unwrap().affinity.is_none());
        let a = p.metadata.annotations.clone().unwrap();
        assert!(a.contains_key(crate::model::RESTORE_FROM_ANNOTATION));
        assert!(!a.contains_key(NO_COMPATIBLE_NODE_ANNOTATION));
    }

    #[tokio::test]
    async fn without_published_facts_or_a_readable_record_the_pod_is_not_constrained() {
        let f = cluster(&[("n1", ALL, RUNSC, &[])], ALL);
        // Nothing published yet.
        let p = admit(&f).await;
        assert!(p.spec.as_ref().unwrap().affinity.is_none());
        // Published, but no podsnapd can read the snapshot's record.
        publish_all(&f).await;
        f.fail("node_snapshot", unavailable(NODE));
        let p = admit(&f).await;
        assert!(p.spec.as_ref().unwrap().affinity.is_none());
        assert!(p
            .metadata
            .annotations
            .clone()
            .unwrap()
            .contains_key(crate::model::RESTORE_FROM_ANNOTATION));
    }
}
