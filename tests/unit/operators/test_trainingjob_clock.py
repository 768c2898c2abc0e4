"""The TrainingJob operator's clock: which TrainingJobs get a pass that no event starts, and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import kopf

from kubeforge.operators.memos import MAX_RETRY_S
from kubeforge.operators.training import clock

WALL = datetime(2026, 1, 1, tzinfo=UTC)
RUNNING = {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}


def ticks(status: dict, spec: dict | None = None, event_at: float = 0.0) -> clock.Ticks:
    return clock.Ticks(spec=spec or {}, status=status, event_at=event_at)


def test_a_running_trainingjob_waiting_on_its_job_gets_no_pass_from_the_clock() -> None:
    t = ticks(RUNNING)
    assert not any(clock.due(t, False, now, WALL + timedelta(seconds=now)) for now in range(10, 600, 1))


def test_a_deadline_that_passed_is_found_within_a_look() -> None:
    t = ticks(RUNNING, {"activeDeadlineSeconds": 60})
    assert not clock.due(t, False, 30.0, WALL + timedelta(seconds=30))
    due_at = next(now for now in range(31, 200) if clock.due(t, False, now, WALL + timedelta(seconds=now)))
    assert 60 <= due_at <= 60 + clock.LOOK_S


def test_a_succeeded_trainingjob_is_looked_at_until_its_version_is_registered() -> None:
    waiting = ticks({"phase": "Succeeded"})
    assert clock.due(waiting, False, 10.0, WALL)
    registered = ticks({"phase": "Succeeded", "mlflow": {"modelVersion": "3"}})
    assert not clock.due(registered, True, 10.0, WALL), "finished for good: not even the resync"
    assert not clock.due(ticks({"phase": "Failed"}), True, 10.0, WALL)


def test_an_unsettled_trainingjob_waits_for_its_events_own_pass_then_gets_one() -> None:
    t = ticks(RUNNING, event_at=100.0)
    assert not clock.due(t, True, 100.0 + clock.IDLE_S - 0.1, WALL), "the event's own pass comes first"
    assert clock.due(t, True, 100.0 + clock.IDLE_S, WALL)
    t.running = True
    assert not clock.due(t, True, 200.0, WALL), "one pass at a time"


def test_a_failed_pass_is_tried_again_after_the_delay_it_named_else_with_a_growing_back_off() -> None:
    t = ticks({"phase": "Failed"})  # a status write that failed is retried also for a finished one
    assert t.failed(10.0, kopf.TemporaryError("child not applied", delay=7.0)) == 7.0
    assert not clock.due(t, False, 16.9, WALL) and clock.due(t, False, 17.0, WALL)
    waits = [t.failed(20.0, RuntimeError("API server unreachable")) for _ in range(12)]
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0] and waits[-1] == MAX_RETRY_S
    t.passed()
    assert t.retry_at is None and t.retries == 0 and not clock.due(t, False, 1000.0, WALL)


def test_children_of_earlier_attempts_or_of_a_trainingjob_whose_own_event_is_still_to_come_start_no_pass() -> None:
    """A restarted operator gets an event for every attempt's Job and failed pod, often before their owner's; a pass
    reads only the current attempt's, and the owner's first event's pass reads them all. Where the newest event of
    the TrainingJob is behind (attempt 3 started, its event not handled yet), attempt 3's children still count."""

    def needs(t: clock.Ticks | None, attempt: str | None) -> bool:
        return clock.child_needs_pass(t, {} if attempt is None else {"kubeforge.dev/attempt": attempt})

    third = ticks({**RUNNING, "attempts": 3}, event_at=5.0)
    assert [needs(third, a) for a in ("1", "2", "3", None)] == [False, False, True, True]
    behind = ticks({**RUNNING, "attempts": 2}, event_at=5.0)
    assert needs(behind, "3")
    assert not needs(None, "1") and not needs(clock.Ticks(), "1"), "its owner's own event not handled yet"
    assert needs(ticks({}, event_at=5.0), "1"), "a new TrainingJob's first attempt"
