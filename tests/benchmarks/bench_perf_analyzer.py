"""Triton's own load generator, perf_analyzer, against the gateway and against Triton directly, in one run.

Starts MLflow, registers the tiny classifier, exports it, starts tritonserver and a gateway serving REST and gRPC,
then runs perf_analyzer unchanged (its model metadata and config requests included) over HTTP and gRPC at
concurrency 1 and 16 against each, alternating the targets round by round, and prints its throughput and
latencies with the gateway's throughput as a share of direct Triton's. Run from the repository root:

    .venv/bin/python -m tests.benchmarks.bench_perf_analyzer

perf_analyzer is not on PyPI on its own: it ships in tritonclient's manylinux wheels up to 2.45.0, built against
libb64 and the CUDA runtime, which it loads even for CPU-only work. `make bench-perf-analyzer` fetches it
(platform/local/install-perf-analyzer.sh; Debian's libb64-0d must be installed) and runs this with
PERF_ANALYZER set; otherwise perf_analyzer is looked for on PATH.
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.bench_gateway import _gateway, serving

from kubeforge.local.processes import free_port

ROUNDS = 3
CONCURRENCY = (1, 16)
INTERVAL_MS = 3000
"""perf_analyzer's measurement window; it measures until three windows' throughput and mean latency agree within
10 %, and reports the last three."""


def _perf_analyzer() -> str:
    found = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not found:
        sys.exit("perf_analyzer not found: set PERF_ANALYZER (see this module's docstring for where to get it)")
    return found


def _run(binary: str, protocol: str, address: str, version: str, concurrency: int, out: Path) -> dict[str, float]:
    """One perf_analyzer measurement: throughput (inferences/s), p50 and p99 latency (ms)."""
    argv = [binary, "-m", "bench", "-i", protocol, "-u", address, "-b", "1"]
    argv += ["--concurrency-range", f"{concurrency}:{concurrency}", "-p", str(INTERVAL_MS), "-f", str(out)]
    argv += ["--max-trials", "20"]  # windows until three agree; at concurrency 16 on shared cores 10 can be too few
    if version:
        argv += ["-x", version]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed against {protocol}://{address}:\n{done.stdout}\n{done.stderr}")
    row = next(csv.DictReader(out.open()))
    return {
        "rps": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1000,
        "p99": float(row["p99 latency"]) / 1000,
    }


def main() -> None:
    binary = _perf_analyzer()
    with serving("bench-pa-") as bench:
        work, triton, version = bench.work, bench.triton, bench.version
        routes = {"models": {"bench": {"versions": [bench.stable]}}}
        grpc_port = free_port()
        http_port, _ = _gateway(work, "gateway", routes, bench.procs, ("--grpc-port", str(grpc_port)))
        targets = {
            ("http", "direct"): (triton.url.removeprefix("http://"), version),
            ("http", "gateway"): (f"127.0.0.1:{http_port}", ""),
            ("grpc", "direct"): (f"127.0.0.1:{triton.grpc_port}", version),
            ("grpc", "gateway"): (f"127.0.0.1:{grpc_port}", ""),
        }
        print(f"{'protocol':>8} {'concurrency':>11} {'path':>8} {'p50 ms':>8} {'p99 ms':>8} {'infer/s':>8}")
        for concurrency in CONCURRENCY:
            seen: dict[tuple[str, str], list[dict[str, float]]] = {target: [] for target in targets}
            for i in range(ROUNDS):  # alternate, so a shared machine's changing load hits each alike
                for (protocol, path), (address, pinned) in targets.items():
                    out = work / f"{protocol}-{path}-{concurrency}-{i}.csv"
                    try:
                        seen[protocol, path].append(_run(binary, protocol, address, pinned, concurrency, out))
                    except RuntimeError as err:
                        print(err)
            for protocol in ("http", "grpc"):
                median = {}
                for path in ("direct", "gateway"):
                    runs = seen[protocol, path]
                    if not runs:
                        continue
                    median[path] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
                    m = median[path]
                    figures = f"{m['p50']:>8.3f} {m['p99']:>8.3f} {m['rps']:>8.0f}"
                    print(f"{protocol:>8} {concurrency:>11} {path:>8} {figures}")
                if len(median) < 2:
                    continue
                g, d = median["gateway"], median["direct"]
                print(
                    f"{protocol} concurrency {concurrency}: gateway {g['rps'] / d['rps']:.0%} of direct Triton's "
                    f"throughput, added p50 {g['p50'] - d['p50']:+.3f} ms, p99 {g['p99'] - d['p99']:+.3f} ms"
                )


if __name__ == "__main__":
    main()
