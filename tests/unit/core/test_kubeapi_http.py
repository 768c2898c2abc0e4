"""The operators' HTTP/1.1 exchange with the API server, against small real servers on 127.0.0.1 that answer the ways
an API server (or a proxy in front of one) can: in chunks with trailers after a 100 Continue, by Content-Length,
with Connection: close, closing a kept-alive connection while idle, closing or resetting it in the middle of an
answer, or answering something malformed."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kubeforge.core.kubeapi import ApiError, KubeApi
from tests.unit.serving.test_http1 import ok

Answer = Callable[[int, socket.socket], bool]
"""Writes the answer to the nth request (from 1) on a connection; returns whether to keep the connection open."""


@contextlib.contextmanager
def server(answer: Answer) -> Iterator[tuple[KubeApi, list[bytes]]]:
    """A server whose connections each read requests and let answer reply; yields a connection to it and the
    requests it read, in order."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as file:
            for n in itertools.count(1):
                head = list(itertools.takewhile(lambda line: line != b"\r\n", iter(file.readline, b"")))
                if not head:  # the client is gone
                    return
                length = next((int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length")), 0)
                seen.append(head[0].rstrip() + b" " + file.read(length))
                if not answer(n, conn):
                    return

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield KubeApi(f"http://127.0.0.1:{listener.getsockname()[1]}", None, {}, None), seen
    finally:
        listener.close()


def test_answers_by_length_and_in_chunks_after_an_interim_one_share_one_connection() -> None:
    def answer(n: int, conn: socket.socket) -> bool:
        if n == 1:
            conn.sendall(ok(b'{"kind": "ConfigMap"}'))
        else:
            conn.sendall(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'5\r\n{"a":\r\n3;ext=1\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n'
            )
        return True

    with server(answer) as (api, seen):
        assert api.request("GET", "/api/v1/namespaces/a/configmaps/c") == {"kind": "ConfigMap"}
        assert api.request("POST", "/api/v1/namespaces/a/configmaps", {"x": 1}) == {"a": 1}
    assert seen == [
        b"GET /api/v1/namespaces/a/configmaps/c HTTP/1.1 ",
        b'POST /api/v1/namespaces/a/configmaps HTTP/1.1 {"x":1}',
    ]


def test_a_connection_closed_while_idle_is_opened_again_and_the_request_sent_once_more() -> None:
    def answer(n: int, conn: socket.socket) -> bool:
        conn.sendall(ok(b"{}"))
        return False  # closed after each answer, without saying so (an idle timeout)

    with server(answer) as (api, seen):
        for _ in range(3):
            assert api.request("POST", "/api/v1/namespaces/a/events", {"n": 1}) == {}
    assert len(seen) == 3, "each request reached the server once"


def test_connection_close_is_honoured() -> None:
    def answer(n: int, conn: socket.socket) -> bool:
        conn.sendall(ok(b"{}", b"Connection: close\r\n"))
        return False

    with server(answer) as (api, seen):
        api.request("GET", "/a")
        assert getattr(api._local, "conn", None) is None, "the closed connection is not kept"
        api.request("GET", "/b")
    assert len(seen) == 2


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_an_answer_cut_off_is_an_error_and_the_request_is_not_sent_again(reset: bool) -> None:
    """The server read the request (an Event, say), on a kept-alive connection: sending it again could do it twice."""

    def answer(n: int, conn: socket.socket) -> bool:
        if n == 1:
            conn.sendall(ok(b"{}"))
            return True
        conn.sendall(b'HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"kind":')
        if reset:
            time.sleep(0.05)  # the client has the answer's head and waits for the rest
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        return False

    with server(answer) as (api, seen):
        api.request("GET", "/api/v1/namespaces/a")
        with pytest.raises(ConnectionError, match="cut off" if reset else "closed the connection"):
            api.request("POST", "/api/v1/namespaces/a/events", {"n": 1})
    assert len(seen) == 2, "the event was sent once"


def test_a_malformed_answer_is_a_connection_error_naming_it() -> None:
    def answer(n: int, conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        return False

    with server(answer) as (api, seen), pytest.raises(ConnectionError, match="malformed"):
        api.request("GET", "/api/v1/namespaces/a")
    assert len(seen) == 1


def test_an_error_status_raises_api_error_with_the_reason_and_body() -> None:
    def answer(n: int, conn: socket.socket) -> bool:
        body = b'{"kind":"Status","reason":"NotFound"}'
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

    with server(answer) as (api, _), pytest.raises(ApiError) as err:
        api.request("GET", "/api/v1/namespaces/a/configmaps/gone")
    assert (err.value.status, err.value.reason) == (404, "Not Found") and "NotFound" in err.value.body
