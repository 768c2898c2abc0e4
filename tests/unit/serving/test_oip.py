"""Request checks name what is wrong; responses decode from JSON and binary alike."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from kubeforge.serving.oip import BadRequest, Schema, TensorSchema, tensors, validate

SCHEMA = Schema("clf", {"features": TensorSchema("FP32", (-1, 2))}, frozenset({"outputs"}), 4)


def request(**inp) -> bytes:
    base = {"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2]}
    return json.dumps({"inputs": [{**base, **inp}]}).encode()


def test_valid_json_and_binary_requests_pass():
    validate(request(), None, SCHEMA)
    validate(request(shape=[2, 2], data=[[1, 2], [3, 4]]), None, SCHEMA)
    header = json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    validate(header + struct.pack("<2f", 1, 2), len(header), SCHEMA)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (request(shape=[1, 3]), "'features' has shape"),
        (request(datatype="FP64"), "'features' has datatype 'FP64'"),
        (request(name="x"), "unknown input 'x'"),
        (request(shape=[5, 2], data=[0] * 10), "batch size 5"),
        (request(data=[1.0]), "data has 1 elements"),
        (request(data=["a", "b"]), "not FP32"),
        (request(data=[1e39, 0]), "not FP32"),
        (b'{"inputs": []}', "non-empty inputs"),
        (b"[1]", "JSON object"),
        (b'{"inputs": [{"data": [NaN]}]}', "not valid JSON"),
        (request(parameters={"binary_data_size": 8}, data=None), "both data and binary_data_size"),
    ],
)
def test_bad_requests_name_the_problem(body, message):
    with pytest.raises(BadRequest, match=message) as err:
        validate(body, None, SCHEMA)
    assert err.value.status == 400


def test_binary_sizes_must_add_up():
    header = json.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}
    ).encode()
    with pytest.raises(BadRequest, match="do not add up"):
        validate(header + b"\0" * 4, len(header), SCHEMA)
    with pytest.raises(BadRequest, match="does not fit"):
        validate(header, len(header) + 10, SCHEMA)


def test_tensors_json_and_binary():
    values = np.array([[0.25, 0.75]], dtype=np.float32)
    as_json = json.dumps({"outputs": [{"name": "outputs", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]})
    np.testing.assert_array_equal(tensors(as_json.encode(), None)["outputs"], values)
    out = {"name": "outputs", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    header = json.dumps({"outputs": [out]}).encode()
    np.testing.assert_array_equal(tensors(header + values.tobytes(), len(header))["outputs"], values)
