"""A canary the gateway knows is down still pays for the requests routed around it.

The gateway runs as its own process with nothing listening behind either version, so every
request finds the canary not ready before any try could be made.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.local.processes import free_port, spawn, terminate, wait_http
from kubeforge.operators.deployment import analysis as an

BODY = b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}'


@pytest.fixture
def dead_url() -> Iterator[str]:
    """An address that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def gateway(tmp_path: Path, dead_url: str) -> Iterator[str]:
    routes = tmp_path / "routes.yaml"
    versions = [
        {"version": "1", "role": "stable", "url": dead_url, "weight": 0},
        {"version": "2", "role": "canary", "url": dead_url, "weight": 100},
    ]
    routes.write_text(yaml.safe_dump({"models": {"clf": {"versions": versions}}}))
    port = free_port()
    argv = [sys.executable, "-m", "kubeforge.serving", "gateway", "--routes", str(routes), "--port", str(port)]
    proc = spawn(argv, tmp_path / "gateway.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/health/live", proc, tmp_path / "gateway.log", timeout=60)
        yield url
    finally:
        terminate(proc.pid)


def counter(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_requests_routed_around_an_unready_canary_count_in_its_error_rate(gateway: str) -> None:
    with httpx.Client(base_url=gateway) as client:
        statuses = [client.post("/v2/models/clf/infer", content=BODY).status_code for _ in range(20)]
        text = client.get("/metrics").text
    assert statuses == [503] * 20, "with no version ready the caller is told so"
    canary = {"model": "clf", "version": "2"}
    assert counter(text, "kubeforge_fallbacks_total", reason="not_ready", **canary) == 20
    assert counter(text, "kubeforge_upstream_requests_total", outcome="not_ready", **canary) == 20
    assert counter(text, "kubeforge_upstream_requests_total", outcome="not_ready", model="clf", version="1") == 20
    interval = an.parse(text, "clf", "2").minus(an.Snapshot())
    assert an.builtin("error-rate", interval, 20) == 1.0
