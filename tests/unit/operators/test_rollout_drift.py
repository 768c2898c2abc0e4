"""Drift monitoring and payload logging from the operator's side: each version's baseline in the route table, what
DriftMonitored says about versions without one, the payload log's volume, and the drift built-in metrics."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import yaml

from kubeforge.api.modeldeployment import AnalysisMetric
from kubeforge.core import modelcontract as mc
from kubeforge.operators.deployment import analysis as an
from kubeforge.operators.deployment.rollout import DriftBaseline, Plan, Resolved
from kubeforge.operators.deployment.versions import version_drift
from kubeforge.serving.routes import RouteTable
from kubeforge.training.baseline import compute
from tests.unit.operators.test_rollout_plan import CANARY, cond, md, routes, run

FEATURES = ["age", "income"]
BASELINE = compute(np.random.default_rng(0).normal(size=(500, 2)), FEATURES).model_dump_json().encode()
TAGS = {mc.TAG_TASK: "classification", mc.TAG_FEATURES: json.dumps(FEATURES), mc.TAG_CLASSES: "[0, 1]"}
TRACKED = version_drift(BASELINE, TAGS)
MISSING = DriftBaseline(missing=f"its run logged no {mc.BASELINE_ARTIFACT}")


def gateway_pod(p: Plan) -> dict[str, Any]:
    dep = next(o for o in p.apply if o["kind"] == "Deployment" and o["metadata"]["name"] == "clf-gateway")
    return dep["spec"]["template"]["spec"]


def test_a_versions_baseline_reaches_its_route_entry_with_the_input_order_and_classes() -> None:
    b = md(monitoring={"drift": {"window": "10m", "minSamples": 1000}})

    table = routes(run(b, Resolved(stable="1", baselines={("clf", "1"): TRACKED})))

    assert table["drift"] == {
        "enabled": True,
        "window": "10m",
        "minSamples": 1000,
        "psiThreshold": 0.2,
        "alertAfter": "15m",
    }
    drift = table["versions"][0]["drift"]
    assert drift["features"] == FEATURES and drift["task"] == "classification" and drift["classes"] == ["0", "1"]
    assert [h["name"] for h in json.loads(drift["baseline"])] == FEATURES
    assert RouteTable.model_validate({"models": {"clf": table}})  # the gateway takes what the operator writes
    assert cond(b, "DriftMonitored")["status"] == "True"


def test_the_route_table_is_written_as_pyyamls_own_emitter_writes_it_and_reads_back_as_planned() -> None:
    """The operator writes the table through libyaml (core.yamltext), three to eight times faster than PyYAML's own
    emitter and to the same text: an operator of either kind finds the route ConfigMap the other applied as it
    would apply it (its digest, see applied), and the gateway reads back the table that was planned."""
    p = run(md(monitoring={"drift": {}}), Resolved(stable="1", baselines={("clf", "1"): TRACKED}))
    text = next(o for o in p.apply if o["kind"] == "ConfigMap")["data"]["routes.yaml"]
    wire = yaml.load(text, Loader=yaml.SafeLoader)
    assert wire["models"]["clf"]["versions"][0]["drift"]["baseline"], "a table with a baseline's numbers"
    assert yaml.safe_dump(wire, sort_keys=True, default_flow_style=None, width=120) == text
    assert RouteTable.parse(text).to_wire() == wire


def test_a_version_without_a_baseline_is_served_untracked_and_the_condition_names_it() -> None:
    b = md(canary=CANARY)
    baselines = {("clf", "1"): TRACKED, ("clf", "2"): MISSING}
    p = run(b, Resolved(stable="1", canary="2", baselines=baselines))
    p = run(b, Resolved(stable="1", canary="2", baselines=baselines))  # the canary's first step routes to it

    table = routes(p)
    drift = cond(b, "DriftMonitored")
    assert {v["version"]: "drift" in v for v in table["versions"]} == {"1": True, "2": False}
    assert (drift["status"], drift["reason"]) == ("False", "NoBaseline")
    assert "version 2 has no drift baseline (its run logged no kubeforge/baseline.json)" in drift["message"]
    assert "drift of version(s) 1 tracked over 5m" in drift["message"]
    assert cond(b, "Ready")["status"] == "True" and cond(b, "Degraded")["status"] == "False"


def test_with_drift_disabled_the_table_carries_no_baselines() -> None:
    b = md(monitoring={"drift": {"enabled": False}})

    table = routes(run(b, Resolved(stable="1", baselines={("clf", "1"): TRACKED})))

    assert "drift" not in table and "drift" not in table["versions"][0]
    assert cond(b, "DriftMonitored")["reason"] == "Disabled"


def test_an_unreadable_baseline_or_unusable_tags_are_named_not_raised() -> None:
    assert version_drift(b"{not json", TAGS).missing.startswith(f"{mc.BASELINE_ARTIFACT} is unreadable")
    untagged = version_drift(BASELINE, {})
    assert untagged.drift is not None and untagged.drift.features == FEATURES and untagged.drift.task is None


def test_a_payload_log_gets_a_volume_a_flag_and_its_settings_in_the_table() -> None:
    b = md(monitoring={"payloadLog": {"samplePercent": 5, "redact": ["ssn"]}})

    p = run(b, Resolved(stable="1"))

    pod = gateway_pod(p)
    assert {"name": "payload-log", "emptyDir": {}} in pod["volumes"]
    args = pod["containers"][0]["command"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "payload-log")
    assert args[args.index("--payload-log-dir") + 1] == mount["mountPath"]
    assert routes(p)["payloadLog"] == {"samplePercent": 5.0, "redact": ["ssn"], "maxFileMb": 64, "maxFiles": 5}
    assert "--payload-log-dir" not in gateway_pod(run(md(), Resolved(stable="1")))["containers"][0]["command"]


def exposition(psi: dict[str, float], ks: dict[str, float]) -> str:
    """The gateway's drift series of canary version 2, as /metrics shows them."""
    lines = []
    for metric, values in (("kubeforge_drift_psi", psi), ("kubeforge_drift_ks", ks)):
        lines.append(f"# TYPE {metric} gauge")
        labels = 'model="clf",version="2",role="canary"'
        lines += [f'{metric}{{{labels},feature="{feature}"}} {value}' for feature, value in values.items()]
    return "\n".join(lines) + "\n"


def test_drift_built_ins_are_the_canarys_largest_feature_drift_and_no_verdict_without_it() -> None:
    text = exposition({"age": 0.04, "income": 0.31}, {"age": 0.02, "income": 0.18})
    interval = an.parse(text, "clf", "2").minus(an.parse(text, "clf", "2"))
    psi, ks = AnalysisMetric(name="drift-psi", max=0.2), AnalysisMetric(name="drift-ks", max=0.2)

    assert an.builtin("drift-psi", interval, 20) == 0.31
    assert an.builtin("drift-ks", interval, 20) == 0.18
    assert an.verdict(psi, an.builtin("drift-psi", interval, 20))["passed"] is False
    assert an.verdict(ks, an.builtin("drift-ks", interval, 20))["passed"] is True
    # Below minSamples the gateway shows no statistics: neither pass nor fail, as other built-ins without data.
    quiet = an.parse(exposition({}, {}), "clf", "2")
    assert "passed" not in an.verdict(psi, an.builtin("drift-psi", quiet, 20))
    assert an.builtin("drift-psi", an.parse(text, "clf", "3"), 20) is None  # another version's is not the canary's


def test_the_baselines_of_three_versions_with_300_features_fit_in_the_route_tables_configmap() -> None:
    names = [f"feature_{i:03d}" for i in range(300)]
    wide = compute(np.random.default_rng(1).normal(size=(2000, 300)), names).model_dump_json().encode()
    found = version_drift(wide, {mc.TAG_FEATURES: json.dumps(names), mc.TAG_TASK: "regression"})
    b = md(canary=CANARY, shadow={"model": {"name": "clf", "alias": "shadow"}})
    resolved = Resolved(stable="1", canary="2", shadow="3", baselines={("clf", v): found for v in ("1", "2", "3")})
    run(b, resolved)
    p = run(b, resolved)

    configmap = next(o for o in p.apply if o["kind"] == "ConfigMap")
    assert len(routes(p)["versions"]) == 3 and all("drift" in v for v in routes(p)["versions"])
    assert len(configmap["data"]["routes.yaml"].encode()) < 1024 * 1024  # what the API server takes


def test_the_registry_caches_keep_the_newest_versions_and_those_still_served(monkeypatch) -> None:
    """A retraining loop registers versions for as long as it runs: the operator's caches of what each version's
    registry entry says (drift baseline, feature order, approval) keep the newest and stay bounded."""
    from kubeforge.operators.deployment import versions

    monkeypatch.setattr(versions, "CACHE_MAX", 3)
    keep = versions.Versions._keep
    cache: dict[tuple[str, str], str] = {}
    for version in "1234":
        assert keep(cache, ("churn", version), f"baseline {version}") == f"baseline {version}"
    assert list(cache) == [("churn", "2"), ("churn", "3"), ("churn", "4")]
    keep(cache, ("churn", "2"), "baseline 2")  # version 2 is still served: resolved again
    keep(cache, ("churn", "5"), "baseline 5")
    assert list(cache) == [("churn", "4"), ("churn", "2"), ("churn", "5")]
