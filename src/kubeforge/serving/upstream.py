"""Calls from the gateway to Triton over one shared keep-alive connection pool.

Request bodies go out exactly as they came in (JSON or binary tensor data), and Triton's
response bytes come back untouched: the gateway never re-encodes tensors. A 5xx,
a refused or reset connection and a timeout are failures the caller may fall back
from; a 4xx is Triton's verdict on the input and goes to the client as it is. Where the
route table names a version's replicas (endpoints addressing), requests go round-robin over
them and a refused or reset connection is tried at the next one before it counts as a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .http1 import Client, ConnectionFailed, Reply
from .metrics import TargetMetrics
from .oip import HEADER_LENGTH, Schema
from .routes import Target

log = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """A try that failed in a way worth retrying elsewhere; reason is error or timeout."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    """Triton's response to one try."""

    status: int
    content: bytes
    content_type: str
    header_length: str | None
    seconds: float

    @property
    def header_size(self) -> int | None:
        """Bytes of JSON before the binary tensor data; None for an all-JSON answer."""
        return int(self.header_length) if self.header_length else None


class Upstreams:
    """The shared HTTP client and what the gateway asks of Triton through it."""

    def __init__(self, max_connections: int = 256):
        self.client = Client(max_idle_per_origin=max_connections)

    async def close(self) -> None:
        await self.client.close()

    @staticmethod
    def bind(target: Target) -> TargetMetrics:
        if target.metrics is None or target.metrics.labels[2] != target.role:
            target.metrics = TargetMetrics(target.model, target.version, target.role)
        return target.metrics

    async def infer(
        self, target: Target, body: bytes, headers: dict[str, str], timeout: float, callers: int = 1
    ) -> Answer:
        """One try at the version: at one of its replicas, or, where one refuses or drops the connection, at each
        of the others in turn (an inference has no side effect to repeat), all within timeout. callers: the
        callers' requests joined in body (serving.joiner); the try counts once for each, as their own tries would
        have, so error rates, canary analysis and its minRequests read the same with joining as without."""
        metrics = self.bind(target)
        if callers > 1:
            metrics.joins.inc()
            metrics.joined.inc(callers)
        start = time.perf_counter()
        tried: list[str] = []
        failure: ConnectionFailed | None = None
        while (url := target.address(tried)) is not None:
            left = timeout - (time.perf_counter() - start) if tried else timeout
            try:
                if left <= 0:  # a replica that did not accept in time took what was left for another
                    raise TimeoutError
                tried.append(url)
                resp = await self.client.request("POST", url, target.base + "/infer", body, headers, left)
                break
            except TimeoutError as err:
                metrics.timeout.inc(callers)
                raise UpstreamFailure("timeout", f"version {target.version} timed out after {timeout:g}s") from err
            except ConnectionFailed as err:
                self._mark(target, url, False, str(err))  # until the health check finds it ready again
                failure = err
        else:
            metrics.error.inc(callers)
            where = "unreachable" if len(tried) == 1 else f"unreachable at each of its {len(tried)} replicas"
            raise UpstreamFailure("error", f"version {target.version} {where}: {type(failure).__name__}") from failure
        seconds = time.perf_counter() - start
        for _ in range(callers):
            metrics.upstream_duration.observe(seconds)
        if resp.status_code >= 500:
            metrics.error.inc(callers)
            raise UpstreamFailure("error", f"version {target.version} answered {resp.status_code}")
        metrics.ok.inc(callers)
        return Answer(
            resp.status_code,
            resp.content,
            resp.headers.get("content-type", "application/json"),
            resp.headers.get(HEADER_LENGTH),
            seconds,
        )

    async def get(self, target: Target, suffix: str = "", timeout: float = 2.0, url: str | None = None) -> Reply:
        """GET a path under the version (metadata, /config, /ready) from one of its replicas (url, when given);
        raises OSError or TimeoutError."""
        url = url or target.address() or target.url
        return await self.client.request("GET", url, target.base + suffix, timeout=timeout)

    async def probe(self, target: Target) -> bool:
        """Refresh what is known of each replica's readiness (and the version's schema, once) from Triton."""

        async def ready(url: str) -> None:
            try:
                status = (await self.get(target, "/ready", url=url)).status_code
                self._mark(target, url, status == 200, f"/ready answered {status}")
            except (OSError, TimeoutError) as err:
                self._mark(target, url, False, str(err) or type(err).__name__)

        await asyncio.gather(*(ready(url) for url in target.replicas))
        if target.ready and target.schema is None:
            await self.schema(target)
        return target.ready

    @staticmethod
    def _mark(target: Target, url: str, ready: bool, why: str) -> None:
        if target.mark(url, ready):
            what = "ready again" if ready else f"not ready ({why}); requests go to its other replicas, if any"
            log.log(
                logging.INFO if ready else logging.WARNING,
                "version %s of %s at %s: %s",
                target.version,
                target.model,
                url,
                what,
            )

    async def schema(self, target: Target) -> Schema | None:
        """The version's input schema, fetched once; None while Triton cannot tell."""
        if target.schema is None:
            try:
                meta, config = await self.get(target), await self.get(target, "/config")
                if meta.status_code == config.status_code == 200:
                    target.schema = Schema.from_triton(target.model, meta.json(), config.json())
            except (OSError, TimeoutError, ValueError, KeyError):
                return None
        return target.schema
