"""kopf handlers for TrainingJob: thin glue between watch events and :func:`plan.plan`.

Every trigger (a TrainingJob event, an event of one of its Jobs, a periodic timer for
unfinished ones) runs the same level-based reconcile under a per-object lock, so the
order in which events arrive does not matter. When a child cannot be applied, the
TrainingJob says so (Ready=False) and the timer tries again with a back-off. A
TrainingJob waiting for its FeatureView is unfinished, so the timer notices within its
interval when the view is registered.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf

from ...api import API_VERSION
from ...core import kube, podfailure
from ...core import modelcontract as mc
from ...core.mlflow_rest import MLflowError, MLflowRegistry, ModelVersion
from .. import metrics
from ..labels import ATTEMPT, TRAININGJOB
from ..runtime import context
from .plan import TERMINAL, not_applied, plan, pods_worth_reading, with_registration

GROUP, VERSION = API_VERSION.split("/")
KIND = "TrainingJob"
EVENT_SOURCE = "kubeforge-trainingjob"
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def _registered_version(registry: MLflowRegistry, model: str, uid: str) -> ModelVersion | None:
    for version in registry.search(model):  # newest first
        if version.tags.get(mc.TAG_JOB_UID) == uid:
            return version
    return None


def _attempt_failure(api: kube.KubeApi, body: dict[str, Any], job: dict[str, Any]) -> dict[str, Any] | None:
    """Why the pod of the attempt that job runs fails, if it does. Only the Job's own pods count: a deleted
    predecessor's pods carry the same labels until they are collected."""
    meta = body["metadata"]
    selector = f"{TRAININGJOB}={meta['name']},{ATTEMPT}={job['metadata']['labels'].get(ATTEMPT, '')}"
    pods = kube.list_objects(api, "v1", "Pod", meta["namespace"], selector)
    uid = job["metadata"]["uid"]
    return podfailure.pick([p for p in pods if (kube.controller_of(p) or {}).get("uid") == uid])


@metrics.reconciled(KIND)
def reconcile(namespace: str, name: str, logger: Any, retry: int = 0) -> None:
    """One level-based pass; retry counts the timer's failed passes before this one (for the back-off)."""
    ctx = context()
    with _locks[(namespace, name)]:
        body = kube.get(ctx.api, API_VERSION, KIND, name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        old_status = body.get("status") or {}
        job = None
        if job_name := old_status.get("jobName"):
            job = kube.get(ctx.api, "batch/v1", "Job", job_name, namespace)
        now = datetime.now(UTC)
        failure = feature_view = None
        if old_status.get("phase") not in TERMINAL:
            if pods_worth_reading(job):
                failure = _attempt_failure(ctx.api, body, job)
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
        kube.write_status(ctx.api, body, old_status, status, p.events, component=EVENT_SOURCE)


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def trainingjob_event(event: dict[str, Any], name: str, namespace: str, logger: Any, **_: Any) -> None:
    metrics.RESOURCE_STATES.seen(KIND, event)
    if event.get("type") != "DELETED":
        reconcile(namespace, name, logger)


@kopf.on.event("batch", "v1", "jobs", labels={TRAININGJOB: kopf.PRESENT})
def job_event(labels: dict[str, str], namespace: str, logger: Any, **_: Any) -> None:
    """A Job of a TrainingJob changed (e.g. completed): reconcile its owner."""
    reconcile(namespace, labels[TRAININGJOB], logger)


def _unfinished(status: dict[str, Any], **_: Any) -> bool:
    if status.get("phase") not in TERMINAL:
        return True
    return status.get("phase") == "Succeeded" and not (status.get("mlflow") or {}).get("modelVersion")


@kopf.timer(GROUP, VERSION, "trainingjobs", interval=10, idle=5, when=_unfinished)
def trainingjob_timer(name: str, namespace: str, logger: Any, retry: int, **_: Any) -> None:
    """Deadlines, missed events, pods that fail while their Job runs, and retries of children that could not be
    applied: re-check unfinished TrainingJobs every few seconds."""
    reconcile(namespace, name, logger, retry)
