"""Which requests the gateway joins, how a joined answer is split, and what callers get when a joined request is
refused or fails. The end-to-end behaviour against a real Triton is tests/integration/serving/test_gateway.py's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from kubeforge.serving.joiner import Joiner, _Joined, _split, join_key
from kubeforge.serving.oip import Schema, TensorSchema, tensors
from kubeforge.serving.routes import Target
from kubeforge.serving.upstream import Answer, UpstreamFailure

SCHEMA = Schema("clf", {"x": TensorSchema("FP32", (-1, 2))}, frozenset({"y"}), max_batch_size=4)


def request(*rows: list[float], **extra: Any) -> dict[str, Any]:
    flat = [v for row in rows for v in row]
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 2], "data": flat}], **extra}


def test_only_requests_whose_answers_can_be_told_apart_are_joined():
    assert join_key(request([1, 2]), SCHEMA) == join_key(request([3, 4], [5, 6], id="a"), SCHEMA) is not None
    assert join_key(request([1, 2]), Schema("clf", SCHEMA.inputs, SCHEMA.outputs, max_batch_size=0)) is None
    asked = request([1, 2], outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    assert join_key(asked, SCHEMA) is not None and join_key(asked, SCHEMA) != join_key(request([1, 2]), SCHEMA)
    assert join_key(request([1, 2], outputs=[{"name": "y", "parameters": {"classification": 2}}]), SCHEMA) is None
    assert join_key(request([1, 2], parameters={"priority": 1}), SCHEMA) is None
    binary_out = request([1, 2], parameters={"binary_data_output": True})
    assert join_key(binary_out, SCHEMA) not in (None, join_key(request([1, 2]), SCHEMA))
    assert binary_out["parameters"] == {"binary_data_output": True}  # read, not taken
    with_parameters = request([1, 2])
    with_parameters["inputs"][0]["parameters"] = {"shared_memory_region": "r"}
    assert join_key(with_parameters, SCHEMA) is None
    wide = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert join_key(wide, SCHEMA) != join_key(request([1, 2]), SCHEMA)  # another size after the batch dimension


class Triton:
    """What the joiner sends, answered as the fault under test needs: refusing any request of more than one
    caller's rows (a model that refuses one row's values, which no real model here does) or failing every one."""

    def __init__(self, refuse_joined: bool = False, fail: bool = False):
        self.refuse_joined, self.fail = refuse_joined, fail
        self.bodies: list[dict[str, Any]] = []

    async def infer(
        self, target: Target, body: bytes, headers: dict[str, str], timeout: float, callers: int = 1
    ) -> Answer:
        sent = json.loads(body)
        self.bodies.append(sent)
        await asyncio.sleep(0)  # on its way: what arrives meanwhile finds it in flight
        if self.fail:
            raise UpstreamFailure("error", "version 1 answered 503")
        [x] = sent["inputs"]
        if self.refuse_joined and x["shape"][0] > 1:
            return Answer(400, b'{"error":"refused"}', "application/json", None, 0.001)
        out = {"name": "y", "datatype": "FP32", "shape": x["shape"], "data": [v * 10 for v in x["data"]]}
        answer = {"model_name": "clf", "model_version": "1", "id": sent.get("id", ""), "outputs": [out]}
        return Answer(200, json.dumps(answer).encode(), "application/json", None, 0.001)


async def _call(
    triton: Triton, requests: list[dict[str, Any]], target: Target | None = None
) -> list[Answer | BaseException]:
    joiner = Joiner(triton)  # type: ignore[arg-type]
    target = target or Target("clf", "1", "http://127.0.0.1:1", "clf")
    bodies = [json.dumps(r).encode() for r in requests]
    calls = [
        joiner.infer(target, join_key(r, SCHEMA), r, (body, None), (body, {}), SCHEMA, 1.0)
        for r, body in zip(requests, bodies, strict=True)
    ]
    return await asyncio.gather(*calls, return_exceptions=True)


def test_callers_waiting_together_share_one_request_and_each_gets_its_own_rows_and_id():
    triton = Triton()
    requests = [request([1, 2], id="a"), request([3, 4], [5, 6], id="b"), request([7, 8]), request([9, 0], id="d")]
    answers = asyncio.run(_call(triton, [*requests, request([2, 1], id="e")]))
    # The first finds nothing on its way to Triton and goes at once; maxBatchSize 4: the next three callers' four rows
    # go together, the last caller's row on its own.
    assert [b["inputs"][0]["shape"][0] for b in triton.bodies] == [1, 4, 1]
    assert triton.bodies[0] == requests[0]
    got = [json.loads(a.content) for a in answers if isinstance(a, Answer)]
    assert [g.get("id") for g in got] == ["a", "b", None, "d", "e"]
    assert [g["outputs"][0]["data"] for g in got] == [[10, 20], [30, 40, 50, 60], [70, 80], [90, 0], [20, 10]]
    assert [g["outputs"][0]["shape"] for g in got] == [[1, 2], [2, 2], [1, 2], [1, 2], [1, 2]]


def test_a_refused_joined_request_is_sent_again_one_by_one():
    triton = Triton(refuse_joined=True)
    answers = asyncio.run(_call(triton, [request([1, 2]), request([3, 4]), request([5, 6])]))
    assert [b["inputs"][0]["shape"][0] for b in triton.bodies] == [1, 2, 1, 1]
    got = [json.loads(a.content)["outputs"][0]["data"] for a in answers if isinstance(a, Answer)]
    assert got == [[10, 20], [30, 40], [50, 60]]


def test_a_failed_joined_request_fails_each_caller_so_each_can_fall_back():
    answers = asyncio.run(_call(Triton(fail=True), [request([1, 2]), request([3, 4]), request([5, 6])]))
    assert len(answers) == 3 and all(isinstance(a, UpstreamFailure) for a in answers)


@pytest.mark.parametrize(
    "content, header_length",
    [
        (b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1,2],"data":[1,2]}]}', None),  # rows lost
        (b'{"outputs":[{"name":"y","datatype":"FP32","shape":[2,2],"parameters":{"binary_data_size":16}}]}', None),
        (b"not json", None),
        (b'{"outputs":[]}' + bytes(16), "14"),  # binary tensor data
    ],
)
def test_a_joined_answer_that_cannot_be_split_is_asked_again_one_by_one_and_the_version_no_longer_joined(
    content, header_length
):
    class Odd(Triton):
        async def infer(self, target, body, headers, timeout, callers=1):
            answer = await super().infer(target, body, headers, timeout)
            joined = json.loads(body)["inputs"][0]["shape"][0] > 1
            return Answer(200, content, "application/json", header_length, 0.001) if joined else answer

    triton, target = Odd(), Target("clf", "1", "http://127.0.0.1:1", "clf")
    three = [request([1, 2], id="a"), request([3, 4], id="b"), request([5, 6], id="c")]
    answers = asyncio.run(_call(triton, three, target))
    assert len(triton.bodies) == 4
    assert [json.loads(a.content)["id"] for a in answers if isinstance(a, Answer)] == ["a", "b", "c"]
    assert not target.splits
    asyncio.run(_call(triton, three, target))
    assert [b["inputs"][0]["shape"][0] for b in triton.bodies[4:]] == [1, 1, 1]  # each on its own: not joined


def test_a_binary_answer_splits_by_each_callers_rows_fixed_size_and_bytes_alike():
    y = np.arange(6, dtype=np.float32).reshape(3, 2)
    labels = [b"a", b"bb", b"ccc"]
    packed = b"".join(len(v).to_bytes(4, "little") + v for v in labels)
    outputs = [
        {"name": "y", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": y.nbytes}},
        {"name": "label", "datatype": "BYTES", "shape": [3, 1], "parameters": {"binary_data_size": len(packed)}},
    ]
    head = json.dumps({"model_name": "clf", "model_version": "1", "outputs": outputs}).encode()
    answer = Answer(200, head + y.tobytes() + packed, "application/octet-stream", str(len(head)), 0.001)
    joined = _Joined(requests=[request([1, 2], id="a"), request([3, 4], [5, 6], id="b")], rows=3)

    split = _split(answer, joined)

    assert split is not None
    got = [(a, tensors(a.content, a.header_size)) for a in split if isinstance(a, Answer)]
    assert [json.loads(a.content[: a.header_size])["id"] for a, _ in got] == ["a", "b"]
    np.testing.assert_array_equal(got[0][1]["y"], y[:1])
    np.testing.assert_array_equal(got[1][1]["y"], y[1:])
    assert got[0][1]["label"].ravel().tolist() == [b"a"] and got[1][1]["label"].ravel().tolist() == [b"bb", b"ccc"]
    short = Answer(200, head + y.tobytes(), "application/octet-stream", str(len(head)), 0.001)
    assert _split(short, joined) is None  # the answer ends before its outputs' bytes do
