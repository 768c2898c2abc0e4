"""Building networks from the spec, user entrypoints failing clearly, and the exported serving module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kubeforge.api.trainingjob import ModelSpec
from kubeforge.training import models
from kubeforge.training.errors import TrainerError


def _spec(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", **fields})


def test_mlp_follows_hyperparameters() -> None:
    spec = _spec(architecture="mlp", hyperparameters={"hiddenUnits": [7, 5], "dropout": 0.1})
    network = models.build(spec, 4, 3)
    widths = [m.out_features for m in network.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [7, 5, 3]
    assert sum(isinstance(m, torch.nn.Dropout) for m in network.modules()) == 2


def test_user_entrypoint_gets_its_args() -> None:
    network = models.build(_spec(entrypoint="tests.unit.training.usermodels:build", args={"width": "6"}), 4, 2)
    assert network[0].out_features == 6


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("no_such_package.models:build", "cannot import module 'no_such_package.models'"),
        ("tests.unit.training.usermodels:missing", "usermodels' has no attribute 'missing'"),
        ("tests.unit.training.usermodels:not_a_module", "returned str, expected a torch.nn.Module"),
        ("tests.unit.training.usermodels:wrong_width", "maps [2, 4] to [2, 5], expected [2, 2]"),
    ],
)
def test_bad_entrypoint_is_refused_before_training(entrypoint: str, message: str) -> None:
    with pytest.raises(TrainerError) as raised:
        models.build(_spec(entrypoint=entrypoint), 4, 2)
    assert str(raised.value).startswith("spec.model.entrypoint: ")
    assert message in str(raised.value)


def test_exported_module_takes_raw_features_and_returns_probabilities() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 3)) * [1, 100, 0.01] + [0, 500, 3]).astype(np.float32)
    y = (x[:, 1] > 500).astype(np.int64)
    standardiser = models.Standardiser.fit(x, y, "classification")
    torch.manual_seed(0)
    network = models.build(_spec(architecture="logistic"), 3, 2)
    scripted = models.export(network, standardiser, "classification", x[:4])

    probabilities = scripted(torch.as_tensor(x))
    expected = torch.softmax(network(torch.as_tensor(standardiser.features(x))), dim=1)

    assert isinstance(scripted, torch.jit.ScriptModule)
    torch.testing.assert_close(probabilities, expected)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(50))


def test_exported_regression_module_returns_values_in_target_units() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = (x[:, 0] * 1000 + 5000).astype(np.float32)
    standardiser = models.Standardiser.fit(x, y, "regression")
    network = torch.nn.Linear(2, 1)
    scripted = models.export(network, standardiser, "regression", x[:2])
    standardised = network(torch.as_tensor(standardiser.features(x)))
    torch.testing.assert_close(scripted(torch.as_tensor(x)), standardised * float(y.std()) + float(y.mean()))
