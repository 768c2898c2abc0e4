"""The life of one local pod: volumes, init containers in order, main containers, restarts, readiness.

Each container runs through a tiny ``sh`` wrapper in its own session: the wrapper writes
the exit code to a file when the program ends, so an exit that happens while the runner
is down is still known when it comes back. The wrapper leads the container's process
group, and a container ends with its whole group: a program whose wrapper was killed is
stopped too, so it cannot hold the ports its restarted self needs.

A stopped pod (``kubeforge down``) starts over from its init containers, as a kubelet does
when it recreates a pod sandbox: its emptyDir volumes are gone, and the init containers
are what fills them (a Triton pod's model repository).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from ...core.conditions import now_rfc3339
from ..processes import free_port, log_tail, spawn, terminate
from . import launch, volumes
from .executables import Executables, NotRunnable
from .snapshot import Snapshot
from .state import ContainerState, PodState, process_start, running, strays

log = logging.getLogger(__name__)

WRAPPER = 'x=$1; cd "$2" || exit 1; shift 2; "$@"; c=$?; echo $c > "$x.tmp"; mv "$x.tmp" "$x"; exit $c'
KILLED = 137  # what a kubelet reports for a container that died by SIGKILL
MAX_BACKOFF = 30.0


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def new(
    namespace: str,
    name: str,
    owner_uid: str,
    template: dict[str, Any],
    root: Path,
    index: int = 0,
    indexed: bool = False,
) -> PodState:
    """A pod record with a free loopback port for every declared container port."""
    spec = template["spec"]
    ports = [
        {"container": c["name"], "name": p.get("name", ""), "containerPort": p["containerPort"], "local": free_port()}
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for p in c.get("ports", [])
    ]
    containers = [ContainerState(c["name"], True) for c in spec.get("initContainers", [])]
    containers += [ContainerState(c["name"], False) for c in spec["containers"]]
    pod_dir = root / namespace / name
    pod_dir.mkdir(parents=True, exist_ok=True)
    labels = dict(template.get("metadata", {}).get("labels", {}))
    return PodState(
        namespace,
        name,
        owner_uid,
        template_hash(template),
        labels,
        str(pod_dir),
        index,
        indexed,
        ports,
        containers,
        created=now_rfc3339(),
        annotations=dict(template.get("metadata", {}).get("annotations") or {}),
    )


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(x for x in [*spec.get("initContainers", []), *spec["containers"]] if x["name"] == name)


def log_path(pod: PodState, container: str) -> Path:
    return Path(pod.dir) / f"{container}.log"


def _exit_file(pod: PodState, container: str) -> Path:
    return Path(pod.dir) / f"{container}.exit"


def _start(pod: PodState, c: ContainerState, spec: dict[str, Any], snapshot: Snapshot, exe: Executables) -> None:
    run = launch.build(pod, _container(spec, c.name), snapshot, exe)
    for stale in (_exit_file(pod, c.name), launch.termination_log(pod, c.name)):
        stale.unlink(missing_ok=True)
    log_file = log_path(pod, c.name)
    proc = spawn(["/bin/sh", "-c", WRAPPER, "sh", str(_exit_file(pod, c.name)), pod.dir, *run.argv], log_file, run.env)
    if c.exit_code is not None:
        c.last_exit = terminated(c)
    c.pid, c.started, c.exit_code, c.probe, c.ready = proc.pid, process_start(proc.pid), None, run.probe, False
    c.started_at, c.finished_at = now_rfc3339(), None
    log.info("%s: started container %s (pid %d), log %s", pod.key, c.name, proc.pid, log_file)


def _termination_message(pod: PodState, c: ContainerState, container: dict[str, Any]) -> str:
    message = ""
    with contextlib.suppress(OSError):
        message = launch.termination_log(pod, c.name).read_text(errors="replace").strip()
    if not message and c.exit_code and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        message = log_tail(log_path(pod, c.name), 2048).strip()
    return message


def _observe(pod: PodState, c: ContainerState, spec: dict[str, Any], restart: bool) -> None:
    """Record the exit of a container whose process is gone."""
    if c.pid is None or running(c):
        return
    if strays(c):
        log.warning("%s: container %s's wrapper is gone but its processes are not; stopping them", pod.key, c.name)
        terminate(c.pid)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(c.pid, os.WNOHANG)
    try:
        c.exit_code = int(_exit_file(pod, c.name).read_text().strip())
    except (OSError, ValueError):
        c.exit_code = KILLED  # the wrapper itself was killed
    c.message = _termination_message(pod, c, _container(spec, c.name))
    c.pid, c.ready, c.finished_at = None, False, now_rfc3339()
    log.info("%s: container %s exited with code %d", pod.key, c.name, c.exit_code)
    if restart and (c.exit_code or not c.init):  # a finished init container is done, not crashed
        c.not_before = time.time() + min(MAX_BACKOFF, 2.0**c.restarts)


def terminated(c: ContainerState) -> dict[str, object]:
    """The container's last exit as a kubelet reports it (``state.terminated`` / ``lastState.terminated``)."""
    return {
        "exitCode": c.exit_code,
        "reason": "Completed" if c.exit_code == 0 else "Error",
        **({"message": c.message} if c.message else {}),
        "startedAt": c.started_at,
        "finishedAt": c.finished_at,
    }


def failure(c: ContainerState) -> str:
    text = f"container {c.name} exited with code {c.exit_code}"
    return f"{text}: {c.message}" if c.message else text


def _probe(c: ContainerState) -> bool:
    if c.probe is None:
        return True
    try:
        with urllib.request.urlopen(c.probe, timeout=0.5) as resp:
            return 200 <= resp.status < 400
    except OSError:
        return False


def step(pod: PodState, spec: dict[str, Any], snapshot: Snapshot, exe: Executables, restart: bool) -> None:
    """Advance pod by one tick: start what is due, record exits, restart (when restart) and probe."""
    if pod.finished:
        return
    try:
        volumes.sync(Path(pod.dir), spec.get("volumes", []), pod.namespace, snapshot)
        for c in pod.containers:
            _observe(pod, c, spec, restart)
        for c in (c for c in pod.containers if c.init):
            if c.exit_code == 0:
                continue
            if c.exit_code is not None and not restart:
                pod.phase, pod.message = "Failed", "init " + failure(c)
            elif c.exit_code is not None and time.time() >= c.not_before:
                c.restarts += 1  # restartPolicy Always: a failed init container retries with back-off
                _start(pod, c, spec, snapshot, exe)
            elif c.pid is None and c.exit_code is None:
                _start(pod, c, spec, snapshot, exe)
            return
        mains = [c for c in pod.containers if not c.init]
        for c in mains:
            if c.pid is None and c.exit_code is None:
                _start(pod, c, spec, snapshot, exe)
            elif c.pid is None and restart and time.time() >= c.not_before:
                c.restarts += 1
                _start(pod, c, spec, snapshot, exe)
    except volumes.MissingSource as err:
        pod.message = str(err)  # waits, as a kubelet does, until the source exists
        return
    except NotRunnable as err:
        pod.phase, pod.message = "Failed", str(err)
        return
    pod.message = ""
    if not restart and all(c.exit_code is not None for c in mains):
        failed = next((c for c in mains if c.exit_code), None)
        pod.phase, pod.message = ("Failed", failure(failed)) if failed else ("Succeeded", "")
        return
    pod.phase = "Running"
    for c in mains:
        c.ready = c.pid is not None and _probe(c)


def stop(pod: PodState) -> None:
    """Stop every process of pod (containers and their children) and drop its volumes.

    A pod that had not finished starts over from its first init container when it runs
    again: its volumes are gone with the sandbox.
    """
    for c in pod.containers:
        if running(c) or strays(c):
            terminate(c.pid)  # type: ignore[arg-type]
        c.pid, c.ready = None, False
    shutil.rmtree(Path(pod.dir) / "volumes", ignore_errors=True)
    if not pod.finished:
        for c in pod.containers:
            if c.exit_code is not None:
                c.last_exit = terminated(c)
            c.exit_code, c.not_before = None, 0.0
        pod.phase, pod.message = "Pending", ""
