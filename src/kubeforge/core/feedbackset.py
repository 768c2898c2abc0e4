"""A model's feedback data set as its readers reach it: the gateway's address for it, and the header counting the
labelled rows it left out.

The gateway answers it; ``kubeforge dataset from-feedback``, a retrain's TrainingJob (its ``spec.dataset.uri``) and
the trainer reading it are its callers. Naming both here keeps one contract without the callers importing the
gateway and what it loads.
"""

from __future__ import annotations

ROWS_LEFT_OUT_HEADER = "kubeforge-rows-left-out"
"""Answer header of a data set: how many labelled rows it left out, answered by model versions without one of its
features (serving.feedback.dataset); every gateway replica's added up."""


PEER_TIMEOUT_S = 300.0
"""How long a gateway replica waits for each other replica's share of a data set (each reads its whole payload
log)."""

READ_TIMEOUT_S = 2 * PEER_TIMEOUT_S
"""How long a caller waits for a data set: longer than the replica it asked waits for the others, so that a replica
that does not answer is reported by the gateway, naming it, and not as the caller's own timeout."""


def path(model: str) -> str:
    """The gateway's path of model's feedback data set (query: since, target, features)."""
    return f"/v2/models/{model}/feedback/dataset"


def rows_left_out(value: str | None) -> int:
    """The header's count; 0 when it is absent or not a count."""
    return int(value) if value and value.isdigit() else 0
