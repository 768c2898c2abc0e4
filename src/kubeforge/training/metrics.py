"""Validation metrics, computed with torch on the training device.

They run after every epoch, so they stay on the device in a handful of tensor ops
instead of copying predictions to the host for scikit-learn; definitions match
scikit-learn's (macro F1 over the classes present in labels or predictions).
"""

from __future__ import annotations

import torch
from torch.nn import functional

from kubeforge.api.trainingjob import Task

CLASSIFICATION = ("accuracy", "f1", "log_loss")
REGRESSION = ("rmse", "mae", "r2")


def compute(outputs: torch.Tensor, targets: torch.Tensor, task: Task, y_mean: float, y_std: float) -> dict[str, float]:
    """Metrics of the network's raw outputs (logits, or standardised values) against targets.

    targets are class indices, or regression values in their original units (outputs are
    scaled back with y_mean and y_std first).
    """
    if task == "classification":
        return _classification(outputs, targets)
    return _regression(outputs.squeeze(1) * y_std + y_mean, targets)


def _classification(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    predicted = logits.argmax(dim=1)
    n_classes = logits.shape[1]
    truth = functional.one_hot(labels, n_classes).bool()
    guess = functional.one_hot(predicted, n_classes).bool()
    tp = (truth & guess).sum(0)
    fp = (~truth & guess).sum(0)
    fn = (truth & ~guess).sum(0)
    present = (truth | guess).any(0)
    f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[present].mean()
    return {
        "accuracy": (predicted == labels).float().mean().item(),
        "f1": f1.item(),
        "log_loss": functional.cross_entropy(logits, labels).item(),
    }


def _regression(predicted: torch.Tensor, values: torch.Tensor) -> dict[str, float]:
    error = predicted - values
    total = ((values - values.mean()) ** 2).sum()
    return {
        "rmse": error.pow(2).mean().sqrt().item(),
        "mae": error.abs().mean().item(),
        "r2": (1 - error.pow(2).sum() / total).item() if total > 0 else 0.0,
    }
