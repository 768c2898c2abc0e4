"""Joining concurrent small JSON requests to one version into one Triton request (``spec.gateway.joinRequests``).

Behind a gateway, Triton's dynamic batcher sees requests one gateway turn apart and forms small batches; and each
request costs Triton an HTTP parse and a scheduling pass of its own whatever its rows. Joined, the one-row
requests that wait in the gateway at the same moment reach Triton as one request of many rows: Triton spends a
fifth to a half less CPU per caller's request, and the gateway makes one upstream call for them. This is what KServe's
batcher does in front of a model server, without its wait. As in Nagle's algorithm, a request that finds nothing
of its version on the way to Triton goes at once, as it came, byte for byte: a lone caller waits for no one. Others
join the requests that reach the gateway in the same turn of its event loop, and the joined request leaves at the
start of the next turn, or at once when it holds the version's maxBatchSize rows.

Only requests whose answers can be told apart again are joined: all-JSON tensors (no binary data), no request
or input parameters and no output selection, the same inputs in the same order with the same shape after the
batch dimension, to a version that batches. A joined request Triton refuses (4xx) or answers in a form that
cannot be split is sent again one request at a time, so each caller gets Triton's own verdict on its request (and
a version whose answers do not split is not joined again); a joined request that fails (5xx, timeout, unreachable)
fails each of its callers, whose fallback then retries on its own. The upstream metrics count a joined try once per
caller in it, as the callers' own tries would have counted (a refused one, sent again, counts twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from .oip import Schema, flatten
from .routes import Target
from .upstream import Answer, Upstreams

log = logging.getLogger(__name__)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # built once: json.dumps builds one per call with options
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data"})
_REQUEST_KEYS = frozenset({"inputs", "id"})


def join_key(request: dict[str, Any], schema: Schema) -> Hashable | None:
    """What a request must share with others to be joined with them (None: it goes on its own). request has passed
    oip.validate against schema, and has no binary tensor data."""
    if schema.max_batch_size <= 0 or not request.keys() <= _REQUEST_KEYS:
        return None
    inputs = request["inputs"]
    if not all(inp.keys() <= _INPUT_KEYS for inp in inputs):
        return None
    return tuple((inp["name"], inp["datatype"], *inp["shape"][1:]) for inp in inputs)


@dataclass(eq=False)
class _Joined:
    """The requests gathered for one joined request."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    sent_as: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)  # each body and headers, as it came
    waiting: list[asyncio.Future[Answer]] = field(default_factory=list)
    rows: int = 0


class Joiner:
    """The requests gathered per version and input layout, and how their joined answer is split."""

    def __init__(self, upstreams: Upstreams):
        self.upstreams = upstreams
        self.open: dict[tuple[int, Hashable], _Joined] = {}
        self.in_flight: dict[int, int] = {}  # per version (by id of its Target): requests on their way to Triton
        self.tasks: set[asyncio.Task[None]] = set()  # kept referenced until done

    async def infer(
        self,
        target: Target,
        key: Hashable,
        request: dict[str, Any],
        sent: tuple[bytes, dict[str, str]],
        schema: Schema,
        timeout: float,
    ) -> Answer:
        """Triton's answer to request (sent: its body and forwarded headers), inside a joined request where others
        share its key (join_key's); raises UpstreamFailure where the joined request failed."""
        rows = request["inputs"][0]["shape"][0]
        most = schema.max_batch_size
        slot = (id(target), key)
        joined = self.open.get(slot)
        if joined is None and (id(target) not in self.in_flight or not target.splits):
            self._going(target, 1)
            try:
                return await self.upstreams.infer(target, *sent, timeout)
            finally:
                self._going(target, -1)
        if joined is not None and joined.rows + rows > most:
            self._send(slot, target, timeout)
            joined = None
        if joined is None:
            joined = self.open[slot] = _Joined()
            asyncio.get_running_loop().call_soon(self._turn_over, slot, joined, target, timeout)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        joined.requests.append(request)
        joined.sent_as.append(sent)
        joined.waiting.append(answer)
        joined.rows += rows
        if joined.rows >= most:
            self._send(slot, target, timeout)
        return await answer

    def _turn_over(self, slot: tuple[int, Hashable], joined: _Joined, target: Target, timeout: float) -> None:
        if self.open.get(slot) is joined:  # not sent full already
            self._send(slot, target, timeout)

    def _going(self, target: Target, change: int) -> None:
        count = self.in_flight.get(id(target), 0) + change
        if count:
            self.in_flight[id(target)] = count
        else:
            del self.in_flight[id(target)]

    def _send(self, slot: tuple[int, Hashable], target: Target, timeout: float) -> None:
        self._going(target, 1)
        task = asyncio.get_running_loop().create_task(self._run(self.open.pop(slot), target, timeout))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, joined: _Joined, target: Target, timeout: float) -> None:
        try:
            if len(joined.requests) == 1:
                body, headers = joined.sent_as[0]
                self._settle(joined.waiting, [await self.upstreams.infer(target, body, headers, timeout)])
                return
            body = _joined_body(joined)
            headers = {"content-type": "application/json"}
            answer = await self.upstreams.infer(target, body, headers, timeout, len(joined.requests))
            split = _split(answer, joined) if answer.status == 200 else None
            if split is None and answer.status == 200 and target.splits:
                target.splits = False  # the version's answers do not split: each request goes on its own from now on
                log.warning(
                    "version %s of %s answered a joined request in a form that does not split by caller "
                    "(an output without the batch dimension, or binary); its requests are no longer joined",
                    target.version,
                    target.model,
                )
            if split is None:  # Triton's verdict on one of them, or an answer that cannot be told apart
                split = await asyncio.gather(
                    *(self.upstreams.infer(target, b, h, timeout) for b, h in joined.sent_as), return_exceptions=True
                )
            self._settle(joined.waiting, split)
        except BaseException as err:  # a failure of the joined request is each caller's failure
            self._settle(joined.waiting, [err] * len(joined.waiting))
            if not isinstance(err, Exception):
                raise
        finally:
            self._going(target, -1)

    @staticmethod
    def _settle(waiting: list[asyncio.Future[Answer]], results: list[Answer | BaseException]) -> None:
        for future, result in zip(waiting, results, strict=True):
            if future.done():  # its caller hung up
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            elif isinstance(result, BaseException):  # the gateway is stopping
                future.cancel()
            else:
                future.set_result(result)


def _joined_body(joined: _Joined) -> bytes:
    first = joined.requests[0]["inputs"]
    inputs = []
    for i, inp in enumerate(first):
        data: list[Any] = []
        for request in joined.requests:
            data += flatten(request["inputs"][i]["data"])
        shape = [joined.rows, *inp["shape"][1:]]
        inputs.append({"name": inp["name"], "shape": shape, "datatype": inp["datatype"], "data": data})
    return _ENCODE({"inputs": inputs}).encode()


def _split(answer: Answer, joined: _Joined) -> list[Answer | BaseException] | None:
    """Each caller's answer out of the joined one: its rows of every output, its own id; None where the answer
    is not all JSON with every output batched as the request was."""
    if answer.header_length is not None:
        return None
    try:
        whole = json.loads(answer.content)
        outputs = whole["outputs"]
        per_row = [math.prod(o["shape"][1:]) for o in outputs]
        for o, n in zip(outputs, per_row, strict=True):
            if o["shape"][0] != joined.rows or len(o["data"]) != n * joined.rows:
                return None
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    rest = {k: v for k, v in whole.items() if k not in ("id", "outputs")}
    answers: list[Answer | BaseException] = []
    row = 0
    for request in joined.requests:
        rows = request["inputs"][0]["shape"][0]
        one = dict(rest)
        if "id" in request:
            one["id"] = request["id"]
        one["outputs"] = [
            {**o, "shape": [rows, *o["shape"][1:]], "data": o["data"][row * n : (row + rows) * n]}
            for o, n in zip(outputs, per_row, strict=True)
        ]
        row += rows
        content = _ENCODE(one).encode()
        answers.append(Answer(200, content, answer.content_type, None, answer.seconds))
    return answers
