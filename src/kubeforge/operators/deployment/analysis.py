"""Canary analysis: turn the gateway's metrics (and PromQL for custom checks) into verdicts.

Built-in metrics come straight from the gateway's ``/metrics``: the operator scrapes it
each interval and compares with the previous scrape, so the figures cover exactly the
last interval and need no Prometheus (the local runtime has none). Counts are per try
against the canary's Triton, so an error that a fallback hid from the caller still
counts against the canary, and so does a request the gateway sent to stable without
trying the canary because it knew the canary was not ready. Drift is not a counter: the
gateway computes it over its own sliding window, and the built-ins read the scrape as it is. So is
live quality (accuracy, mae): the gateway computes it over its feedback window from the labels
posted to it, and reports it only once the window holds minLabels labelled predictions.
With several gateway replicas each is scraped and compared with its own previous scrape, and
their intervals are added up (see total).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ...api.modeldeployment import Analysis, AnalysisMetric
from ...core import plainhttp

UPSTREAM = "kubeforge_upstream_requests"
UPSTREAM_DURATION = "kubeforge_upstream_request_duration_seconds"
SHADOW_PREDICTIONS = "kubeforge_shadow_predictions"
SHADOW_DELTA = "kubeforge_shadow_latency_delta_seconds"
SHADOW_DELTA_SUM = "kubeforge_shadow_latency_delta_sum_seconds"
DRIFT = {"kubeforge_drift_psi": "drift-psi", "kubeforge_drift_ks": "drift-ks"}
QUALITY = {"kubeforge_live_accuracy": "accuracy", "kubeforge_live_mae": "mae"}


@dataclass
class Snapshot:
    """Cumulative counters of one version, as scraped."""

    outcomes: dict[str, float] = field(default_factory=dict)  # ok / error / timeout
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count of try durations
    agree: float = 0.0
    disagree: float = 0.0
    delta_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count of shadow deltas
    delta_sum: float = 0.0  # a gauge, not a counter: it falls whenever the shadow answers faster
    delta_count: float = 0.0
    drift: dict[str, float] = field(default_factory=dict)  # drift-psi / drift-ks -> largest over the features
    quality: dict[str, float] = field(default_factory=dict)  # accuracy / mae over the gateway's feedback window

    def minus(self, prev: Snapshot) -> Snapshot:
        """Increase since prev; a counter that went down means the gateway restarted, so take it whole.

        The delta sum may go down on its own, so whether the gateway restarted is read from the delta count; drift
        covers the gateway's window, not the interval, and is taken as it is now; so is live quality.
        """

        def d(now: float, before: float) -> float:
            return now - before if now >= before else now

        restarted = self.delta_count < prev.delta_count
        return Snapshot(
            outcomes={k: d(v, prev.outcomes.get(k, 0.0)) for k, v in self.outcomes.items()},
            buckets={k: d(v, prev.buckets.get(k, 0.0)) for k, v in self.buckets.items()},
            agree=d(self.agree, prev.agree),
            disagree=d(self.disagree, prev.disagree),
            delta_buckets={k: d(v, prev.delta_buckets.get(k, 0.0)) for k, v in self.delta_buckets.items()},
            delta_sum=self.delta_sum if restarted else self.delta_sum - prev.delta_sum,
            delta_count=d(self.delta_count, prev.delta_count),
            drift=self.drift,
            quality=self.quality,
        )

    @property
    def tries(self) -> float:
        return sum(self.outcomes.values())


def interval(now: dict[str, Snapshot], prev: dict[str, Snapshot]) -> Snapshot:
    """What the gateway's replicas (by URL) counted between two analyses: each against its own earlier figures,
    a replica new since then whole (it started within the interval), added up."""
    return total(snap.minus(prev[url]) if url in prev else snap for url, snap in now.items())


def total(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Several gateway replicas' figures as one: their counts added, and the largest drift and worst live quality
    of theirs, since each replica's windows cover only its share of the traffic."""

    def add(mine: dict[Any, float], theirs: dict[Any, float]) -> None:
        for key, value in theirs.items():
            mine[key] = mine.get(key, 0.0) + value

    out = Snapshot()
    for snap in snapshots:
        add(out.outcomes, snap.outcomes)
        add(out.buckets, snap.buckets)
        add(out.delta_buckets, snap.delta_buckets)
        out.agree += snap.agree
        out.disagree += snap.disagree
        out.delta_sum += snap.delta_sum
        out.delta_count += snap.delta_count
        for name, value in snap.drift.items():
            out.drift[name] = max(out.drift.get(name, value), value)
        for name, value in snap.quality.items():
            worse = min if name == "accuracy" else max
            out.quality[name] = worse(out.quality.get(name, value), value)
    return out


def parse(text: str, model: str, version: str) -> Snapshot:
    """The series of one model version in a Prometheus text exposition."""
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if sample.name == UPSTREAM + "_total":
                snap.outcomes[labels["outcome"]] = snap.outcomes.get(labels["outcome"], 0.0) + sample.value
            elif sample.name in (UPSTREAM_DURATION + "_bucket", SHADOW_DELTA + "_bucket"):
                buckets = snap.buckets if sample.name.startswith(UPSTREAM_DURATION) else snap.delta_buckets
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == SHADOW_PREDICTIONS + "_total":
                if labels.get("result") == "agree":
                    snap.agree += sample.value
                else:
                    snap.disagree += sample.value
            elif sample.name == SHADOW_DELTA_SUM:
                snap.delta_sum += sample.value
            elif sample.name == SHADOW_DELTA + "_count":
                snap.delta_count += sample.value
            elif sample.name in DRIFT:
                name = DRIFT[sample.name]
                snap.drift[name] = max(snap.drift.get(name, sample.value), sample.value)
            elif sample.name in QUALITY and labels.get("role") != "shadow":
                snap.quality[QUALITY[sample.name]] = sample.value
    return snap


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets, as PromQL computes it, so the operator's figures match
    a dashboard's: linear within a bucket; the +Inf bucket ends at the highest finite bound; the lowest
    bucket starts at 0 when its bound is positive (durations) but is its bound when that is 0 or less
    (latency deltas, whose lowest bucket has no lower end)."""
    edges = sorted(buckets)
    if len(edges) < 2 or buckets[edges[-1]] <= 0:
        return None
    rank = q * buckets[edges[-1]]
    i = next(i for i, edge in enumerate(edges) if buckets[edge] >= rank)
    edge = edges[i]
    if math.isinf(edge):
        return edges[i - 1]
    if i == 0 and edge <= 0:
        return edge
    lower, below = (edges[i - 1], buckets[edges[i - 1]]) if i else (0.0, 0.0)
    span = buckets[edge] - below
    return lower + (edge - lower) * ((rank - below) / span if span else 1.0)


def threshold(metric: AnalysisMetric) -> str:
    parts = []
    if metric.min is not None:
        parts.append(f">= {metric.min:g}")
    if metric.max is not None:
        parts.append(f"<= {metric.max:g}")
    return " and ".join(parts)


def verdict(metric: AnalysisMetric, value: float | None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": metric.name, "threshold": threshold(metric)}
    if value is None or math.isnan(value):
        return result  # not enough data: neither pass nor fail
    passed = (metric.max is None or value <= metric.max) and (metric.min is None or value >= metric.min)
    return {**result, "value": round(value, 6), "passed": passed}


# Try outcomes that count as canary failures: errors and timeouts, and requests the gateway routed
# around the canary without trying it because it knew the canary was not ready (a fallback answered them).
FAILED_OUTCOMES = ("error", "timeout", "not_ready")


def builtin(name: str, canary: Snapshot, min_requests: int) -> float | None:
    """A built-in metric over one interval's counters; None when fewer than min_requests count.

    error-rate is failed tries over all tries, so requests that the fallback answered for the canary
    (it failed, timed out, or was known not to be ready and skipped) count against it. drift-psi and
    drift-ks are the largest of the canary's features; the gateway reports them only once its window
    holds spec.monitoring.drift.minSamples rows, which takes the place of min_requests. accuracy and mae are the
    canary's live quality from fed-back labels, reported once the gateway's feedback window holds
    spec.monitoring.feedback.minLabels labels, which takes the place of min_requests as well.
    """
    if name in DRIFT.values():
        return canary.drift.get(name)
    if name in QUALITY.values():
        return canary.quality.get(name)
    if name == "agreement":
        compared = canary.agree + canary.disagree
        return canary.agree / compared if compared >= max(min_requests, 1) else None
    if canary.tries < max(min_requests, 1):
        return None
    if name == "error-rate":
        return sum(canary.outcomes.get(o, 0.0) for o in FAILED_OUTCOMES) / canary.tries
    seconds = quantile(0.99 if name == "latency-p99" else 0.5, canary.buckets)
    return None if seconds is None else seconds * 1000


def promql(prometheus_url: str, query: str, canary: str, stable: str, timeout: float = 5.0) -> float | None:
    """One number from a PromQL query ({{canary}} and {{stable}} replaced by the versions)."""
    text = query.replace("{{canary}}", canary).replace("{{stable}}", stable)
    try:
        resp = plainhttp.get(f"{prometheus_url.rstrip('/')}/api/v1/query", {"query": text}, timeout)
        data = resp.json()["data"]
    except (plainhttp.HttpError, ValueError, KeyError):
        return None
    result = data.get("result")
    if data.get("resultType") == "scalar":
        return float(result[1])
    if data.get("resultType") == "vector" and result:
        return float(result[0]["value"][1])
    return None


def evaluate(
    analysis: Analysis,
    canary_delta: Snapshot,
    prometheus_url: str,
    canary: str,
    stable: str,
) -> list[dict[str, Any]]:
    """One verdict per configured metric."""
    results = []
    for metric in analysis.metrics:
        if metric.query is not None:
            value = promql(prometheus_url, metric.query, canary, stable)
        else:
            value = builtin(metric.name, canary_delta, analysis.min_requests)
        results.append(verdict(metric, value))
    return results


def shadow_report(snapshot: Snapshot, version: str) -> dict[str, Any]:
    """status.shadowReport from the shadow version's cumulative counters: how often it agrees with the live
    answers, and how much slower (positive) or faster (negative) it answers, as a mean and percentiles,
    since a mean alone hides a shadow that is slow only now and then."""
    samples = int(snapshot.agree + snapshot.disagree)
    report: dict[str, Any] = {"version": version, "samples": samples}
    if samples:
        report["agreement"] = round(snapshot.agree / samples, 6)
    if snapshot.delta_count:
        report["latencyDeltaMs"] = round(snapshot.delta_sum / snapshot.delta_count * 1000, 3)
        for key, q in (("latencyDeltaP50Ms", 0.5), ("latencyDeltaP99Ms", 0.99)):
            seconds = quantile(q, snapshot.delta_buckets)
            if seconds is not None:
                report[key] = round(seconds * 1000, 3)
    return report
