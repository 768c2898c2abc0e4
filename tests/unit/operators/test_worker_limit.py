"""The operator's worker limit as kopf's own scheduler applies it: none until kopf has indexed everything, then
the operator's (runtime.WorkerLimit). The scheduler is kopf's internal one, used as kopf's watcher uses it: this
fails if a kopf upgrade stops comparing its running workers with the limit this way."""

from __future__ import annotations

import asyncio

import pytest
from kopf._cogs.aiokits import aiotasks

from kubeforge.operators.runtime import WorkerLimit
from kubeforge.operators.settings import Settings


async def _peak_running(limit: WorkerLimit, jobs: int) -> tuple[int, int]:
    """(most running at once, how many finished) when jobs coroutines are spawned at once."""
    scheduler = aiotasks.Scheduler(limit=limit)  # type: ignore[arg-type]
    release = asyncio.Event()
    running = peak = done = 0

    async def job() -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        done += 1

    for _ in range(jobs):
        await scheduler.spawn(job())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(scheduler.wait(), 5)
    await scheduler.close()
    return peak, done


def test_no_limit_until_indexed_then_the_operators() -> None:
    limit = WorkerLimit()
    limit.limit = 3
    # While kopf indexes what the operator starts with, every object's worker runs (a limit would deadlock).
    assert asyncio.run(_peak_running(limit, 10)) == (10, 10)
    limit.indexed = True
    assert asyncio.run(_peak_running(limit, 10)) == (3, 10), "three at a time, and every one done"


def test_the_limit_comes_from_the_environment_and_a_bad_one_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv("KUBEFORGE_WORKER_LIMIT", "40")
    assert Settings.from_env().worker_limit == 40
    monkeypatch.delenv("KUBEFORGE_WORKER_LIMIT")
    assert Settings.from_env().worker_limit == 100
    for bad in ("0", "-3", "many"):
        monkeypatch.setenv("KUBEFORGE_WORKER_LIMIT", bad)
        with pytest.raises(ValueError, match="KUBEFORGE_WORKER_LIMIT must be a whole number of at least 1"):
            Settings.from_env()
