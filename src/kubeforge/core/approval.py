"""Approval of registered model versions, kept in the MLflow registry as model-version tags.

``kubeforge model approve`` / ``reject`` write the decision (:data:`TAG`: approved or
rejected), who made it, when, and a note. The ModelDeployment operator reads the tags with
the versions it resolves anyway (an alias or a pinned version comes back with its tags), so
approval costs no extra registry call per reconcile; a deployment with
``spec.policy.requireApproval`` rolls out only approved versions and never a rejected one.

Approving a rejected version needs ``force``: a rejection is usually the answer to
something found wrong, and undoing it should be deliberate. Rejecting an approved version
needs nothing: stopping a rollout is the safe direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .conditions import rfc3339
from .mlflow_rest import MLflowRegistry, NotFound

TAG = "kubeforge.approval"
"""approved or rejected; absent while nobody decided."""
TAG_BY = TAG + ".by"
TAG_AT = TAG + ".at"
TAG_NOTE = TAG + ".note"
APPROVED, REJECTED = "approved", "rejected"
LISTED = 20
"""Versions or models an error message lists at most."""


def approve_command(model: str, version: str) -> str:
    """The command that approves version of model, as messages tell users to run it."""
    return f'kubeforge model approve {model} {version} --note "..."'


@dataclass(frozen=True)
class Approval:
    """The approval state of one model version."""

    state: str | None = None
    """APPROVED, REJECTED, or None while undecided."""
    by: str = ""
    at: str = ""
    note: str = ""

    @classmethod
    def of(cls, tags: dict[str, str]) -> Approval:
        state = tags.get(TAG)
        if state not in (APPROVED, REJECTED):
            return cls()
        return cls(state, tags.get(TAG_BY, ""), tags.get(TAG_AT, ""), tags.get(TAG_NOTE, ""))

    @property
    def approved(self) -> bool:
        return self.state == APPROVED

    @property
    def rejected(self) -> bool:
        return self.state == REJECTED

    def describe(self) -> str:
        """E.g. 'rejected by alice at 2026-01-01T00:00:00Z: "drops recall"'; 'not approved' while undecided."""
        if self.state is None:
            return "not approved"
        who = f" by {self.by}" if self.by else ""
        when = f" at {self.at}" if self.at else ""
        note = f': "{self.note}"' if self.note else ""
        return f"{self.state}{who}{when}{note}"


class ApprovalError(RuntimeError):
    """The decision cannot be recorded: the version does not exist, or it was rejected and force was not given."""


def missing(registry: MLflowRegistry, model: str, version: str) -> ApprovalError:
    """Why version of model cannot be found, with what exists instead."""
    versions = registry.search(model)
    if versions:
        listed = ", ".join(v.version for v in versions[:LISTED]) + (", ..." if len(versions) > LISTED else "")
        return ApprovalError(f"registered model {model!r} has no version {version}; its versions: {listed}")
    models = registry.registered_models(LISTED + 1)
    listed = ", ".join(models[:LISTED]) + (", ..." if len(models) > LISTED else "") if models else "none"
    return ApprovalError(f"registered model {model!r} does not exist in MLflow; registered models: {listed}")


def record(
    registry: MLflowRegistry,
    model: str,
    version: str,
    state: str,
    by: str,
    note: str,
    now: datetime,
    force: bool = False,
) -> tuple[Approval, Approval]:
    """Record state (APPROVED or REJECTED) for version of model; returns (the previous approval, the new one).

    Raises ApprovalError naming what exists when the version does not, and when approving a rejected version
    without force. MLflowError when the registry cannot be reached."""
    assert state in (APPROVED, REJECTED), state
    if not version.isdigit():
        raise ApprovalError(f"{version!r} is not a version number: versions are 1, 2, 3, ...")
    try:
        previous = Approval.of(registry.by_version(model, version).tags)
    except NotFound:
        raise missing(registry, model, version) from None
    if state == APPROVED and previous.rejected and not force:
        raise ApprovalError(f"version {version} of {model} was {previous.describe()}; approve it anyway with --force")
    new = Approval(state, by, rfc3339(now), note)
    # The state goes last, so a version is never seen decided without who decided it, when and why.
    for key, value in ((TAG_BY, new.by), (TAG_AT, new.at), (TAG_NOTE, new.note), (TAG, state)):
        registry.set_version_tag(model, version, key, value)
    return previous, new
