"""Checkpoints, so a retried or rescheduled training pod resumes instead of starting over.

A checkpoint holds everything the next attempt needs to continue the same run as if it
had never stopped: network and optimizer state, the last finished epoch, torch's RNG
state (dropout draws continue where they left off; shuffling is seeded per epoch) and
the MLflow run id, so metrics keep going into the same run.

Files are written under a temporary name in the checkpoint directory and then renamed,
so a pod killed mid-write never leaves a truncated file behind that the next attempt
would load (on object stores, the object appears whole when the copy completes). Only
the newest checkpoint is kept.
"""

from __future__ import annotations

import io
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import torch

from .errors import TrainerError

_NAME = re.compile(r"^epoch-(\d+)\.pt$")


@dataclass
class Checkpoint:
    """Training state after ``epoch`` finished epochs."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    run_id: str | None
    dataset_sha256: str


def capture_rng() -> dict[str, Any]:
    """torch's RNG state on the CPU and on every CUDA device."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Store:
    """The checkpoint directory of one TrainingJob (spec.checkpoint.uri)."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.fs, self.path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:
            raise TrainerError(f"spec.checkpoint.uri: cannot open {uri}: {exc}") from None

    def _epochs(self) -> dict[int, str]:
        self.fs.invalidate_cache(self.path)
        try:
            names = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            if match := _NAME.match(posixpath.basename(name)):
                found[int(match.group(1))] = name
        return found

    def latest(self, dataset_sha256: str) -> Checkpoint | None:
        """The newest checkpoint, or None; refuses one written for other data."""
        epochs = self._epochs()
        if not epochs:
            return None
        with self.fs.open(epochs[max(epochs)], "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        checkpoint = Checkpoint(**state)
        if checkpoint.dataset_sha256 != dataset_sha256:
            raise TrainerError(
                f"spec.checkpoint.uri: the checkpoint in {self.uri} was written for other data "
                f"(dataset sha256 {checkpoint.dataset_sha256[:12]}…, now {dataset_sha256[:12]}…); "
                "point spec.checkpoint.uri at a new directory to start over"
            )
        return checkpoint

    def save(self, checkpoint: Checkpoint) -> str:
        """Write checkpoint atomically, drop older ones, and return its path."""
        buffer = io.BytesIO()
        torch.save(vars(checkpoint), buffer)
        self.fs.makedirs(self.path, exist_ok=True)
        final = posixpath.join(self.path, f"epoch-{checkpoint.epoch:06d}.pt")
        partial = posixpath.join(self.path, f".{uuid.uuid4().hex}.partial")
        with self.fs.open(partial, "wb") as f:
            f.write(buffer.getvalue())
        self.fs.mv(partial, final)
        for epoch, path in self._epochs().items():
            if epoch != checkpoint.epoch:
                self.fs.rm(path)
        return final
