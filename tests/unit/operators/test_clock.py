"""The operator's clock: which ModelDeployments get a pass that no watch event starts, and when."""

from __future__ import annotations

import time
from typing import Any

from kubeforge.operators.deployment.clock import POLL_S, ROLLING_S, Cadence, Clock, due, registry_due

MODEL = {"name": "fraud", "alias": "champion"}


def ready(status: str, reason: str) -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": status, "reason": reason}]}


def test_a_deployment_that_is_ready_or_waits_for_its_pods_is_left_to_events() -> None:
    for status in (ready("True", "Ready"), ready("False", "WaitingForStable"), ready("False", "InvalidSpec")):
        cadence = Cadence.of({"model": MODEL}, status)
        assert cadence == Cadence()
        assert not due(cadence, Clock(), now=1e6)
        assert not registry_due(cadence, Clock(), now=1e6)


def test_what_no_event_ends_is_polled() -> None:
    # A child the API server refused, a version MLflow does not have yet, a status not written yet.
    for status in (ready("False", "ApplyFailed"), ready("False", "ModelNotFound"), {}):
        assert Cadence.of({"model": MODEL}, status).polled
    assert Cadence.of({"model": MODEL, "retrain": {"triggers": {}}}, ready("True", "Ready")).polled


def test_a_live_canary_shadow_retirement_or_unloaded_route_table_runs_on_the_rollout_clock() -> None:
    for status in (
        {"canaryVersion": "2", **ready("True", "Ready")},
        {"shadowVersion": "3", **ready("True", "Ready")},
        {"retiring": [{"version": "1"}], **ready("True", "Ready")},
        ready("False", "WaitingForRoutes"),
    ):
        cadence = Cadence.of({"model": MODEL}, status)
        assert cadence.rolling
        assert not due(cadence, Clock(last_pass=100.0), now=100.0 + ROLLING_S - 0.1)
        assert due(cadence, Clock(last_pass=100.0), now=100.0 + ROLLING_S)


def test_an_events_pass_counts_as_the_clocks_and_a_running_pass_is_not_doubled() -> None:
    polled = Cadence(polled=True)
    assert not due(polled, Clock(last_pass=50.0), now=50.0 + POLL_S - 1)
    assert due(polled, Clock(last_pass=50.0), now=50.0 + POLL_S)
    assert not due(polled, Clock(last_pass=0.0, running=True), now=1e6)


def test_a_deployment_new_to_the_process_waits_for_the_pass_its_event_started() -> None:
    # In a burst its first pass may wait behind hundreds of others: the clock must not start a second one meanwhile.
    made = time.monotonic()
    ticks = Clock()
    polled, rolling = Cadence(polled=True), Cadence(rolling=True, follows=(("fraud", "champion", None),))
    assert not due(polled, ticks, now=made + POLL_S - 1)
    assert not due(rolling, ticks, now=made + ROLLING_S - 0.1)
    assert not registry_due(rolling, ticks, now=made + POLL_S - 1)
    assert due(polled, ticks, now=made + POLL_S + 1)
    assert registry_due(rolling, ticks, now=made + POLL_S + 1)


def test_a_failed_pass_is_retried_at_its_time_whatever_the_cadence() -> None:
    ticks = Clock(last_pass=10.0, retry_at=15.0, retries=2)
    assert not due(Cadence(), ticks, now=14.9)
    assert due(Cadence(), ticks, now=15.0)
    # A retry waits for its time even where the rollout clock would run sooner.
    assert not due(Cadence(rolling=True), ticks, now=14.0)


def test_registry_answers_are_followed_only_where_they_can_change_what_is_served() -> None:
    plain = Cadence.of({"model": MODEL}, ready("True", "Ready"))
    assert plain.follows == ()
    canary = {"model": {"name": "fraud", "alias": "champion"}, "canary": {"model": {"name": "fraud", "version": 7}}}
    shadow = {"model": MODEL, "shadow": {"model": {"name": "fraud-gbm", "alias": "challenger"}}, "followAlias": True}
    approval = {"model": {"name": "fraud", "version": 3}, "policy": {"requireApproval": True}}
    assert Cadence.of(canary, {}).follows == (("fraud", "champion", None), ("fraud", None, 7))
    assert Cadence.of(shadow, {}).follows == (("fraud", "champion", None), ("fraud-gbm", "challenger", None))
    assert Cadence.of(approval, {}).follows == (("fraud", None, 3),)
    follows = Cadence.of(approval, {})
    assert registry_due(follows, Clock(last_look=0.0), now=POLL_S)
    assert not registry_due(follows, Clock(last_look=5.0), now=POLL_S)
    assert not registry_due(follows, Clock(running=True), now=1e6)
