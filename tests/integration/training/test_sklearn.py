"""scikit-learn TrainingJobs against a real MLflow server: a classifier and a regressor on scikit-learn's bundled
datasets, registered per the model contract with an ONNX export that reproduces the original model, and
the estimator mistakes a user makes, refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import onnxruntime
import pytest
from mlflow.tracking import MlflowClient

from kubeforge.api.trainingjob import DatasetSpec
from kubeforge.core import modelcontract as contract
from kubeforge.training import datasets
from kubeforge.training.main import main
from tests.unit.training import data

pytestmark = pytest.mark.integration


def _train(spec: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["--spec", str(spec), "--tracking-uri", tracking_uri])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])["kubeforge.result"]


def _onnx(tracking_uri: str, run_id: str, tmp: Path) -> onnxruntime.InferenceSession:
    local = MlflowClient(tracking_uri).download_artifacts(run_id, contract.ONNX_ARTIFACT, str(tmp))
    return onnxruntime.InferenceSession(local, providers=["CPUExecutionProvider"])


def test_classifier_registers_an_onnx_version_with_the_contract(
    mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = data.write(data.breast_cancer(), tmp_path / "breast_cancer.csv", "csv")
    model = {
        "name": "bc-gbt",
        "framework": "sklearn",
        "estimator": "GradientBoostingClassifier",
        "params": {"n_estimators": 50, "max_depth": 2},
    }
    spec = data.spec_file(tmp_path / "spec.json", csv, model=model, register={"alias": "candidate"})
    result = _train(spec, mlflow.url, capsys)
    assert result["metrics"]["accuracy"] > 0.9

    client = MlflowClient(mlflow.url)
    version = client.get_model_version_by_alias("bc-gbt", "candidate")
    assert version.version == result["modelVersion"]
    tags = version.tags
    assert tags[contract.TAG_FRAMEWORK] == "sklearn"
    assert contract.model_format(tags) == "onnx"
    assert tags[contract.TAG_TASK] == "classification"
    assert json.loads(tags[contract.TAG_CLASSES]) == [0, 1]
    assert float(tags[contract.TAG_METRIC_PREFIX + "accuracy"]) == result["metrics"]["accuracy"]
    run = client.get_run(result["runId"])
    assert run.data.params["param.n_estimators"] == "50"
    assert run.data.metrics["accuracy"] == result["metrics"]["accuracy"]

    validation = datasets.load(DatasetSpec(uri=str(csv), target="target"), "classification")
    original = mlflow_sklearn_load(mlflow.url, "models:/bc-gbt@candidate")
    expected = original.predict_proba(validation.x_val)
    accuracy = float((expected.argmax(1) == validation.y_val).mean())
    assert accuracy == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)

    session = _onnx(mlflow.url, result["runId"], tmp_path / "onnx")
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == [(contract.INPUT_NAME, 30)]
    assert [o.name for o in session.get_outputs()] == [contract.OUTPUT_NAME]
    (got,) = session.run(None, {contract.INPUT_NAME: validation.x_val})
    assert got.dtype == np.float32 and got.shape == (len(validation.x_val), 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    info = mlflow_model_info(mlflow.url, result["modelUri"])
    assert "sklearn" in info.flavors
    (given,), (returned,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (given.name, given.type, given.shape) == (contract.INPUT_NAME, np.dtype(np.float32), (-1, 30))
    assert (returned.name, returned.type, returned.shape) == (contract.OUTPUT_NAME, np.dtype(np.float32), (-1, 2))
    baseline_file = client.download_artifacts(result["runId"], contract.BASELINE_ARTIFACT, str(tmp_path / "b"))
    baseline = contract.Baseline.model_validate_json(Path(baseline_file).read_text())
    assert baseline.rows == len(validation.x_train)


def test_regressor_registers_an_onnx_version_returning_values(
    mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parquet = data.write(data.diabetes(), tmp_path / "diabetes.parquet", "parquet")
    model = {"name": "diabetes-rf", "framework": "sklearn", "estimator": "RandomForestRegressor", "task": "regression"}
    model["params"] = {"n_estimators": 30, "max_depth": 6}
    spec = data.spec_file(tmp_path / "spec.json", parquet, target="progression", model=model)
    result = _train(spec, mlflow.url, capsys)
    assert result["metrics"]["r2"] > 0.2

    validation = datasets.load(DatasetSpec(uri=str(parquet), target="progression"), "regression")
    original = mlflow_sklearn_load(mlflow.url, result["modelUri"])
    expected = original.predict(validation.x_val)
    (got,) = _onnx(mlflow.url, result["runId"], tmp_path / "onnx").run(None, {contract.INPUT_NAME: validation.x_val})
    assert got.shape == (len(validation.x_val), 1)
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-4, atol=1e-3)
    rmse = float(np.sqrt(((expected - validation.y_val) ** 2).mean()))
    assert rmse == pytest.approx(result["metrics"]["rmse"], rel=1e-4)
    assert (
        MlflowClient(mlflow.url).get_model_version("diabetes-rf", result["modelVersion"]).tags[contract.TAG_TASK]
        == "regression"
    )


@pytest.mark.parametrize(
    ("model", "target", "message"),
    [
        (
            {"estimator": "GradientBoostingClasifier"},
            "target",
            "spec.model.estimator: 'GradientBoostingClasifier' is not a scikit-learn classifier or regressor",
        ),
        (
            {"estimator": "RandomForestRegressor"},
            "target",
            "spec.model.estimator: RandomForestRegressor is a regressor, but spec.model.task is classification",
        ),
        (
            {"estimator": "RandomForestClassifier", "task": "regression"},
            "progression",
            "spec.model.estimator: RandomForestClassifier is a classifier, but spec.model.task is regression",
        ),
        (
            {"estimator": "RandomForestClassifier", "params": {"n_estimators": 0}},
            "target",
            "spec.model.params: The 'n_estimators' parameter of RandomForestClassifier must be",
        ),
        ({"estimator": "LogisticRegression", "architecture": "mlp"}, "target", "spec.model: "),
        ({"estimator": "no_such_module:factory"}, "target", "spec.model.estimator: cannot import module"),
        (
            {"framework": "xgboost", "estimator": "GradientBoostingClassifier"},
            "target",
            "spec.model.estimator: 'GradientBoostingClassifier' is not an estimator of xgboost; one of XGBClassifier",
        ),
        (
            {"framework": "lightgbm", "estimator": "LGBMRegressor"},
            "target",
            "spec.model.estimator: LGBMRegressor is a regressor, but spec.model.task is classification",
        ),
    ],
)
def test_estimator_mistakes_name_the_field(
    model: dict[str, Any], target: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = data.diabetes() if target == "progression" else data.breast_cancer()
    csv = data.write(frame, tmp_path / "data.csv", "csv")
    spec = data.spec_file(
        tmp_path / "spec.json", csv, target=target, model={"name": "m", "framework": "sklearn"} | model
    )
    # No MLflow behind this URI: every mistake is found before the trainer talks to it.
    assert main(["--spec", str(spec), "--tracking-uri", "http://127.0.0.1:9"]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("framework", "estimator", "stored"),
    [("xgboost", "XGBClassifier", "model.ubj"), ("lightgbm", "LGBMClassifier", "model.skops")],
)
def test_gradient_boosting_libraries_register_their_own_flavour_without_pickle(
    framework: str, estimator: str, stored: str, mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = data.write(data.breast_cancer(), tmp_path / "breast_cancer.csv", "csv")
    model = {"name": f"bc-{framework}", "framework": framework, "estimator": estimator, "params": {"n_estimators": 30}}
    result = _train(data.spec_file(tmp_path / "spec.json", csv, model=model), mlflow.url, capsys)
    assert result["metrics"]["accuracy"] > 0.9

    client = MlflowClient(mlflow.url)
    tags = client.get_model_version(model["name"], result["modelVersion"]).tags
    assert (tags[contract.TAG_FRAMEWORK], contract.model_format(tags)) == (framework, "onnx")
    assert client.get_run(result["runId"]).data.params["estimator_class"].endswith(estimator)
    info = mlflow_model_info(mlflow.url, result["modelUri"])
    assert framework in info.flavors
    files = [f.path for f in client.list_artifacts(result["runId"], contract.MODEL_ARTIFACT_PATH)]
    assert f"{contract.MODEL_ARTIFACT_PATH}/{stored}" in files, files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]

    validation = datasets.load(DatasetSpec(uri=str(csv), target="target"), "classification")
    mlflow_lib_flavour = __import__(f"mlflow.{framework}", fromlist=["load_model"])
    expected = mlflow_lib_flavour.load_model(result["modelUri"]).predict_proba(validation.x_val)
    (got,) = _onnx(mlflow.url, result["runId"], tmp_path / "onnx").run(None, {contract.INPUT_NAME: validation.x_val})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def mlflow_sklearn_load(tracking_uri: str, uri: str) -> Any:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.sklearn.load_model(uri)


def mlflow_model_info(tracking_uri: str, uri: str) -> Any:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.models.get_model_info(uri)
