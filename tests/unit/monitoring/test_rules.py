"""kubeforge's alert rules: committed files current, every alert documented, promtool checks and tests them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.local import monitoring as local_monitoring
from kubeforge.monitoring import rules

ROOT = Path(__file__).resolve().parents[3]
PROMTOOL_TESTS = sorted((ROOT / "monitoring" / "prometheus" / "tests").glob("*.yaml"))
ALERT_NAMES = sorted({rule["alert"] for rule in rules.alerts()})

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian: apt-get install prometheus; `make system-deps` does it)",
)


def _promtool(*args: str | Path) -> None:
    done = subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("path", list(rules.rendered()), ids=str)
def test_committed_file_is_current(path: Path) -> None:
    assert (ROOT / path).read_text() == rules.rendered()[path], f"{path} is stale: run make monitoring"


def test_cluster_rule_holds_the_package_groups() -> None:
    cluster = yaml.safe_load((ROOT / rules.CLUSTER_RULES).read_text())
    package = yaml.safe_load((ROOT / rules.PACKAGE_RULES).read_text())
    assert cluster["kind"] == "PrometheusRule"
    assert cluster["spec"]["groups"] == package["groups"]


def test_local_prometheus_loads_the_rules() -> None:
    assert rules.PACKAGE_RULES.name in [p.name for p in local_monitoring.rule_files()]


@pytest.mark.parametrize("alert", list(rules.alerts()), ids=lambda a: a["alert"])
def test_every_alert_is_documented(alert: dict) -> None:
    assert alert["labels"]["severity"] in ("critical", "warning", "info")
    annotations = alert["annotations"]
    assert annotations["summary"] and annotations["description"]
    url = annotations["runbook_url"]
    assert url.startswith(rules.DOCS_URL + "/"), url
    runbook = ROOT / "docs" / url.removeprefix(rules.DOCS_URL + "/")
    assert runbook.is_file(), f"{alert['alert']}: no runbook at {runbook.relative_to(ROOT)}"
    assert runbook.read_text().startswith(f"# {alert['alert']}\n")


def test_every_runbook_belongs_to_an_alert() -> None:
    runbooks = {p.stem for p in (ROOT / "docs" / rules.RUNBOOKS).glob("*.md")}
    assert runbooks == set(ALERT_NAMES)


def test_monitoring_readme_lists_every_alert() -> None:
    readme = (ROOT / "monitoring" / "README.md").read_text()
    assert [name for name in ALERT_NAMES if f"`{name}`" not in readme] == []


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in PROMTOOL_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert sorted(set(ALERT_NAMES) - firing) == [], "alerts no promtool case expects to fire"
    assert sorted(set(ALERT_NAMES) - quiet) == [], "alerts no promtool case expects to stay quiet"


def test_all_queries_cover_every_rule() -> None:
    queries = rules.all_queries()
    shared = sum(len(group["rules"]) for group in rules.groups())
    assert len(queries) > shared
    assert len({where for where, _ in queries}) == len(queries)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    _promtool("check", "rules", ROOT / rules.PACKAGE_RULES)


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    _promtool("test", "rules", *PROMTOOL_TESTS)


@needs_promtool
def test_deployment_rules_alert_against_their_own_targets(tmp_path: Path) -> None:
    """Deployments' own rules judge each against its target, written in, without the operator's gauges."""
    own = {
        name: rules.deployment_rule("ml", name, error_ratio=target, latency_p99_seconds=0.2, drift_psi_threshold=0.3)
        for name, target in (("cancer", 0.01), ("fraud", 0.02))
    }
    assert own["cancer"]["metadata"] == {
        "name": "cancer-slo",
        "namespace": "ml",
        "labels": {"app.kubernetes.io/part-of": "kubeforge", "kubeforge.dev/modeldeployment": "cancer"},
    }
    for name, rule in own.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(ROOT / rules.PACKAGE_RULES, tmp_path / "shared.yaml")
    _promtool("check", "rules", *(tmp_path / f"{name}.yaml" for name in own))

    # 20 % of every deployment's requests fail: over 14.4 x 1 % (cancer), under 14.4 x 2 % (fraud);
    # iris has no rule of its own and no gauges.
    series = [
        {
            "series": f'kubeforge_gateway_requests_total{{namespace="ml", model="{model}", code="{code}"}}',
            "values": f"0+{per_minute}x80",
        }
        for model in ("cancer", "fraud", "iris")
        for code, per_minute in (("200", 80), ("500", 20))
    ]
    fast = {"severity": "critical", "long_window": "1h", "short_window": "5m"}
    fast_burn = " or ".join(
        f"round({alert['expr']}, 0.001)"
        for rule in own.values()
        for alert in rule["spec"]["groups"][0]["rules"]
        if alert["labels"] == fast
    )
    test = {
        "rule_files": ["shared.yaml", *(f"{name}.yaml" for name in own)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": fast_burn,
                        "eval_time": "70m",
                        "exp_samples": [{"labels": '{namespace="ml", modeldeployment="cancer"}', "value": 0.2}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    _promtool("test", "rules", tmp_path / "test.yaml")


@pytest.mark.parametrize(
    ("seconds", "written"), [(900, "15m"), (5400, "1h30m"), (90.25, "1m30s250ms"), (0.5, "500ms"), (0, "0s")]
)
def test_a_deployments_drift_hold_is_written_as_prometheus_reads_durations(seconds: float, written: str) -> None:
    assert rules.duration(seconds) == written
    rule = rules.deployment_rule("ml", "m", drift_psi_threshold=0.2, drift_hold=written)
    assert {r["alert"]: r.get("for") for r in rule["spec"]["groups"][0]["rules"]} == {
        "ModelFeatureDrift": written,
        "ModelPredictionDrift": written,
    }
