"""A version's replicas as the gateway tries them, where one takes no connections: its accept queue full, as a
server's is when it cannot keep up and as an address's is in effect once its pod is gone without a word (nothing
answers the connection attempt). The replicas are real sockets on 127.0.0.1: a listener that never accepts, and a
small server answering as Triton does."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from kubeforge.serving.http1 import CONNECT_TIMEOUT_S
from kubeforge.serving.routes import Target
from kubeforge.serving.upstream import UpstreamFailure, Upstreams

ANSWER = b'{"model_name": "clf", "outputs": []}'


@pytest.fixture
def silent() -> Iterator[str]:
    """A replica that takes no connections: one waits in its accept queue, and the kernel drops the next attempts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    queued = socket.create_connection(listener.getsockname())
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        queued.close()
        listener.close()


@contextlib.asynccontextmanager
async def answering() -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # CancelledError: the loop's end cancels a connection the client left open; end quietly, as a server would.
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def replicas(good: str, silent: str) -> Target:
    """A version whose next request goes to the silent replica first (round-robin starts at the second)."""
    return Target("clf", "1", good, "clf", endpoints=(good, silent))


def test_a_replica_that_takes_no_connection_is_left_for_the_next_within_the_timeout(silent: str) -> None:
    async def main() -> None:
        upstreams = Upstreams()
        async with answering() as good:
            target = replicas(good, silent)
            start = time.monotonic()
            answer = await upstreams.infer(target, b"{}", {}, 5.0)
            assert answer.status == 200 and answer.content == ANSWER
            assert CONNECT_TIMEOUT_S <= time.monotonic() - start < 5.0, "the silent replica held it one connect"
            assert target.down == {silent} and target.ready
            assert (await upstreams.infer(target, b"{}", {}, 5.0)).status == 200, "and the next went to the other"
        await upstreams.close()

    asyncio.run(main())


def test_a_silent_replica_that_takes_the_whole_timeout_fails_the_try_as_a_timeout(silent: str) -> None:
    """No time is left for another replica: the try timed out (504 at the gateway, the caller's fallback, the
    timeout counter), and the replica never tried is not taken for down."""

    async def main() -> None:
        upstreams = Upstreams()
        async with answering() as good:
            target = replicas(good, silent)
            with pytest.raises(UpstreamFailure, match=r"timed out after 0\.3s") as failed:
                await upstreams.infer(target, b"{}", {}, 0.3)
            assert failed.value.reason == "timeout"
            assert target.down == {silent} and target.ready
        await upstreams.close()

    asyncio.run(main())
