"""The operators' /metrics as Prometheus scrapes it, and the PrometheusRule a ModelDeployment owns.

No kubelet runs here: a rollout's Triton Deployments are marked available through their status
subresource, as envtest users do, and model versions are registered in a real MLflow without
artifacts (nothing loads them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.monitoring import rules
from tests.conftest import prometheus_rules_kind
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_trainingjob_operator import PLURAL as TJ_PLURAL
from tests.integration.operators.test_trainingjob_operator import create_tj

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "kubeforge.dev", "v1alpha1", "modeldeployments"
RULES_GROUP, RULES_VERSION, RULES_PLURAL = "monitoring.coreos.com", "v1", "prometheusrules"
SLO = {
    "slo": {"latencyP99Ms": 250, "errorRatePercent": 0.5},
    "monitoring": {"drift": {"psiThreshold": 0.3, "alertAfter": "90s"}},
}


def value(operator: Operator, name: str, **labels: str) -> float | None:
    """The sample of name whose labels include labels, as a scrape of the operator returns it now."""
    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


def create_md(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def delete_md(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def md_status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def test_a_deployments_targets_and_readiness_are_scraped_until_it_goes(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    # The targets come from the spec: the model need not exist, let alone serve.
    create_md(api, namespace, "guarded", model={"name": "not-registered", "version": 1}, **SLO)
    deployment = {"namespace": namespace, "modeldeployment": "guarded"}
    wait_for(lambda: value(operator, rules.SLO_LATENCY_P99, **deployment) == 0.25, what="the p99 target")
    assert value(operator, rules.SLO_ERROR_RATIO, **deployment) == pytest.approx(0.005)
    assert value(operator, rules.DRIFT_PSI_THRESHOLD, **deployment) == 0.3
    not_found = {"kind": "ModelDeployment", "namespace": namespace, "ready": "False", "reason": "ModelNotFound"}
    wait_for(lambda: value(operator, "kubeforge_resources", **not_found) == 1, what="one ModelNotFound deployment")

    patch = {"spec": {"slo": None}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "guarded", patch)
    wait_for(lambda: value(operator, rules.SLO_LATENCY_P99, **deployment) is None, what="the p99 target withdrawn")
    assert value(operator, rules.SLO_ERROR_RATIO, **deployment) is None
    assert value(operator, rules.DRIFT_PSI_THRESHOLD, **deployment) == 0.3, "drift is watched without an SLO"

    delete_md(api, namespace, "guarded")
    wait_for(lambda: value(operator, rules.DRIFT_PSI_THRESHOLD, **deployment) is None, what="the threshold gone")
    wait_for(lambda: value(operator, "kubeforge_resources", **not_found) is None, what="no series left")


def test_a_child_the_api_server_refuses_counts_as_a_reconcile_error(
    operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    before = value(operator, "kubeforge_reconcile_errors_total", kind="TrainingJob") or 0
    create_tj(api, namespace, "refused", nodeSelector={"gpu type": "a100"})  # not a valid label key
    refused = {"kind": "TrainingJob", "namespace": namespace, "phase": "Pending", "reason": "ApplyFailed"}
    wait_for(lambda: value(operator, "kubeforge_resources", **refused) == 1, what="one refused TrainingJob")
    wait_for(
        lambda: (value(operator, "kubeforge_reconcile_errors_total", kind="TrainingJob") or 0) > before,
        what="the failed reconcile counted",
    )
    assert (value(operator, "kubeforge_reconcile_duration_seconds_count", kind="TrainingJob") or 0) > 0
    # It would go on failing, with a back-off, for the rest of the session.
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, TJ_PLURAL, "refused")


def mark_available(api: client.ApiClient, namespace: str, deployment: str, replicas: int) -> None:
    status = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": replicas, "availableReplicas": replicas}
    client.AppsV1Api(api).patch_namespaced_deployment_status(deployment, namespace, {"status": status})


def test_a_rolled_back_canary_is_counted(operator: Operator, api: client.ApiClient, namespace: str, mlflow) -> None:
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    model = f"rollback-{namespace}"  # registered models are global; namespaces are unique
    registry.create_registered_model(model)
    for _ in range(2):
        registry.create_model_version(model, source="s3://models/none")
    canary = {
        "model": {"name": model, "version": 2},
        "steps": [{"weight": 50, "pause": "1h"}],
        "analysis": {"interval": "1s", "failureLimit": 1},
    }
    create_md(api, namespace, "rb", model={"name": model, "version": 1}, canary=canary)
    apps = client.AppsV1Api(api)
    names = {"rb-v1", "rb-v2"}
    wait_for(
        lambda: names <= {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}, 60, "Tritons"
    )
    for name in names:
        mark_available(api, namespace, name, 1)
    wait_for(lambda: md_status(api, namespace, "rb").get("canaryWeight") == 50, what="the canary's step")
    mark_available(api, namespace, "rb-v2", 0)  # the canary's Triton goes down mid-step: a failed check
    wait_for(lambda: md_status(api, namespace, "rb").get("rolledBackVersion") == "2", what="the rollback")
    deployment = {"namespace": namespace, "modeldeployment": "rb"}
    wait_for(lambda: value(operator, "kubeforge_rollbacks_total", **deployment) == 1, what="one rollback counted")
    delete_md(api, namespace, "rb")
    wait_for(lambda: value(operator, "kubeforge_rollbacks_total", **deployment) is None, what="its series gone")


def rule(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(
            RULES_GROUP, RULES_VERSION, namespace, RULES_PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


@pytest.fixture
def prometheus_rules_served(operator: Operator, api: client.ApiClient) -> Iterator[None]:
    """The PrometheusRule CRD installed, and the operator restarted to see it at once (it looks again only every
    few minutes); afterwards both undone, for the tests of a cluster without it."""
    with prometheus_rules_kind(api):
        operator.stop()
        operator.start()
        yield
    operator.stop()
    operator.start()


def test_where_prometheus_rules_are_served_a_deployment_owns_one_with_its_targets_instead_of_gauges(
    prometheus_rules_served: None, operator: Operator, api: client.ApiClient, namespace: str
) -> None:
    md = create_md(api, namespace, "guarded", model={"name": "not-registered", "version": 1}, **SLO)
    found = wait_for(lambda: rule(api, namespace, "guarded-slo"), what="PrometheusRule guarded-slo")
    owner = found["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", md["metadata"]["uid"], True)
    assert found["metadata"]["labels"]["kubeforge.dev/modeldeployment"] == "guarded"
    exprs = {r["alert"] + r["labels"]["severity"]: r["expr"] for g in found["spec"]["groups"] for r in g["rules"]}
    selector = f'{{namespace="{namespace}", modeldeployment="guarded"}}'
    assert f"{rules.error_ratio('1h')}{selector} > 0.072" in exprs["ModelDeploymentErrorBudgetBurncritical"]
    assert f"{rules.error_ratio('6h')}{selector} > 0.03" in exprs["ModelDeploymentErrorBudgetBurnwarning"]
    assert exprs["ModelDeploymentLatencyHighwarning"] == f"{rules.LATENCY_P99}{selector} > 0.25"
    assert exprs["ModelFeatureDriftwarning"] == f"{rules.FEATURE_DRIFT}{selector} > 0.3"
    holds = {r["alert"]: r.get("for") for g in found["spec"]["groups"] for r in g["rules"]}
    assert holds["ModelFeatureDrift"] == holds["ModelPredictionDrift"] == "1m30s", "spec.monitoring.drift.alertAfter"
    # The gauges stay, for dashboards, labelled so the shared rules do not judge it a second time.
    deployment = {"namespace": namespace, "modeldeployment": "guarded"}
    assert value(operator, rules.SLO_LATENCY_P99, **deployment, alerting="shared") is None, "alerts twice"
    assert value(operator, rules.DRIFT_PSI_THRESHOLD, **deployment, alerting="shared") is None
    assert value(operator, rules.SLO_LATENCY_P99, **deployment, alerting="own") == 0.25

    # No garbage collector runs here: the operator deletes the rule when it sees its deployment go.
    delete_md(api, namespace, "guarded")
    wait_for(lambda: rule(api, namespace, "guarded-slo") is None, what="the rule deleted with its deployment")
