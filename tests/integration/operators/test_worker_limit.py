"""An operator started with more objects than its worker limit handles them all (runtime.WorkerLimit): the limit
holds only once kopf has indexed what was there at start, where a fixed one would stop the operator for good."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_recreate import create_md, md_children
from tests.integration.serving.conftest import Threshold, register

pytestmark = pytest.mark.integration
LIMIT = 2


@pytest.fixture
def limited(operator: Operator, tmp_path) -> Iterator[Operator]:
    """The session's operator stopped, one with a worker limit of LIMIT in its place, the session's back after."""
    operator.stop()
    own = Operator(
        operator.kubeconfig, operator.mlflow_url, tmp_path / "operator.log", env={"KUBEFORGE_WORKER_LIMIT": str(LIMIT)}
    )
    try:
        own.start()
        yield own
    finally:
        own.stop()
        operator.start()


def test_an_operator_restarted_with_more_objects_than_its_worker_limit_handles_them_all(
    limited: Operator, api: client.ApiClient, namespace: str, mlflow
) -> None:
    register(mlflow.url, "limited", Threshold(0.0, 1.0))
    names = [f"many-{i}" for i in range(3 * LIMIT)]
    for name in names:
        create_md(api, namespace, name, "limited")
    for name in names:
        wait_for(lambda name=name: len(md_children(api, namespace, name)) >= 4, 30, f"{name}'s children")
    limited.stop()
    limited.start()  # 6 ModelDeployments and 12 Deployments to index, two workers at a time once indexed
    create_md(api, namespace, "after", "limited")
    wait_for(lambda: len(md_children(api, namespace, "after")) >= 4, 30, "a new one's children")
    # Every old one is handled too: a Deployment deleted by hand comes back.
    apps = client.AppsV1Api(api)
    for name in names:
        apps.delete_namespaced_deployment(f"{name}-gateway", namespace, _preload_content=False)
    for name in names:
        wait_for(lambda name=name: f"Deployment/{name}-gateway" in md_children(api, namespace, name), 30, name)
