"""What a large route table costs the operator that writes it and the gateway that reads it, measured side by side.

The table is the one the operator plans for a ModelDeployment with a stable version, a canary and a shadow, each with
a drift baseline of --features features (300 by default, as in the unit test that holds the ConfigMap's 1 MiB).
Prints, as ratios measured in one run against the same table with its baselines as YAML numbers (as they were
written before they became JSON text, routes.VersionDrift): the operator's writing of it, and one whole pass of
rollout.plan where the table changed and where it did not (its text written before, routetext); the gateway's
reading of it (RouteTable.parse); and how long the gateway's event loop stops answering while it reads a changed
table in a thread: the longest gap between the ticks of a 1 ms timer. Run from the repository root:
.venv/bin/python -m tests.benchmarks.bench_route_table [--features N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from tests.unit.operators.test_rollout_plan import CANARY, md, run

from kubeforge.core import modelcontract as mc
from kubeforge.core import yamltext
from kubeforge.operators.deployment import routetext
from kubeforge.operators.deployment.rollout import Resolved
from kubeforge.operators.deployment.versions import version_drift
from kubeforge.serving.routes import RouteTable
from kubeforge.training.baseline import compute

TIMES = 5


def _ms(fn: Callable[[], Any]) -> float:
    """The median of TIMES calls, in milliseconds."""
    took = []
    for _ in range(TIMES):
        start = time.perf_counter()
        fn()
        took.append(time.perf_counter() - start)
    return statistics.median(took) * 1e3


async def _longest_stall(read: Callable[[], Awaitable[Any]]) -> float:
    """Milliseconds of the longest gap between ticks of a 1 ms timer while read() is awaited."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    await read()
    await asyncio.sleep(0.02)
    done.set()
    await ticker
    return max(gaps) * 1e3


def main() -> None:
    features = int(sys.argv[sys.argv.index("--features") + 1]) if "--features" in sys.argv else 300
    names = [f"feature_{i:03d}" for i in range(features)]
    rows = np.random.default_rng(1).normal(size=(2000, features))
    found = version_drift(compute(rows, names).model_dump_json().encode(), {mc.TAG_FEATURES: json.dumps(names)})
    body = md(canary=CANARY, shadow={"model": {"name": "clf", "alias": "shadow"}}, monitoring={"drift": {}})
    resolved = Resolved(stable="1", canary="2", shadow="3", baselines={("clf", v): found for v in ("1", "2", "3")})
    run(body, resolved)
    planned = run(body, resolved)
    text = next(o for o in planned.apply if o["kind"] == "ConfigMap")["data"]["routes.yaml"]
    wire = RouteTable.parse(text).to_wire()
    numbers = _with_numbers(wire)  # the same table with its baselines as YAML numbers, as before they were text
    options: dict[str, Any] = {"sort_keys": True, "default_flow_style": None, "width": 120}
    numbers_text = yamltext.dump(numbers, **options)
    print(
        f"route table: 3 versions with {features} features' baselines each, {len(text.encode()):,} bytes with the "
        f"baselines as JSON text, {len(numbers_text.encode()):,} as YAML numbers"
    )

    ours, before = _ms(lambda: yamltext.dump(wire, **options)), _ms(lambda: yamltext.dump(numbers, **options))
    print(f"operator, writing it: {ours:.1f} ms, {before:.1f} ms with YAML numbers ({before / ours:.1f}x)")

    def written_anew() -> None:
        routetext.TEXTS = routetext.Texts()  # as for a table not written before
        run(body, resolved)

    anew, unchanged = _ms(written_anew), _ms(lambda: run(body, resolved))
    print(
        f"operator, one pass of rollout.plan: {anew:.1f} ms where the table changed, {unchanged:.1f} ms where it did "
        f"not ({unchanged / anew:.0%})"
    )

    parse, before = _ms(lambda: RouteTable.parse(text)), _ms(lambda: RouteTable.parse(numbers_text))
    print(f"gateway, reading it: {parse:.1f} ms, {before:.1f} ms with YAML numbers ({before / parse:.1f}x)")

    async def stall(table: str) -> float:
        return statistics.median(
            [await _longest_stall(lambda: asyncio.to_thread(RouteTable.parse, table)) for _ in range(TIMES)]
        )

    ours, before = asyncio.run(stall(text)), asyncio.run(stall(numbers_text))
    print(
        f"gateway, its event loop's longest stall while it reads the table in a thread: {ours:.1f} ms, {before:.1f} "
        f"ms with YAML numbers ({ours / before:.0%})"
    )


def _with_numbers(wire: dict[str, Any]) -> dict[str, Any]:
    """The table's wire form with each baseline as the list it holds."""
    copied = json.loads(json.dumps(wire))
    for model in copied["models"].values():
        for version in model["versions"]:
            if "drift" in version:
                version["drift"]["baseline"] = json.loads(version["drift"]["baseline"])
    return copied


if __name__ == "__main__":
    main()
