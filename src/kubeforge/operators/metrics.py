"""The operators' Prometheus metrics (served by `kubeforge operator run --metrics-address`).

The alert rules and dashboards in :mod:`kubeforge.monitoring` read these series; monitoring/README.md
lists them. Each kind's reconcile is timed and its failures counted; resources are counted by
kind, namespace, phase and Ready; rollbacks are counted per ModelDeployment.

A ModelDeployment's alert targets (spec.slo, spec.monitoring.drift) are exported as gauges, for
dashboards and, where the cluster does not serve the Prometheus Operator's PrometheusRule, for
the shared rules to judge every deployment against (label alerting="shared"). Where it does
(and in the local platform), the deployment gets a rule of its own with its targets written in,
and its gauges say alerting="own" so the shared rules leave it alone: no alert fires twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..api import ModelDeployment
from ..core import kube
from ..monitoring import rules

log = logging.getLogger(__name__)

RECONCILE_DURATION = Histogram(
    "kubeforge_reconcile_duration_seconds",
    "Time one reconcile pass takes, waiting for the object's lock included",
    ["kind"],
    # The first FeatureView pass imports Feast and a finished run's pass waits for its pod's result: seconds.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECONCILE_ERRORS = Counter(
    "kubeforge_reconcile_errors",
    "Reconcile passes that failed (an exception, or a child the API server refused); each is retried",
    ["kind"],
)
CHILD_APPLIES = Counter(
    "kubeforge_modeldeployment_child_applies",
    "Children of ModelDeployments the operator applied (one request each), by namespace and the child's kind; a "
    "child unchanged since it was last applied, by this process or one before it, is not sent",
    ["namespace", "kind"],
)
ROLLBACKS = Counter(
    "kubeforge_rollbacks",
    "Canaries the operator rolled back (RolledBack events)",
    ["namespace", "modeldeployment"],
)
DEPLOYMENT = ["namespace", "modeldeployment"]
_TARGET = [*DEPLOYMENT, rules.ALERTING]
TARGET_GAUGES = {
    "error_ratio": Gauge(rules.SLO_ERROR_RATIO, "Share of requests a ModelDeployment's SLO lets fail", _TARGET),
    "latency_p99_seconds": Gauge(rules.SLO_LATENCY_P99, "p99 latency target of a ModelDeployment's SLO", _TARGET),
    "drift_psi_threshold": Gauge(
        rules.DRIFT_PSI_THRESHOLD, "PSI above which a ModelDeployment's inputs or predictions drifted", _TARGET
    ),
}
"""A gauge per field of Targets, named as the shared rules read them."""

RETRAINS = Counter(
    "kubeforge_retrains",
    "Retrain TrainingJobs a ModelDeployment's spec.retrain created, by the trigger that fired",
    [*DEPLOYMENT, "trigger"],
)
RETRAIN_FAILED = Gauge(
    "kubeforge_modeldeployment_retrain_failed",
    "1 while a ModelDeployment's last retrain failed, which stops further retrains until its TrainingJob is deleted; "
    "0 otherwise, also without spec.retrain",
    DEPLOYMENT,
)

RESOURCES = "kubeforge_resources"
NO_READY = "Unknown"
"""The ready label of an object without a Ready condition yet (the value Kubernetes uses for an unknown status)."""

PROMETHEUS_RULE = ("monitoring.coreos.com/v1", "PrometheusRule")
RULES_RECHECK = 600.0
"""Seconds between looks at whether the cluster serves PrometheusRules: that changes only when someone installs or
removes the Prometheus Operator, not worth a request per reconcile."""

F = TypeVar("F", bound=Callable[..., Any])


def reconciled(kind: str) -> Callable[[F], F]:
    """Decorate kind's reconcile: time each pass and count those that raise (kopf retries them)."""
    timer, errors = RECONCILE_DURATION.labels(kind), RECONCILE_ERRORS.labels(kind)

    def wrap(fn: F) -> F:
        return timer.time()(errors.count_exceptions()(fn))

    return wrap


def reconcile_failed(kind: str) -> None:
    """Count a pass of kind that failed without raising (its own timer retries it)."""
    RECONCILE_ERRORS.labels(kind).inc()


class Resources(Collector):
    """Every watched object's phase and Ready condition, counted into kubeforge_resources at scrape time.

    Fed from the watch events the handlers receive anyway (each status the operator writes comes back as
    one, and the initial listing covers what existed before it started), so it costs one dict update per
    event and no request. Counting at scrape time means a combination no object has any more has no
    series: a deleted object leaves nothing behind. (A kopf index would hold the same entry per object,
    but add a handler call per event and hold the operator's start until every index is filled.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    def seen(self, kind: str, event: Mapping[str, Any]) -> None:
        """Record the object of a kopf watch event, or forget it when the event says it was deleted."""
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace", ""), meta.get("name", ""))
        status = body.get("status") or {}
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        with self._lock:
            if event.get("type") == "DELETED":
                self._objects.pop(key, None)
            else:
                self._objects[key] = (status.get("phase", ""), ready.get("status", NO_READY), ready.get("reason", ""))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = Tally((kind, ns, *state) for (kind, ns, _), state in self._objects.items())
        family = GaugeMetricFamily(
            RESOURCES,
            "Resources by kind and namespace, phase (TrainingJob's; other kinds have none), and Ready's status and "
            "reason",
            labels=["kind", "namespace", "phase", "ready", "reason"],
        )
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        yield family


RESOURCE_STATES = Resources()
REGISTRY.register(RESOURCE_STATES)


@dataclass(frozen=True)
class Targets:
    """A ModelDeployment's alert targets in the units the rules compare in (ratios, seconds); None where unset."""

    error_ratio: float | None = None
    latency_p99_seconds: float | None = None
    drift_psi_threshold: float | None = None

    @classmethod
    def of(cls, md: ModelDeployment) -> Targets:
        """From spec.slo (percent, milliseconds) and spec.monitoring.drift (no threshold while drift is off)."""
        slo, drift = md.spec.slo, md.spec.monitoring.drift
        return cls(
            error_ratio=slo.error_rate_percent / 100 if slo and slo.error_rate_percent is not None else None,
            latency_p99_seconds=slo.latency_p99_ms / 1000 if slo and slo.latency_p99_ms is not None else None,
            drift_psi_threshold=drift.psi_threshold if drift.enabled else None,
        )


def export_targets(namespace: str, name: str, targets: Targets, alerting: str) -> None:
    """Set the deployment's target gauges, labelled with what judges it (rules.SHARED or rules.OWN); a target that
    is None has no series."""
    for field, value in asdict(targets).items():
        gauge = TARGET_GAUGES[field]
        for judge in (rules.SHARED, rules.OWN):
            if value is None or judge != alerting:
                _remove(gauge, namespace, name, judge)
        if value is not None:
            gauge.labels(namespace, name, alerting).set(value)


def forget_deployment(namespace: str, name: str) -> None:
    """Drop a deleted deployment's series, so no alert or dashboard reads targets of something gone."""
    export_targets(namespace, name, Targets(), rules.SHARED)
    _remove(ROLLBACKS, namespace, name)
    _remove(RETRAIN_FAILED, namespace, name)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


class _RuleSupport:
    """Whether the cluster serves PrometheusRules, looked up at most every RULES_RECHECK seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answer: bool | None = None
        self._checked = 0.0

    def served(self, api: kube.KubeApi) -> bool:
        with self._lock:
            if self._answer is None or time.monotonic() - self._checked >= RULES_RECHECK:
                answer = kube.serves(api, *PROMETHEUS_RULE)
                if answer != self._answer:
                    log.info(
                        "PrometheusRule (%s) %s: ModelDeployment alert targets go to %s",
                        PROMETHEUS_RULE[0],
                        "served" if answer else "not served",
                        "a PrometheusRule <name>-slo per deployment" if answer else "gauges the shared rules read",
                    )
                self._answer, self._checked = answer, time.monotonic()
            return self._answer


prometheus_rules_served = _RuleSupport().served
