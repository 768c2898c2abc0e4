"""kubeforge's Grafana dashboards: committed JSON current, well formed, every query valid and fed by the metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.monitoring import dashboards, rules

ROOT = Path(__file__).resolve().parents[3]
BOARDS = {make.__name__: json.loads(dashboards.render(make())) for make in dashboards.DASHBOARDS}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian: apt-get install prometheus; `make system-deps` does it)",
)

# One scrape of each metric the dashboards read, labelled as Prometheus stores it: the series'
# own labels plus those of its target (gateway and Triton pods, the operator).
GATEWAY = 'job="kubeforge-pods", namespace="ml", pod="cancer-gateway-a", app_kubernetes_io_component="gateway", '
GATEWAY += 'kubeforge_dev_modeldeployment="cancer"'
TRITON = 'job="kubeforge-pods", namespace="ml", pod="cancer-v1-a", app_kubernetes_io_component="triton", '
TRITON += 'kubeforge_dev_modeldeployment="cancer", kubeforge_dev_model_version="1", model="cancer", version="1"'
OPERATOR = 'job="kubeforge-operator", instance="127.0.0.1:9090"'
TRAFFIC = 'model="cancer", version="2", role="canary"'
COUNTERS = {
    "kubeforge_gateway_requests_total": [f'{GATEWAY}, {TRAFFIC}, code="{c}"' for c in ("200", "503")],
    "kubeforge_gateway_request_duration_seconds_bucket": [
        f'{GATEWAY}, {TRAFFIC}, le="{le}"' for le in ("0.01", "+Inf")
    ],
    "kubeforge_upstream_requests_total": [f'{GATEWAY}, {TRAFFIC}, outcome="{o}"' for o in ("ok", "timeout")],
    "kubeforge_fallbacks_total": [f'{GATEWAY}, {TRAFFIC}, reason="timeout"'],
    "kubeforge_gateway_joins_total": [f"{GATEWAY}, {TRAFFIC}"],
    "kubeforge_gateway_joined_requests_total": [f"{GATEWAY}, {TRAFFIC}"],
    "kubeforge_shadow_requests_total": [f'{GATEWAY}, model="cancer", version="3", outcome="ok"'],
    "kubeforge_shadow_predictions_total": [
        f'{GATEWAY}, model="cancer", version="3", result="{r}"' for r in ("agree", "disagree")
    ],
    "kubeforge_shadow_latency_delta_seconds_bucket": [
        f'{GATEWAY}, model="cancer", version="3", le="{le}"' for le in ("0", "+Inf")
    ],
    "kubeforge_shadow_latency_delta_seconds_count": [f'{GATEWAY}, model="cancer", version="3"'],
    "kubeforge_route_table_reloads_total": [f'{GATEWAY}, file="routes.json", result="ok"'],
    "kubeforge_feature_lookup_duration_seconds_bucket": [
        f'{GATEWAY}, featureview="transactions", le="{le}"' for le in ("0.001", "+Inf")
    ],
    "kubeforge_feature_lookup_duration_seconds_count": [f'{GATEWAY}, featureview="transactions"'],
    "kubeforge_feature_lookup_misses_total": [f'{GATEWAY}, featureview="transactions", kind="expired"'],
    "nv_inference_queue_duration_us": [TRITON],
    "nv_inference_request_success": [TRITON],
    "nv_inference_request_failure": [TRITON],
    "kubeforge_materializations_total": [f'{OPERATOR}, namespace="ml", featureview="transactions", result="succeeded"'],
    "kubeforge_materialized_rows_total": [f'{OPERATOR}, namespace="ml", featureview="transactions"'],
    "kubeforge_reconcile_duration_seconds_bucket": [
        f'{OPERATOR}, kind="ModelDeployment", le="{le}"' for le in ("0.1", "+Inf")
    ],
    "kubeforge_reconcile_duration_seconds_count": [f'{OPERATOR}, kind="ModelDeployment"'],
    "kubeforge_reconcile_errors_total": [f'{OPERATOR}, kind="ModelDeployment"'],
    "kubeforge_rollbacks_total": [f'{OPERATOR}, namespace="ml", modeldeployment="cancer"'],
    "kubeforge_modeldeployment_child_applies_total": [f'{OPERATOR}, namespace="ml", kind="ConfigMap"'],
    "kubeforge_feedback_labels_total": [f'{GATEWAY}, {TRAFFIC}, result="joined"']
    + [f'{GATEWAY}, model="cancer", version="", role="", result="{r}"' for r in ("unknown", "expired")],
    "kubeforge_feedback_evicted_total": [f'{GATEWAY}, model="cancer"'],
}
DRIFT = f"{GATEWAY}, {TRAFFIC}"
GAUGES = {
    "kubeforge_shadow_latency_delta_sum_seconds": [f'{GATEWAY}, model="cancer", version="3"'],
    "kubeforge_drift_psi": [f'{DRIFT}, feature="mean_radius"'],
    "kubeforge_drift_ks": [f'{DRIFT}, feature="mean_radius"'],
    "kubeforge_prediction_drift_psi": [DRIFT],
    "kubeforge_drift_window_samples": [DRIFT],
    "kubeforge_live_accuracy": [DRIFT],
    "kubeforge_live_mae": [DRIFT],
    "kubeforge_live_rmse": [DRIFT],
    "kubeforge_live_labels": [DRIFT],
    "kubeforge_featureview_freshness_seconds": [f'{OPERATOR}, namespace="ml", featureview="transactions"'],
    "kubeforge_featureview_ttl_seconds": [f'{OPERATOR}, namespace="ml", featureview="transactions"'],
    "kubeforge_resources": [
        f'{OPERATOR}, kind="{kind}", namespace="ml", phase="{phase}", ready="{ready}", reason="{reason}"'
        for kind, phase, ready, reason in (
            ("TrainingJob", "Running", "False", "JobRunning"),
            ("TrainingJob", "Pending", "False", "ApplyFailed"),
            ("TrainingJob", "Succeeded", "True", "ModelRegistered"),
            ("TrainingJob", "Failed", "False", "BackoffLimitExceeded"),
            ("ModelDeployment", "", "True", "Serving"),
        )
    ],
    rules.SLO_ERROR_RATIO: [f'{OPERATOR}, namespace="ml", modeldeployment="cancer", alerting="own"'],
    rules.SLO_LATENCY_P99: [f'{OPERATOR}, namespace="ml", modeldeployment="cancer", alerting="own"'],
    rules.DRIFT_PSI_THRESHOLD: [f'{OPERATOR}, namespace="ml", modeldeployment="cancer", alerting="own"'],
}


@pytest.mark.parametrize("path", list(dashboards.rendered()), ids=str)
def test_committed_dashboard_is_current(path: Path) -> None:
    assert (ROOT / path).read_text() == dashboards.rendered()[path], f"{path} is stale: run make monitoring"


def test_no_dashboard_left_from_an_older_generation() -> None:
    committed = {p.relative_to(ROOT) for p in (ROOT / dashboards.DIRECTORY).glob("*.json")}
    assert committed == set(dashboards.rendered())


def test_dashboards_are_self_contained() -> None:
    """Unique uids, the datasource from a variable, every panel described, ids and refIds set."""
    assert len({b["uid"] for b in BOARDS.values()}) == len(BOARDS)
    for name, board in BOARDS.items():
        assert board["templating"]["list"][0]["type"] == "datasource", name
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), f"{name}: duplicate panel ids"
        for panel in panels:
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["description"] and panel["targets"], where
            assert all(t["refId"] and t["expr"] for t in panel["targets"]), where


def test_all_queries_resolve_every_variable() -> None:
    queries = dashboards.all_queries()
    expected = sum(len(p.get("targets", [])) for b in BOARDS.values() for p in b["panels"])
    assert len([where for where, _ in queries if ": variable " not in where]) == expected
    assert [(where, q) for where, q in queries if "$" in q] == []


@needs_promtool
def test_every_query_returns_data_for_the_metric_catalogue(tmp_path: Path) -> None:
    """Each query, fed one series of each metric it reads, returns something: names and joins line up."""
    series = [
        {"series": f"{name}{{{labels}}}", "values": values}
        for metrics, values in ((COUNTERS, "0+10x80"), (GAUGES, "1+0.01x80"))
        for name, label_sets in metrics.items()
        for labels in label_sets
    ]
    queries = dashboards.all_queries()
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "q", "expr": q} for _, q in queries]}]})
    )
    done = subprocess.run(
        ["promtool", "check", "rules", tmp_path / "queries.yaml"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copy(ROOT / rules.PACKAGE_RULES, tmp_path / "rules.yaml")  # the recordings dashboards read
    checks = [
        {
            "expr": f"clamp_max(count({query}), 1)",
            "eval_time": "70m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
        for _, query in queries
    ]
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, width=10_000))
    done = subprocess.run(
        ["promtool", "test", "rules", tmp_path / "test.yaml"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _panel_titles(node: object) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_panel_titles(n) for n in node))
    if not isinstance(node, dict):
        return set()
    own = {node["title"]} if "type" in node and "title" in node else set()
    return own | _panel_titles(node.get("panels", []))


def test_every_panel_a_runbook_points_to_is_on_a_dashboard_it_names() -> None:
    """Runbooks send on-call to panels by title (in italics) on dashboards named in bold: a renamed panel must not
    leave them looking for one that is not there."""
    panels = {board["title"]: _panel_titles(board["panels"]) for board in BOARDS.values()}
    for runbook in sorted((ROOT / "docs" / rules.RUNBOOKS).glob("*.md")):
        text = runbook.read_text()
        bold = (" ".join(title.split()) for title in re.findall(r"\*\*([^*]+)\*\*", text))
        named = [title for title in bold if title in panels]
        on_them = set().union(*(panels[title] for title in named))
        for italic in re.findall(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])", text):
            assert italic in on_them, f"{runbook.name}: no panel {italic!r} on {named}"
