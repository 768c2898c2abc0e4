"""The shadow report's latency delta, measured end to end: a shadow that is slower on purpose, a real
tritonserver, the gateway mirroring every request, and the operator's analysis of the gateway's /metrics."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from kubeforge.core import modelcontract as mc
from kubeforge.operators.deployment import analysis as an
from kubeforge.serving import tritonapi

from .conftest import N_FEATURES, body, send, table

pytestmark = pytest.mark.integration

SLOW_MODEL = "clf-slow"
SLEEP_S = 0.05

# The stable classifier's answers (class 1 when x0 > 0), SLEEP_S late: only the latency differs.
SLOW_MODEL_PY = f"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep({SLEEP_S})
            x = pb_utils.get_input_tensor_by_name(request, "{mc.INPUT_NAME}").as_numpy()
            d = x[:, 0].astype(np.float32)
            e = np.exp(np.stack([-d, d], axis=1))
            out = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("{mc.OUTPUT_NAME}", out)]))
        return responses
"""


@pytest.fixture
def slow_shadow(triton, registered) -> Iterator[str]:
    """The slow model loaded next to the classifier, under the shadow's version number; unloaded afterwards.

    Its files go through Triton's repository API (config and files in the load request), so the
    session's model repository stays as the other tests expect it. Two instances, one per mirror
    worker of the gateway, so mirrored tries never queue behind each other inside Triton.
    """
    config = {
        "name": SLOW_MODEL,
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": mc.INPUT_NAME, "data_type": "TYPE_FP32", "dims": [N_FEATURES]}],
        "output": [{"name": mc.OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [2]}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    }
    parameters = {
        "config": json.dumps(config),
        f"file:{registered.shadow}/model.py": base64.b64encode(SLOW_MODEL_PY.encode()).decode(),
    }
    resp = httpx.post(
        f"{triton.url}/v2/repository/models/{SLOW_MODEL}/load", json={"parameters": parameters}, timeout=120
    )
    assert resp.status_code == 200, resp.text
    tritonapi.wait_ready(triton.url, SLOW_MODEL, registered.shadow, timeout=60)
    yield SLOW_MODEL
    tritonapi.unload_model(triton.url, SLOW_MODEL)


def test_shadow_report_measures_how_much_slower_the_shadow_answers(gateway, triton, registered, slow_shadow):
    routes = table(registered, triton.url, shadow=(triton.url, 100))
    routes["models"][registered.name]["versions"][-1]["tritonModel"] = slow_shadow
    gw = gateway(routes)
    n = 40
    payloads = [(body([[(-1.0) ** i, 0, 0, 0]]), {}) for i in range(n)]
    # One at a time, so live tries do not queue in Triton and the delta is the shadow's sleep.
    results = send(f"{gw.url}/v2/models/{registered.name}/infer", payloads, concurrency=1)
    assert all(r.status == 200 and r.version == registered.stable for r in results)
    shadow = {"model": registered.name, "version": registered.shadow}
    deadline = time.monotonic() + 30
    while gw.metric("kubeforge_shadow_requests_total", outcome="ok", **shadow) < n:
        assert time.monotonic() < deadline, "the mirrored requests were not all answered in time"
        time.sleep(0.1)

    report = an.shadow_report(an.parse(httpx.get(f"{gw.url}/metrics").text, **shadow), registered.shadow)
    assert report["samples"] == n and report["agreement"] == 1.0, report
    # Every live try was mirrored once, so the mean delta is the shadow's mean try minus the live one.
    tries = {
        version: gw.metric("kubeforge_upstream_request_duration_seconds_sum", model=registered.name, version=version)
        for version in (registered.stable, registered.shadow)
    }
    mean_ms = (tries[registered.shadow] - tries[registered.stable]) / n * 1000
    assert report["latencyDeltaMs"] == pytest.approx(mean_ms, abs=0.01), report
    # The shadow sleeps 50 ms per request; the room below and above is for a busy machine.
    assert 25 <= report["latencyDeltaMs"] <= 300, report
    assert 25 <= report["latencyDeltaP50Ms"] <= 300, report
    assert report["latencyDeltaP50Ms"] <= report["latencyDeltaP99Ms"] <= 1000, report
