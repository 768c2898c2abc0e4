"""The training loop: epochs of shuffled mini-batches, then validation metrics.

Tabular datasets fit in device memory, so the splits are moved to the device once and
each batch is an index into them: no DataLoader worker processes or per-row collation,
which would cost more than the small networks themselves. The loop adds to a plain
torch loop only the per-epoch validation pass and the on_epoch callback (progress line,
MLflow metrics, checkpoint); ``tests/benchmarks/bench_trainer.py`` measures that cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from kubeforge.api.trainingjob import Hyperparameters, Task

from . import distributed, metrics
from .distributed import Context
from .models import Standardiser

# Rows per forward pass when evaluating, to bound memory on large validation splits.
_EVAL_CHUNK = 65536


@dataclass(frozen=True)
class EpochResult:
    """What one finished epoch reports: metrics are empty on ranks other than 0."""

    epoch: int
    epochs: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float


def make_optimizer(network: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=hp.learning_rate, momentum=0.9, weight_decay=hp.weight_decay)
    optimizer = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    return optimizer(network.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)


class Loop:
    """Trains network on the (raw) training split and evaluates it on the validation split."""

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        standardiser: Standardiser,
        task: Task,
        hp: Hyperparameters,
        ctx: Context,
    ):
        x_train, y_train, x_val, y_val = data
        device = ctx.device
        self.network = network.to(device)
        self.model = distributed.wrap(self.network, ctx)
        self.optimizer = optimizer
        self.standardiser, self.task, self.hp, self.ctx = standardiser, task, hp, ctx
        self.x_train = torch.as_tensor(standardiser.features(x_train), device=device)
        targets = torch.as_tensor(standardiser.targets(y_train), device=device)
        self.y_train = targets if task == "classification" else targets.unsqueeze(1)
        self.x_val = torch.as_tensor(standardiser.features(x_val), device=device)
        self.y_val = torch.as_tensor(y_val, device=device)
        self.loss = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(len(x_train)),  # type: ignore[arg-type]  # a Sequence of row indices: the sampler takes only its len()
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=hp.seed,
        )

    def _order(self, epoch: int) -> torch.Tensor:
        """This replica's shuffled row indices for epoch: the same for the same seed and epoch, so a
        resumed run sees what an uninterrupted one would. One replica skips the sampler's Python list."""
        if self.ctx.world_size == 1:
            generator = torch.Generator().manual_seed(self.hp.seed + epoch)
            return torch.randperm(len(self.x_train), generator=generator).to(self.ctx.device)
        self.sampler.set_epoch(epoch)
        return torch.as_tensor(list(self.sampler), device=self.ctx.device)

    def train_epoch(self, epoch: int) -> float:
        """One pass over this replica's shard; the mean loss over all replicas."""
        self.model.train()
        batches = self._order(epoch).split(self.hp.batch_size)
        losses = []
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(self.x_train[batch]), self.y_train[batch])
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        sizes = torch.tensor([len(b) for b in batches], dtype=losses[0].dtype, device=self.ctx.device)
        total = torch.stack([torch.stack(losses) @ sizes, sizes.sum()])
        total = distributed.sum_across(total, self.ctx)
        return (total[0] / total[1]).item()

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current network (on the training split when there is no validation split)."""
        x, y = (self.x_val, self.y_val) if len(self.x_val) else (self.x_train, self._train_targets())
        self.network.eval()
        with torch.no_grad():
            outputs = torch.cat([self.network(chunk) for chunk in x.split(_EVAL_CHUNK)])
        self.network.train()
        return metrics.compute(outputs, y, self.task, self.standardiser.y_mean, self.standardiser.y_std)

    def _train_targets(self) -> torch.Tensor:
        if self.task == "classification":
            return self.y_train
        return self.y_train.squeeze(1) * self.standardiser.y_std + self.standardiser.y_mean

    def fit(self, first_epoch: int, on_epoch: Callable[[EpochResult], None]) -> None:
        """Run epochs first_epoch..hp.epochs (1-based), calling on_epoch after each."""
        for epoch in range(first_epoch, self.hp.epochs + 1):
            started = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            scores = self.evaluate() if self.ctx.is_main else {}
            on_epoch(EpochResult(epoch, self.hp.epochs, train_loss, scores, time.perf_counter() - started))
