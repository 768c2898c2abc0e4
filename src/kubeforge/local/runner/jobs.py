"""batch/v1 Jobs: what the Job controller and the kubelet together do, for local pods.

One pod per completion slot (``JOB_COMPLETION_INDEX`` for Indexed Jobs); a failed pod
counts against ``backoffLimit`` and its slot gets a new pod while the budget lasts;
``activeDeadlineSeconds`` and ``suspend`` are honoured. The terminal condition's message
carries the exit code and termination message, which the TrainingJob operator reports.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...core import kube
from ...core.conditions import now_rfc3339
from . import pods

if TYPE_CHECKING:
    from .loop import Runner

DEFAULT_BACKOFF_LIMIT = 6


def finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def _condition(type_: str, reason: str, message: str) -> dict[str, Any]:
    now = now_rfc3339()
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _elapsed(start: str) -> float:
    return time.time() - datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def sync(runner: Runner, job: dict[str, Any]) -> None:
    """Run the Job's pods one tick further and write its status."""
    if finished(job):
        return
    meta, spec, old = job["metadata"], job["spec"], job.get("status") or {}
    template = spec["template"]
    owned = runner.state.of_owner(meta["uid"])
    if spec.get("suspend"):
        for pod in owned:
            runner.remove_pod(pod)
        _write(runner, job, {k: v for k, v in old.items() if k not in ("active", "startTime")})
        return
    completions = spec.get("completions") or 1
    indexed = spec.get("completionMode") == "Indexed"
    backoff_limit = spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
    failed = [p for p in owned if p.phase == "Failed"]
    for slot in range(completions):
        slot_pods = [p for p in owned if p.index == slot]
        if all(p.phase == "Failed" for p in slot_pods) and len(failed) <= backoff_limit:
            owned.append(runner.create_pod(job, template, slot, indexed))
    for pod in owned:
        runner.step(pod, template["spec"], restart=False)
        if pod.finished:
            pods.stop(pod)
    failed = [p for p in owned if p.phase == "Failed"]
    succeeded = {p.index for p in owned if p.phase == "Succeeded"}
    active = [p for p in owned if not p.finished]
    status: dict[str, Any] = {"startTime": old.get("startTime") or now_rfc3339()}
    terminal = None
    if len(failed) > backoff_limit:
        terminal = _condition("Failed", "BackoffLimitExceeded", failed[-1].message)
    elif (deadline := spec.get("activeDeadlineSeconds")) and _elapsed(status["startTime"]) > deadline:
        terminal = _condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    elif len(succeeded) >= completions:
        terminal = _condition("Complete", "Completed", "")
        status["completionTime"] = now_rfc3339()
    if terminal:
        for pod in active:
            runner.remove_pod(pod)
        active = []
        status["conditions"] = [terminal]
    counts = {"active": len(active), "succeeded": len(succeeded), "failed": len(failed)}
    status.update({k: v for k, v in counts.items() if v})
    _write(runner, job, status)


def _write(runner: Runner, job: dict[str, Any], status: dict[str, Any]) -> None:
    meta = job["metadata"]
    kube.patch_status(runner.api, "batch/v1", "Job", meta["name"], meta["namespace"], job.get("status"), status)
