"""kopf handlers for ModelDeployment: resolve, observe, analyse, then :func:`rollout.plan`.

Triggers: the ModelDeployment's own events, events of its Deployments and Endpoints
(readiness and addresses), spec changes of the FeatureView it reads features from, a
2-second timer while a canary or shadow is live (analysis intervals, step pauses) and a
slower one that follows registry aliases and retries what is not Ready. Each runs the
same level-based reconcile under a per-object lock. When a child cannot be applied, the
ModelDeployment says so (Ready=False) and the timers try again with a back-off.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf
from kubernetes import client
from pydantic import ValidationError

from ...api import API_VERSION, FeatureViewSpec, ModelDeployment, parse
from ...api.meta import duration_seconds
from ...api.validation import InvalidResource
from ...core import kube, podfailure
from ...core import modelcontract as mc
from ...core.approval import Approval
from ...core.conditions import StatusDraft, parse_rfc3339
from ...core.mlflow_rest import MLflowError, MLflowRegistry, NotFound
from ...monitoring import rules
from ...serving.routes import VersionDrift
from .. import metrics
from ..labels import COMPONENT, MODEL_VERSION, MODELDEPLOYMENT
from ..runtime import Context, context
from . import analysis as an
from . import children, history
from . import retrain as rt
from .rollout import (
    GATEWAY,
    ROLLED_BACK,
    WAITING_FOR_ROUTES,
    DriftBaseline,
    FeatureSource,
    Observed,
    Plan,
    Resolved,
    analysis_due,
    canary_settings,
    model_of,
    plan,
)

GROUP, VERSION = API_VERSION.split("/")
KIND = "ModelDeployment"
EVENT_SOURCE = "kubeforge-modeldeployment"
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_applied: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> hash of what this process applied
_pruned: dict[tuple[str, str], tuple[str, frozenset[str]]] = {}  # (namespace, name) -> (uid, live versions)
_snapshots: dict[tuple[str, str], an.Snapshot] = {}  # (uid, version) -> last scrape
_holding: dict[str, dict[str, datetime]] = {}  # uid -> retrain trigger -> since when it holds (see retrain)
_resolve_cache: dict[tuple[str, str], tuple[float, str]] = {}
RESOLVE_TTL = 3.0
_approvals: dict[tuple[str, str], Approval] = {}  # (model, version) -> its approval tags when last resolved
_feature_orders: dict[tuple[str, str], list[str] | None] = {}  # (model, version) -> its kubeforge.features tag
_baselines: dict[tuple[str, str], DriftBaseline] = {}  # (model, version) -> its drift baseline, read once
_view_generations: dict[tuple[str, str], int | None] = {}  # (namespace, FeatureView) -> generation last seen


def _resolve_one(ctx: Context, name: str, alias: str | None, version: int | None) -> str:
    key = (name, alias or f"v{version}")
    hit = _resolve_cache.get(key)
    if hit and time.monotonic() - hit[0] < RESOLVE_TTL:
        return hit[1]
    mv = ctx.registry.by_alias(name, alias) if alias else ctx.registry.by_version(name, version or 0)
    _resolve_cache[key] = (time.monotonic(), mv.version)
    _approvals[(name, mv.version)] = Approval.of(mv.tags)  # comes with the version: no call of its own
    if mv.tags.get(mc.TAG_TASK):
        _resolve_cache[(name, "task")] = (time.monotonic(), mv.tags[mc.TAG_TASK])
    return mv.version


def resolve(ctx: Context, md: ModelDeployment, namespace: str, status: dict[str, Any]) -> Resolved:
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
            found[role] = _resolve_one(ctx, ref.name, ref.alias, ref.version)
            if (ref.name, found[role]) in _approvals:
                approvals[(ref.name, found[role])] = _approvals[(ref.name, found[role])]
        except NotFound:
            errors[role] = f"{field}: {what} of registered model {ref.name!r} does not exist in MLflow"
        except MLflowError as err:
            errors[role] = f"{field}: cannot resolve {what} of {ref.name!r}: {err}"
    task_hit = _resolve_cache.get((md.spec.model.name, "task"))
    resolved = Resolved(
        found.get("stable"),
        found.get("canary"),
        found.get("shadow"),
        task_hit[1] if task_hit else "classification",
        errors,
        approvals=approvals,
    )
    pairs = _routable(md, resolved, status)
    if md.spec.features is not None:
        resolved = replace(resolved, features=_feature_source(ctx, md, namespace, pairs))
    if md.spec.monitoring.drift.enabled:
        found = {pair: drift_baseline(ctx.registry, *pair) for pair in pairs}
        resolved = replace(resolved, baselines={pair: b for pair, b in found.items() if b is not None})
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


def _feature_source(ctx: Context, md: ModelDeployment, namespace: str, pairs: set[tuple[str, str]]) -> FeatureSource:
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
    return FeatureSource(view, orders={pair: _feature_order(ctx, *pair) for pair in pairs})


def _feature_order(ctx: Context, model: str, version: str) -> list[str] | None:
    """A version's features in input order, read once (the tag is written when the version is registered); a
    version MLflow cannot tell about now is asked again on the next pass."""
    key = (model, version)
    if key not in _feature_orders:
        try:
            tag = ctx.registry.by_version(model, version).tags.get(mc.TAG_FEATURES)
        except MLflowError:
            return None
        _feature_orders[key] = _json_names(tag)
    return _feature_orders[key]


def drift_baseline(registry: MLflowRegistry, model: str, version: str) -> DriftBaseline | None:
    """A version's drift baseline, read once (the trainer logs it before registering the version); None while
    MLflow cannot tell, to be asked again on the next pass."""
    key = (model, version)
    if key not in _baselines:
        try:
            mv = registry.by_version(model, version)
            raw = registry.artifact(mv.run_id, mc.BASELINE_ARTIFACT)
        except NotFound:
            _baselines[key] = DriftBaseline(missing=f"its run logged no {mc.BASELINE_ARTIFACT}")
        except MLflowError:
            return None
        else:
            _baselines[key] = version_drift(raw, mv.tags)
    return _baselines[key]


def version_drift(raw: bytes, tags: dict[str, str]) -> DriftBaseline:
    """The route table's drift entry of a version from its baseline artifact and tags: the histograms, the input
    order (kubeforge.features, else the baseline's), and how its outputs read (task, classes)."""
    try:
        baseline = mc.Baseline.model_validate_json(raw)
    except ValidationError as err:
        return DriftBaseline(missing=f"{mc.BASELINE_ARTIFACT} is unreadable: {err.errors()[0]['msg']}")
    features = _json_names(tags.get(mc.TAG_FEATURES)) or [h.name for h in baseline.features]
    task = tags.get(mc.TAG_TASK)
    try:
        drift = VersionDrift(
            features=features,
            baseline=baseline.features,
            task=task if task in ("classification", "regression") else None,
            classes=[str(c) for c in _json_list(tags.get(mc.TAG_CLASSES)) or []] or None,
        )
    except ValidationError as err:
        return DriftBaseline(missing=f"its {mc.TAG_FEATURES} tag is unusable: {err.errors()[0]['msg']}")
    return DriftBaseline(drift)


def _json_list(tag: str | None) -> list[Any] | None:
    """A tag holding a JSON list, or None when it is missing or holds something else."""
    try:
        items = json.loads(tag) if tag else None
    except ValueError:
        return None
    return items if isinstance(items, list) else None


def _json_names(tag: str | None) -> list[str] | None:
    """A tag holding a JSON list of names (kubeforge.features), or None."""
    names = _json_list(tag)
    return names if names is not None and all(isinstance(n, str) for n in names) else None


SERVICE_NAME = "kubernetes.io/service-name"


def _slice_url(endpoint_slice: Any, port_name: str) -> str | None:
    """http://address:port of the first ready endpoint of an EndpointSlice."""
    port = next((p["port"] for p in endpoint_slice.get("ports") or [] if p.get("name") == port_name), None)
    for endpoint in endpoint_slice.get("endpoints") or []:
        if port and endpoint.get("addresses") and (endpoint.get("conditions") or {}).get("ready", True):
            return f"http://{endpoint['addresses'][0]}:{port}"
    return None


def observe(ctx: Context, body: dict[str, Any]) -> Observed:
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    selector = f"{MODELDEPLOYMENT}={name}"
    apps = client.AppsV1Api(ctx.api)
    ready: set[str] = set()
    gateway_ready = False
    unready = False
    for dep in apps.list_namespaced_deployment(ns, label_selector=selector).items:
        available = (dep.status.available_replicas or 0) >= 1
        unready = unready or (dep.status.ready_replicas or 0) < (dep.spec.replicas or 0)
        if dep.metadata.labels.get(COMPONENT) == "gateway":
            gateway_ready = available
        elif available and dep.metadata.labels.get(MODEL_VERSION):
            ready.add(dep.metadata.labels[MODEL_VERSION])
    urls: dict[str, str] = {}
    gateway_url = None
    if ctx.settings.service_addressing == "endpoints":
        # EndpointSlices, not Endpoints: they may carry loopback addresses (the local runtime's).
        slices = kube.resource(ctx.api, "discovery.k8s.io", "EndpointSlice").get(namespace=ns, label_selector=selector)
        for item in slices.to_dict()["items"]:
            service = item["metadata"]["labels"].get(SERVICE_NAME, "")
            url = _slice_url(item, "http")
            if url is None:
                continue
            if service == children.gateway_name(name):
                gateway_url = url
            elif version := item["metadata"]["labels"].get(MODEL_VERSION):
                urls[version] = url
    else:
        svc = client.CoreV1Api(ctx.api).list_namespaced_service(ns, label_selector=selector).items
        for s in svc:
            version = (s.metadata.labels or {}).get(MODEL_VERSION)
            if version:
                urls[version] = f"http://{s.metadata.name}.{ns}.svc:{children.PORTS['http']}"
        gateway_url = f"http://{children.gateway_name(name)}.{ns}.svc:{children.GATEWAY_PORT}"
    model_ready = False
    if gateway_ready and gateway_url:
        try:
            model_ready = httpx.get(f"{gateway_url}/v2/models/{name}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            model_ready = False
    failures = _pod_failures(ctx, ns, selector) if unready else {}
    return Observed(frozenset(ready), urls, gateway_ready, gateway_url, model_ready, failures=failures)


def _pod_failures(ctx: Context, namespace: str, selector: str) -> dict[str, dict[str, Any]]:
    """Why pods fail, per model version (Triton) and GATEWAY: one list of the ModelDeployment's pods, made only
    while one of its Deployments has fewer ready pods than it wants, so a serving one costs nothing."""
    parts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in kube.list_objects(ctx.api, "v1", "Pod", namespace, selector):
        pod_labels = pod["metadata"].get("labels") or {}
        part = GATEWAY if pod_labels.get(COMPONENT) == "gateway" else pod_labels.get(MODEL_VERSION)
        if part:
            parts[part].append(pod)
    return {part: failure for part, pods in parts.items() if (failure := podfailure.pick(pods)) is not None}


def _scrape(url: str | None) -> str | None:
    if not url:
        return None
    try:
        resp = httpx.get(f"{url}/metrics", timeout=5)
        return resp.text if resp.status_code == 200 else None
    except httpx.HTTPError:
        return None


def _analyse(ctx: Context, body: dict[str, Any], md: ModelDeployment, text: str | None) -> list[dict[str, Any]] | None:
    status = body.get("status") or {}
    canary, stable = status.get("canaryVersion"), status.get("stableVersion")
    _, analysis, _ = canary_settings(md)
    uid, name = body["metadata"]["uid"], body["metadata"]["name"]
    if text is None:
        return [an.verdict(m, None) for m in analysis.metrics]  # gateway unreachable: no data
    canary_now = an.parse(text, name, canary)
    prev = _snapshots.get((uid, canary))
    _snapshots[(uid, canary)] = canary_now
    if prev is None:
        return [an.verdict(m, None) for m in analysis.metrics]  # first look: the next interval has data
    return an.evaluate(analysis, canary_now.minus(prev), ctx.settings.prometheus_url, canary, stable)


def _apply(ctx: Context, objs: list[dict[str, Any]]) -> None:
    """Apply the children that differ from what this process last applied (kube.apply_children)."""
    fresh = {}
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        digest = hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        if _applied.get(key) != digest:
            fresh[key] = (obj, digest)
    kube.apply_children(ctx.api, [obj for obj, _ in fresh.values()])
    _applied.update({key: digest for key, (_, digest) in fresh.items()})


def _alert_rules(ctx: Context, body: dict[str, Any], md: ModelDeployment | None) -> list[dict[str, Any]]:
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
        return [children.prometheus_rule(body, {**asdict(targets), "drift_hold": hold})]
    metrics.export_targets(namespace, name, targets, rules.SHARED)
    # Gone with its CRD: should the CRD come back, the rule must be applied anew.
    _applied.pop((metrics.PROMETHEUS_RULE[1], namespace, rules.deployment_rule_name(name)), None)
    return []


def _prune(ctx: Context, namespace: str, name: str, uid: str, live: set[str]) -> None:
    """Delete the Triton children of versions that are no longer live.

    Only versions that were live get children, so nothing can need deleting while the live set
    is the one this process last pruned to: the three list calls are skipped then (they read
    every object of the namespace from etcd, which dominates a steady reconcile's cost).
    """
    if _pruned.get((namespace, name)) == (uid, frozenset(live)):
        return
    selector = f"{MODELDEPLOYMENT}={name},{MODEL_VERSION}"
    kinds = [("apps/v1", "Deployment"), ("v1", "Service"), ("autoscaling/v1", "HorizontalPodAutoscaler")]
    for api_version, kind in kinds:
        for obj in kube.resource(ctx.api, api_version, kind).get(namespace=namespace, label_selector=selector).items:
            if obj.metadata.labels[MODEL_VERSION] not in live:
                kube.delete(ctx.api, api_version, kind, obj.metadata.name, namespace)
                _applied.pop((kind, namespace, obj.metadata.name), None)
    _pruned[(namespace, name)] = (uid, frozenset(live))


@metrics.reconciled(KIND)
def reconcile(namespace: str, name: str, logger: Any, retry: int = 0) -> None:
    """One level-based pass; retry counts the timer's failed passes before this one (for the back-off)."""
    ctx = context()
    with _locks[(namespace, name)]:
        body = kube.get(ctx.api, API_VERSION, KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        now = datetime.now(UTC)
        try:
            md = parse({"kind": KIND, "metadata": {"name": name}, "spec": body.get("spec")})
            assert isinstance(md, ModelDeployment)
            resolved = resolve(ctx, md, namespace, body.get("status") or {})
        except InvalidResource:
            md, resolved = None, Resolved()
        observed = observe(ctx, body)
        old_status = body.get("status") or {}
        results = None
        metrics_text = None
        if md is not None and (old_status.get("canaryVersion") or old_status.get("shadowVersion")):
            due = analysis_due(old_status, md, now)
            if due or old_status.get("shadowVersion"):
                metrics_text = _scrape(observed.gateway_url)
            if due:
                results = _analyse(ctx, body, md, metrics_text)
        p = plan(body, resolved, observed, results, ctx.settings, now)
        try:
            _apply(ctx, [*p.apply, *_alert_rules(ctx, body, md)])
        except kube.ChildNotApplied as err:
            # Nothing the plan decided took effect: the last status stays, with Ready=False saying why.
            st = StatusDraft(old_status, body["metadata"].get("generation"), now)
            events = err.report(st, old_status)
            kube.write_status(ctx.api, body, old_status, st.s, events, component=EVENT_SOURCE)
            raise kopf.TemporaryError(err.message, delay=err.retry_after(retry)) from err
        _prune(ctx, namespace, name, body["metadata"]["uid"], set(p.live_versions))
        if md is not None and md.spec.retrain is not None:
            _retrain(ctx, body, md, observed, metrics_text, p, now)
        elif md is not None:  # no retrain policy (any more): nothing of one is left to say
            _holding.pop(body["metadata"]["uid"], None)
            metrics.RETRAIN_FAILED.labels(namespace, name).set(0)
            conditions = p.status.get("conditions") or []
            p.status["conditions"] = [c for c in conditions if c.get("type") != rt.CONDITION]
        shadow = p.status.get("shadowVersion")
        if shadow and metrics_text:
            p.status["shadowReport"] = an.shadow_report(an.parse(metrics_text, name, shadow), shadow)
        if kube.write_status(ctx.api, body, old_status, p.status, p.events, component=EVENT_SOURCE) and any(
            reason == ROLLED_BACK for _, reason, _ in p.events
        ):
            metrics.ROLLBACKS.labels(namespace, name).inc()


def _retrain(
    ctx: Context,
    body: dict[str, Any],
    md: ModelDeployment,
    observed: Observed,
    text: str | None,
    p: Plan,
    now: datetime,
) -> None:
    """spec.retrain: read the triggers and the retrain TrainingJobs, create one where a trigger fired (see retrain),
    and put why into the plan's status and events."""
    assert md.spec.retrain is not None
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
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
        text = _scrape(observed.gateway_url)
    observation = rt.observe(text, name, p.status.get("stableVersion"))
    created = parse_rfc3339(meta["creationTimestamp"]) or now
    previous = parse_rfc3339((p.status.get("lastRetrain") or {}).get("time"))
    decision = rt.decide(name, retrain, now, created, observation, _holding.get(uid, {}), jobs, previous)
    _holding[uid] = decision.holding
    if decision.create is not None:
        job = rt.training_job(body, retrain, template or {}, decision.create, observed.gateway_url)
        made = kube.create(ctx.api, job)  # None: it exists, created by an earlier pass or another replica
        if made is not None:
            metrics.RETRAINS.labels(namespace, name, decision.create[1]).inc()
            jobs.append(rt.RetrainJob.of(made))
    old = next((c for c in p.status.get("conditions") or [] if c.get("type") == rt.CONDITION), {})
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


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def modeldeployment_event(event: dict[str, Any], name: str, namespace: str, logger: Any, **_: Any) -> None:
    metrics.RESOURCE_STATES.seen(KIND, event)
    if event.get("type") == "DELETED":
        with _locks[(namespace, name)]:  # after a pass that was under way, which may have set them again
            metrics.forget_deployment(namespace, name)
    else:
        reconcile(namespace, name, logger)


@kopf.on.event("apps", "v1", "deployments", labels={MODELDEPLOYMENT: kopf.PRESENT})
def deployment_event(labels: dict[str, str], namespace: str, logger: Any, **_: Any) -> None:
    """Readiness of a version's Triton or of the gateway changed."""
    reconcile(namespace, labels[MODELDEPLOYMENT], logger)


@kopf.on.event("discovery.k8s.io", "endpointslices", labels={MODELDEPLOYMENT: kopf.PRESENT})
def endpoints_event(labels: dict[str, str], namespace: str, logger: Any, **_: Any) -> None:
    """Addresses changed (the route table carries them when service addressing is by endpoints)."""
    reconcile(namespace, labels[MODELDEPLOYMENT], logger)


@kopf.on.event(GROUP, VERSION, "featureviews")
def featureview_event(event: dict[str, Any], name: str, namespace: str, logger: Any, **_: Any) -> None:
    """A FeatureView appeared, went or changed its spec: the ModelDeployments fed from it carry its join key, ttl and
    defaults in their route tables. Its status updates (freshness, every few seconds) change none of that."""
    key, generation = (namespace, name), (event.get("object") or {}).get("metadata", {}).get("generation")
    if event.get("type") == "DELETED":
        _view_generations.pop(key, None)
    elif _view_generations.get(key) == generation:
        return
    else:
        _view_generations[key] = generation
    for md in kube.list_objects(context().api, API_VERSION, "ModelDeployment", namespace, ""):
        if ((md.get("spec") or {}).get("features") or {}).get("featureView") == name:
            reconcile(namespace, md["metadata"]["name"], logger)


def _ready_reason(status: dict[str, Any]) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)


def _rolling(status: dict[str, Any], **_: Any) -> bool:
    """On the clock: rollouts, shadows, scale-down delays, and a route-table reload nothing else signals."""
    if _ready_reason(status) == WAITING_FOR_ROUTES:
        return True
    return bool(status.get("canaryVersion") or status.get("shadowVersion") or status.get("retiring"))


@kopf.timer(GROUP, VERSION, "modeldeployments", interval=2, when=_rolling)
def rollout_timer(name: str, namespace: str, logger: Any, retry: int, **_: Any) -> None:
    """Step pauses, analysis intervals, shadow reports, scale-down delays and route reloads run on the clock."""
    reconcile(namespace, name, logger, retry)


def _polled(spec: dict[str, Any], status: dict[str, Any], **_: Any) -> bool:
    """Registry aliases and approvals change outside Kubernetes, and a reconcile that failed is not retried by its
    event."""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    approval = (spec.get("policy") or {}).get("requireApproval")
    return bool(spec.get("followAlias") or spec.get("canary") or spec.get("retrain") or approval) or not ready


@kopf.timer(GROUP, VERSION, "modeldeployments", interval=10, when=_polled)
def poll_timer(name: str, namespace: str, logger: Any, retry: int, **_: Any) -> None:
    """Follow registry aliases (MLflow webhooks are optional) and approvals, retry what is not Ready yet (children
    that could not be applied, with a back-off), read why its pods fail, and watch the retrain triggers."""
    reconcile(namespace, name, logger, retry)


@kopf.on.delete(GROUP, VERSION, "modeldeployments")
def modeldeployment_deleted(name: str, namespace: str, uid: str, **_: Any) -> None:
    """Remove every child, also where no garbage collector runs (the local runtime); MLflow is left as it was."""
    ctx = context()
    selector = f"{MODELDEPLOYMENT}={name}"
    kinds = [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("autoscaling/v1", "HorizontalPodAutoscaler"),
    ]
    if metrics.prometheus_rules_served(ctx.api):
        kinds.append(metrics.PROMETHEUS_RULE)
    for api_version, kind in kinds:
        for obj in kube.resource(ctx.api, api_version, kind).get(namespace=namespace, label_selector=selector).items:
            kube.delete(ctx.api, api_version, kind, obj.metadata.name, namespace)
            _applied.pop((kind, namespace, obj.metadata.name), None)
    _pruned.pop((namespace, name), None)
    for key in [k for k in _snapshots if k[0] == uid]:
        del _snapshots[key]
    _holding.pop(uid, None)
