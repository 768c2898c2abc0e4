"""Free memory back to the system once a burst of work is over.

A burst (hundreds of resources created at once, an operator restart listing everything) decodes
thousands of watch events and API answers while they queue. The C allocator keeps the pages
those freed afterwards, so the operator's resident memory would stay at the burst's level for
good. glibc's ``malloc_trim`` hands the free pages back; the operator calls it when a period
with work is followed by a quiet one, which costs a few milliseconds per burst and nothing while
idle (docs/benchmarks.md, Operator). Where the C library is not glibc there is nothing to call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

CHECK_S = 10.0
"""How often the operator's CPU time is looked at."""
BUSY_CPU_S = 1.0
"""CPU seconds within one CHECK_S that count as a burst (10 % of a core)."""
TASK = "kubeforge.heap.trim"  # key of the task in the operator's memo
log = logging.getLogger("kubeforge.operators.heap")


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, None elsewhere (musl, macOS)."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None


def burst_ended(cpu_before: float, cpu_then: float, cpu_now: float) -> bool:
    """Whether the period ending at cpu_then had work and the one ending at cpu_now had none."""
    return cpu_then - cpu_before >= BUSY_CPU_S > cpu_now - cpu_then


async def _trim_after_bursts(trim: Callable[[int], int]) -> None:
    before = then = time.process_time()
    while True:
        await asyncio.sleep(CHECK_S)
        now = time.process_time()
        if burst_ended(before, then, now):
            trim(0)
            log.debug("returned the free heap to the system after a burst")
        before, then = then, now


@kopf.on.startup()
async def start_trimming(memo: kopf.Memo, **_: Any) -> None:
    trim = malloc_trim()
    if trim is not None:
        memo[TASK] = asyncio.create_task(_trim_after_bursts(trim))


@kopf.on.cleanup()
async def stop_trimming(memo: kopf.Memo, **_: Any) -> None:
    if TASK in memo:
        memo[TASK].cancel()
