"""Checkpoints: the newest one wins, older ones and partial files do not linger, foreign ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubeforge.training.checkpoint import Checkpoint, Store, capture_rng, restore_rng
from kubeforge.training.errors import TrainerError


def _checkpoint(epoch: int, sha: str = "abc") -> Checkpoint:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Checkpoint(epoch, model.state_dict(), optimizer.state_dict(), capture_rng(), "run-1", sha)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_latest_checkpoint_round_trips(where: str, tmp_path: Path) -> None:
    uri = str(tmp_path / "ckpt") if where == "local" else "memory://kf-ckpt/job"
    store = Store(uri)
    assert store.latest("abc") is None
    first, second = _checkpoint(5), _checkpoint(10)
    store.save(first)
    store.save(second)

    loaded = Store(uri).latest("abc")

    assert loaded is not None
    assert (loaded.epoch, loaded.run_id) == (10, "run-1")
    torch.testing.assert_close(loaded.model["weight"], second.model["weight"])
    names = [p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path, detail=False)]
    assert names == ["epoch-000010.pt"]


def test_rng_state_continues_where_it_was_saved() -> None:
    torch.manual_seed(3)
    state = capture_rng()
    expected = torch.rand(4)
    torch.rand(100)
    restore_rng(state)
    torch.testing.assert_close(torch.rand(4), expected)


def test_checkpoint_of_other_data_is_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.save(_checkpoint(3, sha="old-data-hash"))
    with pytest.raises(TrainerError, match=r"spec\.checkpoint\.uri: the checkpoint .* was written for other data"):
        store.latest("new-data-hash")
