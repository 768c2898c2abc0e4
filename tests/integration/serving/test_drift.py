"""Drift at the gateway in front of a real tritonserver, with each version's baseline read from MLflow as the
operator reads it: traffic like the training data reads below the drift threshold, traffic shifted on some
features reads above it on exactly those, a version without a baseline serves and has no drift series, and the
number of series does not grow with the traffic."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.api.modeldeployment import DriftMonitoring

from .conftest import DRIFT_MIN_SAMPLES, FEATURES, SHIFTED, Gateway, drift_table, send, traffic

pytestmark = pytest.mark.integration

THRESHOLD = DriftMonitoring().psi_threshold
DRIFT_SERIES = ("kubeforge_drift_psi", "kubeforge_drift_ks", "kubeforge_prediction_drift_psi")


def serve(gw: Gateway, requests: list[tuple[bytes, dict[str, str]]], path: str = "") -> None:
    results = send(f"{gw.url}/v2/models/clf{path}/infer", requests, concurrency=4)
    assert [r.status for r in results] == [200] * len(requests)


def drift(gw: Gateway) -> dict[str, dict[tuple[str, ...], float]]:
    """{metric: {(version, role, feature): value}} of the gateway's drift series."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{gw.url}/metrics").text):
        for s in family.samples:
            if s.name in (*DRIFT_SERIES, "kubeforge_drift_window_samples"):
                key = (s.labels["version"], s.labels["role"], *([s.labels["feature"]] if "feature" in s.labels else []))
                out.setdefault(s.name, {})[key] = s.value
    return out


def test_traffic_like_the_training_data_stays_below_the_threshold_and_series_stay_bounded(
    gateway, triton, registered, mlflow
):
    gw = gateway(drift_table(mlflow.url, registered, triton.url))
    stable = (registered.stable, "stable")

    serve(gw, traffic(2 * DRIFT_MIN_SAMPLES, shift=0.0, seed=1))
    first = drift(gw)
    serve(gw, traffic(2 * DRIFT_MIN_SAMPLES, shift=0.0, seed=2))
    then = drift(gw)

    assert set(first["kubeforge_drift_psi"]) == {(*stable, f) for f in FEATURES}
    for snapshot in (first, then):
        assert max(snapshot["kubeforge_drift_psi"].values()) < THRESHOLD / 4
        assert max(snapshot["kubeforge_drift_ks"].values()) < 0.05
        # The first 1000 predictions are the reference; the rest come from the same inputs, so they agree.
        assert snapshot["kubeforge_prediction_drift_psi"][stable] < THRESHOLD / 4
    assert first["kubeforge_drift_window_samples"] == {stable: 2 * DRIFT_MIN_SAMPLES}
    assert then["kubeforge_drift_window_samples"] == {stable: 4 * DRIFT_MIN_SAMPLES}
    assert {name: set(series) for name, series in first.items()} == {name: set(s) for name, s in then.items()}


def test_shifted_features_drift_above_the_threshold_and_the_others_do_not(gateway, triton, registered, mlflow):
    gw = gateway(drift_table(mlflow.url, registered, triton.url))

    serve(gw, traffic(2 * DRIFT_MIN_SAMPLES, shift=3.0, seed=3))

    psi, ks = drift(gw)["kubeforge_drift_psi"], drift(gw)["kubeforge_drift_ks"]
    for feature in FEATURES:
        key = (registered.stable, "stable", feature)
        if feature in SHIFTED:
            assert psi[key] > THRESHOLD and ks[key] > 0.5, feature
        else:
            assert psi[key] < THRESHOLD / 4 and ks[key] < 0.05, feature


def test_a_version_without_a_baseline_serves_and_has_no_drift_series(gateway, triton, registered, mlflow):
    gw = gateway(drift_table(mlflow.url, registered, triton.url))

    serve(gw, traffic(2 * DRIFT_MIN_SAMPLES, shift=3.0, seed=4), path=f"/versions/{registered.canary}")

    series = drift(gw)
    assert all(version != registered.canary for metric in series.values() for version, *_ in metric)
    assert series["kubeforge_drift_window_samples"] == {(registered.stable, "stable"): 0}
    assert "no drift baseline" in gw.log.read_text()
