#!/usr/bin/env python3
"""Checks of the eventstream-operator Helm chart, its dashboards and its alerts.

Run by `scripts/chart-test` with the cached virtualenv's python (helm-python-sdk: the real Helm
library, `libhelm_c.so`; kubernetes-validate: the Kubernetes OpenAPI schemas). Every check prints
one line; the run ends with `N passed, M failed` and exits non-zero when anything failed.

What is checked:
- the chart's CRD is byte-identical to crds/eventstream.yaml;
- `helm lint --strict` (Kubernetes 1.33) passes for the default values, every optional feature on,
  and single-namespace mode; it fails, naming the key, for an unknown key, a wrong type and an
  impossible value; the kubeVersion constraint refuses Kubernetes 1.32;
- every manifest rendered in those three modes validates against the Kubernetes 1.33 schemas
  (kubernetes-validate, strict: unknown fields are errors); the Prometheus Operator kinds, which
  kubernetes-validate does not ship, against the strict subset schemas in this file;
- RBAC is exactly docs/rbac.md in both modes (the CRD reader is the only cluster-wide grant in
  single-namespace mode), and two releases of one name in different namespaces render no object
  with the same name in the same place; the Deployment passes flags the real operator
  binary accepts, serves its probes, and carries the downward-API env, the restricted security
  context and every scheduling/env/pull-secret value; the PodMonitor selects the labels and port
  of the dataplane pods in operator/tests/golden; the ServiceMonitor selects the metrics Service;
- the dashboards parse, have unique panel ids and a unit on every panel;
- every metric, label and label value a dashboard or an alert uses is exported: names from the
  registration code, checked against docs/metrics.md and against /metrics of the real binaries
  (operator, sink, and bridge when the tansu broker is installed);
- the EventStream in NOTES.txt validates against the CRD schema.
- every rendered template reads the same in YAML 1.1 (PyYAML, as kubectl and Helm) and in YAML 1.2
  (serde_yaml, through the `yaml-reading` binary of eventstream-crds).
"""

from __future__ import annotations

import atexit
import copy
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "eventstream-operator"
K8S_VERSION = "1.33.0"
RELEASE = "es"
RELEASE_NS = "eventstream-system"
WATCH_NS = "streams"

# ------------------------------------------------------------------------------------------
# tiny runner

RESULTS: list[tuple[str, bool, str]] = []
CHECKS: list[tuple[str, object]] = []


def check(name: str):
    """Registers a check; they run in file order once every helper below is defined."""

    def wrap(fn):
        CHECKS.append((name, fn))
        return fn

    return wrap


def run_check(name: str, fn) -> None:
    try:
        detail = fn() or ""
        RESULTS.append((name, True, detail))
        print(f"PASS  {name}" + (f"\n      {detail}" if detail else ""), flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        msg = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
        RESULTS.append((name, False, msg))
        print(f"FAIL  {name}\n      " + msg.replace("\n", "\n      "), flush=True)


# ------------------------------------------------------------------------------------------
# values of the three modes

ALL_ON = {
    "replicaCount": 3,
    "kafka": {"bootstrapServers": "my-cluster-kafka-bootstrap.kafka:9092"},
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "eventstream-operator"}},
                    },
                }
            ]
        }
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "eventstream-operator"}},
        }
    ],
    "extraEnv": [{"name": "EVENTSTREAM_LOG_FORMAT", "value": "json"}],
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"example.com/tier": "control"},
    "commonLabels": {"example.com/owner": "platform"},
    "deploymentAnnotations": {"example.com/note": "all features"},
    "serviceAccount": {"annotations": {"example.com/role": "operator"}},
    "service": {"annotations": {"prometheus.io/scrape": "true"}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "dataplane": {
        "image": {"repository": "registry.example.com/eventstream", "tag": "0.1.0-custom"},
        "monitorLabels": {"release": "kube-prometheus-stack", "example.com/team": "platform"},
        "podMonitor": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "scrapeTimeout": "10s",
            "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
        },
    },
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "metricRelabelings": [{"action": "drop", "regex": "go_.*", "sourceLabels": ["__name__"]}],
    },
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "additionalAlertLabels": {"team": "platform"},
    },
    "grafana": {"dashboards": {"enabled": True, "annotations": {"grafana_folder": "EventStream"}}},
}
SINGLE_NS = {
    "watchNamespace": WATCH_NS,
    "dataplane": {"podMonitor": {"enabled": True}},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafana": {"dashboards": {"enabled": True}},
}
MODES = {"default": {}, "all features on": ALL_ON, "single namespace": SINGLE_NS}


def render(values: dict, namespace: str = RELEASE_NS) -> tuple[list[dict], str]:
    """Renders the chart like `helm install` into `namespace`; returns the objects and NOTES.txt."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        files = chart.render(values=values, name=RELEASE, namespace=namespace, is_install=True)
    objs, notes = [], ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_source", path)
                objs.append(doc)
    return objs, notes


def strip(o: dict) -> dict:
    o = copy.deepcopy(o)
    o.pop("_source", None)
    return o


def find(objs, kind, name=None):
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return hits


def one(objs, kind, name=None):
    hits = find(objs, kind, name)
    assert len(hits) == 1, f"expected one {kind}{' ' + name if name else ''}, rendered {len(hits)}"
    return hits[0]


RENDERED: dict[str, tuple[list[dict], str]] = {}

# ------------------------------------------------------------------------------------------
# CRD and Chart.yaml


@check("chart CRD is byte-identical to crds/eventstream.yaml")
def _():
    a = (ROOT / "crds" / "eventstream.yaml").read_bytes()
    b = (CHART / "crds" / "eventstream.yaml").read_bytes()
    assert a == b, (
        "charts/eventstream-operator/crds/eventstream.yaml differs from crds/eventstream.yaml: "
        "cp crds/eventstream.yaml charts/eventstream-operator/crds/eventstream.yaml"
    )
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
    names = [c["filename"] for c in crds]
    assert names == ["eventstream-operator/crds/eventstream.yaml"], f"Helm loads these CRDs: {names}"
    return f"{len(a)} bytes; Helm loads it as the chart's only CRD"


@check("Chart.yaml: appVersion = workspace version, kubeVersion >=1.33, Artifact Hub annotations")
def _():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = (ROOT / "Cargo.toml").read_text()
    ver = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == ver, f"appVersion {meta['appVersion']} != workspace version {ver}"
    assert meta["kubeVersion"] == ">=1.33.0-0", meta["kubeVersion"]
    ann = meta.get("annotations", {})
    for key in ("artifacthub.io/license", "artifacthub.io/operator", "artifacthub.io/crds",
                "artifacthub.io/crdsExamples", "artifacthub.io/images", "artifacthub.io/links"):
        assert key in ann, f"Chart.yaml lacks annotation {key}"
    for key in ("artifacthub.io/crds", "artifacthub.io/crdsExamples", "artifacthub.io/images", "artifacthub.io/links"):
        assert isinstance(yaml.safe_load(ann[key]), list), f"{key} is not a YAML list"
    image = yaml.safe_load(ann["artifacthub.io/images"])[0]["image"]
    assert image.endswith(":" + meta["appVersion"]), f"artifacthub.io/images {image} is not at appVersion"
    ex = yaml.safe_load(ann["artifacthub.io/crdsExamples"])[0]
    validate_eventstream(ex)
    return f"appVersion {meta['appVersion']}, kubeVersion {meta['kubeVersion']}; crdsExamples validate against the CRD"


# ------------------------------------------------------------------------------------------
# lint


def lint(values: dict, kube: str = "v1.33.0") -> dict:
    return helm.lint(str(CHART), values, strict=True, kube_version=kube)


def lint_problems(report: dict) -> list[str]:
    out = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    return out + list(report.get("errors", []))


for _mode, _values in MODES.items():

    @check(f"helm lint --strict (Kubernetes 1.33): {_mode}")
    def _(values=_values):
        report = lint(values)
        problems = lint_problems(report)
        assert not problems, "lint reported:\n" + "\n".join(problems)
        infos = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) < 2]
        return "clean" + (f"; info: {'; '.join(infos)}" if infos else "")


BAD_VALUES = [
    ("unknown top-level key", {"replicaCont": 2}, "replicaCont"),
    ("unknown nested key", {"image": {"repository": "x", "tagg": "1"}}, "tagg"),
    ("wrong type", {"replicaCount": "two"}, "replicaCount"),
    ("negative replicas", {"replicaCount": -1}, "replicaCount"),
    ("unknown pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("port out of range", {"metricsPort": 70000}, "metricsPort"),
    ("watchNamespace not a DNS label", {"watchNamespace": "My_Namespace"}, "watchNamespace"),
    ("misspelt alert name in prometheusRule.disabled", {"prometheusRule": {"disabled": {"EventStreamNotReadyy": True}}}, "EventStreamNotReadyy"),
    ("ingestErrorRatio above 1", {"prometheusRule": {"thresholds": {"ingestErrorRatio": 5}}}, "ingestErrorRatio"),
    ("no leader election with 3 replicas", {"replicaCount": 3, "leaderElection": {"enabled": False}}, "/leaderElection/enabled"),
]
for _label, _values, _needle in BAD_VALUES:

    @check(f"helm lint fails for bad values: {_label}")
    def _(values=_values, needle=_needle):
        problems = lint_problems(lint(values))
        assert problems, f"lint accepted {values}"
        text = "\n".join(problems)
        assert needle in text, f"lint failed but its message does not name {needle!r}:\n{text}"
        # The first line that names the culprit, as the user sees it.
        line = next((ln.strip() for ln in text.splitlines() if needle in ln), text.splitlines()[0])
        return line[:200]


@check("install refuses leader election off with several replicas, even without the schema (template guard)")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        copy_ = Path(tmp) / CHART.name
        shutil.copytree(CHART, copy_)
        (copy_ / "values.schema.json").unlink()
        with helm.Chart.load(copy_) as chart:
            try:
                chart.render(values={"replicaCount": 2, "leaderElection": {"enabled": False}}, name=RELEASE, namespace=RELEASE_NS, is_install=True)
            except helm.HelmError as e:
                assert "needs replicaCount <= 1" in str(e), str(e)
                return str(e).strip().splitlines()[-1][:220]
    raise AssertionError("rendered a Deployment of 2 replicas without leader election")


# ------------------------------------------------------------------------------------------
# render + schemas

for _mode, _values in MODES.items():

    @check(f"render: {_mode}")
    def _(mode=_mode, values=_values):
        objs, notes = render(values)
        RENDERED[mode] = (objs, notes)
        kinds: dict[str, int] = {}
        for o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        return ", ".join(f"{k}×{n}" if n > 1 else k for k, n in sorted(kinds.items()))


def yaml11_reading():
    """crds/tests/yaml_reading.py: how kubectl and Helm (YAML 1.1) read a YAML text."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("yaml_reading", ROOT / "crds" / "tests" / "yaml_reading.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reading


@check("every rendered template reads the same in YAML 1.1 (kubectl, Helm) and YAML 1.2 (serde_yaml), in every mode")
def _():
    # The committed CRD, its chart copy, the examples and the golden files get the same
    # comparison in crds/tests/yaml11.rs; the templates exist only once Helm rendered them.
    reading = yaml11_reading()
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, str] = {}
        for mode, values in MODES.items():
            with helm.Chart.load(CHART) as chart:
                files = chart.render(values=values, name=RELEASE, namespace=RELEASE_NS, is_install=True)
            for name, text in sorted(files.items()):
                if name.endswith("NOTES.txt"):
                    continue
                path = Path(tmp) / f"{len(paths)}.yaml"
                path.write_text(text, encoding="utf-8")
                paths[str(path)] = f"{mode}: {name}"
        out = subprocess.run([binary("yaml-reading"), *paths], capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"yaml-reading failed: {out.stderr}"
        yaml12 = json.loads(out.stdout)
        differ = []
        for path, label in paths.items():
            yaml11 = reading(Path(path).read_text(encoding="utf-8"))
            count += len(yaml11)
            if yaml11 != yaml12[path]:
                differ.append(label)
    assert not differ, f"read differently by kubectl/Helm and by serde_yaml (quote the value): {differ}"
    return f"{count} rendered documents in {len(MODES)} modes"


# Strict subsets of the Prometheus Operator's monitoring.coreos.com/v1 CRDs (field names as in
# its ServiceMonitor, PodMonitor and PrometheusRule CRDs): the fields this chart renders, with
# unknown fields refused, so a typo in a template fails here as it would on the API server.
def _strict(props, required=()):
    return {"type": "object", "additionalProperties": False, "properties": props, "required": list(required)}


_STR = {"type": "string"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DUR = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_META = {"type": "object", "required": ["name", "namespace"], "properties": {"name": _STR, "namespace": _STR, "labels": _STRMAP, "annotations": _STRMAP}}
_RELABEL = _strict({
    "sourceLabels": {"type": "array", "items": _STR}, "separator": _STR, "targetLabel": _STR, "regex": _STR,
    "modulus": {"type": "integer"}, "replacement": _STR,
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
                        "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase",
                        "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
})
_SELECTOR = _strict({
    "matchLabels": _STRMAP,
    "matchExpressions": {"type": "array", "items": _strict({"key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                                             "values": {"type": "array", "items": _STR}}, ["key", "operator"])},
})
_NS_SELECTOR = _strict({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}})
_ENDPOINT = _strict({"port": _STR, "path": _STR, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]}, "interval": _DUR,
                     "scrapeTimeout": _DUR, "honorLabels": {"type": "boolean"}, "relabelings": {"type": "array", "items": _RELABEL},
                     "metricRelabelings": {"type": "array", "items": _RELABEL}}, ["port"])
_RULE = {
    "type": "object", "additionalProperties": False, "required": ["expr"],
    "properties": {"alert": _STR, "record": _STR, "expr": {"type": ["string", "integer"]}, "for": _DUR, "keep_firing_for": _DUR,
                   "labels": _STRMAP, "annotations": _STRMAP},
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
MONITORING_SCHEMAS = {
    "ServiceMonitor": _strict({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": _STR, "metadata": _META, "_source": _STR,
                               "spec": _strict({"endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}, "selector": _SELECTOR,
                                                "namespaceSelector": _NS_SELECTOR, "jobLabel": _STR}, ["endpoints", "selector"])},
                              ["apiVersion", "kind", "metadata", "spec"]),
    "PodMonitor": _strict({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": _STR, "metadata": _META, "_source": _STR,
                           "spec": _strict({"podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT}, "selector": _SELECTOR,
                                            "namespaceSelector": _NS_SELECTOR, "jobLabel": _STR}, ["podMetricsEndpoints", "selector"])},
                          ["apiVersion", "kind", "metadata", "spec"]),
    "PrometheusRule": _strict({"apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": _STR, "metadata": _META, "_source": _STR,
                               "spec": _strict({"groups": {"type": "array", "minItems": 1, "items": _strict(
                                   {"name": _STR, "interval": _DUR, "rules": {"type": "array", "minItems": 1, "items": _RULE}}, ["name", "rules"])}}, ["groups"])},
                              ["apiVersion", "kind", "metadata", "spec"]),
}

for _mode in MODES:

    @check(f"manifests validate against Kubernetes {K8S_VERSION} schemas (strict): {_mode}")
    def _(mode=_mode):
        objs, _notes = RENDERED[mode]
        assert objs, "nothing rendered"
        errors, k8s, own = [], 0, 0
        for o in objs:
            ident = f"{o['kind']}/{o['metadata'].get('name')} ({o['_source']})"
            if o["kind"] in MONITORING_SCHEMAS:
                try:
                    jsonschema.validate(o, MONITORING_SCHEMAS[o["kind"]])
                    own += 1
                except jsonschema.ValidationError as e:
                    errors.append(f"{ident}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
                continue
            try:
                kubernetes_validate.validate(strip(o), K8S_VERSION, strict=True)
                k8s += 1
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{ident}: {e.message} at {'/'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{ident}: no Kubernetes {K8S_VERSION} schema for it ({e})")
        assert not errors, "\n".join(errors)
        return f"{k8s} by kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''}".strip() + f", {own} by the monitoring.coreos.com subset schemas"


# ------------------------------------------------------------------------------------------
# RBAC


def rbac_doc_rules() -> tuple[list, list, list]:
    """The rules of docs/rbac.md: the operator's, the Lease Role's, the CRD ClusterRole's."""
    text = (ROOT / "docs" / "rbac.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    docs = [d for d in yaml.safe_load_all(block) if d]
    assert len(docs) == 3, f"docs/rbac.md has {len(docs)} RBAC objects, expected 3"
    return docs[0]["rules"], docs[1]["rules"], docs[2]["rules"]


def crd_reader(objs) -> dict:
    """The cluster-scoped CRD ClusterRole, checked to be bound to the operator's ServiceAccount."""
    _main, _lease, crds = rbac_doc_rules()
    roles = [r for r in find(objs, "ClusterRole") if r["rules"] == crds]
    assert len(roles) == 1, f"expected one ClusterRole with the CRD rules of docs/rbac.md, got {[r['metadata']['name'] for r in roles]}"
    binding = [b for b in find(objs, "ClusterRoleBinding") if b["roleRef"]["name"] == roles[0]["metadata"]["name"]]
    sa = one(objs, "ServiceAccount")
    assert len(binding) == 1 and binding[0]["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}], binding
    return roles[0]


@check("RBAC, cluster-wide: ClusterRole + binding with exactly the rules of docs/rbac.md; Lease Role only with leader election")
def _():
    main, lease, _crds = rbac_doc_rules()
    for mode in ("default", "all features on"):
        objs, _ = RENDERED[mode]
        crd = crd_reader(objs)
        cr = one([r for r in find(objs, "ClusterRole") if r is not crd], "ClusterRole")
        assert cr["rules"] == main, f"{mode}: ClusterRole rules differ from docs/rbac.md:\n{cr['rules']}\n!=\n{main}"
        crb = [b for b in find(objs, "ClusterRoleBinding") if b["roleRef"]["name"] == cr["metadata"]["name"]]
        assert len(crb) == 1 and crb[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cr["metadata"]["name"]}, crb
        sa = one(objs, "ServiceAccount")
        assert crb[0]["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": RELEASE_NS}]
        assert not [r for r in find(objs, "Role") if r["rules"] == main], f"{mode}: a namespaced copy of the rules in cluster mode"
    objs, _ = RENDERED["default"]
    assert not find(objs, "Role"), "replicaCount 1 (leader election auto = off) still renders a Lease Role"
    objs, _ = RENDERED["all features on"]
    role = one(objs, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NS and role["rules"] == lease, role
    rb = one(objs, "RoleBinding")
    assert rb["metadata"]["namespace"] == RELEASE_NS and rb["roleRef"]["name"] == role["metadata"]["name"]
    return f"{len(main)} rules + CRD reader; Lease Role in {RELEASE_NS} with replicaCount 3"


@check("RBAC, single namespace: Role + RoleBinding in the watched namespace; cluster-wide only the CRD reader")
def _():
    main, _lease, _crds = rbac_doc_rules()
    objs, _ = RENDERED["single namespace"]
    crd = crd_reader(objs)
    assert find(objs, "ClusterRole") == [crd], "cluster-wide grants beyond reading CRDs in single-namespace mode"
    assert len(find(objs, "ClusterRoleBinding")) == 1
    roles = [r for r in find(objs, "Role") if r["metadata"]["namespace"] == WATCH_NS]
    assert len(roles) == 1 and roles[0]["rules"] == main, roles
    rbs = [r for r in find(objs, "RoleBinding") if r["metadata"]["namespace"] == WATCH_NS]
    assert len(rbs) == 1 and rbs[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[0]["metadata"]["name"]}
    assert rbs[0]["subjects"][0]["namespace"] == RELEASE_NS
    args = container(objs)["args"]
    assert f"--namespace={WATCH_NS}" in args, args
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [WATCH_NS]}, pm["spec"]["namespaceSelector"]
    return f"Role in {WATCH_NS} bound to {RELEASE_NS}'s ServiceAccount; --namespace={WATCH_NS}; PodMonitor limited to {WATCH_NS}"


@check("RBAC: two releases of one name in different namespaces share no object outside their own namespace")
def _():
    # `helm install es` in two namespaces: an object both would render with one name in one place
    # (a cluster-scoped object, or a namespaced one outside the release namespace) makes the
    # second install fail on the first one's ownership, or take it over.
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}

    def placed_outside(values: dict, namespace: str) -> set[tuple]:
        objs, _ = render(values, namespace=namespace)
        placed = set()
        for o in objs:
            # A namespaced object without metadata.namespace goes where Helm installs: `namespace`.
            where = None if o["kind"] in cluster_scoped else o["metadata"].get("namespace", namespace)
            if where != namespace:
                placed.add((o["kind"], where, o["metadata"]["name"]))
        return placed

    checked = []
    for mode, values in (("cluster-wide", MODES["all features on"]), ("single namespace", MODES["single namespace"])):
        a = placed_outside(values, "team-a")
        b = placed_outside(values, "team-b")
        assert a and b, f"{mode}: nothing rendered outside the release namespace?"
        shared = a & b
        assert not shared, f"{mode}: both releases render {sorted(shared, key=str)}"
        checked.append(f"{mode}: {len(a)} objects each, e.g. {sorted(n for _k, _ns, n in a)[0]}")
    return "; ".join(checked)


# ------------------------------------------------------------------------------------------
# Deployment


def container(objs) -> dict:
    dep = one(objs, "Deployment")
    cs = dep["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1
    return cs[0]


@check("Deployment defaults: image at appVersion, dataplane image = same image, downward-API env, probes, restricted security context")
def _():
    objs, _ = RENDERED["default"]
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(objs)
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = f"ghcr.io/eventstream-dev/eventstream:{meta['appVersion']}"
    assert c["image"] == image, c["image"]
    assert c["command"] == ["eventstream-operator"] and c["args"][0] == "run", (c["command"], c["args"])
    assert f"--dataplane-image={image}" in c["args"], c["args"]
    assert "--no-leader-election" in c["args"] and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith("--kafka-bootstrap") for a in c["args"])
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    sc, psc = c["securityContext"], pod["securityContext"]
    # Pod Security Standard "restricted".
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True and psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "metrics Service does not select the operator pods"
    return f"{image}; args {' '.join(c['args'][1:])}"


@check("Deployment with every option: leader election, Kafka default, dataplane image, pull secrets, scheduling, extra env")
def _():
    objs, _ = RENDERED["all features on"]
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(objs)
    assert dep["spec"]["replicas"] == 3 and "strategy" not in dep["spec"]
    assert "--no-leader-election" not in c["args"] and f"--lease-name={RELEASE}-eventstream-operator" in c["args"], c["args"]
    assert "--kafka-bootstrap=my-cluster-kafka-bootstrap.kafka:9092" in c["args"]
    assert "--dataplane-image=registry.example.com/eventstream:0.1.0-custom" in c["args"]
    labels = [a for a in c["args"] if a.startswith("--monitor-label=")]
    assert labels == ["--monitor-label=example.com/team=platform", "--monitor-label=release=kube-prometheus-stack"], labels
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "priorityClassName"):
        assert pod[key] == ALL_ON[key], f"{key} not passed through: {pod.get(key)}"
    assert {"name": "EVENTSTREAM_LOG_FORMAT", "value": "json"} in c["env"]
    assert dep["spec"]["template"]["metadata"]["annotations"] == ALL_ON["podAnnotations"]
    assert dep["spec"]["template"]["metadata"]["labels"]["example.com/tier"] == "control"
    for o in objs:
        assert o["metadata"]["labels"].get("example.com/owner") == "platform", f"{o['kind']} lacks commonLabels"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    return "replicas 3 with Lease, every value reaches the pod spec"


@check("the real operator binary accepts every rendered flag and serves /metrics, /healthz, /readyz on the probed port")
def _():
    out = []
    for mode in MODES:
        objs, _ = RENDERED[mode]
        c = container(objs)
        port = free_port()
        args = [a if not a.startswith("--listen=") else f"--listen=127.0.0.1:{port}" for a in c["args"]]
        assert f"--listen=0.0.0.0:{c['ports'][0]['containerPort']}" in c["args"], "--listen does not match the container port"
        env = {"POD_NAME": "op-0", "POD_NAMESPACE": RELEASE_NS}
        with operator_process(args, env) as proc:
            codes = {p: http_status(f"http://127.0.0.1:{port}{p}") for p in ("/metrics", "/healthz", "/readyz")}
            assert proc.poll() is None, f"{mode}: the operator exited: {proc.stderr_text()}"
        assert codes["/metrics"] == 200 and codes["/healthz"] == 200, f"{mode}: {codes}"
        # /readyz answers 503 until the API server answered (ours never does): it exists.
        assert codes["/readyz"] in (200, 503), f"{mode}: {codes}"
        out.append(f"{mode}: {codes}")
    return "; ".join(out)


# ------------------------------------------------------------------------------------------
# monitors


def golden_dataplane_pods() -> list[dict]:
    pods = []
    for f in sorted(glob.glob(str(ROOT / "operator" / "tests" / "golden" / "*" / "deployment-*.yaml"))):
        d = yaml.safe_load(Path(f).read_text())
        pods.append(d["spec"]["template"])
    assert pods, "no golden dataplane Deployments in operator/tests/golden"
    return pods


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, val = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and val in e.get("values", []), "NotIn": not has or val not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


@check("PodMonitor selects every golden bridge, sink and alerts pod on its `http` port, and not the operator")
def _():
    objs, _ = RENDERED["all features on"]
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pods = golden_dataplane_pods()
    for t in pods:
        assert selects(pm["spec"]["selector"], t["metadata"]["labels"]), f"PodMonitor misses pod labels {t['metadata']['labels']}"
        ports = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics", (ep, ports)
    op_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selects(pm["spec"]["selector"], op_labels), "the dataplane PodMonitor also selects the operator"
    return f"{len(pods)} golden dataplane pod templates"


@check("ServiceMonitor selects the metrics Service by labels and port name, in the release namespace")
def _():
    objs, _ = RENDERED["all features on"]
    sm, svc = one(objs, "ServiceMonitor"), one(objs, "Service")
    assert selects(sm["spec"]["selector"], svc["metadata"]["labels"]), "ServiceMonitor does not select the metrics Service"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NS]}
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    return f"port {sm['spec']['endpoints'][0]['port']}, path {sm['spec']['endpoints'][0]['path']}"


REQUIRED_ALERTS = {
    "EventStreamReconcileErrors": "reconcile errors",
    "EventStreamNotReady": "EventStream not Ready for 10 minutes",
    "EventStreamBridgeConsumerLag": "bridge consumer lag",
    "EventStreamSinkLagGrowing": "sink lag growing",
    "EventStreamSinkDeadLetters": "dead-letter records",
    "EventStreamSlowClientDrops": "WebSocket drops for slow clients",
}


def alert_rules(objs) -> list[dict]:
    return [r for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


@check("PrometheusRule: the alerts of the issue, each with severity, summary, description, runbook; names match the schema")
def _():
    objs, _ = RENDERED["all features on"]
    rules = alert_rules(objs)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), f"duplicate alerts: {names}"
    missing = set(REQUIRED_ALERTS) - set(names)
    assert not missing, f"missing alerts: {missing}"
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r
        assert r["labels"]["team"] == "platform", "additionalAlertLabels not applied"
        for a in ("summary", "description", "runbook_url"):
            assert r["annotations"].get(a), f"{r['alert']} lacks {a}"
        assert "{{" not in r["expr"], f"{r['alert']}: a template left in the expression: {r['expr']}"
        balanced(r["expr"], r["alert"])
    not_ready = next(r for r in rules if r["alert"] == "EventStreamNotReady")
    assert not_ready["for"] == "10m", not_ready
    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = set(schema["properties"]["prometheusRule"]["properties"]["disabled"]["propertyNames"]["enum"])
    assert enum == set(names), f"values.schema.json prometheusRule.disabled names {sorted(enum)} != alerts {sorted(names)}"
    objs2, _ = render({**ALL_ON, "prometheusRule": {**ALL_ON["prometheusRule"], "disabled": {"EventStreamSlowClientDrops": True}}})
    assert "EventStreamSlowClientDrops" not in [r["alert"] for r in alert_rules(objs2)], "prometheusRule.disabled has no effect"
    return f"{len(rules)} alerts: {', '.join(names)}"


@check("Grafana dashboard ConfigMaps: sidecar label, one per JSON file, data identical to dashboards/")
def _():
    files = sorted((CHART / "dashboards").glob("*.json"))
    for mode, label in (("all features on", "grafana_dashboard"),):
        objs, _ = RENDERED[mode]
        cms = [o for o in find(objs, "ConfigMap") if label in o["metadata"]["labels"]]
        assert len(cms) == len(files), f"{len(cms)} dashboard ConfigMaps for {len(files)} files"
        data = {k: v for cm in cms for k, v in cm["data"].items()}
        for f in files:
            assert data.get(f.name, "").strip() == f.read_text().strip(), f"ConfigMap data of {f.name} differs from the file"
        for cm in cms:
            assert cm["metadata"]["labels"][label] == "1" and cm["metadata"]["annotations"] == {"grafana_folder": "EventStream"}
    objs, _ = render({"grafana": {"dashboards": {"enabled": True, "label": "my_dashboards", "labelValue": "yes", "namespace": "monitoring"}}})
    cms = find(objs, "ConfigMap")
    assert cms and all(c["metadata"]["labels"].get("my_dashboards") == "yes" and c["metadata"]["namespace"] == "monitoring" for c in cms)
    objs, _ = RENDERED["default"]
    assert not find(objs, "ConfigMap"), "dashboards rendered although grafana.dashboards.enabled is false"
    return ", ".join(f.name for f in files) + "; label and namespace configurable"


# ------------------------------------------------------------------------------------------
# dashboards


def dashboards() -> dict[str, dict]:
    return {f.name: json.loads(f.read_text()) for f in sorted((CHART / "dashboards").glob("*.json"))}


def all_panels(d: dict) -> list[dict]:
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@check("dashboards parse; panel ids unique; every panel (rows aside) has a unit, a datasource and queries")
def _():
    out = []
    for name, d in dashboards().items():
        assert d.get("uid") and d.get("title"), f"{name}: no uid/title"
        panels = all_panels(d)
        ids = [p["id"] for p in panels]
        dup = {i for i in ids if ids.count(i) > 1}
        assert not dup, f"{name}: duplicate panel ids {dup}"
        for p in panels:
            if p["type"] == "row":
                continue
            unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
            assert unit, f"{name}: panel {p['id']} {p['title']!r} has no unit"
            assert p.get("datasource", {}).get("uid") == "${datasource}", f"{name}: panel {p['title']!r} is not on the datasource variable"
            assert p.get("targets") and all(t.get("expr") for t in p["targets"]), f"{name}: panel {p['title']!r} has no query"
            for t in p["targets"]:
                balanced(t["expr"], f"{name}/{p['title']}")
        out.append(f"{name}: {len([p for p in panels if p['type'] != 'row'])} panels")
    return "; ".join(out)


STREAM_PANELS = ["ingest", "error", "consumed", "deliveries", "connections", "latency", "slow-client", "lag", "rows", "batch", "dead"]


@check("stream dashboard: `stream` variable, every query filtered by it, the panels the issue lists")
def _():
    d = dashboards()["eventstream-stream.json"]
    var = {v["name"]: v for v in d["templating"]["list"]}
    assert "stream" in var and "datasource" in var, list(var)
    q = var["stream"]["query"]["query"] if isinstance(var["stream"]["query"], dict) else var["stream"]["query"]
    assert q.startswith("label_values(eventstream_") and q.endswith(", stream)"), q
    titles = " | ".join(p["title"].lower() for p in all_panels(d))
    for word in STREAM_PANELS:
        assert word in titles, f"no panel about {word!r} in: {titles}"
    for p in all_panels(d):
        for t in p.get("targets", []):
            for sel in re.findall(r"eventstream_\w+\{([^}]*)\}", t["expr"]):
                assert 'stream="$stream"' in sel, f"{p['title']!r}: a query not filtered by $stream: {t['expr']}"
            assert re.findall(r"eventstream_\w+\{", t["expr"]), f"{p['title']!r}: a metric without a selector: {t['expr']}"
    ops = dashboards()["eventstream-operator.json"]
    otitles = " | ".join(p["title"].lower() for p in all_panels(ops))
    for word in ("reconciles", "errors", "duration", "condition"):
        assert word in otitles, f"operator dashboard: no panel about {word!r}"
    return f"variable query {q}"


def balanced(expr: str, where: str) -> None:
    depth = {"(": 0, "[": 0, "{": 0}
    pairs = {")": "(", "]": "[", "}": "{"}
    in_str = False
    for ch in expr:
        if ch == '"':
            in_str = not in_str
        elif not in_str and ch in depth:
            depth[ch] += 1
        elif not in_str and ch in pairs:
            depth[pairs[ch]] -= 1
            assert depth[pairs[ch]] >= 0, f"{where}: unbalanced {ch} in {expr}"
    assert not in_str and not any(depth.values()), f"{where}: unbalanced brackets or quotes in {expr}"


# ------------------------------------------------------------------------------------------
# metrics: what is exported, and what the dashboards and alerts use

TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "endpoint", "service"}


def metrics_from_docs() -> dict[str, dict]:
    """docs/metrics.md: name → {type, labels: {label: set(values) or None}}."""
    out = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\|\s*`(eventstream_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if not m:
            continue
        labels: dict[str, set | None] = {}
        for part in m.group(3).split(";"):
            names = re.findall(r"`([^`]+)`", part)
            if not names:
                continue
            if ":" in part:
                head, _, tail = part.partition(":")
                key = re.findall(r"`([^`]+)`", head)[0]
                vals = set(re.findall(r"`([^`]+)`", tail))
                labels[key] = vals or None
            else:
                for n in names:
                    labels[n] = None
        if not m.group(1).startswith("eventstream_operator_"):
            labels["stream"] = None
        out[m.group(1)] = {"type": m.group(2), "labels": labels}
    return out


def metrics_from_source() -> dict[str, str]:
    """Name → type from the registration code (the literal passed to Opts/HistogramOpts/Gauge)."""
    files = sorted(glob.glob(str(ROOT / "dataplane" / "src" / "**" / "metrics.rs"), recursive=True))
    files.append(str(ROOT / "operator" / "src" / "metrics.rs"))
    out = {}
    for f in files:
        text = Path(f).read_text()
        text = text.split("#[cfg(test)]")[0]
        for m in re.finditer(r'"(eventstream_[a-z0-9_]+)"', text):
            before = text[max(0, m.start() - 300): m.start()]
            kinds = re.findall(r"(Histogram|histogram|Counter|counter|Gauge|gauge)", before)
            assert kinds, f"{f}: cannot tell the type of {m.group(1)}"
            out[m.group(1)] = kinds[-1].lower()
    return out


def series_names(types: dict[str, str]) -> set[str]:
    out = set()
    for name, t in types.items():
        out |= {name + s for s in ("_bucket", "_sum", "_count")} if t == "histogram" else {name}
    return out


LIVE: dict[str, dict[str, str]] = {}


@check("metric names: registration code and docs/metrics.md agree on every name and type")
def _():
    src, docs = metrics_from_source(), metrics_from_docs()
    assert set(src) == set(docs), f"only in code: {sorted(set(src) - set(docs))}; only in docs: {sorted(set(docs) - set(src))}"
    wrong = {n: (src[n], docs[n]["type"]) for n in src if src[n] != docs[n]["type"]}
    assert not wrong, f"types differ (code, docs): {wrong}"
    return f"{len(src)} metrics ({sum(t == 'histogram' for t in src.values())} histograms)"


@check("metric registries of the real binaries: operator (`run` against an API server that never answers)")
def _():
    port = free_port()
    with operator_process([f"--listen=127.0.0.1:{port}", "--no-leader-election"], {}) as _proc:
        text = fetch(f"http://127.0.0.1:{port}/metrics")
    return record_live("operator", text)


@check("metric registries of the real binaries: dataplane sink (database and Kafka unreachable)")
def _():
    port = free_port()
    cfg = dataplane_config(port, "127.0.0.1:1")
    with process([binary("eventstream-dataplane"), "sink", "--config", cfg],
                 {"EVENTSTREAM_POSTGRES_URL": "postgres://eventstream@127.0.0.1:1/db"}) as proc:
        text = fetch(f"http://127.0.0.1:{port}/metrics", proc=proc)
    return record_live("sink", text)


@check("metric registries of the real binaries: dataplane bridge (tansu broker, one event produced)")
def _():
    tansu = os.environ.get("TANSU_BIN") or str(Path(os.environ.get("EVENTSTREAM_CACHE", Path.home() / ".cache" / "eventstream")) / "tansu-0.6.0" / "bin" / "tansu")
    if not os.access(tansu, os.X_OK):
        return f"SKIPPED: no tansu broker at {tansu} (scripts/test installs it); bridge names come from code and docs only"
    kport, hport = free_port(), free_port()
    with process([tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{kport}", "--advertised-listener-url",
                  f"tcp://127.0.0.1:{kport}", "--storage-engine", "memory://tansu/"], {}) as _broker:
        wait_port(kport)
        subprocess.run([tansu, "topic", "create", "--broker", f"tcp://127.0.0.1:{kport}", "--partitions", "1", "racing.telemetry"],
                       check=True, capture_output=True, timeout=30)
        cfg = dataplane_config(hport, f"127.0.0.1:{kport}")
        with process([binary("eventstream-dataplane"), "bridge", "--config", cfg], {}) as bridge:
            fetch(f"http://127.0.0.1:{hport}/metrics", timeout=60, proc=bridge)
            body = json.dumps({"eventType": "lap", "sessionId": "s-1", "timestamp": "2025-01-01T00:00:00Z"}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{hport}/produce", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200, r.status
            text = fetch(f"http://127.0.0.1:{hport}/metrics")
    return record_live("bridge", text)


def record_live(who: str, text: str) -> str:
    types = dict(re.findall(r"^# TYPE (eventstream_\w+) (\w+)$", text, re.M))
    assert types, f"{who}: /metrics has no eventstream_* family:\n{text[:500]}"
    src = metrics_from_source()
    unknown = sorted(set(types) - set(src))
    assert not unknown, f"{who} exports metrics the code scan does not know: {unknown}"
    wrong = {n: (t, src[n]) for n, t in types.items() if t != src[n]}
    assert not wrong, f"{who}: types differ (live, code): {wrong}"
    # Label names seen live must be documented.
    docs = metrics_from_docs()
    for name, labels in re.findall(r"^(eventstream_\w+?)(?:_bucket|_sum|_count)?\{([^}]*)\}", text, re.M):
        base = name if name in docs else re.sub(r"_(bucket|sum|count)$", "", name)
        for label in re.findall(r'(\w+)="', labels):
            assert label == "le" or label in docs[base]["labels"], f"{who}: {base} has label {label} not in docs/metrics.md"
    LIVE[who] = types
    return f"{len(types)} families served: {', '.join(sorted(types))}"


def queries() -> list[tuple[str, str]]:
    out = []
    for name, d in dashboards().items():
        for p in all_panels(d):
            for t in p.get("targets", []):
                out.append((f"{name} / {p['title']}", t["expr"]))
        for v in d["templating"]["list"]:
            if v.get("type") == "query":
                q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                out.append((f"{name} / variable {v['name']}", q))
    for mode in ("all features on", "single namespace"):
        for r in alert_rules(RENDERED[mode][0]):
            out.append((f"alert {r['alert']} ({mode})", r["expr"]))
    return out


@check("every metric a dashboard panel or an alert uses is exported (histograms as _bucket/_sum/_count)")
def _():
    src = metrics_from_source()
    exported = series_names(src)
    live_seen = set().union(*LIVE.values()) if LIVE else set()
    used, missing = set(), []
    for where, expr in queries():
        for name in re.findall(r"\b(eventstream_[a-z0-9_]+)", expr):
            used.add(name)
            if name not in exported:
                missing.append(f"{where}: {name}")
        for name in re.findall(r"\b([a-z_:][a-z0-9_:]*)\s*(?:\{|\[)", expr):
            if not name.startswith("eventstream_") and name not in ("up",) and not name.startswith("__"):
                missing.append(f"{where}: {name} is not an EventStream metric")
    assert not missing, "\n".join(missing)
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in src else n for n in used}
    return (f"{len(used)} series names used by {len(queries())} queries, all exported; "
            f"{len(bases & live_seen)} of the {len(bases)} metrics used were seen on a running binary's /metrics; "
            f"unused metrics: {', '.join(sorted(set(src) - bases)) or 'none'}")


@check("every label and label value a dashboard or alert matches on exists on that metric")
def _():
    docs = metrics_from_docs()
    problems = []
    for where, expr in queries():
        metrics_here = set()
        for name, sel in re.findall(r"\b(eventstream_[a-z0-9_]+)\{([^}]*)\}", expr):
            base = name if name in docs else re.sub(r"_(bucket|sum|count)$", "", name)
            if base not in docs:
                continue  # reported by the metric-name check
            metrics_here.add(base)
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', sel):
                allowed = docs[base]["labels"]
                if label not in allowed and label not in TARGET_LABELS:
                    problems.append(f"{where}: {base} has no label {label}")
                elif op == "=" and allowed.get(label) and not value.startswith("$") and value not in allowed[label]:
                    problems.append(f"{where}: {base}{{{label}}} never has the value {value!r} (docs: {sorted(allowed[label])})")
        for name in re.findall(r"\b(eventstream_[a-z0-9_]+)\b(?!\{)", expr):
            metrics_here.add(name if name in docs else re.sub(r"_(bucket|sum|count)$", "", name))
        known = set(TARGET_LABELS) | {"le"}
        for m in metrics_here:
            if m in docs:
                known |= set(docs[m]["labels"])
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in re.split(r"\s*,\s*", group.strip()):
                if label and label not in known:
                    problems.append(f"{where}: grouping by {label}, which none of {sorted(metrics_here)} has")
    assert not problems, "\n".join(problems)
    return f"{len(queries())} queries"


@check("every alert's runbook_url points at a heading of the chart README")
def _():
    readme = (CHART / "README.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    objs, _ = RENDERED["all features on"]
    base = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["runbookUrl"]
    assert base.endswith("charts/eventstream-operator/README.md"), base
    for r in alert_rules(objs):
        url = r["annotations"]["runbook_url"]
        assert url.startswith(base + "#") and url.split("#", 1)[1] in anchors, f"{r['alert']}: {url} has no heading in README.md"
    return f"{len(alert_rules(objs))} runbooks"


@check("values used elsewhere pass the schema and lint: README's helm install commands, e2e/manifests/operator-values.yaml")
def _():
    done = []
    readme = (CHART / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        if "helm install" not in block:
            continue
        values: dict = {}
        for expr in re.findall(r"--set (\S+)", block):
            values = merge(values, helm.parse_set_string(expr))
        problems = lint_problems(lint(values))
        assert not problems, f"README command {values}: " + "\n".join(problems)
        done.append(f"README --set {len(values)} top-level keys")
    e2e = ROOT / "e2e" / "manifests" / "operator-values.yaml"
    if e2e.is_file():
        values = yaml.safe_load(e2e.read_text())
        values.setdefault("image", {})["tag"] = "e2e"  # kind.sh adds --set image.tag
        problems = lint_problems(lint(values))
        assert not problems, f"{e2e.relative_to(ROOT)}: " + "\n".join(problems)
        objs, _ = render(values)
        for o in objs:
            kubernetes_validate.validate(strip(o), K8S_VERSION, strict=True)
        done.append(str(e2e.relative_to(ROOT)))
    assert done, "nothing checked"
    return "; ".join(done)


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------
# NOTES.txt


def validate_eventstream(obj: dict) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "eventstream.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1])
    assert obj["kind"] == crd["spec"]["names"]["kind"]
    assert obj["apiVersion"].split("/")[0] == crd["spec"]["group"]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.validate({k: v for k, v in obj.items() if k != "metadata"}, schema)


@check("NOTES.txt: tells how to apply a first EventStream (valid against the CRD) and connect to it")
def _():
    out = []
    for mode in MODES:
        _objs, notes = RENDERED[mode]
        m = re.search(r"<<'YAML'\n(.*?)\n\s*YAML\n", notes, re.S)
        assert m, f"{mode}: NOTES.txt has no EventStream to apply:\n{notes}"
        es = yaml.safe_load(m.group(1))
        validate_eventstream(es)
        for needle in ("kubectl apply", "port-forward", "/produce", "/ws", "/sse", "kubectl -n"):
            assert needle in notes, f"{mode}: NOTES.txt does not mention {needle}"
        if mode == "single namespace":
            assert es["metadata"]["namespace"] == WATCH_NS, "the example is not in the watched namespace"
        if mode == "all features on":
            assert "kafka" not in es["spec"], "NOTES asks for bootstrapServers although a default is set"
        out.append(f"{mode}: {es['metadata']['namespace']}/{es['metadata']['name']}")
    return "; ".join(out)


# ------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def fetch(url: str, timeout: float = 20, proc: subprocess.Popen | None = None) -> str:
    """GETs `url`, retrying until it answers; fails at once when `proc` (the server) exited."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process serving {url} exited with {proc.returncode}:\n{proc.stderr_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s: {last}")


def binary(name: str) -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path(os.environ.get("EVENTSTREAM_CACHE", Path.home() / ".cache" / "eventstream")) / "target")
    path = Path(target) / "debug" / name
    assert path.is_file(), f"{path} is missing: scripts/chart-test builds it (cargo build --bins)"
    return str(path)


class process:
    """Starts a process, stops it (SIGTERM, then SIGKILL) on exit; keeps its stderr for messages."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.argv, self.env = argv, env

    def __enter__(self):
        self.log = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        env.update(self.env)
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log, env=env)
        self.proc.stderr_text = self.stderr_text
        return self.proc

    def stderr_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if exc[0] is not None:
            print(f"      output of {Path(self.argv[0]).name}:\n      " + self.stderr_text().replace("\n", "\n      "))
        self.log.close()
        return False


class operator_process:
    """`eventstream-operator run ARGS` against an API server that accepts connections and never
    answers: the operator builds its client, starts its HTTP server and waits on the first list."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.args, self.env = args, env

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="chart-test-")
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()

        def hold():
            self.server.settimeout(0.2)
            while not self.stop.is_set():
                try:
                    conn, _ = self.server.accept()
                    self.held.append(conn)
                except OSError:
                    pass

        threading.Thread(target=hold, daemon=True).start()
        kubeconfig = Path(self.dir) / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "none",
            "clusters": [{"name": "none", "cluster": {"server": f"http://127.0.0.1:{self.server.getsockname()[1]}"}}],
            "users": [{"name": "none", "user": {"token": "none"}}],
            "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none", "namespace": RELEASE_NS}}],
        }))
        self.p = process([binary("eventstream-operator"), "run", *[a for a in self.args if a != "run"]],
                         {**self.env, "KUBECONFIG": str(kubeconfig)})
        proc = self.p.__enter__()
        port = next(a.rsplit(":", 1)[1] for a in self.args if a.startswith("--listen="))
        try:
            fetch(f"http://127.0.0.1:{port}/healthz", proc=proc)
        except AssertionError:
            self.__exit__(AssertionError, None, None)
            raise
        return proc

    def __exit__(self, *exc):
        self.p.__exit__(*exc)
        self.stop.set()
        for c in self.held:
            c.close()
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def dataplane_config(http_port: int, bootstrap: str) -> str:
    """The golden sim-racing config (written by the operator's builders), on local ports."""
    cm = yaml.safe_load((ROOT / "operator" / "tests" / "golden" / "sim-racing-telemetry" / "configmap-telemetry-config.yaml").read_text())
    text = cm["data"]["config.yaml"]
    assert "0.0.0.0:8080" in text and "kafka.kafka:9092" in text
    text = text.replace("0.0.0.0:8080", f"127.0.0.1:{http_port}").replace("kafka.kafka:9092", bootstrap)
    fd, path = tempfile.mkstemp(prefix="chart-test-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    atexit.register(os.unlink, path)
    return path


# ------------------------------------------------------------------------------------------

if __name__ == "__main__":
    for _name, _fn in CHECKS:
        run_check(_name, _fn)
    passed = sum(ok for _, ok, _ in RESULTS)
    failed = len(RESULTS) - passed
    print(f"\nHelm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), Kubernetes schemas {K8S_VERSION} (kubernetes-validate --strict)")
    print(f"chart: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
