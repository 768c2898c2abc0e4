"""The FeatureView operator's Prometheus metrics (served by `kubeforge operator run --metrics-address`).

Online lookups are counted where they happen, in the inference gateway; these cover what
the operator sees: how old each view's newest online value is and how materialization runs go.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

FRESHNESS = Gauge(
    "kubeforge_featureview_freshness_seconds",
    "Age of the newest value of a FeatureView in the online store",
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


def observe(namespace: str, name: str, freshness: float | None, finished: tuple[str, int] | None) -> None:
    """Record what one reconcile of a FeatureView saw."""
    if freshness is not None:
        FRESHNESS.labels(namespace, name).set(freshness)
    if finished is not None:
        result, rows = finished
        MATERIALIZATIONS.labels(namespace, name, result).inc()
        ROWS.labels(namespace, name).inc(rows)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted view's series, so dashboards do not show it as ever older."""
    series = [(FRESHNESS, ()), (ROWS, ()), (MATERIALIZATIONS, ("succeeded",)), (MATERIALIZATIONS, ("failed",))]
    for metric, extra in series:
        with contextlib.suppress(KeyError):  # never observed
            metric.remove(namespace, name, *extra)
