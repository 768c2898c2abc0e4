"""kubeforge's drift alert in a real Prometheus scraping real gateways in front of a real Triton: a deployment fed
traffic shifted on two features fires ModelFeatureDrift for exactly those, one fed traffic like its training data
does not.

Prometheus loads the shipped rule file (whose recordings the alert reads) and each deployment's own rule from
monitoring.rules.deployment_rule, the PSI threshold written in. The gateways stand for two ModelDeployments named
alike in two namespaces, the label Prometheus would take from pod discovery.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeforge.api.modeldeployment import DriftMonitoring
from kubeforge.local.monitoring import rule_files
from kubeforge.monitoring import rules
from tests.integration.serving.conftest import DRIFT_MIN_SAMPLES, FEATURES, SHIFTED, drift_table, send, traffic

pytestmark = pytest.mark.integration

THRESHOLD = DriftMonitoring().psi_threshold
ALERT = "ModelFeatureDrift"
# The alert holds for 15 minutes before it fires, so a passing noise burst does not page anyone. Here the
# hold is shortened to 2 s: Prometheus' pending-then-firing logic is the same, the test takes seconds.
HOLD = "2s"


def deployment_rules(path: Path, namespaces: list[str]) -> Path:
    """Each deployment's own rule group, as the operator would publish it, with the hold shortened."""
    groups = []
    for namespace in namespaces:
        rule = rules.deployment_rule(
            namespace, "clf", error_ratio=0.001, latency_p99_seconds=10, drift_psi_threshold=THRESHOLD
        )
        for group in rule["spec"]["groups"]:
            for alert in group["rules"]:
                alert["for"] = HOLD
            groups.append(group)
    path.write_text(rules.dump({"groups": groups}))
    return path


def test_shifted_traffic_fires_the_feature_drift_alert_and_unshifted_traffic_does_not(
    prometheus, gateway, triton, registered, mlflow, tmp_path
):
    routes = drift_table(mlflow.url, registered, triton.url)
    drifted, steady = gateway(routes), gateway(routes)
    targets = [
        {"targets": [drifted.url.removeprefix("http://")], "labels": {"namespace": "drifted"}},
        {"targets": [steady.url.removeprefix("http://")], "labels": {"namespace": "steady"}},
    ]
    prom = prometheus(targets, [*rule_files(), deployment_rules(tmp_path / "deployments.yaml", ["drifted", "steady"])])

    for gw, shift, seed in ((drifted, 3.0, 1), (steady, 0.0, 2)):
        results = send(f"{gw.url}/v2/models/clf/infer", traffic(2 * DRIFT_MIN_SAMPLES, shift, seed))
        assert all(r.status == 200 for r in results)

    def firing() -> list[dict]:
        return [a for a in prom.alerts() if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]

    prom.wait_for(f"{ALERT} firing for both shifted features", lambda: len(firing()) == len(SHIFTED))
    recorded = prom.wait_for(
        "the steady deployment's feature PSI recorded",
        lambda: prom.query(f'{rules.FEATURE_DRIFT}{{namespace="steady"}}'),
    )

    alerts = firing()
    assert {a["labels"]["feature"] for a in alerts} == set(SHIFTED)
    for alert in alerts:
        assert alert["labels"]["namespace"] == "drifted" and alert["labels"]["modeldeployment"] == "clf"
        assert alert["labels"]["version"] == registered.stable and alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) > THRESHOLD
        assert alert["annotations"]["runbook_url"].endswith(f"/{ALERT}.md")
    # The steady deployment was evaluated all along: every feature recorded, all below the threshold.
    assert {s["metric"]["feature"] for s in recorded} == set(FEATURES)
    assert all(float(s["value"][1]) < THRESHOLD for s in recorded)
    assert not [a for a in prom.alerts() if a["labels"].get("namespace") == "steady"]
