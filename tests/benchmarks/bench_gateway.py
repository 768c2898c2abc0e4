"""Gateway hop over calling Triton directly, and drift tracking's cost, measured side by side in one run on loopback.

Starts MLflow, registers a tiny classifier with a drift baseline, exports it, starts tritonserver and three gateway
processes, one tracking drift (the version's baseline in its route table, as the operator writes it), one joining
requests (spec.gateway.joinRequests) and one doing neither, then sends the same requests to Triton and to each gateway
in alternating rounds at concurrency 1 and 16, with a minimal keep-alive HTTP/1.1 client so the load generator costs as
little CPU as possible. Prints added p50/p99 latency and throughput ratios: gateway over direct, drift tracking on over
off, joining over each request on its own; and each gateway's CPU time per request (from /proc), which a machine shared
with other work disturbs far less than wall-clock throughput; and, from Triton's own metrics and /proc, how many rows
its model executions held and the CPU it spent per caller's request on each path (requests that reach it spread out make
smaller dynamic batches, each of which costs it more per row). It does so twice where there are two cores or more: once
with every process free to run on any core, and once with Triton and the load generator on one core and the gateways on
another, as a gateway pod with CPU of its own would run: the first says what the hop costs on a machine it shares, the
second whether the gateway keeps up with Triton when it is not taking Triton's CPU. Beside the gateways runs a bare
forwarder (tests/benchmarks/forwarder.py): what any Python hop costs here, the floor the gateway's figures are read
against. Then tenancy, at concurrency 1: what tokens, tenant limits and the access log cost (a gateway with a YAML token
file and an access log file against one with neither), and a tenant's p50/p99 with and without a noisy neighbour that
its rate limit keeps answering 429 (4 connections sending as fast as they can, from a thread of their own).
With --against a checkout's src folder, a gateway of that code runs beside this one's (the same route table), so a
change is measured against the code before it in one run. Run from the repository root:
.venv/bin/python -m tests.benchmarks.bench_gateway [--tenancy-only] [--against OTHER_CHECKOUT/src]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tests.integration.serving.conftest import BASELINE, RUNTIME, Threshold, body, register, signature

from kubeforge.api.modeldeployment import DriftMonitoring, ModelRef
from kubeforge.core.mlflow_rest import MLflowRegistry
from kubeforge.local import mlflow_server
from kubeforge.local import triton as local_triton
from kubeforge.local.processes import free_port, listening, spawn, terminate, wait_http
from kubeforge.operators.deployment.versions import Versions
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


def _request(path: str, token: str | None = None) -> bytes:
    payload = body([[0.7, 0.1, 0.2, 0.3]])
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def _round(
    port: int, path: str, concurrency: int, total: int, token: str | None = None
) -> tuple[list[float], float]:
    request = _request(path, token)
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, request, total // concurrency, latencies) for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1e3


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway(
    work: Path, name: str, routes: dict, stops: list, args: tuple[str, ...] = (), src: str | None = None
) -> tuple[int, int]:
    """Start a gateway process serving routes (src: the kubeforge package from that source folder instead of
    this one's); returns its port and pid."""
    (work / f"{name}.yaml").write_text(yaml.safe_dump(routes))
    port = free_port()
    argv = [sys.executable, "-m", "kubeforge.serving", "gateway", "--routes", str(work / f"{name}.yaml")]
    env = None if src is None else {**os.environ, "PYTHONPATH": src}
    proc = spawn([*argv, "--port", str(port), *args], work / f"{name}.log", env)
    stops.append(lambda: terminate(proc.pid))
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc, work / f"{name}.log")
    return port, proc.pid


def _forwarder(work: Path, upstream: str, path: str, stops: list) -> tuple[int, int]:
    """Start the bare forwarder (tests/benchmarks/forwarder.py) in front of upstream's path; its port and pid."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.benchmarks.forwarder", str(port), upstream, path]
    proc = spawn(argv, work / "forwarder.log")
    stops.append(lambda: terminate(proc.pid))
    deadline = time.monotonic() + 30
    while not listening(port):
        assert time.monotonic() < deadline and proc.poll() is None, (work / "forwarder.log").read_text()
        time.sleep(0.1)
    return port, proc.pid


def _compare(concurrency: int, what: str, lat: list[float], base: list[float], rps: float, base_rps: float) -> None:
    added50, added99 = _pct(lat, 0.5) - _pct(base, 0.5), _pct(lat, 0.99) - _pct(base, 0.99)
    print(
        f"concurrency {concurrency}: {what} adds p50 {added50:.3f} ms, p99 {added99:.3f} ms; "
        f"throughput {rps / base_rps:.1%}"
    )


TOKENS = """\
tenants:
  calm: {maxConcurrent: 64}
  noisy: {requestsPerSecond: 50, burst: 10}
tokens:
  - {name: calm-app, tenant: calm, token: calm-token}
  - {name: noisy-batch, tenant: noisy, priority: batch, token: noisy-token}
"""


def _flood(port: int, path: str, stop: threading.Event, statuses: dict[bytes, int]) -> None:
    """The noisy tenant: 4 keep-alive connections sending as fast as they can until stop, in an event loop of
    their own; counts answers by status."""
    request = _request(path, "noisy-token")

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not stop.is_set():
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(x.split(b":", 1)[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            statuses[head[9:12]] = statuses.get(head[9:12], 0) + 1
        writer.close()

    async def flood() -> None:
        await asyncio.gather(*(connection() for _ in range(4)))

    asyncio.run(flood())


def _tenancy(work: Path, routes: dict, infer: str, procs: list) -> None:
    """Tokens, limits and the access log against none of them; a tenant beside a throttled neighbour."""
    (work / "tokens").write_text(TOKENS)
    args = ("--tokens", str(work / "tokens"), "--access-log", str(work / "access.jsonl"))
    plain, tenants = (
        _gateway(work, "plain", routes, procs, ("--access-log", "off")),
        _gateway(work, "tenants", routes, procs, args),
    )
    per_round = PER_ROUND[1]
    lat: dict[str, list[float]] = {"plain": [], "tenants": [], "beside": []}
    cpu = {"plain": 0.0, "tenants": 0.0, "beside": 0.0}
    noisy: dict[bytes, int] = {}
    for (port, _), token in ((plain, None), (tenants, "calm-token")):  # warm-up
        asyncio.run(_round(port, infer, 1, per_round // 4, token))
    for _ in range(ROUNDS):
        for name, (port, pid), token in (("plain", plain, None), ("tenants", tenants, "calm-token")):
            used = _cpu_seconds(pid)
            lat[name] += asyncio.run(_round(port, infer, 1, per_round, token))[0]
            cpu[name] += _cpu_seconds(pid) - used
        stop = threading.Event()
        flood = threading.Thread(target=_flood, args=(tenants[0], infer, stop, noisy))
        used = _cpu_seconds(tenants[1])
        flood.start()
        try:
            lat["beside"] += asyncio.run(_round(tenants[0], infer, 1, per_round, "calm-token"))[0]
        finally:
            stop.set()
            flood.join()
        cpu["beside"] += _cpu_seconds(tenants[1]) - used
    print(f"{'concurrency':>11} {'path':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, values in lat.items():
        print(f"{1:>11} {name:>8} {_pct(values, 0.5):>8.3f} {_pct(values, 0.99):>8.3f}")
    off, on = (cpu[k] / len(lat[k]) * 1e6 for k in ("plain", "tenants"))
    added50, added99 = (
        _pct(lat["tenants"], 0.5) - _pct(lat["plain"], 0.5),
        _pct(lat["tenants"], 0.99) - _pct(lat["plain"], 0.99),
    )
    print(
        f"tokens, tenant limits and the access log add p50 {added50:.3f} ms, p99 {added99:.3f} ms; gateway CPU per "
        f"request {off:.0f} µs without, {on:.0f} µs with them ({on / off - 1:+.1%})"
    )
    added50, added99 = (
        _pct(lat["beside"], 0.5) - _pct(lat["tenants"], 0.5),
        _pct(lat["beside"], 0.99) - _pct(lat["tenants"], 0.99),
    )
    answered, refused = noisy.get(b"200", 0), noisy.get(b"429", 0)
    seconds = sum(lat["beside"])
    per_refusal = (cpu["beside"] - on / 1e6 * (len(lat["beside"]) + answered)) / max(refused, 1) * 1e6
    print(
        f"a tenant beside a neighbour over its rate limit ({answered} answered, {refused} refused 429 in "
        f"{seconds:.1f} s): p50 {added50:+.3f} ms, p99 {added99:+.3f} ms; a refusal costs the gateway about "
        f"{per_refusal:.0f} µs of CPU"
    )


def metric_total(url: str, name: str) -> float:
    """The sum of a metric's labelled series, as the Prometheus endpoint at url shows them now."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE))


def _triton_counts(triton: local_triton.TritonServer, pids: set[int]) -> tuple[float, float]:
    """Model executions Triton ran (a dynamic batch is one), and the CPU seconds of its processes (pids: its process
    tree), so far."""
    executions = metric_total(triton.metrics_url, "nv_inference_exec_count")
    return executions, sum(_cpu_seconds(pid) for pid in pids)


def _measure(
    targets: dict[str, tuple[int, str]], gateways: dict[str, tuple[int, int]], triton: local_triton.TritonServer
) -> None:
    """Alternate rounds to each target at concurrency 1 and 16; print latency, throughput, the gateways' CPU and
    what Triton spent on each path's requests: how many rows (callers' one-row requests) its model executions held,
    and its CPU per caller's request (a joined request is several)."""
    print(f"{'concurrency':>11} {'path':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'batch':>6} {'Triton µs':>9}")
    pids = _tree(triton.pid)  # its model instances' processes too, started with it
    for concurrency, per_round in PER_ROUND.items():
        lat: dict[str, list[float]] = {k: [] for k in targets}
        rps: dict[str, list[float]] = {k: [] for k in targets}
        cpu = dict.fromkeys(gateways, 0.0)
        at_triton = {k: [0.0, 0.0] for k in targets}  # executions, CPU seconds
        for p, path in targets.values():  # warm-up
            asyncio.run(_round(p, path, concurrency, per_round // 4))
        for _ in range(ROUNDS):  # alternate, so a shared machine's changing load hits each alike
            for k, (p, path) in targets.items():
                used = _cpu_seconds(gateways[k][1]) if k in gateways else 0.0
                before = _triton_counts(triton, pids)
                latencies, throughput = asyncio.run(_round(p, path, concurrency, per_round))
                after = _triton_counts(triton, pids)
                at_triton[k] = [a + now - then for a, now, then in zip(at_triton[k], after, before, strict=True)]
                if k in gateways:
                    cpu[k] += _cpu_seconds(gateways[k][1]) - used
                lat[k] += latencies
                rps[k].append(throughput)
        for k in targets:
            p50, p99 = _pct(lat[k], 0.5), _pct(lat[k], 0.99)
            executions, seconds = at_triton[k]
            print(
                f"{concurrency:>11} {k:>8} {p50:>8.3f} {p99:>8.3f} {statistics.median(rps[k]):>8.0f} "
                f"{len(lat[k]) / executions:>6.2f} {seconds / len(lat[k]) * 1e6:>9.0f}"
            )
        median = {k: statistics.median(v) for k, v in rps.items()}
        _compare(concurrency, "the gateway", lat["gateway"], lat["direct"], median["gateway"], median["direct"])
        _compare(concurrency, "drift tracking", lat["drift"], lat["gateway"], median["drift"], median["gateway"])
        _compare(concurrency, "joining requests", lat["joined"], lat["gateway"], median["joined"], median["gateway"])
        _compare(concurrency, "the joining gateway", lat["joined"], lat["direct"], median["joined"], median["direct"])
        _compare(concurrency, "a bare forwarder", lat["floor"], lat["direct"], median["floor"], median["direct"])
        off, on, joined, floor = (cpu[k] / len(lat[k]) * 1e6 for k in ("gateway", "drift", "joined", "floor"))
        print(
            f"concurrency {concurrency}: gateway CPU per request {off:.0f} µs without drift tracking, "
            f"{on:.0f} µs with it ({on / off - 1:+.1%}), {joined:.0f} µs joining requests ({joined / off - 1:+.1%}); "
            f"the bare forwarder {floor:.0f} µs"
        )
        if "before" in targets:
            _compare(
                concurrency,
                "this tree over --against",
                lat["gateway"],
                lat["before"],
                median["gateway"],
                median["before"],
            )
            before = cpu["before"] / len(lat["before"]) * 1e6
            print(
                f"concurrency {concurrency}: gateway CPU per request {off:.0f} µs, --against's {before:.0f} µs "
                f"({off / before - 1:+.1%})"
            )


def _tree(pid: int) -> set[int]:
    """pid and its descendants (Triton's python backend runs each model instance in a process of its own)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents.setdefault(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(
                    int(entry.name)
                )
    found, todo = set(), [pid]
    while todo:
        found.add(current := todo.pop())
        todo += parents.get(current, [])
    return found


def _pin(pids: set[int], cpus: set[int]) -> None:
    """Run every thread of pids on cpus only."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cpus)


@dataclass
class Serving:
    """What every gateway benchmark measures against: MLflow, the tiny classifier registered as "bench" and
    exported, and one tritonserver serving it."""

    work: Path
    mlflow_url: str
    version: str
    triton: local_triton.TritonServer
    procs: list[Callable[[], None]]
    """How to stop what was started, in start order; a benchmark adds its own processes."""

    @property
    def stable(self) -> dict[str, Any]:
        """The route of the registered version, all traffic to it."""
        return {"version": self.version, "role": "stable", "url": self.triton.url, "weight": 100}


@contextlib.contextmanager
def serving(prefix: str, **registered: Any) -> Iterator[Serving]:
    """Start what Serving names (registered: more arguments of the registration); stop it all afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    ml = mlflow_server.start(work / "mlflow")
    procs: list[Callable[[], None]] = []
    try:
        version = register(ml.url, "bench", Threshold(0.0, 1.0), signature(), **registered)
        export.export(ml.url, ModelRef(name="bench", version=int(version)), work / "repo", RUNTIME)
        triton = local_triton.start(work / "repo", work / "triton", models=["bench"])
        procs.append(triton.stop)
        yield Serving(work, ml.url, version, triton, procs)
    finally:
        for stop in reversed(procs):
            stop()
        ml.stop()


def main() -> None:
    with serving("bench-gateway-", baseline=BASELINE) as bench:
        work, triton, version, procs, stable = bench.work, bench.triton, bench.version, bench.procs, bench.stable
        found = Versions(MLflowRegistry(bench.mlflow_url)).baseline("bench", version)
        assert found is not None and found.drift is not None, "the version has a baseline"
        tracked = {"versions": [{**stable, "drift": found.drift.to_wire()}], "drift": DriftMonitoring().to_wire()}
        joining = {"versions": [stable], "joinRequests": True}
        infer = "/v2/models/bench/infer"
        pinned = f"/v2/models/bench/versions/{version}/infer"
        gateways = {
            "gateway": _gateway(work, "gateway", {"models": {"bench": {"versions": [stable]}}}, procs),
            "drift": _gateway(work, "drift", {"models": {"bench": tracked}}, procs),
            "joined": _gateway(work, "joined", {"models": {"bench": joining}}, procs),
            "floor": _forwarder(work, triton.url, pinned, procs),
        }
        if "--against" in sys.argv[1:]:  # another checkout's src folder: its gateway measured beside this one's
            src = sys.argv[sys.argv.index("--against") + 1]
            gateways["before"] = _gateway(work, "before", {"models": {"bench": {"versions": [stable]}}}, procs, src=src)
        targets = {"direct": (triton.http_port, pinned), **{k: (port, infer) for k, (port, _) in gateways.items()}}
        if "--tenancy-only" not in sys.argv[1:]:
            print("Triton, the load generator and the gateways share every core:")
            _measure(targets, gateways, triton)
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) >= 2:
                print(
                    f"Triton and the load generator on CPU {cores[0]}, the gateways on CPU {cores[1]} "
                    "(each its own core, as pods with their own CPU have):"
                )
                _pin(_tree(triton.pid) | {os.getpid()}, {cores[0]})
                _pin(set().union(*(_tree(pid) for _, pid in gateways.values())), {cores[1]})
                try:
                    _measure(targets, gateways, triton)
                finally:
                    _pin(_tree(triton.pid) | {os.getpid()} | {pid for _, pid in gateways.values()}, set(cores))
        _tenancy(work, {"models": {"bench": {"versions": [stable]}}}, infer, procs)


if __name__ == "__main__":
    main()
