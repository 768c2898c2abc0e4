"""Shadow traffic: mirror live requests to a version whose answers are compared, never returned.

Mirrors go through a bounded queue worked off by background tasks, after the live
response is ready: a slow, failing or overloaded shadow costs the caller nothing, and
when the queue is full the mirror is dropped (and counted) rather than waited for. What a
mirrored version answers counts in its drift as live answers do.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from .metrics import SHADOW_LATENCY_DELTA, SHADOW_LATENCY_DELTA_SUM, SHADOW_PREDICTIONS, SHADOW_REQUESTS
from .monitor import Monitor
from .oip import Body, tensors
from .routes import Route, Target
from .upstream import Answer, UpstreamFailure, Upstreams

log = logging.getLogger(__name__)


def agreement(task: str, tolerance: float, live: np.ndarray, shadow: np.ndarray) -> tuple[int, int]:
    """(agreeing, disagreeing) rows: equal argmax for classification, relative error within tolerance
    for regression. Shapes that differ disagree on every row."""
    rows = live.shape[0] if live.ndim else 1
    if live.shape != shadow.shape:
        return 0, rows
    live2, shadow2 = live.reshape(rows, -1), shadow.reshape(rows, -1)
    if task == "classification":
        same = live2.argmax(axis=1) == shadow2.argmax(axis=1)
    else:
        scale = np.maximum(np.abs(live2), np.finfo(np.float64).tiny)
        same = np.all(np.abs(shadow2 - live2) <= tolerance * scale, axis=1)
    agree = int(same.sum())
    return agree, rows - agree


@dataclass(frozen=True)
class Job:
    route: Route
    target: Target
    body: bytes
    headers: dict[str, str]
    live: Answer
    observed: Body
    """What the version receives, as drift tracking reads it (body sent uncompressed)."""


class Mirror:
    """Bounded queue of mirrored requests and the workers that send and compare them."""

    def __init__(self, upstreams: Upstreams, monitor: Monitor, capacity: int = 256, workers: int = 2):
        self.upstreams = upstreams
        self.monitor = monitor
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=capacity)
        self.workers = workers

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            SHADOW_REQUESTS.labels(job.route.name, job.target.version, "dropped").inc()

    async def run(self) -> None:
        await asyncio.gather(*(self._work() for _ in range(self.workers)))

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._mirror(job)
            except Exception:  # a bad comparison must not stop the worker
                log.exception("shadow comparison failed for model %s", job.route.name)
            finally:
                self.queue.task_done()

    async def _mirror(self, job: Job) -> None:
        name, version = job.route.name, job.target.version
        try:
            answer = await self.upstreams.infer(job.target, job.body, job.headers, job.route.timeout)
        except UpstreamFailure:
            SHADOW_REQUESTS.labels(name, version, "error").inc()
            return
        if answer.status != 200:
            SHADOW_REQUESTS.labels(name, version, "error").inc()
            return
        SHADOW_REQUESTS.labels(name, version, "ok").inc()
        self.monitor.record(job.target, *job.observed, answer.content, answer.header_size)
        delta = answer.seconds - job.live.seconds
        SHADOW_LATENCY_DELTA.labels(name, version).observe(delta)
        SHADOW_LATENCY_DELTA_SUM.labels(name, version).inc(delta)
        live = tensors(job.live.content, job.live.header_size)
        shadow = tensors(answer.content, answer.header_size)
        agree = disagree = 0
        for key, value in live.items():
            a, d = agreement(job.route.spec.task, job.route.spec.tolerance, value, shadow.get(key, np.empty(0)))
            agree, disagree = agree + a, disagree + d
        SHADOW_PREDICTIONS.labels(name, version, "agree").inc(agree)
        SHADOW_PREDICTIONS.labels(name, version, "disagree").inc(disagree)
