"""Fixtures that start real servers on 127.0.0.1: one of each per test session.

They stop their processes when the session ends, failed tests included.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeforge.local import mlflow_server
from kubeforge.local.controlplane import ControlPlane
from kubeforge.local.processes import spawn, terminate

REPO = Path(__file__).resolve().parents[1]


class Kubectl:
    """kubectl bound to one kubeconfig; returns CompletedProcess so tests can read stderr."""

    def __init__(self, kubeconfig: Path):
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", *args], input=input, env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real kube-apiserver + etcd for the whole test session."""
    with ControlPlane(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def kubectl(controlplane: ControlPlane) -> Kubectl:
    return Kubectl(controlplane.kubeconfig)


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl) -> None:
    """The committed CRDs, applied with kubectl and established."""
    from kubeforge.api import crdgen

    kubectl("apply", "-f", str(REPO / "crds"))
    names = [f"crd/{kind.crd.crd_name}" for kind in crdgen.KINDS]
    # Polled rather than `kubectl wait`, which fails outright when asked before the API server
    # has written the CRDs' first status ("status.conditions accessor error"); so does jsonpath,
    # whose failures here only mean "not yet".
    deadline = time.monotonic() + 60
    jsonpath = "jsonpath={.items[*].status.conditions[?(@.type=='Established')].status}"
    while kubectl("get", *names, "-o", jsonpath, check=False).stdout.split().count("True") < len(names):
        assert time.monotonic() < deadline, f"CRDs not established after 60s: {names}"
        time.sleep(0.2)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> str:
    """A fresh namespace per test (namespaces are never reused, so tests cannot see each other's objects)."""
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    name = f"{name}-{os.urandom(3).hex()}"
    kubectl("create", "namespace", name)
    return name


@pytest.fixture(scope="session")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mlflow_server.MLflowServer]:
    """A real MLflow tracking server and registry (sqlite + local artifacts)."""
    server = mlflow_server.start(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


RUNNER_NAMESPACE_LABEL = "kubeforge.dev/local-runner=enabled"


class RunnerProcess:
    """The local workload runner as a child process that tests can kill and start again.

    It only runs workloads in namespaces labelled RUNNER_NAMESPACE_LABEL (see the
    ``runner_namespace`` fixture), so tests that play the kubelet themselves keep theirs.
    """

    def __init__(self, kubeconfig: Path, data_dir: Path):
        self.kubeconfig, self.data_dir = kubeconfig, data_dir
        self.log = data_dir / "runner.log"
        self.pid: int | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "kubeforge.local.runner", "--kubeconfig", str(self.kubeconfig)]
        argv += ["--data-dir", str(self.data_dir), "--interval", "0.2", "--namespace-selector", RUNNER_NAMESPACE_LABEL]
        self.pid = spawn(argv, self.log, {**os.environ, "PYTHONUNBUFFERED": "1"}).pid

    def stop(self) -> None:
        if self.pid:
            terminate(self.pid)
            self.pid = None


@pytest.fixture(scope="session")
def runner(controlplane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerProcess]:
    from kubeforge.local.runner import stop_workloads

    proc = RunnerProcess(controlplane.kubeconfig, tmp_path_factory.mktemp("runner"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        stop_workloads(proc.data_dir)


@pytest.fixture
def runner_namespace(namespace: str, kubectl: Kubectl, runner: RunnerProcess) -> Iterator[str]:
    """A fresh namespace whose kubeforge workloads the local runner runs while the test does."""
    with runner_enabled(kubectl, namespace):
        yield namespace


@contextlib.contextmanager
def runner_enabled(kubectl: Kubectl, namespace: str) -> Iterator[None]:
    """Opt namespace in to the shared runner; opting out afterwards stops its workloads (Tritons, gateways),
    so a test session does not carry every earlier test's processes along."""
    kubectl("label", "namespace", namespace, RUNNER_NAMESPACE_LABEL)
    try:
        yield
    finally:
        kubectl("label", "namespace", namespace, RUNNER_NAMESPACE_LABEL.split("=")[0] + "-", check=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis (Debian's redis-server) on a free 127.0.0.1 port, in memory only; its redis:// URL."""
    import shutil
    import time

    import redis

    from kubeforge.local.processes import free_port

    server = shutil.which("redis-server")
    assert server, "redis-server not found: run `make system-deps` (Debian package redis-server)"
    port = free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = spawn(argv, log)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        terminate(proc.pid)


@contextlib.contextmanager
def prometheus_rules_kind(api) -> Iterator[None]:
    """The cluster serves PrometheusRules (the CRD the local platform installs) while inside; afterwards it does not
    again, as the other tests expect of the shared API server."""
    from kubernetes import client

    from kubeforge.local.monitoring import PROMETHEUS_RULE_CRD

    ext, name = client.ApiextensionsV1Api(api), PROMETHEUS_RULE_CRD["metadata"]["name"]

    def established() -> bool:
        found = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in found.status.conditions or [])

    def served() -> bool:
        return name in {c.metadata.name for c in ext.list_custom_resource_definition().items}

    ext.create_custom_resource_definition(PROMETHEUS_RULE_CRD)
    try:
        _until(established, "the PrometheusRule CRD established")
        yield
    finally:
        ext.delete_custom_resource_definition(name)
        _until(lambda: not served(), "the PrometheusRule CRD gone")


def _until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout:g}s"
        time.sleep(0.2)
