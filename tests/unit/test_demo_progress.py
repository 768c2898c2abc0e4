"""What the demo prints: its progress while a ModelDeployment becomes Ready, and what it refuses to start with."""

from __future__ import annotations

from click.testing import CliRunner

from kubeforge.cli import main
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


def test_the_demo_without_its_examples_names_the_option_and_starts_nothing(tmp_path):
    data = tmp_path / "data"
    argv = ["demo", "--data-dir", str(data), "--examples", str(tmp_path / "nowhere")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "Invalid value for '--examples'" in result.output and "does not exist" in result.output
    assert not data.exists(), "nothing was started"
