"""The gateway's gRPC hop over calling Triton's gRPC port directly, measured side by side in one run on loopback.

Starts MLflow, registers the tiny classifier, exports it, starts tritonserver and a gateway serving gRPC and REST,
then sends the same ModelInfer request (one row, raw input contents, as tritonclient.grpc sends it) to Triton's
gRPC port and to the gateway's in alternating rounds at concurrency 1 and 16, one grpc.aio channel with a
pre-serialized request so the load generator spends no CPU on protobuf. Prints p50/p99, added latency and the
throughput ratio, and the gateway's CPU time per request (from /proc) for gRPC beside the same request over REST,
which is what translating between the two costs, and beside servers whose ModelInfer only returns an empty answer:
a grpc.aio server on uvloop, as the gateway runs it (the floor Python's gRPC server costs before any gateway
work), grpcio's thread-pool server, and the thread-pool server handing each call to an asyncio loop in another
thread, as the gateway's async work would need it. A second gateway with joinRequests takes the same calls over
gRPC and REST: how many of its callers were joined over each. Run from the repository root:
.venv/bin/python -m tests.benchmarks.bench_grpc
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop
from tests.benchmarks.bench_gateway import _compare, _cpu_seconds, _gateway, _pct, _round, metric_total, serving
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from kubeforge.core import modelcontract as mc
from kubeforge.local.processes import free_port, spawn, terminate

ROUNDS = 5
PER_ROUND = {1: 300, 16: 1200}
INFER = "/inference.GRPCInferenceService/ModelInfer"


def _request(version: str = "") -> bytes:
    row = np.array([[0.7, 0.1, 0.2, 0.3]], dtype=np.float32)
    request = pb.ModelInferRequest(model_name="bench", model_version=version, raw_input_contents=[row.tobytes()])
    request.inputs.add(name=mc.INPUT_NAME, datatype="FP32", shape=list(row.shape))
    return request.SerializeToString()


async def _grpc_round(port: int, request: bytes, concurrency: int, total: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(INFER)  # bytes in, bytes out: no protobuf on the load generator's side

        async def caller() -> None:
            for _ in range(total // concurrency):
                start = time.perf_counter()
                await infer(request)
                latencies.append(time.perf_counter() - start)

        await infer(request)  # connect before the clock starts
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, len(latencies) / (time.perf_counter() - start)


def _empty(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_name=request.model_name)


class _AsyncEmpty(service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
        return _empty(request)


class _ThreadEmpty(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers in the server's thread, or with loop, from a coroutine run there (run_coroutine_threadsafe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop

    def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
        if self.loop is None:
            return _empty(request)

        async def answer() -> pb.ModelInferResponse:
            return _empty(request)

        return asyncio.run_coroutine_threadsafe(answer(), self.loop).result()


async def _aio_floor(port: int) -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_AsyncEmpty(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _thread_floor(port: int, bridged: bool) -> None:
    loop = None
    if bridged:
        loop = uvloop.new_event_loop()  # the gateway's kind of loop
        threading.Thread(target=loop.run_forever, daemon=True).start()
    server = grpc.server(ThreadPoolExecutor(8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_ThreadEmpty(loop), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


FLOORS = ("aio", "threads", "bridged")


def _start_floor(work: Path, procs: list, kind: str) -> tuple[int, int]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.benchmarks.bench_grpc", "--floor", kind, str(port)]
    proc = spawn(argv, work / f"floor-{kind}.log")
    procs.append(lambda: terminate(proc.pid))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return port, proc.pid


@dataclass
class Seen:
    """What the rounds against one target measured."""

    latencies: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)
    cpu: float = 0.0
    joined: float = 0.0

    def measure(
        self,
        run: Callable[[int, int], Coroutine[Any, Any, tuple[list[float], float]]],
        pid: int,
        c: int,
        n: int,
        joins: int | None = None,
    ):
        """One round; joins: the HTTP port of a joining gateway, whose callers joined are counted (read outside the
        round's CPU time: a scrape is not a request's work)."""
        joined = _joined(joins) if joins else 0.0
        used = _cpu_seconds(pid)
        latencies, throughput = asyncio.run(run(c, n))
        self.cpu += _cpu_seconds(pid) - used
        self.joined += _joined(joins) - joined if joins else 0.0
        self.latencies += latencies
        self.throughputs.append(throughput)


def _joined(port: int) -> float:
    """The callers' requests a gateway has sent inside joined requests so far."""
    return metric_total(f"http://127.0.0.1:{port}/metrics", "kubeforge_gateway_joined_requests_total")


def main() -> None:
    with serving("bench-grpc-") as bench:
        work, triton, version, procs = bench.work, bench.triton, bench.version, bench.procs
        grpc_port = free_port()
        routes = {"models": {"bench": {"versions": [bench.stable]}}}
        http_port, pid = _gateway(
            work, "gateway", routes, procs, ("--grpc-port", str(grpc_port), "--access-log", "off")
        )
        joining = {"models": {"bench": {"versions": [bench.stable], "joinRequests": True}}}
        joined_grpc = free_port()
        joined_http, joined_pid = _gateway(
            work, "joined", joining, procs, ("--grpc-port", str(joined_grpc), "--access-log", "off")
        )
        floors = {kind: _start_floor(work, procs, kind) for kind in FLOORS}
        rounds: dict[str, Callable[[int, int], Coroutine[Any, Any, tuple[list[float], float]]]] = {
            "direct": lambda c, n: _grpc_round(triton.grpc_port, _request(version), c, n),
            "gateway": lambda c, n: _grpc_round(grpc_port, _request(), c, n),
            "rest": lambda c, n: _round(http_port, "/v2/models/bench/infer", c, n),
            "j-grpc": lambda c, n: _grpc_round(joined_grpc, _request(), c, n),
            "j-rest": lambda c, n: _round(joined_http, "/v2/models/bench/infer", c, n),
        }
        pids = {"direct": triton.pid, "gateway": pid, "rest": pid, "j-grpc": joined_pid, "j-rest": joined_pid}
        for kind, (port, floor_pid) in floors.items():
            rounds[kind] = lambda c, n, port=port: _grpc_round(port, _request(), c, n)
            pids[kind] = floor_pid
        print(f"{'concurrency':>11} {'path':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
        for concurrency, per_round in PER_ROUND.items():
            seen = {k: Seen() for k in rounds}
            for run in rounds.values():  # warm-up
                asyncio.run(run(concurrency, per_round // 4))
            for _ in range(ROUNDS):  # alternate, so a shared machine's changing load hits each alike
                for k, run in rounds.items():
                    seen[k].measure(run, pids[k], concurrency, per_round, joined_http if k.startswith("j-") else None)
            lat = {k: v.latencies for k, v in seen.items()}
            cpu = {k: v.cpu for k, v in seen.items()}
            rps = {k: v.throughputs for k, v in seen.items()}
            for k in rounds:
                p50, p99 = _pct(lat[k], 0.5), _pct(lat[k], 0.99)
                print(f"{concurrency:>11} {k:>8} {p50:>8.3f} {p99:>8.3f} {statistics.median(rps[k]):>8.0f}")
            median = {k: statistics.median(v) for k, v in rps.items()}
            _compare(
                concurrency, "the gRPC gateway", lat["gateway"], lat["direct"], median["gateway"], median["direct"]
            )
            per = {k: cpu[k] / len(lat[k]) * 1e6 for k in rounds}
            print(
                f"concurrency {concurrency}: CPU per request {per['gateway']:.0f} µs in the gateway over gRPC, "
                f"{per['rest']:.0f} µs over REST; {per['direct']:.0f} µs in Triton; empty servers: "
                f"{per['aio']:.0f} µs grpc.aio, {per['threads']:.0f} µs thread pool, "
                f"{per['bridged']:.0f} µs thread pool handing each call to an asyncio loop"
            )
            share = {k: seen[k].joined / len(lat[k]) for k in ("j-grpc", "j-rest")}
            print(
                f"concurrency {concurrency}, joinRequests: {share['j-grpc']:.1%} of the callers joined over gRPC, "
                f"{share['j-rest']:.1%} over REST; throughput of the gateway without joining "
                f"{median['j-grpc'] / median['gateway']:.1%} over gRPC, {median['j-rest'] / median['rest']:.1%} over "
                f"REST; gateway CPU per request {per['j-grpc']:.0f} µs over gRPC, {per['j-rest']:.0f} µs over REST"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor"]:
        kind, floor_port = sys.argv[2], int(sys.argv[3])
        if kind == "aio":
            uvloop.run(_aio_floor(floor_port))  # on the gateway's kind of loop, which costs grpc.aio less per call
        else:
            _thread_floor(floor_port, bridged=kind == "bridged")
    else:
        main()
