"""uvicorn's HTTP/1.1 protocol, with inference requests answered without an ASGI cycle.

An answer through ASGI costs two message dicts, Starlette's response object sending them, uvicorn's checks of every
header against its regular expressions and two socket writes (the head, then the body); on loopback each write also
runs the receiver's TCP path. The gateway's answer to an inference request is made by the gateway itself, its
headers known to be safe, so here it is written in one send. Everything else is uvicorn's, unchanged: the request is
parsed, pipelined, flow-controlled and timed out by uvicorn's own protocol and request cycle (the body is read
through the cycle's ``receive``, so ``Expect: 100-continue`` and read back-pressure hold), and every other request
runs the ASGI app as before. The measurements are in docs/benchmarks.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from starlette.responses import Response
from starlette.types import Receive
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

log = logging.getLogger(__name__)

Infer = Callable[[str, list[tuple[bytes, bytes]], Receive], Awaitable[tuple[Response, Callable[[int], None]]]]
"""The gateway's answer to POST path with headers whose body receive reads, and what settles the call once the
answer is written (or not: the caller went away) with the number of body bytes sent."""

INTERNAL_ERROR = Response(b'{"error": "internal error in the gateway"}', 500, media_type="application/json")


def protocol(infer: Infer) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol class with POST .../infer answered by infer."""

    class InferenceProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
            """Where uvicorn starts a request's ASGI task, start the gateway's own for an inference request.

            uvicorn passes another app than its own when it refuses the request (``limit_concurrency``): that stays
            uvicorn's to answer."""
            scope = cycle.scope
            if app is not self.app or scope["method"] != "POST" or not scope["path"].endswith("/infer"):
                super()._start_asgi_task(cycle, app)
                return
            task = self.loop.create_task(self._infer(cycle))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        async def _infer(self, cycle: RequestResponseCycle) -> None:
            try:
                # uvicorn's parser builds the scope's headers as a list; the cycle's receive returns ASGI events as
                # TypedDicts, the messages starlette's Receive types as plain mappings.
                headers = cast("list[tuple[bytes, bytes]]", cycle.scope["headers"])
                response, settle = await infer(cycle.scope["path"], headers, cast(Receive, cycle.receive))
            except Exception:
                log.exception("inference request failed in the gateway")
                response, settle = INTERNAL_ERROR, None
            sent = 0
            try:
                if cycle.flow.write_paused and not cycle.disconnected:
                    await cycle.flow.drain()
                if not cycle.disconnected:
                    self._write(cycle, response)
                    sent = len(response.body)
            finally:  # also when the caller went away
                if settle is not None:
                    settle(sent)

        def _write(self, cycle: RequestResponseCycle, response: Response) -> None:
            """The whole answer in one send; then what uvicorn's cycle does when an answer is complete."""
            parts: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
            for name, value in (*self.server_state.default_headers, *response.raw_headers):
                parts += (name, b": ", value, b"\r\n")
            if not cycle.keep_alive:
                parts.append(b"connection: close\r\n")
            parts += (b"\r\n", response.body)
            self.transport.write(b"".join(parts))
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()

    return InferenceProtocol
