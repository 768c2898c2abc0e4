"""The networks a TrainingJob trains, and the self-contained module it exports.

Training runs on standardised features (and, for regression, a standardised target)
because that is what makes one learning rate work across datasets. Serving must not have
to know that: :func:`export` wraps the trained network with the training split's
statistics and the output transform (softmax, or undoing the target scaling) and traces
it to TorchScript, so the exported model takes raw features and returns probabilities
or values, as :mod:`kubeforge.core.modelcontract` promises.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kubeforge.api.trainingjob import ModelSpec, Task

from .errors import TrainerError


@dataclass(frozen=True)
class Standardiser:
    """Training-split statistics: features become (x - mean) / std, regression targets likewise."""

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, task: Task) -> Standardiser:
        std = x.std(axis=0)
        y_mean, y_std = (float(y.mean()), float(y.std()) or 1.0) if task == "regression" else (0.0, 1.0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0).astype(np.float32), y_mean, y_std)

    def features(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.x_mean) / self.x_std).astype(np.float32)

    def targets(self, y: np.ndarray) -> np.ndarray:
        return y if y.dtype == np.int64 else ((y - self.y_mean) / self.y_std).astype(np.float32)


def build(spec: ModelSpec, n_features: int, n_outputs: int) -> nn.Module:
    """The untrained network for spec, checked to map [batch, n_features] to [batch, n_outputs]."""
    hp = spec.hyperparameters
    if spec.entrypoint is not None:
        model = _user_model(spec.entrypoint, n_features, n_outputs, spec.args)
    elif spec.architecture == "mlp":
        layers: list[nn.Module] = []
        width = n_features
        for units in hp.hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU()]
            if hp.dropout:
                layers.append(nn.Dropout(hp.dropout))
            width = units
        model = nn.Sequential(*layers, nn.Linear(width, n_outputs))
    else:
        model = nn.Linear(n_features, n_outputs)
    _check_shape(model, spec, n_features, n_outputs)
    return model


def _user_model(entrypoint: str, n_features: int, n_outputs: int, args: dict[str, str]) -> nn.Module:
    module_name, attr = entrypoint.split(":")
    keywords = "".join(f", {k}={v!r}" for k, v in args.items())
    call = f"{entrypoint}(n_features={n_features}, n_outputs={n_outputs}{keywords})"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainerError(
            f"spec.model.entrypoint: cannot import module {module_name!r} ({exc}); "
            "is it installed in the trainer image or on PYTHONPATH?"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no attribute" if factory is None else "has a non-callable attribute"
        raise TrainerError(f"spec.model.entrypoint: module {module_name!r} {what} {attr!r}")
    try:
        model = factory(n_features, n_outputs, **args)
    except Exception as exc:
        raise TrainerError(f"spec.model.entrypoint: {call} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise TrainerError(f"spec.model.entrypoint: {call} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _check_shape(model: nn.Module, spec: ModelSpec, n_features: int, n_outputs: int) -> None:
    """Fail before training, not after an hour, when the network does not fit the data."""
    source = "spec.model.entrypoint" if spec.entrypoint else "spec.model.architecture"
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, n_features))
    except Exception as exc:
        raise TrainerError(
            f"{source}: the model fails on input of shape [2, {n_features}]: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TrainerError(f"{source}: the model maps [2, {n_features}] to {got}, expected [2, {n_outputs}]")


class ServingModule(nn.Module):
    """Raw features in, class probabilities (classification) or values (regression) out."""

    x_mean: torch.Tensor  # buffers, registered in __init__
    x_std: torch.Tensor

    def __init__(self, network: nn.Module, standardiser: Standardiser, task: Task):
        super().__init__()
        self.network = network
        self.classification = task == "classification"
        self.register_buffer("x_mean", torch.as_tensor(standardiser.x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(standardiser.x_std, dtype=torch.float32))
        self.y_mean, self.y_std = standardiser.y_mean, standardiser.y_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.network((features - self.x_mean) / self.x_std)
        if self.classification:
            return torch.softmax(out, dim=1)
        return out * self.y_std + self.y_mean


def export(network: nn.Module, standardiser: Standardiser, task: Task, example: np.ndarray) -> torch.jit.ScriptModule:
    """TorchScript of the trained network with its normalisation and output transform, on CPU.

    Tracing (rather than scripting) accepts any feed-forward user module, which is what
    tabular models are; example is a few raw training rows. Parameters are frozen so
    inference outside ``torch.no_grad`` does not build autograd graphs.
    """
    module = ServingModule(network, standardiser, task).cpu().eval().requires_grad_(False)
    with torch.no_grad(), quiet_torchscript():
        return torch.jit.trace(module, torch.as_tensor(example, dtype=torch.float32))


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings: it is the format the model contract and Triton take."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield
