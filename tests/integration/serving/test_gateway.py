"""The gateway in front of a real tritonserver: protocol, routing, shadow, fallback, reload, auth, bad input."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from kubeforge.core import modelcontract as mc
from kubeforge.local.processes import free_port

from .conftest import N_FEATURES, answered, body, send, table

pytestmark = pytest.mark.integration

ROW = [0.7, 0.1, 0.2, 0.3]


def infer_url(gw, name: str = "clf") -> str:
    return f"{gw.url}/v2/models/{name}/infer"


def test_tritonclient_works_unchanged_through_the_gateway(gateway, triton, registered):
    gw = gateway(table(registered, triton.url))
    x = np.array([ROW, [-0.5, 0, 0, 0]], dtype=np.float32)
    via_gateway = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    direct = httpclient.InferenceServerClient(triton.url.removeprefix("http://"))
    assert via_gateway.is_server_live() and via_gateway.is_server_ready()
    assert via_gateway.is_model_ready(registered.name)
    meta = via_gateway.get_model_metadata(registered.name)
    assert meta["name"] == registered.name and meta["versions"] == [registered.stable]
    assert meta["inputs"][0]["name"] == mc.INPUT_NAME
    assert via_gateway.get_model_config(registered.name)["max_batch_size"] == 8
    for binary in (True, False):  # tritonclient's default binary tensor extension, and plain JSON
        inp = httpclient.InferInput(mc.INPUT_NAME, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [httpclient.InferRequestedOutput(mc.OUTPUT_NAME, binary_data=binary)]
        got = via_gateway.infer(registered.name, [inp], outputs=out).as_numpy(mc.OUTPUT_NAME)
        want = direct.infer(registered.name, [inp], model_version=registered.stable, outputs=out)
        np.testing.assert_array_equal(got, want.as_numpy(mc.OUTPUT_NAME))
    pinned = via_gateway.infer(registered.name, [inp], model_version=registered.stable)
    assert pinned.as_numpy(mc.OUTPUT_NAME).shape == (2, 2)


def _answer(sock: socket.socket, buffer: bytearray) -> tuple[str, dict[str, str], bytes]:
    """Read one HTTP/1.1 answer (status line, headers, Content-Length body) from sock; buffer keeps what follows."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer after {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    status, *lines = buffer[:end].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    stop = end + 4 + int(headers.get("content-length", "0"))
    while len(buffer) < stop:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        buffer += chunk
    content = bytes(buffer[end + 4 : stop])
    del buffer[:stop]
    return status, headers, content


def _post(path: str, payload: bytes, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: 127.0.0.1", f"Content-Length: {len(payload)}", *extra, "", ""]
    return "\r\n".join(head).encode() + payload


def test_inference_speaks_http_1_1_as_clients_use_it(gateway, triton, registered):
    """Pipelined requests, Expect: 100-continue (curl sends it for large bodies), Connection: close and HTTP/1.0:
    the inference path answers them as any HTTP/1.1 server does."""
    gw = gateway(table(registered, triton.url))
    path = f"/v2/models/{registered.name}/infer"
    ids = [f"req-{i}" for i in range(3)]
    payloads = [json.dumps({"id": i, **json.loads(body([ROW]))}).encode() for i in ids]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(b"".join(_post(path, p) for p in payloads))  # three requests in one write
        answers = [_answer(sock, buffer) for _ in ids]
        assert [status for status, _, _ in answers] == ["HTTP/1.1 200 OK"] * 3
        assert [headers["kubeforge-request-id"] for _, headers, _ in answers] == ids
        assert all(json.loads(content)["id"] == i for (_, _, content), i in zip(answers, ids, strict=True))

        sock.sendall(_post(path, payloads[0], "Expect: 100-continue")[: -len(payloads[0])])
        assert _answer(sock, buffer)[0] == "HTTP/1.1 100 Continue"
        sock.sendall(payloads[0])
        status, headers, _ = _answer(sock, buffer)
        assert status == "HTTP/1.1 200 OK" and headers["kubeforge-model-version"] == registered.stable

        sock.sendall(_post(path, b'{"inputs": []}', "Connection: close"))
        status, headers, content = _answer(sock, buffer)
        assert status == "HTTP/1.1 400 Bad Request" and "error" in json.loads(content)
        assert headers["connection"] == "close" and sock.recv(1) == b""  # answered, then closed
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(_post(path, payloads[1], version="1.0"))
        status, headers, content = _answer(sock, buffer := bytearray())
        assert status == "HTTP/1.1 200 OK" and json.loads(content)["id"] == ids[1]
        assert sock.recv(1) == b""


def test_weights_are_honoured(gateway, triton, registered):
    gw = gateway(table(registered, triton.url, canary=(triton.url, 20)))
    n = 1500
    results = send(infer_url(gw), [(body([ROW]), {})] * n, concurrency=8)
    assert all(r.status == 200 for r in results)
    canary = sum(r.version == registered.canary for r in results)
    assert sum(r.version == registered.stable for r in results) + canary == n
    mean, sd = n * 0.2, math.sqrt(n * 0.2 * 0.8)
    assert abs(canary - mean) < 4.5 * sd, f"{canary} of {n} on the canary, expected about {mean:.0f}"


def test_sticky_callers_stay_on_one_version(gateway, triton, registered):
    gw = gateway(table(registered, triton.url, canary=(triton.url, 50), stickyHeader="x-user"))
    users = [f"user-{i}" for i in range(150)]
    requests = [(body([ROW]), {"x-user": u}) for u in users for _ in range(3)]
    random.Random(1).shuffle(requests)
    results = send(infer_url(gw), requests, concurrency=8)
    seen: dict[str, set[str | None]] = {}
    for (_, headers), r in zip(requests, results, strict=True):
        assert r.status == 200
        seen.setdefault(headers["x-user"], set()).add(r.version)
    assert all(len(v) == 1 for v in seen.values())
    on_canary = sum(v == {registered.canary} for v in seen.values())
    assert 40 < on_canary < 110  # both versions get callers


def _shadow_inputs(n: int, disagreeing: int) -> list[bytes]:
    """Rows where stable (threshold 0) and shadow (threshold 0.5) disagree exactly `disagreeing` times."""
    rows = [[0.25, 0, 0, 0]] * disagreeing + [[1.0, 0, 0, 0], [-1.0, 0, 0, 0]] * ((n - disagreeing) // 2)
    random.Random(2).shuffle(rows)
    return [body([r]) for r in rows]


def _wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_shadow_is_compared_and_never_changes_live_answers(gateway, triton, registered):
    payloads = _shadow_inputs(200, 50)
    plain = gateway(table(registered, triton.url))
    mirrored = gateway(table(registered, triton.url, shadow=(triton.url, 100)))
    without = send(infer_url(plain), [(p, {}) for p in payloads])
    with_shadow = send(infer_url(mirrored), [(p, {}) for p in payloads])
    assert [r.content for r in with_shadow] == [r.content for r in without]
    assert {r.version for r in with_shadow} == {registered.stable}
    labels = {"model": registered.name, "version": registered.shadow}
    _wait_for(lambda: mirrored.metric("kubeforge_shadow_requests_total", outcome="ok", **labels) == 200)
    assert mirrored.metric("kubeforge_shadow_predictions_total", result="agree", **labels) == 150
    assert mirrored.metric("kubeforge_shadow_predictions_total", result="disagree", **labels) == 50
    assert mirrored.metric("kubeforge_shadow_latency_delta_seconds_count", **labels) == 200
    assert plain.metric("kubeforge_shadow_requests_total") == 0


def test_failing_or_slow_shadow_costs_live_traffic_nothing(gateway, triton, registered):
    hung = socket.socket()  # accepts connections into its backlog and never answers: a hung shadow
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        payloads = [(body([ROW]), {})] * 150
        base = gateway(table(registered, triton.url))
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        slow = gateway(table(registered, triton.url, shadow=(hung_url, 100), timeoutMs=300))
        failing = gateway(table(registered, triton.url, shadow=(f"http://127.0.0.1:{dead.getsockname()[1]}", 100)))
        send(infer_url(base), payloads[:20])  # warm connections
        baseline = send(infer_url(base), payloads, concurrency=2)
        for gw in (slow, failing):
            send(infer_url(gw), payloads[:20])
            results = send(infer_url(gw), payloads, concurrency=2)
            assert all(r.status == 200 and r.version == registered.stable for r in results)
            median, base_median = (statistics.median(r.seconds for r in rs) for rs in (results, baseline))
            assert median < 2 * base_median + 0.002, f"live median {median * 1e3:.2f} ms vs {base_median * 1e3:.2f} ms"
        shadow = {"model": registered.name, "version": registered.shadow}
        _wait_for(lambda: failing.metric("kubeforge_shadow_requests_total", outcome="error", **shadow) >= 100)
        _wait_for(lambda: slow.metric("kubeforge_upstream_requests_total", outcome="timeout", **shadow) >= 2)
        assert slow.metric("kubeforge_shadow_requests_total", outcome="ok", **shadow) == 0
    finally:
        hung.close()
        dead.close()


def _bursts(port: int, path: str, requests: list[tuple[bytes, dict[str, str]]], callers: int) -> list[tuple]:
    """Each request's status line, headers and body, sent by callers that each hold a connection and all send at once,
    then wait for their answers, round after round: many callers whose requests reach the gateway together."""
    answers: list[tuple] = []
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(callers)]
    try:
        for first in range(0, len(requests), callers):
            round_ = requests[first : first + callers]
            for sock, (payload, headers) in zip(socks, round_, strict=False):
                sock.sendall(_post(path, payload, *(f"{k}: {v}" for k, v in headers.items())))
            answers += [_answer(sock, bytearray()) for sock, _ in zip(socks, round_, strict=False)]
    finally:
        for sock in socks:
            sock.close()
    return answers


def _call(i: int, rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """Caller i's request, in one of the forms clients send: JSON (i % 4 == 0), JSON naming its output (1), and
    tritonclient's binary tensors with the outputs in binary as a request parameter (2) or named (3)."""
    if i % 4 < 2:
        payload = {"id": f"call-{i}", **json.loads(body(rows.tolist()))}
        if i % 4 == 1:
            payload["outputs"] = [{"name": mc.OUTPUT_NAME}]
        return json.dumps(payload).encode(), {"Content-Type": "application/json"}
    tensor = httpclient.InferInput(mc.INPUT_NAME, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(mc.OUTPUT_NAME, binary_data=True)] if i % 4 == 3 else None
    payload, length = httpclient.InferenceServerClient.generate_request_body([tensor], outputs, f"call-{i}")
    return payload, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}


def _result(answer: tuple) -> tuple[str | None, np.ndarray]:
    """The id and output of an answer from _bursts, JSON or binary."""
    _, headers, content = answer
    length = headers.get("inference-header-content-length")
    parsed = httpclient.InferenceServerClient.parse_response_body(content, header_length=length and int(length))
    return parsed.get_response().get("id"), parsed.as_numpy(mc.OUTPUT_NAME)


def test_joined_requests_answer_each_caller_as_triton_does_in_fewer_triton_requests(gateway, triton, registered):
    """joinRequests: concurrent callers' requests of a few rows each (JSON or binary, as clients send them) reach
    Triton as fewer, larger requests, and each caller gets exactly its own rows' answer, in the form it asked for,
    and its own id; a lone request goes to Triton byte for byte."""
    gw = gateway(table(registered, triton.url, joinRequests=True))
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(400)]
    requests = [_call(i, x) for i, x in enumerate(rows)]
    path = f"/v2/models/{registered.name}/infer"
    direct = _bursts(triton.http_port, f"/v2/models/{registered.name}/versions/{registered.stable}/infer", requests, 1)
    before = answered(triton.url, registered.name, registered.stable)
    tries = {"version": registered.stable, "outcome": "ok"}
    counted = gw.metric("kubeforge_upstream_requests_total", **tries)
    joined = _bursts(gw.port, path, requests, callers=16)
    at_triton = answered(triton.url, registered.name, registered.stable) - before
    assert [status for status, _, _ in joined] == ["HTTP/1.1 200 OK"] * len(requests), joined
    for i, (x, want, got) in enumerate(zip(rows, direct, joined, strict=True)):
        (want_id, want_out), (got_id, got_out) = _result(want), _result(got)
        assert got_id == want_id == f"call-{i}" and got[1]["kubeforge-model-version"] == registered.stable
        assert ("inference-header-content-length" in got[1]) == (i % 4 >= 2), "the form the caller asked for"
        assert got_out.shape == want_out.shape == (len(x), 2)
        np.testing.assert_allclose(got_out, want_out, rtol=1e-6)
    assert at_triton < len(requests) * 0.9, f"Triton answered {at_triton} requests for {len(requests)} callers"
    # Error rates and canary analysis read tries per caller's request, joined or not.
    assert gw.metric("kubeforge_upstream_requests_total", **tries) - counted == len(requests)
    # Each joined Triton request stands for its callers: the callers it joined less the requests that carried them
    # are the Triton requests saved.
    joins = gw.metric("kubeforge_gateway_joins_total", version=registered.stable)
    saved = gw.metric("kubeforge_gateway_joined_requests_total", version=registered.stable) - joins
    assert joins > 0 and saved == len(requests) - at_triton

    before = answered(triton.url, registered.name, registered.stable)
    one_by_one = _bursts(gw.port, path, requests[:20], callers=1)
    assert answered(triton.url, registered.name, registered.stable) - before == 20
    assert [content for _, _, content in one_by_one] == [content for _, _, content in direct[:20]]


@pytest.mark.parametrize("join", [False, True], ids=["each-request", "joined-requests"])
def test_killing_the_canary_under_load_fails_no_request(gateway, triton, canary_triton, registered, join):
    gw = gateway(table(registered, triton.url, canary=(canary_triton.url, 50), timeoutMs=2000, joinRequests=join))

    async def kill_at(i: int) -> None:
        if i == 150:  # a crash, not a graceful shutdown: Triton finishing in-flight work would hide it
            os.killpg(canary_triton.pid, signal.SIGKILL)

    results = send(infer_url(gw), [(body([ROW]), {})] * 600, concurrency=8, on_done=kill_at)
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} failed, e.g. {failed[0].status} {failed[0].content[:200]!r}"
    assert {r.version for r in results[:100]} == {registered.stable, registered.canary}
    assert {r.version for r in results[-100:]} == {registered.stable}
    assert gw.metric("kubeforge_fallbacks_total", model=registered.name, version=registered.canary) > 0
    assert gw.metric("kubeforge_upstream_requests_total", version=registered.canary, outcome="error") > 0
    deadline, fell_back = time.monotonic() + 10, []
    while not fell_back and time.monotonic() < deadline:  # the access log is written a moment later
        time.sleep(0.2)
        logged = [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith('{"time"')]
        fell_back = [entry for entry in logged if entry["role"] == "fallback"]
    assert fell_back, "the answers the stable version gave in the canary's place are logged as fallbacks"
    assert {entry["version"] for entry in fell_back} == {registered.stable}


def test_a_versions_replicas_share_its_requests_and_one_killed_or_gone_fails_none(
    gateway, triton, stable_replica, registered
):
    """Where the route table names a version's replicas (endpoints addressing), requests go round-robin over them;
    one that refuses connections (nothing listens at its address any more) or is killed under load costs no
    request and no fallback: the gateway tries the next replica, and routes around the dead ones."""
    gone = f"http://127.0.0.1:{free_port()}"
    routes = table(registered, triton.url)
    routes["models"][registered.name]["versions"][0]["endpoints"] = [triton.url, stable_replica.url, gone]
    gw = gateway(routes)
    before = {
        server.url: answered(server.url, registered.name, registered.stable) for server in (triton, stable_replica)
    }

    shares = {}

    async def kill_at(i: int) -> None:
        if i == 300:
            shares["replica"] = (
                answered(stable_replica.url, registered.name, registered.stable) - before[stable_replica.url]
            )
            os.killpg(stable_replica.pid, signal.SIGKILL)

    results = send(infer_url(gw), [(body([ROW]), {})] * 600, concurrency=8, on_done=kill_at)
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} failed, e.g. {failed[0].status} {failed[0].content[:200]!r}"
    assert shares["replica"] > 100, "the replica took its share of the first 300"
    assert answered(triton.url, registered.name, registered.stable) - before[triton.url] >= 300, (
        "the other replica answered the rest"
    )
    assert gw.metric("kubeforge_fallbacks_total", model=registered.name) == 0
    assert gw.metric("kubeforge_upstream_requests_total", version=registered.stable, outcome="error") == 0
    log = gw.log.read_text()
    assert f"at {gone}: not ready" in log and f"at {stable_replica.url}: not ready" in log, "both named in its log"


def test_route_table_hot_reloads_under_load_and_refuses_malformed_ones(gateway, triton, registered):
    gw = gateway(table(registered, triton.url))
    tables = [
        table(registered, triton.url, canary=(triton.url, 100 - 1)),
        "models: {clf: {versions: [{version: '1', role: canary, url: 'http://x', weight: 5}]}}",  # no stable
        "models: [not, a, map",
    ]

    def reloads() -> float:
        return sum(gw.metric("kubeforge_route_table_reloads_total", file="routes", result=r) for r in ("ok", "failed"))

    answered: list[int] = []  # request indexes in the order their answers came back
    old_table_only: list[int] = []

    async def swap(i: int) -> None:
        answered.append(i)
        if i in (100, 200, 300):
            if i == 100:
                old_table_only[:] = answered
            before = reloads()
            gw.write(tables[(i // 100) - 1])
            # Each table must be seen before the next replaces it (the file is polled every second).
            deadline = time.monotonic() + 10
            while reloads() == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    results = send(infer_url(gw), [(body([ROW]), {})] * 500, concurrency=8, on_done=swap)
    assert all(r.status == 200 for r in results)
    # Everything answered before the first new table was written came from the old one: no canary yet.
    assert len(old_table_only) >= 90
    assert {results[i].version for i in old_table_only} == {registered.stable}
    time.sleep(0.5)
    assert gw.metric("kubeforge_route_table_reloads_total", file="routes", result="failed") == 2
    assert gw.metric("kubeforge_route_table_reloads_total", file="routes", result="ok") == 2
    after = send(infer_url(gw), [(body([ROW]), {})] * 100)
    assert sum(r.version == registered.canary for r in after) > 80  # the last good table (99 % canary) stays


def test_bearer_tokens(gateway, triton, registered):
    gw = gateway(table(registered, triton.url), tokens="# callers\nopen-all\nonly-other other-model\n")
    url, payload = infer_url(gw), body([ROW])
    statuses = [
        send(url, [(payload, headers)])[0]
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Bearer only-other"})
    ]
    assert [r.status for r in statuses] == [401, 401, 403]
    assert all("error" in json.loads(r.content) for r in statuses)
    assert send(url, [(payload, {"authorization": "Bearer open-all"})])[0].status == 200
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    assert client.is_server_ready()  # probes stay open
    with pytest.raises(Exception, match=r"401|bearer"):
        client.get_model_metadata(registered.name)


def _bad_payloads(rng: random.Random, n: int) -> list[tuple[bytes, dict[str, str]]]:
    """Requests that are wrong in one or two ways: shape, dtype, names, data, sizes, JSON itself."""
    good = {"inputs": [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [1, N_FEATURES], "data": ROW}]}
    junk = [None, True, -1, 0, 3.5, 1e308, "x", [], {}, [[1]], "FP32", 2**70, [1, 2, 3, 4, 5], {"a": 1}]
    mutations = [
        lambda r, i: i.update(shape=rng.choice([[1], [1, 5], [2, N_FEATURES], [9, N_FEATURES], [0, 4], [1, 4, 1]])),
        lambda r, i: i.update(datatype=rng.choice(["FP64", "INT32", "BYTES", "fp32", "BOOL", None, 7])),
        lambda r, i: i.update(name=rng.choice(["feature", "", None, 3, "outputs"])),
        lambda r, i: i.update(data=rng.choice([ROW[:3], [*ROW, 1.0], ["a"] * 4, [True] * 4, [[ROW, ROW]], None, {}])),
        lambda r, i: i.pop(rng.choice(["data", "shape", "datatype", "name"]), None),
        lambda r, i: i.update({rng.choice(["shape", "data", "datatype", "name"]): rng.choice(junk)}),
        lambda r, i: i.update(
            parameters=rng.choice([[], "x", 3, *({"binary_data_size": v} for v in (3, 16, -1, "16"))])
        ),
        lambda r, i: r.update(inputs=rng.choice([[], None, "x", [i, i], [None], {}])),
        lambda r, i: r.update(outputs=rng.choice([[{"name": "nope"}], "x", [1], [{}]])),
        lambda r, i: r.pop("inputs", None),
    ]
    out: list[tuple[bytes, dict[str, str]]] = []
    for _ in range(n):
        request = json.loads(json.dumps(good))
        for mutate in rng.sample(mutations, rng.choice([1, 2])):
            inputs = request.get("inputs")
            target = inputs[0] if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else {}
            mutate(request, target)
        data = json.dumps(request).encode()
        headers: dict[str, str] = {}
        kind = rng.random()
        if kind < 0.1:
            data = data[: rng.randrange(len(data))]  # truncated JSON
        elif kind < 0.15:
            data = rng.choice([b"", b"null", b"[]", b"\xff\xfe", b"NaN", b'{"inputs": [{"data": [NaN]}]}'])
        elif kind < 0.2:
            headers["inference-header-content-length"] = rng.choice(["0", "5", "999999", "abc", "-3"])
        elif kind < 0.25:
            headers["content-encoding"] = rng.choice(["gzip", "br"])
        if data == json.dumps(good).encode() and not headers:
            continue  # the mutations cancelled out
        out.append((data, headers))
    return out


def test_fuzzed_bad_input_gets_4xx_never_5xx(gateway, triton, registered):
    gw = gateway(table(registered, triton.url))
    requests = _bad_payloads(random.Random(7), 400)
    assert len(requests) > 350
    results = send(infer_url(gw), requests, concurrency=4)
    server_errors = [(req, r.status, r.content) for req, r in zip(requests, results, strict=True) if r.status >= 500]
    assert not server_errors, server_errors[:3]
    assert all(400 <= r.status < 500 for r in results), {r.status for r in results}
    assert all("error" in json.loads(r.content) for r in results)
    too_big = send(infer_url(gw), [(b"{" + b" " * (17 * 1024 * 1024) + b"}", {})])[0]
    assert too_big.status == 413
    assert send(infer_url(gw), [(body([ROW]), {})])[0].status == 200
