"""A small HTTP/1.1 keep-alive client on asyncio streams, for the gateway's calls to Triton.

General-purpose async clients cost milliseconds per call on a small machine (separate
writes for headers and body meeting delayed ACKs, per-request machinery), more than the
whole hop may add. Triton answers with Content-Length (or chunked) bodies on persistent
connections, and that is all this client speaks: one write per request, one pool of idle
connections per origin, and a connection that fails mid-call is closed, never reused.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class ConnectionFailed(OSError):
    """The upstream refused, reset or closed the connection before answering."""


@dataclass(frozen=True)
class Reply:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class Client:
    """Keep-alive connection pools keyed by origin (http://host:port)."""

    def __init__(self, max_idle_per_origin: int = 64):
        self.max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, int], list[_Conn]] = defaultdict(list)
        self._origins: dict[str, tuple[str, int]] = {}

    def _origin(self, url: str) -> tuple[str, int]:
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"only http:// upstreams are supported, got {url!r}")
            origin = self._origins[url] = (parts.hostname, parts.port or 80)
        return origin

    async def request(
        self, method: str, url: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout=5.0
    ) -> Reply:
        """Send one request; raises ConnectionFailed, or TimeoutError after timeout seconds."""
        origin = self._origin(url)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {origin[0]}:{origin[1]}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
        data = ("".join(head) + "\r\n").encode("latin-1") + body
        async with asyncio.timeout(timeout):
            idle = self._idle[origin]
            while idle:  # a pooled connection the server closed meanwhile fails at once: try the next
                conn = idle.pop()
                try:
                    return await self._exchange(origin, conn, data)
                except ConnectionFailed:
                    continue
            try:
                reader, writer = await asyncio.open_connection(*origin)
            except OSError as err:
                raise ConnectionFailed(f"cannot connect to {origin[0]}:{origin[1]}: {err}") from err
            return await self._exchange(origin, _Conn(reader, writer), data)

    async def _exchange(self, origin: tuple[str, int], conn: _Conn, data: bytes) -> Reply:
        try:
            conn.writer.write(data)
            head = await conn.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
            if "content-length" in headers:
                content = await conn.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                content = await self._chunked(conn.reader)
            else:
                content = await conn.reader.read()
                headers["connection"] = "close"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as err:
            conn.close()
            raise ConnectionFailed(f"{origin[0]}:{origin[1]}: {type(err).__name__}: {err}") from err
        except BaseException:  # cancelled or timed out mid-exchange: the stream is out of step
            conn.close()
            raise
        if headers.get("connection", "").lower() == "close" or len(self._idle[origin]) >= self.max_idle:
            conn.close()
        else:
            self._idle[origin].append(conn)
        return Reply(status, headers, content)

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
