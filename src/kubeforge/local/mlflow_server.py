"""A local MLflow tracking server and model registry: sqlite backend, artifacts on disk.

Started as its own process (as in a cluster) so trainers, exporters and operators all
talk to it over HTTP exactly as they would to a shared MLflow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .processes import free_port, spawn, terminate, wait_http


@dataclass
class MLflowServer:
    """A running ``mlflow server``; ``url`` is its tracking URI."""

    data_dir: Path
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.pid)


def start(data_dir: Path, port: int | None = None, timeout: float = 90.0) -> MLflowServer:
    """Start MLflow with its store in data_dir and wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = data_dir / "mlflow.log"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runner for a local store
        "PYTHONUNBUFFERED": "1",
    }
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{data_dir / 'mlflow.db'}",
        "--artifacts-destination", str(data_dir / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = spawn(argv, log, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout)
    except BaseException:
        terminate(proc.pid)
        raise
    return MLflowServer(data_dir=data_dir, port=port, pid=proc.pid)
