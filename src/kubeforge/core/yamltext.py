"""YAML through libyaml where PyYAML was built with it (its wheels are): the same documents as PyYAML's own
pure-Python emitter and parser of the safe subset, three to eight times faster (docs/benchmarks.md, Operator, round
sixteen). The operator writes a ModelDeployment's route table whenever it changed (operators.deployment.routetext)
and a TrainingJob's spec files on each pass, and a gateway reads its route table at each change."""

from __future__ import annotations

from typing import Any

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(text: str | bytes) -> Any:
    """yaml.safe_load(text)."""
    return yaml.load(text, Loader=_Loader)  # a safe loader


def dump(data: Any, **options: Any) -> str:
    """yaml.safe_dump(data, **options)."""
    return yaml.dump(data, Dumper=_Dumper, **options)
