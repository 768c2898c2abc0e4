"""`kubeforge up` / `down` / `status`: the whole platform on one machine, in one data directory.

Parts, in start order: the control plane and MLflow (concurrently: MLflow's ~10 s start
dominates), the CRDs, the operators, Alertmanager, Prometheus and the workload runner. A
part that is already running is reused, so a warm ``up`` takes a second or two; a part
that a freshly started part's address feeds (the operators read the kubeconfig and
MLflow's URL, Prometheus scrapes the operators and alerts Alertmanager) is restarted with
it. Pids and ports go to ``<data dir>/local.json`` for ``status`` and ``down``.

Last, ``up`` starts the supervisor (``supervisor.py``), which does what a kubelet and
systemd do for a cluster's own parts: a part that stops (kill -9, a crash) is started
again the way ``up`` starts it. ``up``, ``down`` and the supervisor's restarts take one
lock on the data directory, so they never interleave.

An ``up`` that fails stops every part it started itself and says which part failed, so
nothing is left running that ``down`` would not know of. ``down`` stops the parts it knows
and then any process still running from this data directory (a part started by an
``up`` that was killed, a container whose wrapper died), so it leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from ..core.files import replace_whole
from . import mlflow_server, monitoring, supervisor
from .controlplane import ControlPlane, ControlPlaneState
from .controlplane import read_state as read_controlplane
from .controlplane import status as controlplane_status
from .processes import alive, find, free_port, port_free, spawn, terminate, wait_http

STATE_FILE = "local.json"
LOCK_FILE = "up.lock"
CRD_ESTABLISHED_TIMEOUT = 30.0
HUNG_GRACE = 5.0
"""Seconds a hung part is given to exit on SIGTERM before SIGKILL (a hung process may never act on SIGTERM)."""


class UpFailed(RuntimeError):
    """A part of the local platform did not start; what this ``up`` started was stopped again."""


def default_data_dir() -> Path:
    """$KUBEFORGE_DATA_DIR, else $XDG_DATA_HOME/kubeforge, else ~/.local/share/kubeforge."""
    if explicit := os.environ.get("KUBEFORGE_DATA_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "kubeforge"


@dataclass
class LocalState:
    """The processes `kubeforge up` started besides the control plane (which keeps its own state)."""

    mlflow_pid: int = 0
    mlflow_port: int = 0
    operator_pid: int = 0
    operator_port: int = 0
    operator_metrics_port: int = 0
    runner_pid: int = 0
    runner_port: int = 0  # its health URL's
    alertmanager_pid: int = 0
    alertmanager_port: int = 0
    prometheus_pid: int = 0
    prometheus_port: int = 0
    supervisor_pid: int = 0
    listen_address: str = "127.0.0.1"  # the runner's, for the supervisor's restarts

    @classmethod
    def read(cls, data_dir: Path) -> LocalState:
        path = data_dir / STATE_FILE
        known = set(cls.__dataclass_fields__)
        saved = json.loads(path.read_text()) if path.exists() else {}
        return cls(**{k: v for k, v in saved.items() if k in known})

    def write(self, data_dir: Path) -> None:
        replace_whole(data_dir / STATE_FILE, json.dumps(asdict(self), indent=2))

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"


@dataclass
class Layout:
    """Where each part keeps its data and logs under the data directory."""

    root: Path

    @property
    def controlplane(self) -> Path:
        return self.root / "controlplane"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.controlplane / "kubeconfig"

    @property
    def prometheus(self) -> Path:
        return self.root / "prometheus"

    @property
    def alertmanager(self) -> Path:
        return self.root / "alertmanager"

    @property
    def workloads(self) -> Path:
        from .runner.loop import state_dir

        return state_dir(self.root) / "pods"


@contextlib.contextmanager
def _exclusive(layout: Layout) -> Iterator[None]:
    """One `up`, `down` or supervisor restart at a time in a data directory. The lock goes with its process, so
    one killed while holding it blocks nobody."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with (layout.root / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _running(pid: int) -> bool:
    return pid > 0 and alive(pid)  # pid 0 would be our own process group


def _stop(pid: int) -> None:
    if pid > 0:
        terminate(pid)


def _controlplane(layout: Layout) -> tuple[ControlPlaneState, bool]:
    """(state, freshly started)."""
    running, state = controlplane_status(layout.controlplane)
    if running and state:
        return state, False
    return ControlPlane(layout.controlplane).start(), True


def _mlflow(layout: Layout, saved: LocalState) -> tuple[int, int, bool]:
    """(pid, port, freshly started); keeps its last port when free, so tracking URIs stay valid."""
    if _running(saved.mlflow_pid):
        return saved.mlflow_pid, saved.mlflow_port, False
    _stop(saved.mlflow_pid)  # the server's workers outlive a killed `mlflow server` and keep its port
    port = saved.mlflow_port if saved.mlflow_port and port_free(saved.mlflow_port) else None
    server = mlflow_server.start(layout.mlflow, port)
    return server.pid, server.port, True


def _apply_crds(kubeconfig: Path) -> None:
    from ..api import crdgen  # here, as the Kubernetes client: the supervisor imports this module to check parts
    from ..core import kube

    api = kube.api_client(kubeconfig)
    crds = [*(crdgen.crd(kind) for kind in crdgen.KINDS), monitoring.PROMETHEUS_RULE_CRD]
    names = [kube.apply(api, crd)["metadata"]["name"] for crd in crds]
    deadline = time.monotonic() + CRD_ESTABLISHED_TIMEOUT
    while names and time.monotonic() < deadline:
        crd = kube.get(api, "apiextensions.k8s.io/v1", "CustomResourceDefinition", names[0], None)  # type: ignore[arg-type]
        conditions = (crd or {}).get("status", {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            names.pop(0)
        else:
            time.sleep(0.1)
    if names:
        raise TimeoutError(f"CRDs not established after {CRD_ESTABLISHED_TIMEOUT:.0f}s: {names}")


def _module(*argv: str) -> list[str]:
    return [sys.executable, "-m", *argv]


def _operator(layout: Layout, mlflow_url: str) -> tuple[int, int, int]:
    """(pid, health port, metrics port) of a fresh operator process."""
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "KUBEFORGE_MLFLOW_TRACKING_URI": mlflow_url,
        "KUBEFORGE_SERVICE_ADDRESSING": "endpoints",
        "KUBEFORGE_FEAST_DIR": str(layout.root / "features"),
    }
    argv = _module("kubeforge.cli", "operator", "run", "--kubeconfig", str(layout.kubeconfig))
    argv += ["--liveness", f"http://127.0.0.1:{port}/healthz"]
    argv += ["--metrics-address", f"127.0.0.1:{metrics}"]
    log = layout.logs / "operator.log"
    proc = spawn(argv, log, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=60)
    except BaseException:
        terminate(proc.pid)
        raise
    return proc.pid, port, metrics


def _runner(layout: Layout, listen_address: str) -> tuple[int, int]:
    """(pid, health port) of a fresh runner."""
    port = free_port()
    argv = _module("kubeforge.local.runner", "--kubeconfig", str(layout.kubeconfig), "--data-dir", str(layout.root))
    argv += ["--listen-address", listen_address, "--prometheus-dir", str(layout.prometheus)]
    argv += ["--health-address", f"127.0.0.1:{port}"]
    return spawn(argv, layout.logs / "runner.log", {**os.environ, "PYTHONUNBUFFERED": "1"}).pid, port


def _supervisor(layout: Layout) -> int:
    argv = _module("kubeforge.local.supervisor", "--data-dir", str(layout.root))
    return spawn(argv, layout.logs / "supervisor.log", {**os.environ, "PYTHONUNBUFFERED": "1"}).pid


def up(data_dir: Path, listen_address: str = "127.0.0.1") -> tuple[ControlPlaneState, LocalState]:
    """Start (or reuse) every part and the supervisor; returns where they are. Raises UpFailed, having stopped
    what it started."""
    layout = Layout(data_dir.resolve())
    with _exclusive(layout):
        controlplane, state = _start(layout, listen_address)
        if not _running(state.supervisor_pid):
            state.supervisor_pid = _supervisor(layout)
            state.write(layout.root)
    return controlplane, state


class Part(NamedTuple):
    """A part of the local platform as `status` shows it, with its process ids (a part started again has new ones)
    and the URL that answers 200 while it is well."""

    name: str
    running: bool
    where: str
    pids: object
    health: str = ""


def parts(data_dir: Path, state: LocalState | None = None) -> list[Part]:
    """Each part of the platform, the supervisor aside, in start order; from local.json unless given as state."""
    return _parts(Layout(data_dir.resolve()), state)


def stop_hung(data_dir: Path, part: Part) -> bool:
    """Stop a part that runs but does not answer its health URL, so that the supervisor starts it again; False when
    an `up` or a restart has replaced it since it was checked."""
    layout = Layout(data_dir.resolve())
    with _exclusive(layout):
        now = {p.name: p for p in _parts(layout)}[part.name]
        if not now.running or now.pids != part.pids:
            return False
        if part.name == "control plane":
            ControlPlane(layout.controlplane).stop()
        elif isinstance(part.pids, int) and part.pids > 0:  # 0 would be our own process group
            terminate(part.pids, timeout=HUNG_GRACE)
        return True


def supervised(data_dir: Path) -> bool:
    """Whether the supervisor runs, to start again what stops."""
    return _running(LocalState.read(data_dir.resolve()).supervisor_pid)


def start_stopped(data_dir: Path, starting: Callable[[list[str]], None]) -> list[str]:
    """The supervisor's restart: the parts found stopped started again as `up` starts them, told to starting(names)
    first; returns the names of the parts started (with those their address feeds), none when every part runs.
    Raises UpFailed as `up` does."""
    layout = Layout(data_dir.resolve())
    with _exclusive(layout):
        before = _parts(layout)
        if not (names := [part.name for part in before if not part.running]):
            return []
        starting(names)
        controlplane, state = _start(layout, LocalState.read(layout.root).listen_address)
        after = _parts(layout, state, (True, controlplane))
        return [new.name for old, new in zip(before, after, strict=True) if new.pids != old.pids]


PART_PROGRAMS = ("etcd", "kube-apiserver", *monitoring.PROGRAMS)
PART_MODULES = (("mlflow", "server"), ("kubeforge.cli", "operator", "run"), ("kubeforge.local.runner",))
"""How the processes of the platform's parts (the supervisor aside) are told from workloads and kubeforge commands:
by program, or by the Python module run and its first arguments."""
WORKLOAD_PROGRAMS = ("sh", "tritonserver", "triton_python_backend_stub")
"""The programs of the runner's containers besides Python ones: their wrappers and Triton."""


def _names(root: str, argv: list[str]) -> bool:
    """Whether a command line names a path under the data directory root: how its processes are told from a user's."""
    return any(root in arg for arg in argv[1:])


def _strays(layout: Layout, state: LocalState) -> list[int]:
    """Processes of the platform's parts from this data directory that neither local.json nor the control plane's
    state records: what an `up` or a restart killed before it recorded them left. Left running, they hold what a new
    start needs (etcd's data directory, MLflow's port) or run twice (an operator)."""
    root = str(layout.root)
    recorded = {state.mlflow_pid, state.operator_pid, state.alertmanager_pid, state.prometheus_pid, state.runner_pid}
    if cp := read_controlplane(layout.controlplane):
        recorded |= {cp.etcd_pid, cp.apiserver_pid}

    def part(argv: list[str]) -> bool:
        if not _names(root, argv):
            return False
        if (program := Path(argv[0]).name) in PART_PROGRAMS:
            return True
        module = argv[argv.index("-m") + 1 :] if program.startswith("python") and "-m" in argv else []
        return any(tuple(module[: len(prefix)]) == prefix for prefix in PART_MODULES)

    strays = []
    for pid in find(part):
        with contextlib.suppress(OSError):  # gone meanwhile
            if os.getpgid(pid) not in recorded:  # a recorded part's own children (MLflow's workers) are its
                strays.append(pid)
    return strays


def _start(layout: Layout, listen_address: str) -> tuple[ControlPlaneState, LocalState]:
    from .runner.loop import scrape_targets  # here: the runner's modules load the Kubernetes client (see _apply_crds)

    layout.logs.mkdir(parents=True, exist_ok=True)
    state = LocalState.read(layout.root)
    for pid in _strays(layout, state):
        _stop(pid)
    state.listen_address = listen_address
    started: list[tuple[str, Callable[[], None]]] = []  # (part, how to stop it), in start order
    failed: list[tuple[str, BaseException]] = []
    part = "control plane"
    try:
        with ThreadPoolExecutor(2) as pool:
            cp_future, mlflow_future = pool.submit(_controlplane, layout), pool.submit(_mlflow, layout, state)
            failures = {name: f.exception() for name, f in (("control plane", cp_future), ("MLflow", mlflow_future))}
        if failures["MLflow"] is None:
            state.mlflow_pid, state.mlflow_port, mlflow_fresh = mlflow_future.result()
            state.write(layout.root)
            if mlflow_fresh:
                started.append(("MLflow", lambda: _stop(state.mlflow_pid)))
        if failures["control plane"] is None:
            controlplane, cp_fresh = cp_future.result()
            if cp_fresh:
                started.append(("control plane", ControlPlane(layout.controlplane).stop))
        failed = [(name, err) for name, err in failures.items() if err is not None]
        if failed:
            part = " and ".join(name for name, _ in failed)
            raise failed[0][1]
        part = "CRDs"
        _apply_crds(layout.kubeconfig)
        part = "operators"
        if cp_fresh or mlflow_fresh or not _running(state.operator_pid):
            _stop(state.operator_pid)
            state.operator_pid, state.operator_port, state.operator_metrics_port = _operator(layout, state.mlflow_url)
            state.write(layout.root)
            started.append(("operators", lambda: _stop(state.operator_pid)))
            _stop(state.prometheus_pid)  # its configuration names the operators' metrics port
        part = "Alertmanager"
        if not _running(state.alertmanager_pid):
            state.alertmanager_pid, state.alertmanager_port = monitoring.start_alertmanager(
                layout.alertmanager, layout.logs
            )
            state.write(layout.root)
            started.append(("Alertmanager", lambda: _stop(state.alertmanager_pid)))
            _stop(state.prometheus_pid)
        part = "Prometheus"
        if not _running(state.prometheus_pid):
            state.prometheus_pid, state.prometheus_port = monitoring.start_prometheus(
                layout.prometheus,
                layout.logs,
                state.operator_metrics_port,
                state.alertmanager_port,
                scrape_targets(layout.root),
            )
            state.write(layout.root)
            started.append(("Prometheus", lambda: _stop(state.prometheus_pid)))
        part = "runner"
        if cp_fresh or not _running(state.runner_pid):
            _stop(state.runner_pid)
            state.runner_pid, state.runner_port = _runner(layout, listen_address)
            state.write(layout.root)
    except Exception as err:
        for _, stop in reversed(started):
            stop()
        names = [name for name, _ in started]
        for name, key in (
            ("MLflow", "mlflow_pid"),
            ("operators", "operator_pid"),
            ("Alertmanager", "alertmanager_pid"),
            ("Prometheus", "prometheus_pid"),
        ):
            if name in names:
                setattr(state, key, 0)
        state.write(layout.root)
        why = "; ".join(f"{name}: {e}" for name, e in failed) if len(failed) > 1 else str(err)
        raise UpFailed(
            f"{part} failed to start: {why}\n"
            f"Stopped what this `up` had started ({', '.join(names) or 'nothing'}). Logs: {layout.logs}"
        ) from err
    return controlplane, state


def status(data_dir: Path) -> list[tuple[str, bool, str]]:
    """(part, running, where) for each part in start order, the supervisor last."""
    layout = Layout(data_dir.resolve())
    state = LocalState.read(layout.root)
    where = f"pid {state.supervisor_pid}, log {layout.logs / 'supervisor.log'}"
    if last := supervisor.last(layout.root):
        where += f"; {last}"
    parts = [(part.name, part.running, part.where) for part in _parts(layout, state)]
    return [*parts, ("supervisor", _running(state.supervisor_pid), where)]


def _parts(
    layout: Layout, state: LocalState | None = None, controlplane: tuple[bool, ControlPlaneState | None] | None = None
) -> list[Part]:
    """Each part of the platform, the supervisor aside, in start order; from local.json and the control plane's
    state unless given."""
    state = state or LocalState.read(layout.root)
    cp_running, cp = controlplane or controlplane_status(layout.controlplane)
    logs = layout.logs

    def process(name: str, pid: int, where: str, health: str = "") -> Part:
        return Part(name, _running(pid), where, pid, health)

    return [
        Part(
            "control plane",
            cp_running,
            f"{cp.server}, kubeconfig {cp.kubeconfig}" if cp else "not started",
            cp and (cp.etcd_pid, cp.apiserver_pid),
            f"{cp.server}/livez" if cp else "",  # its etcd check included
        ),
        process(
            "MLflow",
            state.mlflow_pid,
            state.mlflow_url if state.mlflow_port else "not started",
            f"{state.mlflow_url}/health",
        ),
        process(
            "operators",
            state.operator_pid,
            f"pid {state.operator_pid}, log {logs / 'operator.log'}",
            f"http://127.0.0.1:{state.operator_port}/healthz",
        ),
        process(
            "Alertmanager",
            state.alertmanager_pid,
            state.alertmanager_url if state.alertmanager_port else "-",
            f"{state.alertmanager_url}/-/healthy",
        ),
        process(
            "Prometheus",
            state.prometheus_pid,
            state.prometheus_url if state.prometheus_port else "-",
            f"{state.prometheus_url}/-/healthy",
        ),
        process(
            "runner",
            state.runner_pid,
            f"pid {state.runner_pid}, log {logs / 'runner.log'}",
            f"http://127.0.0.1:{state.runner_port}/healthz" if state.runner_port else "",  # none from older releases
        ),
    ]


def leftovers(data_dir: Path) -> list[int]:
    """Processes still running from data_dir: the servers and containers of the local runtime.

    They are recognised by their command line, which names a path under the data directory
    (etcd's and MLflow's stores, the API server's certificates, the runner's data directory,
    a container's pod directory), and by their program, so a user's editor or `tail -f` of
    a log there is never among them.
    """
    root = str(data_dir.resolve())
    programs = (*PART_PROGRAMS, *WORKLOAD_PROGRAMS)

    def ours(argv: list[str]) -> bool:
        program = Path(argv[0]).name
        if program not in programs and not (program.startswith("python") and "-m" in argv):
            return False
        return _names(root, argv)

    return find(ours)


def down(data_dir: Path) -> int:
    """Stop everything `up` started, workloads first; data stays. Returns how many workload pods were stopped."""
    from .runner import stop_workloads  # here, as in _start

    layout = Layout(data_dir.resolve())
    with _exclusive(layout):  # a restart under way ends first, so every part it started is in local.json
        state = LocalState.read(layout.root)
        _stop(state.supervisor_pid)  # first, so it does not start again what is stopped next
        _stop(state.runner_pid)  # then the runner, so it does not restart the workloads stopped next
        stopped = stop_workloads(layout.root)
        _stop(state.operator_pid)
        _stop(state.prometheus_pid)
        _stop(state.alertmanager_pid)
        _stop(state.mlflow_pid)
        ControlPlane(layout.controlplane).stop()
        for pid in leftovers(layout.root):
            _stop(pid)
        LocalState(mlflow_port=state.mlflow_port).write(layout.root)  # the next `up` keeps MLflow's URL
    return stopped
