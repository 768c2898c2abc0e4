"""A ModelDeployment whose gateway runs several replicas, with the real operator, runner, Tritons and gateways."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.core import kube
from kubeforge.local.demo import Traffic
from kubeforge.local.runner import endpoints
from kubeforge.operators.deployment import retrain as rt
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_modeldeployment_operator import (
    ROWS,
    create_md,
    deployments,
    model,
    ready,
    status,
)
from tests.integration.operators.test_retrain import retrains
from tests.integration.serving.conftest import body

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(mlflow) -> Iterator[MlflowClient]:
    yield MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)


def gateway_replicas(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    """Each ready gateway pod's HTTP address, from its Service's EndpointSlices."""
    selector = f"{endpoints.SERVICE_NAME}={name}-gateway"
    slices = kube.list_objects(api, endpoints.api_version(api), "EndpointSlice", namespace, selector)
    return sorted(
        f"http://{endpoint['addresses'][0]}:{port['port']}"
        for s in slices
        for port in s.get("ports") or []
        if port.get("name") == "http"
        for endpoint in s.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready", True)
    )


def test_canary_analysis_adds_up_every_gateway_replica(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    """Two gateway replicas (spec.gateway.replicas) each take half the traffic. The canary needs more requests per
    interval (minRequests) than either replica sees alone, so it is promoted only because the analysis adds up what
    every replica counted; no request fails. Then feedback labels join across the replicas."""
    ns = runner_namespace
    model(mlflow, registry, "twin", [0.0, 0.0], {"champion": 1})
    canary = {
        "model": {"name": "twin", "alias": "candidate"},
        "steps": [{"weight": 50, "pause": "4s"}],
        "analysis": {"interval": "2s", "minRequests": 75, "metrics": [{"name": "error-rate", "max": 0.01}]},
    }
    create_md(api, ns, "twin", model={"name": "twin", "alias": "champion"}, canary=canary, gateway={"replicas": 2})
    ready(api, ns, "twin")
    wait_for(lambda: len(gateway_replicas(api, ns, "twin")) == 2, 120, "both gateway replicas ready")
    assert client.AppsV1Api(api).read_namespaced_deployment("twin-gateway", ns).spec.replicas == 2
    # 50 requests a second at each replica: 50 canary requests per 2 s interval at each, 100 in all.
    callers = [Traffic(url, "twin", ROWS, rate=50) for url in gateway_replicas(api, ns, "twin")]
    for caller in callers:
        caller.start()
    try:
        registry.set_registered_model_alias("twin", "candidate", "2")
        wait_for(lambda: status(api, ns, "twin").get("stableVersion") == "2", 120, "the canary promoted")
    finally:
        for caller in callers:
            caller.stop()
    assert all(caller.samples for caller in callers), "both replicas answered"
    assert not [s for caller in callers for s in caller.samples if not s.ok]
    history = status(api, ns, "twin").get("history") or []
    assert any(h.get("action") == "Promote" and h.get("version") == "2" for h in history), history
    assert "twin-v2" in deployments(api, ns)

    # A label reaches whichever replica the Service picks: the one that did not answer asks the one that did (the
    # operator names every ready gateway pod in the route table), and the label joins there.
    first, second = gateway_replicas(api, ns, "twin")

    def joins_across_replicas() -> bool:
        answer = httpx.post(f"{first}/v2/models/twin/infer", content=body([ROWS[0]]))
        label = [{"id": answer.headers["kubeforge-request-id"], "label": 0}]
        return httpx.post(f"{second}/v2/models/twin/feedback", json=label).json()["joined"] == 1

    wait_for(joins_across_replicas, 60, "a label sent to one gateway replica joins the answer the other gave")


def test_wrong_labels_at_one_gateway_replica_start_an_accuracy_retrain(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, registry
) -> None:
    """spec.retrain's accuracy trigger reads every gateway replica and takes the worst: labels saying each answer of
    one replica was wrong start a retrain, though the other replica never saw a label."""
    ns = runner_namespace
    model(mlflow, registry, "lapse", [0.0, 0.0], {"champion": 1})
    template = {
        "model": {"name": "lapse", "architecture": "logistic"},
        "dataset": {"uri": "/nonexistent/lapse.csv", "target": "y"},
    }
    create_md(
        api,
        ns,
        "lapse",
        model={"name": "lapse", "alias": "champion"},
        gateway={"replicas": 2},
        monitoring={"feedback": {"minLabels": 5}},
        retrain={"trainingJob": {"spec": template}, "triggers": {"accuracy": {"below": 0.9, "for": "1s"}}},
    )
    ready(api, ns, "lapse")
    wait_for(lambda: len(gateway_replicas(api, ns, "lapse")) == 2, 120, "both gateway replicas ready")
    _, second = gateway_replicas(api, ns, "lapse")  # not the address status.url names
    for row in ROWS[:10]:
        answer = httpx.post(f"{second}/v2/models/lapse/infer", content=body([row]))
        scores = answer.json()["outputs"][0]["data"]
        wrong = 0 if scores[1] > scores[0] else 1
        label = [{"id": answer.headers["kubeforge-request-id"], "label": wrong}]
        assert httpx.post(f"{second}/v2/models/lapse/feedback", json=label).json()["joined"] == 1

    made = wait_for(lambda: retrains(api, ns), 60, "the accuracy-triggered retrain")
    assert made[0]["metadata"]["labels"][rt.TRIGGER] == "accuracy"
    last = wait_for(lambda: status(api, ns, "lapse").get("lastRetrain"), 30, "status.lastRetrain")
    assert last["trigger"] == "accuracy" and last["value"] == 0.0, last
