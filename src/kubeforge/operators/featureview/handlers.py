"""kopf handlers for FeatureView: thin glue between watch events and :func:`plan.plan`.

Every trigger (a FeatureView event, an event of one of its Jobs, a 10-second timer) runs the
same level-based reconcile under a per-name lock. The timer works only for what no event
brings (:func:`plan.due_by_time`: a registration to try again, a scheduled run, the newest
value passing the ttl), after a pass that did not settle, and every five minutes
(``memos.RESYNC_S``): a view between runs, or whose Job runs, costs no API request. The age
of its newest value is computed when Prometheus scrapes, so no pass keeps it current. The
events of a pass's own status write and of the Job it created start no pass where planning
again from what it wrote leaves the view as is (:func:`plan.leaves_as_is`).

The work runs in this module's own worker threads: the first pass imports Feast
(seconds), and registry calls may wait on a database, and neither may hold up kopf's
loop or the other kinds' handlers. Feast's objects are not thread-safe and a file
registry is rewritten whole, so registry work runs one call at a time, with one Store
per namespace (a Feast project each), created on first use.

Deleting a FeatureView runs a finalizer: the view leaves the Feast registry (state outside
the cluster that no garbage collector would remove). Its Jobs go with it by garbage
collection (owner references); a FeatureView re-created under the same name counts its runs
from 1 again, and a predecessor's Job still in the way is replaced (kube.apply_children).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kopf

from ...api import API_VERSION, FeatureViewSpec
from ...api.meta import duration_seconds
from ...core import kube
from ...core.conditions import StatusDraft
from ...featurestore.errors import SourceError
from .. import metrics as operator_metrics
from ..memos import Brought, Reads, lock_of, memo_in, read_already, run_pass, unsettled
from ..runtime import WORKERS, Context, context
from . import metrics
from .children import FEATUREVIEW, RUN
from .plan import (
    REGISTRATION_FAILED,
    Registration,
    due_by_time,
    leaves_as_is,
    needs_registration,
    parse_spec,
    plan,
    read_result,
    result_job,
)

if TYPE_CHECKING:
    from ...featurestore.store import Store

GROUP, VERSION = API_VERSION.split("/")
KIND = "FeatureView"
EVENT_SOURCE = "kubeforge-featureview"
RESULT_WAIT = 5.0
"""Seconds to wait for a finished Job's pod to show its result (the local runner writes it just after)."""

_workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="featureview")
_feast = threading.Lock()
_stores: dict[str, Store] = {}


def _store(ctx: Context, namespace: str) -> Store:
    """The namespace's Store (call with _feast held); the first one imports Feast."""
    from ...featurestore.store import Store

    if namespace not in _stores:
        _stores[namespace] = Store(ctx.settings.feature_store, namespace)
    return _stores[namespace]


def _registry_failure(ctx: Context, namespace: str, err: Exception) -> str:
    """Why the registry did not answer; the Store is dropped, so the next try connects anew."""
    _stores.pop(namespace, None)
    first = (str(err).strip().splitlines() or [""])[0][:500]
    return f"the Feast registry ({ctx.settings.feature_store.registry_location}) failed: {type(err).__name__}: {first}"


def _register(ctx: Context, namespace: str, name: str, spec: FeatureViewSpec) -> Registration:
    with _feast:
        try:
            _store(ctx, namespace).apply(name, spec)
        except SourceError as err:
            return Registration(err.reason, str(err))
        except Exception as err:  # an unreachable database or file, or Feast refusing the definitions
            return Registration(REGISTRATION_FAILED, f"{_registry_failure(ctx, namespace, err)}; retrying every 10s")
    return Registration()


def _owned(objs: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The objects uid controls: a deleted predecessor's carry the same labels until they are collected."""
    return [o for o in objs if (kube.controller_of(o) or {}).get("uid") == uid]


def _pods(ctx: Context, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of a finished Job, once one shows the result (or RESULT_WAIT passed)."""
    meta = job["metadata"]
    selector = f"{FEATUREVIEW}={meta['labels'][FEATUREVIEW]},{RUN}={meta['labels'][RUN]}"
    deadline = time.monotonic() + RESULT_WAIT
    while True:
        pods = _owned(kube.list_objects(ctx.api, "v1", "Pod", meta["namespace"], selector), meta["uid"])
        if read_result(job, pods, datetime.now(UTC)) is not None or time.monotonic() > deadline:
            return pods
        time.sleep(0.5)


@operator_metrics.reconciled(KIND)
def reconcile(namespace: str, name: str, reads: Reads) -> bool:
    """One level-based pass (run under the name's lock: memos.run_pass); False when it left what only the clock
    will try again: a Job that could not be created, or a finished run whose result has not shown on its pod
    yet."""
    ctx = context()
    body = reads(KIND, kube.get(ctx.api, API_VERSION, KIND, name, namespace))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return True
    old_status = body.get("status") or {}
    spec, _ = parse_spec(body)
    registration = None
    if spec is not None and needs_registration(body):
        registration = _register(ctx, namespace, name, spec)
    listed = [
        reads("Job", job) for job in kube.list_objects(ctx.api, "batch/v1", "Job", namespace, f"{FEATUREVIEW}={name}")
    ]
    jobs = _owned(listed, body["metadata"]["uid"])
    finished = result_job(old_status, jobs)
    pods = _pods(ctx, finished) if finished is not None else []
    now = datetime.now(UTC)
    p = plan(body, registration, jobs, pods, ctx.settings, now)
    try:
        applied = kube.apply_children(ctx.api, p.apply)
    except kube.ChildNotApplied as err:
        # The run did not start: the last status stays, with Ready=False saying why; the timer tries again.
        st = StatusDraft(old_status, body["metadata"].get("generation"), now)
        kube.write_status(ctx.api, body, old_status, st.s, err.report(st, old_status), component=EVENT_SOURCE)
        operator_metrics.reconcile_failed(KIND)
        return False
    for job in p.delete_jobs:
        kube.delete(ctx.api, "batch/v1", "Job", job, namespace)
    written = kube.write_status(ctx.api, body, old_status, p.status, p.events, component=EVENT_SOURCE)
    if written is not None:
        left = [job for job in jobs if job["metadata"]["name"] not in p.delete_jobs] + p.apply
        if leaves_as_is(written, left, ctx.settings, now):
            reads(KIND, written)  # the events of this write and of the Jobs it created bring nothing to act on
            reads.update({key: where.version for key, where in applied.items()})
    ttl = duration_seconds(spec.ttl) if spec is not None else None
    metrics.observe(namespace, name, ttl, p.finished)
    return finished is None or p.finished is not None


def _remove(namespace: str, name: str, memo: kopf.Memo) -> None:
    ctx = context()
    with lock_of(memo, namespace, name), _feast:
        try:
            _store(ctx, namespace).remove(name)
        except Exception as err:  # kept: the finalizer stays until the registry answers
            raise kopf.TemporaryError(f"removing {name}: {_registry_failure(ctx, namespace, err)}", delay=10) from err
    metrics.forget(namespace, name)


async def _in_worker(fn: Callable[..., Any], *args: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(_workers, fn, *args)


async def _pass(namespace: str, name: str, memo: kopf.Memo, brought: Brought | None = None) -> None:
    await _in_worker(functools.partial(run_pass, memo, reconcile, namespace, name, brought=brought))


@kopf.index(GROUP, VERSION, "featureviews")
async def fv_memos(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> dict[tuple[str, str], kopf.Memo]:
    """Each FeatureView's memo by namespace and name: its Jobs' events record their passes there."""
    assert namespace is not None  # namespaced kind
    return {(namespace, name): memo}


@kopf.on.event(GROUP, VERSION, "featureviews")
async def featureview_event(
    event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    assert namespace is not None  # namespaced kind
    WORKERS.indexed = True  # kopf runs handlers once everything is indexed (see WorkerLimit)
    operator_metrics.RESOURCE_STATES.seen(KIND, event)
    metrics.FRESHNESS.seen(event)
    if event.get("type") != "DELETED":
        await _pass(namespace, name, memo, (KIND, body))


@kopf.on.event("batch", "v1", "jobs", labels={FEATUREVIEW: kopf.PRESENT})
async def job_event(labels: Mapping[str, str], namespace: str | None, body: kopf.Body, **kwargs: Any) -> None:
    """A materialization Job changed (e.g. finished): reconcile its FeatureView, unless that one is gone or its last
    pass read the Job as it is."""
    assert namespace is not None  # namespaced kind
    fv_memos: kopf.Index[Any, Any] = kwargs["fv_memos"]  # kopf passes each index by its name
    memo = memo_in(fv_memos, namespace, labels[FEATUREVIEW])
    if memo is not None:
        await _pass(namespace, labels[FEATUREVIEW], memo, ("Job", body))


@kopf.timer(GROUP, VERSION, "featureviews", interval=10)
async def featureview_timer(name: str, namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Passes no event starts (see the module's docstring), decided on kopf's loop: a tick with none due costs
    no hop to a worker thread either. What is due by time is judged on the view as its last settled pass read it;
    kopf's body may be older (its first tick comes once that event's pass ended, with that event's body) or newer
    (then its event's pass is on the way)."""
    assert namespace is not None  # namespaced kind
    if unsettled(memo) or (read_already(memo, KIND, body) and due_by_time(body, datetime.now(UTC))):
        await _pass(namespace, name, memo)


@kopf.on.delete(GROUP, VERSION, "featureviews")
async def featureview_deleted(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Remove the view from the Feast registry and its table from the online store."""
    assert namespace is not None  # namespaced kind
    await _in_worker(_remove, namespace, name, memo)
