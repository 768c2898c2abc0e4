"""Online features: what enrichment adds to a gateway request, and materialization against `feast materialize`.

1. Gateway: MLflow, a tiny classifier (4 features) in tritonserver, a FeatureView of
   10,000 customers materialized into the embedded store (sqlite), and a gateway process
   serving the model with spec.features. The same row goes to the gateway as an entity key
   and as its features inline, alternating rounds, at concurrency 1 and 8, from a minimal
   keep-alive HTTP/1.1 client. Prints the p50/p99 each way and what enrichment adds, and
   the gateway's own mean online-read time from its lookup histogram.
2. Materialization: the same parquet source (--rows rows, half the entities with two
   values) into a fresh sqlite online store, once by `kubeforge features materialize-job`
   (what a FeatureView's Jobs run) and once by `feast materialize` over the same window on
   an equivalent Feast repository, each in a fresh process, alternating, --repeats times.
   Prints rows/s each way (timed after both have imported Feast) and their ratio.

Run from the repository root: .venv/bin/python -m tests.benchmarks.bench_features
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.benchmarks.bench_gateway import _connection, _pct
from tests.integration.serving.conftest import N_FEATURES, Threshold, _exported, register, signature

from kubeforge.api import FeatureViewSpec
from kubeforge.core import modelcontract as mc
from kubeforge.featurestore.commands import SPEC_ENV
from kubeforge.featurestore.config import StoreSettings
from kubeforge.local import mlflow_server
from kubeforge.local import triton as local_triton
from kubeforge.local.processes import free_port, spawn, terminate, wait_http

ROUNDS = 6
PER_ROUND = {1: 300, 8: 800}
CUSTOMERS = 10_000
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
VIEW, NAMESPACE = "customerstats", "bench"  # no hyphen: `feast apply` cannot name sqlite tables with one


def source(path: Path, entities: int, rows: int) -> Path:
    """rows values of entities customers (the first rows - entities have a second, newer value), all recent."""
    rng = np.random.default_rng(0)
    now = datetime.now(UTC).replace(microsecond=0)
    ids = np.concatenate([np.arange(entities), np.arange(rows - entities)])
    minutes = np.concatenate([np.full(entities, 30), np.full(rows - entities, 10)])
    frame = pd.DataFrame({"customer_id": ids, **{f: rng.normal(size=rows) for f in FEATURES}})
    frame["event_timestamp"] = [now - timedelta(minutes=int(m)) for m in minutes]
    frame.to_parquet(path)
    return path


def view_spec(path: Path) -> FeatureViewSpec:
    return FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [{"name": f, "dtype": "Float64"} for f in FEATURES],
            "source": {"path": str(path)},
            "ttl": "2h",
        }
    )


def _request(path: str, payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return (head + "\r\n\r\n").encode() + data


async def _round(port: int, request: bytes, concurrency: int, total: int) -> list[float]:
    latencies: list[float] = []
    await asyncio.gather(*(_connection(port, request, total // concurrency, latencies) for _ in range(concurrency)))
    return latencies


def _lookup_mean_ms(url: str) -> float:
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for s in family.samples
        if s.name.startswith("kubeforge_feature_lookup_duration_seconds_")
    }
    return (
        samples["kubeforge_feature_lookup_duration_seconds_sum"]
        / samples["kubeforge_feature_lookup_duration_seconds_count"]
        * 1e3
    )


def gateway(work: Path) -> None:
    from kubeforge.featurestore.store import Store

    settings = StoreSettings(work / "features")
    spec = view_spec(source(work / "customers.parquet", CUSTOMERS, CUSTOMERS))
    store = Store(settings, NAMESPACE)
    store.apply(VIEW, spec)
    store.materialize(VIEW, spec)
    customer = 4242
    row = pd.read_parquet(spec.source.path).set_index("customer_id").loc[customer, FEATURES].tolist()

    ml = mlflow_server.start(work / "mlflow")
    stops = [ml.stop]
    try:
        version = register(ml.url, "bench", Threshold(0.0, 1.0), signature())
        repo = _exported(ml.url, work / "repo", "bench", [version])
        triton = local_triton.start(repo, work / "triton", models=["bench"])
        stops.append(triton.stop)
        routes = work / "routes.yaml"
        stable = {"version": version, "role": "stable", "url": triton.url, "weight": 100, "featureOrder": FEATURES}
        features = {
            "namespace": NAMESPACE,
            "featureView": VIEW,
            "entityKey": "customer_id",
            "joinKey": "customer_id",
            "ttlSeconds": 7200,
        }
        routes.write_text(yaml.safe_dump({"models": {"bench": {"versions": [stable], "features": features}}}))
        port = free_port()
        argv = [sys.executable, "-m", "kubeforge.serving", "gateway", "--routes", str(routes), "--port", str(port)]
        started = time.perf_counter()
        gw = spawn(argv, work / "gateway.log", {**os.environ, **settings.env()})
        stops.append(lambda: terminate(gw.pid))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/health/ready", gw, work / "gateway.log", timeout=300)
        print(f"gateway ready with its feature store open after {time.perf_counter() - started:.1f} s")
        path = "/v2/models/bench/infer"
        requests = {
            "inline": _request(
                path, {"inputs": [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [1, N_FEATURES], "data": row}]}
            ),
            "enriched": _request(
                path, {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [customer]}]}
            ),
        }
        print(f"{'concurrency':>11} {'request':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for concurrency, per_round in PER_ROUND.items():
            for request in requests.values():  # warm-up
                asyncio.run(_round(port, request, concurrency, per_round // 4))
            lat: dict[str, list[float]] = {k: [] for k in requests}
            for _ in range(ROUNDS):  # alternate, so drift on a shared machine hits both alike
                for kind, request in requests.items():
                    lat[kind] += asyncio.run(_round(port, request, concurrency, per_round))
            for kind in requests:
                print(f"{concurrency:>11} {kind:>9} {_pct(lat[kind], 0.5):>8.3f} {_pct(lat[kind], 0.99):>8.3f}")
            added50 = _pct(lat["enriched"], 0.5) - _pct(lat["inline"], 0.5)
            added99 = _pct(lat["enriched"], 0.99) - _pct(lat["inline"], 0.99)
            print(
                f"concurrency {concurrency}: enrichment adds p50 {added50:.3f} ms, p99 {added99:.3f} ms (target <= 3)"
            )
        print(f"gateway's online read, mean over the run: {_lookup_mean_ms(url):.3f} ms")
    finally:
        for stop in reversed(stops):
            stop()


FEAST_REPO = """\
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
source = FileSource(name="customerstats-source", path={path!r}, timestamp_field="event_timestamp")
view = FeatureView(
    name="customerstats",
    entities=[customer],
    schema=[{fields}],
    source=source,
    ttl=timedelta(hours=2),
)
"""


# Runs one command line of either tool in a fresh process, with Feast (and kubeforge's store module) imported
# before the clock starts: both tools import Feast first thing, which on a busy machine takes longer than
# materializing a small source. Prints the seconds of the import and of the command.
COMMAND = """\
import json, sys, time
start = time.perf_counter()
import feast.cli.cli
import kubeforge.featurestore.commands
import kubeforge.featurestore.store
ready = time.perf_counter()
tool, args = sys.argv[1], sys.argv[2:]
group = feast.cli.cli.cli if tool == "feast" else kubeforge.featurestore.commands.features
group.main(args, prog_name=tool, standalone_mode=False)
print(json.dumps({"import": ready - start, "command": time.perf_counter() - ready}))
"""


def _command(tool: str, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", COMMAND, tool, *args], env=env, cwd=cwd, check=True, capture_output=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def materialization(work: Path, rows: int, repeats: int) -> None:
    from kubeforge.featurestore.store import Store

    parquet = source(work / "materialize.parquet", rows // 2, rows)
    spec = view_spec(parquet)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs: dict[str, list[dict[str, float]]] = {"kubeforge": [], "feast": []}
    for run in range(repeats):
        settings = StoreSettings(work / f"kubeforge-{run}")
        Store(settings, NAMESPACE).apply(VIEW, spec)
        job_env = {**env, **settings.env(), SPEC_ENV: json.dumps(spec.to_wire())}
        args = ["materialize-job", "--namespace", NAMESPACE, "--name", VIEW]
        runs["kubeforge"].append(_command("kubeforge", args, job_env, work))

        repo = work / f"feast-{run}"
        repo.mkdir()
        config = {
            "project": NAMESPACE,
            "provider": "local",
            "registry": str(repo / "registry.db"),
            "online_store": {"type": "sqlite", "path": str(repo / "online.db")},
            "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3,
        }
        (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
        fields = ", ".join(f"Field(name={f!r}, dtype=Float64)" for f in FEATURES)
        (repo / "definitions.py").write_text(textwrap.dedent(FEAST_REPO.format(path=str(parquet), fields=fields)))
        feast = str(Path(sys.executable).with_name("feast"))
        subprocess.run([feast, "apply"], cwd=repo, env=env, check=True, capture_output=True)
        end = datetime.now(UTC).replace(microsecond=0)
        window = [(end - timedelta(hours=2)).isoformat(), end.isoformat()]
        runs["feast"].append(_command("feast", ["materialize", *window], env, repo))
    print(f"materialization of {rows} rows ({rows // 2} entities) into sqlite, {repeats} runs each, after the import:")
    medians = {}
    for tool, timings in runs.items():
        medians[tool] = statistics.median(t["command"] for t in timings)
        fastest = min(t["command"] for t in timings)
        imports = statistics.median(t["import"] for t in timings)
        print(
            f"{tool:>10}: median {medians[tool]:.2f} s = {rows / medians[tool]:,.0f} rows/s; "
            f"fastest {fastest:.2f} s; import before it {imports:.1f} s"
        )
    print(f"kubeforge / feast materialize, rows/s of the medians: {medians['feast'] / medians['kubeforge']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["gateway", "materialization"], help="run one of the two")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    if args.only != "materialization":
        gateway(work)
    if args.only != "gateway":
        materialization(work, args.rows, args.repeats)


if __name__ == "__main__":
    main()
