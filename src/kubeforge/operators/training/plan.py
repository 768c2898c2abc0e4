"""The TrainingJob state machine: from what is observed to what should be done. No I/O.

``plan()`` is level-based: given the TrainingJob, the Job of its current attempt (or
None), why that attempt's pod fails (if it does), the FeatureView its dataset names (if
it names one) and the clock, it returns the children to apply or delete, the new status
and the events to record. Running it twice on the same input gives the same answer, so a
restarted operator picks up where the last one stopped.

An attempt whose dataset is a FeatureView starts only once that view exists and its
current generation is registered in the feature store; until then the TrainingJob is
Pending, its Ready condition says what it waits for, and the attempt it will start is
already counted (``status.attempts``, ``status.jobName``), so a wait never costs a retry
and never repeats one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any

from ...api import InvalidResource, TrainingJob, parse
from ...api.trainingjob import QUEUE_NAME_LABEL
from ...core import modelcontract as mc
from ...core import podfailure
from ...core.conditions import FALSE, TRUE, StatusDraft, get_condition, parse_rfc3339
from ...core.kube import Capabilities, ChildNotApplied
from ...core.mlflow_rest import ModelVersion
from ..jobplan import JobPlan
from ..settings import Settings
from . import children

# Condition types.
READY, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Ready", "Running", "Succeeded", "Failed", "Suspended"

# Condition reasons: constants, so clients can switch on them.
INVALID_SPEC = "InvalidSpec"
UNSUPPORTED = "UnsupportedByCluster"
JOB_CREATED = "JobCreated"
JOB_RUNNING = "JobRunning"
JOB_SUCCEEDED = "JobSucceeded"
JOB_FAILED = "JobFailed"
JOB_DELETED = "JobDeleted"
RETRYING = "Retrying"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
SUSPENDED_BY_USER = "SuspendedByUser"
MODEL_REGISTERED = "ModelRegistered"
REGISTRATION_MISSING = "RegistrationMissing"
FEATUREVIEW_NOT_FOUND = "FeatureViewNotFound"
WAITING_FOR_FEATUREVIEW = "WaitingForFeatureView"
QUEUED = "Queued"

_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TERMINAL = ("Succeeded", "Failed")


@dataclass
class Plan(JobPlan):
    """A TrainingJob's: its Job is the current attempt's, and a finished one's model may still need registering."""

    needs_registration: bool = False


def semantic_errors(tj: TrainingJob, caps: Capabilities) -> list[tuple[str, str, str]]:
    """(reason, field, message) for problems a schema cannot see."""
    errors: list[tuple[str, str, str]] = []
    ds = tj.spec.dataset
    if ds.uri and ds.format:
        suffix = PurePosixPath(ds.uri.rstrip("/")).suffix.lower()
        inferred = _EXTENSIONS.get(suffix)
        if inferred and inferred != ds.format:
            errors.append(
                (
                    INVALID_SPEC,
                    "spec.dataset.format",
                    f"format is {ds.format!r} but spec.dataset.uri ends in {suffix!r}: "
                    f"set format to {inferred!r} or omit it",
                )
            )
    if ds.features and ds.target in ds.features:
        errors.append(
            (INVALID_SPEC, "spec.dataset.features", f"lists the target column {ds.target!r}: remove it from features")
        )
    if tj.spec.queue_name and not caps.job_suspend:
        errors.append(
            (
                UNSUPPORTED,
                "spec.queueName",
                f"queueing with Kueue needs Job suspend (Kubernetes 1.21+); this cluster is {caps.major}.{caps.minor}:"
                " remove queueName",
            )
        )
    if tj.spec.replicas > 1 and not caps.indexed_jobs:
        errors.append(
            (
                UNSUPPORTED,
                "spec.replicas",
                f"replicas={tj.spec.replicas} needs Indexed Jobs (Kubernetes 1.21+); this cluster is "
                f"{caps.major}.{caps.minor}: use replicas: 1",
            )
        )
    return errors


def _feature_view_wait(tj: TrainingJob, feature_view: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(event type, reason, message) while the FeatureView the dataset names keeps an attempt from starting."""
    source = tj.spec.dataset.feature_view
    if source is None:
        return None
    if feature_view is None:
        return (
            "Warning",
            FEATUREVIEW_NOT_FOUND,
            f"spec.dataset.featureView.name: FeatureView {source.name!r} does not exist in this namespace: create it "
            "or fix the name; training starts once it is registered",
        )
    generation = feature_view["metadata"].get("generation")
    if (feature_view.get("status") or {}).get("registeredGeneration") == generation:
        return None
    ready = get_condition((feature_view.get("status") or {}).get("conditions"), READY) or {}
    why = f" (its Ready condition: {ready.get('reason')}: {ready.get('message')})" if ready else ""
    return (
        "Normal",
        WAITING_FOR_FEATUREVIEW,
        f"waiting for generation {generation} of FeatureView {source.name!r} to be registered in the feature "
        f"store{why}",
    )


def _job_state(job: dict[str, Any] | None) -> tuple[str, str]:
    """('complete'|'failed'|'queued'|'active'|'missing', message) from a Job's conditions; queued while a
    queue's Job is suspended (Kueue has not admitted it, or took it back to make room)."""
    if job is None:
        return "missing", ""
    if (job.get("spec") or {}).get("suspend") and ((job.get("metadata") or {}).get("labels") or {}).get(
        QUEUE_NAME_LABEL
    ):
        return "queued", f"waiting in queue {job['metadata']['labels'][QUEUE_NAME_LABEL]} for admission"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "complete", cond.get("message") or ""
        if cond.get("type") == "Failed":
            reason = cond.get("reason") or "Failed"
            return "failed", f"{reason}: {cond.get('message') or 'the training pod failed'}"
    return "active", ""


class _Status(StatusDraft):
    """The status being built, with a phase whose conditions always agree with it."""

    def __init__(self, old: dict[str, Any], generation: int | None, now: datetime):
        super().__init__(old, generation, now)
        self.s.setdefault("attempts", 0)

    def phase(self, phase: str, reason: str, message: str) -> None:
        self.s["phase"] = phase
        self.cond(READY, TRUE if phase == "Succeeded" else FALSE, reason, message)
        self.cond(RUNNING, TRUE if phase == "Running" else FALSE, reason, message)
        self.cond(SUSPENDED, TRUE if phase == "Suspended" else FALSE, reason, message)
        if phase in TERMINAL:
            self.cond(SUCCEEDED, TRUE if phase == "Succeeded" else FALSE, reason, message)
            self.cond(FAILED, TRUE if phase == "Failed" else FALSE, reason, message)
            self.s.setdefault("completionTime", self.now)


def plan(
    body: dict[str, Any],
    job: dict[str, Any] | None,
    settings: Settings,
    caps: Capabilities,
    now: datetime,
    failure: dict[str, Any] | None = None,
    feature_view: dict[str, Any] | None = None,
) -> Plan:
    """Decide the next step for the TrainingJob in body, whose current-attempt Job is job.

    failure is why the current attempt's pod fails or does not run (:func:`core.podfailure.pick`), if it does.
    feature_view is the FeatureView spec.dataset.featureView names, None when it does not exist (or none is named).
    """
    old = dict(body.get("status") or {})
    st = _Status(old, body["metadata"].get("generation"), now)
    out = Plan()
    tj = _valid(body, old, caps, st, out)
    if tj is not None and old.get("phase") in TERMINAL and old.get("attempts"):
        # Finished for good; a succeeded job may still wait for its registry lookup.
        out.needs_registration = old.get("phase") == "Succeeded" and not (old.get("mlflow") or {}).get("modelVersion")
        out.status = old
        return out
    if tj is not None:
        p = _Pass(body, tj, old, st, out, settings, caps, feature_view, now)
        if (last := podfailure.newer(old.get("lastFailure"), failure, st.now)) is not None:
            st.s["lastFailure"] = last
            out.events.append(podfailure.event(last))
        if not _stopped(p, job):
            _next_attempt(p, job, failure)
    out.status = st.s
    return out


def _valid(body: dict[str, Any], old: dict[str, Any], caps: Capabilities, st: _Status, out: Plan) -> TrainingJob | None:
    """The TrainingJob's spec; None, with the TrainingJob Failed saying why, where it is invalid. One that finished
    keeps its outcome whatever a newer operator or cluster finds wrong with its spec since."""
    try:
        # Only the spec is the user's; a status this operator wrote is not re-validated.
        tj = parse({"kind": body["kind"], "metadata": {"name": body["metadata"]["name"]}, "spec": body.get("spec")})
    except InvalidResource as err:
        st.phase("Failed", INVALID_SPEC, str(err))
        out.events.append(("Warning", INVALID_SPEC, str(err)))
        return None
    assert isinstance(tj, TrainingJob)
    problems = semantic_errors(tj, caps)
    if not problems or (old.get("phase") in TERMINAL and old.get("attempts")):
        return tj
    reason = problems[0][0]
    message = "; ".join(f"{f}: {m}" for _, f, m in problems)
    st.phase("Failed", reason, message)
    if old.get("phase") != "Failed" or (old.get("conditions") and message not in str(old["conditions"])):
        out.events.append(("Warning", reason, message))
    return None


@dataclass
class _Pass:
    """What a pass over a TrainingJob that has not finished reads, and the plan it is building."""

    body: dict[str, Any]
    tj: TrainingJob
    old: dict[str, Any]
    st: _Status
    out: Plan
    settings: Settings
    caps: Capabilities
    feature_view: dict[str, Any] | None
    now: datetime

    @property
    def attempts(self) -> int:
        """Attempts started so far (or counted while waiting for a FeatureView)."""
        return int(self.old.get("attempts") or 0)

    @property
    def budget(self) -> int:
        """The first attempt plus backoffLimit retries."""
        return self.tj.spec.backoff_limit + 1

    @cached_property
    def remaining(self) -> int | None:
        """Seconds left of activeDeadlineSeconds; None without a deadline or before the first attempt started."""
        deadline, start = self.tj.spec.active_deadline_seconds, parse_rfc3339(self.old.get("startTime"))
        return None if deadline is None or start is None else deadline - int((self.now - start).total_seconds())

    def job_name(self, attempt: int) -> str:
        return children.job_name(self.body["metadata"]["name"], attempt)


def _stopped(p: _Pass, job: dict[str, Any] | None) -> bool:
    """Whether the deadline has passed or the user suspended training: then the current attempt's Job goes."""
    remaining, st, out = p.remaining, p.st, p.out
    if remaining is not None and remaining <= 0:
        msg = f"activeDeadlineSeconds={p.tj.spec.active_deadline_seconds} passed after {p.attempts} attempt(s)"
        st.phase("Failed", DEADLINE_EXCEEDED, msg)
        out.events.append(("Warning", DEADLINE_EXCEEDED, msg))
    elif p.tj.spec.suspend:
        if p.old.get("phase") != "Suspended":
            out.events.append(("Normal", SUSPENDED_BY_USER, "training stopped; set spec.suspend=false to resume"))
        st.phase("Suspended", SUSPENDED_BY_USER, "spec.suspend is true")
    else:
        return False
    if job is not None:
        out.delete_jobs.append(job["metadata"]["name"])
    return True


def _next_attempt(p: _Pass, job: dict[str, Any] | None, failure: dict[str, Any] | None) -> None:
    """What the current attempt's Job says: start the first attempt, resume one, retry a failed one within the
    budget (or fail), wait in the queue, succeed, or keep running."""
    state, detail = _job_state(job)
    attempts, budget, st, old = p.attempts, p.budget, p.st, p.old
    if attempts == 0:
        msg = f"attempt 1/{budget} started as Job {p.job_name(1)}"
        _start_attempt(p, 1, JOB_CREATED, msg, msg)
    elif state == "missing" and old.get("phase") in ("Suspended", "Pending"):
        # Resumed, or done waiting for the FeatureView: the attempt recorded then starts now.
        msg = f"attempt {attempts}/{budget} started as Job {p.job_name(attempts)}"
        if old.get("phase") == "Suspended":
            msg = f"resumed: attempt {attempts}/{budget} restarted as Job {p.job_name(attempts)}"
        _start_attempt(p, attempts, JOB_CREATED, msg, msg)
    elif state in ("missing", "failed"):
        _retry(p, state, detail, failure)
    elif state == "queued":
        message = f"attempt {attempts}/{budget}: Job {p.job_name(attempts)} is {detail}"
        if (get_condition(old.get("conditions"), READY) or {}).get("reason") != QUEUED:
            p.out.events.append(("Normal", QUEUED, message))
        st.phase("Pending", QUEUED, message)
    elif state == "complete":
        st.phase("Succeeded", JOB_SUCCEEDED, f"attempt {attempts} succeeded")
        p.out.needs_registration = True
        p.out.events.append(("Normal", JOB_SUCCEEDED, f"training finished in attempt {attempts}"))
    elif old.get("phase") != "Running":
        # Active, but reported otherwise (e.g. by an older operator): report Running.
        st.phase("Running", JOB_RUNNING, f"attempt {attempts}/{budget} running as Job {p.job_name(attempts)}")


def _retry(p: _Pass, state: str, detail: str, failure: dict[str, Any] | None) -> None:
    """The current attempt's Job failed or was deleted: the next attempt, or Failed once the budget is spent."""
    attempts, budget = p.attempts, p.budget
    why = f"Job {p.job_name(attempts)} was deleted"
    if state == "failed":
        # The pod says why (a cluster's Job only says that its backoff limit was reached).
        why = podfailure.describe(failure) if failure else detail
    if attempts < budget:
        _start_attempt(
            p,
            attempts + 1,
            RETRYING,
            f"attempt {attempts} failed ({why}); retry {attempts + 1}/{budget}",
            f"attempt {attempts} failed: {why}; starting attempt {attempts + 1}",
        )
        return
    msg = f"{attempts} attempt(s) failed, backoffLimit={p.tj.spec.backoff_limit} reached; last: {why}"
    reason = BACKOFF_LIMIT_EXCEEDED if attempts > 1 else (JOB_FAILED if state == "failed" else JOB_DELETED)
    p.st.phase("Failed", reason, msg)
    p.out.events.append(("Warning", reason, msg))


def _start_attempt(p: _Pass, number: int, reason: str, message: str, event: str) -> None:
    """Count attempt number and start its Job, or, while the FeatureView it reads is not there yet, wait Pending
    (the attempt counted already, so the wait costs no retry)."""
    st, out, tj = p.st, p.out, p.tj
    st.s["attempts"] = number
    st.s["jobName"] = p.job_name(number)
    if (wait := _feature_view_wait(tj, p.feature_view)) is not None:
        kind, reason, message = wait
        before = get_condition(p.old.get("conditions"), READY) or {}
        st.phase("Pending", reason, message)
        if (before.get("reason"), before.get("message")) != (reason, message):
            out.events.append((kind, reason, message))
        return
    st.s.setdefault("startTime", st.now)
    remaining = p.remaining
    left = tj.spec.active_deadline_seconds if remaining is None else remaining
    out.apply.append(children.spec_configmap(p.body, tj, p.feature_view))
    if tj.spec.replicas > 1:
        out.apply.append(children.headless_service(p.body))
    out.apply.append(children.job(p.body, tj, number, p.settings, p.caps, left))
    st.phase("Running", reason, message)
    out.events.append(("Warning" if reason == RETRYING else "Normal", reason, event))


def leaves_as_is(p: Plan, body: dict[str, Any]) -> bool:
    """Whether p, planned from body, would change nothing: no child to apply or Job to delete, no registry lookup,
    no event, and the status body has. A pass's own status write comes back as an event; when planning again from
    the object it wrote leaves it as is, that event needs no pass of its own."""
    quiet = not (p.apply or p.delete_jobs or p.events or p.needs_registration)
    return quiet and p.status == (body.get("status") or {})


def pods_worth_reading(job: dict[str, Any] | None) -> bool:
    """Whether the attempt's pods may explain something: its Job failed, or not every active pod is ready.

    Servers that do not count ready pods in Job status (before 1.23) have their pods read while the Job
    runs; elsewhere a healthy running attempt costs no pod list.
    """
    if job is None:
        return False
    state, _ = _job_state(job)
    status = job.get("status") or {}
    return state == "failed" or (state == "active" and (status.get("ready") or 0) < (status.get("active") or 1))


def due_by_time(status: dict[str, Any], spec: dict[str, Any], now: datetime) -> bool:
    """Whether an unfinished TrainingJob needs a pass that no watch event will start: its activeDeadlineSeconds
    passed, it waits for a FeatureView to be registered (this operator does not watch FeatureViews), or it
    succeeded and its model version is not yet found in MLflow. Everything else it waits for (its Job, its pods,
    spec changes) arrives as events."""
    if status.get("phase") == "Succeeded":
        return not (status.get("mlflow") or {}).get("modelVersion")
    reason = (get_condition(status.get("conditions"), READY) or {}).get("reason")
    if reason in (WAITING_FOR_FEATUREVIEW, FEATUREVIEW_NOT_FOUND):
        return True
    deadline, start = spec.get("activeDeadlineSeconds"), parse_rfc3339(status.get("startTime"))
    return deadline is not None and start is not None and (now - start).total_seconds() >= deadline


def not_applied(body: dict[str, Any], err: ChildNotApplied, now: datetime) -> tuple[dict[str, Any], list]:
    """Status and events when the plan's children could not be applied.

    Nothing the plan decided took effect, so the last status stays, with Ready=False saying why; a
    TrainingJob that never started an attempt is Pending.
    """
    old = dict(body.get("status") or {})
    st = _Status(old, body["metadata"].get("generation"), now)
    if not old.get("phase"):
        st.s["phase"] = "Pending"
    return st.s, err.report(st, old)


def with_registration(
    status: dict[str, Any], version: ModelVersion | None, model_name: str, uid: str, now: datetime
) -> dict[str, Any]:
    """status after looking the succeeded run's model version up in MLflow.

    version is None when no version of model_name carries this TrainingJob's uid (yet).
    """
    st = _Status(status, status.get("observedGeneration"), now)
    if version is None:
        st.cond(
            READY,
            FALSE,
            REGISTRATION_MISSING,
            f"the Job succeeded but no version of registered model {model_name!r} carries "
            f"{mc.TAG_JOB_UID}={uid}; check the trainer's log (kubectl logs job/{status.get('jobName')})",
        )
        return st.s
    st.s["mlflow"] = {"runId": version.run_id, "modelVersion": version.version, "modelUri": version.uri}
    st.s["metrics"] = {
        k[len(mc.TAG_METRIC_PREFIX) :]: float(v) for k, v in version.tags.items() if k.startswith(mc.TAG_METRIC_PREFIX)
    }
    st.s["dataset"] = mc.trained_on(version.tags)
    st.cond(READY, TRUE, MODEL_REGISTERED, f"registered as {version.uri}")
    return st.s
