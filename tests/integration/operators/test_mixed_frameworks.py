"""A canary from another framework than its stable: an XGBoost version rolled out against a torch MLP.

Both are trained by the real trainer on scikit-learn's breast cancer data and registered
under one model name; the operator serves each with Triton (TorchScript and ONNX) and the
canary analysis compares their answers to the same requests. The output contract is the
same for every framework, so agreement is measured and the canary is promoted on it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.core import modelcontract as mc
from kubeforge.local.demo import Traffic
from kubeforge.training.main import main
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.operators.test_modeldeployment_operator import CANARY_ANALYSIS, cond, create_md, ready, status
from tests.unit.training import data

pytestmark = pytest.mark.integration


def _train(tracking_uri: str, csv: Path, spec_path: Path, model: dict[str, object], alias: str) -> str:
    spec = data.spec_file(spec_path, csv, model=model, register={"alias": alias})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--spec", str(spec), "--tracking-uri", tracking_uri]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])["kubeforge.result"]["modelVersion"]


def test_an_xgboost_canary_against_a_torch_stable_is_promoted_on_agreement(
    operator: Operator, api: client.ApiClient, runner_namespace: str, mlflow, tmp_path: Path
) -> None:
    ns, name = runner_namespace, "mixed"
    frame = data.breast_cancer()
    csv = data.write(frame, tmp_path / "breast_cancer.csv", "csv")
    torch_model = {"name": name, "architecture": "mlp", "hyperparameters": {"epochs": 30, "hiddenUnits": [16]}}
    stable = _train(mlflow.url, csv, tmp_path / "torch.json", torch_model, "champion")
    create_md(
        api,
        ns,
        name,
        model={"name": name, "alias": "champion"},
        canary={
            "model": {"name": name, "alias": "candidate"},
            "steps": [{"weight": 50, "pause": "3s"}],
            "scaleDownDelay": "2s",
            "analysis": {
                **CANARY_ANALYSIS,
                "metrics": [{"name": "error-rate", "max": 0.01}, {"name": "agreement", "min": 0.9}],
            },
        },
    )
    ready(api, ns, name, timeout=180)
    rows = frame.drop(columns="target").to_numpy().tolist()
    caller = Traffic(status(api, ns, name)["url"].split("/v2/")[0], name, rows, rate=50)
    caller.start()
    try:
        xgb = {"name": name, "framework": "xgboost", "estimator": "XGBClassifier", "params": {"n_estimators": 50}}
        canary = _train(mlflow.url, csv, tmp_path / "xgb.json", xgb, "candidate")
        agreement: list[float] = []  # what each analysis measured

        def promoted() -> bool:
            st = status(api, ns, name)
            results = (st.get("analysis") or {}).get("results") or []
            agreement.extend(r["value"] for r in results if r["name"] == "agreement" and r.get("passed"))
            return st.get("stableVersion") == canary

        wait_for(promoted, 240, f"promotion of {canary}")
    finally:
        caller.stop()

    registry = MlflowClient(mlflow.url)
    frameworks = {v: registry.get_model_version(name, v).tags[mc.TAG_FRAMEWORK] for v in (stable, canary)}
    assert frameworks == {stable: "torch", canary: "xgboost"}
    promoted = cond(api, ns, name, "Promoted")
    assert promoted["status"] == "True", promoted
    assert agreement and min(agreement) >= 0.9, agreement  # promoted on answers compared, not on missing data
    answered = [s for s in caller.samples if s.ok]
    assert {s.version for s in answered} == {stable, canary}
    assert len(answered) == len(caller.samples), "no request may fail while frameworks change"
