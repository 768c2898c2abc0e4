"""A real Kubernetes control plane (etcd + kube-apiserver) on 127.0.0.1, for users and tests.

There is no kubelet and no scheduler: objects are stored, validated, defaulted and
watched exactly as in a cluster, but pods never run. That is what the operators and
the CRD schemas need, and it starts in a couple of seconds.

State (pids, ports, kubeconfig) is written to ``<data_dir>/controlplane.json`` so
that ``kubeforge controlplane status|down`` work from another process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import binaries
from .processes import alive, argv, free_port, listening, port_free, spawn, terminate, wait_http

STATE_FILE = "controlplane.json"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"


@dataclass
class ControlPlaneState:
    """What a running control plane left behind for other processes to find."""

    data_dir: str
    etcd_pid: int
    apiserver_pid: int
    etcd_port: int
    apiserver_port: int
    kubeconfig: str
    token: str

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"


def _kubeconfig(server: str, token: str, ca_pem: bytes | None) -> str:
    cluster: dict[str, object] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeforge-local", "cluster": cluster}],
        "users": [{"name": "kubeforge-admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kubeforge-local",
                "context": {"cluster": "kubeforge-local", "user": "kubeforge-admin", "namespace": "default"},
            }
        ],
        "current-context": "kubeforge-local",
    }
    return json.dumps(config, indent=2)  # JSON is YAML; no dependency needed.


class ControlPlane:
    """etcd + kube-apiserver as child processes, with a kubeconfig for an admin user.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`. ``data_dir`` keeps
    etcd's data, so objects survive a stop and start; by default a temporary directory
    is used and removed on stop.
    """

    def __init__(self, data_dir: Path | str | None = None, build: bool = True):
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="kubeforge-cp-"))
        self.build = build
        self.state: ControlPlaneState | None = None
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> ControlPlaneState:
        """Start etcd and kube-apiserver and wait until the API server is ready."""
        apiserver_bin = binaries.kube_apiserver(build=self.build)
        etcd_bin = binaries.etcd()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        existing = read_state(self.data_dir)
        if existing and status(self.data_dir)[0]:
            raise RuntimeError(
                f"a control plane is already running from {self.data_dir} (pid {existing.apiserver_pid}); "
                "run `kubeforge controlplane down` first"
            )
        if existing:
            # Half there (one process gone, or an API server that stopped listening on its way out): what is left
            # goes, the API server first, so the new etcd gets its data directory's lock.
            for pid, binary in ((existing.apiserver_pid, "kube-apiserver"), (existing.etcd_pid, "etcd")):
                if _still(pid, binary):
                    terminate(pid)
        pki = self.data_dir / "pki"
        pki.mkdir(exist_ok=True)
        sa_key = pki / "sa.key"
        if not sa_key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
        token_file = pki / "tokens.csv"
        if not token_file.exists():
            token_file.write_text(f'{secrets.token_hex(24)},kubeforge-admin,kubeforge-admin,"system:masters"\n')
            token_file.chmod(0o600)
        token = token_file.read_text().split(",", 1)[0]
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)

        etcd_port, peer_port = free_port(), free_port()
        # The API server keeps its port while it is free (its certificate stays in pki/): clients holding the
        # kubeconfig's address carry on across a restart or a stop and start.
        kept = _last_port(self.kubeconfig)
        api_port = kept if kept and port_free(kept) else free_port()
        self._etcd_port = etcd_port
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn(
            [
                str(etcd_bin),
                f"--data-dir={self.data_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # A local/test store: speed over durability on power loss.
            ],
            logs / "etcd.log",
        )
        apiserver = self._spawn(
            [
                str(apiserver_bin),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--insecure-port=0",
                f"--cert-dir={pki}",
                f"--token-auth-file={token_file}",
                "--authorization-mode=RBAC",
                # No controller manager creates ServiceAccounts or their tokens here, so the
                # admission step that requires them would refuse every Pod (as envtest does).
                "--disable-admission-plugins=ServiceAccount",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=0",
            ],
            logs / "kube-apiserver.log",
        )
        server = f"https://127.0.0.1:{api_port}"
        try:
            self._wait_ready(server, token, timeout)
        except BaseException:
            self.stop()
            raise
        ca = pki / "apiserver.crt"
        self.kubeconfig.write_text(_kubeconfig(server, token, ca.read_bytes() if ca.exists() else None))
        self.kubeconfig.chmod(0o600)
        self.state = ControlPlaneState(
            data_dir=str(self.data_dir),
            etcd_pid=etcd.pid,
            apiserver_pid=apiserver.pid,
            etcd_port=etcd_port,
            apiserver_port=api_port,
            kubeconfig=str(self.kubeconfig),
            token=token,
        )
        (self.data_dir / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))
        return self.state

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        proc = spawn(argv, log)
        self._procs.append(proc)
        return proc

    def _wait_ready(self, server: str, token: str, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        for proc, log in zip(self._procs, ("etcd.log", "kube-apiserver.log"), strict=True):
            # etcd must answer before the API server can; each failure shows its own log.
            url = f"http://127.0.0.1:{self._etcd_port}/health" if log == "etcd.log" else f"{server}/readyz"
            wait_http(url, proc, self.data_dir / "logs" / log, timeout, headers)

    def stop(self) -> None:
        """Stop both processes; remove the data directory if it was a temporary one."""
        pids = [p.pid for p in self._procs]  # started order: etcd, apiserver
        if not pids and (state := read_state(self.data_dir)):
            pids = [state.etcd_pid, state.apiserver_pid]
        for pid in reversed(pids):  # the API server first: without etcd its shutdown hangs
            terminate(pid)
        self._procs.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        self.state = None
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _last_port(kubeconfig: Path) -> int | None:
    """The API server's port in the kubeconfig of the last start, if there was one."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        return urlsplit(json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]).port
    return None


def read_state(data_dir: Path | str) -> ControlPlaneState | None:
    """The state a running control plane wrote into data_dir, or None."""
    path = Path(data_dir) / STATE_FILE
    if not path.exists():
        return None
    return ControlPlaneState(**json.loads(path.read_text()))


def status(data_dir: Path | str) -> tuple[bool, ControlPlaneState | None]:
    """(running, state) for the control plane of data_dir: both processes alive and the API server taking
    connections (one sent SIGTERM stops listening at once and can take minutes to exit)."""
    state = read_state(data_dir)
    if state is None:
        return False, None
    return alive(state.apiserver_pid) and alive(state.etcd_pid) and listening(state.apiserver_port), state


def _still(pid: int, binary: str) -> bool:
    """Whether pid is still a process of binary: a pid in an old state file may be another program's by now."""
    with contextlib.suppress(OSError):
        command = argv(pid)
        return bool(command) and alive(pid) and Path(command[0]).name == binary
    return False
