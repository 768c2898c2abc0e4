"""`kubeforge model import` against a real MLflow, Triton and gateway: an ONNX model made with skl2onnx and a
TorchScript model trained with torch are registered per the model contract and served with the original models'
answers; a joblib pickle (with --trust) and a skops file register as the scikit-learn flavour; files that are not
what they claim, features that do not fit, a pickle without --trust and a missing file are refused, naming the
option, and leave nothing in MLflow."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import mlflow as mlflow_lib
import mlflow.sklearn as mlflow_sklearn
import numpy as np
import pytest
import skops.io
import torch
import tritonclient.http as httpclient
import yaml
from click.testing import CliRunner, Result
from mlflow.tracking import MlflowClient
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeforge.api.modeldeployment import ModelRef
from kubeforge.cli import main
from kubeforge.core import modelcard
from kubeforge.core import modelcontract as mc
from kubeforge.core.mlflow_rest import MLflowRegistry
from kubeforge.local import triton as local_triton
from kubeforge.operators.deployment.versions import Versions
from kubeforge.serving import export
from kubeforge.training.baseline import compute
from tests.integration.serving.conftest import RUNTIME, Gateway
from tests.unit.training import data

pytestmark = pytest.mark.integration


def _import(tracking_uri: str, *args: str | Path) -> Result:
    return CliRunner().invoke(main, ["model", "import", "--tracking-uri", tracking_uri, *map(str, args)])


@dataclass
class Cancer:
    """scikit-learn's breast cancer data set and a pipeline fitted on it."""

    features: list[str]
    x: np.ndarray
    pipeline: Pipeline
    onnx: Path  # the pipeline through skl2onnx, as its users export it: input "X", probabilities behind a ZipMap
    reference: Path  # the training rows with their target column


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Cancer:
    tmp = tmp_path_factory.mktemp("cancer")
    frame = data.breast_cancer()
    features = [c for c in frame.columns if c != "target"]
    x = frame[features].to_numpy(np.float32)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, frame["target"])
    onnx_file = tmp / "cancer.onnx"
    onnx_file.write_bytes(to_onnx(pipeline, x[:1], target_opset=17).SerializeToString())
    return Cancer(features, x, pipeline, onnx_file, data.write(frame, tmp / "cancer.csv", "csv"))


class Regressor(torch.nn.Module):
    """Diabetes progression from raw features: standardised inside, as the trainer's models are."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0))
        self.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std) * 80.0 + 150.0


@dataclass
class Diabetes:
    features: list[str]
    x: np.ndarray
    module: torch.jit.ScriptModule
    file: Path
    reference: Path


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Diabetes:
    tmp = tmp_path_factory.mktemp("diabetes")
    frame = data.diabetes()
    features = [c for c in frame.columns if c != "progression"]
    x = torch.as_tensor(frame[features].to_numpy(np.float32))
    y = torch.as_tensor(frame["progression"].to_numpy(np.float32)).unsqueeze(1)
    torch.manual_seed(0)
    model = Regressor(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    scripted = torch.jit.script(model.eval())
    torch.jit.save(scripted, str(tmp / "diabetes.pt"))
    return Diabetes(
        features, x.numpy(), scripted, tmp / "diabetes.pt", data.write(frame, tmp / "diabetes.parquet", "parquet")
    )


def _version(tracking_uri: str, name: str, result: Result) -> Any:
    assert result.exit_code == 0, result.output
    assert f"registered models:/{name}/1" in result.output
    assert "kind: ModelDeployment" in result.output
    return MlflowClient(tracking_uri).get_model_version(name, "1")


def _signature(tracking_uri: str, uri: str) -> tuple[Any, Any]:
    mlflow_lib.set_tracking_uri(tracking_uri)
    info = mlflow_lib.models.get_model_info(uri)
    (given,), (returned,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    return info, ((given.name, given.shape), (returned.name, returned.shape))


def _baseline(tracking_uri: str, run_id: str, tmp: Path) -> mc.Baseline:
    local = MlflowClient(tracking_uri).download_artifacts(run_id, mc.BASELINE_ARTIFACT, str(tmp))
    return mc.Baseline.model_validate_json(Path(local).read_text())


def _infer(url: str, name: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    given = httpclient.InferInput(mc.INPUT_NAME, list(x.shape), "FP32")
    given.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return client.infer(name, [given]).as_numpy(mc.OUTPUT_NAME)


def test_onnx_and_torchscript_imports_serve_the_original_models_answers(
    mlflow: Any, cancer: Cancer, diabetes: Diabetes, tmp_path: Path
) -> None:
    # ONNX: the features come from the reference data's columns (it holds exactly the model's 30), classes from
    # the graph; the version is registered under an alias with a description.
    reference = tmp_path / "cancer-features.csv"
    data.write(data.breast_cancer()[cancer.features], reference, "csv")
    args = ("--name", "cancer-onnx", "--file", cancer.onnx, "--task", "classification", "--reference-data", reference)
    use = ("--intended-use", "Second opinions in the teaching clinic.")
    result = _import(mlflow.url, *args, "--alias", "candidate", "--description", "exported by skl2onnx", *use)
    assert "ZipMap" in result.output and "drift baseline of 30 features from 569 rows" in result.output
    version = _version(mlflow.url, "cancer-onnx", result)
    tags = version.tags
    # The MLflow UI shows the description given, then the model card.
    assert version.description.startswith("exported by skl2onnx\n\n# cancer-onnx version 1\n")
    assert "## Origin" in version.description and "Second opinions in the teaching clinic." in version.description
    assert MlflowClient(mlflow.url).get_model_version_by_alias("cancer-onnx", "candidate").version == "1"
    assert (tags[mc.TAG_TASK], tags[mc.TAG_FRAMEWORK], mc.model_format(tags)) == ("classification", "onnx", "onnx")
    assert json.loads(tags[mc.TAG_FEATURES]) == cancer.features and json.loads(tags[mc.TAG_CLASSES]) == [0, 1]
    assert tags[mc.TAG_IMPORTED_FILE] == "cancer.onnx"
    assert tags[mc.TAG_IMPORTED_SHA256] == hashlib.sha256(cancer.onnx.read_bytes()).hexdigest()
    assert tags[mc.TAG_REFERENCE_ROWS] == "569"
    info, signature = _signature(mlflow.url, version.source)
    assert "onnx" in info.flavors
    assert signature == ((mc.INPUT_NAME, (-1, 30)), (mc.OUTPUT_NAME, (-1, 2)))
    assert _baseline(mlflow.url, version.run_id, tmp_path / "b1") == compute(cancer.x, cancer.features)
    shown = CliRunner().invoke(main, ["model", "card", "cancer-onnx", "1", "--json", "--tracking-uri", mlflow.url])
    assert shown.exit_code == 0, shown.output
    card = modelcard.ModelCard.model_validate_json(shown.output)
    assert card.imported is not None and card.imported.file == "cancer.onnx"
    assert card.imported.sha256 == tags[mc.TAG_IMPORTED_SHA256]
    assert card.imported.reference_data is not None and card.imported.reference_data.rows == 569
    assert card.dataset is None and card.training is None and card.metrics == {}
    assert (card.framework, card.task, card.classes) == ("onnx", "classification", ["0", "1"])
    assert [f.name for f in card.features] == cancer.features
    assert card.features[0].mean == pytest.approx(float(cancer.x[:, 0].mean()), rel=1e-4)

    # TorchScript: --features named, the reference data holds the target column too.
    args = ("--name", "diabetes-ts", "--file", diabetes.file, "--task", "regression")
    result = _import(
        mlflow.url, *args, "--features", ",".join(diabetes.features), "--reference-data", diabetes.reference
    )
    version = _version(mlflow.url, "diabetes-ts", result)
    tags = version.tags
    assert (tags[mc.TAG_FRAMEWORK], mc.model_format(tags), tags[mc.TAG_TASK]) == ("torch", "torchscript", "regression")
    assert mc.TAG_CLASSES not in tags and tags[mc.TAG_IMPORTED_FILE] == "diabetes.pt"
    info, signature = _signature(mlflow.url, version.source)
    assert "pytorch" in info.flavors
    assert signature == ((mc.INPUT_NAME, (-1, 10)), (mc.OUTPUT_NAME, (-1, 1)))
    assert _baseline(mlflow.url, version.run_id, tmp_path / "b2") == compute(diabetes.x, diabetes.features)

    # Drift monitoring reads both as it reads a trained version.
    versions = Versions(MLflowRegistry(mlflow.url))
    for name, features in (("cancer-onnx", cancer.features), ("diabetes-ts", diabetes.features)):
        found = versions.baseline(name, "1")
        assert found is not None and found.drift is not None and found.drift.features == features

    # Served by Triton and through the gateway, both answer what the original models answer.
    repo = tmp_path / "repo"
    for name in ("cancer-onnx", "diabetes-ts"):
        export.export(mlflow.url, ModelRef(name=name, version=1), repo, RUNTIME)
    assert sorted(p.name for p in (repo / "cancer-onnx" / "1").iterdir()) == ["model.onnx", "model.py"]
    assert sorted(p.name for p in (repo / "diabetes-ts" / "1").iterdir()) == ["model.pt", "model.py"]
    triton = local_triton.start(repo, tmp_path, models=["cancer-onnx", "diabetes-ts"], venv=local_triton.install())
    gateway = None
    try:
        stable = {"version": "1", "role": "stable", "url": triton.url, "weight": 100}
        routes = {"models": {name: {"versions": [stable]} for name in ("cancer-onnx", "diabetes-ts")}}
        gateway = Gateway(tmp_path / "gateway", routes)
        rows = np.arange(0, 400, 50)  # 8 rows, RUNTIME's max_batch_size
        expected = {
            "cancer-onnx": (cancer.x[rows], cancer.pipeline.predict_proba(cancer.x[rows])),
            "diabetes-ts": (diabetes.x[rows], diabetes.module(torch.as_tensor(diabetes.x[rows])).detach().numpy()),
        }
        for name, (x, want) in expected.items():
            for url in (triton.url, gateway.url):
                got = _infer(url, name, x)
                assert got.dtype == np.float32 and got.shape == want.shape
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    finally:
        if gateway is not None:
            gateway.stop()
        triton.stop()


def test_a_trusted_pickle_and_a_skops_file_register_as_the_scikit_learn_flavour(
    mlflow: Any, cancer: Cancer, tmp_path: Path
) -> None:
    pickled, skopsed = tmp_path / "cancer.joblib", tmp_path / "cancer.skops"
    joblib.dump(cancer.pipeline, pickled)
    skops.io.dump(cancer.pipeline, skopsed)
    features = ("--features", ",".join(cancer.features))
    for name, file, trust in (("cancer-joblib", pickled, ("--trust",)), ("cancer-skops", skopsed, ())):
        result = _import(mlflow.url, "--name", name, "--file", file, "--task", "classification", *features, *trust)
        version = _version(mlflow.url, name, result)
        assert (version.tags[mc.TAG_FRAMEWORK], mc.model_format(version.tags)) == ("sklearn", "onnx")
        assert json.loads(version.tags[mc.TAG_FEATURES]) == cancer.features
        assert mc.TAG_REFERENCE_URI not in version.tags and "without a drift baseline" in result.output
        shown = CliRunner().invoke(main, ["model", "card", name, "1", "--tracking-uri", mlflow.url])
        assert shown.exit_code == 0, shown.output
        assert f"imported from `{file.name}`" in shown.output and "no drift baseline" in shown.output
        assert f"| {cancer.features[0]} | n/a | n/a | n/a | n/a |" in shown.output
        assert "Not stated (pass `--intended-use` to `kubeforge model import`)" in shown.output
        mlflow_lib.set_tracking_uri(mlflow.url)
        loaded = mlflow_sklearn.load_model(f"models:/{name}/1")
        np.testing.assert_allclose(loaded.predict_proba(cancer.x[:5]), cancer.pipeline.predict_proba(cancer.x[:5]))
        local = MlflowClient(mlflow.url).download_artifacts(version.run_id, mc.ONNX_ARTIFACT, str(tmp_path / name))
        import onnxruntime

        (got,) = onnxruntime.InferenceSession(local).run(None, {mc.INPUT_NAME: cancer.x[:5]})
        np.testing.assert_allclose(got, cancer.pipeline.predict_proba(cancer.x[:5]), rtol=1e-4, atol=1e-5)


class Softmax(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x[:, :2] * 2.0, dim=1)


def _bad_files(tmp: Path, cancer: Cancer, diabetes: Diabetes) -> dict[str, Path]:
    """Files that are not what their names claim, and a torch.save pickle."""
    (tmp / "text.onnx").write_text("these are not the weights you are looking for\n")
    (tmp / "onnx.pt").write_bytes(cancer.onnx.read_bytes())
    joblib.dump(cancer.pipeline, tmp / "model.joblib")
    (tmp / "pickle.onnx").write_bytes((tmp / "model.joblib").read_bytes())
    torch.save(Softmax(), tmp / "eager.pt")
    return {p.name: p for p in tmp.iterdir()} | {"cancer.onnx": cancer.onnx, "diabetes.pt": diabetes.file}


@pytest.mark.parametrize(
    ("file", "args", "message"),
    [
        (
            "text.onnx",
            ("--task", "classification"),
            "--file text.onnx: its extension says an ONNX model, but it is not",
        ),
        ("pickle.onnx", ("--task", "classification"), "its extension says an ONNX model, but it is a joblib/pickle"),
        ("onnx.pt", ("--task", "classification"), "its extension says a TorchScript module, but it is an ONNX model"),
        ("eager.pt", ("--task", "classification"), "--file eager.pt: it is a torch.save file"),
        (
            "cancer.onnx",
            ("--task", "classification", "--features", "a,b,c"),
            "--features: 3 names given, but cancer.onnx takes 30 features; pass 30 names",
        ),
        (
            "diabetes.pt",
            ("--task", "regression", "--features", "a,b,c"),
            "--features: diabetes.pt does not run on 3 features (RuntimeError: The size of tensor a (3)",
        ),
        (
            "model.joblib",
            ("--task", "classification"),
            "--file model.joblib is a joblib/pickle file: loading a pickle runs whatever code the file names",
        ),
        (
            "diabetes.pt",
            ("--task", "regression"),
            "--features: diabetes.pt does not say how many features it takes; pass their names",
        ),
        ("missing.onnx", ("--task", "classification"), "missing.onnx does not exist; pass the model file"),
        ("cancer.onnx", ("--task", "regression"), "--task regression: on zeros [2, 30] the model answers 2 values"),
        (
            "cancer.onnx",
            ("--task", "classification", "--classes", "benign,malignant,unsure"),
            "--classes: 3 names given, but the model answers 2 class probabilities per row",
        ),
    ],
)
def test_bad_imports_are_refused_naming_the_option_and_register_nothing(
    file: str, args: tuple[str, ...], message: str, mlflow: Any, cancer: Cancer, diabetes: Diabetes, tmp_path: Path
) -> None:
    path = _bad_files(tmp_path, cancer, diabetes).get(file, tmp_path / file)
    name = "refused-" + hashlib.sha256(repr((file, args)).encode()).hexdigest()[:12]
    result = _import(mlflow.url, "--name", name, "--file", path, *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "(nothing registered)" in result.output
    if file == "model.joblib":
        assert "--trust" in result.output and "ONNX" in result.output and "skops" in result.output
    client = MlflowClient(mlflow.url)
    assert client.search_registered_models(f"name = '{name}'") == []
    assert client.get_experiment_by_name(name) is None  # not even a run was started


def test_reference_data_without_the_features_is_refused(mlflow: Any, diabetes: Diabetes, tmp_path: Path) -> None:
    reference = data.write(data.diabetes().drop(columns=["bmi"]), tmp_path / "ref.csv", "csv")
    args = ("--file", diabetes.file, "--task", "regression", "--features", ",".join(diabetes.features))
    result = _import(mlflow.url, "--name", "refused-reference", *args, "--reference-data", reference)
    assert result.exit_code == 1
    assert f"--reference-data: {reference} has no column(s) ['bmi']" in result.output
    assert MlflowClient(mlflow.url).search_registered_models("name = 'refused-reference'") == []


def test_the_serving_hint_is_a_valid_modeldeployment() -> None:
    from kubeforge.api import ModelDeployment
    from kubeforge.training.usercommands import serving_hint

    hint = serving_hint("Cancer_Model.v2", "3", "candidate")
    manifest = "\n".join(line[2:] for line in hint.splitlines() if line.startswith("  "))
    parsed = ModelDeployment.model_validate(yaml.safe_load(manifest))
    assert (parsed.metadata.name, parsed.spec.model.name, parsed.spec.model.alias) == (
        "cancer-model-v2",
        "Cancer_Model.v2",
        "candidate",
    )
