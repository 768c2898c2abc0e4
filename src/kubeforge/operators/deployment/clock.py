"""When a ModelDeployment needs a pass that no watch event will start: the operator's one clock.

Rollouts, shadows and scale-down delays run on time, registry aliases and approvals change
outside Kubernetes, retrain triggers hold for a duration, and a pass that failed is tried again.
Per-object kopf timers did this with a task per ModelDeployment, and each time an object moved
in or out of a timer's filter kopf stopped the timer with a patch of the object (a "touch"
annotation): writes that bought nothing. One loop reads a :class:`Cadence` per ModelDeployment
from its State instead and starts only the passes that are due (:func:`due`); the registry is
asked once per (model, alias) for all of them, and a ModelDeployment whose answers did not
change is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..memos import Retries
from .rollout import (
    FEATURE_VIEW_NOT_FOUND,
    INVALID_SPEC,
    READY,
    WAITING_FOR_GATEWAY,
    WAITING_FOR_ROUTES,
    WAITING_FOR_STABLE,
)

ROLLING_S = 2.0
"""Seconds between passes while a canary or shadow is live (analysis intervals, step pauses, shadow reports)."""
POLL_S = 10.0
"""Seconds between looks at the registry, and between passes of a ModelDeployment that is not settled or has a
retrain policy (its triggers hold for a duration or follow a schedule)."""
TICK_S = 0.5
"""How often the loop looks for due passes."""
FIRST_SWEEP_S = 10.0
"""When, after the start, the loop first looks for children of ModelDeployments deleted while no operator ran
(kopf has listed every ModelDeployment by then; the owner is asked for before anything is deleted anyway)."""
SWEEP_S = 60.0
"""How often it looks again."""
CHECK_S = 30.0
"""How often the loop checks that the children no watch reports on (Services, ConfigMaps, autoscalers) still
exist, with one request per kind and namespace: one deleted by hand is applied again within this time."""

WAITING_ON_EVENTS = frozenset({WAITING_FOR_STABLE, WAITING_FOR_GATEWAY, INVALID_SPEC, FEATURE_VIEW_NOT_FOUND})
"""Ready reasons that only a watch event can end (a Deployment's or pod's, a spec change, a FeatureView)."""

Ref = tuple[str, str | None, int | None]
"""A model reference as the spec gives it: registered model, alias, version."""


@dataclass(frozen=True)
class Cadence:
    """What of one ModelDeployment's spec and status decides when it needs a pass on the clock."""

    rolling: bool = False
    """A canary or shadow is live, versions are retiring, or the gateway has not loaded its route table yet."""
    polled: bool = False
    """A retrain policy, or a Ready reason no event will end (a child not applied, a version not resolved)."""
    follows: tuple[Ref, ...] = ()
    """The references whose registry answers (version, approval) can change what it serves: all of them when it
    follows an alias, has a canary or requires approval, else none."""

    @classmethod
    def of(cls, spec: Mapping[str, Any], status: Mapping[str, Any]) -> Cadence:
        conditions = status.get("conditions") or []
        ready: Mapping[str, Any] = next((c for c in conditions if c.get("type") == READY), {})
        rolling = ready.get("reason") == WAITING_FOR_ROUTES or bool(
            status.get("canaryVersion") or status.get("shadowVersion") or status.get("retiring")
        )
        settled = ready.get("status") == "True" or ready.get("reason") in WAITING_ON_EVENTS
        approval = (spec.get("policy") or {}).get("requireApproval")
        refs = [spec.get("model")] + [(spec.get(role) or {}).get("model") for role in ("canary", "shadow")]
        followed = bool(spec.get("followAlias") or spec.get("canary") or approval)
        follows = tuple((r.get("name", ""), r.get("alias"), r.get("version")) for r in refs if r) if followed else ()
        return cls(rolling, bool(spec.get("retrain")) or not settled, follows)


@dataclass
class Clock(Retries):
    """One ModelDeployment's timekeeping (in its State); monotonic seconds."""

    last_pass: float = field(default_factory=time.monotonic)
    """When its last pass ended, whatever started it: an event's pass counts, so the clock does not repeat it.
    Before the first, when this process began to keep time for it: the pass its first event started is on its way
    (behind others', in a burst), and the clock adds none before it is due anyway."""
    last_look: float = field(default_factory=time.monotonic)
    """When the loop last compared its registry answers (before the first time, as last_pass: the first pass
    resolves them)."""
    answers: tuple[Any, ...] | None = None
    """Its registry answers as its last pass resolved them."""
    running: bool = False
    """A pass the clock started has not ended yet."""
    cadence: Cadence | None = None
    """From the object's newest event (its spec and status); None before the first."""


def due(cadence: Cadence, clock: Clock, now: float) -> bool:
    """Whether a pass is due now for time's sake (a retry, the rollout's clock, a poll); the registry's answers
    are compared apart (see :func:`registry_due`)."""
    if clock.running:
        return False
    if clock.retry_at is not None:
        return now >= clock.retry_at
    if cadence.rolling and now - clock.last_pass >= ROLLING_S:
        return True
    return cadence.polled and now - clock.last_pass >= POLL_S


def registry_due(cadence: Cadence, clock: Clock, now: float) -> bool:
    """Whether it is time to compare this ModelDeployment's registry answers with those its last pass used."""
    return bool(cadence.follows) and not clock.running and now - clock.last_look >= POLL_S
