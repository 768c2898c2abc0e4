"""Features computed once, used alike for training and serving: docs/examples/features/ on the local platform.

A FeatureView over scikit-learn's breast cancer measurements is registered and materialized
by its operator, a TrainingJob trains on it through a point-in-time join, and a
ModelDeployment serves the model with the features looked up at the gateway: a client that
sends only patient ids gets the same answers as one that sends the measurements inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
import yaml
from kubernetes import client
from sklearn.datasets import load_breast_cancer
from tritonclient.utils import InferenceServerException

from kubeforge.core import kube
from kubeforge.local import runtime
from tests.conftest import REPO
from tests.e2e.test_demo import is_about_features, monitored_queries
from tests.integration.operators.conftest import wait_for
from tests.promql import still_unfed

pytestmark = pytest.mark.e2e
EXAMPLES = REPO / "docs" / "examples" / "features"
GROUP, VERSION = "kubeforge.dev", "v1alpha1"


def _apply(api: client.ApiClient, example: str, **replace: str) -> None:
    text = (EXAMPLES / example).read_text()
    for placeholder, value in replace.items():
        text = text.replace(placeholder, value)
    body = yaml.safe_load(text)
    body["metadata"]["namespace"] = "default"
    kube.apply(api, body)


def _get(api: client.ApiClient, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, "default", plural, name)


def _ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


def _finished(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == "Failed" or bool(status.get("mlflow", {}).get("modelVersion"))


def _once(api: client.ApiClient, plural: str, name: str, done: Any, timeout: float) -> dict[str, Any]:
    """The object once done(object) holds."""

    def check() -> dict[str, Any] | None:
        obj = _get(api, plural, name)
        return obj if done(obj) else None

    return wait_for(check, timeout, f"{plural}/{name}")


def _infer(gateway: httpclient.InferenceServerClient, name: str, array: np.ndarray, dtype: str) -> np.ndarray:
    tensor = httpclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return gateway.infer("patients", [tensor]).as_numpy("outputs")


@pytest.mark.timeout(900)
def test_a_model_trained_on_a_featureview_serves_from_entity_ids_as_from_inline_features(tmp_path: Path) -> None:
    data = tmp_path / "kubeforge"
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.insert(0, "patient_id", np.arange(len(frame), dtype=np.int64))
    now = pd.Timestamp.now(tz="UTC").floor("s")
    measured = frame.drop(columns="target").assign(event_timestamp=now - pd.Timedelta("1h"))
    measured.to_parquet(tmp_path / "patients.parquet", index=False)
    frame[["patient_id", "target"]].assign(event_timestamp=now).to_parquet(tmp_path / "labels.parquet", index=False)
    try:
        runtime.up(data)
        api = kube.api_client(runtime.Layout(data).kubeconfig)
        _apply(api, "featureview.yaml", FEATURES_PATH=str(tmp_path / "patients.parquet"))
        view = _once(api, "featureviews", "patients", _ready, 300)
        assert view["status"]["onlineRows"] == len(frame)

        _apply(api, "trainingjob.yaml", ENTITIES_PATH=str(tmp_path / "labels.parquet"))
        job = _once(api, "trainingjobs", "patients-v1", _finished, 400)
        assert job["status"]["phase"] == "Succeeded", job["status"]

        _apply(api, "modeldeployment.yaml")
        md = _once(api, "modeldeployments", "patients", _ready, 300)
        gateway = httpclient.InferenceServerClient(md["status"]["url"].split("/v2/")[0].removeprefix("http://"))

        rows = frame.sample(16, random_state=0)
        by_id = _infer(gateway, "patient_id", rows["patient_id"].to_numpy(dtype=np.int64), "INT64")
        columns = [f["name"] for f in yaml.safe_load((EXAMPLES / "featureview.yaml").read_text())["spec"]["features"]]
        inline = _infer(gateway, "features", rows[columns].to_numpy(dtype=np.float32), "FP32")
        assert by_id.shape == (16, 2)
        np.testing.assert_allclose(by_id, inline, rtol=1e-5, atol=1e-6)

        with pytest.raises(InferenceServerException, match="patient_id=999999") as refused:
            _infer(gateway, "patient_id", np.array([999999], dtype=np.int64), "INT64")
        assert "422" in str(refused.value.status()) or "missing" in str(refused.value)

        # The FeatureView dashboard and alert, against the platform's Prometheus.
        prometheus = runtime.LocalState.read(data).prometheus_url
        queries = [(where, q) for where, q in monitored_queries() if is_about_features(where)]
        assert still_unfed(prometheus, queries) == []
    finally:
        runtime.down(data)
