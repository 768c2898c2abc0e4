"""What the runner must remember across its own restarts: which local processes belong to which pod.

Containers run in their own sessions and outlive the runner; a restarted runner reads
this file and adopts them (matching each pid's start time, so a reused pid is never
mistaken for the container) instead of starting them a second time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...core.files import replace_whole
from ..processes import alive, group_alive

STATE_FILE = "state.json"
TERMINAL = ("Succeeded", "Failed")


@dataclass
class ContainerState:
    name: str
    init: bool
    pid: int | None = None
    started: str | None = None
    """Start time of pid in clock ticks since boot (/proc/<pid>/stat), which tells a reused pid apart."""
    exit_code: int | None = None
    message: str = ""
    """Termination message of the last exit."""
    restarts: int = 0
    not_before: float = 0.0
    """Wall-clock time before which a crashed container is not restarted (back-off)."""
    probe: str | None = None
    """URL of the readiness probe, on the container's local port."""
    ready: bool = False
    started_at: str | None = None
    """RFC 3339 time the current (or last) process started, for the Pod's containerStatuses."""
    finished_at: str | None = None
    """RFC 3339 time the last process ended."""
    last_exit: dict[str, object] | None = None
    """The previous run's termination ({exitCode, reason, message, startedAt, finishedAt}), kept across a
    restart so the Pod's ``lastState.terminated`` explains a crash loop, as a kubelet's does."""


@dataclass
class PodState:
    namespace: str
    name: str
    owner_uid: str
    template_hash: str
    labels: dict[str, str]
    dir: str
    index: int = 0
    """Completion slot of a Job pod (its JOB_COMPLETION_INDEX when the Job is Indexed)."""
    indexed: bool = False
    ports: list[dict[str, object]] = field(default_factory=list)
    """Declared ports: {container, name, containerPort, local}."""
    containers: list[ContainerState] = field(default_factory=list)
    phase: str = "Pending"
    message: str = ""
    created: str = ""
    """RFC 3339 creation time: the Pod's startTime."""
    published: bool = False
    """Whether the Pod object exists in the API server: one that disappears afterwards was deleted."""
    owner: dict[str, str] = field(default_factory=dict)
    """apiVersion, kind and name of the Job or Deployment the pod belongs to."""
    annotations: dict[str, str] = field(default_factory=dict)
    """The template's annotations (prometheus.io/scrape and friends say which port serves metrics)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    @property
    def ready(self) -> bool:
        mains = [c for c in self.containers if not c.init]
        return self.phase == "Running" and all(c.ready for c in mains)


def process_start(pid: int) -> str | None:
    """The start time of pid in clock ticks since boot, or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def running(container: ContainerState) -> bool:
    """Whether the container's recorded process is still the one that was started."""
    pid = container.pid
    return pid is not None and alive(pid) and process_start(pid) == container.started


def strays(container: ContainerState) -> bool:
    """Whether processes the container started outlive its wrapper (say, the wrapper was killed).

    The wrapper leads the container's process group, so its pid names the group. While any
    member is alive the kernel does not hand that pid to a new process, so a live group
    whose leader is gone is the container's own leftovers, never someone else's.
    """
    pid = container.pid
    return pid is not None and not alive(pid) and group_alive(pid)


def _known(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """The fields of saved that cls has: a state file written by another kubeforge version still loads."""
    return {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}  # type: ignore[attr-defined]


@dataclass
class RunnerState:
    pods: dict[str, PodState] = field(default_factory=dict)
    warned: list[str] = field(default_factory=list)
    """Keys (uid:reason) of Events already recorded, so each is recorded once."""

    @classmethod
    def load(cls, directory: Path) -> RunnerState:
        path = directory / STATE_FILE
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        pods = {}
        for key, pod in raw["pods"].items():
            containers = [ContainerState(**_known(ContainerState, c)) for c in pod.pop("containers")]
            pods[key] = PodState(**_known(PodState, pod), containers=containers)
        return cls(pods=pods, warned=raw.get("warned", []))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        replace_whole(directory / STATE_FILE, json.dumps(asdict(self), indent=1))

    def of_owner(self, uid: str) -> list[PodState]:
        return [p for p in self.pods.values() if p.owner_uid == uid]
