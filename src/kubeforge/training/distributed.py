"""Process-group setup for TrainingJobs with more than one replica.

Environment contract (the standard ``torch.distributed`` / torchrun variables, so any
launcher that speaks them works):

===============  =========================================================================
``WORLD_SIZE``   number of trainer processes; must equal ``spec.replicas`` (1 when unset)
``RANK``         this process's rank, 0..WORLD_SIZE-1; rank 0 alone logs to MLflow,
                 writes checkpoints and registers the model version
``LOCAL_RANK``   GPU index on this node (0 when unset)
``MASTER_ADDR``  host of rank 0, reachable from every replica
``MASTER_PORT``  port rank 0 listens on for the rendezvous
===============  =========================================================================

In a cluster, each replica is one pod of an indexed Job running::

    torchrun --nnodes=$REPLICAS --nproc-per-node=1 --node-rank=$JOB_COMPLETION_INDEX \\
        --master-addr=<job>-0.<headless service> --master-port=29500 \\
        -m kubeforge.training.main --spec /etc/kubeforge/trainingjob.yaml

torchrun turns its flags into the variables above. On one machine, two processes::

    python -m torch.distributed.run --standalone --nproc-per-node=2 \\
        -m kubeforge.training.main --spec job.yaml

The backend is nccl when CUDA is available and gloo otherwise. Every replica reads the
whole dataset and trains on its DistributedSampler shard; a checkpoint URI must be
storage every replica can read (an object store or a shared volume), since rank 0
writes it and all ranks resume from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import distributed, nn
from torch.nn.parallel import DistributedDataParallel

from .errors import TrainerError


@dataclass(frozen=True)
class Context:
    """Where this process sits in the job: its rank, the world size and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that talks to MLflow and writes checkpoints."""
        return self.rank == 0


def start(replicas: int) -> Context:
    """Join the process group that spec.replicas asks for (nothing to join for one replica)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != replicas:
        raise TrainerError(
            f"spec.replicas is {replicas} but this trainer was started with WORLD_SIZE={world_size}; "
            f"launch it with torchrun so that {replicas} processes run, e.g. "
            f"python -m torch.distributed.run --standalone --nproc-per-node={replicas} -m kubeforge.training.main ..."
        )
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, device=device)


def stop(ctx: Context) -> None:
    """Leave the process group, so the launcher sees a clean exit."""
    if ctx.world_size > 1 and distributed.is_initialized():
        distributed.destroy_process_group()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """model under DistributedDataParallel when there are several replicas, else model itself."""
    if ctx.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def sum_across(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """values summed over all replicas (in place), e.g. loss totals and example counts."""
    if ctx.world_size > 1:
        distributed.all_reduce(values)
    return values
