"""What `kubeforge status` and a stopped demo say of the supervisor's restarts (its record in the data directory)."""

from __future__ import annotations

import http.server
import itertools
import socket
import subprocess
import threading
import time
from pathlib import Path

from kubeforge.local import runtime, supervisor


def test_status_says_the_last_step_of_a_restart_and_why_one_failed(tmp_path: Path) -> None:
    assert supervisor.last(tmp_path) == ""
    supervisor.record(tmp_path, ["Prometheus"], supervisor.STARTING)
    assert supervisor.last(tmp_path).startswith("starting Prometheus since ")
    supervisor.record(tmp_path, ["Prometheus"], "Prometheus failed to start: exited with code 2\n<its log>")
    failed = supervisor.last(tmp_path)
    assert "could not start Prometheus at " in failed and "(tries again)" in failed
    assert failed.endswith("Prometheus failed to start: exited with code 2")  # the first line; the log has the rest
    supervisor.record(tmp_path, ["Prometheus", "runner"], supervisor.STARTED)
    assert supervisor.last(tmp_path).startswith("started Prometheus, runner again at ")


def test_restarts_since_a_time_count_only_the_parts_that_started(tmp_path: Path) -> None:
    supervisor.record(tmp_path, ["MLflow"], supervisor.STARTED)
    since = time.time()
    supervisor.record(tmp_path, ["control plane", "operators"], supervisor.STARTING)
    supervisor.record(tmp_path, ["control plane"], "control plane failed to start: etcd exited")
    assert supervisor.restarted_since(tmp_path, since) == []
    supervisor.record(tmp_path, ["control plane", "operators", "runner"], supervisor.STARTED)
    supervisor.record(tmp_path, ["operators"], supervisor.STARTED)
    assert supervisor.restarted_since(tmp_path, since) == ["control plane", "operators", "runner"]


def test_the_record_keeps_the_last_restarts_only(tmp_path: Path) -> None:
    for i in range(supervisor.KEPT + 5):
        supervisor.record(tmp_path, [f"part {i}"], supervisor.STARTED)
    assert supervisor.restarted_since(tmp_path, 0) == [f"part {i}" for i in range(5, supervisor.KEPT + 5)]


def test_a_part_that_keeps_stopping_waits_longer_each_time_up_to_a_bound() -> None:
    waits = [supervisor.delay(n) for n in range(10)]
    assert waits[0] == 0  # the first restart at once
    assert all(a < b for a, b in itertools.pairwise(waits[:6]))
    assert waits[-1] == waits[6] == max(supervisor.BACKOFF)


def test_a_part_that_runs_but_does_not_answer_is_stopped_after_failures_in_a_row_and_status_says_why(
    tmp_path: Path, monkeypatch
) -> None:
    """A real hung part: a process whose health port takes connections and never answers (what SIGSTOP leaves)."""
    monkeypatch.setattr(supervisor, "PROBE_TIMEOUT", 0.2)
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        operator = subprocess.Popen(["sleep", "300"], start_new_session=True)
        runtime.LocalState(operator_pid=operator.pid, operator_port=hung.getsockname()[1]).write(tmp_path)
        probes = supervisor.Probes(tmp_path)
        for _ in range(supervisor.PROBE_FAILURES - 1):
            probes.due = 0
            probes.check(runtime.parts(tmp_path))
        assert operator.poll() is None  # not yet: a slow answer now and then is no hang
        probes.due = 0
        probes.check(runtime.parts(tmp_path))
        assert operator.wait(timeout=10) is not None
    said = supervisor.last(tmp_path)
    assert said.startswith("stopped operators at ") and "did not answer http://127.0.0.1:" in said, said
    assert f"{supervisor.PROBE_FAILURES} times in a row: " in said and "timed out" in said, said
    supervisor.record(tmp_path, ["operators"], supervisor.STARTING)
    supervisor.record(tmp_path, ["operators", "Prometheus"], supervisor.STARTED)
    assert supervisor.last(tmp_path).startswith("started operators, Prometheus again at ")
    assert "(operators did not answer http://127.0.0.1:" in supervisor.last(tmp_path)


def test_only_failures_in_a_row_count_and_an_error_status_is_one(tmp_path: Path) -> None:
    """A real MLflow stand-in whose health URL answers 200 or 503 as told."""
    answers: list[int] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers.pop(0))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mlflow = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        runtime.LocalState(mlflow_pid=mlflow.pid, mlflow_port=server.server_address[1]).write(tmp_path)
        probes = supervisor.Probes(tmp_path)
        answers += [503, 503, 200, 503, 503]
        for _ in range(len(answers)):
            probes.due = 0
            probes.check(runtime.parts(tmp_path))
        assert mlflow.poll() is None and supervisor.last(tmp_path) == ""
        answers.append(503)
        probes.due = 0
        probes.check(runtime.parts(tmp_path))
        assert mlflow.wait(timeout=10) is not None
        assert supervisor.last(tmp_path).endswith(
            f"{supervisor.PROBE_FAILURES} times in a row: HTTP Error 503: Service Unavailable"
        )
    finally:
        mlflow.kill()
        server.shutdown()
