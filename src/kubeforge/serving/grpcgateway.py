"""The Open Inference Protocol over gRPC at the gateway: Triton's ``GRPCInferenceService``, as tritonclient ships it.

A grpc.aio server in the gateway's own event loop answers with the same Gateway object as REST. An inference call
is translated into the REST request it stands for (binary tensor data, so tensors are copied, never re-encoded)
and answered by :meth:`.Gateway.answer`, the function the REST path calls: routing, tokens, tenant limits,
validation, fallback, shadow, drift, payload log, feedback and the per-version metrics work on gRPC traffic because
they never learn it came over gRPC. Triton's answer comes back the same way, its binary outputs becoming
``raw_output_contents``. Translating costs tens of microseconds per call against the hundreds a second path to
Triton's gRPC port would add in code and in version state (ports, readiness, schemas twice); docs/benchmarks.md has
the figures.

REST statuses map to gRPC codes as tritonclient users expect them: 400 INVALID_ARGUMENT (the message names the
input or field, as the REST body does), 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 429
RESOURCE_EXHAUSTED with ``retry-after`` in the trailing metadata, 502/503 UNAVAILABLE, 504 DEADLINE_EXCEEDED. The
bearer token comes in the ``authorization`` metadata, a sticky routing key in the metadata the route names, and
the request id, version and role that REST answers in headers come back in the trailing metadata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Message
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from .gateway import REQUEST_ID_HEADER, SERVER_METADATA, Call, Gateway, request_id
from .metrics import GRPC_REQUESTS
from .oip import HEADER_LENGTH, NUMPY, BadRequest, encode_header

SERVICE = "/inference.GRPCInferenceService/"
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""gRPC code of a REST status; other 4xx (413, 415, 422) are INVALID_ARGUMENT, other 5xx INTERNAL."""
TRAILERS = ("kubeforge-request-id", "kubeforge-model-version", "kubeforge-model-role", "retry-after")
"""REST response headers that come back as trailing metadata."""
_NOT_FORWARDED = frozenset(("content-length", "content-type", "content-encoding", HEADER_LENGTH))
# InferTensorContents field of each datatype that has one (FP16 and BF16 travel only as raw contents).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class Refused(Exception):
    """A call answered with a gRPC error: its code, message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.code, self.trailers = code, trailers


def code_of(status: int) -> grpc.StatusCode:
    return CODES.get(status) or (grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL)


def _refused(response: Response, trailers: tuple[tuple[str, str], ...]) -> Refused:
    """The gRPC error of a REST error response: its body's message, or the body itself when it has none."""
    try:
        message = json.loads(response.body)["error"]  # type: ignore[arg-type]  # a memoryview body: TypeError, below
    except (ValueError, KeyError, TypeError):
        message = bytes(response.body).decode("utf-8", "replace")
    return Refused(code_of(response.status_code), str(message), trailers)


# --- parameters and tensors ---------------------------------------------------------------------------------------


TRITON_RESERVED = "triton_"
"""Request parameters Triton keeps for itself. Its gRPC front end reads them (perf_analyzer sends
triton_enable_empty_final_response on every call, meant for streams) and its REST front end refuses them, so they
are not carried over to the REST request: ModelInfer is one answer to one request, which none of them changes."""


def _parameters(params: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as the JSON object REST carries."""
    out = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out


def _set_parameters(params: Any, values: dict[str, Any]) -> None:
    """Fill a protobuf map of InferParameter from a REST parameters object."""
    for key, value in values.items():
        if isinstance(value, bool):
            params[key].bool_param = value
        elif isinstance(value, int):
            if value > np.iinfo(np.int64).max:
                params[key].uint64_param = value
            else:
                params[key].int64_param = value
        elif isinstance(value, float):
            params[key].double_param = value
        else:
            params[key].string_param = str(value)


def _serialized(name: str, datatype: str, values: Any) -> bytes:
    """Typed tensor values as the bytes raw contents carry: little-endian elements, BYTES length-prefixed."""
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        return b"".join(len(v).to_bytes(4, "little") + v for v in items)
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r} has datatype {datatype!r}, which has no typed contents; send raw contents")
    try:
        return np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    except (OverflowError, ValueError, TypeError):
        raise BadRequest(f"input {name!r}: contents hold values that are not {datatype}") from None


def rest_request(request: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The REST body (binary tensor data) and JSON header length that say what request says; outputs are asked
    for in binary, so the answer's tensors come back as bytes to copy."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs, chunks = [], []
    for i, tensor in enumerate(request.inputs):
        if raw:
            data = raw[i]
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None or not tensor.HasField("contents"):
                raise BadRequest(f"input {tensor.name!r} has no contents")
            data = _serialized(tensor.name, tensor.datatype, getattr(tensor.contents, field))
        params = {**_parameters(tensor.parameters), "binary_data_size": len(data)}
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)})
        inputs[-1]["parameters"] = params
        chunks.append(data)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    params = {k: v for k, v in _parameters(request.parameters).items() if not k.startswith(TRITON_RESERVED)}
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {**_parameters(o.parameters), "binary_data": True}} for o in request.outputs
        ]
    else:
        params["binary_data_output"] = True
    if params:
        header["parameters"] = params
    head = encode_header(header).encode()
    return head + b"".join(chunks), len(head)


def grpc_response(content: bytes, header_length: int | None) -> pb.ModelInferResponse:
    """Triton's REST answer as a ModelInferResponse; every output in raw contents, as Triton's own gRPC answers."""
    header = json.loads(content[:header_length] if header_length else content)
    reply = pb.ModelInferResponse(
        model_name=header.get("model_name", ""), model_version=header.get("model_version", ""), id=header.get("id", "")
    )
    _set_parameters(reply.parameters, header.get("parameters") or {})
    offset = header_length or 0
    for out in header.get("outputs", []):
        params = dict(out.get("parameters") or {})
        size = params.pop("binary_data_size", None)
        tensor = reply.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        _set_parameters(tensor.parameters, params)
        if size is None:
            reply.raw_output_contents.append(_serialized(out["name"], out["datatype"], np.ravel(out["data"])))
        else:
            reply.raw_output_contents.append(content[offset : offset + size])
            offset += size
    return reply


# --- the service --------------------------------------------------------------------------------------------------

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _counted(method: Handler) -> Handler:
    """Count the call by method and code, and turn a Refused into the gRPC error it names."""
    name = method.__name__

    async def handle(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            reply = await method(self, request, context)
        except Refused as refused:
            GRPC_REQUESTS.labels(name, refused.code.name).inc()
            await context.abort(refused.code, str(refused), trailing_metadata=refused.trailers)
        GRPC_REQUESTS.labels(name, "OK").inc()
        return reply

    handle.__name__ = name
    return handle


def _token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService as far as the REST gateway answers it: health, metadata, config and inference.
    Repository control, statistics, shared memory and tracing stay with Triton (UNIMPLEMENTED here)."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway

    def _route(self, name: str, version: str, context: grpc.aio.ServicerContext) -> Any:
        try:
            return self.gw.resolve(name, version or None, _token(context))
        except HTTPException as exc:
            raise Refused(code_of(exc.status_code), str(exc.detail)) from None

    @_counted
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_counted
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.gw.ready())

    @_counted
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**SERVER_METADATA)

    @_counted
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        route, pinned = self._route(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=await self.gw.model_is_ready(route, pinned))

    async def _describe(self, request: Any, context: Any, config: bool) -> dict[str, Any]:
        route, pinned = self._route(request.name, request.version, context)
        status, body = await self.gw.describe(route, pinned, config)
        if status != 200:
            raise Refused(code_of(status), str(body.get("error", body)))
        return body

    @_counted
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        body = await self._describe(request, context, config=False)
        reply = pb.ModelMetadataResponse(name=body["name"], versions=body.get("versions", []))
        reply.platform = body.get("platform", "")
        for kind in ("inputs", "outputs"):
            for t in body.get(kind, []):
                getattr(reply, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return reply

    @_counted
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        body = await self._describe(request, context, config=True)
        config = json_format.ParseDict(body, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return pb.ModelConfigResponse(config=config)

    @_counted
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        call = Call(time.perf_counter(), time.time())
        try:
            body, length = rest_request(request)
            unreadable = None
        except BadRequest as err:  # refused where REST refuses an unreadable body: after routing, auth and limits
            body, length, unreadable = b"", 0, err

        async def receive() -> Message:
            if unreadable is not None:
                raise unreadable
            return {"type": "http.request", "body": body, "more_body": False}

        metadata = context.invocation_metadata() or ()
        headers = {k: v for k, v in metadata if isinstance(v, str) and k not in _NOT_FORWARDED}
        headers |= {"content-type": "application/octet-stream", HEADER_LENGTH: str(length)}
        name, version = request.model_name, request.model_version or None
        response = await self.gw.answer(call, name, version, headers, receive)
        call.request_id = response.headers[REQUEST_ID_HEADER] = call.request_id or request_id(None)
        self.gw.settle(call, "POST", SERVICE + "ModelInfer", name, response, len(response.body))
        trailers = tuple((k, v) for k in TRAILERS if (v := response.headers.get(k)) is not None)
        if response.status_code != 200:
            raise _refused(response, trailers)
        context.set_trailing_metadata(trailers)
        answer_length = response.headers.get(HEADER_LENGTH)
        return grpc_response(bytes(response.body), int(answer_length) if answer_length else None)


async def start(gateway: Gateway, host: str, port: int) -> grpc.aio.Server:
    """Serve GRPCInferenceService on host:port in the running event loop; messages are bounded by the gateway's
    body limit, as REST bodies are."""
    limit = gateway.settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(gateway), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
