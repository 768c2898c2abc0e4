"""The shadow report from the gateway's own metrics: mean and percentiles of a latency delta that may be negative."""

from __future__ import annotations

import statistics

import pytest
from prometheus_client import generate_latest

from kubeforge.operators.deployment import analysis as an
from kubeforge.serving.metrics import REGISTRY, SHADOW_LATENCY_DELTA, SHADOW_LATENCY_DELTA_SUM, SHADOW_PREDICTIONS

INF = float("inf")


def test_quantile_over_negative_buckets_matches_promql():
    buckets = {-0.01: 10.0, -0.005: 30.0, 0.0: 50.0, 0.005: 90.0, 0.01: 100.0, INF: 100.0}
    assert an.quantile(0.05, buckets) == -0.01, "the lowest bucket has no lower end: its bound, as PromQL"
    assert an.quantile(0.2, buckets) == pytest.approx(-0.0075)
    assert an.quantile(0.5, buckets) == pytest.approx(0.0)
    assert an.quantile(0.7, buckets) == pytest.approx(0.0025)
    assert an.quantile(0.99, buckets) == pytest.approx(0.0095)
    everything_faster = {-1.0: 0.0, -0.1: 40.0, 0.0: 40.0, INF: 40.0}
    assert an.quantile(0.5, everything_faster) == pytest.approx(-0.55)
    assert an.quantile(0.5, {0.01: 0.0, INF: 0.0}) is None, "no observations: no figure"


def test_quantile_of_positive_buckets_starts_at_zero_and_stops_at_the_last_finite_bound():
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, INF: 120.0}
    assert an.quantile(0.25, buckets) == pytest.approx(0.0006)
    assert an.quantile(0.99, buckets) == 0.005


def observe(model: str, deltas: list[float], agree: int = 0) -> str:
    """Record deltas the way the gateway's mirror does; returns the gateway's /metrics text."""
    for delta in deltas:
        SHADOW_LATENCY_DELTA.labels(model, "3").observe(delta)
        SHADOW_LATENCY_DELTA_SUM.labels(model, "3").inc(delta)
    SHADOW_PREDICTIONS.labels(model, "3", "agree").inc(agree)
    return generate_latest(REGISTRY).decode()


def test_report_of_a_slower_shadow_has_its_mean_and_percentiles():
    deltas = [0.018, 0.02, 0.021, 0.022, 0.024] * 20 + [0.3] * 3
    report = an.shadow_report(an.parse(observe("slower", deltas, agree=103), "slower", "3"), "3")
    assert report["samples"] == 103 and report["agreement"] == 1.0
    assert report["latencyDeltaMs"] == pytest.approx(statistics.mean(deltas) * 1000, abs=1e-3)
    assert 10 <= report["latencyDeltaP50Ms"] <= 25, "the median lies in the 10-25 ms bucket"
    assert 250 <= report["latencyDeltaP99Ms"] <= 500, "the slow 3 % show in the p99"


def test_report_of_a_faster_shadow_is_negative():
    deltas = [-0.004, -0.003, -0.003, 0.001]
    report = an.shadow_report(an.parse(observe("faster", deltas), "faster", "3"), "3")
    assert report["latencyDeltaMs"] == pytest.approx(-2.25)
    assert -5 <= report["latencyDeltaP50Ms"] <= -2
    assert 0 <= report["latencyDeltaP99Ms"] <= 2


def test_a_falling_delta_sum_between_scrapes_is_not_a_gateway_restart():
    before = an.parse(observe("interval", [0.01, 0.01]), "interval", "3")
    after = an.parse(observe("interval", [-0.02, -0.03]), "interval", "3")
    interval = after.minus(before)
    assert interval.delta_count == 2
    assert interval.delta_sum == pytest.approx(-0.05)
    assert an.quantile(0.5, interval.delta_buckets) < 0
