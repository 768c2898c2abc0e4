"""Canary analysis: turn the gateway's metrics (and PromQL for custom checks) into verdicts.

Built-in metrics come straight from the gateway's ``/metrics``: the operator scrapes it
each interval and compares with the previous scrape, so the figures cover exactly the
last interval and need no Prometheus (the local runtime has none). Counts are per try
against the canary's Triton, so an error that a fallback hid from the caller still
counts against the canary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ...api.modeldeployment import Analysis, AnalysisMetric

UPSTREAM = "kubeforge_upstream_requests"
UPSTREAM_DURATION = "kubeforge_upstream_request_duration_seconds"
SHADOW_PREDICTIONS = "kubeforge_shadow_predictions"
SHADOW_DELTA = "kubeforge_shadow_latency_delta_seconds"


@dataclass
class Snapshot:
    """Cumulative counters of one version, as scraped."""

    outcomes: dict[str, float] = field(default_factory=dict)  # ok / error / timeout
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    agree: float = 0.0
    disagree: float = 0.0
    delta_sum: float = 0.0
    delta_count: float = 0.0

    def minus(self, prev: Snapshot) -> Snapshot:
        """Increase since prev; a counter that went down means the gateway restarted, so take it whole."""

        def d(now: float, before: float) -> float:
            return now - before if now >= before else now

        return Snapshot(
            {k: d(v, prev.outcomes.get(k, 0.0)) for k, v in self.outcomes.items()},
            {k: d(v, prev.buckets.get(k, 0.0)) for k, v in self.buckets.items()},
            d(self.agree, prev.agree),
            d(self.disagree, prev.disagree),
            d(self.delta_sum, prev.delta_sum),
            d(self.delta_count, prev.delta_count),
        )

    @property
    def tries(self) -> float:
        return sum(self.outcomes.values())


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
            elif sample.name == UPSTREAM_DURATION + "_bucket":
                le = float(labels["le"])
                snap.buckets[le] = snap.buckets.get(le, 0.0) + sample.value
            elif sample.name == SHADOW_PREDICTIONS + "_total":
                if labels.get("result") == "agree":
                    snap.agree += sample.value
                else:
                    snap.disagree += sample.value
            elif sample.name == SHADOW_DELTA + "_sum":
                snap.delta_sum += sample.value
            elif sample.name == SHADOW_DELTA + "_count":
                snap.delta_count += sample.value
    return snap


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets, as PromQL computes it (linear within a bucket)."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    total = buckets[edges[-1]]
    rank = q * total
    prev_edge, prev_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return prev_edge
            span = count - prev_count
            return prev_edge + (edge - prev_edge) * ((rank - prev_count) / span if span else 1.0)
        prev_edge, prev_count = edge, count
    return prev_edge


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


def builtin(name: str, canary: Snapshot, min_requests: int) -> float | None:
    if name == "agreement":
        compared = canary.agree + canary.disagree
        return canary.agree / compared if compared >= max(min_requests, 1) else None
    if canary.tries < max(min_requests, 1):
        return None
    if name == "error-rate":
        return (canary.outcomes.get("error", 0.0) + canary.outcomes.get("timeout", 0.0)) / canary.tries
    seconds = quantile(0.99 if name == "latency-p99" else 0.5, canary.buckets)
    return None if seconds is None else seconds * 1000


def promql(prometheus_url: str, query: str, canary: str, stable: str, timeout: float = 5.0) -> float | None:
    """One number from a PromQL query ({{canary}} and {{stable}} replaced by the versions)."""
    text = query.replace("{{canary}}", canary).replace("{{stable}}", stable)
    try:
        resp = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": text}, timeout=timeout)
        data = resp.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
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
    """status.shadowReport from the shadow version's cumulative counters."""
    samples = int(snapshot.agree + snapshot.disagree)
    report: dict[str, Any] = {"version": version, "samples": samples}
    if samples:
        report["agreement"] = round(snapshot.agree / samples, 6)
    if snapshot.delta_count:
        report["latencyDeltaMs"] = round(snapshot.delta_sum / snapshot.delta_count * 1000, 3)
    return report
