"""What `kubeforge status` and a stopped demo say of the supervisor's restarts (its record in the data directory)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from kubeforge.local import supervisor


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
