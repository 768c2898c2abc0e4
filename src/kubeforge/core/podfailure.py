"""Why pods fail, read from Pod status the way a person reads ``kubectl describe pod``. No I/O.

The operators put the most relevant failure of a resource's pods into its status
``lastFailure`` (as KServe's ``lastFailureInfo`` does), so ``kubectl get -o yaml`` and
``kubectl describe`` answer "why does it not run?" without reading pod logs: the
failing container, its reason (CrashLoopBackOff, OOMKilled, ImagePullBackOff, ...),
its exit code and the line of its termination message that says what went wrong. The
termination message is the tail of the container's log for containers with
``terminationMessagePolicy: FallbackToLogsOnError``, so the line has to be picked out
of shutdown chatter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Waiting reasons of a container that is on its way to running: nothing is wrong (yet).
STARTING = frozenset({"ContainerCreating", "PodInitializing"})

# Lines that say that a process stops, or how, but never why: blank lines, separators and
# table borders, table rows (Triton's model status table repeats the error of the log line
# before it), Python traceback framing, Triton's shutdown sequence, torchrun's summary.
_NOISE = re.compile(
    r"""^(?:
        [\W_]*
      | \|.*\|
      | Traceback\ \(most\ recent\ call\ last\):
      | File\ ".*",\ line\ \d+.*
      | During\ handling\ of\ the\ above\ exception.*
      | The\ above\ exception\ was\ the\ direct\ cause.*
      | .*Waiting\ for\ in-flight\ requests\ to\ complete.*
      | .*Timeout\ \d+:\ Found\ \d+\ .*
      | .*All\ models\ are\ stopped.*
      | error:\ creating\ server:.*
      | .*torch\.distributed\.elastic.*
    )$""",
    re.X,
)
# glog's prefix (Triton): severity, date, time, thread, file:line.
_GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ?")
# A leading timestamp, as most loggers write one.
_TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?\s*")
# Lines that report an error as such: glog E/F, a log level, a Python exception.
_SEVERE = re.compile(r"^[EF]\d{4} |\b(?:ERROR|FATAL|CRITICAL|PANIC)\b|^[A-Za-z_][\w.]*(?:Error|Exception)\b:?")
# Lines that speak of something going wrong.
_TROUBLE = re.compile(
    r"error|fail|exception|fatal|not found|no such|denied|refused|invalid|cannot|can't|unable|killed", re.I
)
MAX_MESSAGE = 1024
OOM_KILLED = "OOMKilled"


def out_of_memory(field: str | None) -> str:
    """What a container the kernel killed at its memory limit failed of, and the fix: its log tail seldom says."""
    return f"killed at its memory limit; raise {field or 'the container memory limit'}"


def _clean(line: str) -> str:
    """The line without what changes from one crash to the next (timestamps, thread ids) or only frames it.

    The same failure then reads the same on every restart, so status and events change only when the
    failure does.
    """
    line = _TIMESTAMP.sub("", _GLOG.sub("", line.strip()))
    if len(line) > 1 and line[0] == line[-1] == '"':  # newer Triton releases quote their messages
        line = line[1:-1]
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def meaningful_line(log: str | None) -> str:
    """The line of a log tail that says what went wrong: the last one reported as an error, else the last
    one that speaks of trouble, else the last line that is not noise; "" when there is none."""
    best, best_rank = "", -1
    for raw in (log or "").splitlines():
        line = raw.strip()
        if _NOISE.match(line):
            continue
        rank = 2 if _SEVERE.search(line) else 1 if _TROUBLE.search(line) else 0
        if rank >= best_rank:
            best, best_rank = line, rank
    return _clean(best) if best else ""


def _container_failure(
    pod: str, status: dict[str, Any], memory_fields: Mapping[str, str]
) -> tuple[int, dict[str, Any]] | None:
    """(severity, failure) of one container status, or None when the container is fine."""
    state, last = status.get("state") or {}, (status.get("lastState") or {}).get("terminated")
    name = status.get("name")
    if (waiting := state.get("waiting")) and waiting.get("reason") not in STARTING | {None}:
        reason = waiting["reason"]
        # A crash loop's own message is a back-off countdown; why it crashes is in the last termination.
        message = _why_ended(last, name, memory_fields) if last else ""
        if not message and reason != "CrashLoopBackOff":
            message = waiting.get("message") or ""
        return 3, _failure(reason, name, pod, (last or {}).get("exitCode"), message, (last or {}).get("finishedAt"))
    if (ended := state.get("terminated")) and ended.get("exitCode"):
        return 3, _ended(ended, name, pod, memory_fields)
    if last and last.get("exitCode") and not status.get("ready"):
        # Restarted after a crash and not ready (again): the crash is the best guess why.
        return 1, _ended(last, name, pod, memory_fields)
    return None


def _why_ended(terminated: dict[str, Any], container: str | None, memory_fields: Mapping[str, str]) -> str:
    if terminated.get("reason") == OOM_KILLED:
        return out_of_memory(memory_fields.get(container or ""))
    return meaningful_line(terminated.get("message"))


def _ended(
    terminated: dict[str, Any], container: str | None, pod: str, memory_fields: Mapping[str, str]
) -> dict[str, Any]:
    """The failure a container's terminated record (state or lastState) describes."""
    return _failure(
        terminated.get("reason") or "Error",
        container,
        pod,
        terminated["exitCode"],
        _why_ended(terminated, container, memory_fields),
        terminated.get("finishedAt"),
    )


def _failure(
    reason: str, container: str | None, pod: str, exit_code: int | None, message: str, time: str | None
) -> dict[str, Any]:
    out = {"reason": reason, "container": container, "pod": pod, "exitCode": exit_code, "message": message or reason}
    if time:
        out["time"] = time
    return {k: v for k, v in out.items() if v is not None}


def _pod_failures(pod: dict[str, Any], memory_fields: Mapping[str, str]) -> list[tuple[int, dict[str, Any]]]:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = meta.get("name") or ""
    found = []
    if status.get("phase") == "Failed" and status.get("reason"):  # Evicted, DeadlineExceeded, ...
        found.append((4, _failure(status["reason"], None, name, None, status.get("message") or "", None)))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
            message = cond.get("message") or ""
            found.append((2, _failure(cond["reason"], None, name, None, message, cond.get("lastTransitionTime"))))
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            if (failure := _container_failure(name, container, memory_fields)) is not None:
                found.append(failure)
    return found


def pick(pods: list[dict[str, Any]], memory_fields: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The most relevant failure among pods (wire-format dicts), or None when none of them fails.

    A pod the node gave up on (evicted) outranks a container that cannot run (waiting for a bad reason, or
    terminated with a non-zero exit code), which outranks a pod that cannot be scheduled, which outranks a
    container that crashed before and is not ready since; among equals the most recent wins. Pods being
    deleted are skipped: their containers are stopped on purpose. memory_fields names, per container, the spec
    field that sets its memory limit: the fix a container killed at that limit names.

    The result has reason, pod, message and, where they apply, container, exitCode and time (RFC 3339).
    """
    found = [
        f
        for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name") or "")
        if not (pod.get("metadata") or {}).get("deletionTimestamp")
        for f in _pod_failures(pod, memory_fields or {})
    ]
    if not found:
        return None
    return max(found, key=lambda f: (f[0], f[1].get("time") or ""))[1]


def describe(failure: dict[str, Any]) -> str:
    """One line for conditions and events, e.g. "container triton CrashLoopBackOff, exit code 1: model not found"."""
    text = f"container {failure['container']} {failure['reason']}" if "container" in failure else failure["reason"]
    if "exitCode" in failure:
        text += f", exit code {failure['exitCode']}"
    if failure["message"] != failure["reason"]:
        text += f": {failure['message']}"
    return text


def _identity(failure: dict[str, Any] | None) -> tuple[Any, ...]:
    """What makes a failure news: the reason of a crash-looping container alternates between its waiting
    reason and its last exit's while it restarts, and its time moves with every crash."""
    f = failure or {}
    return f.get("pod"), f.get("container"), f.get("exitCode"), f.get("message")


def newer(previous: dict[str, Any] | None, found: dict[str, Any] | None, now: str) -> dict[str, Any] | None:
    """The lastFailure to record when found is a failure other than previous (stamped now when it carries no
    time of its own), else None: the status keeps the failure it has, also after recovery, for reference."""
    if found is None or _identity(found) == _identity(previous):
        return None
    return {"time": now, **found}


def event(failure: dict[str, Any]) -> tuple[str, str, str]:
    """The Warning event (type, reason, message) that announces a new failure."""
    return "Warning", failure["reason"], f"pod {failure['pod']}: {describe(failure)}"
