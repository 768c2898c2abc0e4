"""kopf handlers for TrainingJob: thin glue between watch events and :func:`plan.plan`.

Every trigger (a TrainingJob event, an event of one of its Jobs or of their pods, a timer for
unfinished ones) runs the same level-based reconcile under a per-name lock, so the order in
which events arrive does not matter. The timer ticks every few seconds but works only when no
event will come (:func:`plan.due_by_time`: a deadline, a FeatureView not yet registered, a
model version not yet in MLflow), after a pass that failed (a child that could not be applied
is retried with a back-off, and the TrainingJob says why with Ready=False), and every five minutes
(``memos.RESYNC_S``) as a safety net: a TrainingJob whose Job is queued or running costs no API request between
events, however many there are.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import kopf

from ...api import API_VERSION
from ...core import kube, podfailure
from ...core import modelcontract as mc
from ...core.mlflow_rest import MLflowError, MLflowRegistry, ModelVersion
from .. import metrics
from ..labels import ATTEMPT, TRAININGJOB
from ..memos import Reads, memo_in, run_pass, unsettled
from ..runtime import EXECUTOR, WORKERS, context
from . import children
from .plan import TERMINAL, due_by_time, leaves_as_is, not_applied, plan, pods_worth_reading, with_registration

GROUP, VERSION = API_VERSION.split("/")
KIND = "TrainingJob"
EVENT_SOURCE = "kubeforge-trainingjob"


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
async def tj_memos(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> dict[tuple[str, str], kopf.Memo]:
    """Each TrainingJob's memo by namespace and name: its Jobs' and pods' events record its passes there."""
    return {(namespace, name): memo}


def _for_owner(
    namespace: str, name: str, kind: str, body: kopf.Body, logger: Any, tj_memos: kopf.Index[Any, Any]
) -> None:
    """A pass of the TrainingJob a Job or pod (body, of kind) belongs to, unless that one is gone or its last pass
    read the child as it is."""
    if (memo := memo_in(tj_memos, namespace, name)) is not None:
        run_pass(memo, reconcile, namespace, name, logger, brought=(kind, body))


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def trainingjob_event(
    event: dict[str, Any], body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    WORKERS.indexed = True  # kopf runs handlers once everything is indexed (see WorkerLimit)
    metrics.RESOURCE_STATES.seen(KIND, event)
    if event.get("type") != "DELETED":
        run_pass(memo, reconcile, namespace, name, logger, brought=(KIND, body))


@kopf.on.event("batch", "v1", "jobs", labels={TRAININGJOB: kopf.PRESENT})
def job_event(
    labels: dict[str, str], namespace: str, body: kopf.Body, logger: Any, tj_memos: kopf.Index[Any, Any], **_: Any
) -> None:
    """A Job of a TrainingJob changed (e.g. completed): reconcile its owner."""
    _for_owner(namespace, labels[TRAININGJOB], "Job", body, logger, tj_memos)


@kopf.on.event("v1", "pods", labels={TRAININGJOB: kopf.PRESENT})
def pod_event(
    labels: dict[str, str], namespace: str, body: kopf.Body, logger: Any, tj_memos: kopf.Index[Any, Any], **_: Any
) -> None:
    """A trainer pod fails or does not start: why goes to status (lastFailure) while its Job still runs, which the
    Job's own status does not say. A pod that reports nothing wrong starts no pass: whatever its Job makes of it
    comes as the Job's own event."""
    if podfailure.pick([dict(body)], children.MEMORY_FIELDS) is not None:
        _for_owner(namespace, labels[TRAININGJOB], "Pod", body, logger, tj_memos)


def _unfinished(status: dict[str, Any], **_: Any) -> bool:
    if status.get("phase") not in TERMINAL:
        return True
    return status.get("phase") == "Succeeded" and not (status.get("mlflow") or {}).get("modelVersion")


@kopf.timer(GROUP, VERSION, "trainingjobs", interval=10, idle=5, when=_unfinished)
async def trainingjob_timer(
    name: str,
    namespace: str,
    status: dict[str, Any],
    spec: dict[str, Any],
    memo: kopf.Memo,
    logger: Any,
    retry: int,
    **_: Any,
) -> None:
    """Passes no event starts (see the module's docstring). Decided on kopf's loop, so a tick with none due
    costs no hop to a worker thread either; a pass runs in kopf's thread pool like the event handlers'."""
    if retry or unsettled(memo) or due_by_time(status, spec, datetime.now(UTC)):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(memo[EXECUTOR], run_pass, memo, reconcile, namespace, name, logger, retry)
