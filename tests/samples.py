"""The sample resources under crds/samples, shared by the unit and integration tests."""

from __future__ import annotations

import re
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "crds" / "samples"
VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def expected_field(path: Path) -> str:
    """Each invalid sample says in a comment which field the error must name."""
    for line in path.read_text().splitlines():
        if line.startswith("# expect-field:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.name} has no '# expect-field:' comment")


def names_field(message: str, field: str) -> bool:
    """Whether an API server or kubectl message points at field.

    The 1.20 API server drops list indices (spec.steps.weight); kubectl's own schema
    check names the parent object and quotes the leaf (ValidationError(X.spec): ... "source").
    """
    plain = re.sub(r"\[\d+\]", "", field)
    if plain in message:
        return True
    parent, _, leaf = plain.rpartition(".")
    return f"{parent})" in message and f'"{leaf}"' in message
