"""The FeatureView operator's Prometheus metrics (served by `kubeforge operator run --metrics-address`).

Online lookups are counted where they happen, in the inference gateway; these cover what
the operator sees: how old each view's newest online value is against its ttl, and how
materialization runs go.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

FRESHNESS = Gauge(
    "kubeforge_featureview_freshness_seconds",
    "Age of the newest value of a FeatureView in the online store",
    ["namespace", "featureview"],
)
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


def observe(
    namespace: str, name: str, ttl: float | None, freshness: float | None, finished: tuple[str, int] | None
) -> None:
    """Record what one reconcile of a FeatureView saw; ttl is None while the spec is invalid."""
    if ttl is None:
        with contextlib.suppress(KeyError):  # never observed
            TTL.remove(namespace, name)
    else:
        TTL.labels(namespace, name).set(ttl)
    if freshness is not None:
        FRESHNESS.labels(namespace, name).set(freshness)
    if finished is not None:
        result, rows = finished
        MATERIALIZATIONS.labels(namespace, name, result).inc()
        ROWS.labels(namespace, name).inc(rows)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted view's series, so dashboards do not show it as ever older."""
    series = [
        (FRESHNESS, ()),
        (TTL, ()),
        (ROWS, ()),
        (MATERIALIZATIONS, ("succeeded",)),
        (MATERIALIZATIONS, ("failed",)),
    ]
    for metric, extra in series:
        with contextlib.suppress(KeyError):  # never observed
            metric.remove(namespace, name, *extra)
