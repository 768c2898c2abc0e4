"""Status conditions in the metav1.Condition shape, set the way kstatus readers expect.

``lastTransitionTime`` moves only when ``status`` changes, so "since when" stays true
while reasons and messages are refreshed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """A copy of conditions with type_ set; other types are kept in their order."""
    out = [dict(c) for c in conditions]
    new: dict[str, Any] = {"type": type_, "status": status, "reason": reason}
    if message:  # an empty message is left out: some API server releases read "" as null and reject it
        new["message"] = message
    if generation is not None:
        new["observedGeneration"] = generation
    for i, cond in enumerate(out):
        if cond.get("type") == type_:
            same = cond.get("status") == status
            new["lastTransitionTime"] = cond.get("lastTransitionTime") if same else (now or now_rfc3339())
            out[i] = new
            return out
    new["lastTransitionTime"] = now or now_rfc3339()
    out.append(new)
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return bool(cond and cond.get("status") == TRUE)


class StatusDraft:
    """A status being computed from the last one: conditions stamped with one generation and time."""

    def __init__(self, old: dict[str, Any], generation: int | None, now: datetime):
        self.s: dict[str, Any] = {k: v for k, v in old.items() if v is not None}
        self.s["observedGeneration"] = generation
        self.generation, self.now = generation, rfc3339(now)

    def cond(self, type_: str, status: str, reason: str, message: str = "") -> None:
        self.s["conditions"] = set_condition(
            self.s.get("conditions") or [], type_, status, reason, message, self.generation, self.now
        )

    def clear(self, *keys: str) -> None:
        for key in keys:
            self.s.pop(key, None)
