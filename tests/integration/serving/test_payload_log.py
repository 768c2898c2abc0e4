"""The payload log of a real gateway in front of a real tritonserver: sampled records joined to the callers' request
ids, carrying the answer; redacted inputs, the bearer token and (in error bodies) input values never leave."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from kubeforge.core import modelcontract as mc

from .conftest import N_FEATURES, body, send, table

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-7f1c"
SECRET = 0.913577  # a feature value that must not be written anywhere once redacted
AUTH = {"authorization": f"Bearer {TOKEN}"}


def payload_table(registered, triton_url: str, **payload_log: object) -> dict:
    routes = table(registered, triton_url)
    routes["models"][registered.name]["payloadLog"] = payload_log
    return routes


def identified(request_id: str, rows: list[list[float]]) -> bytes:
    return json.dumps({"id": request_id, **json.loads(body(rows))}).encode()


def records(directory: Path, count: int, timeout: float = 30) -> list[dict]:
    """The records once count of them are written (the writer works after the responses went out)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for f in sorted(directory.glob("clf.jsonl*")) for line in f.read_text().splitlines()]
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)


def test_redacted_inputs_and_the_token_never_reach_the_log_while_the_rest_does(gateway, triton, registered, tmp_path):
    logs = tmp_path / "payloads"
    routes = payload_table(registered, triton.url, samplePercent=100, redact=[mc.INPUT_NAME])
    gw = gateway(routes, tokens=f"{TOKEN} clf", args=("--payload-log-dir", str(logs)))
    rows = [[SECRET, 0.5, -0.25, 1.0], [-SECRET, 0.0, 0.0, 0.0]]
    url = f"{gw.url}/v2/models/clf/infer"

    named = [httpx.post(url, content=identified(f"order-{i}", rows), headers=AUTH) for i in range(5)]
    anonymous = httpx.post(url, content=body(rows), headers=AUTH)

    assert [r.status_code for r in [*named, anonymous]] == [200] * 6
    assert [r.headers["kubeforge-request-id"] for r in named] == [f"order-{i}" for i in range(5)]
    generated = anonymous.headers["kubeforge-request-id"]
    assert len(generated) == 32
    written = records(logs, 6)
    positive = 1 / (1 + np.exp(-2 * SECRET))  # the stable version: softmax of (-x0, x0)
    assert sorted(r["requestId"] for r in written) == sorted([*(f"order-{i}" for i in range(5)), generated])
    for record in written:
        assert record["inputs"] == {mc.INPUT_NAME: "[redacted]"}
        assert record["model"] == "clf" and record["version"] == registered.stable and record["role"] == "stable"
        expected = [[1 - positive, positive], [positive, 1 - positive]]
        np.testing.assert_allclose(record["outputs"][mc.OUTPUT_NAME], expected, rtol=1e-6)
        assert record["latencyMs"] > 0 and record["time"].endswith("Z")
    text = "".join(p.read_text() for p in logs.iterdir())
    assert str(SECRET)[:6] not in text and TOKEN not in text


def test_without_redaction_the_values_the_model_received_are_recorded(gateway, triton, registered, tmp_path):
    logs = tmp_path / "payloads"
    gw = gateway(payload_table(registered, triton.url, samplePercent=100), args=("--payload-log-dir", str(logs)))
    rows = [[SECRET, 0.5, -0.25, 1.0]]
    x = np.array(rows, dtype=np.float32)
    tensor = {"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [1, N_FEATURES]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}]}).encode()

    results = send(
        f"{gw.url}/v2/models/clf/infer",
        [(body(rows), {}), (header + x.tobytes(), {"inference-header-content-length": str(len(header))})],
    )

    assert [r.status for r in results] == [200, 200]
    for record in records(logs, 2):
        np.testing.assert_array_equal(np.array(record["inputs"][mc.INPUT_NAME], dtype=np.float32), x)


def test_a_sample_of_the_requests_is_recorded(gateway, triton, registered, tmp_path):
    logs = tmp_path / "payloads"
    gw = gateway(payload_table(registered, triton.url, samplePercent=10), args=("--payload-log-dir", str(logs)))

    results = send(f"{gw.url}/v2/models/clf/infer", [(body([[0.1] * N_FEATURES]), {})] * 400)

    assert all(r.status == 200 for r in results)
    time.sleep(2)  # the writer's queue drains within milliseconds; nothing more may come
    assert 15 <= len(records(logs, 0, timeout=0)) <= 70  # 40 expected; binomial sd 6


def test_error_bodies_name_what_is_wrong_without_echoing_input_values(gateway, triton, registered):
    gw = gateway(table(registered, triton.url))
    url = f"{gw.url}/v2/models/clf/infer"
    wrong_shape = json.dumps(
        {"inputs": [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [1, 3], "data": [SECRET, 1.5, 2.5]}]}
    )
    wrong_count = json.dumps(
        {"inputs": [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [1, 4], "data": [SECRET, 1.5]}]}
    )
    wrong_type = json.dumps(
        {"inputs": [{"name": mc.INPUT_NAME, "datatype": "FP32", "shape": [1, 4], "data": [SECRET, "x", 1, 2]}]}
    )
    not_json = '{"inputs": [{"name": "features", "data": [' + str(SECRET)

    for payload in (wrong_shape, wrong_count, wrong_type, not_json):
        resp = httpx.post(url, content=payload)
        assert resp.status_code == 400, resp.text
        assert str(SECRET)[:6] not in resp.text, resp.text
        assert resp.headers["kubeforge-request-id"]
