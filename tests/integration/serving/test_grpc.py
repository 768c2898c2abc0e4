"""The Open Inference Protocol over gRPC at the gateway, called with tritonclient.grpc as it calls Triton."""

from __future__ import annotations

import math
import socket
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from kubeforge.core import modelcontract as mc
from kubeforge.local.processes import free_port

from .conftest import table

pytestmark = pytest.mark.integration

ROWS = np.array([[0.7, 0.1, 0.2, 0.3], [-0.5, 0, 0, 0]], dtype=np.float32)
TOKENS = """\
tenants:
  acme: {}
  tight: {requestsPerSecond: 0.01, burst: 1}
tokens:
  - {name: acme-web, tenant: acme, token: acme-secret, models: [clf]}
  - {name: tight-job, tenant: tight, token: tight-secret}
  - {name: other-only, token: other-secret, models: [other]}
"""


def start(gateway, routes: dict, tokens: str | None = None):
    """A gateway serving gRPC too, and a tritonclient for that port."""
    port = free_port()
    gw = gateway(routes, tokens, ("--grpc-port", str(port)))
    return gw, grpcclient.InferenceServerClient(f"127.0.0.1:{port}"), port


def inputs(x: np.ndarray = ROWS, name: str = mc.INPUT_NAME) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def code(call) -> tuple[str, str]:
    """The gRPC status code name and message a tritonclient call fails with."""
    with pytest.raises(InferenceServerException) as failed:
        call()
    return str(failed.value.status()).removeprefix("StatusCode."), failed.value.message()


def test_tritonclient_grpc_works_unchanged_and_is_counted(gateway, triton, registered):
    gw, client, port = start(gateway, table(registered, triton.url))
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(registered.name)
    assert client.get_server_metadata().name == "kubeforge-gateway"
    meta = client.get_model_metadata(registered.name)
    assert meta.name == registered.name and list(meta.versions) == [registered.stable]
    assert meta.inputs[0].name == mc.INPUT_NAME and list(meta.inputs[0].shape) == [-1, 4]
    assert client.get_model_config(registered.name).config.max_batch_size == 8

    got = client.infer(registered.name, inputs(), request_id="req-42")
    want = direct.infer(registered.name, inputs(), model_version=registered.stable)
    np.testing.assert_array_equal(got.as_numpy(mc.OUTPUT_NAME), want.as_numpy(mc.OUTPUT_NAME))
    assert got.get_response().id == "req-42" and got.get_response().model_version == registered.stable
    only = [grpcclient.InferRequestedOutput(mc.OUTPUT_NAME)]
    pinned = client.infer(registered.name, inputs(), model_version=registered.stable, outputs=only)
    assert pinned.as_numpy(mc.OUTPUT_NAME).shape == (2, 2)

    # Typed contents instead of raw bytes (clients other than tritonclient send them), with the request id and
    # the answering version in the trailing metadata, as REST has them in headers; and the parameter Triton's
    # perf_analyzer puts on every call, which Triton's REST front end would refuse.
    request = pb.ModelInferRequest(model_name=registered.name, id="typed-1")
    request.inputs.add(name=mc.INPUT_NAME, datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(ROWS.ravel())
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(request)
    trailers = dict(call.trailing_metadata())
    assert trailers["kubeforge-request-id"] == "typed-1" and trailers["kubeforge-model-version"] == registered.stable
    typed = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(typed, want.as_numpy(mc.OUTPUT_NAME))

    assert gw.metric("kubeforge_gateway_grpc_requests_total", method="ModelInfer", code="OK") == 3
    assert gw.metric("kubeforge_gateway_requests_total", version=registered.stable, code="200") == 3


def test_grpc_calls_are_joined_with_join_requests_and_each_gets_its_own_rows(gateway, triton, registered):
    """tritonclient.grpc's calls become binary requests at the gateway; with joinRequests those that arrive together
    go to Triton joined, and each caller gets its own rows back as raw output contents."""
    gw, client, _ = start(gateway, table(registered, triton.url, joinRequests=True))
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    rng = np.random.default_rng(3)
    for _ in range(5):  # calls join only where they reach the gateway while others are on their way to Triton: on a
        # busy machine a burst may arrive one call at a time, so another is sent until one has joined
        rows = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(96)]
        answers: dict[int, object] = {}
        for i, x in enumerate(rows):  # sent without waiting
            client.async_infer(
                registered.name,
                inputs(x),
                lambda result, error, i=i, answers=answers: answers.update({i: error or result}),
                request_id=f"call-{i}",
            )
        deadline = time.monotonic() + 60
        while len(answers) < len(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(answers) == len(rows)
        for i, x in enumerate(rows):
            got = answers[i]
            assert isinstance(got, grpcclient.InferResult), got
            want = direct.infer(registered.name, inputs(x), model_version=registered.stable)
            assert got.get_response().id == f"call-{i}"
            np.testing.assert_allclose(got.as_numpy(mc.OUTPUT_NAME), want.as_numpy(mc.OUTPUT_NAME), rtol=1e-6)
        if gw.metric("kubeforge_gateway_joins_total", version=registered.stable) > 0:
            break
    assert gw.metric("kubeforge_gateway_joins_total", version=registered.stable) > 0


def test_canary_split_and_fallback_over_grpc(gateway, triton, registered):
    _, client, _ = start(gateway, table(registered, triton.url, canary=(triton.url, 30)))
    n = 400
    versions = [client.infer(registered.name, inputs()).get_response().model_version for _ in range(n)]
    canary = versions.count(registered.canary)
    assert versions.count(registered.stable) + canary == n
    mean, sd = n * 0.3, math.sqrt(n * 0.3 * 0.7)
    assert abs(canary - mean) < 4.5 * sd, f"{canary} of {n} on the canary, expected about {mean:.0f}"

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: the canary's connections are refused
    try:
        gw, client, _ = start(
            gateway, table(registered, triton.url, canary=(f"http://127.0.0.1:{dead.getsockname()[1]}", 100))
        )
        answered = [client.infer(registered.name, inputs()).get_response().model_version for _ in range(20)]
    finally:
        dead.close()
    assert set(answered) == {registered.stable}
    assert gw.metric("kubeforge_fallbacks_total", model=registered.name, version=registered.canary) >= 1


def test_auth_tenant_limits_and_bad_requests_get_grpc_codes(gateway, triton, registered):
    gw, client, port = start(gateway, table(registered, triton.url), tokens=TOKENS)

    def infer(token: str | None = None, model: str = registered.name, x: np.ndarray = ROWS, name=mc.INPUT_NAME):
        headers = {"authorization": f"Bearer {token}"} if token else None
        return client.infer(model, inputs(x, name), headers=headers)

    assert code(infer)[0] == "UNAUTHENTICATED"
    assert code(lambda: infer("wrong"))[0] == "UNAUTHENTICATED"
    assert code(lambda: infer("other-secret"))[0] == "PERMISSION_DENIED"
    assert infer("acme-secret").as_numpy(mc.OUTPUT_NAME).shape == (2, 2)
    assert client.is_server_ready()  # health stays open, as over REST

    status, message = code(lambda: infer("acme-secret", model="nope"))
    assert status == "NOT_FOUND" and "nope" in message
    status, message = code(lambda: infer("acme-secret", x=ROWS[:, :3]))
    assert status == "INVALID_ARGUMENT" and repr(mc.INPUT_NAME) in message and "shape" in message
    status, message = code(lambda: infer("acme-secret", name="pixels"))
    assert status == "INVALID_ARGUMENT" and "'pixels'" in message

    assert infer("tight-secret").as_numpy(mc.OUTPUT_NAME).shape == (2, 2)  # its one burst token
    request = pb.ModelInferRequest(model_name=registered.name, raw_input_contents=[ROWS.tobytes()])
    request.inputs.add(name=mc.INPUT_NAME, datatype="FP32", shape=[2, 4])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=[("authorization", "Bearer tight-secret")])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tight" in refused.value.details() and "rate limit" in refused.value.details()
    assert int(dict(refused.value.trailing_metadata())["retry-after"]) >= 1
    assert gw.metric("kubeforge_gateway_throttled_total", tenant="tight", reason="rate") == 1
    assert gw.metric("kubeforge_gateway_grpc_requests_total", method="ModelInfer", code="UNAUTHENTICATED") == 2
