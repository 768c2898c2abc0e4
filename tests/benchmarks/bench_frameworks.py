"""The price of the serving hop, per framework: a model called in-process against the same model served by Triton,
directly and through the gateway, measured side by side in one run on loopback.

Trains one breast-cancer classifier per framework with the real trainer (torch MLP, scikit-learn gradient
boosting, XGBoost, LightGBM) against a local MLflow, exports each as serving does (TorchScript, or ONNX run by
onnxruntime in Triton's python backend), starts one tritonserver and one gateway over them, then times requests of
1 row and 64 rows at concurrency 1 in alternating rounds: the framework's own predict call in this process (the
original model, loaded from MLflow in its flavour), tritonclient to Triton, and tritonclient to the gateway.
Prints p50/p99 per path and the ratio of served to in-process p50.
Run from the repository root: .venv/bin/python -m tests.benchmarks.bench_frameworks
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import tritonclient.http as httpclient
import yaml
from tests.unit.training import data

from kubeforge.api.modeldeployment import ModelRef, TritonRuntime
from kubeforge.core import modelcontract as mc
from kubeforge.local import mlflow_server
from kubeforge.local import triton as local_triton
from kubeforge.local.processes import free_port, spawn, terminate, wait_http
from kubeforge.serving import export
from kubeforge.training.main import main as train

ROUNDS = 5
PER_ROUND = 100
ROWS = (1, 64)
MODELS = {
    "torch": {"architecture": "mlp", "hyperparameters": {"epochs": 20, "hiddenUnits": [64, 64]}},
    "sklearn": {"framework": "sklearn", "estimator": "GradientBoostingClassifier", "params": {"n_estimators": 100}},
    "xgboost": {"framework": "xgboost", "estimator": "XGBClassifier", "params": {"n_estimators": 100}},
    "lightgbm": {"framework": "lightgbm", "estimator": "LGBMClassifier", "params": {"n_estimators": 100}},
}


def _train(tracking_uri: str, work: Path, csv: Path, framework: str) -> str:
    spec = data.spec_file(work / f"{framework}.json", csv, model={"name": f"bench-{framework}", **MODELS[framework]})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train(["--spec", str(spec), "--tracking-uri", tracking_uri]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])["kubeforge.result"]["modelVersion"]


def _in_process(framework: str, uri: str) -> Callable[[np.ndarray], np.ndarray]:
    """The original model's predict, as a caller embedding the framework would make it."""
    if framework == "torch":
        import torch

        module = mlflow.pytorch.load_model(uri)

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return forward
    return importlib.import_module(f"mlflow.{framework}").load_model(uri).predict_proba


def _client_call(url: str, name: str, version: str) -> Callable[[np.ndarray], np.ndarray]:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))

    def call(x: np.ndarray) -> np.ndarray:
        inp = httpclient.InferInput(mc.INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput(mc.OUTPUT_NAME, binary_data=True)
        return client.infer(name, [inp], model_version=version, outputs=[out]).as_numpy(mc.OUTPUT_NAME)

    return call


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1e3


def main() -> None:
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    work = Path(tempfile.mkdtemp(prefix="bench-frameworks-"))
    frame = data.breast_cancer()
    csv = data.write(frame, work / "breast_cancer.csv", "csv")
    x_all = frame.drop(columns="target").to_numpy(dtype=np.float32)
    ml = mlflow_server.start(work / "mlflow")
    mlflow.set_tracking_uri(ml.url)
    stops: list[Callable[[], None]] = []
    try:
        runtime = TritonRuntime(max_batch_size=max(ROWS))
        versions = {}
        for framework in MODELS:
            print(f"training {framework} ...", file=sys.stderr, flush=True)
            versions[framework] = _train(ml.url, work, csv, framework)
            ref = ModelRef(name=f"bench-{framework}", version=int(versions[framework]))
            export.export(ml.url, ref, work / "repo", runtime)
        names = [f"bench-{f}" for f in MODELS]
        triton = local_triton.start(work / "repo", work / "triton", models=names)
        stops.append(triton.stop)
        routes = {
            "models": {
                f"bench-{f}": {"versions": [{"version": v, "role": "stable", "url": triton.url, "weight": 100}]}
                for f, v in versions.items()
            }
        }
        (work / "routes.yaml").write_text(yaml.safe_dump(routes))
        port = free_port()
        argv = [sys.executable, "-m", "kubeforge.serving", "gateway", "--routes", str(work / "routes.yaml")]
        proc = spawn([*argv, "--port", str(port)], work / "gateway.log")
        stops.append(lambda: terminate(proc.pid))
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc, work / "gateway.log")

        print(f"{'framework':>9} {'rows':>4} {'path':>10} {'p50 ms':>8} {'p99 ms':>8} {'p50 / in-process':>17}")
        for framework, version in versions.items():
            name = f"bench-{framework}"
            paths = {
                "in-process": _in_process(framework, f"models:/{name}/{version}"),
                "triton": _client_call(triton.url, name, version),
                "gateway": _client_call(f"http://127.0.0.1:{port}", name, ""),
            }
            for rows in ROWS:
                x = np.ascontiguousarray(x_all[:rows])
                expected = paths["in-process"](x)
                for call in paths.values():  # warm-up, and the same answers on every path
                    np.testing.assert_allclose(call(x), expected, rtol=1e-4, atol=1e-5)
                lat: dict[str, list[float]] = {p: [] for p in paths}
                for _ in range(ROUNDS):  # alternate, so a shared machine's changing load hits each path alike
                    for path, call in paths.items():
                        for _ in range(PER_ROUND):
                            start = time.perf_counter()
                            call(x)
                            lat[path].append(time.perf_counter() - start)
                base = _pct(lat["in-process"], 0.5)
                for path, values in lat.items():
                    p50, p99 = _pct(values, 0.5), _pct(values, 0.99)
                    print(f"{framework:>9} {rows:>4} {path:>10} {p50:>8.3f} {p99:>8.3f} {p50 / base:>16.1f}x")
    finally:
        for stop in reversed(stops):
            stop()
        ml.stop()


if __name__ == "__main__":
    main()
