"""The request path's plain-number metric families expose what prometheus_client's own would, sample for sample,
so dashboards, alerts and canary analysis read them unchanged."""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

from kubeforge.serving import loopmetrics

BUCKETS = (0.0001, 0.001, 0.0025, 0.01, 1, 10)
OBSERVED = [0.00005, 0.0001, 0.0004, 0.001, 0.001, 0.002, 0.0025, 0.5, 1, 9.99, 10, 12.5, 0.0]


def exposition(registry: CollectorRegistry) -> list[str]:
    """Every line Prometheus reads, less the _created series the plain families leave out."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def test_plain_families_expose_what_prometheus_clients_own_do() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    families: list[tuple[Any, Any]] = [
        (
            prometheus_client.Counter("requests", "Requests by code", ["model", "code"], registry=theirs),
            prometheus_client.Histogram("duration_seconds", "Seconds", ["model"], buckets=BUCKETS, registry=theirs),
        ),
        (
            loopmetrics.Counter("requests", "Requests by code", ["model", "code"], registry=ours),
            loopmetrics.Histogram("duration_seconds", "Seconds", ["model"], buckets=BUCKETS, registry=ours),
        ),
    ]
    for counter, histogram in families:
        counter.labels("clf", "200").inc()
        counter.labels("clf", "200").inc(2.5)
        counter.labels("other", "503").inc()
        counter.labels("idle", "200")  # a series at 0
        for seconds in OBSERVED:
            histogram.labels("clf").observe(seconds)
        histogram.labels("idle")
    assert exposition(ours) == exposition(theirs)
    assert 'requests_total{code="200",model="clf"} 3.5' in exposition(ours)
    assert 'duration_seconds_bucket{le="0.001",model="clf"} 6.0' in exposition(ours), "a bound holds what equals it"
    assert 'duration_seconds_bucket{le="+Inf",model="clf"} 13.0' in exposition(ours)
