"""What the ModelDeployment operator asks the model registry (a real MLflow), for every deployment of a process.

Deployments created before the version they serve is registered (the demo creates its ModelDeployment as training
starts) wait, and each pass and each tick of the operator's clock asks whether the version exists yet: with many
of them, the registry must be asked once per RESOLVE_TTL, not once per deployment.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from mlflow import MlflowClient

from kubeforge.core.mlflow_rest import MLflowRegistry, ModelVersion, NotFound
from kubeforge.operators.deployment.versions import RESOLVE_TTL, Versions


class Counted(MLflowRegistry):
    """The registry client, counting the lookups it sends to MLflow."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.asked = 0

    def by_alias(self, name: str, alias: str) -> ModelVersion:
        self.asked += 1
        return super().by_alias(name, alias)


def test_deployments_waiting_for_an_unregistered_version_ask_the_registry_once_and_see_it_once_registered(
    mlflow: Any, request: pytest.FixtureRequest
) -> None:
    model = f"waited-{request.node.name[-12:].replace('_', '-')}-{time.time_ns()}"  # registered models are global
    registry = Counted(mlflow.url)
    versions = Versions(registry)

    missing = []
    for _ in range(200):  # 200 deployments' passes, or one clock check over them
        with pytest.raises(NotFound) as err:
            versions.resolve(model, "champion", None)
        missing.append(str(err.value))
    assert registry.asked == 1
    assert len(set(missing)) == 1 and model in missing[0]  # every waiting deployment says what MLflow said

    client = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    client.create_registered_model(model)
    client.create_model_version(model, source="s3://models/none")
    client.set_registered_model_alias(model, "champion", "1")
    time.sleep(RESOLVE_TTL)
    assert [versions.resolve(model, "champion", None) for _ in range(200)] == ["1"] * 200
    assert registry.asked == 2
