"""status.history: the last rollout decisions of a ModelDeployment, each also posted as an Event.

Events expire (an hour by default) and are spread over the namespace; the history keeps the
last :data:`HISTORY_LIMIT` decisions on the object itself, where `kubectl describe` and
`kubectl get -o yaml` show them. A decision is recorded in the pass that makes it, in the same
status write, so a pass that changes nothing adds nothing, and a restarted operator neither
repeats nor loses an entry.
"""

from __future__ import annotations

from typing import Any

from ...api.modeldeployment import HISTORY_LIMIT
from ...core.conditions import StatusDraft

Event = tuple[str, str, str]  # type, reason, message


def entry(st: StatusDraft, action: str, version: str | None, reason: str, message: str) -> None:
    """Append a decision to st's history, keeping the newest HISTORY_LIMIT."""
    item: dict[str, Any] = {"time": st.now, "action": action, "reason": reason, "message": message}
    if version:
        item["version"] = version
    st.s["history"] = [*(st.s.get("history") or []), item][-HISTORY_LIMIT:]


def decide(
    st: StatusDraft,
    events: list[Event],
    action: str,
    version: str | None,
    type_: str,
    reason: str,
    message: str,
    cause: str | None = None,
) -> None:
    """A decision: an Event (type_, reason, message) and a history entry whose reason is cause, else reason."""
    events.append((type_, reason, message))
    entry(st, action, version, cause or reason, message)
