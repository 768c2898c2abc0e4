"""Drift sketch update cost per feature value, and PSI + KS over 100 features, beside straightforward numpy.

The update is what every request pays on the gateway's path: DriftTracker.observe binning
a request's rows into the window. Its baseline is the straightforward way to bin the same
values, one np.searchsorted per column then np.bincount. The report is what a scrape or
an analysis pays: PSI and KS of 100 features (20 bins each, as the trainer writes them)
over a full window of 30 buckets. Targets: at most 5 µs per value, at most 50 ms for 100
features. Figures are the median of several repeats.

    .venv/bin/python tests/benchmarks/bench_drift.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from kubeforge.core.modelcontract import Baseline
from kubeforge.monitoring.drift import from_baseline
from kubeforge.training.baseline import compute


def _baseline(n_features: int) -> tuple[Baseline, list[str]]:
    training = np.random.default_rng(0).normal(size=(10_000, n_features))
    names = [f"f{i}" for i in range(n_features)]
    return compute(training, names), names


def _per_call(action: Callable[[], object], calls: int, repeats: int) -> float:
    """Median seconds per call of action over repeats rounds of calls."""
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            action()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def _searchsorted(baseline: Baseline) -> Callable[[np.ndarray], np.ndarray]:
    """Bin rows at the baseline's edges with one np.searchsorted per column, outer bins included."""
    edges = [np.array(h.edges) for h in baseline.features]
    widths = np.array([len(e) + 1 for e in edges])
    starts = np.cumsum(widths) - widths

    def bin_columns(rows: np.ndarray) -> np.ndarray:
        slot = np.column_stack([np.searchsorted(e, rows[:, j], "right") for j, e in enumerate(edges)])
        return np.bincount((slot + starts).ravel(), minlength=int(widths.sum()))

    return bin_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    now = [0.0]

    def clock() -> float:
        return now[0]

    n_features = 30
    baseline, names = _baseline(n_features)
    tracker = from_baseline(baseline, names, task="regression", clock=clock)
    plain = _searchsorted(baseline)
    rng = np.random.default_rng(1)
    print(f"sketch update, {n_features} features (target <= 5 µs per value):")
    for rows, calls in ((1, 20_000), (64, 2_000), (1024, 200)):
        request = rng.normal(size=(rows, n_features))
        ours = _per_call(lambda r=request: tracker.observe(r), calls, args.repeats)
        theirs = _per_call(lambda r=request: plain(r), calls, args.repeats)
        per_value = 1e6 / (rows * n_features)
        print(
            f"  {rows:>5} rows: {ours * 1e6:8.1f} µs per request, {ours * per_value:6.3f} µs per value"
            f"   (per-column searchsorted: {theirs * 1e6:8.1f} µs, {theirs * per_value:6.3f} µs per value)"
        )
    outputs = rng.normal(size=(64, 1))
    for _ in range(20):  # past the reference of the first predictions
        tracker.observe_predictions(outputs)
    cost = _per_call(lambda: tracker.observe_predictions(outputs), 2_000, args.repeats)
    print(f"  predictions, 64 rows: {cost * 1e6:.1f} µs per request")

    wide = from_baseline(*_baseline(100), clock=clock)
    for second in range(300):  # every bucket of the window holds counts
        now[0] = float(second)
        wide.observe(rng.normal(size=(8, 100)))
    cost = _per_call(wide.report, 50, args.repeats)
    print(f"PSI + KS over 100 features, full window: {cost * 1e3:.2f} ms (target <= 50 ms)")
    print(f"memory of the 100-feature tracker: {wide.nbytes / 1024:.0f} KiB, whatever the traffic")


if __name__ == "__main__":
    main()
