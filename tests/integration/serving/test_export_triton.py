"""Export registered versions into a Triton repository and serve them with a real tritonserver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from kubeforge.api.modeldeployment import ModelRef, TritonRuntime
from kubeforge.core import modelcontract as mc
from kubeforge.serving import export, tritonconfig

from .conftest import N_FEATURES, Threshold, register, signature

pytestmark = pytest.mark.integration


def test_exported_versions_serve_the_registered_models(triton, registered):
    client = httpclient.InferenceServerClient(triton.url.removeprefix("http://"))
    x = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0.25, 0, 0, 0]], dtype=np.float32)
    answers = {}
    for version in (registered.stable, registered.canary, registered.shadow):
        inp = httpclient.InferInput(mc.INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(registered.name, [inp], model_version=version)
        answers[version] = result.as_numpy(mc.OUTPUT_NAME)
    expected = {
        registered.stable: Threshold(0.0, 1.0)(torch.from_numpy(x)).numpy(),
        registered.shadow: Threshold(0.5, 1.0)(torch.from_numpy(x)).numpy(),
    }
    for version, want in expected.items():
        np.testing.assert_allclose(answers[version], want, rtol=1e-5)
    assert answers[registered.stable].argmax(1).tolist() == [1, 0, 1]
    assert answers[registered.shadow].argmax(1).tolist() == [1, 0, 0]
    metadata = client.get_model_metadata(registered.name, registered.stable)
    assert metadata["inputs"] == [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [-1, N_FEATURES]}]


def test_export_by_alias_writes_config_and_version(mlflow, registered, tmp_path):
    import mlflow as mlflow_lib

    mlflow_lib.MlflowClient(mlflow.url).set_registered_model_alias(registered.name, "champion", registered.canary)
    out = export.export(mlflow.url, ModelRef(name=registered.name, alias="champion"), tmp_path, TritonRuntime())
    assert out.version == registered.canary
    assert out.task == "classification"
    assert sorted(p.name for p in (tmp_path / registered.name / registered.canary).iterdir()) == [
        "model.pt",
        "model.py",
    ]
    cfg = tritonconfig.parse((tmp_path / registered.name / "config.pbtxt").read_text())
    assert cfg.backend == "python"
    assert [i.name for i in cfg.input] == [mc.INPUT_NAME]


def test_model_without_signature_is_refused_by_name(mlflow, tmp_path):
    version = register(mlflow.url, "nosig", Threshold(0.0, 1.0), sig=None)
    with pytest.raises(export.ExportError, match=rf"model 'nosig' version {version}.*no input/output signature"):
        export.export(mlflow.url, ModelRef(name="nosig", version=int(version)), tmp_path)
    assert not (tmp_path / "nosig" / version).exists()


def test_unsupported_dtype_is_refused_by_name(mlflow, tmp_path):
    version = register(mlflow.url, "u64", Threshold(0.0, 1.0), sig=signature("uint64"))
    with pytest.raises(export.ExportError, match=rf"model 'u64' version {version}.*dtype uint64"):
        export.export(mlflow.url, ModelRef(name="u64", version=int(version)), tmp_path)


def test_unknown_version_and_unreachable_mlflow_name_the_model(mlflow, registered, tmp_path):
    with pytest.raises(export.ExportError, match=rf"model '{registered.name}' version 99"):
        export.export(mlflow.url, ModelRef(name=registered.name, version=99), tmp_path)
    from kubeforge.local.processes import free_port

    with pytest.raises(export.ExportError, match=r"model 'clf' version 1: MLflow at .* is unreachable"):
        export.export(f"http://127.0.0.1:{free_port()}", ModelRef(name="clf", version=1), tmp_path)


def test_the_mlflow_package_reads_a_version_as_the_rest_api_does(mlflow, registered):
    """Artifact stores the tracking server does not serve (s3:// without its proxy) are read with the mlflow
    package; both ways must find the same version, signature and TorchScript."""
    ref = ModelRef(name=registered.name, version=int(registered.stable))
    fast, full = export._over_rest(mlflow.url, ref), export._with_mlflow(mlflow.url, ref)
    assert fast is not None
    assert (fast.version, fast.task) == (full.version, full.task) == (registered.stable, "classification")
    assert fast.model_file == full.model_file
    assert fast.script() == full.script()
