"""User model factories that TrainingJob specs in the tests point spec.model.entrypoint at."""

from __future__ import annotations

from torch import nn


def build(n_features: int, n_outputs: int, width: str = "8") -> nn.Module:
    """A valid factory: arguments arrive as strings, as spec.model.args holds them."""
    return nn.Sequential(nn.Linear(n_features, int(width)), nn.Tanh(), nn.Linear(int(width), n_outputs))


def not_a_module(n_features: int, n_outputs: int) -> str:
    return f"{n_features}->{n_outputs}"


def wrong_width(n_features: int, n_outputs: int) -> nn.Module:
    return nn.Linear(n_features, n_outputs + 3)
