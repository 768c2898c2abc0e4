"""kopf handlers for TrainingJob: thin glue between watch events and :func:`plan.plan`.

Every trigger (a TrainingJob event, an event of one of its Jobs or of their pods, the operator's one clock) runs the
same level-based reconcile under a per-name lock, so the order in which events arrive does not matter. The clock
(:mod:`.clock`) ticks every second but passes only when no event will come (:func:`plan.due_by_time`: a deadline, a
FeatureView not yet registered, a model version not yet in MLflow), after a pass that failed (a child that could not
be applied is retried with a back-off, and the TrainingJob says why with Ready=False), and every five minutes
(``memos.RESYNC_S``) as a safety net: a TrainingJob whose Job is queued or running costs no API request between
events, however many there are, and carries no finalizer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from ...api import API_VERSION
from ...core import kube, podfailure
from ...core import modelcontract as mc
from ...core.mlflow_rest import MLflowError, MLflowRegistry, ModelVersion
from .. import metrics
from ..labels import ATTEMPT, TRAININGJOB
from ..memos import Brought, Reads, memo_in, run_pass, unsettled
from ..runtime import WORKERS, context
from . import children, clock
from .plan import TERMINAL, leaves_as_is, not_applied, plan, pods_worth_reading, with_registration

GROUP, VERSION = API_VERSION.split("/")
KIND = "TrainingJob"
EVENT_SOURCE = "kubeforge-trainingjob"
TICKS = "kubeforge.trainingjob.ticks"  # key of a TrainingJob's clock.Ticks in its memo
CLOCK_TASK = "kubeforge.trainingjob.clock"  # key of the clock's task in the operator's memo

log = logging.getLogger(__name__)


def _registered_version(registry: MLflowRegistry, model: str, uid: str) -> ModelVersion | None:
    for version in registry.search(model):  # newest first
        if version.tags.get(mc.TAG_JOB_UID) == uid:
            return version
    return None


def _attempt_failure(
    api: kube.KubeApi, body: dict[str, Any], job: dict[str, Any], reads: Reads
) -> dict[str, Any] | None:
    """Why the pod of the attempt that job runs fails, if it does. Only the Job's own pods count: a deleted
    predecessor's pods carry the same labels until they are collected."""
    meta = body["metadata"]
    selector = f"{TRAININGJOB}={meta['name']},{ATTEMPT}={job['metadata']['labels'].get(ATTEMPT, '')}"
    pods = [reads("Pod", pod) for pod in kube.list_objects(api, "v1", "Pod", meta["namespace"], selector)]
    uid = job["metadata"]["uid"]
    owned = [p for p in pods if (kube.controller_of(p) or {}).get("uid") == uid]
    return podfailure.pick(owned, children.MEMORY_FIELDS)


@metrics.reconciled(KIND)
def reconcile(namespace: str, name: str, reads: Reads, logger: Any, retry: int = 0) -> bool:
    """One level-based pass (run under the name's lock: memos.run_pass); retry counts the timer's failed passes
    before this one (for the back-off). One that fails raises: kopf retries it from the timer."""
    ctx = context()
    body = reads(KIND, kube.get(ctx.api, API_VERSION, KIND, name, namespace))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return True
    old_status = body.get("status") or {}
    job = None
    if job_name := old_status.get("jobName"):
        job = reads("Job", kube.get(ctx.api, "batch/v1", "Job", job_name, namespace))
    now = datetime.now(UTC)
    failure = feature_view = None
    if old_status.get("phase") not in TERMINAL:
        if job is not None and pods_worth_reading(job):
            failure = _attempt_failure(ctx.api, body, job, reads)
        if view := ((body.get("spec") or {}).get("dataset") or {}).get("featureView"):
            feature_view = kube.get(ctx.api, API_VERSION, "FeatureView", str(view.get("name")), namespace)
    p = plan(body, job, ctx.settings, ctx.capabilities, now, failure, feature_view)
    try:
        kube.apply_children(ctx.api, p.apply)
    except kube.ChildNotApplied as err:
        status, events = not_applied(body, err, now)
        kube.write_status(ctx.api, body, old_status, status, events, component=EVENT_SOURCE)
        raise kopf.TemporaryError(err.message, delay=err.retry_after(retry)) from err
    for job_to_delete in p.delete_jobs:
        kube.delete(ctx.api, "batch/v1", "Job", job_to_delete, namespace)
    status = p.status
    if p.needs_registration:
        model = body["spec"]["model"]["name"]
        try:
            version = _registered_version(ctx.registry, model, body["metadata"]["uid"])
        except MLflowError as err:
            logger.warning(f"MLflow lookup for {model} failed, will retry: {err}")
            version = None
        status = with_registration(status, version, model, body["metadata"]["uid"], now)
        if version is not None:
            p.events.append(("Normal", "ModelRegistered", f"registered as {version.uri}"))
    written = kube.write_status(ctx.api, body, old_status, status, p.events, component=EVENT_SOURCE)
    if written is not None:
        again = plan(written, job, ctx.settings, ctx.capabilities, now, failure, feature_view)
        if leaves_as_is(again, written):
            reads(KIND, written)  # the event of this write brings nothing a pass would act on
    return True


@kopf.index(GROUP, VERSION, "trainingjobs")
async def tj_memos(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> dict[tuple[str, str], kopf.Memo]:
    """Each TrainingJob's memo by namespace and name: its Jobs' and pods' events record its passes there."""
    assert namespace is not None  # namespaced kind
    return {(namespace, name): memo}


def _ticks(memo: kopf.Memo) -> clock.Ticks:
    """The Ticks in a TrainingJob's memo, made on first use (setdefault is atomic: handlers run in threads)."""
    ticks: clock.Ticks | None = memo.get(TICKS)
    return ticks if ticks is not None else memo.setdefault(TICKS, clock.Ticks())


def _pass(memo: kopf.Memo, namespace: str, name: str, logger: Any, brought: Brought | None = None) -> None:
    """A pass, whatever started it, with its outcome on the TrainingJob's clock (memos.Retries)."""
    ticks = _ticks(memo)
    try:
        run_pass(memo, reconcile, namespace, name, logger, ticks.retries, brought=brought)
    except Exception as err:
        wait = ticks.failed(time.monotonic(), err)
        logger.warning(f"{namespace}/{name}: reconcile failed, trying again in {wait:.0f} s: {err}")
    else:
        ticks.passed()


def _for_owner(
    namespace: str, name: str, kind: str, body: kopf.Body, logger: Any, tj_memos: kopf.Index[Any, Any]
) -> None:
    """A pass of the TrainingJob a Job or pod (body, of kind) belongs to, unless that one is gone, the child brings
    nothing a pass would read (clock.child_needs_pass) or its last pass read the child as it is."""
    memo = memo_in(tj_memos, namespace, name)
    if memo is not None and clock.child_needs_pass(memo.get(TICKS), body.get("metadata", {}).get("labels") or {}):
        _pass(memo, namespace, name, logger, (kind, body))


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def trainingjob_event(
    event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    assert namespace is not None  # namespaced kind
    WORKERS.indexed = True  # kopf runs handlers once everything is indexed (see WorkerLimit)
    metrics.RESOURCE_STATES.seen(KIND, event)
    if event.get("type") != "DELETED":
        seen, ticks = event.get("object") or {}, _ticks(memo)
        ticks.spec, ticks.status, ticks.event_at = seen.get("spec") or {}, seen.get("status") or {}, time.monotonic()
        _pass(memo, namespace, name, logger, (KIND, body))


@kopf.on.event("batch", "v1", "jobs", labels={TRAININGJOB: kopf.PRESENT})
def job_event(labels: Mapping[str, str], namespace: str | None, body: kopf.Body, logger: Any, **kwargs: Any) -> None:
    """A Job of a TrainingJob changed (e.g. completed): reconcile its owner."""
    assert namespace is not None  # namespaced kind
    tj_memos: kopf.Index[Any, Any] = kwargs["tj_memos"]  # kopf passes each index by its name
    _for_owner(namespace, labels[TRAININGJOB], "Job", body, logger, tj_memos)


@kopf.on.event("v1", "pods", labels={TRAININGJOB: kopf.PRESENT})
def pod_event(labels: Mapping[str, str], namespace: str | None, body: kopf.Body, logger: Any, **kwargs: Any) -> None:
    """A trainer pod fails or does not start: why goes to status (lastFailure) while its Job still runs, which the
    Job's own status does not say. A pod that reports nothing wrong starts no pass: whatever its Job makes of it
    comes as the Job's own event."""
    assert namespace is not None  # namespaced kind
    tj_memos: kopf.Index[Any, Any] = kwargs["tj_memos"]  # kopf passes each index by its name
    if podfailure.pick([dict(body)], children.MEMORY_FIELDS) is not None:
        _for_owner(namespace, labels[TRAININGJOB], "Pod", body, logger, tj_memos)


@kopf.on.startup()
async def start_trainingjob_clock(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Start the TrainingJob operator's one clock (see clock); it reads the index of memos kopf keeps filling."""
    memo[CLOCK_TASK] = asyncio.create_task(_clock(settings.execution.executor, kwargs["tj_memos"]))


@kopf.on.cleanup()
async def stop_trainingjob_clock(memo: kopf.Memo, **_: Any) -> None:
    if CLOCK_TASK in memo:
        memo[CLOCK_TASK].cancel()


async def _clock(executor: Any, memos: kopf.Index[Any, Any]) -> None:
    """Every TICK_S, start the passes that are due (clock.due) in kopf's thread pool. Decided on kopf's loop, so a
    tick with none due costs no hop to a worker thread."""
    loop = asyncio.get_running_loop()

    def run(memo: kopf.Memo, ticks: clock.Ticks, namespace: str, name: str) -> None:
        try:
            _pass(memo, namespace, name, log)
        finally:
            ticks.running = False

    while True:
        await asyncio.sleep(clock.TICK_S)
        try:
            now, wall = time.monotonic(), datetime.now(UTC)
            for key in list(memos):
                memo = memo_in(memos, *key)
                if memo is None or (ticks := memo.get(TICKS)) is None:
                    continue  # gone, or no event of it handled yet
                if clock.due(ticks, unsettled(memo), now, wall):
                    ticks.running = True
                    loop.run_in_executor(executor, run, memo, ticks, *key)
        except Exception:  # one bad tick must not stop every TrainingJob's clock: the next one tries again
            log.exception("the TrainingJob clock's tick failed")
