"""The pydantic models accept every valid sample and reject every invalid one, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeforge.api import InvalidResource, TrainingJob, parse
from tests.samples import INVALID, VALID, expected_field


def test_there_are_samples_of_every_kind() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in VALID}
    assert kinds == {"TrainingJob", "ModelDeployment", "FeatureView"}
    assert len(INVALID) >= 5


def _contains(written: object, wire: object, path: str = "") -> None:
    """Everything the user wrote is in wire, under the same name and with the same value."""
    if isinstance(written, dict):
        assert isinstance(wire, dict), path
        for key, value in written.items():
            assert key in wire, f"{path}.{key} was dropped"
            _contains(value, wire[key], f"{path}.{key}")
    elif isinstance(written, list):
        assert isinstance(wire, list) and len(wire) == len(written), path
        for i, (a, b) in enumerate(zip(written, wire, strict=True)):
            _contains(a, b, f"{path}[{i}]")
    else:
        assert written == wire, f"{path}: wrote {written!r}, got {wire!r}"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_sample_parses_and_round_trips(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    resource = parse(raw)
    wire = resource.to_wire()
    _contains(raw["spec"], wire["spec"], "spec")
    assert parse(wire) == resource


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_sample_is_rejected_naming_the_field(path: Path) -> None:
    with pytest.raises(InvalidResource) as exc:
        parse(yaml.safe_load(path.read_text()))
    assert expected_field(path) in exc.value.fields, str(exc.value)


def test_weights_must_increase() -> None:
    with pytest.raises(InvalidResource) as exc:
        parse(
            {
                "kind": "ModelDeployment",
                "metadata": {"name": "x"},
                "spec": {
                    "model": {"name": "m", "version": 1},
                    "canary": {"model": {"name": "m", "version": 2}, "steps": [{"weight": 50}, {"weight": 20}]},
                },
            }
        )
    assert exc.value.fields == ["spec.canary"]
    assert "steps[1].weight is 20" in str(exc.value)


def test_retraining_from_a_gateway_with_tokens_needs_a_token_to_read_it_with() -> None:
    spec = {
        "model": {"name": "m", "version": 1},
        "auth": {"secretRef": {"name": "callers"}},
        "retrain": {"trainingJob": {"name": "m-train"}, "triggers": {"drift": {}}, "dataset": {"fromFeedback": {}}},
    }
    with pytest.raises(InvalidResource) as exc:
        parse({"kind": "ModelDeployment", "metadata": {"name": "x"}, "spec": spec})
    assert "retrain.dataset.fromFeedback.tokenSecretRef is required with auth" in str(exc.value)
    spec["retrain"]["dataset"]["fromFeedback"]["tokenSecretRef"] = {"name": "retrain-token"}
    md = parse({"kind": "ModelDeployment", "metadata": {"name": "x"}, "spec": spec})
    assert md.to_wire()["spec"]["retrain"]["dataset"]["fromFeedback"]["tokenSecretRef"] == {
        "name": "retrain-token",
        "key": "token",
    }


def test_defaults_are_filled_in() -> None:
    tj = parse(
        {
            "kind": "TrainingJob",
            "metadata": {"name": "x"},
            "spec": {"model": {"name": "m", "architecture": "logistic"}, "dataset": {"uri": "/d.csv", "target": "y"}},
        }
    )
    assert isinstance(tj, TrainingJob)
    assert tj.spec.replicas == 1
    assert tj.spec.backoff_limit == 3
    assert tj.spec.model.hyperparameters.epochs == 20
    assert tj.to_wire()["spec"]["register"] == {"tags": {}}
