"""What the operators' pods ask the scheduler for, built in one place so servers and runs differ only where meant.

Servers (Triton, its exporting init container, the gateway) request CPU without a limit: a CPU limit throttles in
100 ms periods, which callers see as tail latency. Runs (training attempts, materialization Jobs) are limited to
what they request, so one run cannot starve the others a node holds. Both have memory requested and limited: past
its limit a container restarts instead of the node's other pods running short. A GPU is an extended resource,
named as a limit only (Kubernetes requests what it limits).
"""

from __future__ import annotations

from typing import Any

GPU = "nvidia.com/gpu"


def server(cpu: int | str, memory: int | str, gpus: int = 0) -> dict[str, Any]:
    """CPU requested, memory requested and limited."""
    return _with_gpus({"requests": _amounts(cpu, memory), "limits": {"memory": str(memory)}}, gpus)


def run(cpu: int | str, memory: int | str, gpus: int = 0) -> dict[str, Any]:
    """CPU and memory requested and limited alike."""
    return _with_gpus({"requests": _amounts(cpu, memory), "limits": _amounts(cpu, memory)}, gpus)


def _amounts(cpu: int | str, memory: int | str) -> dict[str, str]:
    return {"cpu": str(cpu), "memory": str(memory)}


def _with_gpus(resources: dict[str, Any], gpus: int) -> dict[str, Any]:
    if gpus:
        resources["limits"][GPU] = str(gpus)
    return resources
