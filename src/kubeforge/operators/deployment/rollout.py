"""The ModelDeployment state machine: versions, canary steps, promotion, rollback. No I/O.

Level-based like the TrainingJob's: ``plan()`` takes the resource, what the registry
resolved, which versions' Triton is ready, the latest analysis (if one was due) and
the clock, and returns the children, the status and the events. All rollout state
(step, weight, failed checks, what was rolled back) lives in the status, so a
restarted operator resumes at the same step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from ...api import FeatureViewSpec, InvalidResource, ModelDeployment, parse
from ...api.meta import duration_seconds
from ...api.modeldeployment import Analysis, CanaryStep
from ...core import podfailure
from ...core.approval import Approval, approve_command
from ...core.conditions import FALSE, TRUE, UNKNOWN, StatusDraft, parse_rfc3339, rfc3339
from ...core.modelcontract import INPUT_NAME, TAG_FEATURES
from ...serving.routes import VersionDrift
from ..settings import Settings
from . import children, history

# Condition types.
READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
CANARY_READY, PROMOTED, ROLLED_BACK = "CanaryReady", "Promoted", "RolledBack"
DRIFT_MONITORED = "DriftMonitored"
APPROVED = "Approved"  # with spec.policy.requireApproval: whether a version waits for approval or was rejected

# Reasons.
INVALID_SPEC = "InvalidSpec"
SERVING = "Serving"
WAITING_FOR_STABLE = "WaitingForStable"
WAITING_FOR_GATEWAY = "WaitingForGateway"
WAITING_FOR_ROUTES = "WaitingForRoutes"
MODEL_NOT_FOUND = "ModelNotFound"
CANARY_NOT_FOUND = "CanaryNotFound"
SHADOW_NOT_FOUND = "ShadowNotFound"
REGISTRY_UNAVAILABLE = "RegistryUnavailable"
CANARY_STARTED = "CanaryStarted"
CANARY_NOT_READY = "CanaryNotReady"
STEP_ADVANCED = "StepAdvanced"
STEP_RESTARTED = "StepRestarted"
WAITING_FOR_ANALYSIS = "WaitingForAnalysis"
CANARY_PROMOTED = "CanaryPromoted"
ANALYSIS_FAILED = "AnalysisFailed"
STABLE_REPLACED = "StableReplaced"
NO_ROLLOUT = "NoRollout"
AS_EXPECTED = "AsExpected"
FEATURE_VIEW_NOT_FOUND = "FeatureViewNotFound"  # spec.features.featureView names no FeatureView of the namespace
FEATURES_NOT_IN_VIEW = "FeaturesNotInView"  # a version takes features the view does not serve
TRACKED = "Tracked"  # every routed version's drift is tracked against its baseline
NO_BASELINE = "NoBaseline"  # a routed version was registered without a drift baseline: served, not tracked
DRIFT_DISABLED = "Disabled"  # spec.monitoring.drift.enabled is false
READING_BASELINES = "ReadingBaselines"  # MLflow did not tell yet whether a routed version has a baseline
AWAITING_APPROVAL = "AwaitingApproval"  # a version would become stable, canary or shadow once approved
REJECTED = "Rejected"  # the version that would be rolled out was rejected in the registry
REEXPORTED = "Reexported"  # a served version is another registration now: its Triton restarts to export it
SHADOW_STARTED, SHADOW_STOPPED = "ShadowStarted", "ShadowStopped"

GATEWAY = "gateway"  # Observed.failures key of the gateway's pods (model versions are numbers)

# The check recorded in status.analysis, next to the metrics, for each interval a canary spends not ready
# during a step; value 1 would be ready, 0 is not.
READINESS_CHECK = "canary-ready"

# A followAlias rollout without spec.canary uses these steps and the default analysis.
DEFAULT_STEPS = (
    CanaryStep(weight=10, pause="30s"),
    CanaryStep(weight=50, pause="30s"),
    CanaryStep(weight=100, pause="30s"),
)


def seconds(duration: str) -> float:
    """Go-style duration ("1m30s", "250ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", duration))


@dataclass(frozen=True)
class Resolved:
    """What the registry said about spec.model, the canary and the shadow."""

    stable: str | None = None
    canary: str | None = None
    shadow: str | None = None
    task: str = "classification"
    errors: dict[str, str] = field(default_factory=dict)  # role -> message
    features: FeatureSource | None = None  # with spec.features
    baselines: dict[tuple[str, str], DriftBaseline] = field(default_factory=dict)
    """With drift monitoring: (registered model, version) -> its baseline; absent while MLflow cannot tell."""
    approvals: dict[tuple[str, str], Approval] = field(default_factory=dict)
    """(registered model, version) -> its approval, read from the tags of each version resolved; absent: unknown,
    which spec.policy.requireApproval treats as not approved."""
    runs: dict[tuple[str, str], str] = field(default_factory=dict)
    """(registered model, version) -> the MLflow run it was registered from; absent while MLflow cannot tell."""


@dataclass(frozen=True)
class FeatureSource:
    """What spec.features reads from: the FeatureView, and the features each version was trained on."""

    view: FeatureViewSpec | None = None
    error: str = ""  # why view is None, naming spec.features.featureView
    orders: dict[tuple[str, str], list[str] | None] = field(default_factory=dict)
    """(registered model, version) -> its kubeforge.features tag (features in input order); None without one."""


@dataclass(frozen=True)
class DriftBaseline:
    """A version's drift baseline as the route table carries it, or why it has none."""

    drift: VersionDrift | None = None
    missing: str = ""
    """Why drift is None, e.g. the run has no baseline artifact."""


@dataclass(frozen=True)
class Observed:
    """What runs: which versions' Triton is available, their addresses, the gateway's."""

    ready_versions: frozenset[str] = frozenset()
    # version -> its first ready Triton replica's URL, with endpoints addressing (the route table's; with Services,
    # the plan addresses each live version by its Service)
    version_urls: dict[str, str] = field(default_factory=dict)
    gateway_ready: bool = False
    gateway_url: str | None = None
    model_ready: bool = False  # the gateway answers /v2/models/<name>/ready: the route table is in force
    # Why pods fail (core.podfailure.pick), per model version and GATEWAY; read only while something is not ready.
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    gateway_grpc: str | None = None  # host:port of the gateway's gRPC endpoint
    replicas: dict[str, int] = field(default_factory=dict)  # version -> its Triton's replicas now, where autoscaled
    runs: dict[str, str] = field(default_factory=dict)  # version -> the run its Triton Deployment says it serves
    # version -> each of its ready Triton replicas' URL, where no Service balances over them (endpoints addressing)
    # and there is more than one; version_urls has the first.
    version_endpoints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gateway_replicas: tuple[str, ...] = ()  # each ready gateway pod's URL (its metrics are scraped one by one)


@dataclass
class Plan:
    apply: list[dict[str, Any]] = field(default_factory=list)
    live_versions: dict[str, str] = field(default_factory=dict)  # version -> role
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    analysis_due: bool = False
    runs: dict[str, str] = field(default_factory=dict)
    """Version -> the run its Triton Deployment is applied with (labels.MODEL_RUN), where one is known."""
    reexports: dict[str, str] = field(default_factory=dict)
    """Triton Deployment -> the run its pods must export now: its version is another registration than the one
    they serve (a registered model deleted and registered again numbers its versions from 1). The operator sets
    the run on the pod template under a field manager of its own, as `kubectl rollout restart` does, so the
    Deployment's own apply never takes it back; its pods restart and export the new registration."""


def canary_settings(md: ModelDeployment) -> tuple[tuple[CanaryStep, ...], Analysis, float]:
    if md.spec.canary is not None:
        c = md.spec.canary
        return tuple(c.steps), c.analysis, seconds(c.scale_down_delay)
    return DEFAULT_STEPS, Analysis(), 30.0


def analysis_due(status: dict[str, Any], md: ModelDeployment, now: datetime) -> bool:
    """Whether a step is under way (the canary carries traffic, or carried it until its Triton or the
    stable one stopped being ready) and its analysis interval has passed.

    Checks go on while a step is interrupted: each one fails while the canary is not ready (see
    plan), so a canary that does not come back is rolled back instead of holding the rollout forever.
    """
    if not status.get("canaryVersion") or not (status.get("canaryWeight") or status.get("stepStarted")):
        return False
    _, analysis, _ = canary_settings(md)
    last = parse_rfc3339((status.get("analysis") or {}).get("time"))
    return last is None or (now - last).total_seconds() >= seconds(analysis.interval)


def describe_failure(results: list[dict[str, Any]]) -> str:
    """The failed metric checks, each with the value measured and the bound it missed."""
    failed = [r for r in results if r.get("passed") is False]
    return "; ".join(f"{r['name']} = {r['value']:.4g}, wanted {r['threshold']}" for r in failed)


@dataclass
class _Pass:
    """What one plan() works on: its inputs, the status being drafted, and the versions decided so far. Each step
    of plan() (stable, canary target, canary steps, shadow, retirement, children, readiness) reads and extends it."""

    md: ModelDeployment
    resolved: Resolved
    observed: Observed
    old: dict[str, Any]
    st: StatusDraft
    out: Plan
    now: datetime
    stable: str = ""
    canary: str | None = None
    shadow: str | None = None
    held: str | None = None  # the canary target, when it waits for approval or was rejected
    blocks: list[tuple[str, str, str]] = field(default_factory=list)
    """(reason, message, version) of each version spec.policy.requireApproval holds back."""
    degraded: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) for Degraded

    @property
    def steps(self) -> tuple[CanaryStep, ...]:
        return canary_settings(self.md)[0]

    @property
    def analysis(self) -> Analysis:
        return canary_settings(self.md)[1]

    @property
    def scale_down(self) -> float:
        return canary_settings(self.md)[2]


def plan(
    body: dict[str, Any],
    resolved: Resolved,
    observed: Observed,
    analysis_results: list[dict[str, Any]] | None,
    settings: Settings,
    now: datetime,
) -> Plan:
    """Children, status and events for what is observed now.

    A canary step runs only while the stable and the canary Triton are both ready. A step that
    loses either is interrupted: the canary's weight goes to 0 (fallback answers what was routed to
    it) and, while the canary is the one down, every analysis interval is a failed ``canary-ready``
    check, so failureLimit of them in a row roll it back. Once both serve again the step starts over
    at its weight, with its full pause and a passing analysis made after the restart.
    """
    meta = body["metadata"]
    old = dict(body.get("status") or {})
    st = StatusDraft(old, meta.get("generation"), now)
    out = Plan()
    try:
        md = parse({"kind": body["kind"], "metadata": {"name": meta["name"]}, "spec": body.get("spec")})
    except InvalidResource as err:
        st.cond(READY, FALSE, INVALID_SPEC, str(err))
        st.cond(DEGRADED, TRUE, INVALID_SPEC, str(err))
        if not _same_condition(old, READY, INVALID_SPEC, str(err)):
            out.events.append(("Warning", INVALID_SPEC, str(err)))
        # Whatever was live keeps serving; nothing new is created from an invalid spec.
        out.live_versions = _previously_live(old)
        out.status = st.s
        return out
    assert isinstance(md, ModelDeployment)
    p = _Pass(md, resolved, observed, old, st, out, now)
    if _stable(p):
        _canary_target(p)
        if p.canary is not None:
            _canary_steps(p, analysis_results)
        _no_canary(p)
        _shadow(p)
        retiring = _retirement(p)
        feature_problems = _children(p, body, settings, retiring)
        _readiness(p, meta["name"], feature_problems)
    out.status = st.s
    return out


def _stable(p: _Pass) -> bool:
    """The stable version: kept, selected the first time, or replaced by a newly pinned one. False when there is
    none to serve yet (the status then says why)."""
    st, out, md, resolved = p.st, p.out, p.md, p.resolved
    stable = p.old.get("stableVersion")
    if stable is None:
        if resolved.stable is None:
            msg = resolved.errors.get("stable", "spec.model did not resolve to a version")
            st.cond(READY, FALSE, MODEL_NOT_FOUND, msg)
            st.cond(DEGRADED, TRUE, MODEL_NOT_FOUND, msg)
            st.s["lastFailure"] = {"reason": MODEL_NOT_FOUND, "message": msg, "time": st.now}
            if not _same_condition(p.old, READY, MODEL_NOT_FOUND, msg):
                out.events.append(("Warning", MODEL_NOT_FOUND, msg))
            return False
        if block := _gate(md, resolved, "stable", resolved.stable):
            st.cond(READY, FALSE, *block)
            _approval_condition(st, out, p.old, md, [(*block, resolved.stable)], None)
            return False  # nothing is served before a version is approved
        stable = resolved.stable
        message = f"serving version {stable}{_approved(md, resolved, 'stable', stable)}"
        history.decide(st, out.events, "Select", stable, "Normal", "StableSelected", message)
    elif md.spec.model.version is not None and resolved.stable and resolved.stable != stable:
        # The user pinned another version: switch directly (a canary is spec.canary's job), once it is approved.
        if block := _gate(md, resolved, "stable", resolved.stable):
            p.blocks.append((*block, resolved.stable))
        else:
            _retire(st, stable, p.now, p.scale_down)
            approved = _approved(md, resolved, "stable", resolved.stable)
            message = f"stable version {stable} -> {resolved.stable}{approved}"
            history.decide(st, out.events, "Replace", resolved.stable, "Normal", STABLE_REPLACED, message)
            stable = resolved.stable
            st.clear("canaryVersion", "canaryWeight", "currentStep", "stepStarted", "analysis")
    st.s["stableVersion"] = p.stable = stable
    return True


def _canary_target(p: _Pass) -> None:
    """The version to roll out (the alias followed, or spec.canary's), unless it serves already, was rolled back,
    or waits for approval; a canary that is no longer the target is withdrawn, a new target starts."""
    st, out, md, resolved, stable = p.st, p.out, p.md, p.resolved, p.stable
    target: str | None = None
    target_role = "canary" if md.spec.canary is not None and not md.spec.follow_alias else "stable"
    if md.spec.follow_alias:
        target = resolved.stable
    elif md.spec.canary is not None:
        target = resolved.canary
    if target == stable:
        target = None
    if target_role in resolved.errors:
        reason = CANARY_NOT_FOUND if target_role == "canary" else MODEL_NOT_FOUND
        p.degraded.append((reason, resolved.errors[target_role] + f"; version {stable} keeps serving"))
    if target is not None and target == p.old.get("rolledBackVersion"):
        target = None  # rolled back: not again until the target moves on
    if target is not None and (block := _gate(md, resolved, "canary", target)):
        p.blocks.append((*block, target))
        p.held, target = target, None

    canary = p.old.get("canaryVersion")
    if canary is not None and canary != target:
        if canary == p.held:  # rejected during its rollout (or no longer approved): all traffic back to stable
            reason, message, _ = p.blocks[-1]
            message = f"canary {canary} withdrawn, version {stable} serves all traffic: {message}"
            history.decide(st, out.events, "Withdraw", canary, "Warning", reason, message)
        elif target is None and canary != p.old.get("rolledBackVersion"):
            message = f"canary {canary} withdrawn: no longer the rollout target"
            history.decide(st, out.events, "Withdraw", canary, "Normal", NO_ROLLOUT, message)
        st.clear("canaryVersion", "canaryWeight", "currentStep", "stepStarted", "analysis")
        canary = None
    if canary is None and target is not None:
        canary = target
        st.s.update({"canaryVersion": canary, "canaryWeight": 0, "currentStep": 0})
        st.clear("stepStarted", "analysis")
        msg = f"rolling out version {canary} over {len(p.steps)} step(s); stable is {stable}"
        msg += _approved(md, resolved, "canary", canary)
        st.cond(PROGRESSING, TRUE, CANARY_STARTED, msg)
        st.cond(PROMOTED, FALSE, CANARY_STARTED, msg)
        history.decide(st, out.events, "Start", canary, "Normal", CANARY_STARTED, msg)
    p.canary = canary


def _canary_steps(p: _Pass, analysis_results: list[dict[str, Any]] | None) -> None:
    """A live canary's steps: started while both versions serve, interrupted while either does not, judged by the
    analysis, advanced, promoted (the canary becomes stable) or rolled back."""
    st, out, canary, stable = p.st, p.out, p.canary, p.stable
    assert canary is not None
    # Steps run only while both versions serve: a step's pause measures the canary under real traffic.
    canary_up, stable_up = canary in p.observed.ready_versions, stable in p.observed.ready_versions
    in_step = st.s.get("stepStarted") is not None
    carried_traffic = bool(st.s.get("canaryWeight"))
    if canary_up:
        st.cond(CANARY_READY, TRUE, AS_EXPECTED, f"Triton of version {canary} is available")
    elif in_step:
        st.cond(CANARY_READY, FALSE, CANARY_NOT_READY, f"Triton of version {canary} is not ready")
    else:
        st.cond(CANARY_READY, FALSE, CANARY_NOT_READY, f"waiting for Triton of version {canary}")
    if canary_up and stable_up:
        if not in_step or not carried_traffic:
            _start_step(st, out, p.steps, canary, stable, restart=in_step)
    else:
        st.s["canaryWeight"] = 0
    if analysis_results is not None and _analysis(p, analysis_results, lost=in_step and not canary_up):
        return  # rolled back
    if st.s.get("stepStarted") and not st.s.get("canaryWeight"):
        reason, msg = _interrupted(st.s, p.steps, p.analysis, canary, stable, canary_up)
        st.cond(PROGRESSING, TRUE, reason, msg)
        if carried_traffic:
            history.decide(st, out.events, "Interrupt", canary, "Warning", reason, msg)
    elif st.s.get("stepStarted"):
        _maybe_advance(st, out, p.md, p.steps, canary, p.now)
        if st.s.get("promotedVersion"):
            promoted = st.s.pop("promotedVersion")
            _retire(st, stable, p.now, p.scale_down)
            p.stable, p.canary = promoted, None
            st.s["stableVersion"] = promoted
    out.analysis_due = p.canary is not None and analysis_due(st.s, p.md, p.now)


def _analysis(p: _Pass, analysis_results: list[dict[str, Any]], lost: bool) -> bool:
    """Record an analysis in status; True when its failed checks in a row reached failureLimit and the canary was
    rolled back. An interval the canary spends not ready during a step (lost) is a failed check, as an error
    would be."""
    st, canary = p.st, p.canary
    assert canary is not None
    results = list(analysis_results)
    if lost:
        results.append({"name": READINESS_CHECK, "value": 0.0, "threshold": ">= 1", "passed": False})
    prev = dict(st.s.get("analysis") or {})
    failed = sum(1 for r in results if r.get("passed") is False)
    passed = any(r.get("passed") is True for r in results)
    failures = int(prev.get("failedChecks") or 0) + 1 if failed else (0 if passed else prev.get("failedChecks", 0))
    st.s["analysis"] = {"time": st.now, "failedChecks": failures, "results": results}
    if failures < p.analysis.failure_limit:
        return False
    why = [_not_ready_since(st.s, canary)] if lost else []
    if metrics_failed := describe_failure(analysis_results):
        why.append(metrics_failed)
    _rollback(st, p.out, canary, p.stable, "; ".join(why), failures)
    p.canary = None
    p.out.analysis_due = False
    return True


def _no_canary(p: _Pass) -> None:
    """CanaryReady and Progressing while no canary is live: what holds the next version back, if anything."""
    if p.canary is not None:
        return
    st = p.st
    st.cond(CANARY_READY, FALSE, NO_ROLLOUT, "no canary")
    if p.blocks:  # the next stable or canary waits for approval, or was rejected
        st.cond(PROGRESSING, FALSE, p.blocks[0][0], f"{p.blocks[0][1]}; version {p.stable} keeps serving")
    elif not _is(st.s, ROLLED_BACK) and not _is(st.s, PROMOTED):
        st.cond(PROGRESSING, FALSE, NO_ROLLOUT, f"version {p.stable} is stable; no rollout in progress")


def _shadow(p: _Pass) -> None:
    """The version traffic is mirrored to, when spec.shadow resolves to one that neither serves nor waits."""
    st, out, md, resolved, old = p.st, p.out, p.md, p.resolved, p.old
    shadow = resolved.shadow if md.spec.shadow is not None else None
    if shadow in (p.stable, p.canary):
        shadow = None
    if shadow and (block := _gate(md, resolved, "shadow", shadow)):
        p.blocks.append((*block, shadow))
        shadow = None
    if "shadow" in resolved.errors:
        p.degraded.append((SHADOW_NOT_FOUND, resolved.errors["shadow"]))
    if shadow and md.spec.shadow and shadow != old.get("shadowVersion"):
        message = f"mirroring {md.spec.shadow.percent}% of traffic to version {shadow}"
        message += _approved(md, resolved, "shadow", shadow)
        history.decide(st, out.events, "Shadow", shadow, "Normal", SHADOW_STARTED, message)
    elif not shadow and old.get("shadowVersion"):
        message = f"no more traffic mirrored to version {old['shadowVersion']}"
        history.decide(st, out.events, "Shadow", old["shadowVersion"], "Normal", SHADOW_STOPPED, message)
    if shadow:
        st.s["shadowVersion"] = shadow
    else:
        st.clear("shadowVersion", "shadowReport")
    p.shadow = shadow


def _retirement(p: _Pass) -> list[dict[str, Any]]:
    """Former stable versions that keep running until their scale-down delay has passed."""
    retiring = [
        r
        for r in p.st.s.get("retiring", [])
        # _retire writes every entry with its "after" time
        if cast(datetime, parse_rfc3339(r["after"])) > p.now and r["version"] not in (p.stable, p.canary, p.shadow)
    ]
    if retiring:
        p.st.s["retiring"] = retiring
    else:
        p.st.clear("retiring")
    return retiring


def _children(
    p: _Pass, body: dict[str, Any], settings: Settings, retiring: list[dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """Every live version's Triton, the route table and the gateway; traffic and url in status. Returns the
    feature problems as (role, reason, message)."""
    st, md, name = p.st, p.md, body["metadata"]["name"]
    live = {p.stable: "stable"}
    if p.canary:
        live[p.canary] = "canary"
    if p.shadow:
        live[p.shadow] = "shadow"
    for r in retiring:
        live.setdefault(r["version"], "stable")
    p.out.live_versions = live
    model = md.spec.model.name
    for version, role in live.items():
        version_model = model_of(md, role)
        now, run = p.observed.replicas.get(version), _run(p, name, version_model, version)
        if run:
            p.out.runs[version] = run
        p.out.apply.append(children.triton_deployment(body, md, version_model, version, role, settings, now, run))
        p.out.apply.append(children.triton_service(body, version))
        if md.spec.autoscaling is not None:
            p.out.apply.append(children.autoscaler(body, md, version))
    routes = _routes(st.s, md, _addressed(p.observed, settings, body, live), model, p.stable, p.canary, p.shadow)
    features, feature_problems = _feature_routes(md, body["metadata"]["namespace"], p.resolved.features, routes)
    p.degraded += [(reason, message) for _, reason, message in feature_problems]
    _drift_routes(st, p.out, p.old, md, p.resolved.baselines, routes)
    table = children.route_table(md, name, p.resolved.task, routes, features, p.observed.gateway_replicas)
    p.out.apply.append(children.routes_configmap(body, table))
    p.out.apply.append(children.gateway_deployment(body, md, settings))
    p.out.apply.append(children.gateway_service(body))
    st.s["traffic"] = [
        {"version": r["version"], "role": r["role"], "percent": r.get("weight") or r.get("percent", 0)} for r in routes
    ]
    if p.observed.gateway_url:
        st.s["url"] = f"{p.observed.gateway_url}/v2/models/{name}"
    if p.observed.gateway_grpc:
        st.s["grpcUrl"] = p.observed.gateway_grpc
    return feature_problems


def _addressed(observed: Observed, settings: Settings, body: dict[str, Any], live: dict[str, str]) -> Observed:
    """observed with each live version's address. Where Services address the versions (in a cluster), that is the
    Service this very pass applies, known before the version's Deployment exists: the first pass's route table is
    the one that serves, and the Deployment's creation coming back changes nothing."""
    if settings.service_addressing == "endpoints":
        return observed
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    return replace(observed, version_urls={v: children.version_url(name, namespace, v) for v in live})


def _run(p: _Pass, name: str, model: str, version: str) -> str | None:
    """The run a version's Triton is to say it serves: the registry's, else (MLflow cannot tell now) the one its
    Deployment says. When both are known and differ, the version is another registration: see Plan.reexports."""
    serving, registered = p.observed.runs.get(version), p.resolved.runs.get((model, version))
    if serving and registered and serving != registered:
        p.out.reexports[children.version_name(name, version)] = registered
        message = (
            f"version {version} of {model} is another registration now (run {registered}, was {serving}): "
            "its Triton restarts to export it"
        )
        history.decide(p.st, p.out.events, "Reexport", version, "Normal", REEXPORTED, message)
    return registered or serving


def _readiness(p: _Pass, name: str, feature_problems: list[tuple[str, str, str]]) -> None:
    """Ready, lastFailure, Degraded and Approved from what serves and what went wrong."""
    st, out, stable, observed = p.st, p.out, p.stable, p.observed
    failing = observed.failures
    if stable not in observed.ready_versions:
        st.cond(READY, FALSE, WAITING_FOR_STABLE, _waiting_for(f"Triton of version {stable}", failing.get(stable)))
    elif not observed.gateway_ready:
        st.cond(READY, FALSE, WAITING_FOR_GATEWAY, _waiting_for("the gateway", failing.get(GATEWAY)))
    elif not observed.model_ready:
        st.cond(READY, FALSE, WAITING_FOR_ROUTES, f"waiting for the gateway to serve {name} (route table reload)")
    elif unfed := [(reason, message) for role, reason, message in feature_problems if role == "stable"]:
        st.cond(READY, FALSE, *unfed[0])
    else:
        st.cond(READY, TRUE, SERVING, f"version {stable} is serving")
    # The failure that keeps the stable version or the gateway from serving comes first, then a canary's or shadow's.
    failure = next((failing[k] for k in (stable, GATEWAY, *failing) if k in failing), None)
    if (last := podfailure.newer(st.s.get("lastFailure"), failure, st.now)) is not None:
        st.s["lastFailure"] = last
        out.events.append(podfailure.event(last))
    if p.degraded:
        reason, message = p.degraded[0]
        st.cond(DEGRADED, TRUE, reason, "; ".join(m for _, m in p.degraded))
        if not _same_condition(p.old, DEGRADED, reason, "; ".join(m for _, m in p.degraded)):
            out.events.append(("Warning", reason, message))
            st.s["lastFailure"] = {"reason": reason, "message": message, "time": st.now}
    elif not _is(st.s, ROLLED_BACK) or p.canary is not None:
        st.cond(DEGRADED, FALSE, AS_EXPECTED, "")
    withdrawn = p.held if p.held == p.old.get("canaryVersion") else None
    _approval_condition(st, out, p.old, p.md, p.blocks, stable, withdrawn=withdrawn)


def _gate(md: ModelDeployment, resolved: Resolved, role: str, version: str) -> tuple[str, str] | None:
    """Under spec.policy.requireApproval, why version may not become role yet: (reason, message); None when it may
    (or no approval is required)."""
    if not md.spec.policy.require_approval:
        return None
    model = model_of(md, role)
    found = resolved.approvals.get((model, version), Approval())
    if found.approved:
        return None
    if found.rejected:
        return REJECTED, f"version {version} of {model} was {found.describe()}: it is not rolled out"
    command = approve_command(model, version)
    return AWAITING_APPROVAL, f"version {version} of {model} awaits approval before it becomes {role}: run `{command}`"


def _approved(md: ModelDeployment, resolved: Resolved, role: str, version: str) -> str:
    """'; approved by ...' for a decision's message under spec.policy.requireApproval, else nothing."""
    if not md.spec.policy.require_approval:
        return ""
    return f"; {resolved.approvals.get((model_of(md, role), version), Approval()).describe()}"


def _approval_condition(
    st: StatusDraft,
    out: Plan,
    old: dict[str, Any],
    md: ModelDeployment,
    blocks: list[tuple[str, str, str]],
    serving: str | None,
    withdrawn: str | None = None,
) -> None:
    """The Approved condition, with spec.policy.requireApproval only, and a decision (an Event and a history entry)
    for each version that starts waiting or is refused; withdrawn was recorded as its canary's withdrawal."""
    if not md.spec.policy.require_approval:
        st.s["conditions"] = [c for c in st.s.get("conditions") or [] if c.get("type") != APPROVED]
        return
    if not blocks:
        st.cond(APPROVED, TRUE, AS_EXPECTED, "no version awaits approval")
        return
    before = next((c.get("message", "") for c in old.get("conditions") or [] if c.get("type") == APPROVED), "")
    for reason, message, version in blocks:
        if message not in before and version != withdrawn:
            action, type_ = ("Refuse", "Warning") if reason == REJECTED else ("AwaitApproval", "Normal")
            history.decide(st, out.events, action, version, type_, reason, message)
    message = "; ".join(m for _, m, _ in blocks) + (f"; version {serving} keeps serving" if serving else "")
    st.cond(APPROVED, FALSE, blocks[0][0], message)


def _waiting_for(what: str, failure: dict[str, Any] | None) -> str:
    """The Ready message while what is not available: why, when its pods tell."""
    if failure is None:
        return f"waiting for {what} to become available"
    return f"waiting for {what}: {podfailure.describe(failure)}"


def model_of(md: ModelDeployment, role: str) -> str:
    if role == "canary" and md.spec.canary is not None and not md.spec.follow_alias:
        return md.spec.canary.model.name
    if role == "shadow" and md.spec.shadow is not None:
        return md.spec.shadow.model.name
    return md.spec.model.name


def _routes(
    s: dict[str, Any],
    md: ModelDeployment,
    observed: Observed,
    model: str,
    stable: str,
    canary: str | None,
    shadow: str | None,
) -> list[dict[str, Any]]:
    """Route table entries; a version enters only once its address is known (stable always), with its replicas'
    addresses where the gateway balances over them itself."""
    weight = int(s.get("canaryWeight") or 0) if canary else 0
    routes: list[dict[str, Any]] = []
    stable_url = observed.version_urls.get(stable)
    if stable_url is None:
        return routes
    if canary and weight and canary in observed.version_urls:
        _, analysis, _ = canary_settings(md)
        compares = any(m.name == "agreement" and m.query is None for m in analysis.metrics)
        routes.append(
            {
                "version": canary,
                "role": "canary",
                "url": observed.version_urls[canary],
                "model": model_of(md, "canary"),
                "weight": weight,
                "percent": analysis.compare_percent if compares else 0,
            }
        )
    else:
        weight = 0
    routes.insert(0, {"version": stable, "role": "stable", "url": stable_url, "model": model, "weight": 100 - weight})
    if weight == 100:
        routes[0]["weight"] = 0
    if shadow and shadow in observed.ready_versions and shadow in observed.version_urls and md.spec.shadow:
        routes.append(
            {
                "version": shadow,
                "role": "shadow",
                "url": observed.version_urls[shadow],
                "model": model_of(md, "shadow"),
                "percent": md.spec.shadow.percent,
            }
        )
    for route in routes:
        if replicas := observed.version_endpoints.get(route["version"]):
            route["endpoints"] = list(replicas)
    return routes


def _drift_routes(
    st: StatusDraft,
    out: Plan,
    old: dict[str, Any],
    md: ModelDeployment,
    baselines: dict[tuple[str, str], DriftBaseline],
    routes: list[dict[str, Any]],
) -> None:
    """Each route entry's drift baseline, and DriftMonitored saying which versions' drift is tracked. A version
    without a baseline is served all the same: drift is something to watch, not a reason to stop serving."""
    settings = md.spec.monitoring.drift
    if not settings.enabled:
        st.cond(DRIFT_MONITORED, FALSE, DRIFT_DISABLED, "spec.monitoring.drift.enabled is false")
        return
    if not routes:
        return  # nothing routed yet: the condition speaks of what serves
    tracked, missing, unknown = [], [], []
    for route in routes:
        found = baselines.get((route["model"], route["version"]))
        if found is None:
            unknown.append(route["version"])
        elif found.drift is None:
            missing.append(f"version {route['version']} has no drift baseline ({found.missing}): served without drift")
        else:
            route["drift"] = found.drift
            tracked.append(route["version"])
    what = [f"drift of version(s) {', '.join(tracked)} tracked over {settings.window}"] if tracked else []
    if missing:
        message = "; ".join([*missing, *what])
        if not _same_condition(old, DRIFT_MONITORED, NO_BASELINE, message):
            out.events.append(("Warning", NO_BASELINE, message))
        st.cond(DRIFT_MONITORED, FALSE, NO_BASELINE, message)
    elif unknown:
        message = f"reading the drift baseline of version(s) {', '.join(unknown)} from MLflow"
        st.cond(DRIFT_MONITORED, UNKNOWN, READING_BASELINES, message)
    else:
        st.cond(DRIFT_MONITORED, TRUE, TRACKED, what[0])


def _feature_routes(
    md: ModelDeployment, namespace: str, source: FeatureSource | None, routes: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[tuple[str, str, str]]]:
    """The route table's features entry, each route entry's featureOrder, and the problems as (role, reason,
    message). A version that cannot be fed from the view gets no featureOrder: the gateway then routes requests
    with entity keys around it, and such a stable version keeps the deployment from being Ready."""
    spec = md.spec.features
    if spec is None:
        return None, []
    where = f"spec.features.featureView: FeatureView {spec.feature_view!r}"
    if spec.entity_key == INPUT_NAME:
        message = f"spec.features.entityKey: {INPUT_NAME!r} is the model's own input; name the input after the entity"
        return None, [("stable", INVALID_SPEC, message)]
    if source is None or source.view is None:
        return None, [("stable", FEATURE_VIEW_NOT_FOUND, source.error if source else f"{where} not read yet")]
    view = source.view
    keys = [(entity, key) for entity in view.entities for key in entity.join_keys]
    if len(keys) != 1:
        named = ", ".join(f"{e.name}.{k}" for e, k in keys)
        message = f"{where} has the join keys {named}; a model deployment reads a view with one entity and one join key"
        return None, [("stable", INVALID_SPEC, message)]
    entity, join_key = keys[0]
    dtypes = {f.name: f.dtype for f in view.features}
    problems = []
    for route in routes:
        version, order = route["version"], source.orders.get((route["model"], route["version"]))
        if order is None:
            why = f"version {version} has no {TAG_FEATURES} tag, so the order of its input features is unknown"
            problems.append((route["role"], FEATURES_NOT_IN_VIEW, why))
            continue
        absent = [f for f in order if f not in dtypes]
        text = [f for f in order if dtypes.get(f) == "String"]
        unfit = [f"features the view does not have: {', '.join(absent)}"] if absent else []
        unfit += [f"strings, not numbers: {', '.join(text)}"] if text else []
        if unfit:
            why = f"{where}: version {version} takes {' and '.join(unfit)}"
            problems.append((route["role"], FEATURES_NOT_IN_VIEW, why))
            continue
        route["featureOrder"] = order
    features = {
        "namespace": namespace,
        "featureView": spec.feature_view,
        "entityKey": spec.entity_key,
        "joinKey": join_key,
        "valueType": entity.value_type,
        "ttlSeconds": duration_seconds(view.ttl),
        "defaults": {f.name: f.default for f in view.features if f.default is not None},
    }
    return features, problems


def _start_step(
    st: StatusDraft, out: Plan, steps: tuple[CanaryStep, ...], canary: str, stable: str, restart: bool
) -> None:
    """Give the canary the current step's weight from now on.

    A restarted step (its canary or stable stopped being ready during it, and both serve again) gets
    its full pause and needs a passing analysis made after the restart, like a step that just began:
    what was measured before the interruption says nothing about the Triton that serves now.
    """
    step = int(st.s.get("currentStep") or 0)
    weight = steps[step].weight
    st.s.update({"stepStarted": st.now, "canaryWeight": weight})
    share = f"{weight}% of traffic to version {canary}"
    if restart:
        reason = STEP_RESTARTED
        msg = (
            f"step {step + 1}/{len(steps)} started over: Triton of versions {stable} and {canary} serve again; "
            f"{share} for the step's full pause and a new passing analysis"
        )
    else:
        reason, msg = STEP_ADVANCED, f"step {step + 1}/{len(steps)}: {share}"
    st.cond(PROGRESSING, TRUE, reason, msg)
    history.decide(st, out.events, "Restart" if restart else "Step", canary, "Normal", reason, msg)


def _interrupted(
    s: dict[str, Any], steps: tuple[CanaryStep, ...], analysis: Analysis, canary: str, stable: str, canary_up: bool
) -> tuple[str, str]:
    """Progressing's reason and message while a step is interrupted (the canary's weight is 0)."""
    where = f"step {int(s.get('currentStep') or 0) + 1}/{len(steps)} interrupted"
    if canary_up:  # the stable version is down: nothing to hold against the canary
        return WAITING_FOR_STABLE, (
            f"{where}: Triton of stable version {stable} is not ready; no traffic to version {canary} "
            "until it serves again, then the step starts over"
        )
    failed = int((s.get("analysis") or {}).get("failedChecks") or 0)
    left = analysis.failure_limit - failed
    return CANARY_NOT_READY, (
        f"{where}: {_not_ready_since(s, canary)}, no traffic to it; {failed} failed check(s) in a row, "
        f"rolled back after {left} more unless it serves again first, then the step starts over"
    )


def _not_ready_since(s: dict[str, Any], canary: str) -> str:
    since = next(c.get("lastTransitionTime") for c in s["conditions"] if c["type"] == CANARY_READY)
    return f"{READINESS_CHECK}: Triton of version {canary} not ready since {since}"


def _maybe_advance(
    st: StatusDraft, out: Plan, md: ModelDeployment, steps: tuple[CanaryStep, ...], canary: str, now: datetime
) -> None:
    """Advance when the step's pause has passed and an analysis made after the step began passed
    (one made at the very moment it began measured the interval before it)."""
    step = int(st.s.get("currentStep") or 0)
    started = parse_rfc3339(st.s["stepStarted"])
    assert started is not None
    if (now - started).total_seconds() < seconds(steps[step].pause):
        return
    last = st.s.get("analysis") or {}
    last_time = parse_rfc3339(last.get("time"))
    passed = last.get("failedChecks", 0) == 0 and any(r.get("passed") for r in last.get("results", []))
    if last_time is None or last_time <= started or not passed:
        st.cond(
            PROGRESSING,
            TRUE,
            WAITING_FOR_ANALYSIS,
            f"step {step + 1}/{len(steps)}: waiting for a passing analysis of version {canary}",
        )
        return
    if step + 1 >= len(steps):
        msg = f"version {canary} promoted to stable after {len(steps)} step(s)"
        st.s["promotedVersion"] = canary
        st.clear("canaryVersion", "canaryWeight", "currentStep", "stepStarted")
        st.cond(PROMOTED, TRUE, CANARY_PROMOTED, msg)
        st.cond(ROLLED_BACK, FALSE, CANARY_PROMOTED, msg)
        st.cond(PROGRESSING, FALSE, CANARY_PROMOTED, msg)
        history.decide(st, out.events, "Promote", canary, "Normal", CANARY_PROMOTED, msg)
        return
    step += 1
    st.s.update({"currentStep": step, "canaryWeight": steps[step].weight, "stepStarted": rfc3339(now)})
    msg = f"step {step + 1}/{len(steps)}: {steps[step].weight}% of traffic to version {canary}"
    st.cond(PROGRESSING, TRUE, STEP_ADVANCED, msg)
    history.decide(st, out.events, "Step", canary, "Normal", STEP_ADVANCED, msg)


def _rollback(st: StatusDraft, out: Plan, canary: str, stable: str, why: str, failures: int) -> None:
    """Give all traffic back to stable; why names the failed checks of the last analysis."""
    msg = f"version {canary} rolled back after {failures} failed check(s): {why}; version {stable} serves all traffic"
    st.s["rolledBackVersion"] = canary
    st.clear("canaryVersion", "canaryWeight", "currentStep", "stepStarted")
    st.cond(ROLLED_BACK, TRUE, ANALYSIS_FAILED, msg)
    st.cond(PROMOTED, FALSE, ANALYSIS_FAILED, msg)
    st.cond(PROGRESSING, FALSE, ANALYSIS_FAILED, msg)
    st.cond(DEGRADED, TRUE, ANALYSIS_FAILED, msg)
    st.s["lastFailure"] = {"reason": ANALYSIS_FAILED, "message": msg, "time": st.now}
    history.decide(st, out.events, "Rollback", canary, "Warning", "RolledBack", msg, cause=ANALYSIS_FAILED)


def _retire(st: StatusDraft, version: str, now: datetime, delay: float) -> None:
    after = rfc3339(now + timedelta(seconds=delay))
    st.s["retiring"] = [r for r in st.s.get("retiring", []) if r["version"] != version] + [
        {"version": version, "after": after}
    ]


def _is(s: dict[str, Any], type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == TRUE for c in s.get("conditions") or [])


def _same_condition(old: dict[str, Any], type_: str, reason: str, message: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("reason") == reason and c.get("message") == message
        for c in old.get("conditions") or []
    )


def _previously_live(old: dict[str, Any]) -> dict[str, str]:
    live = {}
    for key, role in (("stableVersion", "stable"), ("canaryVersion", "canary"), ("shadowVersion", "shadow")):
        if old.get(key):
            live[old[key]] = role
    for r in old.get("retiring") or []:
        live.setdefault(r["version"], "stable")
    return live
