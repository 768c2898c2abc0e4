"""Serving fixtures: small registered model versions that follow the model contract, a real
tritonserver serving them, and gateway processes in front of it."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from kubeforge.api.modeldeployment import DynamicBatching, ModelRef, TritonRuntime
from kubeforge.core import modelcontract as mc
from kubeforge.local import triton as local_triton
from kubeforge.serving import export

N_FEATURES = 4


class Threshold(torch.nn.Module):
    """Two-class model: class 1 when features[:, 0] > threshold; scale only sharpens the probabilities."""

    def __init__(self, threshold: float, scale: float):
        super().__init__()
        self.threshold = threshold
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, 0] - self.threshold) * self.scale
        return torch.softmax(torch.stack([-d, d], dim=1), dim=1)


def signature(in_dtype: str = "float32"):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(in_dtype), (-1, N_FEATURES), name=mc.INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 2), name=mc.OUTPUT_NAME)]),
    )


def register(tracking_uri: str, name: str, module: torch.nn.Module, sig=None, task: str = "classification") -> str:
    """Log and register a model version the way the trainer does; returns the version."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    scripted = torch.jit.script(module.eval())
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pytorch.log_model(
            scripted,
            name=mc.MODEL_ARTIFACT_PATH,
            signature=sig,
            registered_model_name=name,
            pip_requirements=["torch==2.13.0"],
            serialization_format="pickle",
        )
        path = Path(tmp) / Path(mc.TORCHSCRIPT_ARTIFACT).name
        torch.jit.save(scripted, str(path))
        mlflow.log_artifact(str(path), artifact_path=str(Path(mc.TORCHSCRIPT_ARTIFACT).parent))
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, mc.TAG_TASK, task)
    client.set_model_version_tag(name, version, mc.TAG_FEATURES, json.dumps([f"f{i}" for i in range(N_FEATURES)]))
    client.set_model_version_tag(name, version, mc.TAG_CLASSES, json.dumps(["neg", "pos"]))
    assert run.info.run_id
    return version


@dataclass
class Registered:
    """The classifier's versions: stable and canary agree on every class, shadow disagrees for 0 < x0 <= 0.5."""

    name: str
    stable: str
    canary: str
    shadow: str


RUNTIME = TritonRuntime(max_batch_size=8, dynamic_batching=DynamicBatching(max_queue_delay_microseconds=100))


@pytest.fixture(scope="session")
def registered(mlflow) -> Registered:
    name = "clf"
    return Registered(
        name=name,
        stable=register(mlflow.url, name, Threshold(0.0, 1.0), signature()),
        canary=register(mlflow.url, name, Threshold(0.0, 2.0), signature()),
        shadow=register(mlflow.url, name, Threshold(0.5, 1.0), signature()),
    )


@pytest.fixture(scope="session")
def triton_venv() -> Path:
    return local_triton.install()


def _exported(mlflow_url: str, repo: Path, name: str, versions: list[str]) -> Path:
    for v in versions:
        export.export(mlflow_url, ModelRef(name=name, version=int(v)), repo, RUNTIME)
    return repo


@pytest.fixture(scope="session")
def triton(mlflow, registered, triton_venv, tmp_path_factory) -> Iterator[local_triton.TritonServer]:
    """One Triton serving every version of the classifier."""
    work = tmp_path_factory.mktemp("triton")
    repo = _exported(
        mlflow.url, work / "repo", registered.name, [registered.stable, registered.canary, registered.shadow]
    )
    server = local_triton.start(repo, work, models=[registered.name], venv=triton_venv)
    yield server
    server.stop()


@pytest.fixture
def canary_triton(mlflow, registered, triton_venv, tmp_path) -> Iterator[local_triton.TritonServer]:
    """A second Triton with only the canary version, for tests that kill it."""
    repo = _exported(mlflow.url, tmp_path / "repo", registered.name, [registered.canary])
    server = local_triton.start(repo, tmp_path, models=[registered.name], venv=triton_venv)
    yield server
    server.stop()
