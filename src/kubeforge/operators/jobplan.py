"""What a pass over a kind that runs Jobs (TrainingJob, FeatureView) leaves its reconcile to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobPlan:
    """What reconcile must do, in order: apply the children, delete the Jobs named, then write status and events."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
