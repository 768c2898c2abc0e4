"""Trainer loop overhead over a plain torch loop, plus the one-off costs around it.

Both loops train the same network from the same initial weights on the same
standardised data for the same epochs, in this process, alternating, several times;
the figures are the ratios of the medians and of the fastest runs (the latter is
less disturbed by other work on a shared machine); target: at most 5 % overhead. The plain loop
is what a user would write by hand: randperm shuffling, index batches, and validation
accuracy after each epoch. The kubeforge loop additionally computes accuracy, macro F1
and log loss and formats the progress line. MLflow registration and checkpoint writes
are timed separately and are not part of the loop comparison.

    .venv/bin/python tests/benchmarks/bench_trainer.py [--repeats 5] [--no-mlflow]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_classification

from kubeforge.api.trainingjob import ModelSpec, TrainingJobSpec
from kubeforge.training import baseline, job, models, registration, tracking
from kubeforge.training.checkpoint import Checkpoint, Store, capture_rng
from kubeforge.training.distributed import Context
from kubeforge.training.loop import Loop, make_optimizer

ROWS, FEATURES, EPOCHS, BATCH = 60_000, 32, 5, 256
SPEC = ModelSpec.model_validate(
    {
        "name": "bench",
        "architecture": "mlp",
        "hyperparameters": {"epochs": EPOCHS, "batchSize": BATCH, "hiddenUnits": [64, 64], "learningRate": 0.001},
    }
)
CPU = Context(rank=0, world_size=1, device=torch.device("cpu"))


def _data() -> tuple[np.ndarray, ...]:
    x, y = make_classification(ROWS, FEATURES, n_informative=16, random_state=0)
    x, y = x.astype(np.float32), y.astype(np.int64)
    cut = int(ROWS * 0.8)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _network() -> torch.nn.Module:
    torch.manual_seed(SPEC.hyperparameters.seed)
    return models.build(SPEC, FEATURES, 2)


def kubeforge_loop(data: tuple[np.ndarray, ...]) -> float:
    """Seconds for the trainer's loop, progress lines included."""
    network = _network()
    standardiser = models.Standardiser.fit(data[0], data[1], "classification")
    hp = SPEC.hyperparameters
    loop = Loop(network, make_optimizer(network, hp), data, standardiser, "classification", hp, CPU)
    lines: list[str] = []
    started = time.perf_counter()
    loop.fit(1, lambda result: lines.append(job.progress_line(result)))
    return time.perf_counter() - started


def plain_loop(data: tuple[np.ndarray, ...]) -> float:
    """Seconds for a hand-written loop over the same tensors."""
    network = _network()
    standardiser = models.Standardiser.fit(data[0], data[1], "classification")
    x, y = torch.as_tensor(standardiser.features(data[0])), torch.as_tensor(data[1])
    x_val, y_val = torch.as_tensor(standardiser.features(data[2])), torch.as_tensor(data[3])
    optimizer = torch.optim.Adam(network.parameters(), lr=SPEC.hyperparameters.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(EPOCHS):
        network.train()
        for batch in torch.randperm(len(x), generator=generator).split(BATCH):
            optimizer.zero_grad()
            loss = loss_fn(network(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            (network(x_val).argmax(1) == y_val).float().mean().item()
    return time.perf_counter() - started


def checkpoint_seconds(data: tuple[np.ndarray, ...]) -> float:
    network = _network()
    optimizer = make_optimizer(network, SPEC.hyperparameters)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        started = time.perf_counter()
        store.save(Checkpoint(1, network.state_dict(), optimizer.state_dict(), capture_rng(), "run", "sha"))
        return time.perf_counter() - started


def registration_seconds(data: tuple[np.ndarray, ...]) -> float:
    """Export, artifacts, log_model and register against a local MLflow server."""
    import mlflow

    from kubeforge.local import mlflow_server

    spec = TrainingJobSpec.model_validate(
        {"model": SPEC.model_dump(by_alias=True), "dataset": {"uri": "x", "target": "y"}}
    )
    network = _network()
    standardiser = models.Standardiser.fit(data[0], data[1], "classification")
    with tempfile.TemporaryDirectory() as tmp:
        server = mlflow_server.start(Path(tmp))
        try:
            tracking.connect(server.url)
            with mlflow.start_run() as run:
                started = time.perf_counter()
                scripted = models.export(network, standardiser, "classification", data[0][:8])
                names = [f"f{i}" for i in range(FEATURES)]
                registration.register(spec, run.info.run_id, scripted, 2, baseline.compute(data[0], names), {})
                return time.perf_counter() - started
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-mlflow", action="store_true", help="skip timing MLflow registration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps a shared machine's noise down")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = _data()
    kubeforge_loop(data), plain_loop(data)  # warm-up: lazy imports, allocator
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(kubeforge_loop(data))
        plain.append(plain_loop(data))
    ratio = statistics.median(ours) / statistics.median(plain)
    best = min(ours) / min(plain)
    print(f"data: {ROWS} rows x {FEATURES} features, mlp [64, 64], {EPOCHS} epochs, batch {BATCH}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"kubeforge loop: median {statistics.median(ours):.3f}s  runs {[round(t, 3) for t in ours]}")
    print(f"plain loop:     median {statistics.median(plain):.3f}s  runs {[round(t, 3) for t in plain]}")
    overhead = f"{100 * (ratio - 1):+.1f} % of medians, {100 * (best - 1):+.1f} % of best runs"
    print(f"loop overhead:  {overhead} (target <= 5 %)")
    print(f"checkpoint write (local disk): {1000 * checkpoint_seconds(data):.1f} ms")
    if not args.no_mlflow:
        print(f"registration (export, artifacts, log_model, register): {registration_seconds(data):.2f}s")


if __name__ == "__main__":
    main()
