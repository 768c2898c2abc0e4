"""A burst of more resources than the operator works on at once (kopf's worker limit, ``runtime.WORKERS``), against
the real API server and MLflow: the ones past the limit wait in the watch, none is dropped. No kubelet runs here,
so each ModelDeployment gets its children and waits for its Triton, as a status that says so."""

from __future__ import annotations

from collections import Counter

import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.operators.runtime import WORKERS
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_operator_metrics import GROUP, PLURAL, VERSION, create_md

pytestmark = pytest.mark.integration
BURST = WORKERS + 30


def test_more_deployments_at_once_than_the_operator_works_on_all_get_children_and_a_status(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow
) -> None:
    model = f"burst-{namespace}"  # registered models are global; namespaces are unique
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    registry.create_registered_model(model)
    registry.create_model_version(model, source="s3://models/none")
    for i in range(BURST):
        create_md(api, namespace, f"md-{i}", model={"name": model, "version": 1})
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)

    def deployments() -> set[str]:
        return {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}

    def reasons() -> Counter[str]:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        ready = [c for md in items for c in (md.get("status") or {}).get("conditions", []) if c["type"] == "Ready"]
        return Counter(c["reason"] for c in ready)

    wanted = {f"md-{i}-{part}" for i in range(BURST) for part in ("v1", "gateway")}
    wait_for(lambda: wanted <= deployments(), 180, f"the Triton and gateway Deployments of {BURST} ModelDeployments")
    wait_for(lambda: reasons() == Counter({"WaitingForStable": BURST}), 60, f"{BURST} statuses waiting for Triton")
