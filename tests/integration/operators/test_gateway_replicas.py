"""A ModelDeployment whose gateway runs several replicas, with the real operator, runner, Tritons and gateways."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.core import kube
from kubeforge.local.demo import Traffic
from kubeforge.local.runner import endpoints
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_modeldeployment_operator import (
    ROWS,
    create_md,
    deployments,
    model,
    ready,
    status,
)

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
    every replica counted; no request fails."""
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
