"""The ModelDeployment operator as a real process against a real API server and real MLflow.

No kubelet runs here: the tests mark Deployments available and write the Services'
Endpoints themselves (as envtest users do), with the operator addressing Triton by
endpoints as in the local runtime. The analysis path with real gateway and Triton
processes is covered by the local runtime's end-to-end test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.core import kube
from tests.integration.operators.conftest import Operator, wait_for

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "kubeforge.dev", "v1alpha1", "modeldeployments"
MD_LABEL, VERSION_LABEL = "kubeforge.dev/modeldeployment", "kubeforge.dev/model-version"


@pytest.fixture(scope="module")
def registry(mlflow) -> Iterator[MlflowClient]:
    yield MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)


def register(registry: MlflowClient, name: str, versions: int, aliases: dict[str, int]) -> None:
    """Registered versions with aliases; their content does not matter to the operator."""
    registry.create_registered_model(name)
    for _ in range(versions):
        registry.create_model_version(name, source="s3://models/unused", tags={"kubeforge.task": "classification"})
    for alias, version in aliases.items():
        registry.set_registered_model_alias(name, alias, str(version))


def create_md(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def cond(api: client.ApiClient, namespace: str, name: str, type_: str) -> dict[str, Any]:
    return next((c for c in status(api, namespace, name).get("conditions", []) if c["type"] == type_), {})


def deployments(api: client.ApiClient, namespace: str) -> list[str]:
    return sorted(d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items)


def play_kubelet(api: client.ApiClient, namespace: str) -> None:
    """Mark every Deployment available and give every Service a 127.0.0.1 EndpointSlice."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    slices = kube.resource(api, "discovery.k8s.io", "EndpointSlice")
    for dep in apps.list_namespaced_deployment(namespace).items:
        if not dep.status.available_replicas:
            apps.patch_namespaced_deployment_status(
                dep.metadata.name,
                namespace,
                {"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}},
            )
    for svc in core.list_namespaced_service(namespace).items:
        port = 20000 + sum(map(ord, svc.metadata.name)) % 10000
        body = {
            "apiVersion": slices.group_version,
            "kind": "EndpointSlice",
            "metadata": {
                "name": svc.metadata.name,
                "namespace": namespace,
                "labels": {**svc.metadata.labels, "kubernetes.io/service-name": svc.metadata.name},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
        kube.apply(api, body)


def settle(api: client.ApiClient, namespace: str, check, what: str, timeout: float = 40) -> Any:
    def step():
        play_kubelet(api, namespace)
        return check()

    return wait_for(step, timeout=timeout, what=what)


def test_serves_the_aliased_version_and_reports_ready(
    operator: Operator, api: client.ApiClient, namespace: str, registry
) -> None:
    register(registry, "serve-me", 2, {"champion": 2})
    create_md(api, namespace, "serve-me", model={"name": "serve-me", "alias": "champion"})
    settle(api, namespace, lambda: cond(api, namespace, "serve-me", "Ready").get("status") == "True", "Ready")
    st = status(api, namespace, "serve-me")
    assert st["stableVersion"] == "2"
    assert st["traffic"] == [{"version": "2", "role": "stable", "percent": 100}]
    assert st["url"].startswith("http://127.0.0.1:") and st["url"].endswith("/v2/models/serve-me")
    assert deployments(api, namespace) == ["serve-me-gateway", "serve-me-v2"]
    routes = client.CoreV1Api(api).read_namespaced_config_map("serve-me-routes", namespace).data["routes.yaml"]
    assert "tritonModel: serve-me" in routes and "version: '2'" in routes


def test_canary_starts_and_an_operator_restart_resumes_the_same_step(
    operator: Operator, api: client.ApiClient, namespace: str, registry
) -> None:
    register(registry, "roll", 2, {"champion": 1, "candidate": 2})
    canary = {
        "model": {"name": "roll", "alias": "candidate"},
        "steps": [{"weight": 30, "pause": "1h"}, {"weight": 100}],
    }
    create_md(api, namespace, "roll", model={"name": "roll", "alias": "champion"}, canary=canary)
    settle(api, namespace, lambda: status(api, namespace, "roll").get("canaryWeight") == 30, "step 1 at 30%")
    before = status(api, namespace, "roll")
    assert before["canaryVersion"] == "2" and before["currentStep"] == 0
    assert {t["version"]: t["percent"] for t in before["traffic"]} == {"1": 70, "2": 30}
    names = deployments(api, namespace)
    operator.stop()
    operator.start()
    time.sleep(3)  # the new operator has listed everything and ticked its timers
    after = status(api, namespace, "roll")
    for key in ("canaryVersion", "canaryWeight", "currentStep", "stepStarted", "traffic"):
        assert after[key] == before[key], key
    assert deployments(api, namespace) == names == ["roll-gateway", "roll-v1", "roll-v2"]


def test_moving_the_alias_starts_a_rollout_and_a_missing_version_degrades(
    operator: Operator, api: client.ApiClient, namespace: str, registry
) -> None:
    register(registry, "follow", 3, {"prod": 1})
    create_md(api, namespace, "follow", model={"name": "follow", "alias": "prod"}, followAlias=True)
    settle(api, namespace, lambda: cond(api, namespace, "follow", "Ready").get("status") == "True", "Ready")
    registry.set_registered_model_alias("follow", "prod", "3")
    settle(api, namespace, lambda: status(api, namespace, "follow").get("canaryVersion") == "3", "rollout of v3")
    assert cond(api, namespace, "follow", "Progressing")["status"] == "True"
    registry.delete_registered_model_alias("follow", "prod")
    settle(api, namespace, lambda: cond(api, namespace, "follow", "Degraded").get("status") == "True", "Degraded")
    degraded = cond(api, namespace, "follow", "Degraded")
    assert "alias 'prod'" in degraded["message"] and "does not exist" in degraded["message"]
    assert cond(api, namespace, "follow", "Ready")["status"] == "True", "the stable version keeps serving"
    assert status(api, namespace, "follow")["stableVersion"] == "1"


def test_invalid_specs_are_refused_naming_the_field(
    operator: Operator, api: client.ApiClient, namespace: str, registry
) -> None:
    create_md(
        api,
        namespace,
        "bad-steps",
        model={"name": "nothing", "version": 1},
        canary={"model": {"name": "nothing", "version": 2}, "steps": [{"weight": 60}, {"weight": 40}]},
    )
    wait_for(lambda: cond(api, namespace, "bad-steps", "Ready").get("reason") == "InvalidSpec", what="InvalidSpec")
    assert "spec.canary" in cond(api, namespace, "bad-steps", "Ready")["message"]
    assert deployments(api, namespace) == []


def test_deleting_removes_everything_it_created(
    operator: Operator, api: client.ApiClient, namespace: str, registry
) -> None:
    register(registry, "doomed", 1, {"champion": 1})
    create_md(api, namespace, "doomed", model={"name": "doomed", "alias": "champion"})
    settle(api, namespace, lambda: cond(api, namespace, "doomed", "Ready").get("status") == "True", "Ready")
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    selector = f"{MD_LABEL}=doomed"
    wait_for(
        lambda: (
            not apps.list_namespaced_deployment(namespace, label_selector=selector).items
            and not core.list_namespaced_service(namespace, label_selector=selector).items
            and not core.list_namespaced_config_map(namespace, label_selector=selector).items
        ),
        what="children removed",
    )
    assert registry.get_model_version_by_alias("doomed", "champion").version == "1", "MLflow untouched"
