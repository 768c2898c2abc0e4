"""Parse a raw object into its API model, with errors that name fields as users write them.

Errors use the same paths as the API server (``spec.canary.steps[1].weight``), so the
CLI, the operators' Ready=False messages and ``kubectl apply`` all point at the same spot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .featureview import FeatureView
from .meta import Resource
from .modeldeployment import ModelDeployment
from .trainingjob import TrainingJob

KINDS: dict[str, type[Resource]] = {k.__name__: k for k in (TrainingJob, ModelDeployment, FeatureView)}

# pydantic puts the tried member of a union into the location; users never wrote those.
_UNION_TAGS = {"int", "str", "float", "bool", "constrained-str", "constrained-int", "constrained-float", "list"}


def field_path(loc: Sequence[int | str]) -> str:
    """('spec', 'steps', 1, 'weight') -> 'spec.steps[1].weight'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in part:
            continue
        else:
            out += f".{part}" if out else part
    return out


class InvalidResource(ValueError):
    """A resource that does not match its schema; ``errors`` is a list of (field path, message)."""

    def __init__(self, kind: str, name: str, errors: list[tuple[str, str]]):
        self.kind, self.name, self.errors = kind, name, errors
        lines = "; ".join(f"{path}: {msg}" for path, msg in errors)
        super().__init__(f"{kind} {name!r} is invalid: {lines}")

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.errors]


def _message(err: ErrorDetails) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field; check its spelling against `kubectl explain`"
    return msg


def parse(obj: dict[str, Any]) -> Resource:
    """The typed resource for obj (dispatching on kind), or InvalidResource naming each bad field."""
    kind = obj.get("kind")
    name = str((obj.get("metadata") or {}).get("name", ""))
    model = KINDS.get(str(kind))
    if model is None:
        raise InvalidResource(str(kind), name, [("kind", f"must be one of {', '.join(KINDS)}")])
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        errors = [(field_path(e["loc"]), _message(e)) for e in exc.errors()]
        raise InvalidResource(model.__name__, name, errors) from None
