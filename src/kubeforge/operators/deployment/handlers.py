"""kopf handlers for ModelDeployment: resolve, observe, analyse, then :func:`rollout.plan`.

Triggers: the ModelDeployment's own events, events of its Deployments, EndpointSlices and
Pods (readiness, addresses, why pods fail), spec changes of the FeatureView it reads
features from, and the operator's one clock (see clock): every 2 seconds while a canary or
shadow is live (analysis intervals, step pauses), when a registry alias or approval it
follows changes, and to retry what no watch event will. Each runs the same level-based
reconcile under a per-object lock.

What a pass observes comes from kopf indexes over the watches the operator holds anyway
(label-selected on the API server, so only kubeforge's children are held; see observe), and the
ModelDeployment itself from its newest event or status write: no read or list call per
pass. What the operator remembers about one ModelDeployment (:class:`State`) lives in that
object's kopf memo, found by its children's handlers and the clock through the ``md_memos``
index, and goes when the object goes. When a child cannot be applied, the ModelDeployment
says so (Ready=False) and the clock tries again with a back-off.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import ChainMap
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import kopf
from pydantic import ValidationError

from ...api import API_VERSION, FeatureViewSpec, ModelDeployment, parse
from ...api.meta import duration_seconds
from ...api.validation import InvalidResource
from ...core import kube
from ...core.approval import Approval
from ...core.conditions import StatusDraft, parse_rfc3339
from ...core.mlflow_rest import MLflowError, NotFound
from ...monitoring import rules
from .. import metrics
from ..labels import MODEL_RUN, MODELDEPLOYMENT
from ..memos import lock_of, memo_in
from ..runtime import WORKERS, Context, context
from . import analysis as an
from . import applied, children, clock, history, observe
from . import retrain as rt
from .rollout import (
    GATEWAY,
    ROLLED_BACK,
    FeatureSource,
    Observed,
    Plan,
    Resolved,
    analysis_due,
    canary_settings,
    model_of,
    plan,
)
from .versions import Versions

GROUP, VERSION = API_VERSION.split("/")
KIND = "ModelDeployment"
EVENT_SOURCE = "kubeforge-modeldeployment"
STATE = "kubeforge.modeldeployment"  # key of State in a ModelDeployment's memo
VERSIONS = "kubeforge.modeldeployment.versions"  # key of the process's Versions in kopf's memos (know_versions)
LISTINGS = "kubeforge.modeldeployment.listings"  # key of the process's applied.Listings in kopf's memos (same)
VIEW_GENERATION = "kubeforge.modeldeployment.view-generation"  # key in a FeatureView's memo
CLOCK_TASK = "kubeforge.modeldeployment.clock"  # key of the clock's task in the operator's memo
log = logging.getLogger("kubeforge.operators.deployment")


class Sent(NamedTuple):
    """A child as this process last applied it."""

    digest: str  # of the object sent: an unchanged child is not sent again
    written: kube.Written  # where the apply left it: a later resourceVersion or generation is someone else's change


class Inputs(NamedTuple):
    """Everything a pass decides from but the clock: a pass an event started, finding the ones the last pass left,
    has nothing to do (see reconcile)."""

    resource_version: str | None  # of the ModelDeployment
    resolved: Resolved  # the registry's answers
    observed: Observed  # the children as the indexes hold them, with the runs this process applied
    stray: frozenset[str]  # versions whose children _prune would delete


@dataclass
class State:
    """What this process remembers about one ModelDeployment between passes; all of it can be lost (a restart
    starts it empty) at the cost of a few repeated requests, never a wrong decision."""

    sent: dict[tuple[str, str], Sent] = field(default_factory=dict)
    """(kind, name) of each child -> what this process last applied of it, and where that left it."""
    applied_at: float = 0.0
    """When (monotonic) a pass last sent children."""
    resend: set[tuple[str, str]] = field(default_factory=set)
    """(kind, name) of children deleted or changed by someone else since the last pass began: the next one sends
    them again whatever sent says (a Deployment or Service deleted by hand comes back, an edit is undone), and
    only them."""
    snapshots: dict[str, dict[str, an.Snapshot]] = field(default_factory=dict)
    """Canary version -> each gateway replica's (by URL) metrics at the last analysis; the next one compares with
    them."""
    holding: dict[str, datetime] = field(default_factory=dict)
    """Retrain trigger -> since when it holds (see retrain)."""
    body: dict[str, Any] | None = None
    """The object as its newest event or status write had it: a pass reads it instead of the API server."""
    deleted: bool = False
    """The object is gone: a pass still queued must not create its children again."""
    inputs: Inputs | None = None
    """What the next pass reads if nothing comes back but the last successful pass's own writes (see reconcile); None
    after one that failed."""
    live: frozenset[str] = frozenset()
    """The versions the last pass kept live."""
    runs: dict[str, str] = field(default_factory=dict)
    """Version -> the run this process last wrote on its Triton Deployment (MODEL_RUN): ahead of the index until
    the watch brings the write back, so a pass in between does not take the version for re-registered again."""
    clock: clock.Clock = field(default_factory=clock.Clock)
    """When it needs a pass that no event starts (see clock)."""


def state_of(memo: Mapping[str, Any]) -> State:
    """The State in a ModelDeployment's memo, made on first use (setdefault is atomic: handlers run in threads;
    a State is built only when there is none, as the clock asks for every deployment's twice a second)."""
    state = memo.get(STATE)
    return state if state is not None else memo.setdefault(STATE, State())  # type: ignore[attr-defined]


def resolve(ctx: Context, versions: Versions, md: ModelDeployment, namespace: str, status: dict[str, Any]) -> Resolved:
    refs = {"stable": md.spec.model}
    if md.spec.canary is not None:
        refs["canary"] = md.spec.canary.model
    if md.spec.shadow is not None:
        refs["shadow"] = md.spec.shadow.model
    found: dict[str, str] = {}
    errors: dict[str, str] = {}
    approvals: dict[tuple[str, str], Approval] = {}
    for role, ref in refs.items():
        field = {"stable": "spec.model", "canary": "spec.canary.model", "shadow": "spec.shadow.model"}[role]
        what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version}"
        try:
            found[role] = versions.resolve(ref.name, ref.alias, ref.version)
            if (approved := versions.approval(ref.name, found[role])) is not None:
                approvals[(ref.name, found[role])] = approved
        except NotFound:
            errors[role] = f"{field}: {what} of registered model {ref.name!r} does not exist in MLflow"
        except MLflowError as err:
            errors[role] = f"{field}: cannot resolve {what} of {ref.name!r}: {err}"
    resolved = Resolved(
        found.get("stable"),
        found.get("canary"),
        found.get("shadow"),
        versions.task(md.spec.model.name) or "classification",
        errors,
        approvals=approvals,
    )
    pairs = _routable(md, resolved, status)
    resolved = replace(resolved, runs={pair: run for pair in pairs if (run := versions.run(*pair))})
    if md.spec.features is not None:
        resolved = replace(resolved, features=_feature_source(ctx, versions, md, namespace, pairs))
    if md.spec.monitoring.drift.enabled:
        baselines = {pair: versions.baseline(*pair) for pair in pairs}
        resolved = replace(resolved, baselines={pair: b for pair, b in baselines.items() if b is not None})
    return resolved


def _routable(md: ModelDeployment, resolved: Resolved, status: dict[str, Any]) -> set[tuple[str, str]]:
    """(registered model, version) of every version this pass may route to: the stable, canary and shadow before
    and after the pass decides."""
    canary_now, canary_next = status.get("canaryVersion"), resolved.stable if md.spec.follow_alias else resolved.canary
    candidates = {
        "stable": {status.get("stableVersion"), resolved.stable, canary_now},  # a promotion makes the canary stable
        "canary": {canary_now, canary_next},
        "shadow": {resolved.shadow},
    }
    return {(model_of(md, role), v) for role, versions in candidates.items() for v in versions if v}


def _feature_source(
    ctx: Context, versions: Versions, md: ModelDeployment, namespace: str, pairs: set[tuple[str, str]]
) -> FeatureSource:
    """spec.features as the cluster and MLflow have it now: the FeatureView, and the feature order of every
    version in pairs."""
    assert md.spec.features is not None
    where = f"spec.features.featureView: FeatureView {md.spec.features.feature_view!r}"
    obj = kube.get(ctx.api, API_VERSION, "FeatureView", md.spec.features.feature_view, namespace)
    if obj is None:
        return FeatureSource(error=f"{where} does not exist in namespace {namespace!r}")
    try:
        view = FeatureViewSpec.model_validate(obj.get("spec") or {})
    except ValidationError as err:
        return FeatureSource(error=f"{where} is invalid: {err.errors()[0]['msg']}")
    return FeatureSource(view, orders={pair: versions.feature_order(*pair) for pair in pairs})


@kopf.on.startup()
def watch_only_children(settings: kopf.OperatorSettings, **_: Any) -> None:
    """The API server sends only kubeforge's Deployments and EndpointSlices (and pods, see runtime): the operator
    holds nothing of a cluster's other workloads in memory (the handlers' label filters alone would drop them only
    on arrival)."""
    for group_plural in (("apps", "deployments"), ("discovery.k8s.io", "endpointslices")):
        settings.watching.label_selectors[group_plural] = MODELDEPLOYMENT


@kopf.index(GROUP, VERSION, "modeldeployments")
async def md_memos(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> dict[tuple[str, str], kopf.Memo]:
    """Each ModelDeployment's memo by namespace and name: its children's events reach its State through it."""
    assert namespace is not None  # namespaced kind
    return {(namespace, name): memo}


@kopf.index("apps", "v1", "deployments", labels={MODELDEPLOYMENT: kopf.PRESENT})
async def md_workloads(
    namespace: str | None,
    name: str,
    labels: Mapping[str, str],
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    **_: Any,
) -> dict[tuple[str, str], observe.Workload] | None:
    """Each ModelDeployment's Deployments (observe.workload)."""
    assert namespace is not None  # namespaced kind
    found = observe.workload(name, labels, meta, spec, status)
    return {(namespace, labels[MODELDEPLOYMENT]): found} if found is not None else None


@kopf.index("discovery.k8s.io", "endpointslices", labels={MODELDEPLOYMENT: kopf.PRESENT})
async def md_addresses(
    namespace: str | None, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], observe.Address] | None:
    """Each ModelDeployment's ready addresses, with endpoints addressing (observe.address)."""
    assert namespace is not None  # namespaced kind
    found = observe.address(labels, body)
    return {(namespace, labels[MODELDEPLOYMENT]): found} if found is not None else None


@kopf.index("v1", "pods", labels={MODELDEPLOYMENT: kopf.PRESENT})
async def md_pods(
    namespace: str | None,
    name: str,
    labels: Mapping[str, str],
    meta: Mapping[str, Any],
    body: Mapping[str, Any],
    **_: Any,
) -> dict[tuple[str, str], tuple[str, dict[str, Any]]] | None:
    """Each ModelDeployment's pods, as much of each as tells why it fails (observe.pod)."""
    assert namespace is not None  # namespaced kind
    found = observe.pod(name, labels, meta, body)
    return {(namespace, labels[MODELDEPLOYMENT]): found} if found is not None else None


def _analyse(
    ctx: Context,
    body: dict[str, Any],
    md: ModelDeployment,
    state: State,
    texts: dict[str, str],
    replicas: Collection[str],
) -> list[dict[str, Any]] | None:
    """The canary's verdicts over the interval since the last analysis (see analysis.interval). What is known of a
    gateway replica not scraped this time is kept while it is one of the gateway's replicas."""
    status = body.get("status") or {}
    canary, stable = status.get("canaryVersion"), status.get("stableVersion")
    assert canary is not None  # called only when analysis_due, which needs a canaryVersion
    _, analysis, _ = canary_settings(md)
    if not texts:
        return [an.verdict(m, None) for m in analysis.metrics]  # gateway unreachable: no data
    now = {url: an.parse(text, body["metadata"]["name"], canary) for url, text in texts.items()}
    prev = state.snapshots.get(canary)
    state.snapshots[canary] = {**{u: s for u, s in (prev or {}).items() if u in replicas}, **now}
    if prev is None:
        return [an.verdict(m, None) for m in analysis.metrics]  # first look: the next interval has data
    # A status with a canaryVersion has a stableVersion too: rollout.plan sets the stable before any canary.
    return an.evaluate(analysis, an.interval(now, prev), ctx.settings.prometheus_url, canary, cast(str, stable))


def _apply(
    ctx: Context, state: State, objs: list[dict[str, Any]], found: Mapping[tuple[str, str], applied.Left]
) -> None:
    """Apply the children that differ from what this process last applied (kube.apply_children), or, for those it
    has not applied yet, from what found says an earlier process applied (see applied)."""
    fresh = {}
    for planned in objs:
        key = (planned["kind"], planned["metadata"]["name"])
        obj, digest = applied.stamped(planned)
        sent = state.sent.get(key)
        if sent is None and (seen := found.get(key)) is not None and seen.digest == digest and seen.untouched:
            state.sent[key] = sent = Sent(digest, seen.written)
        if sent is None or sent.digest != digest:
            fresh[key] = (obj, digest)
    if fresh:
        state.applied_at = time.monotonic()
    written = kube.apply_children(ctx.api, [obj for obj, _ in fresh.values()])
    state.sent.update({key: Sent(digest, written[key]) for key, (_, digest) in fresh.items()})
    for obj, _ in fresh.values():
        metrics.CHILD_APPLIES.labels(obj["metadata"]["namespace"], obj["kind"]).inc()


def _found(
    ctx: Context, memo: Mapping[str, Any], body: Mapping[str, Any], state: State, watched: observe.Watched
) -> Mapping[tuple[str, str], applied.Left]:
    """What earlier processes applied of a ModelDeployment's children, for the first pass of one this process
    found when it started (see applied); nothing for later passes, or for one created since."""
    if state.sent:  # every pass but a ModelDeployment's first in this process
        return {}
    meta = body["metadata"]
    created = parse_rfc3339(meta.get("creationTimestamp"))
    if created is None:
        return {}
    kinds = (*UNWATCHED_KINDS, *([metrics.PROMETHEUS_RULE] if metrics.prometheus_rules_served(ctx.api) else []))
    listed = memo[LISTINGS].of(ctx.api, meta["namespace"], kinds, created.timestamp())
    if listed is None:
        return {}
    deployments = watched.workloads.get((meta["namespace"], meta["name"]), ())
    return ChainMap({("Deployment", w.name): w.left for w in list(deployments) if w.left is not None}, listed)


def _alert_rules(ctx: Context, body: dict[str, Any], md: ModelDeployment | None, state: State) -> list[dict[str, Any]]:
    """Publish the deployment's alert targets as gauges, and where PrometheusRules are served its own PrometheusRule
    (returned to be applied with the other children), the gauges then labelled so the shared rules leave it alone
    (see metrics). An invalid spec changes neither, as it changes nothing that serves."""
    if md is None:
        return []
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    targets = metrics.Targets.of(md)
    if metrics.prometheus_rules_served(ctx.api):
        metrics.export_targets(namespace, name, targets, rules.OWN)
        hold = rules.duration(duration_seconds(md.spec.monitoring.drift.alert_after))
        return [children.prometheus_rule(body, {**asdict(targets), "drift_hold": hold}, ctx.settings.runbook_url)]
    metrics.export_targets(namespace, name, targets, rules.SHARED)
    # Gone with its CRD: should the CRD come back, the rule must be applied anew.
    state.sent.pop((metrics.PROMETHEUS_RULE[1], rules.deployment_rule_name(name)), None)
    return []


VERSION_KINDS = [("apps/v1", "Deployment"), ("v1", "Service"), ("autoscaling/v1", "HorizontalPodAutoscaler")]
"""The children each live version gets, all named children.version_name."""
CHILD_KINDS = [*VERSION_KINDS, ("v1", "ConfigMap")]
"""Every kind of child but the optional PrometheusRule: the versions' and the gateway's (its route table)."""


def _deployed(watched: observe.Watched, namespace: str, name: str) -> frozenset[str]:
    """The versions a ModelDeployment has a Deployment of, as the index holds them."""
    return frozenset(w.part for w in list(watched.workloads.get((namespace, name), ())) if w.part != GATEWAY)


def _prune(ctx: Context, namespace: str, name: str, state: State, watched: observe.Watched, live: set[str]) -> None:
    """Delete the children of versions that are no longer live: those whose Deployment the index still holds (each
    version's children are applied together, and the watch reports a deletion within moments, so a version is
    deleted at most a few times over, never listed)."""
    for version in _deployed(watched, namespace, name) - live:
        child = children.version_name(name, version)
        for api_version, kind in VERSION_KINDS:
            kube.delete(ctx.api, api_version, kind, child, namespace)
            state.sent.pop((kind, child), None)


def _edited(state: State, watched: observe.Watched, namespace: str, name: str) -> list[tuple[str, str]]:
    """The ModelDeployment's Deployments whose spec someone else changed since this process applied them (kubectl
    edit, kubectl scale): the index holds a later generation than the apply left. The spec wins, as for a Service
    or ConfigMap (see _check_unwatched); an autoscaler's scale counts too, and the Deployment sent again keeps the
    replicas it chose. Read under the pass's lock, once the last apply's answer is in State.sent, so the
    operator's own change never counts."""
    edited = []
    for workload in list(watched.workloads.get((namespace, name), ())):
        key = ("Deployment", workload.name)
        mine = state.sent.get(key)
        if mine is not None and workload.generation > mine.written.generation:
            edited.append(key)
    if edited:
        log.info(
            f"{namespace}/{name}: {', '.join(f'{k} {n}' for k, n in edited)} changed by someone else; applying again"
        )
    return edited


def _version(body: Mapping[str, Any] | None) -> int | None:
    """body's resourceVersion as a number (the API server increases it with every write), None if it has none."""
    try:
        return int(body["metadata"]["resourceVersion"]) if body else None
    except (KeyError, ValueError):
        return None


def _newer(seen: Mapping[str, Any] | None, known: Mapping[str, Any] | None) -> bool:
    """Whether an event's body is newer than the one this process knows; one that cannot be compared counts as
    newer (the pass then reads the object, see _newest)."""
    mine, theirs = _version(known), _version(seen)
    return known is None or mine is None or theirs is None or theirs > mine


def _newest(state: State, seen: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The newer of the body an event brought and the one this process knows, kept in state; None when neither
    is known or they cannot be compared."""
    if seen is not None and _newer(seen, state.body):
        if _version(seen) is None or (state.body is not None and _version(state.body) is None):
            return None
        state.body = _kept(copy.deepcopy(dict(seen)))
    return state.body


def _kept(body: dict[str, Any]) -> dict[str, Any]:
    """body as State keeps it: without managedFields, which no pass reads and which is most of its size."""
    body["metadata"].pop("managedFields", None)
    return body


@metrics.reconciled(KIND)
def reconcile(
    namespace: str, name: str, memo: Mapping[str, Any], watched: observe.Watched, seen: Any = None, event: bool = True
) -> None:
    """One level-based pass over the newest known body (seen: the one an event brought), read from the API server
    only when this process knows none. A pass an event started ends early when nothing it reads differs from what
    the last pass left (a child's event that changes nothing the plan uses: the Deployment just applied being
    created, after the status that pass wrote); the clock's passes always run, as time is one of their inputs."""
    ctx = context()
    state = state_of(memo)
    with lock_of(memo, namespace, name):  # type: ignore[arg-type]
        if state.deleted:
            return
        _take_resend(state, watched, namespace, name)
        body = _newest(state, seen) or kube.get(ctx.api, API_VERSION, KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        state.body = _kept(body)
        now = datetime.now(UTC)
        md, inputs = _inputs(ctx, memo, state, body, watched)
        if event and inputs == state.inputs:
            return
        state.inputs = None
        old_status = body.get("status") or {}
        observed = inputs.observed
        results, metrics_text = _analysis(ctx, body, md, state, observed, now)
        p = plan(body, inputs.resolved, observed, results, ctx.settings, now)
        _act(ctx, memo, state, body, watched, md, p, now)
        if md is not None and md.spec.retrain is not None:
            _retrain(ctx, body, md, state, observed, metrics_text, p, now)
        elif md is not None:  # no retrain policy (any more): nothing of one is left to say
            state.holding = {}
            metrics.RETRAIN_FAILED.labels(namespace, name).set(0)
            conditions = p.status.get("conditions") or []
            p.status["conditions"] = [c for c in conditions if c.get("type") != rt.CONDITION]
        shadow = p.status.get("shadowVersion")
        if shadow and metrics_text:
            p.status["shadowReport"] = an.shadow_report(an.parse(metrics_text, name, shadow), shadow)
        written = kube.write_status(ctx.api, body, old_status, p.status, p.events, component=EVENT_SOURCE)
        if written is not None:
            state.body = _kept(written)
            if any(reason == ROLLED_BACK for _, reason, _ in p.events):
                metrics.ROLLBACKS.labels(namespace, name).inc()
        # Its own writes coming back are no news: the body it wrote (a pass over its own status with the same inputs
        # decides nothing more, as tests/unit/operators/test_rollout_plan holds every step to) and the runs it applied
        # (the next pass reads them from State.runs).
        settled = replace(observed, runs={**observed.runs, **p.runs})
        state.inputs = inputs._replace(resource_version=state.body["metadata"].get("resourceVersion"), observed=settled)
        state.live = frozenset(p.live_versions)


def _take_resend(state: State, watched: observe.Watched, namespace: str, name: str) -> None:
    """Children deleted or edited by someone else since the last pass are sent again, whatever State.sent says."""
    state.resend.update(_edited(state, watched, namespace, name))
    if state.resend:
        gone = set(state.resend)
        state.resend -= gone
        for key in gone:
            state.sent.pop(key, None)
        state.inputs = None


def _inputs(
    ctx: Context, memo: Mapping[str, Any], state: State, body: dict[str, Any], watched: observe.Watched
) -> tuple[ModelDeployment | None, Inputs]:
    """The spec (None where it is invalid) and what the pass decides from; the runs this process applied stand in
    for those the watch has not brought back yet."""
    meta = body["metadata"]
    try:
        md = parse({"kind": KIND, "metadata": {"name": meta["name"]}, "spec": body.get("spec")})
        assert isinstance(md, ModelDeployment)
        versions = memo[VERSIONS]
        resolved = resolve(ctx, versions, md, meta["namespace"], body.get("status") or {})
        state.clock.answers = versions.answers(clock.Cadence.of(body["spec"], {}).follows)
    except InvalidResource:
        md, resolved = None, Resolved()
    observed = observe.observed(ctx, body, watched)
    observed = replace(observed, runs={**observed.runs, **state.runs})
    stray = _deployed(watched, meta["namespace"], meta["name"]) - state.live  # what _prune would delete
    return md, Inputs(meta.get("resourceVersion"), resolved, observed, stray)


def _analysis(
    ctx: Context, body: dict[str, Any], md: ModelDeployment | None, state: State, observed: Observed, now: datetime
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The canary's verdicts where an analysis is due, and the gateway replicas' metrics where the canary's analysis
    or the shadow's report reads them (None: neither is due)."""
    old_status = body.get("status") or {}
    if md is None or not (old_status.get("canaryVersion") or old_status.get("shadowVersion")):
        return None, None
    due = analysis_due(old_status, md, now)
    texts: dict[str, str] = {}
    metrics_text = None
    if due or old_status.get("shadowVersion"):
        texts = observe.scrape(observed.gateway_replicas)
        metrics_text = observe.together(texts)
    results = _analyse(ctx, body, md, state, texts, observed.gateway_replicas) if due else None
    return results, metrics_text


def _act(
    ctx: Context,
    memo: Mapping[str, Any],
    state: State,
    body: dict[str, Any],
    watched: observe.Watched,
    md: ModelDeployment | None,
    p: Plan,
    now: datetime,
) -> None:
    """Restart the pods of versions re-registered, apply the children that changed, delete those of versions no
    longer live. Where a child cannot be applied nothing the plan decided takes effect: the last status stays, with
    Ready=False saying why, and the clock tries again after the error's delay."""
    try:
        for deployment, run in p.reexports.items():  # before the apply that records the run on the Deployment
            _reexport(ctx, body["metadata"]["namespace"], deployment, run)
        _apply(ctx, state, [*p.apply, *_alert_rules(ctx, body, md, state)], _found(ctx, memo, body, state, watched))
    except kube.ChildNotApplied as err:
        old_status = body.get("status") or {}
        st = StatusDraft(old_status, body["metadata"].get("generation"), now)
        events = err.report(st, old_status)
        written = kube.write_status(ctx.api, body, old_status, st.s, events, component=EVENT_SOURCE)
        state.body = _kept(written) if written is not None else body
        raise kopf.TemporaryError(err.message, delay=err.retry_after(state.clock.retries)) from err
    state.runs = p.runs
    meta = body["metadata"]
    _prune(ctx, meta["namespace"], meta["name"], state, watched, set(p.live_versions))


REEXPORT_MANAGER = "kubeforge-reexport"
"""Field manager of the run on a Triton pod template (see rollout.Plan.reexports): not the one that applies the
Deployment, whose applies leave it where it is, as they leave `kubectl rollout restart`'s."""


def _reexport(ctx: Context, namespace: str, deployment: str, run: str) -> None:
    """Restart a Triton Deployment's pods so they export its version's registration from run."""
    log.info(f"{namespace}/{deployment}: its version is another registration now (run {run}); restarting its pods")
    template = {"metadata": {"annotations": {MODEL_RUN: run}}}
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment, "namespace": namespace}}
    kube.apply(ctx.api, {**patch, "spec": {"template": template}}, field_manager=REEXPORT_MANAGER)


def _retrain(
    ctx: Context,
    body: dict[str, Any],
    md: ModelDeployment,
    state: State,
    observed: Observed,
    text: str | None,
    p: Plan,
    now: datetime,
) -> None:
    """spec.retrain: read the triggers and the retrain TrainingJobs, create one where a trigger fired (see retrain),
    and put why into the plan's status and events."""
    assert md.spec.retrain is not None
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    retrain, st = md.spec.retrain, StatusDraft(p.status, meta.get("generation"), now)
    template: dict[str, Any] | None = retrain.training_job.spec.to_wire() if retrain.training_job.spec else None
    if retrain.training_job.name is not None:
        found = kube.get(ctx.api, API_VERSION, "TrainingJob", retrain.training_job.name, namespace)
        template = found.get("spec") if found else None
        if template is None:
            message = (
                f"spec.retrain.trainingJob.name: TrainingJob {retrain.training_job.name} not found in {namespace}: "
                "create it, or give the template as trainingJob.spec"
            )
            st.cond(rt.CONDITION, "False", rt.TEMPLATE_NOT_FOUND, message)
            p.status = st.s
            return
    found_jobs = kube.list_objects(ctx.api, API_VERSION, "TrainingJob", namespace, f"{rt.RETRAIN_OF}={name}")
    jobs = [rt.RetrainJob.of(j) for j in found_jobs]
    triggers = retrain.triggers
    if text is None and (triggers.drift or triggers.accuracy):
        text = observe.together(observe.scrape(observed.gateway_replicas))
    observation = rt.observe(text, name, p.status.get("stableVersion"))
    created = parse_rfc3339(meta["creationTimestamp"]) or now
    previous = parse_rfc3339((p.status.get("lastRetrain") or {}).get("time"))
    decision = rt.decide(name, retrain, now, created, observation, state.holding, jobs, previous)
    state.holding = decision.holding
    if decision.create is not None:
        job = rt.training_job(body, retrain, template or {}, decision.create, observed.gateway_url)
        made = kube.create(ctx.api, job)  # None: it exists, created by an earlier pass or another replica
        if made is not None:
            metrics.RETRAINS.labels(namespace, name, decision.create[1]).inc()
            jobs.append(rt.RetrainJob.of(made))
    old: dict[str, Any] = next((c for c in p.status.get("conditions") or [] if c.get("type") == rt.CONDITION), {})
    status, reason, message = decision.condition
    st.cond(rt.CONDITION, status, reason, message)
    if reason == rt.FAILED and old.get("reason") != rt.FAILED:
        decision.events.append(("Warning", rt.FAILED, message))
    for _, event_reason, event_message in decision.events:
        history.entry(st, "Retrain", None, event_reason, event_message)
    newest = max(jobs, key=lambda j: j.created, default=None)
    if newest is not None:
        st.s["lastRetrain"] = rt.record(newest)
    p.status = st.s
    p.events.extend(decision.events)
    metrics.RETRAIN_FAILED.labels(namespace, name).set(1 if decision.failed else 0)


def _pass(
    namespace: str, name: str, memo: Mapping[str, Any], watched: observe.Watched, seen: Any = None, event: bool = True
) -> None:
    """A reconcile pass, whatever started it, with its outcome on the object's clock: a pass that raised is tried
    again by the clock after the error's delay (a child not applied: see ChildNotApplied.retry_after) or after 1, 2,
    4 ... seconds (kopf retries no event handler), and an event's pass counts as the clock's."""
    ticks = state_of(memo).clock
    try:
        reconcile(namespace, name, memo, watched, seen, event)
    except Exception as err:
        wait = ticks.failed(time.monotonic(), err)
        log.warning(f"{namespace}/{name}: reconcile failed, trying again in {wait:.0f} s: {err}")
    else:
        ticks.passed()
    finally:
        ticks.last_pass = time.monotonic()


def _for_parent(
    namespace: str, labels: Mapping[str, str], kwargs: Mapping[str, Any], sent: tuple[str, str] | None = None
) -> None:
    """A child changed: a pass of the ModelDeployment it belongs to, if that one exists. sent is the (kind, name) of
    the child the operator applies that this event's deletion says is gone (a Deployment, or the Service of an
    EndpointSlice), perhaps deleted by hand: the pass sends it again (see State.resend). Pods come and go on their
    own. No pass before the ModelDeployment's own first event has been handled (an operator that starts gets every
    child's first event too): the pass of that event, to come or under way, reads every child after this change, and
    one now would have to read the ModelDeployment from the API server."""
    name = labels[MODELDEPLOYMENT]
    memo = memo_in(kwargs["md_memos"], namespace, name)
    if memo is not None:
        state = state_of(memo)
        if sent is not None and (kwargs.get("event") or {}).get("type") == "DELETED":
            state.resend.add(sent)
        if state.body is not None:
            _pass(namespace, name, memo, observe.Watched.of(kwargs))


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def modeldeployment_event(
    event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, logger: Any, **kwargs: Any
) -> None:
    assert namespace is not None  # namespaced kind
    WORKERS.indexed = True  # kopf runs handlers once everything is indexed (see WorkerLimit)
    metrics.RESOURCE_STATES.seen(KIND, event)
    if event.get("type") == "DELETED":
        state = state_of(memo)
        # After a pass that was under way, which may have applied children or set metrics, and before any pass of an
        # object created anew under the same name, whose children this leaves alone.
        with lock_of(memo, namespace, name):
            state.deleted, state.body = True, None
            metrics.forget_deployment(namespace, name)
            delete_children(context(), namespace, name, (event.get("object") or {}).get("metadata", {}).get("uid"))
    else:
        seen, state = event.get("object") or {}, state_of(memo)
        state.clock.cadence = clock.Cadence.of(seen.get("spec") or {}, seen.get("status") or {})
        if not _newer(seen, state.body):
            return  # its own status write coming back: the pass that wrote it saw all there was
        _pass(namespace, name, memo, observe.Watched.of(kwargs), seen)


def delete_children(ctx: Context, namespace: str, name: str, uid: str | None = None) -> None:
    """Delete the children of a ModelDeployment that is gone, found by its label; with uid, only those it controls
    (one created anew under its name may have children already). Where no garbage collector follows the
    ownerReferences (the local runtime), nothing else would. MLflow is left as it was."""
    selector = f"{MODELDEPLOYMENT}={name}"
    kinds = list(CHILD_KINDS)
    if metrics.prometheus_rules_served(ctx.api):
        kinds.append(metrics.PROMETHEUS_RULE)
    for api_version, kind in kinds:
        for obj in kube.list_objects(ctx.api, api_version, kind, namespace, selector):
            if uid is None or (kube.controller_of(obj) or {}).get("uid") == uid:
                kube.delete(ctx.api, api_version, kind, obj["metadata"]["name"], namespace)


@kopf.on.event("apps", "v1", "deployments", labels={MODELDEPLOYMENT: kopf.PRESENT})
def deployment_event(labels: Mapping[str, str], namespace: str | None, name: str, **kwargs: Any) -> None:
    """Readiness of a version's Triton or of the gateway changed, or the Deployment went."""
    assert namespace is not None  # namespaced kind
    _for_parent(namespace, labels, kwargs, ("Deployment", name))


@kopf.on.event("discovery.k8s.io", "endpointslices", labels={MODELDEPLOYMENT: kopf.PRESENT})
def endpoints_event(labels: Mapping[str, str], namespace: str | None, **kwargs: Any) -> None:
    """Addresses changed (the route table carries them when service addressing is by endpoints), or the slice went
    with its Service."""
    assert namespace is not None  # namespaced kind
    service = labels.get(observe.SERVICE_NAME)
    _for_parent(namespace, labels, kwargs, ("Service", service) if service else None)


@kopf.on.event("v1", "pods", labels={MODELDEPLOYMENT: kopf.PRESENT})
def pod_event(labels: Mapping[str, str], namespace: str | None, **kwargs: Any) -> None:
    """A pod started, failed or went: why pods fail is in status (lastFailure, the Ready message)."""
    assert namespace is not None  # namespaced kind
    _for_parent(namespace, labels, kwargs)


@kopf.on.event(GROUP, VERSION, "featureviews")
def featureview_event(event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """A FeatureView appeared, went or changed its spec: the ModelDeployments fed from it carry its join key, ttl and
    defaults in their route tables. Its status updates (freshness, every few seconds) change none of that."""
    assert namespace is not None  # namespaced kind
    generation = (event.get("object") or {}).get("metadata", {}).get("generation")
    if event.get("type") != "DELETED":
        if memo.get(VIEW_GENERATION) == generation:
            return
        memo[VIEW_GENERATION] = generation
    for md_name in _fed_from(kwargs["md_memos"], namespace, name):
        _for_parent(namespace, {MODELDEPLOYMENT: md_name}, kwargs)


def _fed_from(memos: Mapping[tuple[str, str], Any], namespace: str, view: str) -> list[str]:
    """The ModelDeployments of namespace whose newest known spec reads features from view. One that no pass has
    begun yet is not among them, and need not be: its pass sets its body before it reads the view."""
    names = []
    for md_namespace, md_name in list(memos):
        memo = memo_in(memos, md_namespace, md_name) if md_namespace == namespace else None
        body = state_of(memo).body if memo is not None else None
        if body and ((body.get("spec") or {}).get("features") or {}).get("featureView") == view:
            names.append(md_name)
    return names


@kopf.on.startup()
def know_versions(memo: kopf.Memo, **_: Any) -> None:
    """The process's one Versions (what it knows of registered versions) and Listings (what earlier processes
    applied): kopf copies the operator's memo into each object's, so every ModelDeployment's passes share them."""
    memo[VERSIONS] = Versions(context().registry)
    memo[LISTINGS] = applied.Listings()


@kopf.on.startup()
async def start_clock(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Start the operator's one clock (see clock); it reads the indexes kopf keeps filling."""
    memo[CLOCK_TASK] = asyncio.create_task(_clock(settings.execution.executor, kwargs, memo[LISTINGS]))


@kopf.on.cleanup()
async def stop_clock(memo: kopf.Memo, **_: Any) -> None:
    if CLOCK_TASK in memo:
        memo[CLOCK_TASK].cancel()


async def _clock(executor: Any, indexes: Mapping[str, Any], listings: applied.Listings) -> None:
    """Every TICK_S, start the passes that are due in kopf's thread pool: on time (clock.due), or because the
    registry now answers otherwise than it did for a ModelDeployment's last pass (asked once per reference for
    all of them, off the event loop)."""
    loop = asyncio.get_running_loop()
    watched = observe.Watched.of(indexes)

    def start(key: tuple[str, str], memo: Mapping[str, Any]) -> None:
        ticks = state_of(memo).clock
        ticks.running = True

        def run() -> None:
            try:
                _pass(*key, memo, watched, event=False)
            finally:
                ticks.running = False

        loop.run_in_executor(executor, run)

    next_sweep = time.monotonic() + clock.FIRST_SWEEP_S
    next_check = time.monotonic() + clock.CHECK_S
    looks: list[tuple[tuple[str, str], Mapping[str, Any], clock.Cadence]]
    while True:
        await asyncio.sleep(clock.TICK_S)
        now, looks = time.monotonic(), []
        try:
            if now >= next_sweep:
                next_sweep = now + clock.SWEEP_S
                owners = set(indexes["md_workloads"]) - set(indexes["md_memos"])
                if owners:
                    loop.run_in_executor(executor, _sweep, owners)
            if now >= next_check:
                next_check = now + clock.CHECK_S
                listings.expire()
                loop.run_in_executor(executor, _check_unwatched, indexes["md_memos"], watched)
            for key in list(indexes["md_memos"]):
                memo = memo_in(indexes["md_memos"], *key)
                ticks = state_of(memo).clock if memo is not None else None
                if memo is None or ticks is None or ticks.cadence is None:
                    continue
                cadence = ticks.cadence
                if clock.due(cadence, ticks, now):
                    start(key, memo)
                elif clock.registry_due(cadence, ticks, now):
                    ticks.last_look = now
                    looks.append((key, memo, cadence))
            if looks:
                changed = await loop.run_in_executor(executor, _changed, looks)
                for key, memo in changed:
                    start(key, memo)
        except Exception:  # one bad tick must not stop every rollout: the next one tries again
            log.exception("the ModelDeployment clock's tick failed")


def _sweep(owners: set[tuple[str, str]]) -> None:
    """Delete the children of ModelDeployments deleted while no operator ran (children in the Deployment index
    whose owner kopf does not know), after asking the API server that the owner is really gone."""
    ctx = context()
    for namespace, name in owners:
        try:
            if kube.get(ctx.api, API_VERSION, KIND, name, namespace) is None:
                log.info(f"{namespace}/{name}: deleted while no operator ran; deleting its children")
                delete_children(ctx, namespace, name)
        except Exception:  # the next sweep tries again
            log.exception(f"{namespace}/{name}: deleting the children of a deleted ModelDeployment failed")


UNWATCHED_KINDS = tuple((v, kind) for v, kind in CHILD_KINDS if kind != "Deployment")
"""Children whose deletion or change no watch of the operator reports (Deployments' does: see _for_parent)."""
UNWATCHED = frozenset(kind for _, kind in UNWATCHED_KINDS)
CHANGED_BY_OTHERS = frozenset({"HorizontalPodAutoscaler"})
"""Kinds whose objects others write as they work (the autoscaler its status): checked for deletion only."""


def _check_unwatched(memos: Mapping[tuple[str, str], Any], watched: observe.Watched) -> None:
    """A pass, sending them again, of each ModelDeployment that children this process applied are missing
    from, or changed since (another resourceVersion than its apply wrote): one of UNWATCHED_KINDS deleted or edited
    by hand. Deployments that sent children since the listing began are left to the next check (what they sent may
    have come after the list)."""
    ctx = context()
    keys = list(memos)
    for namespace in {ns for ns, _ in keys}:
        listed_at = time.monotonic()
        try:
            present = {
                (kind, name): version
                for api_version, kind in UNWATCHED_KINDS
                for name, version in kube.list_versions(ctx.api, api_version, kind, namespace, MODELDEPLOYMENT).items()
            }
        except Exception:  # the next check tries again
            log.exception(f"{namespace}: listing the children of ModelDeployments failed")
            continue
        for key in (k for k in keys if k[0] == namespace):
            memo = memo_in(memos, *key)
            state = state_of(memo) if memo is not None else None
            if memo is None or state is None or state.applied_at >= listed_at:
                continue
            sent = list(state.sent.items())
            gone = [k for k, _ in sent if k[0] in UNWATCHED and k not in present]
            edited = [
                k
                for k, child in sent
                if k[0] in UNWATCHED - CHANGED_BY_OTHERS and k in present and present[k] != child.written.version
            ]
            if gone or edited:
                what = ", ".join(
                    f"{kind} {name} {'deleted' if (kind, name) in gone else 'changed'}"
                    for kind, name in [*gone, *edited]
                )
                log.info(f"{namespace}/{key[1]}: {what} by someone else; applying again")
                state.resend.update([*gone, *edited])
                _pass(*key, memo, watched, event=False)


def _changed(looks: list[tuple[tuple[str, str], Mapping[str, Any], clock.Cadence]]) -> list[Any]:
    """The ModelDeployments among looks whose registry answers differ from their last pass's."""
    return [
        (key, memo)
        for key, memo, cadence in looks
        if memo[VERSIONS].answers(cadence.follows) != state_of(memo).clock.answers
    ]
