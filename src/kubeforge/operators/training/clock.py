"""When a TrainingJob needs a pass that no watch event will start: the TrainingJob operator's one clock.

A per-object kopf timer did this before, and kopf guards every object a timer runs for with a finalizer: it added
one when a TrainingJob started and removed it when it finished, two writes (and two passes over their events) per
TrainingJob that bought nothing, and a TrainingJob deleted while no operator ran stayed until one came back to
remove it. One loop reads the :class:`Ticks` each TrainingJob's events leave in its memo instead, and starts only
the passes that are due (:func:`due`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..labels import ATTEMPT
from ..memos import Retries
from .plan import TERMINAL, due_by_time

TICK_S = 1.0
"""How often the loop looks for due passes (a retry's delay is kept to about this)."""
LOOK_S = 10.0
"""Seconds between two looks at one TrainingJob's waits on time (a deadline, a FeatureView, its registration)."""
IDLE_S = 5.0
"""Seconds after a TrainingJob's newest event before the clock passes over it: that event's own pass runs first."""


@dataclass
class Ticks(Retries):
    """One TrainingJob's timekeeping (in its memo); monotonic seconds."""

    spec: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    """Its spec and status as its newest event brought them."""
    event_at: float = 0.0
    """When its newest event came (0: none handled yet)."""
    looked_at: float = 0.0
    """When the clock last looked at its waits on time."""
    running: bool = False
    """A pass the clock started has not ended yet."""


def unfinished(status: Mapping[str, Any]) -> bool:
    """Not failed or succeeded for good: a succeeded one waits until its version is found in MLflow."""
    if status.get("phase") not in TERMINAL:
        return True
    return status.get("phase") == "Succeeded" and not (status.get("mlflow") or {}).get("modelVersion")


def child_needs_pass(ticks: Ticks | None, labels: Mapping[str, str]) -> bool:
    """Whether an event of a TrainingJob's Job or pod (by the child's labels) may need a pass of it. Not before the
    TrainingJob's own first event has been handled: that event's pass, still to come, reads every child as it is
    then (an operator that starts gets every attempt's Job and failed pod at once, and kopf may hand it those
    before their owner). Nor for a child of an attempt before the current one, as the newest event tells it: a pass
    reads only the current attempt's Job and pods. A newest event behind the current attempt only tells an earlier
    number, so a current child never counts as earlier."""
    if ticks is None or not ticks.event_at:
        return False
    attempt = labels.get(ATTEMPT, "")
    return not (attempt.isdigit() and int(attempt) < int(ticks.status.get("attempts") or 0))


def due(ticks: Ticks, unsettled: bool, now: float, wall: datetime) -> bool:
    """Whether the clock must pass over the TrainingJob now: a failed pass's retry fell due; or, a while after its
    newest event, its last pass did not settle (or settled long ago: memos.RESYNC_S) while it is unfinished; or one
    of its waits on time ended (looked at every LOOK_S)."""
    if ticks.running:
        return False
    if ticks.retry_at is not None:
        return now >= ticks.retry_at
    if now - ticks.event_at < IDLE_S or not unfinished(ticks.status):
        return False
    if unsettled:
        return True
    if now - ticks.looked_at < LOOK_S:
        return False
    ticks.looked_at = now
    return due_by_time(ticks.status, ticks.spec, wall)
