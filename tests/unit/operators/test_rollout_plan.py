"""The ModelDeployment rollout state machine, driven step by step with a fake clock."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from kubeforge.operators.deployment import analysis as an
from kubeforge.operators.deployment.rollout import Observed, Plan, Resolved, plan
from kubeforge.operators.settings import Settings

# Addressed as the local runtime addresses them: each version by its ready replicas (Observed.version_urls).
SETTINGS = Settings(
    "http://mlflow:5000", "kf:1", "triton:1", "kf:1", "http://prom:9090", service_addressing="endpoints"
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
URLS = {v: f"http://127.0.0.1:90{v}" for v in ("1", "2", "3")}
EVERYTHING_READY = Observed(
    frozenset({"1", "2", "3"}), URLS, True, "http://127.0.0.1:8080", True, gateway_grpc="127.0.0.1:8081"
)
PASS = [{"name": "error-rate", "threshold": "<= 0.01", "value": 0.0, "passed": True}]
FAIL = [{"name": "error-rate", "threshold": "<= 0.01", "value": 0.42, "passed": False}]


def md(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "clf", "namespace": "ml", "uid": "u1", "generation": 1},
        "spec": {"model": {"name": "clf", "alias": "champion"}, **spec},
    }


CANARY = {
    "model": {"name": "clf", "alias": "candidate"},
    "steps": [{"weight": 20, "pause": "10s"}, {"weight": 60, "pause": "10s"}],
    "analysis": {"interval": "5s", "failureLimit": 2},
    "scaleDownDelay": "30s",
}


def run(
    body: dict[str, Any],
    resolved: Resolved,
    observed: Observed = EVERYTHING_READY,
    results: list[dict[str, Any]] | None = None,
    now: datetime = T0,
) -> Plan:
    p = plan(body, resolved, observed, results, SETTINGS, now)
    body["status"] = p.status
    _settled(body, resolved, observed, p, now)
    return p


def _settled(body: dict[str, Any], resolved: Resolved, observed: Observed, p: Plan, now: datetime) -> None:
    """A pass over the status p wrote, with nothing else new (its analysis read, the runs it applied on the
    Deployments), decides nothing more: the operator skips such a pass (handlers.reconcile), so every step of every
    scenario here is held to it."""
    settled = replace(observed, runs={**observed.runs, **p.runs})
    again = plan(copy.deepcopy(body), resolved, settled, None, SETTINGS, now)
    assert (again.status, again.apply, again.events, again.reexports) == (p.status, p.apply, [], {})


def cond(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == type_)


def routes(p: Plan) -> dict[str, Any]:
    cm = next(o for o in p.apply if o["kind"] == "ConfigMap")
    return yaml.safe_load(cm["data"]["routes.yaml"])["models"]["clf"]


def weights(p: Plan) -> dict[str, int]:
    return {v["version"]: v.get("weight", 0) for v in routes(p)["versions"] if v["role"] != "shadow"}


def test_in_a_cluster_the_first_pass_routes_to_the_service_it_applies() -> None:
    # The version's Service is applied in the same pass as its Deployment: the route table that will serve is
    # written at once, and the Deployment's creation coming back changes nothing the operator writes.
    b = md()
    in_cluster = replace(SETTINGS, service_addressing="dns")
    p = plan(b, Resolved(stable="1"), Observed(), None, in_cluster, T0)
    assert [(r["version"], r["url"], r["weight"]) for r in routes(p)["versions"]] == [
        ("1", "http://clf-v1.ml.svc:8000", 100)
    ]
    service = next(o for o in p.apply if o["kind"] == "Service" and o["metadata"]["name"] == "clf-v1")
    assert ("http", 8000) in [(port["name"], port["port"]) for port in service["spec"]["ports"]]
    assert p.status["traffic"] == [{"version": "1", "role": "stable", "percent": 100}]
    b["status"] = p.status
    created = Observed(replicas={"1": 1})
    assert plan(b, Resolved(stable="1"), created, None, in_cluster, T0).apply == p.apply


def test_first_version_serves_once_triton_and_gateway_are_ready() -> None:
    b = md()
    p = run(b, Resolved(stable="1"), Observed())
    names = sorted(o["metadata"]["name"] for o in p.apply)
    assert names == ["clf-gateway", "clf-gateway", "clf-routes", "clf-v1", "clf-v1"]
    triton = next(o for o in p.apply if o["kind"] == "Deployment" and o["metadata"]["name"] == "clf-v1")
    pod = triton["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][:3] == ["kubeforge", "serving", "export"]
    assert "--load-model=clf" in pod["containers"][0]["command"]
    assert cond(b, "Ready")["reason"] == "WaitingForStable"
    p = run(b, Resolved(stable="1"))
    assert cond(b, "Ready")["status"] == "True"
    assert weights(p) == {"1": 100}
    assert b["status"]["url"] == "http://127.0.0.1:8080/v2/models/clf"
    assert b["status"]["grpcUrl"] == "127.0.0.1:8081"
    assert b["status"]["traffic"] == [{"version": "1", "role": "stable", "percent": 100}]


def test_canary_walks_its_steps_and_is_promoted() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    run(b, r, Observed(frozenset({"1"}), URLS, True, "http://gw", True))
    assert b["status"]["canaryVersion"] == "2" and b["status"]["canaryWeight"] == 0
    assert cond(b, "CanaryReady")["status"] == "False"
    p = run(b, r)  # canary Triton ready: step 1
    assert weights(p) == {"1": 80, "2": 20}
    assert cond(b, "Progressing")["reason"] == "StepAdvanced"
    p = run(b, r, results=PASS, now=T0 + timedelta(seconds=5))
    assert b["status"]["currentStep"] == 0, "pause not over yet"
    p = run(b, r, results=PASS, now=T0 + timedelta(seconds=11))
    assert weights(p) == {"1": 40, "2": 60} and b["status"]["currentStep"] == 1
    p = run(b, r, results=PASS, now=T0 + timedelta(seconds=22))
    assert b["status"]["stableVersion"] == "2" and "canaryVersion" not in b["status"]
    assert cond(b, "Promoted")["status"] == "True"
    assert weights(p) == {"2": 100}
    assert set(p.live_versions) == {"1", "2"}, "old stable kept for the scale-down delay"
    p = run(b, r, now=T0 + timedelta(seconds=60))
    assert set(p.live_versions) == {"2"}
    assert [e[1] for e in p.events] == []


def test_a_failing_canary_is_rolled_back_naming_the_metric_and_not_retried() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    run(b, r)
    p = run(b, r, results=FAIL, now=T0 + timedelta(seconds=5))
    assert b["status"]["analysis"]["failedChecks"] == 1 and weights(p) == {"1": 80, "2": 20}
    p = run(b, r, results=FAIL, now=T0 + timedelta(seconds=10))
    assert weights(p) == {"1": 100}
    rolled = cond(b, "RolledBack")
    assert rolled["status"] == "True" and "error-rate = 0.42" in rolled["message"] and "<= 0.01" in rolled["message"]
    assert b["status"]["lastFailure"]["reason"] == "AnalysisFailed"
    assert ("Warning", "RolledBack") in [(e[0], e[1]) for e in p.events]
    assert set(p.live_versions) == {"1"}
    p = run(b, r, now=T0 + timedelta(seconds=20))
    assert "canaryVersion" not in b["status"] and set(p.live_versions) == {"1"}
    p = run(b, Resolved(stable="1", canary="3"), now=T0 + timedelta(seconds=30))
    assert b["status"]["canaryVersion"] == "3", "a new target starts a new rollout"


def test_no_data_neither_passes_nor_fails() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    run(b, r)
    nodata = [{"name": "error-rate", "threshold": "<= 0.01"}]
    run(b, r, results=nodata, now=T0 + timedelta(seconds=11))
    assert b["status"]["currentStep"] == 0 and b["status"]["analysis"]["failedChecks"] == 0
    assert cond(b, "Progressing")["reason"] == "WaitingForAnalysis"


def test_following_an_alias_starts_a_rollout_when_it_moves() -> None:
    b = md(followAlias=True)
    run(b, Resolved(stable="1"))
    assert "canaryVersion" not in b["status"]
    run(b, Resolved(stable="2"))
    assert b["status"]["stableVersion"] == "1" and b["status"]["canaryVersion"] == "2"
    assert cond(b, "Progressing")["status"] == "True"


def test_an_alias_pointing_nowhere_degrades_but_keeps_serving() -> None:
    b = md(canary=CANARY)
    run(b, Resolved(stable="1"))
    msg = "spec.canary.model: alias 'candidate' of registered model 'clf' does not exist in MLflow"
    p = run(b, Resolved(stable="1", errors={"canary": msg}))
    assert cond(b, "Degraded")["status"] == "True" and msg in cond(b, "Degraded")["message"]
    assert cond(b, "Ready")["status"] == "True"
    assert weights(p) == {"1": 100}
    assert any(e[1] == "CanaryNotFound" for e in p.events)
    assert not any(e[1] == "CanaryNotFound" for e in run(b, Resolved(stable="1", errors={"canary": msg})).events)


def test_invalid_spec_is_refused_naming_the_field_and_keeps_what_runs() -> None:
    b = md()
    run(b, Resolved(stable="1"))
    b["spec"]["canary"] = {"model": {"name": "clf", "version": 2}, "steps": [{"weight": 50}, {"weight": 10}]}
    p = run(b, Resolved())
    assert cond(b, "Ready")["reason"] == "InvalidSpec"
    assert "spec.canary" in cond(b, "Ready")["message"] and "strictly increase" in cond(b, "Ready")["message"]
    assert p.apply == [] and p.live_versions == {"1": "stable"}


def test_shadow_gets_a_mirror_percent_once_ready() -> None:
    b = md(shadow={"model": {"name": "clf", "version": 3}, "percent": 25})
    p = run(b, Resolved(stable="1", shadow="3"))
    shadow = next(v for v in routes(p)["versions"] if v["role"] == "shadow")
    assert shadow == {
        "version": "3",
        "role": "shadow",
        "url": URLS["3"],
        "tritonModel": "clf",
        "weight": 0,
        "percent": 25,
    }
    assert b["status"]["shadowVersion"] == "3"


def test_histogram_quantile_matches_promql() -> None:
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert an.quantile(0.5, buckets) == 0.001
    assert abs(an.quantile(0.99, buckets) - 0.0047) < 1e-9


def test_error_rate_from_two_scrapes() -> None:
    def text(ok: int, err: int) -> str:
        return (
            "# TYPE kubeforge_upstream_requests counter\n"
            f'kubeforge_upstream_requests_total{{model="clf",version="2",role="canary",outcome="ok"}} {ok}\n'
            f'kubeforge_upstream_requests_total{{model="clf",version="2",role="canary",outcome="error"}} {err}\n'
            f'kubeforge_upstream_requests_total{{model="clf",version="1",role="stable",outcome="error"}} 999\n'
        )

    delta = an.parse(text(150, 30), "clf", "2").minus(an.parse(text(100, 10), "clf", "2"))
    assert delta.tries == 70
    assert an.builtin("error-rate", delta, 20) == 20 / 70
    assert an.builtin("error-rate", delta, 100) is None, "below minRequests: no verdict"


def test_agreement_compares_the_canary_with_stable() -> None:
    spec = {**CANARY, "analysis": {"metrics": [{"name": "agreement", "min": 0.9}], "comparePercent": 40}}
    b = md(canary=spec)
    p = run(b, Resolved(stable="1", canary="2"))
    canary = next(v for v in routes(p)["versions"] if v["role"] == "canary")
    assert canary["percent"] == 40, "stable-answered requests are mirrored to the canary for comparison"
    text = (
        "# TYPE kubeforge_shadow_predictions counter\n"
        'kubeforge_shadow_predictions_total{model="clf",version="2",result="agree"} 30\n'
        'kubeforge_shadow_predictions_total{model="clf",version="2",result="disagree"} 70\n'
    )
    snap = an.parse(text, "clf", "2").minus(an.Snapshot())
    assert an.builtin("agreement", snap, 20) == 0.3


def test_promotion_leaves_the_canary_pods_untouched() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    before = run(b, r)
    run(b, r, results=PASS, now=T0 + timedelta(seconds=11))
    after = run(b, r, results=PASS, now=T0 + timedelta(seconds=22))
    assert b["status"]["stableVersion"] == "2"

    def template(p: Plan) -> dict[str, Any]:
        return next(o for o in p.apply if o["metadata"]["name"] == "clf-v2" and o["kind"] == "Deployment")["spec"]

    assert template(after) == template(before), "a changed pod template would restart the new stable's Triton"


def test_a_gpu_runtime_asks_for_its_gpus_once_per_pod_and_no_cpu_limit() -> None:
    p = run(md(runtime={"gpus": 2, "cpu": "4", "memory": "16Gi"}), Resolved(stable="1"))
    pod = next(o for o in p.apply if o["metadata"]["name"] == "clf-v1" and o["kind"] == "Deployment")["spec"]
    triton, exporter = pod["template"]["spec"]["containers"][0], pod["template"]["spec"]["initContainers"][0]
    assert triton["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
    }
    assert exporter["resources"]["limits"] == {"memory": "16Gi"}, "the exporter runs before Triton, on no GPU"


def test_autoscaled_replicas_are_those_the_autoscaler_chose_within_the_bounds() -> None:
    """A re-applied Triton Deployment keeps the replicas it has (the autoscaler's), only brought within
    minReplicas..maxReplicas; a new one starts at minReplicas; without autoscaling the spec's replicas hold."""

    def replicas(spec: dict[str, Any], now: int | None) -> int:
        observed = Observed(**{**vars(EVERYTHING_READY), "replicas": {} if now is None else {"1": now}})
        p = run(md(**spec), Resolved(stable="1"), observed)
        return next(o for o in p.apply if o["metadata"]["name"] == "clf-v1" and o["kind"] == "Deployment")["spec"][
            "replicas"
        ]

    scaling = {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
    assert [replicas(scaling, now) for now in (None, 1, 4, 9)] == [2, 2, 4, 5]
    assert replicas({"replicas": 3}, 4) == 3


CANARY_DOWN = Observed(frozenset({"1", "3"}), {v: URLS[v] for v in ("1", "3")}, True, "http://127.0.0.1:8080", True)
STABLE_DOWN = Observed(frozenset({"2", "3"}), {v: URLS[v] for v in ("2", "3")}, True, "http://127.0.0.1:8080", True)
NO_DATA = [{"name": "error-rate", "threshold": "<= 0.01"}]


def truthful(b: dict[str, Any]) -> None:
    """Status never claims a traffic share the canary does not get."""
    progressing = cond(b, "Progressing")["message"]
    if not b["status"].get("canaryWeight"):
        assert "% of traffic" not in progressing, progressing
        assert [t["role"] for t in b["status"]["traffic"]] == ["stable"]


def in_step_one(b: dict[str, Any], r: Resolved) -> None:
    run(b, r)
    assert b["status"]["canaryWeight"] == 20 and b["status"]["stepStarted"] == "2026-01-01T00:00:00Z"


def test_a_canary_that_goes_unready_mid_step_fails_a_check_each_interval_and_gets_no_traffic() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    in_step_one(b, r)
    p = run(b, r, CANARY_DOWN, results=PASS, now=T0 + timedelta(seconds=3))
    assert weights(p) == {"1": 100} and b["status"]["canaryWeight"] == 0
    assert b["status"]["analysis"]["failedChecks"] == 1
    assert {"name": "canary-ready", "value": 0.0, "threshold": ">= 1", "passed": False} in b["status"]["analysis"][
        "results"
    ]
    assert cond(b, "CanaryReady")["status"] == "False"
    progressing = cond(b, "Progressing")
    assert progressing["status"] == "True" and progressing["reason"] == "CanaryNotReady"
    message = progressing["message"]
    assert "Triton of version 2 not ready since 2026-01-01T00:00:03Z" in message
    assert "1 failed check(s)" in message and "rolled back after 1 more" in message
    assert [(e[0], e[1]) for e in p.events] == [("Warning", "CanaryNotReady")]
    truthful(b)
    p = run(b, r, CANARY_DOWN, now=T0 + timedelta(seconds=6))
    assert not p.analysis_due and p.events == [], "no new check before the interval has passed"
    p = run(b, r, CANARY_DOWN, now=T0 + timedelta(seconds=9))
    assert p.analysis_due, "checks go on while the canary gets no traffic"
    truthful(b)


def test_a_canary_back_before_the_failure_limit_starts_its_step_over() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    in_step_one(b, r)
    run(b, r, CANARY_DOWN, results=FAIL, now=T0 + timedelta(seconds=3))
    assert b["status"]["analysis"]["failedChecks"] == 1
    p = run(b, r, now=T0 + timedelta(seconds=6))
    assert weights(p) == {"1": 80, "2": 20}
    assert b["status"]["stepStarted"] == "2026-01-01T00:00:06Z" and b["status"]["currentStep"] == 0
    progressing = cond(b, "Progressing")
    assert progressing["reason"] == "StepRestarted" and "step 1/2 started over" in progressing["message"]
    assert "20% of traffic to version 2" in progressing["message"]
    assert [(e[0], e[1]) for e in p.events] == [("Normal", "StepRestarted")]
    assert cond(b, "CanaryReady")["status"] == "True"
    # 11 s after the step first began, but only 5 s after it started over: the full pause is still ahead.
    run(b, r, results=PASS, now=T0 + timedelta(seconds=11))
    assert b["status"]["currentStep"] == 0 and b["status"]["analysis"]["failedChecks"] == 0
    p = run(b, r, results=PASS, now=T0 + timedelta(seconds=17))
    assert b["status"]["currentStep"] == 1 and weights(p) == {"1": 40, "2": 60}


def test_a_step_restarted_needs_an_analysis_made_after_it() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    in_step_one(b, r)
    run(b, r, CANARY_DOWN, results=NO_DATA, now=T0 + timedelta(seconds=3))
    run(b, r, results=PASS, now=T0 + timedelta(seconds=8))  # measured while the canary was down
    run(b, r, now=T0 + timedelta(seconds=19))
    assert b["status"]["currentStep"] == 0
    assert cond(b, "Progressing")["reason"] == "WaitingForAnalysis"
    run(b, r, results=PASS, now=T0 + timedelta(seconds=20))
    assert b["status"]["currentStep"] == 1


def test_a_canary_unready_for_failure_limit_checks_is_rolled_back_naming_why() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    in_step_one(b, r)
    run(b, r, CANARY_DOWN, results=NO_DATA, now=T0 + timedelta(seconds=3))
    assert b["status"]["analysis"]["failedChecks"] == 1, "no data is no excuse for a canary that is down"
    p = run(b, r, CANARY_DOWN, results=NO_DATA, now=T0 + timedelta(seconds=8))
    assert b["status"]["rolledBackVersion"] == "2" and "canaryVersion" not in b["status"]
    rolled = cond(b, "RolledBack")
    assert rolled["status"] == "True" and rolled["reason"] == "AnalysisFailed"
    assert "rolled back after 2 failed check(s)" in rolled["message"]
    assert "canary-ready: Triton of version 2 not ready since 2026-01-01T00:00:03Z" in rolled["message"]
    assert cond(b, "Progressing")["status"] == "False"
    assert weights(p) == {"1": 100} and set(p.live_versions) == {"1"}
    assert ("Warning", "RolledBack") in [(e[0], e[1]) for e in p.events]


def test_a_rollback_while_unready_names_the_failing_metrics_too() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    in_step_one(b, r)
    run(b, r, results=FAIL, now=T0 + timedelta(seconds=3))
    run(b, r, CANARY_DOWN, results=FAIL, now=T0 + timedelta(seconds=8))
    message = cond(b, "RolledBack")["message"]
    assert "canary-ready: Triton of version 2 not ready since 2026-01-01T00:00:08Z" in message
    assert "error-rate = 0.42, wanted <= 0.01" in message


def test_a_stable_version_down_mid_step_pauses_the_step_without_counting_against_the_canary() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    in_step_one(b, r)
    p = run(b, r, STABLE_DOWN, results=NO_DATA, now=T0 + timedelta(seconds=5))
    assert b["status"]["canaryWeight"] == 0 and b["status"]["analysis"]["failedChecks"] == 0
    assert cond(b, "CanaryReady")["status"] == "True"
    progressing = cond(b, "Progressing")
    assert progressing["reason"] == "WaitingForStable" and "stable version 1 is not ready" in progressing["message"]
    assert cond(b, "Ready")["reason"] == "WaitingForStable"
    assert [(e[0], e[1]) for e in p.events] == [("Warning", "WaitingForStable")]
    run(b, r, now=T0 + timedelta(seconds=7))
    assert b["status"]["canaryWeight"] == 20 and b["status"]["stepStarted"] == "2026-01-01T00:00:07Z"
    assert cond(b, "Progressing")["reason"] == "StepRestarted"


def test_waiting_for_the_canary_before_the_first_step_is_not_a_failed_check() -> None:
    b = md(canary=CANARY)
    r = Resolved(stable="1", canary="2")
    p = run(b, r, CANARY_DOWN)
    assert not p.analysis_due and "analysis" not in b["status"]
    assert cond(b, "CanaryReady")["message"] == "waiting for Triton of version 2"
    assert cond(b, "Progressing")["reason"] == "CanaryStarted"
    truthful(b)


def test_requests_routed_around_a_canary_known_not_ready_count_as_errors() -> None:
    def text(ok: int, err: int, not_ready: int) -> str:
        series = 'kubeforge_upstream_requests_total{model="clf",version="2",role="canary",outcome="%s"} %d\n'
        return (
            "# TYPE kubeforge_upstream_requests counter\n"
            + series % ("ok", ok)
            + series % ("error", err)
            + series % ("not_ready", not_ready)
        )

    delta = an.parse(text(100, 1, 49), "clf", "2").minus(an.parse(text(50, 0, 0), "clf", "2"))
    assert delta.tries == 100
    assert an.builtin("error-rate", delta, 20) == 0.5


def test_gateway_pods_are_told_of_each_other_only_when_there_are_several() -> None:
    """A label or a data set request reaches any gateway pod; the pods ask each other for what they did not answer."""
    pods = ("http://127.0.0.1:8082", "http://127.0.0.1:8080")
    several = Observed(**{**vars(EVERYTHING_READY), "gateway_replicas": pods})
    cm = next(o for o in run(md(), Resolved(stable="1"), several).apply if o["kind"] == "ConfigMap")
    assert yaml.safe_load(cm["data"]["routes.yaml"])["peers"] == sorted(pods)
    one = Observed(**{**vars(EVERYTHING_READY), "gateway_replicas": pods[:1]})
    cm = next(o for o in run(md(), Resolved(stable="1"), one).apply if o["kind"] == "ConfigMap")
    assert "peers" not in yaml.safe_load(cm["data"]["routes.yaml"]), "a one-pod gateway's table is as before"


def test_joining_requests_is_the_gateways_only_when_asked() -> None:
    assert routes(run(md(gateway={"joinRequests": True}), Resolved(stable="1")))["joinRequests"] is True
    assert routes(run(md(), Resolved(stable="1")))["joinRequests"] is False
