"""The trainer against a real MLflow server: formats, registration per the model contract,
resume after a kill, and two-process DistributedDataParallel."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from kubeforge.api.trainingjob import DatasetSpec
from kubeforge.core import modelcontract as contract
from kubeforge.training import datasets
from kubeforge.training.main import main
from tests.conftest import REPO
from tests.unit.training import data

pytestmark = pytest.mark.integration


def _result(stdout: str) -> dict[str, Any]:
    """The {"kubeforge.result": ...} line, which must be the last line of stdout."""
    return json.loads(stdout.strip().splitlines()[-1])["kubeforge.result"]


def _train(spec: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    code = main(["--spec", str(spec), "--tracking-uri", tracking_uri, *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    return _result(out)


def _spawn(spec: Path, tracking_uri: str, *launcher: str) -> subprocess.Popen[str]:
    argv = [sys.executable, *launcher, "-m", "kubeforge.training.main", "--spec", str(spec)]
    return subprocess.Popen(
        [*argv, "--tracking-uri", tracking_uri],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def test_csv_run_registers_a_version_that_predicts_with_the_logged_accuracy(
    mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = data.write(data.breast_cancer(), tmp_path / "breast_cancer.csv", "csv")
    spec = data.spec_file(
        tmp_path / "spec.json",
        csv,
        model={"name": "breast-cancer", "architecture": "mlp", "hyperparameters": {"epochs": 8, "hiddenUnits": [16]}},
        register={"alias": "candidate", "tags": {"team": "risk"}},
    )
    result = _train(spec, mlflow.url, capsys, "--namespace", "ml", "--name", "bc-mlp", "--uid", "u-123")

    client = MlflowClient(mlflow.url)
    version = client.get_model_version_by_alias("breast-cancer", "candidate")
    run = client.get_run(result["runId"])
    assert version.version == result["modelVersion"]
    assert result["modelUri"] == f"models:/breast-cancer/{version.version}"
    assert run.data.metrics["accuracy"] == result["metrics"]["accuracy"]
    assert result["metrics"]["accuracy"] > 0.9

    validation = datasets.load(DatasetSpec(uri=str(csv), target="target"), "classification")
    mlflow_module = mlflow_pytorch_load(mlflow.url, "models:/breast-cancer@candidate")
    probabilities = mlflow_module(torch.as_tensor(validation.x_val)).numpy()
    accuracy = float((probabilities.argmax(1) == validation.y_val).mean())
    assert accuracy == pytest.approx(run.data.metrics["accuracy"], abs=1e-6)

    artifacts = Path(client.download_artifacts(result["runId"], "kubeforge", str(tmp_path / "artifacts")))
    scripted = torch.jit.load(str(artifacts.parent / contract.TORCHSCRIPT_ARTIFACT))
    np.testing.assert_allclose(scripted(torch.as_tensor(validation.x_val)).numpy(), probabilities, rtol=1e-5)
    baseline = contract.Baseline.model_validate_json((artifacts.parent / contract.BASELINE_ARTIFACT).read_text())
    assert baseline.rows == len(validation.x_train)
    assert [h.name for h in baseline.features] == validation.features

    signature = mlflow_model_info(mlflow.url, result["modelUri"]).signature
    (given,), (returned,) = signature.inputs.inputs, signature.outputs.inputs
    assert (given.name, given.type, given.shape) == (contract.INPUT_NAME, np.dtype(np.float32), (-1, 30))
    assert (returned.name, returned.type, returned.shape) == (contract.OUTPUT_NAME, np.dtype(np.float32), (-1, 2))

    tags = version.tags
    assert tags[contract.TAG_DATASET_SHA256] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert tags[contract.TAG_DATASET_URI] == str(csv)
    assert tags[contract.TAG_DATASET_ROWS] == "569"
    assert json.loads(tags[contract.TAG_FEATURES]) == validation.features
    assert json.loads(tags[contract.TAG_CLASSES]) == [0, 1]
    assert (tags[contract.TAG_JOB_NAMESPACE], tags[contract.TAG_JOB_NAME], tags[contract.TAG_JOB_UID]) == (
        "ml",
        "bc-mlp",
        "u-123",
    )
    assert tags[contract.TAG_TASK] == "classification"
    assert float(tags[contract.TAG_METRIC_PREFIX + "f1"]) == result["metrics"]["f1"]
    assert tags["team"] == "risk"


def mlflow_pytorch_load(tracking_uri: str, uri: str) -> torch.nn.Module:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pytorch.load_model(uri)


def mlflow_model_info(tracking_uri: str, uri: str) -> Any:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.models.get_model_info(uri)


def test_json_multiclass_with_string_labels_and_a_user_model(
    mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data.write(data.iris(), tmp_path / "iris.json", "json")
    model = {
        "name": "iris",
        "entrypoint": "tests.unit.training.usermodels:build",
        "args": {"width": "16"},
        "hyperparameters": {"epochs": 30, "learningRate": 0.05, "batchSize": 16},
    }
    result = _train(data.spec_file(tmp_path / "spec.json", path, model=model), mlflow.url, capsys)
    version = MlflowClient(mlflow.url).get_model_version("iris", result["modelVersion"])
    assert json.loads(version.tags[contract.TAG_CLASSES]) == ["setosa", "versicolor", "virginica"]
    assert result["metrics"]["accuracy"] > 0.85


def test_parquet_regression(mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data.write(data.diabetes(), tmp_path / "diabetes.parquet", "parquet")
    model = {
        "name": "diabetes",
        "architecture": "logistic",
        "task": "regression",
        "hyperparameters": {"epochs": 30, "learningRate": 0.05, "batchSize": 32},
    }
    result = _train(data.spec_file(tmp_path / "spec.json", path, "progression", model=model), mlflow.url, capsys)
    assert set(result["metrics"]) == {"rmse", "mae", "r2"}
    assert result["metrics"]["r2"] > 0.3
    assert 30 < result["metrics"]["rmse"] < 80  # in the target's units (it ranges 25..346)
    version = MlflowClient(mlflow.url).get_model_version("diabetes", result["modelVersion"])
    assert version.tags[contract.TAG_TASK] == "regression"
    assert contract.TAG_CLASSES not in version.tags


def _epochs_run(stdout: str) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("epoch ")]


def test_killed_trainer_resumes_from_its_checkpoint_in_the_same_run(mlflow: Any, tmp_path: Path) -> None:
    csv = data.write(data.breast_cancer(), tmp_path / "bc.csv", "csv")
    checkpoints = tmp_path / "checkpoints"
    epochs = 60
    spec = data.spec_file(
        tmp_path / "spec.json",
        csv,
        model={"name": "resumed", "architecture": "mlp", "hyperparameters": {"epochs": epochs, "batchSize": 8}},
        checkpoint={"uri": str(checkpoints), "everyEpochs": 3},
    )
    first = _spawn(spec, mlflow.url)
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("epoch-*.pt")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    out, err = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, err
    killed_after = _epochs_run(out)
    assert killed_after and killed_after[-1] < epochs
    first_run = out.splitlines()[0].split()[2]

    second = _spawn(spec, mlflow.url)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    resumed = _epochs_run(out)
    assert resumed[0] > 1
    assert resumed[-1] == epochs
    assert resumed == list(range(resumed[0], epochs + 1))
    assert len(resumed) < epochs
    assert out.splitlines()[0].startswith(f"resuming run {first_run} after epoch {resumed[0] - 1}")
    result = _result(out)
    assert result["runId"] == first_run
    history = MlflowClient(mlflow.url).get_metric_history(first_run, "val_accuracy")
    assert {m.step for m in history} == set(range(1, epochs + 1))


def test_two_process_ddp_registers_exactly_one_version(mlflow: Any, tmp_path: Path) -> None:
    csv = data.write(data.breast_cancer(), tmp_path / "bc.csv", "csv")
    spec = data.spec_file(
        tmp_path / "spec.json",
        csv,
        model={"name": "ddp", "architecture": "logistic", "hyperparameters": {"epochs": 4, "learningRate": 0.05}},
        replicas=2,
    )
    proc = _spawn(spec, mlflow.url, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    results = [line for line in out.splitlines() if line.startswith('{"kubeforge.result"')]
    assert len(results) == 1
    assert _epochs_run(out) == [1, 2, 3, 4]
    versions = MlflowClient(mlflow.url).search_model_versions("name = 'ddp'")
    assert [v.version for v in versions] == [json.loads(results[0])["kubeforge.result"]["modelVersion"]]
    assert json.loads(results[0])["kubeforge.result"]["metrics"]["accuracy"] > 0.9
