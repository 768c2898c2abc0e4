"""A real local workload runner process against the test session's API server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeforge.local.processes import spawn, terminate


class RunnerProcess:
    """`python -m kubeforge.local.runner` as a child process that tests can kill and start again."""

    def __init__(self, kubeconfig: Path, data_dir: Path):
        self.kubeconfig, self.data_dir = kubeconfig, data_dir
        self.log = data_dir / "runner.log"
        self.pid: int | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "kubeforge.local.runner", "--kubeconfig", str(self.kubeconfig)]
        argv += ["--data-dir", str(self.data_dir), "--interval", "0.2"]
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
