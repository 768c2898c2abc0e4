"""Gateway hop over calling Triton directly, measured side by side in one run on loopback.

Starts MLflow, registers a tiny classifier, exports it, starts tritonserver and a gateway
process, then sends the same requests to Triton and to the gateway in alternating
rounds at concurrency 1 and 16, with a minimal keep-alive HTTP/1.1 client so the load
generator costs as little CPU as possible. Prints added p50/p99 latency and the
throughput ratio. Run from the repository root: .venv/bin/python -m tests.benchmarks.bench_gateway
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tests.integration.serving.conftest import RUNTIME, Threshold, body, register, signature

from kubeforge.api.modeldeployment import ModelRef
from kubeforge.local import mlflow_server
from kubeforge.local import triton as local_triton
from kubeforge.local.processes import free_port, spawn, terminate, wait_http
from kubeforge.serving import export

ROUNDS = 6
PER_ROUND = {1: 300, 16: 1200}


async def _connection(port: int, request: bytes, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _round(port: int, path: str, concurrency: int, total: int) -> tuple[list[float], float]:
    payload = body([[0.7, 0.1, 0.2, 0.3]])
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, request, total // concurrency, latencies) for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1e3


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    ml = mlflow_server.start(work / "mlflow")
    procs = []
    try:
        version = register(ml.url, "bench", Threshold(0.0, 1.0), signature())
        export.export(ml.url, ModelRef(name="bench", version=int(version)), work / "repo", RUNTIME)
        triton = local_triton.start(work / "repo", work / "triton", models=["bench"])
        procs.append(triton.stop)
        routes = work / "routes.yaml"
        stable = {"version": version, "role": "stable", "url": triton.url, "weight": 100}
        routes.write_text(yaml.safe_dump({"models": {"bench": {"versions": [stable]}}}))
        port = free_port()
        argv = [sys.executable, "-m", "kubeforge.serving", "gateway", "--routes", str(routes), "--port", str(port)]
        gw = spawn(argv, work / "gateway.log")
        procs.append(lambda: terminate(gw.pid))
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", gw, work / "gateway.log")
        targets = {
            "direct": (triton.http_port, f"/v2/models/bench/versions/{version}/infer"),
            "gateway": (port, "/v2/models/bench/infer"),
        }
        print(f"{'concurrency':>11} {'path':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for concurrency, per_round in PER_ROUND.items():
            lat: dict[str, list[float]] = {k: [] for k in targets}
            rps: dict[str, list[float]] = {k: [] for k in targets}
            for p, path in targets.values():  # warm-up
                asyncio.run(_round(p, path, concurrency, per_round // 4))
            for _ in range(ROUNDS):  # alternate, so drift on a shared machine hits both alike
                for k, (p, path) in targets.items():
                    latencies, throughput = asyncio.run(_round(p, path, concurrency, per_round))
                    lat[k] += latencies
                    rps[k].append(throughput)
            for k in targets:
                p50, p99 = _pct(lat[k], 0.5), _pct(lat[k], 0.99)
                print(f"{concurrency:>11} {k:>8} {p50:>8.3f} {p99:>8.3f} {statistics.median(rps[k]):>8.0f}")
            added50 = _pct(lat["gateway"], 0.5) - _pct(lat["direct"], 0.5)
            added99 = _pct(lat["gateway"], 0.99) - _pct(lat["direct"], 0.99)
            ratio = statistics.median(rps["gateway"]) / statistics.median(rps["direct"])
            print(
                f"concurrency {concurrency}: gateway adds p50 {added50:.3f} ms, p99 {added99:.3f} ms; "
                f"throughput {ratio:.0%} of direct"
            )
    finally:
        for stop in reversed(procs):
            stop()
        ml.stop()


if __name__ == "__main__":
    main()
