"""Calls from the gateway to Triton over one shared keep-alive connection pool.

Request bodies go out exactly as they came in (JSON or binary tensor data), and Triton's
response bytes come back untouched: the gateway never re-encodes tensors. A 5xx,
a refused or reset connection and a timeout are failures the caller may fall back
from; a 4xx is Triton's verdict on the input and goes to the client as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .http1 import Client, ConnectionFailed, Reply
from .metrics import TargetMetrics
from .oip import HEADER_LENGTH, Schema
from .routes import Target


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

    async def infer(self, target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        metrics = self.bind(target)
        start = time.perf_counter()
        try:
            resp = await self.client.request("POST", target.url, target.base + "/infer", body, headers, timeout)
        except TimeoutError as err:
            metrics.timeout.inc()
            raise UpstreamFailure("timeout", f"version {target.version} timed out after {timeout:g}s") from err
        except ConnectionFailed as err:
            metrics.error.inc()
            target.ready = False  # refused or reset: route around it until the health check sees it back
            raise UpstreamFailure("error", f"version {target.version} unreachable: {type(err).__name__}") from err
        seconds = time.perf_counter() - start
        metrics.upstream_duration.observe(seconds)
        if resp.status_code >= 500:
            metrics.error.inc()
            raise UpstreamFailure("error", f"version {target.version} answered {resp.status_code}")
        metrics.ok.inc()
        return Answer(
            resp.status_code,
            resp.content,
            resp.headers.get("content-type", "application/json"),
            resp.headers.get(HEADER_LENGTH),
            seconds,
        )

    async def get(self, target: Target, suffix: str = "", timeout: float = 2.0) -> Reply:
        """GET a path under the version (metadata, /config, /ready); raises OSError or TimeoutError."""
        return await self.client.request("GET", target.url, target.base + suffix, timeout=timeout)

    async def probe(self, target: Target) -> bool:
        """Refresh target.ready (and its schema, once) from Triton."""
        try:
            target.ready = (await self.get(target, "/ready")).status_code == 200
            if target.ready and target.schema is None:
                await self.schema(target)
        except (OSError, TimeoutError):
            target.ready = False
        return target.ready

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
