"""The operators' metric bookkeeping: resource counts, reconcile timing and errors, and alert targets."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY

from kubeforge.api import ModelDeployment, parse
from kubeforge.core.conditions import rfc3339
from kubeforge.monitoring import rules
from kubeforge.operators import metrics
from kubeforge.operators.deployment import children
from kubeforge.operators.featureview import metrics as featureview_metrics


def event(kind: str, name: str, type_: str | None = None, phase: str = "", ready: str = "", reason: str = "") -> dict:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": reason}]
    return {"type": type_, "object": {"kind": kind, "metadata": {"name": name, "namespace": "ml"}, "status": status}}


def counts(resources: metrics.Resources) -> dict[tuple[str, ...], float]:
    (family,) = resources.collect()
    assert family.name == metrics.RESOURCES
    return {
        tuple(s.labels[k] for k in ("kind", "namespace", "phase", "ready", "reason")): s.value for s in family.samples
    }


def test_resources_are_counted_by_kind_phase_and_ready_and_leave_no_series_when_deleted() -> None:
    resources = metrics.Resources()
    resources.seen("TrainingJob", event("TrainingJob", "a", None, "Failed", "False", "BackoffLimitExceeded"))
    resources.seen("TrainingJob", event("TrainingJob", "b", "ADDED", "Failed", "False", "BackoffLimitExceeded"))
    resources.seen("ModelDeployment", event("ModelDeployment", "cancer", "MODIFIED", ready="True", reason="Serving"))
    resources.seen("FeatureView", event("FeatureView", "fresh", "ADDED"))  # not reconciled yet
    assert counts(resources) == {
        ("TrainingJob", "ml", "Failed", "False", "BackoffLimitExceeded"): 2,
        ("ModelDeployment", "ml", "", "True", "Serving"): 1,
        ("FeatureView", "ml", "", "Unknown", ""): 1,
    }

    resources.seen("TrainingJob", event("TrainingJob", "a", "DELETED", "Failed", "False", "BackoffLimitExceeded"))
    resources.seen(
        "ModelDeployment", event("ModelDeployment", "cancer", "MODIFIED", ready="False", reason="ApplyFailed")
    )
    resources.seen("FeatureView", event("FeatureView", "fresh", "DELETED"))
    assert counts(resources) == {
        ("TrainingJob", "ml", "Failed", "False", "BackoffLimitExceeded"): 1,
        ("ModelDeployment", "ml", "", "False", "ApplyFailed"): 1,
    }


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_reconcile_that_raises_is_timed_and_counted_as_an_error_and_one_that_returns_is_not() -> None:
    kind = "ReconcileTest"
    outcome: list[Exception] = []

    @metrics.reconciled(kind)
    def reconcile() -> None:
        if outcome:
            raise outcome[0]

    reconcile()
    assert sample("kubeforge_reconcile_duration_seconds_count", kind=kind) == 1
    assert sample("kubeforge_reconcile_errors_total", kind=kind) == 0, "the series exists before the first error"

    outcome.append(kopf.TemporaryError("applying Service x failed", delay=5))
    with pytest.raises(kopf.TemporaryError):
        reconcile()
    assert sample("kubeforge_reconcile_duration_seconds_count", kind=kind) == 2
    assert sample("kubeforge_reconcile_errors_total", kind=kind) == 1

    metrics.reconcile_failed(kind)
    assert sample("kubeforge_reconcile_errors_total", kind=kind) == 2


def deployment(**spec: Any) -> ModelDeployment:
    md = parse(
        {
            "kind": "ModelDeployment",
            "metadata": {"name": "cancer"},
            "spec": {"model": {"name": "m", "version": 1}, **spec},
        }
    )
    assert isinstance(md, ModelDeployment)
    return md


SLO = {"slo": {"latencyP99Ms": 250, "errorRatePercent": 0.1}, "monitoring": {"drift": {"psiThreshold": 0.3}}}


def test_targets_are_read_from_the_spec_in_the_units_the_rules_compare_in() -> None:
    assert metrics.Targets.of(deployment(**SLO)) == metrics.Targets(0.001, 0.25, 0.3)
    assert metrics.Targets.of(deployment()) == metrics.Targets(drift_psi_threshold=0.2), "drift is on by default"
    off = deployment(slo={"latencyP99Ms": 100}, monitoring={"drift": {"enabled": False}})
    assert metrics.Targets.of(off) == metrics.Targets(latency_p99_seconds=0.1)


def test_target_gauges_follow_the_spec_and_go_with_the_deployment() -> None:
    where = {"namespace": "gauges", "modeldeployment": "cancer", "alerting": "shared"}
    metrics.export_targets("gauges", "cancer", metrics.Targets.of(deployment(**SLO)), rules.SHARED)
    assert sample(rules.SLO_ERROR_RATIO, **where) == pytest.approx(0.001)
    assert sample(rules.SLO_LATENCY_P99, **where) == 0.25
    assert sample(rules.DRIFT_PSI_THRESHOLD, **where) == 0.3

    # Judged by a rule of its own from now on: the same values, for dashboards, out of the shared rules' sight.
    metrics.export_targets("gauges", "cancer", metrics.Targets.of(deployment(**SLO)), rules.OWN)
    assert REGISTRY.get_sample_value(rules.SLO_LATENCY_P99, where) is None
    assert sample(rules.SLO_LATENCY_P99, **{**where, "alerting": "own"}) == 0.25

    metrics.export_targets("gauges", "cancer", metrics.Targets.of(deployment()), rules.SHARED)  # spec.slo removed
    assert REGISTRY.get_sample_value(rules.SLO_ERROR_RATIO, where) is None
    assert REGISTRY.get_sample_value(rules.SLO_LATENCY_P99, where) is None
    assert sample(rules.DRIFT_PSI_THRESHOLD, **where) == 0.2

    metrics.ROLLBACKS.labels("gauges", "cancer").inc()
    metrics.forget_deployment("gauges", "cancer")
    assert REGISTRY.get_sample_value(rules.DRIFT_PSI_THRESHOLD, where) is None
    assert REGISTRY.get_sample_value("kubeforge_rollbacks_total", where) is None


OWNER = {
    "apiVersion": "kubeforge.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "cancer", "namespace": "ml", "uid": "u1"},
}


def alerts(rule: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            found.setdefault(alert["alert"], []).append(alert["expr"])
    return found


def test_the_deployments_own_rule_is_a_child_with_its_targets_written_in() -> None:
    rule = children.prometheus_rule(OWNER, asdict(metrics.Targets.of(deployment(**SLO))), "https://wiki.example/rb/")
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    meta = rule["metadata"]
    assert (meta["name"], meta["namespace"]) == ("cancer-slo", "ml")
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "cancer",
            "uid": "u1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["kubeforge.dev/modeldeployment"] == "cancer"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "kubeforge"
    found = alerts(rule)
    selector = '{namespace="ml", modeldeployment="cancer"}'
    burn = [f"{rules.error_ratio(w)}{selector} > {f * 0.001:g}" for w, f in (("1h", 14.4), ("6h", 6))]
    assert all(any(b in expr for expr in found["ModelDeploymentErrorBudgetBurn"]) for b in burn)
    assert found["ModelDeploymentLatencyHigh"] == [f"{rules.LATENCY_P99}{selector} > 0.25"]
    assert found["ModelFeatureDrift"] == [f"{rules.FEATURE_DRIFT}{selector} > 0.3"]
    runbooks = {a["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for a in g["rules"] if "alert" in a}
    assert "https://wiki.example/rb/ModelFeatureDrift.md" in runbooks
    assert all(url.startswith("https://wiki.example/rb/") for url in runbooks)


def test_a_rule_holds_only_the_alerts_of_the_targets_the_spec_sets() -> None:
    latency_only = deployment(slo={"latencyP99Ms": 100}, monitoring={"drift": {"enabled": False}})
    rule = children.prometheus_rule(OWNER, asdict(metrics.Targets.of(latency_only)), rules.RUNBOOKS_URL)
    assert list(alerts(rule)) == ["ModelDeploymentLatencyHigh"]
    nothing = deployment(monitoring={"drift": {"enabled": False}})
    assert children.prometheus_rule(OWNER, asdict(metrics.Targets.of(nothing)), rules.RUNBOOKS_URL)["spec"] == {
        "groups": []
    }


def test_a_feature_views_ttl_is_exported_while_its_spec_is_valid_and_goes_with_it() -> None:
    where = {"namespace": "ttl", "featureview": "transactions"}
    featureview_metrics.observe("ttl", "transactions", 3600, None)
    assert sample("kubeforge_featureview_ttl_seconds", **where) == 3600
    featureview_metrics.observe("ttl", "transactions", None, None)  # the spec became invalid
    assert REGISTRY.get_sample_value("kubeforge_featureview_ttl_seconds", where) is None
    featureview_metrics.observe("ttl", "transactions", 60, None)
    featureview_metrics.forget("ttl", "transactions")
    assert REGISTRY.get_sample_value("kubeforge_featureview_ttl_seconds", where) is None


def test_a_feature_views_freshness_ages_between_its_events_and_goes_with_it() -> None:
    """The age is computed at each scrape from the newest value's time in the view's last event: it grows
    with no pass and no write."""
    where = {"namespace": "fresh", "featureview": "transactions"}
    newest = datetime.now(UTC) - timedelta(seconds=90)
    view = {"metadata": {"namespace": "fresh", "name": "transactions"}, "status": {"newestEventTime": rfc3339(newest)}}
    featureview_metrics.FRESHNESS.seen({"type": "MODIFIED", "object": view})
    first = sample("kubeforge_featureview_freshness_seconds", **where)
    assert 89 <= first < 120
    time.sleep(1.1)
    assert sample("kubeforge_featureview_freshness_seconds", **where) >= first + 1
    featureview_metrics.FRESHNESS.seen({"type": "DELETED", "object": view})
    assert REGISTRY.get_sample_value("kubeforge_featureview_freshness_seconds", where) is None
