"""Live quality from the operator's side: feedback settings in the route table, and the accuracy and mae built-ins
read from what the gateway's /metrics shows."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from kubeforge.api.modeldeployment import AnalysisMetric, ModelDeploymentSpec
from kubeforge.operators.deployment import analysis as an
from kubeforge.operators.deployment.rollout import Resolved
from kubeforge.serving.feedback import Feedback, QualityCollector
from kubeforge.serving.routes import RouteTable, compile_table
from tests.unit.operators.test_rollout_plan import md, routes, run
from tests.unit.serving.test_feedback import post


def test_feedback_settings_reach_the_route_table_and_disabling_drops_them() -> None:
    table = routes(run(md(monitoring={"feedback": {"window": "30m", "minLabels": 200}}), Resolved(stable="1")))

    assert table["feedback"] == {"enabled": True, "window": "30m", "minLabels": 200, "ttl": "24h", "maxPending": 100000}
    assert RouteTable.model_validate({"models": {"clf": table}})  # the gateway takes what the operator writes
    off = routes(run(md(monitoring={"feedback": {"enabled": False}}), Resolved(stable="1")))
    assert "feedback" not in off


def test_feedback_settings_are_bounded() -> None:
    base = {"model": {"name": "clf", "alias": "champion"}}
    for bad in ({"minLabels": 0}, {"maxPending": 0}, {"maxPending": 10**9}, {"ttl": "a day"}):
        with pytest.raises(ValidationError):
            ModelDeploymentSpec.model_validate({**base, "monitoring": {"feedback": bad}})


def exposition(task: str, labels: list[tuple[list[float], object]], min_labels: int = 4) -> str:
    """The /metrics text of a gateway whose canary (version 2) answered and got these labels fed back."""
    spec = {
        "versions": [
            {"version": "1", "role": "stable", "url": "http://127.0.0.1:1", "weight": 80},
            {"version": "2", "role": "canary", "url": "http://127.0.0.1:2", "weight": 20},
        ],
        "task": task,
        "feedback": {"minLabels": min_labels},
    }
    [route] = compile_table(RouteTable.model_validate({"models": {"clf": spec}}), {}).values()
    feedback = Feedback()
    feedback.load([route])
    for i, (output, _) in enumerate(labels):
        tensor = {"name": "outputs", "datatype": "FP32", "shape": [1, len(output)], "data": output}
        feedback.record(route, route.versions["2"], f"r{i}", (json.dumps({"outputs": [tensor]}).encode(), None))
    post(feedback, route, [{"id": f"r{i}", "label": label} for i, (_, label) in enumerate(labels)])
    registry = CollectorRegistry()
    registry.register(QualityCollector(lambda: feedback))
    return generate_latest(registry).decode()


def test_accuracy_is_the_canarys_live_accuracy_and_no_verdict_below_min_labels() -> None:
    right, wrong = ([0.1, 0.9], 1), ([0.1, 0.9], 0)
    text = exposition("classification", [right, right, right, wrong])
    interval = an.parse(text, "clf", "2").minus(an.parse(text, "clf", "2"))
    metric = AnalysisMetric(name="accuracy", min=0.8)

    assert an.builtin("accuracy", interval, 20) == pytest.approx(0.75)
    assert an.verdict(metric, an.builtin("accuracy", interval, 20))["passed"] is False
    assert an.builtin("accuracy", an.parse(text, "clf", "1"), 20) is None, "the stable version got no labels"
    few = an.parse(exposition("classification", [right, right]), "clf", "2")
    assert "passed" not in an.verdict(metric, an.builtin("accuracy", few, 20)), "below minLabels: no verdict"


def test_mae_is_the_canarys_live_mean_absolute_error() -> None:
    text = exposition("regression", [([1.0], 1.5), ([2.0], 1.0), ([0.0], 0.0), ([3.0], 3.5)])
    snapshot = an.parse(text, "clf", "2")
    metric = AnalysisMetric(name="mae", max=0.4)

    assert an.builtin("mae", snapshot, 20) == pytest.approx(0.5)
    assert an.verdict(metric, an.builtin("mae", snapshot, 20))["passed"] is False
    assert an.builtin("accuracy", snapshot, 20) is None
