"""Serving fixtures: small registered model versions that follow the model contract, a real
tritonserver serving them, and gateway processes in front of it. The stable and shadow versions
carry a drift baseline of standard normal features, as the trainer logs one; the canary has none."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from kubeforge.api.modeldeployment import DriftMonitoring, DynamicBatching, ModelRef, TritonRuntime
from kubeforge.core import modelcontract as mc
from kubeforge.core.mlflow_rest import MLflowRegistry
from kubeforge.local import triton as local_triton
from kubeforge.local.processes import free_port, spawn, terminate, wait_http
from kubeforge.operators.deployment.versions import Versions
from kubeforge.serving import export
from kubeforge.training.baseline import compute

N_FEATURES = 4
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
# What the versions with a baseline were "trained" on: live traffic drawn alike does not drift.
BASELINE = compute(np.random.default_rng(0).standard_normal((20_000, N_FEATURES)), FEATURES)


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


def register(
    tracking_uri: str,
    name: str,
    module: torch.nn.Module,
    sig=None,
    task: str = "classification",
    baseline: mc.Baseline | None = None,
) -> str:
    """Log and register a model version the way the trainer does (with baseline, its drift baseline); returns the
    version."""
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
        if baseline is not None:
            path = Path(tmp) / Path(mc.BASELINE_ARTIFACT).name
            path.write_text(baseline.model_dump_json())
            mlflow.log_artifact(str(path), artifact_path=str(Path(mc.BASELINE_ARTIFACT).parent))
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, mc.TAG_TASK, task)
    client.set_model_version_tag(name, version, mc.TAG_FEATURES, json.dumps(FEATURES))
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
        stable=register(mlflow.url, name, Threshold(0.0, 1.0), signature(), baseline=BASELINE),
        canary=register(mlflow.url, name, Threshold(0.0, 2.0), signature()),
        shadow=register(mlflow.url, name, Threshold(0.5, 1.0), signature(), baseline=BASELINE),
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


@pytest.fixture
def stable_replica(mlflow, registered, triton_venv, tmp_path) -> Iterator[local_triton.TritonServer]:
    """A second Triton with the stable version: another replica of it, for tests that spread over or kill one."""
    repo = _exported(mlflow.url, tmp_path / "replica-repo", registered.name, [registered.stable])
    server = local_triton.start(repo, tmp_path / "replica", models=[registered.name], venv=triton_venv)
    yield server
    server.stop()


def answered(url: str, model: str, version: str | None = None) -> int:
    """How many inferences the Triton at url has answered for model (one version of it, when given), from its
    statistics extension."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/stats"
    stats = httpx.get(url + path, timeout=5).raise_for_status().json()["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


def body(rows: list[list[float]]) -> bytes:
    """A JSON inference request for the classifier."""
    shape = [len(rows), N_FEATURES]
    flat = [v for row in rows for v in row]
    return json.dumps({"inputs": [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": shape, "data": flat}]}).encode()


def table(
    registered: Registered,
    stable_url: str,
    canary: tuple[str, int] | None = None,
    shadow: tuple[str, int] | None = None,
    **route: object,
) -> dict:
    """A route table for the classifier: stable always, canary (url, weight) and shadow (url, percent) optional."""
    versions = [
        {"version": registered.stable, "role": "stable", "url": stable_url, "weight": 100 - (canary or ("", 0))[1]}
    ]
    if canary:
        versions.append({"version": registered.canary, "role": "canary", "url": canary[0], "weight": canary[1]})
    if shadow:
        versions.append({"version": registered.shadow, "role": "shadow", "url": shadow[0], "percent": shadow[1]})
    return {"models": {registered.name: {"versions": versions, **route}}}


DRIFT_MIN_SAMPLES = 1000
"""Rows a drift window needs in the drift tests: sampling noise alone reads PSI ~0.01 then, far below 0.2."""
SHIFTED = ("f1", "f2")
ROWS_PER_REQUEST = 8  # RUNTIME's max_batch_size


def drift_table(mlflow_url: str, registered: Registered, triton_url: str) -> dict:
    """A route table with drift tracking, each version's baseline read from MLflow as the operator reads it: the
    stable version routed with its baseline, the canary (registered without one) reachable by pinning it."""
    routes = table(registered, triton_url, canary=(triton_url, 0))
    model = routes["models"][registered.name]
    model["drift"] = DriftMonitoring(min_samples=DRIFT_MIN_SAMPLES).to_wire()
    versions = Versions(MLflowRegistry(mlflow_url))
    for entry in model["versions"]:
        found = versions.baseline(registered.name, entry["version"])
        assert found is not None, "MLflow answers"
        if found.drift is not None:
            entry["drift"] = found.drift.to_wire()
    assert [e["version"] for e in model["versions"] if "drift" in e] == [registered.stable]
    return routes


def traffic(rows: int, shift: float, seed: int) -> list[tuple[bytes, dict[str, str]]]:
    """Requests of 8 rows drawn like the training data, the SHIFTED features moved by shift standard deviations;
    every other request in binary tensor data, as tritonclient sends it."""
    x = np.random.default_rng(seed).standard_normal((rows, N_FEATURES)).astype(np.float32)
    x[:, [FEATURES.index(f) for f in SHIFTED]] += shift
    requests = []
    for i in range(0, rows, ROWS_PER_REQUEST):
        chunk = x[i : i + ROWS_PER_REQUEST]
        if i // ROWS_PER_REQUEST % 2:
            requests.append((body(chunk.tolist()), {}))
            continue
        tensor = {"name": mc.INPUT_NAME, "datatype": "FP32", "shape": list(chunk.shape)}
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": chunk.nbytes}}]}).encode()
        headers = {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}
        requests.append((header + chunk.tobytes(), headers))
    return requests


class Gateway:
    """A gateway process on loopback; its route table lives behind a symlink, as a ConfigMap mount does."""

    def __init__(self, workdir: Path, routes: dict, tokens: str | None = None, args: tuple[str, ...] = ()):
        self.workdir = workdir
        workdir.mkdir(parents=True)
        self.mount = workdir / "routes"
        self.generation = 0
        self.write(routes)
        self.port = free_port()
        argv = [sys.executable, "-m", "kubeforge.serving", "gateway", "--routes", str(self.mount / "routes.yaml")]
        argv += ["--port", str(self.port), "--reload-interval", "0.2", *args]
        if tokens is not None:
            (workdir / "tokens").write_text(tokens)
            argv += ["--tokens", str(workdir / "tokens")]
        self.log = workdir / "gateway.log"
        self.proc = spawn(argv, self.log)
        wait_http(f"{self.url}/v2/health/ready", self.proc, self.log, timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, routes: dict | str) -> None:
        """Swap the mounted table the way the kubelet updates a ConfigMap volume."""
        self.generation += 1
        data = self.workdir / f"..data-{self.generation}"
        data.mkdir()
        (data / "routes.yaml").write_text(routes if isinstance(routes, str) else yaml.safe_dump(routes))
        self.mount.mkdir(exist_ok=True)
        link = self.mount / "..data"
        tmp = self.mount / "..data_tmp"
        tmp.symlink_to(data)
        tmp.replace(link)
        if not (self.mount / "routes.yaml").is_symlink():
            (self.mount / "routes.yaml").symlink_to("..data/routes.yaml")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include the given ones."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        text = httpx.get(f"{self.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self) -> None:
        terminate(self.proc.pid)


@pytest.fixture
def gateway(tmp_path) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with a route table (and tokens); all stop after the test."""
    started: list[Gateway] = []

    def start(routes: dict, tokens: str | None = None, args: tuple[str, ...] = ()) -> Gateway:
        gw = Gateway(tmp_path / f"gw{len(started)}", routes, tokens, args)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@dataclass
class Result:
    status: int
    version: str | None
    seconds: float
    content: bytes


async def _send(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int, on_done=None) -> list[Result]:
    results: list[Result | None] = [None] * len(requests)
    queue = iter(enumerate(requests))
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            for i, (payload, headers) in queue:
                start = time.perf_counter()
                try:
                    resp = await client.post(url, content=payload, headers=headers)
                    results[i] = Result(
                        resp.status_code,
                        resp.headers.get("kubeforge-model-version"),
                        time.perf_counter() - start,
                        resp.content,
                    )
                except httpx.HTTPError as err:
                    results[i] = Result(-1, None, time.perf_counter() - start, str(err).encode())
                if on_done is not None:
                    await on_done(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


def send(url: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int = 4, on_done=None) -> list[Result]:
    """POST each (body, headers) to url with bounded concurrency; failures come back as status -1."""
    return asyncio.run(_send(url, requests, concurrency, on_done))
