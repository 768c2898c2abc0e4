"""Monitoring fixtures: a real Prometheus (Debian's) on 127.0.0.1 that scrapes given targets every second and
evaluates given rule files every second; plus the serving fixtures (Triton, gateways) to scrape."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubeforge.local.monitoring import PROMETHEUS
from kubeforge.local.processes import free_port, spawn, terminate, wait_http
from tests.integration.serving.conftest import gateway, registered, triton, triton_venv  # noqa: F401 (fixtures)

INTERVAL = "1s"


@dataclass
class Prometheus:
    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of promql now: [{metric: labels, value: [time, "value"]}]."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        resp.raise_for_status()
        return resp.json()["data"]["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts: [{labels, annotations, state, value}]."""
        resp = httpx.get(f"{self.url}/api/v1/alerts", timeout=10)
        resp.raise_for_status()
        return resp.json()["data"]["alerts"]

    def wait_for(self, what: str, found: Callable[[], Any], timeout: float = 60) -> Any:
        """found()'s first truthy answer, polled; fails naming what after timeout seconds."""
        deadline = time.monotonic() + timeout
        while not (answer := found()):
            assert time.monotonic() < deadline, f"no {what} after {timeout:g}s"
            time.sleep(0.5)
        return answer


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[dict[str, Any]], list[Path]], Prometheus]]:
    """Start Prometheus with static_configs (targets and their labels) and rule files; it stops after the test."""
    binary = shutil.which(PROMETHEUS)
    assert binary, f"{PROMETHEUS} is not installed (apt-get install prometheus, or make system-deps)"
    pids: list[int] = []

    def start(static_configs: list[dict[str, Any]], rule_files: list[Path]) -> Prometheus:
        root = tmp_path / f"prometheus{len(pids)}"
        root.mkdir()
        config = {
            "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": [str(f) for f in rule_files],
            "scrape_configs": [{"job_name": "gateways", "static_configs": static_configs}],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        argv = [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        proc = spawn(argv, root / "prometheus.log")
        pids.append(proc.pid)
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, root / "prometheus.log", timeout=60)
        return Prometheus(f"http://127.0.0.1:{port}")

    yield start
    for pid in pids:
        terminate(pid)
