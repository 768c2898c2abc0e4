"""The trainer's torch metrics agree with scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as reference

from kubeforge.training import metrics


def test_classification_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=200)  # class 3 never occurs in the labels
    got = metrics.compute(torch.as_tensor(logits), torch.as_tensor(labels), "classification", 0.0, 1.0)
    predicted = logits.argmax(1)
    probabilities = torch.softmax(torch.as_tensor(logits), 1).numpy()
    assert got["accuracy"] == pytest.approx(reference.accuracy_score(labels, predicted))
    assert got["f1"] == pytest.approx(reference.f1_score(labels, predicted, average="macro"))
    assert got["log_loss"] == pytest.approx(reference.log_loss(labels, probabilities, labels=[0, 1, 2, 3]), rel=1e-5)


def test_regression_metrics_match_scikit_learn_in_target_units() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(150, 40, size=300).astype(np.float32)
    standardised = ((values + rng.normal(0, 20, size=300) - 150) / 40).astype(np.float32)
    got = metrics.compute(torch.as_tensor(standardised[:, None]), torch.as_tensor(values), "regression", 150, 40)
    predicted = standardised * 40 + 150
    assert got["rmse"] == pytest.approx(np.sqrt(reference.mean_squared_error(values, predicted)), rel=1e-4)
    assert got["mae"] == pytest.approx(reference.mean_absolute_error(values, predicted), rel=1e-4)
    assert got["r2"] == pytest.approx(reference.r2_score(values, predicted), rel=1e-4)
