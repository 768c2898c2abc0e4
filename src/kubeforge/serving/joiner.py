"""Joining concurrent small requests to one version into one Triton request (``spec.gateway.joinRequests``).

Behind a gateway, Triton's dynamic batcher sees requests one gateway turn apart and forms small batches; and each
request costs Triton an HTTP parse and a scheduling pass of its own whatever its rows. Joined, the one-row
requests that wait in the gateway at the same moment reach Triton as one request of many rows: Triton spends a
fifth to a half less CPU per caller's request, and the gateway makes one upstream call for them. This is what KServe's
batcher does in front of a model server, without its wait. As in Nagle's algorithm, a request that finds nothing
of its version on the way to Triton goes at once, as it came, byte for byte: a lone caller waits for no one. Others
join the requests that reach the gateway in the same turn of its event loop, and the joined request leaves at the
start of the next turn, or at once when it holds the version's maxBatchSize rows.

Requests join others of the same form: the same inputs in the same order, each JSON or binary tensor data alike and of
the same shape after the batch dimension, and the same outputs asked for in the same form (JSON or binary), to a version
that batches; each caller's answer comes in the form it asked for. So tritonclient's binary requests and the gateway's
gRPC calls (binary at the gateway) join as JSON ones do, when they meet: gRPC calls seldom do, since grpc.aio takes one
new call per completion-queue round trip and concurrent calls arrive a few turns apart. Any other request or input
parameter (a classification, a priority, shared memory) is Triton's to read per request: such a request goes on its own.
A joined request Triton refuses (4xx) or answers in a form that cannot be split is sent again one request at a time, so
each caller gets Triton's own verdict on its request (and a version whose answers do not split is not joined again); a
joined request that fails (5xx, timeout, unreachable) fails each of its callers, whose fallback then retries on its own.
The upstream metrics count a joined try once per caller in it, as the callers' own tries would have counted (a refused
one, sent again, counts twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .oip import HEADER_LENGTH, NUMPY, Body, Schema, binary_bytes, encode_header, flatten
from .routes import Target
from .upstream import Answer, Upstreams

log = logging.getLogger(__name__)
_REQUEST_KEYS = frozenset({"inputs", "outputs", "parameters", "id"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


def join_key(request: dict[str, Any], schema: Schema) -> Hashable | None:
    """What a request must share with others to be joined with them (None: it goes on its own): the same inputs,
    each JSON or binary alike and of the same shape after the batch dimension, and the same outputs asked for in the
    same form. request has passed oip.validate against schema."""
    if schema.max_batch_size <= 0 or not request.keys() <= _REQUEST_KEYS:
        return None
    params = dict(request.get("parameters") or {})
    binary_output = params.pop("binary_data_output", False)
    if params:  # any other request parameter is Triton's to read per request
        return None
    layout = []
    for inp in request["inputs"]:
        params = inp.get("parameters") or {}
        if not inp.keys() <= _INPUT_KEYS or not params.keys() <= {"binary_data_size"}:
            return None
        layout.append((inp["name"], inp["datatype"], "binary_data_size" in params, *inp["shape"][1:]))
    outputs = []
    for out in request.get("outputs", []):
        params = out.get("parameters") or {}
        if not out.keys() <= _OUTPUT_KEYS or not params.keys() <= {"binary_data"}:
            return None
        outputs.append((out["name"], bool(params.get("binary_data"))))
    return tuple(layout), tuple(outputs), bool(binary_output)


@dataclass(eq=False)
class _Joined:
    """The requests gathered for one joined request."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    plains: list[Body] = field(default_factory=list)  # each body inflated, with its JSON header's length
    sent_as: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)  # each body and headers, as it came
    waiting: list[asyncio.Future[Answer]] = field(default_factory=list)
    rows: int = 0


class Joiner:
    """The requests gathered per version and input layout, and how their joined answer is split."""

    def __init__(self, upstreams: Upstreams):
        self.upstreams = upstreams
        self.tasks: set[asyncio.Task[None]] = set()  # kept referenced until done

    async def infer(
        self,
        target: Target,
        key: Hashable,
        request: dict[str, Any],
        plain: Body,
        sent: tuple[bytes, dict[str, str]],
        schema: Schema,
        timeout: float,
    ) -> Answer:
        """Triton's answer to request (plain: its body inflated, and its JSON header's length; sent: its body and
        forwarded headers as they came), inside a joined request where others share its key (join_key's); raises
        UpstreamFailure where the joined request failed."""
        rows = request["inputs"][0]["shape"][0]
        most = schema.max_batch_size
        joined = target.joining.get(key)
        if joined is None and (not target.in_flight or not target.splits):
            target.in_flight += 1
            try:
                return await self.upstreams.infer(target, *sent, timeout)
            finally:
                target.in_flight -= 1
        if joined is not None and joined.rows + rows > most:
            self._send(key, target, timeout)
            joined = None
        if joined is None:
            joined = target.joining[key] = _Joined()
            asyncio.get_running_loop().call_soon(self._turn_over, key, joined, target, timeout)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        joined.requests.append(request)
        joined.plains.append(plain)
        joined.sent_as.append(sent)
        joined.waiting.append(answer)
        joined.rows += rows
        if joined.rows >= most:
            self._send(key, target, timeout)
        return await answer

    def _turn_over(self, key: Hashable, joined: _Joined, target: Target, timeout: float) -> None:
        if target.joining.get(key) is joined:  # not sent full already
            self._send(key, target, timeout)

    def _send(self, key: Hashable, target: Target, timeout: float) -> None:
        target.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(target.joining.pop(key), target, timeout))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, joined: _Joined, target: Target, timeout: float) -> None:
        try:
            if len(joined.requests) == 1:
                body, headers = joined.sent_as[0]
                self._settle(joined.waiting, [await self.upstreams.infer(target, body, headers, timeout)])
                return
            body, header_length = _joined_body(joined)
            headers = {"content-type": "application/json"}
            if header_length is not None:
                headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(header_length)}
            answer = await self.upstreams.infer(target, body, headers, timeout, len(joined.requests))
            split = _split(answer, joined) if answer.status == 200 else None
            if split is None and answer.status == 200 and target.splits:
                target.splits = False  # the version's answers do not split: each request goes on its own from now on
                log.warning(
                    "version %s of %s answered a joined request in a form that does not split by caller "
                    "(an output without the batch dimension); its requests are no longer joined",
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
            target.in_flight -= 1

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


def _blobs(request: dict[str, Any], plain: Body) -> list[bytes | None]:
    """Each input's binary tensor data in plain (None for a JSON input), in input order as the body holds them."""
    body, offset = plain[0], plain[1] or 0
    blobs: list[bytes | None] = []
    for inp in request["inputs"]:
        size = (inp.get("parameters") or {}).get("binary_data_size")
        blobs.append(None if size is None else body[offset : offset + size])
        offset += size or 0
    return blobs


def _joined_body(joined: _Joined) -> Body:
    """One request of every caller's rows, input by input (binary tensor data joined as binary); the outputs and
    parameters asked for are the first's, the same for all (join_key)."""
    first = joined.requests[0]
    blobs = [_blobs(request, plain) for request, plain in zip(joined.requests, joined.plains, strict=True)]
    inputs, tail = [], []
    for i, inp in enumerate(first["inputs"]):
        shape = [joined.rows, *inp["shape"][1:]]
        if blobs[0][i] is None:
            data: list[Any] = []
            for request in joined.requests:
                data += flatten(request["inputs"][i]["data"])
            inputs.append({"name": inp["name"], "shape": shape, "datatype": inp["datatype"], "data": data})
        else:
            blob = b"".join(b[i] or b"" for b in blobs)
            size = {"binary_data_size": len(blob)}
            inputs.append({"name": inp["name"], "shape": shape, "datatype": inp["datatype"], "parameters": size})
            tail.append(blob)
    header: dict[str, Any] = {"inputs": inputs}
    header.update((k, first[k]) for k in ("outputs", "parameters") if k in first)
    head = encode_header(header).encode()
    return head + b"".join(tail), (len(head) if tail else None)


def _element_bounds(output: dict[str, Any], blob: bytes) -> Callable[[int], int] | None:
    """Where the k-th element of an output's binary data starts in blob (k = its element count: the end); None where
    blob does not hold what the output's shape says."""
    count = math.prod(output["shape"])
    if output["datatype"] == "BYTES":  # each element a 4-byte length and that many bytes
        try:
            items = binary_bytes(blob, count, output["name"])
        except ValueError:
            return None
        starts = [0]
        for item in items:
            starts.append(starts[-1] + 4 + len(item))
        return starts.__getitem__
    itemsize = np.dtype(NUMPY[output["datatype"]]).itemsize
    return None if len(blob) != count * itemsize else (lambda k: k * itemsize)


def _split(answer: Answer, joined: _Joined) -> list[Answer | BaseException] | None:
    """Each caller's answer out of the joined one: its rows of every output (JSON or binary, as asked), its own id;
    None where an output is not batched as the request was."""
    length = answer.header_size
    try:
        whole = json.loads(answer.content[:length] if length else answer.content)
        outputs = whole["outputs"]
        offset = length or 0
        parts: list[tuple[dict[str, Any], int, Any, Callable[[int], int] | None]] = []
        for o in outputs:
            per_row = math.prod(o["shape"][1:])
            size = (o.get("parameters") or {}).get("binary_data_size")
            if o["shape"][0] != joined.rows:
                return None
            if size is None:
                if len(o["data"]) != per_row * joined.rows:
                    return None
                parts.append((o, per_row, o["data"], None))
                continue
            blob = answer.content[offset : offset + size]
            offset += size
            bounds = _element_bounds(o, blob) if length else None
            if bounds is None:
                return None
            parts.append((o, per_row, blob, bounds))
        if not parts or offset != (len(answer.content) if length else 0):  # nothing, or bytes no output owns
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
        tail: list[bytes] = []
        one["outputs"] = []
        first, last = row, row + rows
        for o, per_row, data, bounds in parts:
            shape = [rows, *o["shape"][1:]]
            if bounds is None:
                one["outputs"].append({**o, "shape": shape, "data": data[first * per_row : last * per_row]})
            else:
                piece = data[bounds(first * per_row) : bounds(last * per_row)]
                size = {**o["parameters"], "binary_data_size": len(piece)}
                one["outputs"].append({**o, "shape": shape, "parameters": size})
                tail.append(piece)
        row = last
        head = encode_header(one).encode()
        header_length = str(len(head)) if tail else None
        answers.append(Answer(200, head + b"".join(tail), answer.content_type, header_length, answer.seconds))
    return answers
