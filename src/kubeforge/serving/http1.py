"""A small HTTP/1.1 keep-alive client on asyncio protocols, for the gateway's calls to Triton.

General-purpose async clients cost milliseconds per call on a small machine (separate
writes for headers and body meeting delayed ACKs, per-request machinery), more than the
whole hop may add. Triton answers with Content-Length (or chunked) bodies on persistent
connections, and that is all this client speaks: one write per request, one pool of idle
connections per origin, and a connection that fails mid-call is closed, never reused.

Each connection is a protocol that collects the answer's bytes and completes one future
when the whole answer is there, so a call costs one wake-up rather than a stream reader's
several; and deadlines are checked by one sweep every SWEEP_S while calls are in flight
rather than by a timer armed and cancelled per call (both measured on the gateway's hot
path: see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SWEEP_S = 0.01
"""How often calls past their deadline are looked for: a timeout fires at most this late."""

CONNECT_TIMEOUT_S = 1.0
"""How long a new connection may take. A server that accepts answers a connect in well under a millisecond here;
one that does not within a second is dropping the attempt (its accept queue full, or its address gone with its
pod, where nothing answers at all), and the kernel would only try again after a second: the call fails as
ConnectionFailed, so a caller with another replica still has the rest of its timeout for it."""


class ConnectionFailed(OSError):
    """The upstream refused, reset or closed the connection before answering."""


@dataclass(frozen=True)
class Reply:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one call at a time, whose future gets the parsed Reply."""

    def __init__(self, origin: tuple[str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[int, int, dict[str, str]] | None = None
        """Where the answer's body starts, its status and headers, once they have arrived."""
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False

    def send(self, data: bytes, waiter: asyncio.Future[Reply]) -> None:
        assert self.transport is not None
        self.waiter, self.head = waiter, None
        self.buffer.clear()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self._settle(eof=False)

    def eof_received(self) -> bool:
        if self.waiter is not None:  # an answer without a length ends with the connection
            self._settle(eof=True)
        return False  # the transport closes itself

    def _settle(self, eof: bool) -> None:
        """Complete the call with the answer once it is whole; fail it on one that is not HTTP, or cut short."""
        try:
            reply = self._reply(eof)
        except (ValueError, IndexError) as err:
            self.fail(ConnectionFailed(f"{self._where()}: bad answer: {type(err).__name__}: {err}"))
            return
        if reply is not None:
            if eof:
                reply.headers["connection"] = "close"
            self._complete(reply)
        elif eof:
            self.fail(ConnectionFailed(f"{self._where()}: connection closed mid-answer"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        why = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
        self.fail(ConnectionFailed(f"{self._where()}: {why}"))

    def _reply(self, eof: bool) -> Reply | None:
        """The whole answer, or None while more is to come; raises ValueError on one that is not HTTP/1.1."""
        buffer = self.buffer
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            lines = buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            self.head = (end + 4, int(lines[0].split(" ", 2)[1]), headers)
        start, status, headers = self.head
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            return Reply(status, headers, bytes(buffer[start:stop])) if len(buffer) >= stop else None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            content = _dechunk(buffer, start)
            return None if content is None else Reply(status, headers, content)
        return Reply(status, headers, bytes(buffer[start:])) if eof else None

    def _complete(self, reply: Reply) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def fail(self, err: BaseException) -> None:
        """End the call under way with err; the connection is not used again."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _where(self) -> str:
        return f"{self.origin[0]}:{self.origin[1]}"


def _dechunk(buffer: bytearray, at: int) -> bytes | None:
    """A chunked body that starts at offset at, or None while its last chunk has not arrived."""
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if size == 0:  # then trailers, if any, and an empty line
            return b"".join(parts) if buffer.find(b"\r\n\r\n", at - 2) >= 0 else None
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


class Client:
    """Keep-alive connection pools keyed by origin (http://host:port)."""

    def __init__(self, max_idle_per_origin: int = 64):
        self.max_idle = max_idle_per_origin
        self._idle: dict[tuple[str, int], list[_Conn]] = defaultdict(list)
        self._origins: dict[str, tuple[str, int]] = {}
        self._deadlines: dict[_Conn, float] = {}
        self._sweep: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

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
        """Send one request; raises ConnectionFailed (also where a new connection is not made within timeout or
        CONNECT_TIMEOUT_S, whichever is shorter), or TimeoutError after timeout seconds."""
        origin = self._origin(url)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {origin[0]}:{origin[1]}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in (headers or {}).items()]
        data = ("".join(head) + "\r\n").encode("latin-1") + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        idle = self._idle[origin]
        while idle:  # a pooled connection the server closed meanwhile fails at once: try the next
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(loop, conn, data, deadline)
            except ConnectionFailed:
                continue
        connect_by = min(deadline, loop.time() + CONNECT_TIMEOUT_S)
        try:
            async with asyncio.timeout_at(connect_by):
                transport, conn = await loop.create_connection(lambda: _Conn(origin), *origin)
        except TimeoutError as err:  # before OSError, which it is a kind of
            waited = min(timeout, CONNECT_TIMEOUT_S)
            message = f"cannot connect to {origin[0]}:{origin[1]}: not accepted within {waited:g}s"
            raise ConnectionFailed(message) from err
        except OSError as err:
            raise ConnectionFailed(f"cannot connect to {origin[0]}:{origin[1]}: {err}") from err
        conn.transport = transport  # set here: uvloop calls connection_made later
        return await self._exchange(loop, conn, data, deadline)

    async def _exchange(self, loop: asyncio.AbstractEventLoop, conn: _Conn, data: bytes, deadline: float) -> Reply:
        waiter: asyncio.Future[Reply] = loop.create_future()
        self._deadlines[conn] = deadline
        if self._sweep is None or self._sweep[0] is not loop:
            self._sweep = (loop, loop.call_later(SWEEP_S, self._expire, loop))
        try:
            conn.send(data, waiter)
            reply = await waiter
        except BaseException:  # failed, timed out or cancelled mid-exchange: the stream is out of step
            conn.close()
            raise
        finally:
            del self._deadlines[conn]
        if reply.headers.get("connection", "").lower() == "close" or len(self._idle[conn.origin]) >= self.max_idle:
            conn.close()
        else:
            self._idle[conn.origin].append(conn)
        return reply

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the calls past their deadline with TimeoutError; look again in SWEEP_S while any is in flight."""
        now = loop.time()
        for conn, deadline in list(self._deadlines.items()):
            if deadline <= now:
                conn.fail(TimeoutError())
        self._sweep = (loop, loop.call_later(SWEEP_S, self._expire, loop)) if self._deadlines else None

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
