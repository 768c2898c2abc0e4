"""The FeatureView state machine: from what is observed to what should be done. No I/O.

``plan()`` is level-based: given the FeatureView, what registering it in Feast did in this
pass (if it was needed), its materialization Jobs, the pods of a Job that just finished,
and the clock, it returns the Jobs to create or delete, the new status and the events.
Running it twice on the same input gives the same answer, so a restarted operator picks
up where the last one stopped.

Runs are counted in ``status.materializations`` and named from the count, and the run in
progress is recorded in ``status.lastMaterialization``: a new run starts only when none is
recorded as running, so there is never more than one per view, also across restarts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from ...api import FeatureView, FeatureViewSpec, InvalidResource, parse
from ...api.meta import duration_seconds
from ...core import podfailure
from ...core.conditions import FALSE, TRUE, UNKNOWN, StatusDraft, get_condition, is_true, parse_rfc3339, rfc3339
from ...featurestore.errors import SchemaMismatch, SourceNotFound
from ..jobplan import JobPlan
from ..settings import Settings
from . import children

# Condition types.
READY, MATERIALIZING, STALE = "Ready", "Materializing", "Stale"

# Condition reasons: constants, so clients can switch on them.
INVALID_SPEC = "InvalidSpec"
SOURCE_NOT_FOUND = SourceNotFound.reason
SCHEMA_MISMATCH = SchemaMismatch.reason
REGISTRATION_FAILED = "RegistrationFailed"
REGISTERING = "Registering"
MATERIALIZATION_FAILED = "MaterializationFailed"
WAITING_FOR_MATERIALIZATION = "WaitingForMaterialization"
MATERIALIZATION_SUSPENDED = "MaterializationSuspended"
MATERIALIZED = "Materialized"
REGISTERED = "Registered"
JOB_RUNNING = "JobRunning"
IDLE = "Idle"
SUSPENDED = "Suspended"
ONLINE_DISABLED = "OnlineDisabled"
NOT_REGISTERED = "NotRegistered"
OLDER_THAN_TTL = "OlderThanTTL"
WITHIN_TTL = "WithinTTL"
NO_VALUES = "NoValues"
# Event reasons besides the condition reasons.
MATERIALIZATION_STARTED = "MaterializationStarted"

MATERIALIZE_NOW = "kubeforge.dev/materialize-now"
"""Annotation asking for a run at once: each new value gets one run (also while suspended)."""
KEEP_FINISHED = 3
"""Finished Jobs kept per view (the newest), for `kubectl logs`; older ones are deleted."""
RESULT_GRACE = timedelta(seconds=30)
"""How long after its Job completed a run's result may take to appear on its pod."""
LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class Registration:
    """What registering the current generation in Feast did: reason is None when it worked."""

    reason: str | None = None
    """SourceNotFound, SchemaMismatch or RegistrationFailed."""
    message: str = ""


@dataclass
class Plan(JobPlan):
    """A FeatureView's: its Jobs are the materialization runs."""

    finished: tuple[str, int] | None = None
    """A run that ended in this pass: ("succeeded" | "failed", rows written), for the metrics."""


def parse_spec(body: Mapping[str, Any]) -> tuple[FeatureViewSpec | None, str]:
    """(spec, "") or (None, a message naming each bad field)."""
    meta = body["metadata"]
    if len(meta["name"]) > children.MAX_NAME:
        return None, (
            f"metadata.name: {meta['name']!r} has {len(meta['name'])} characters; materialization Jobs are named "
            f"<name>-mat-<n>, so use at most {children.MAX_NAME}"
        )
    try:
        fv = parse({"kind": body["kind"], "metadata": {"name": meta["name"]}, "spec": body.get("spec")})
    except InvalidResource as err:
        return None, str(err)
    assert isinstance(fv, FeatureView)
    return fv.spec, ""


def needs_registration(body: Mapping[str, Any]) -> bool:
    """The current generation is not in the Feast registry yet."""
    return (body.get("status") or {}).get("registeredGeneration") != body["metadata"].get("generation")


def due_by_time(body: Mapping[str, Any], now: datetime) -> bool:
    """Whether the clock must pass over this FeatureView: what no watch event brings. A registration to try
    again (the source may have appeared, the registry's database come back), a scheduled run that fell due, or
    the newest online value passing the ttl (Stale). A Job's progress, an edit and the materialize-now
    annotation come as events; so does fixing an invalid spec."""
    spec, _ = parse_spec(body)
    if spec is None:
        return False
    if needs_registration(body):
        return True
    status = body.get("status") or {}
    last = status.get("lastMaterialization") or {}
    if spec.online and not spec.materialization.suspend and last.get("phase") != "Running":
        started = parse_rfc3339(last.get("startTime"))
        if started is None or now >= started + _interval(spec):
            return True
    newest = parse_rfc3339(status.get("newestEventTime"))
    if not spec.online or newest is None or is_true(status.get("conditions"), STALE):
        return False
    return _past_ttl(spec, newest, now)


def _interval(spec: FeatureViewSpec) -> timedelta:
    return timedelta(seconds=duration_seconds(spec.materialization.interval))


def _past_ttl(spec: FeatureViewSpec, newest: datetime, now: datetime) -> bool:
    """The newest online value is older than the ttl, so nothing is served (Stale)."""
    return now - newest > timedelta(seconds=duration_seconds(spec.ttl))


def _finished(job: dict[str, Any]) -> str | None:
    """'Complete' or 'Failed' for a finished Job, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == TRUE and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


def result_job(status: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job whose pods hold a result to read: the recorded running one, once it has finished."""
    last = status.get("lastMaterialization") or {}
    if last.get("phase") != "Running":
        return None
    job = next((j for j in jobs if j["metadata"]["name"] == last.get("job")), None)
    return job if job is not None and _finished(job) else None


def _message(text: str) -> dict[str, Any] | None:
    """The JSON object the program wrote to its termination log, also when quoted after a prefix."""
    for start in (0, text.find("{")):
        if start < 0:
            continue
        try:
            value = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _tail(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-LOG_TAIL_LINES:])[-2000:]


def _terminated(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How the Job's materialization container terminated (reason, message), None while it has not."""
    uid = job["metadata"]["uid"]
    for pod in pods:
        if not any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or []):
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated")
            if container.get("name") == children.CONTAINER and ended:
                return ended
    return None


def _job_failure(job: dict[str, Any]) -> str:
    cond = next(c for c in job["status"]["conditions"] if c.get("type") == "Failed")
    return f"{cond.get('reason') or 'Failed'}: {cond.get('message') or 'the materialization pod failed'}"


def read_result(job: dict[str, Any], pods: list[dict[str, Any]], now: datetime) -> tuple[bool, dict[str, Any]] | None:
    """(succeeded, details) of a finished Job, from its pod's termination message; None while it is not there.

    details of a success: what the program wrote (rows, windowEnd, ...), or {} when the pod is gone and its
    result with it. Of a failure: reason and message (the source's problem, or the tail of the log).
    """
    ended = _terminated(job, pods)
    text = None if ended is None else str(ended.get("message") or "")
    if _finished(job) == "Complete":
        found = _message(text or "")
        if found is not None and "windowEnd" in found:
            return True, found
        done = parse_rfc3339((job.get("status") or {}).get("completionTime")) or now
        return (True, {}) if now - done > RESULT_GRACE else None
    if ended is not None and ended.get("reason") == podfailure.OOM_KILLED:
        why = podfailure.out_of_memory(children.MEMORY_FIELD)
        return False, {"reason": MATERIALIZATION_FAILED, "message": f"the Job's container was {why}"}
    found = _message(text or "") or _message(_job_failure(job)) or {}
    if found.get("reason") in (SOURCE_NOT_FOUND, SCHEMA_MISMATCH):
        return False, {"reason": found["reason"], "message": str(found.get("message") or "")}
    log = _tail(text) if text else _job_failure(job)
    return False, {"reason": MATERIALIZATION_FAILED, "message": f"the Job's log ends with: {log}"}


def _run_number(job: dict[str, Any]) -> int:
    try:
        return int(job["metadata"].get("labels", {}).get(children.RUN, "0"))
    except ValueError:
        return 0


class _Draft(StatusDraft):
    def ready_problem(self, old: dict[str, Any], reason: str, message: str) -> list[tuple[str, str, str]]:
        """Ready=False with reason; the Warning to record when Ready said something else before."""
        self.cond(READY, FALSE, reason, message)
        before = get_condition(old.get("conditions"), READY) or {}
        if (before.get("status"), before.get("reason"), before.get("message")) == (FALSE, reason, message):
            return []
        return [("Warning", reason, message)]


@dataclass
class _Pass:
    """What one plan() works on: the view, the status being drafted and the Plan being built. Each step of plan()
    (registration, the run in progress, a new run, finished Jobs, conditions) reads and extends it."""

    body: dict[str, Any]
    spec: FeatureViewSpec
    old: dict[str, Any]
    st: _Draft
    out: Plan
    generation: int | None
    now: datetime
    last: dict[str, Any]
    """The last run, as recorded so far in this pass (status.lastMaterialization)."""
    problem: tuple[str, str] | None = None
    """(reason, message) of a registration that failed in this pass."""

    @property
    def registered(self) -> bool:
        """The current generation is in the Feast registry (also when registered in this very pass)."""
        return self.st.s.get("registeredGeneration") == self.generation

    @cached_property
    def interval(self) -> timedelta:
        """spec.materialization.interval, parsed once for the pass."""
        return _interval(self.spec)

    @property
    def running(self) -> bool:
        """The last run is recorded as running: no new one starts until it ends."""
        return self.last.get("phase") == "Running"


def plan(
    body: dict[str, Any],
    registration: Registration | None,
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    settings: Settings,
    now: datetime,
) -> Plan:
    """Decide the next step for the FeatureView in body.

    registration: what registering the current generation did in this pass (None: not tried).
    jobs: the view's materialization Jobs (owned by it). pods: the pods of result_job(), if any.
    """
    generation = body["metadata"].get("generation")
    old = dict(body.get("status") or {})
    st = _Draft(old, generation, now)
    out = Plan()
    spec, invalid = parse_spec(body)
    if spec is None:
        out.events += st.ready_problem(old, INVALID_SPEC, invalid)
        st.cond(MATERIALIZING, FALSE, INVALID_SPEC, "nothing is materialized until the spec is fixed")
        out.status = st.s
        return out
    p = _Pass(body, spec, old, st, out, generation, now, last=dict(st.s.get("lastMaterialization") or {}))
    _registration(p, registration)
    _run_in_progress(p, jobs, pods)
    _new_run(p, settings)
    _finished_jobs(p, jobs)
    _ready(p)
    _materializing(p)
    _stale(p)
    out.status = st.s
    return out


def _registration(p: _Pass, registration: Registration | None) -> None:
    """Record a registration of the current generation that worked in this pass; keep one that failed for Ready."""
    if registration is None:
        return
    if registration.reason is not None:
        p.problem = (registration.reason, registration.message)
        return
    p.st.s["registeredGeneration"] = p.generation
    project = p.body["metadata"]["namespace"].replace("-", "_")
    p.out.events.append(("Normal", REGISTERED, f"generation {p.generation} registered in Feast project {project}"))


def _run_in_progress(p: _Pass, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
    """The outcome of the run recorded as running, once its Job has finished (and its result is there) or is gone."""
    if not p.running:
        return
    job = next((j for j in jobs if j["metadata"]["name"] == p.last["job"]), None)
    outcome: tuple[bool, dict[str, Any]] | None = None
    if job is None:
        message = f"Job {p.last['job']} was deleted before it finished"
        outcome = False, {"reason": MATERIALIZATION_FAILED, "message": message}
    elif _finished(job):
        outcome = read_result(job, pods, p.now)
    if outcome is not None:
        p.last = _record(p.st, p.last, outcome, p.out)
        p.st.s["lastMaterialization"] = p.last


def _new_run(p: _Pass, settings: Settings) -> None:
    """A new run of a registered online view when none runs: asked for by a new annotation value, or (unless
    suspended) its first, one for a newly registered generation, or one the interval made due."""
    spec, st, last, meta = p.spec, p.st, p.last, p.body["metadata"]
    if not p.registered or not spec.online or p.running:
        return
    suspended = spec.materialization.suspend
    requested = (meta.get("annotations") or {}).get(MATERIALIZE_NOW)
    started = parse_rfc3339(last.get("startTime"))
    why = None
    if requested and requested != p.old.get("materializeNow"):
        why = f"requested by annotation {MATERIALIZE_NOW}={requested}"
    elif not suspended and not last:
        why = "first run"
    elif not suspended and last.get("generation") != p.generation:
        why = f"generation {p.generation} registered"
    elif not suspended and started is not None and p.now >= started + p.interval:
        why = f"due every {spec.materialization.interval}"
    if not why:
        return
    run = int(st.s.get("materializations") or 0) + 1
    name = children.job_name(meta["name"], run)
    p.out.apply.append(children.job(p.body, spec, run, settings))
    st.s["materializations"] = run
    p.last = {"job": name, "generation": p.generation, "phase": "Running", "startTime": st.now}
    st.s["lastMaterialization"] = p.last
    if requested:
        st.s["materializeNow"] = requested
    p.out.events.append(("Normal", MATERIALIZATION_STARTED, f"Job {name} started: {why}"))


def _finished_jobs(p: _Pass, jobs: list[dict[str, Any]]) -> None:
    """Delete the finished Jobs beyond the newest KEEP_FINISHED, which stay for `kubectl logs`; the last run's own
    Job, once finished, is one of those kept."""
    last_job = p.last.get("job")
    done = sorted((j for j in jobs if _finished(j) and j["metadata"]["name"] != last_job), key=_run_number)
    keep = KEEP_FINISHED - (0 if p.running else 1)
    p.out.delete_jobs = [j["metadata"]["name"] for j in done[: max(0, len(done) - keep)]]


def _ready(p: _Pass) -> None:
    """Ready: whether the view serves values online, else what it waits for or what went wrong (a Warning when
    that is new)."""
    st, out, spec, last = p.st, p.out, p.spec, p.last
    if p.problem is not None:
        out.events += st.ready_problem(p.old, *p.problem)
    elif not p.registered:
        st.cond(READY, FALSE, REGISTERING, "registering the view in the Feast registry")
    elif not spec.online:
        st.cond(READY, TRUE, REGISTERED, "registered in Feast; spec.online is false, so nothing is materialized")
    elif last.get("phase") == "Failed":
        out.events += st.ready_problem(p.old, last["reason"], f"Job {last['job']}: {last['message']}")
    elif st.s.get("lastMaterializedTime"):
        rows = st.s.get("onlineRows")
        online = f"{rows} entities online" if rows is not None else "online"
        st.cond(READY, TRUE, MATERIALIZED, f"{online}, materialized up to {st.s['lastMaterializedTime']}")
    elif p.running:
        st.cond(READY, FALSE, WAITING_FOR_MATERIALIZATION, f"the first materialization runs as Job {last['job']}")
    else:
        st.cond(
            READY,
            FALSE,
            MATERIALIZATION_SUSPENDED,
            f"nothing is materialized and spec.materialization.suspend is true: set it to false, or set the "
            f"annotation {MATERIALIZE_NOW} to a new value for one run",
        )


def _materializing(p: _Pass) -> None:
    """Materializing: the Job that runs now, else why none does or when the next one is due."""
    st, spec, last = p.st, p.spec, p.last
    if p.running:
        st.cond(MATERIALIZING, TRUE, JOB_RUNNING, f"Job {last['job']} materializes generation {last['generation']}")
    elif not spec.online:
        st.cond(MATERIALIZING, FALSE, ONLINE_DISABLED, "spec.online is false")
    elif not p.registered:
        st.cond(MATERIALIZING, FALSE, NOT_REGISTERED, "materialization starts once the view is registered")
    elif spec.materialization.suspend:
        st.cond(MATERIALIZING, FALSE, SUSPENDED, f"spec.materialization.suspend is true; {MATERIALIZE_NOW} still works")
    else:
        last_start = parse_rfc3339(last["startTime"])
        assert last_start is not None  # every run is recorded with its startTime
        due = last_start + p.interval
        st.cond(MATERIALIZING, FALSE, IDLE, f"next run at {rfc3339(due)}")


def _stale(p: _Pass) -> None:
    """Stale: whether the newest value online is older than the ttl, so nothing is served (a Warning when it
    becomes so)."""
    st, spec = p.st, p.spec
    newest = parse_rfc3339(st.s.get("newestEventTime"))
    if not spec.online:
        st.cond(STALE, FALSE, ONLINE_DISABLED, "spec.online is false")
    elif newest is None:
        st.cond(STALE, UNKNOWN, NO_VALUES, "no value has been materialized yet")
    elif _past_ttl(spec, newest, p.now):
        message = (
            f"the newest value online is from {rfc3339(newest)}, older than ttl {spec.ttl}, so no value is served: "
            "check that the source gets new data and that materialization runs"
        )
        if not is_true(p.old.get("conditions"), STALE):
            p.out.events.append(("Warning", OLDER_THAN_TTL, message))
        st.cond(STALE, TRUE, OLDER_THAN_TTL, message)
    else:
        st.cond(STALE, FALSE, WITHIN_TTL, f"the newest value online is from {rfc3339(newest)}")


def leaves_as_is(body: dict[str, Any], jobs: list[dict[str, Any]], settings: Settings, now: datetime) -> bool:
    """Whether a pass over body, finding jobs, would change nothing: no registration to try, no finished run to read,
    no Job to create or delete, no event, and the status body has. A pass's own status write comes back as an
    event; when planning again from the object it wrote (with the Jobs as it left them) leaves it as is, that event
    needs no pass of its own."""
    status = body.get("status") or {}
    if needs_registration(body) or result_job(status, jobs) is not None:
        return False
    p = plan(body, None, jobs, [], settings, now)
    return not (p.apply or p.delete_jobs or p.events) and p.status == status


def _record(st: StatusDraft, last: dict[str, Any], outcome: tuple[bool, dict[str, Any]], out: Plan) -> dict[str, Any]:
    """last (the run that was running) with its outcome; the view's status and events updated with it."""
    succeeded, details = outcome
    last = {**last, "completionTime": st.now}
    if not succeeded:
        last.update(phase="Failed", reason=details["reason"], message=details["message"])
        out.events.append(("Warning", details["reason"], f"Job {last['job']} failed: {details['message']}"))
        out.finished = ("failed", 0)
        return last
    last["phase"] = "Succeeded"
    rows = details.get("rows")
    if details:
        last.update(rows=rows, windowStart=details.get("windowStart"), windowEnd=details["windowEnd"])
        st.s["lastMaterializedTime"] = details["windowEnd"]
        st.s["onlineRows"] = details.get("onlineRows")
        if details.get("newestEventTime"):
            st.s["newestEventTime"] = details["newestEventTime"]
        message = f"Job {last['job']} wrote {rows} rows, values up to {details['windowEnd']}"
    else:
        # The window ended when the program started, after the Job was created: its start is a safe lower bound.
        st.s["lastMaterializedTime"] = last["startTime"]
        message = f"Job {last['job']} succeeded; its result was gone with its pod"
    out.events.append(("Normal", MATERIALIZED, message))
    out.finished = ("succeeded", int(rows or 0))
    return {k: v for k, v in last.items() if v is not None}
