"""scikit-learn, XGBoost and LightGBM versions trained by the trainer, exported as ONNX and served by a real
Triton's python backend with onnxruntime, through the gateway: the answers are the original model's, in the
contract's shapes."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow as mlflow_lib
import numpy as np
import pytest
import tritonclient.http as httpclient

from kubeforge.api.modeldeployment import ModelRef
from kubeforge.api.trainingjob import DatasetSpec
from kubeforge.core import modelcontract as mc
from kubeforge.local import triton as local_triton
from kubeforge.serving import export, tritonconfig
from kubeforge.training import datasets
from kubeforge.training.main import main
from tests.unit.training import data

from .conftest import RUNTIME

pytestmark = pytest.mark.integration


@dataclass
class Trained:
    name: str
    version: str
    task: str
    x: np.ndarray  # validation rows
    expected: np.ndarray  # the original model's answers for x, as the contract shapes them


def _train(tracking_uri: str, tmp: Path, frame: Any, target: str, model: dict[str, Any]) -> Trained:
    csv = data.write(frame, tmp / f"{model['name']}.csv", "csv")
    spec = data.spec_file(tmp / f"{model['name']}.json", csv, target=target, model=model)
    log = tmp / f"{model['name']}.out"
    import contextlib

    with log.open("w") as out, contextlib.redirect_stdout(out):
        assert main(["--spec", str(spec), "--tracking-uri", tracking_uri]) == 0
    result = json.loads(log.read_text().strip().splitlines()[-1])["kubeforge.result"]
    task = model.get("task", "classification")
    split = datasets.load(DatasetSpec(uri=str(csv), target=target), task)
    mlflow_lib.set_tracking_uri(tracking_uri)
    # The version's own MLflow flavour (mlflow.sklearn, mlflow.xgboost, mlflow.lightgbm) gives the original model.
    original = importlib.import_module(f"mlflow.{model['framework']}").load_model(result["modelUri"])
    x = split.x_val[:64]
    expected = original.predict_proba(x) if task == "classification" else original.predict(x).reshape(-1, 1)
    return Trained(model["name"], result["modelVersion"], task, x, expected)


@pytest.fixture(scope="module")
def trained(mlflow, tmp_path_factory) -> dict[str, Trained]:
    tmp = tmp_path_factory.mktemp("estimators")
    cancer, diabetes = (data.breast_cancer(), "target"), (data.diabetes(), "progression")
    models = {
        "classifier": (cancer, "sklearn", "GradientBoostingClassifier", {"n_estimators": 40}),
        "regressor": (diabetes, "sklearn", "RandomForestRegressor", {"n_estimators": 20}),
        "xgboost-classifier": (cancer, "xgboost", "XGBClassifier", {"n_estimators": 40, "max_depth": 3}),
        "xgboost-regressor": (diabetes, "xgboost", "XGBRegressor", {"n_estimators": 40}),
        "lightgbm-classifier": (cancer, "lightgbm", "LGBMClassifier", {"n_estimators": 40, "num_leaves": 8}),
        "lightgbm-regressor": (diabetes, "lightgbm", "LGBMRegressor", {"n_estimators": 40}),
    }
    return {
        key: _train(
            mlflow.url,
            tmp,
            frame,
            target,
            {
                "name": f"{key}-served",
                "framework": framework,
                "estimator": estimator,
                "params": params,
                "task": "regression" if key.endswith("regressor") else "classification",
            },
        )
        for key, ((frame, target), framework, estimator, params) in models.items()
    }


@pytest.fixture(scope="module")
def onnx_triton(mlflow, trained, tmp_path_factory) -> Iterator[local_triton.TritonServer]:
    work = tmp_path_factory.mktemp("onnx-triton")
    repo = work / "repo"
    for t in trained.values():
        out = export.export(mlflow.url, ModelRef(name=t.name, version=int(t.version)), repo, RUNTIME)
        assert out.task == t.task
        assert sorted(p.name for p in (repo / t.name / t.version).iterdir()) == ["model.onnx", "model.py"]
    server = local_triton.start(repo, work, models=[t.name for t in trained.values()], venv=local_triton.install())
    yield server
    server.stop()


def _infer(url: str, name: str, x: np.ndarray, version: str = "") -> np.ndarray:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    inp = httpclient.InferInput(mc.INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(name, [inp], model_version=version).as_numpy(mc.OUTPUT_NAME)


def test_onnx_versions_serve_the_original_models_answers_through_triton_and_the_gateway(
    onnx_triton, trained, gateway
) -> None:
    routes = {
        "models": {
            t.name: {"versions": [{"version": t.version, "role": "stable", "url": onnx_triton.url, "weight": 100}]}
            for t in trained.values()
        }
    }
    gw = gateway(routes)
    for t in trained.values():
        n_outputs = t.expected.shape[1]
        for url, version in ((onnx_triton.url, t.version), (gw.url, "")):
            got = _infer(url, t.name, t.x[:8], version)  # RUNTIME's max_batch_size
            assert got.dtype == np.float32 and got.shape == (8, n_outputs)
            scale = max(1.0, float(np.abs(t.expected).max()))
            np.testing.assert_allclose(got, t.expected[:8], rtol=1e-4, atol=1e-5 * scale)
        one = _infer(gw.url, t.name, t.x[:1])
        np.testing.assert_allclose(one, t.expected[:1], rtol=1e-4, atol=1e-5 * scale)
    for classifier in (t for t in trained.values() if t.task == "classification"):
        assert _infer(gw.url, classifier.name, classifier.x[:8]).sum(axis=1) == pytest.approx(np.ones(8), abs=1e-5)


def test_native_flavour_config_runs_onnx_on_the_onnxruntime_backend(mlflow, trained, tmp_path) -> None:
    from kubeforge.api.modeldeployment import TritonRuntime

    t = trained["classifier"]
    runtime = TritonRuntime(backend="pytorch_libtorch", max_batch_size=8)
    export.export(mlflow.url, ModelRef(name=t.name, version=int(t.version)), tmp_path, runtime)
    cfg = tritonconfig.parse((tmp_path / t.name / "config.pbtxt").read_text())
    assert (cfg.platform, cfg.default_model_filename, cfg.backend) == ("onnxruntime_onnx", "model.onnx", "")
    assert [i.name for i in cfg.input] == [mc.INPUT_NAME] and [o.name for o in cfg.output] == [mc.OUTPUT_NAME]
    assert list(cfg.output[0].dims) == [2]
    assert sorted(p.name for p in (tmp_path / t.name / t.version).iterdir()) == ["model.onnx"]
