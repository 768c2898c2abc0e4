"""The gateway's upstream client against small real servers on 127.0.0.1 that answer as Triton does, and misbehave
in the ways an upstream can (hang, close mid-answer, close an idle connection, answer garbage), on both the event
loop the gateway runs (uvloop) and asyncio's own."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from kubeforge.serving.http1 import CONNECT_TIMEOUT_S, SWEEP_S, Client, ConnectionFailed

CLOCK_SLACK_S = 0.005
"""How much sooner than the same span on time.monotonic a wait may end under uvloop: its clock is libuv's, in whole
milliseconds and read once per loop turn, and its timers round a delay to the nearest millisecond."""


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable:
    return uvloop.run if request.param == "uvloop" else asyncio.run


class Server:
    """Reads each request whole and lets answer write what it likes; counts connections."""

    def __init__(self, answer: Callable[[int, asyncio.StreamWriter], object]) -> None:
        self.answer, self.connections, self.requests, self.closed = answer, 0, 0, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.requests += 1
                result = self.answer(self.requests, writer)
                if asyncio.iscoroutine(result):
                    await result
                if writer.is_closing():
                    return
        # CancelledError: the loop's end cancels an answer still waiting; end quietly, as a server would.
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed += 1
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Callable[[int, asyncio.StreamWriter], object]) -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def test_keeps_one_connection_alive_across_calls(run: Callable) -> None:
    async def main() -> None:
        async with serving(lambda n, w: w.write(ok(b'{"n": %d}' % n, b"Inference-Header-Content-Length: 8\r\n"))) as (
            server,
            url,
        ):
            client = Client()
            for n in (1, 2, 3):
                reply = await client.request("POST", url, "/v2/models/m/infer", b"{}", {"X-Id": "a"})
                assert (reply.status_code, reply.json()) == (200, {"n": n})
                assert reply.headers["inference-header-content-length"] == "8"
            assert server.connections == 1
            await client.close()

    run(main())


def test_answer_in_pieces_and_chunked(run: Callable) -> None:
    async def pieces(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 1:  # head and body split mid-header and mid-body
            whole = ok(b'{"split": true}')
            for part in (whole[:10], whole[10:40], whole[40:-3], whole[-3:]):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for chunk in (b"4\r\nabcd\r\n", b"3;ext=1\r\nefg\r\n", b"0\r\nX-Trailer: 1\r\n", b"\r\n"):
                await asyncio.sleep(0.01)
                writer.write(chunk)

    async def main() -> None:
        async with serving(pieces) as (server, url):
            client = Client()
            assert (await client.request("GET", url, "/a")).json() == {"split": True}
            assert (await client.request("GET", url, "/b")).content == b"abcdefg"
            assert server.connections == 1
            await client.close()

    run(main())


def test_answer_without_length_ends_with_the_connection(run: Callable) -> None:
    def until_close(_: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        writer.close()

    async def main() -> None:
        async with serving(until_close) as (server, url):
            client = Client()
            assert (await client.request("GET", url, "/")).content == b"all of it"
            assert (await client.request("GET", url, "/")).content == b"all of it"
            assert server.connections == 2  # not reused after an answer that ended with the connection
            await client.close()

    run(main())


def test_timeout_fails_the_call_and_drops_the_connection(run: Callable) -> None:
    async def hang(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            await asyncio.sleep(30)
        writer.write(ok(b"{}"))

    async def main() -> None:
        async with serving(hang) as (server, url):
            client = Client()
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.request("POST", url, "/infer", b"{}", timeout=0.2)
            took = time.monotonic() - start
            assert 0.2 - CLOCK_SLACK_S <= took < 0.2 + SWEEP_S + 0.5, took
            assert (await client.request("POST", url, "/infer", b"{}")).status_code == 200
            assert server.connections == 2  # the one that timed out was never used again
            await client.close()

    run(main())


def test_idle_connection_closed_by_the_server_is_replaced(run: Callable) -> None:
    def once(_: int, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"{}"))  # then the server drops the connection without saying so
        writer.close()

    async def main() -> None:
        async with serving(once) as (server, url):
            client = Client()
            for _ in range(3):
                assert (await client.request("GET", url, "/")).status_code == 200
                await asyncio.sleep(0.05)
            assert server.connections == 3
            await client.close()

    run(main())


@pytest.mark.parametrize(
    "answer, why",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "closed mid-answer"),
        (b"this is not http\r\n\r\n", "bad answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "bad answer"),
    ],
)
def test_broken_answers_fail_as_connection_failures(run: Callable, answer: bytes, why: str) -> None:
    def broken(_: int, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        writer.close()

    async def main() -> None:
        async with serving(broken) as (_, url):
            client = Client()
            with pytest.raises(ConnectionFailed, match=why):
                await client.request("POST", url, "/infer", b"{}")
            await client.close()

    run(main())


def test_refused_connection(run: Callable) -> None:
    async def main() -> None:
        async with serving(lambda n, w: None) as (_, url):
            pass  # listener closed: nothing accepts on that port now
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await Client().request("GET", url, "/")

    run(main())


@pytest.mark.parametrize("timeout, waits", [(0.3, 0.3), (5.0, CONNECT_TIMEOUT_S)])
def test_a_connection_not_accepted_in_time_fails_as_a_connection_failure(
    run: Callable, timeout: float, waits: float
) -> None:
    """A server whose accept queue is full drops new connection attempts, as one gone with its address does: the
    call fails as ConnectionFailed, naming the wait, after its timeout or CONNECT_TIMEOUT_S, whichever is shorter,
    so a caller with another replica has the rest of its time for it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepts: one connection fills its queue, and the kernel drops the next attempts
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))

    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(ConnectionFailed, match=re.escape(f"127.0.0.1:{port}: not accepted within {waits:g}s")):
            await Client().request("POST", f"http://127.0.0.1:{port}", "/infer", b"{}", timeout=timeout)
        assert waits - CLOCK_SLACK_S <= time.monotonic() - start < waits + 0.5

    try:
        run(main())
    finally:
        queued.close()
        listener.close()
