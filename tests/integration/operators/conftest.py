"""A real kubeforge operator process against the test session's API server and MLflow."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubeforge.core import kube
from kubeforge.local.processes import free_port, spawn, terminate, wait_http


class Operator:
    """`kubeforge operator run` as a child process that tests can stop and start again."""

    def __init__(
        self,
        kubeconfig: Path,
        mlflow_url: str,
        log: Path,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        self.kubeconfig, self.mlflow_url, self.log, self.args, self.env = kubeconfig, mlflow_url, log, args, env or {}
        self.feast_dir = log.parent / "features"  # the feature store FeatureViews go to
        self.pid: int | None = None
        self.metrics_port = 0

    def start(self) -> None:
        port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBEFORGE_MLFLOW_TRACKING_URI": self.mlflow_url,
            "KUBEFORGE_SERVICE_ADDRESSING": "endpoints",  # no cluster DNS here, as in the local runtime
            "KUBEFORGE_FEAST_DIR": str(self.feast_dir),
            **self.env,
        }
        argv = [
            sys.executable,
            "-m",
            "kubeforge.cli",
            "operator",
            "run",
            "--liveness",
            f"http://127.0.0.1:{port}/healthz",
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
            *self.args,
        ]
        proc = spawn(argv, self.log, env)
        self.pid = proc.pid
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, self.log, timeout=60)

    def stop(self) -> None:
        if self.pid:
            terminate(self.pid)
            self.pid = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def operator(controlplane, crds_installed, mlflow, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(controlplane.kubeconfig, mlflow.url, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="session")
def api(controlplane) -> client.ApiClient:
    return kube.api_client(controlplane.kubeconfig)


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll check() until it returns something truthy; fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as err:
            last = err
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
