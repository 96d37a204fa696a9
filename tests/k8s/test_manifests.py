"""Validation of podsnap's Kubernetes deployment files (daemonset/, systemd/ examples).

Every YAML document under daemonset/ is checked: built-in kinds against the Kubernetes JSON
schema bundled with kubernetes-validate (offline, strict: unknown fields fail), the
Kustomization and the PrometheusRule by the rules below. The containerd snippet and the
config files are parsed with tomllib, and the pieces that must agree across files (probe
port and health_listen, hostPath mounts and configured paths, the wrapper's install path and
containerd's BinaryName, metric names and tests/k8s/metric_names.txt) are cross-checked.

Run: python3 -m pytest tests/k8s -q   (needs: pip install kubernetes-validate pytest)
"""

import json
import posixpath
import re
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "daemonset"
MONITORING = DAEMONSET / "monitoring"
# The schema version the manifests are validated against (one that kubernetes-validate ships
# and that has grpc probes GA and RuntimeClass scheduling: 1.27+).
K8S_VERSION = "1.30.0"

# Kinds that are not in the Kubernetes schema and are checked by this file instead.
KUSTOMIZATION = ("kustomize.config.k8s.io/v1beta1", "Kustomization")
PROMETHEUS_RULE = ("monitoring.coreos.com/v1", "PrometheusRule")

PODSNAPD_KEYS = {
    "listen", "store", "runsc_root", "state_dir", "runsc", "runsc_flags",
    "containerd_socket", "work_dir", "metrics_listen", "health_listen", "key_dir",
    "listen_tls", "tls_cert", "tls_key", "tls_client_ca",
}
WRAPPER_KEYS = {"runsc", "socket", "prepare_timeout", "runsc_flags", "marker_dir", "restore_mode"}
RESTORE_ANNOTATION_GLOB = "podsnap.dev/*"


def yaml_files():
    return sorted(p for p in DAEMONSET.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents():
    docs = []
    for path in yaml_files():
        with path.open() as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    docs.append(pytest.param(path, doc, id=f"{path.relative_to(ROOT)}#{i}"))
    return docs


def all_docs():
    return [p.values[1] for p in documents()]


def one(kind, name=None):
    found = [d for d in all_docs()
             if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap():
    return one("ConfigMap", "podsnapd-config")


def podsnapd_config():
    return tomllib.loads(configmap()["data"]["podsnapd.toml"])


def wrapper_config():
    return tomllib.loads(configmap()["data"]["podsnap.toml"])


def daemonset():
    return one("DaemonSet", "podsnapd")


def podsnapd_container():
    cs = [c for c in daemonset()["spec"]["template"]["spec"]["containers"] if c["name"] == "podsnapd"]
    assert len(cs) == 1
    return cs[0]


def containerd_runtime():
    cfg = tomllib.loads((DAEMONSET / "containerd-config.toml").read_text())
    runtimes = cfg["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert len(runtimes) == 1, f"one runtime handler expected, got {list(runtimes)}"
    (name, rt), = runtimes.items()
    return cfg, name, rt


def host_mounts(container):
    """(container mount path, host path, readOnly) for each hostPath volume mount."""
    vols = {v["name"]: v for v in daemonset()["spec"]["template"]["spec"]["volumes"]}
    out = []
    for m in container.get("volumeMounts", []):
        v = vols[m["name"]]
        if "hostPath" in v:
            out.append((m["mountPath"], v["hostPath"]["path"], m.get("readOnly", False)))
    return out


def covered(path, mounts, writable=False):
    """True when `path` (a host path) is inside a hostPath mounted at the same path."""
    for mount_path, host_path, ro in mounts:
        if mount_path != host_path or (writable and ro):
            continue
        if path == host_path or path.startswith(host_path.rstrip("/") + "/"):
            return True
    return False


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def parse_quantity(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(q))
    assert m, f"bad quantity {q}"
    return float(m.group(1)) * units.get(m.group(2), 1)


# --- schema validation -----------------------------------------------------------------------

def test_schema_version_is_bundled():
    assert K8S_VERSION.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}


def test_daemonset_dir_has_the_expected_files():
    names = {str(p.relative_to(DAEMONSET)) for p in yaml_files()}
    for required in ["namespace.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml",
                     "kustomization.yaml", "runtimeclass.yaml", "monitoring/alerts.yaml"]:
        assert required in names


@pytest.mark.parametrize("path,doc", documents())
def test_every_document_is_valid(path, doc):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key == KUSTOMIZATION:
        for res in doc["resources"]:
            target = (path.parent / res).resolve()
            assert target.is_file(), f"{path.name}: resource {res} does not exist"
            assert target.is_relative_to(DAEMONSET)
        assert set(doc) <= {"apiVersion", "kind", "namespace", "resources", "images", "labels",
                            "commonLabels", "configMapGenerator", "patches"}
    elif key == PROMETHEUS_RULE:
        jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA)
    else:
        # Raises ValidationError (or SchemaNotFoundError for a kind the schema lacks).
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace" and doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "RuntimeClass",
                                                                     "CustomResourceDefinition"):
            assert doc["metadata"].get("namespace") == "podsnap-system", doc["metadata"]["name"]


def test_an_invalid_manifest_is_rejected():
    # The validator is live: a misspelled field fails in strict mode.
    bad = json.loads(json.dumps(daemonset()))
    bad["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_core_manifest():
    k = one("Kustomization")
    listed = set(k["resources"])
    for p in DAEMONSET.glob("*.yaml"):
        if p.name == "kustomization.yaml" or p.name.endswith(".example.yaml"):
            continue
        assert p.name in listed, f"{p.name} is not in kustomization.yaml"
    assert k["namespace"] == "podsnap-system"


PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"}, "interval": {"type": "string"},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "record": {"type": "string"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": {"type": "string", "pattern": "^[0-9]+[smhd]$"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}},
                }}}},
        },
    },
}


# --- cross-file consistency ------------------------------------------------------------------

def test_podsnapd_config_uses_only_daemon_flags():
    cfg = podsnapd_config()
    assert set(cfg) <= PODSNAPD_KEYS, set(cfg) - PODSNAPD_KEYS
    assert {"listen", "store", "runsc_root", "state_dir", "health_listen", "metrics_listen"} <= set(cfg)
    assert cfg["listen"].startswith("unix:///")
    assert isinstance(cfg["runsc_flags"], list)


def test_probes_use_the_health_listen_port():
    c = podsnapd_container()
    health = port_of(podsnapd_config()["health_listen"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == health, probe
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == health


def test_metrics_port_matches_config_and_scrape_annotation():
    metrics = port_of(podsnapd_config()["metrics_listen"])
    ann = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == metrics
    assert {p["name"]: p["containerPort"] for p in podsnapd_container()["ports"]}["metrics"] == metrics


def test_host_paths_cover_containerd_socket_state_and_runsc_root():
    cfg = podsnapd_config()
    mounts = host_mounts(podsnapd_container())
    assert covered(posixpath.dirname(cfg["containerd_socket"]), mounts), "containerd socket dir"
    assert covered(cfg["containerd_socket"], mounts)
    assert covered(cfg["state_dir"], mounts, writable=True), "state dir"
    assert covered(cfg["work_dir"], mounts, writable=True), "work dir"
    assert covered(cfg["runsc_root"], mounts, writable=True), "runsc root"
    assert covered(cfg["listen"].removeprefix("unix://"), mounts, writable=True), "socket dir"
    assert covered("/etc/podsnap/podsnap.toml", mounts), "/etc/podsnap"
    assert covered(cfg["runsc"], mounts), "the node's runsc"


def test_runsc_root_is_the_shims_root_for_k8s_namespace():
    _, _, rt = containerd_runtime()
    assert podsnapd_config()["runsc_root"] == posixpath.join(rt["options"]["Root"], "k8s.io")


def test_daemonset_runs_privileged_on_gvisor_nodes_with_host_namespaces():
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert spec["nodeSelector"]["sandbox.gke.io/runtime"] == "gvisor"
    assert any(t["key"] == "sandbox.gke.io/runtime" and t["effect"] == "NoSchedule"
               for t in spec["tolerations"])
    c = podsnapd_container()
    assert c["securityContext"]["privileged"] is True
    assert parse_quantity(c["resources"]["limits"]["memory"]) >= 256 * 2**20
    assert "cpu" in c["resources"]["requests"] and "memory" in c["resources"]["requests"]
    assert spec["serviceAccountName"] == one("ServiceAccount", "podsnapd")["metadata"]["name"]


def test_store_credentials_come_from_an_optional_secret():
    c = podsnapd_container()
    refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    names = {e["name"] for e in c["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS"} <= names
    assert refs and all(r["optional"] and r["name"] == "podsnap-store-credentials" for r in refs)
    secret = [d for d in all_docs() if d["kind"] == "Secret"]
    assert sorted(s["metadata"]["name"] for s in secret) == ["podsnap-keys", "podsnap-store-credentials"]


def test_group_keys_come_from_an_optional_secret_mounted_at_key_dir():
    cfg = podsnapd_config()
    c = podsnapd_container()
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert mounts["group-keys"]["mountPath"] == cfg["key_dir"]
    assert mounts["group-keys"]["readOnly"] is True
    secret = vols["group-keys"]["secret"]
    assert secret["secretName"] == "podsnap-keys" and secret["optional"] is True
    assert secret["defaultMode"] == 0o400
    example = [d for d in all_docs() if d["kind"] == "Secret" and d["metadata"]["name"] == "podsnap-keys"][0]
    # The example's key names are what podsnapd reads: `default` or `group.<encoded group>`.
    assert all(k == "default" or k.startswith("group.") for k in example["stringData"])


def test_rbac_is_minimal():
    role = one("ClusterRole", "podsnapd")
    for rule in role["rules"]:
        assert rule["resources"] == ["events"], rule
        assert set(rule["verbs"]) <= {"create", "patch"}
    binding = one("ClusterRoleBinding", "podsnapd")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one("ServiceAccount", "podsnapd")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]


def test_controller_rbac_covers_what_it_calls_and_no_more():
    role = one("ClusterRole", "podsnap-controller")
    allowed = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    for need in [("podsnapshot.gke.io", "podsnapshotmanualtriggers/status", "patch"),
                 ("podsnapshot.gke.io", "podsnapshots", "create"),
                 ("podsnapshot.gke.io", "podsnapshots", "delete"),
                 ("", "pods/status", "patch"), ("", "nodes", "get"), ("", "events", "list"),
                 # Placement: the node controller watches Nodes and publishes their facts.
                 ("", "nodes", "watch"), ("", "nodes", "patch"),
                 # Its Events go through kube's Recorder, which writes events.k8s.io/v1.
                 ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
                 ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
                 # postCheckpoint: stop deletes the checkpointed pod (the kubelet would restart
                 # it fresh otherwise).
                 ("", "pods", "delete")]:
        assert need in allowed, need
    # Beyond that delete it never writes pods, nor secrets or policies.
    assert not any(r == "pods" and v in ("create", "update", "patch") for _, r, v in allowed)
    assert not any(r == "secrets" and v in ("create", "update", "patch", "delete")
                   for _, r, v in allowed)
    assert ("podsnapshot.gke.io", "podsnapshotpolicies", "patch") not in allowed
    binding = one("ClusterRoleBinding", "podsnap-controller")
    deploy = one("Deployment", "podsnap-controller")
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert {"kind": "ServiceAccount", "name": sa, "namespace": "podsnap-system"} in binding["subjects"]


def test_controller_crds_are_the_gke_group():
    crds = [d for d in all_docs() if d.get("kind") == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} == {
        "podsnapshotstorageconfigs.podsnapshot.gke.io", "podsnapshotpolicies.podsnapshot.gke.io",
        "podsnapshotmanualtriggers.podsnapshot.gke.io", "podsnapshots.podsnapshot.gke.io"}


def test_containerd_snippet_runs_the_wrapper_and_passes_the_annotation():
    cfg, name, rt = containerd_runtime()
    assert cfg["version"] == 2
    assert rt["runtime_type"] == "io.containerd.runc.v2"
    assert rt["options"]["BinaryName"] == "/usr/local/bin/podsnap-runsc"
    assert RESTORE_ANNOTATION_GLOB in rt["pod_annotations"]
    assert one("RuntimeClass")["handler"] == name


def test_init_container_installs_wrapper_where_containerd_looks():
    _, _, rt = containerd_runtime()
    spec = daemonset()["spec"]["template"]["spec"]
    (init,) = [c for c in spec["initContainers"] if c["name"] == "install-host"]
    script = "\n".join(init["command"])
    vols = {v["name"]: v for v in spec["volumes"]}
    host_of = {m["mountPath"]: vols[m["name"]].get("hostPath", {}).get("path") for m in init["volumeMounts"]}
    binary = rt["options"]["BinaryName"]
    # The script writes /host<dir>/podsnap-runsc; that container dir is the host's dir.
    target = re.search(r"mv -f \S+ (/host\S*/podsnap-runsc)\b", script).group(1)
    assert host_of[posixpath.dirname(target)] + "/podsnap-runsc" == binary
    conf = re.search(r"mv -f \S+ (/host\S*/podsnap\.toml)\b", script).group(1)
    assert host_of[posixpath.dirname(conf)] + "/podsnap.toml" == "/etc/podsnap/podsnap.toml"


def test_wrapper_config_points_at_the_daemon_socket():
    w = wrapper_config()
    assert set(w) <= WRAPPER_KEYS, set(w) - WRAPPER_KEYS
    assert w["socket"] == podsnapd_config()["listen"].removeprefix("unix://")
    assert w["runsc"] == podsnapd_config()["runsc"]
    assert w["runsc_flags"] == podsnapd_config()["runsc_flags"]


# --- monitoring ------------------------------------------------------------------------------

def metric_list():
    names, histograms = set(), set()
    for line in (ROOT / "tests/k8s/metric_names.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        names.add(parts[0])
        if parts[-1] == "histogram":
            histograms.add(parts[0])
    return names, histograms


def referenced_metrics(text):
    return set(re.findall(r"\bpodsnap_[a-z0-9_]+\b", text))


def check_metric_refs(text, where):
    names, histograms = metric_list()
    refs = referenced_metrics(text)
    assert refs, f"{where} references no podsnap metric"
    for ref in refs:
        base = re.sub(r"_(bucket|sum|count)$", "", ref)
        ok = ref in names or (base in histograms and base != ref)
        assert ok, f"{where} references {ref}, which podsnapd does not export"
    return refs


def test_metric_list_is_the_agreed_one():
    names, histograms = metric_list()
    assert names == {
        "podsnap_operations_total", "podsnap_operation_duration_seconds",
        "podsnap_phase_duration_seconds", "podsnap_bytes_total", "podsnap_objects_written_total",
        "podsnap_compatibility_refusals_total", "podsnap_jobs_in_flight",
        "podsnap_store_request_duration_seconds", "podsnap_store_errors_total",
        "podsnap_build_info",
        "podsnap_cache_hits_total", "podsnap_cache_misses_total", "podsnap_cache_corrupt_pages_total",
        "podsnap_cache_evictions_total", "podsnap_cache_write_failures_total", "podsnap_cache_bytes",
    }
    assert histograms == {"podsnap_operation_duration_seconds", "podsnap_phase_duration_seconds",
                          "podsnap_store_request_duration_seconds"}


def test_dashboard_is_valid_json_referencing_only_exported_metrics():
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    assert dash["panels"] and dash["title"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    refs = check_metric_refs("\n".join(exprs) + "\n" + json.dumps(dash["templating"]), "dashboard.json")
    # The dashboard shows every metric.
    assert {re.sub(r"_(bucket|sum|count)$", "", r) for r in refs} == metric_list()[0]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_reference_only_exported_metrics():
    rule = one("PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for r in rules:
        check_metric_refs(r["expr"], f"alert {r.get('alert')}")
    check_metric_refs((MONITORING / "alerts.yaml").read_text(), "alerts.yaml")
    alerts = {r["alert"]: r["expr"] for r in rules}
    assert "podsnap_operations_total" in alerts["PodsnapOperationFailureRatioHigh"]
    assert "histogram_quantile(0.95" in alerts["PodsnapRestoreLatencyP95High"]
    assert "podsnap_store_errors_total" in alerts["PodsnapStoreErrors"]


def workspace_version():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    return cargo["workspace"]["package"]["version"]


def test_daemonset_runs_the_image_that_make_image_builds():
    # `make image` names its archive podsnap:<workspace version>; every container of the
    # DaemonSet and the kustomization's image entry must name that same image.
    version = workspace_version()
    spec = daemonset()["spec"]["template"]["spec"]
    images = {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    assert images == {f"podsnap:{version}"}
    entries = {e["name"]: e for e in one("Kustomization").get("images", [])}
    assert entries["podsnap"].get("newTag") == version
