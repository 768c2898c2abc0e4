"""The FeatureView operator's Prometheus metrics (served by `kubeforge operator run --metrics-address`).

Online lookups are counted where they happen, in the inference gateway; these cover what
the operator sees: how old each view's newest online value is against its ttl, and how
materialization runs go.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ...core.conditions import parse_rfc3339


class Freshness(Collector):
    """kubeforge_featureview_freshness_seconds: the age of each view's newest online value, computed when
    Prometheus scrapes from the status.newestEventTime of the view's latest watch event. Current at every
    scrape without a pass or a write per view every few seconds; a deleted view leaves no series."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: dict[tuple[str, str], float] = {}

    def seen(self, event: Mapping[str, Any]) -> None:
        """Record the view of a kopf watch event, or forget it when the event says it was deleted."""
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        newest = parse_rfc3339((body.get("status") or {}).get("newestEventTime"))
        with self._lock:
            if event.get("type") == "DELETED" or newest is None:
                self._newest.pop(key, None)
            else:
                self._newest[key] = newest.timestamp()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        with self._lock:
            newest = sorted(self._newest.items())
        family = GaugeMetricFamily(
            "kubeforge_featureview_freshness_seconds",
            "Age of the newest value of a FeatureView in the online store",
            labels=["namespace", "featureview"],
        )
        for labels, when in newest:
            family.add_metric(list(labels), max(0.0, now - when))
        yield family


FRESHNESS = Freshness()
REGISTRY.register(FRESHNESS)
TTL = Gauge(
    "kubeforge_featureview_ttl_seconds",
    "A FeatureView's spec.ttl: values older than this are not served",
    ["namespace", "featureview"],
)
MATERIALIZATIONS = Counter(
    "kubeforge_materializations",
    "Materialization runs that ended, by result (succeeded, failed)",
    ["namespace", "featureview", "result"],
)
ROWS = Counter(
    "kubeforge_materialized_rows",
    "Entity rows written to the online store by materialization runs",
    ["namespace", "featureview"],
)


def observe(namespace: str, name: str, ttl: float | None, finished: tuple[str, int] | None) -> None:
    """Record what one reconcile of a FeatureView saw; ttl is None while the spec is invalid."""
    if ttl is None:
        with contextlib.suppress(KeyError):  # never observed
            TTL.remove(namespace, name)
    else:
        TTL.labels(namespace, name).set(ttl)
    if finished is not None:
        result, rows = finished
        MATERIALIZATIONS.labels(namespace, name, result).inc()
        ROWS.labels(namespace, name).inc(rows)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted view's series, so dashboards do not show it as ever older."""
    series = [
        (TTL, ()),
        (ROWS, ()),
        (MATERIALIZATIONS, ("succeeded",)),
        (MATERIALIZATIONS, ("failed",)),
    ]
    for metric, extra in series:
        with contextlib.suppress(KeyError):  # never observed
            metric.remove(namespace, name, *extra)
