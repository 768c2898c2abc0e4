"""What the demo prints while a ModelDeployment becomes Ready."""

from __future__ import annotations

from kubeforge.local.demo import _ready_line


def md(*conditions: dict[str, str]) -> dict:
    return {"metadata": {"name": "cancer"}, "status": {"conditions": list(conditions)} if conditions else {}}


def test_nothing_but_waiting_until_the_operator_writes_a_condition():
    assert _ready_line({"metadata": {"name": "cancer"}}) == "  ModelDeployment cancer: waiting for the operator"
    assert _ready_line(md()) == "  ModelDeployment cancer: waiting for the operator"
    other = {"type": "Progressing", "status": "True", "reason": "Rollout"}
    assert "None" not in _ready_line(md(other))


def test_the_ready_reason_and_message_once_there():
    ready = {"type": "Ready", "status": "False", "reason": "TritonNotReady", "message": "version 1 is loading"}
    assert _ready_line(md(ready)) == "  ModelDeployment cancer: TritonNotReady: version 1 is loading"
    assert _ready_line(md({"type": "Ready", "status": "True", "reason": "Serving"})) == (
        "  ModelDeployment cancer: Serving"
    )
