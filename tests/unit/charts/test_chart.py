"""The Helm chart rendered by the real helm: lint, Kubernetes schemas, its CRDs, values schema and RBAC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeforge import __version__, chartgen
from kubeforge.monitoring import rules as alert_rules
from kubeforge.operators import permissions
from tests.charts import CHART, CI_VALUES, helm, render
from tests.conftest import REPO

KUBERNETES = "1.30.0"  # schemas the rendered objects are checked against (the chart supports 1.20 and later)
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # not in Kubernetes' schemas


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def test_generated_parts_of_the_chart_are_committed() -> None:
    assert chartgen.stale(REPO) == [], "run `make chart` and commit the result"


def test_chart_version_is_the_project_version() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == __version__


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_helm_lint_strict(values: Path | None) -> None:
    helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_rendered_objects_are_valid_kubernetes(values: Path | None) -> None:
    objs = render(*(["-f", str(values)] if values else []))
    problems = []
    for obj in objs:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {err.message} at {list(err.path)}")
    assert problems == []


def test_crds_are_the_committed_ones_and_kept_on_uninstall() -> None:
    objs = render()
    rendered = {o["metadata"]["name"]: o for o in by_kind(objs, "CustomResourceDefinition")}
    committed = {
        d["metadata"]["name"]: d for d in (yaml.safe_load(f.read_text()) for f in (REPO / "crds").glob("*.yaml"))
    }
    assert rendered.keys() == committed.keys()
    for name, crd in rendered.items():
        assert crd["spec"] == committed[name]["spec"], name
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubeforge"
    assert by_kind(render("--set", "crds.install=false"), "CustomResourceDefinition") == []
    unkept = by_kind(render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert len(unkept) == 3 and all(not c["metadata"].get("annotations") for c in unkept)


def test_a_misspelt_value_is_refused_naming_the_key() -> None:
    proc = helm("template", "kubeforge", str(CHART), "--set", "mlflow.trackingURI=http://x", check=False)
    assert proc.returncode != 0
    assert "trackingURI" in proc.stderr and "additional properties" in proc.stderr, proc.stderr
    proc = helm("template", "kubeforge", str(CHART), "--set", "operator.replicas=2", check=False)
    assert proc.returncode != 0 and "replicas" in proc.stderr, proc.stderr
    proc = helm("template", "kubeforge", str(CHART), "--set", "operator.workerLimit=0", check=False)
    assert proc.returncode != 0 and "workerLimit" in proc.stderr, proc.stderr


def test_the_operator_pod_is_locked_down_and_configured_from_values() -> None:
    objs = render("--set", "mlflow.trackingUri=http://mlflow.ml:5000", "--set", "featureStore.persistence.enabled=true")
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["image"] == f"ghcr.io/kubeforge/kubeforge-operator:{__version__}"
    assert container["command"] == ["kubeforge", "operator", "run"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--metrics-address=0.0.0.0:9102" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBEFORGE_MLFLOW_TRACKING_URI"] == "http://mlflow.ml:5000"
    assert env["KUBEFORGE_TRAINER_IMAGE"] == f"ghcr.io/kubeforge/kubeforge-trainer:{__version__}"
    assert env["KUBEFORGE_GATEWAY_IMAGE"] == f"ghcr.io/kubeforge/kubeforge-gateway:{__version__}"
    assert env["KUBEFORGE_TRITON_IMAGE"] == f"ghcr.io/kubeforge/kubeforge-triton:{__version__}"
    assert env["KUBEFORGE_MATERIALIZER_IMAGE"] == container["image"]
    assert env["KUBEFORGE_FEAST_PVC"] == one(objs, "PersistentVolumeClaim")["metadata"]["name"]
    assert env["KUBEFORGE_WORKER_LIMIT"] == "100"
    cuda = one(render("--set", "images.trainer.cuda=true", "--set", "images.tag=1.2.3"), "Deployment")
    cuda_env = {e["name"]: e["value"] for e in cuda["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert cuda_env["KUBEFORGE_TRAINER_IMAGE"] == "ghcr.io/kubeforge/kubeforge-trainer:1.2.3-cuda"


def test_monitoring_objects_carry_the_committed_rules_and_dashboards() -> None:
    objs = render(*(a for v in CI_VALUES for a in ("-f", str(v))))
    rule = one(objs, "PrometheusRule")
    committed = yaml.safe_load((REPO / "monitoring" / "prometheus" / "kubeforge-rules.yaml").read_text())
    assert rule["spec"] == committed["spec"]
    dashboards = by_kind(objs, "ConfigMap")
    sources = sorted((REPO / "monitoring" / "grafana").glob("*.json"))
    assert len(dashboards) == len(sources)
    for cm, source in zip(sorted(dashboards, key=lambda c: c["metadata"]["name"]), sources, strict=True):
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][source.name]) == json.loads(source.read_text())
    assert {m["metadata"]["name"] for m in by_kind(objs, "PodMonitor")} == {
        "kubeforge-gateways",
        "kubeforge-tritons",
    }
    assert len(by_kind(objs, "ServiceMonitor")) == len(by_kind(objs, "NetworkPolicy")) == 1
    defaults = render()
    assert not [o for o in defaults if o["kind"] in PROMETHEUS_OPERATOR_KINDS | {"NetworkPolicy"}]


def test_runbook_links_point_where_the_values_say_for_shared_and_per_deployment_alerts() -> None:
    def runbooks(objs: list[dict[str, Any]]) -> dict[str, str]:
        groups = one(objs, "PrometheusRule")["spec"]["groups"]
        return {r["alert"]: r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r}

    enabled = ("--set", "monitoring.prometheusRule.enabled=true")
    by_default = runbooks(render(*enabled))
    assert by_default == {alert: alert_rules.runbook_url(alert) for alert in by_default}
    objs = render(*enabled, "--set", "monitoring.runbookUrl=https://wiki.example/ml/runbooks/")
    linked = runbooks(objs)
    assert len(linked) >= 10
    assert linked == {alert: f"https://wiki.example/ml/runbooks/{alert}.md" for alert in linked}
    # The operator writes each deployment's own alerts (rules.deployment_rule) with the same base.
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFORGE_RUNBOOK_URL"] == "https://wiki.example/ml/runbooks/"
    refused = helm("template", "kubeforge", str(CHART), "--set", "monitoring.runbookUrl=wiki page", check=False)
    assert refused.returncode != 0 and "runbookUrl" in refused.stderr


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_the_operator_is_granted_exactly_what_its_code_uses() -> None:
    objs = render()
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    bound = {
        b["roleRef"]["name"]
        for b in by_kind(objs, "ClusterRoleBinding")
        if {"kind": "ServiceAccount", "name": sa, "namespace": "kubeforge"} in b["subjects"]
    }
    roles = [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"] in bound]
    granted = grants([rule for role in roles for rule in role["rules"]])
    assert not [g for g in granted if "*" in g], "no wildcards"
    wanted = permissions.pairs(permissions.NAMESPACED) | permissions.pairs(permissions.CLUSTER)
    assert granted - wanted == set(), "granted but not used by the operators"
    assert wanted - granted == set(), "used by the operators but not granted"


def test_watching_some_namespaces_grants_roles_there_only() -> None:
    objs = render("--set", "operator.watchNamespaces={team-a,team-b}")
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role["rules"]) == permissions.pairs(permissions.NAMESPACED)
    cluster = [r for r in by_kind(objs, "ClusterRole") if r["metadata"]["name"] == "kubeforge-discovery"]
    assert grants(cluster[0]["rules"]) == permissions.pairs(permissions.CLUSTER) | permissions.pairs(
        permissions.CLUSTER_WITH_NAMESPACES
    )
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(args)


def test_namespace_users_get_the_three_kinds_through_aggregated_roles() -> None:
    objs = render()
    edit = one(objs, "ClusterRole", "kubeforge-edit")
    view = one(objs, "ClusterRole", "kubeforge-view")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {v for _, _, v in grants(view["rules"])} == {"get", "list", "watch"}
    assert {r for _, r, _ in grants(edit["rules"])} == {"trainingjobs", "modeldeployments", "featureviews"}
