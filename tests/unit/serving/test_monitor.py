"""Drift at the gateway: the series /metrics shows per version and feature, windows across reloads, bad input."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.serving.metrics import REGISTRY
from kubeforge.serving.monitor import FLUSH_REQUESTS, DriftCollector, Monitor
from kubeforge.serving.routes import Route, RouteTable, compile_table
from kubeforge.training.baseline import compute

FEATURES = ["f0", "f1", "f2", "f3"]
MIN_SAMPLES = 200


@pytest.fixture(scope="module")
def baseline() -> list[dict]:
    training = np.random.default_rng(0).normal(size=(20_000, 4))
    return json.loads(compute(training, FEATURES).model_dump_json())["features"]


def table(baseline: list[dict], window: str = "1m") -> RouteTable:
    drift = {"features": FEATURES, "baseline": baseline, "task": "classification", "classes": ["neg", "pos"]}
    versions = [
        {"version": "1", "role": "stable", "url": "http://127.0.0.1:1", "weight": 90, "drift": drift},
        {"version": "2", "role": "canary", "url": "http://127.0.0.1:2", "weight": 10},  # registered without one
    ]
    return RouteTable.model_validate(
        {"models": {"clf": {"versions": versions, "drift": {"window": window, "minSamples": MIN_SAMPLES}}}}
    )


def request(rows: np.ndarray, binary: bool) -> tuple[bytes, int | None]:
    tensor = {"name": "features", "datatype": "FP32", "shape": list(rows.shape)}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": rows.tolist()}]}).encode(), None
    values = rows.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(values)}}]}).encode()
    return header + values, len(header)


def answer(rows: int) -> tuple[bytes, int | None]:
    probabilities = np.tile(np.array([[0.2, 0.8]], dtype=np.float32), (rows, 1))
    output = {"name": "outputs", "datatype": "FP32", "shape": [rows, 2], "data": probabilities.ravel().tolist()}
    return json.dumps({"outputs": [output]}).encode(), None


def serve(monitor: Monitor, route: Route, version: str, rows: np.ndarray) -> None:
    """What the gateway hands over, on its event loop, for each answered request of 4 rows, alternately JSON and
    binary."""
    target = route.versions[version]

    async def answered() -> None:
        for i in range(0, len(rows), 4):
            monitor.record(target, *request(rows[i : i + 4], binary=i % 8 == 0), *answer(len(rows[i : i + 4])))

    asyncio.run(answered())


def scrape(monitor: Monitor) -> dict[str, dict[tuple, float]]:
    """{metric: {labels: value}} of the drift collector's exposition, as Prometheus reads it."""
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: monitor.tracked, monitor.flush))
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(version: str, role: str, **more: str) -> tuple:
    return tuple(sorted({"model": "clf", "version": version, "role": role, **more}.items()))


def test_the_collector_exports_psi_and_ks_per_feature_and_prediction_drift_per_version(baseline) -> None:
    rng = np.random.default_rng(1)
    monitor = Monitor()
    routes = compile_table(table(baseline), {})
    monitor.load(routes.values())
    live = rng.normal(size=(1600, 4))
    live[:, 1:3] += 3  # two features 3 training standard deviations away
    serve(monitor, routes["clf"], "1", live)
    serve(monitor, routes["clf"], "2", live)  # the canary has no baseline: nothing to compare with

    series = scrape(monitor)

    psi, ks = series["kubeforge_drift_psi"], series["kubeforge_drift_ks"]
    assert set(psi) == set(ks) == {labels("1", "stable", feature=f) for f in FEATURES}
    for feature in ("f0", "f3"):
        assert psi[labels("1", "stable", feature=feature)] < 0.05
        assert ks[labels("1", "stable", feature=feature)] < 0.05
    for feature in ("f1", "f2"):
        assert psi[labels("1", "stable", feature=feature)] > 2
        assert ks[labels("1", "stable", feature=feature)] > 0.8
    assert series["kubeforge_drift_window_samples"] == {labels("1", "stable"): 1600}
    # The first 1000 predictions are the reference, the 600 after them the window: all one class, as before.
    assert series["kubeforge_prediction_drift_psi"] == {labels("1", "stable"): 0.0}


def test_below_the_minimum_samples_a_version_shows_its_window_and_no_statistics(baseline) -> None:
    monitor = Monitor()
    routes = compile_table(table(baseline), {})
    monitor.load(routes.values())
    serve(monitor, routes["clf"], "1", np.random.default_rng(2).normal(size=(MIN_SAMPLES - 4, 4)))

    series = scrape(monitor)

    assert series["kubeforge_drift_window_samples"] == {labels("1", "stable"): MIN_SAMPLES - 4}
    assert "kubeforge_drift_psi" not in series and "kubeforge_drift_ks" not in series


def test_a_reload_keeps_a_versions_window_unless_its_baseline_or_settings_change(baseline) -> None:
    monitor = Monitor()
    routes = compile_table(table(baseline), {})
    monitor.load(routes.values())
    serve(monitor, routes["clf"], "1", np.random.default_rng(3).normal(size=(400, 4)))
    known = {t.key: t for t in routes["clf"].versions.values()}

    promoted = table(baseline)
    promoted.models["clf"].versions[0].weight = 50  # a canary step: same versions, same baselines
    routes = compile_table(promoted, known)
    monitor.load(routes.values())
    kept = scrape(monitor)["kubeforge_drift_window_samples"]

    routes = compile_table(table(baseline, window="2m"), known)
    monitor.load(routes.values())
    fresh = scrape(monitor)["kubeforge_drift_window_samples"]

    assert kept == {labels("1", "stable"): 400}
    assert fresh == {labels("1", "stable"): 0}


def test_input_the_tracker_cannot_read_is_counted_and_the_rest_still_observed(baseline) -> None:
    monitor = Monitor()
    routes = compile_table(table(baseline), {})
    monitor.load(routes.values())
    target = routes["clf"].versions["1"]
    errors = REGISTRY.get_sample_value("kubeforge_drift_errors_total", dict(labels("1", "stable"))) or 0.0
    serve(monitor, routes["clf"], "1", np.zeros((8, 4)))
    monitor.record(target, *request(np.zeros((2, 3)), binary=False), *answer(2))  # 3 features, not 4
    monitor.record(target, b"{not json", None, *answer(1))

    series = scrape(monitor)

    assert series["kubeforge_drift_window_samples"] == {labels("1", "stable"): 8}
    after = REGISTRY.get_sample_value("kubeforge_drift_errors_total", dict(labels("1", "stable")))
    assert after == errors + 2


def test_queued_requests_are_counted_in_the_background_without_a_scrape(baseline) -> None:
    monitor = Monitor()
    routes = compile_table(table(baseline), {})
    monitor.load(routes.values())
    target = routes["clf"].versions["1"]
    rows = np.random.default_rng(4).normal(size=(4 * FLUSH_REQUESTS, 4))

    async def answered_while_running() -> int:
        counting = asyncio.create_task(monitor.run())
        for i in range(0, len(rows), 4):
            monitor.record(target, *request(rows[i : i + 4], binary=False), *answer(4))
            await asyncio.sleep(0)  # each response goes out before the next request comes in
        async with asyncio.timeout(30):
            while target.drift.pending:
                await asyncio.sleep(0.01)
        counting.cancel()
        return target.drift.tracker.report().samples

    assert asyncio.run(answered_while_running()) == len(rows)
