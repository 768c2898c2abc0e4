"""Open Inference Protocol v2 request checks and response decoding.

The gateway forwards request bodies to Triton byte for byte; it only reads them to
refuse bad input itself, with a 4xx that names the offending input, instead of letting a
malformed tensor reach a model. Checks run against the version's metadata, fetched from
Triton once and cached. Binary tensor data (the extension tritonclient uses by default)
is checked by size: the JSON header says how many bytes each tensor has.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype (BYTES has no fixed item size).
NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
HEADER_LENGTH = "inference-header-content-length"

Body = tuple[bytes, int | None]
"""A request or response body and the length of its JSON header (None: all JSON, no binary tensor data)."""


class BadRequest(ValueError):
    """Input the gateway refuses; status is 400 (invalid) or 413 (too large)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSchema:
    datatype: str
    shape: tuple[int, ...]  # -1 where any size goes (the batch dimension among them)


@dataclass(frozen=True)
class Schema:
    """What a model version accepts, from Triton's model metadata and config."""

    model: str
    inputs: dict[str, TensorSchema]
    outputs: frozenset[str]
    max_batch_size: int

    @classmethod
    def from_triton(cls, model: str, metadata: dict[str, Any], config: dict[str, Any]) -> Schema:
        return cls(
            model=model,
            inputs={i["name"]: TensorSchema(i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]},
            outputs=frozenset(o["name"] for o in metadata["outputs"]),
            max_batch_size=int(config.get("max_batch_size", 0)),
        )


def _no_constants(name: str) -> float:
    raise BadRequest(f"{name} is not a number JSON allows")


# Built once: json.loads with an option builds a decoder per call, and numpy's type limits cost microseconds
# per lookup, both on every request.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
encode_header = json.JSONEncoder(separators=(",", ":")).encode
"""A binary request's JSON header, compact; built once, as json.dumps with options builds an encoder per call."""
_FLOAT_MAX = {t: float(np.finfo(NUMPY[t]).max) for t in ("FP16", "FP32", "FP64")}
_INT_RANGE = {t: (int(np.iinfo(d).min), int(np.iinfo(d).max)) for t, d in NUMPY.items() if t[0] in "IU"}
_ITEMSIZE = {t: np.dtype(d).itemsize for t, d in NUMPY.items()}


def flatten(data: Any) -> list[Any]:
    """Nested lists' items in order, without recursion; a flat list (the usual request) as it is."""
    if type(data) is list and list not in map(type, data):
        return data
    flat: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _check_values(name: str, datatype: str, data: Any, count: int) -> None:
    flat = flatten(data)
    if len(flat) != count:
        raise BadRequest(f"input {name!r}: data has {len(flat)} elements, shape needs {count}")
    types = set(map(type, flat))
    if datatype == "BYTES":
        ok = types == {str}
    elif datatype == "BOOL":
        ok = types == {bool}
    elif datatype.startswith("FP"):  # JSON has no NaN here (parse_constant refuses it); 1e999 is inf, out of range
        top = _FLOAT_MAX[datatype]
        ok = types <= {int, float} and -top <= min(flat) and max(flat) <= top
    else:
        lo, hi = _INT_RANGE[datatype]
        ok = types == {int} and lo <= min(flat) and max(flat) <= hi
    if not ok:
        raise BadRequest(f"input {name!r}: data holds values that are not {datatype}")


def _check_input(inp: Any, schema: Schema, seen: set[str]) -> int:
    """Check one input; returns the binary bytes it announces."""
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
        raise BadRequest("each input must be an object with a name")
    name = inp["name"]
    spec = schema.inputs.get(name)
    if spec is None:
        raise BadRequest(f"unknown input {name!r} for model {schema.model!r}; it takes {sorted(schema.inputs)}")
    if name in seen:
        raise BadRequest(f"input {name!r} appears twice")
    seen.add(name)
    if inp.get("datatype") != spec.datatype:
        raise BadRequest(f"input {name!r} has datatype {inp.get('datatype')!r}, the model takes {spec.datatype}")
    shape = inp.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != len(spec.shape)
        or not all(type(d) is int and d >= 1 and (w == -1 or d == w) for d, w in zip(shape, spec.shape, strict=True))
    ):
        raise BadRequest(f"input {name!r} has shape {shape}, the model takes {list(spec.shape)} (-1: any size >= 1)")
    if schema.max_batch_size and shape[0] > schema.max_batch_size:
        raise BadRequest(f"input {name!r} has batch size {shape[0]}, more than the model's {schema.max_batch_size}")
    count = math.prod(shape)
    params = inp.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"input {name!r}: parameters must be an object")
    size = (params or {}).get("binary_data_size")
    if size is None:
        if "data" not in inp:
            raise BadRequest(f"input {name!r} has neither data nor binary_data_size")
        _check_values(name, spec.datatype, inp["data"], count)
        return 0
    if "data" in inp:
        raise BadRequest(f"input {name!r} has both data and binary_data_size")
    itemsize = _ITEMSIZE.get(spec.datatype)
    if type(size) is not int or size < 0 or (itemsize is not None and size != count * itemsize):
        raise BadRequest(f"input {name!r}: binary_data_size {size!r} does not fit shape {shape} of {spec.datatype}")
    return size


def validate(body: bytes, header_length: int | None, schema: Schema) -> dict[str, Any]:
    """The request's JSON header; raises BadRequest unless body is an inference request this version accepts."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    head = body[:header_length] if header_length else body
    try:
        request = _DECODER.decode(head.decode(json.detect_encoding(head), "surrogatepass"))
    except (ValueError, RecursionError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise BadRequest("request body must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("request needs a non-empty inputs list")
    seen: set[str] = set()
    binary = sum(_check_input(inp, schema, seen) for inp in inputs)
    missing = sorted(set(schema.inputs) - seen)
    if missing:
        raise BadRequest(f"missing input {missing[0]!r} for model {schema.model!r}")
    if binary != (len(body) - header_length if header_length else 0):
        raise BadRequest("binary tensor sizes do not add up to the bytes after the JSON header")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("outputs must be a list of objects")
    for out in outputs:
        if out.get("name") not in schema.outputs:
            raise BadRequest(f"unknown output {out.get('name')!r}; the model returns {sorted(schema.outputs)}")
    for key in ("parameters", "id"):
        if key in request and not isinstance(request[key], dict if key == "parameters" else str):
            raise BadRequest(f"{key} has the wrong type")
    return request


def headers(bodies: Sequence[Body]) -> list[Any]:
    """The JSON headers of bodies, parsed in one go: for small bodies json.loads costs about as much per call as
    per byte. When one is not JSON each is parsed on its own, and that one comes back as its ValueError."""
    heads = [body[:length] if length else body for body, length in bodies]
    try:
        parsed = json.loads(b"[" + b",".join(heads) + b"]")
    except ValueError:
        parsed = None
    if isinstance(parsed, list) and len(parsed) == len(heads):  # a body like `1, 2` would add an element
        return parsed
    out: list[Any] = []
    for head in heads:
        try:
            out.append(json.loads(head))
        except ValueError as err:
            out.append(err)
    return out


def tensors(
    content: bytes,
    header_length: int | None,
    kind: str = "outputs",
    wanted: Callable[[str], bool] | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The tensors of a request (kind "inputs") or response ("outputs"), JSON or binary, by name; only those whose
    name is wanted, when given: the others are never decoded. BYTES elements come as an object array of str (JSON)
    or bytes (binary). header is the body's JSON header when it was parsed already."""
    if header is None:
        header = json.loads(content[:header_length] if header_length else content)
    offset = header_length or 0
    out: dict[str, np.ndarray] = {}
    for t in header.get(kind, []):
        size = (t.get("parameters") or {}).get("binary_data_size")
        decode = wanted is None or wanted(t["name"])
        if size is not None:
            if decode:
                data = memoryview(content)[offset : offset + size]
                if t["datatype"] == "BYTES":
                    arr = np.empty(math.prod(t["shape"]), dtype=object)
                    arr[:] = binary_bytes(bytes(data), len(arr), t["name"])
                else:
                    arr = np.frombuffer(data, dtype=NUMPY[t["datatype"]])
                out[t["name"]] = arr.reshape(t["shape"])
            offset += size
        elif decode:
            out[t["name"]] = np.asarray(t["data"], dtype=NUMPY.get(t["datatype"], "object")).reshape(t["shape"])
    return out


def binary_bytes(data: bytes, count: int, name: str) -> list[bytes]:
    """BYTES tensor data: each element a 4-byte little-endian length and that many bytes."""
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        size = int.from_bytes(data[pos : pos + 4], "little")
        item = data[pos + 4 : pos + 4 + size]
        if pos + 4 > len(data) or len(item) != size:
            raise BadRequest(f"input {name!r}: binary data ends inside element {len(out)}")
        out.append(item)
        pos += 4 + size
    if pos != len(data):
        raise BadRequest(f"input {name!r}: {len(data) - pos} bytes of binary data left after {count} elements")
    return out
