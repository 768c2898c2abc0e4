"""Requests with entity keys: what the gateway reads from them and what it sends each version in their place.

Requests are encoded by tritonclient itself, as callers send them; the values of a lookup are
given as the online store returns them (the store itself is tested against real Feast).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient
from pydantic import ValidationError

from kubeforge.serving.enrich import EXPIRED, MISSING, Entities, Lookup, Unavailable, entity_request
from kubeforge.serving.oip import HEADER_LENGTH, BadRequest, Schema, TensorSchema
from kubeforge.serving.routes import Route, RouteTable, compile_table

URL = "http://triton:8000"
SCHEMA = Schema("clf", {"features": TensorSchema("FP32", (-1, 3))}, frozenset({"outputs"}), max_batch_size=8)


def route(value_type: str = "INT64", defaults: dict[str, float] | None = None) -> Route:
    """Stable trained on [spend, age, visits], canary on [visits, spend, tenure]; a shadow the view cannot feed."""
    features = {
        "namespace": "shop",
        "featureView": "customer-stats",
        "entityKey": "customer_id",
        "joinKey": "customer_id",
        "valueType": value_type,
        "ttlSeconds": 86400,
        "defaults": defaults or {},
    }
    versions = [
        {"version": "1", "role": "stable", "url": URL, "weight": 90, "featureOrder": ["spend", "age", "visits"]},
        {"version": "2", "role": "canary", "url": URL, "weight": 10, "featureOrder": ["visits", "spend", "tenure"]},
        {"version": "3", "role": "shadow", "url": URL, "percent": 100},
    ]
    table = RouteTable.model_validate({"models": {"clf": {"versions": versions, "features": features}}})
    return compile_table(table, {})["clf"]


def tensor(name: str, data: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    return inp


def encoded(*inputs: httpclient.InferInput, **kw) -> tuple[bytes, int | None]:
    return httpclient.InferenceServerClient.generate_request_body(list(inputs), **kw)


def keys(body: bytes, header_length: int | None, r: Route | None = None) -> list:
    r = r or route()
    request = entity_request(body, header_length, r)
    assert request is not None
    return request.entities(SCHEMA).keys


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_integer_keys_are_read_from_json_and_binary_tensors_of_either_shape(binary: bool, shape: tuple) -> None:
    ids = np.array([42, 7, 2**40], dtype=np.int64).reshape(shape)
    assert keys(*encoded(tensor("customer_id", ids, "INT64", binary))) == [42, 7, 2**40]
    assert keys(*encoded(tensor("customer_id", (ids % 1000).astype(np.int32), "INT32", binary))) == [42, 7, 776]


@pytest.mark.parametrize("binary", [True, False])
def test_string_keys_come_as_bytes_tensors(binary: bool) -> None:
    ids = np.array(["c-42", "ß-7"], dtype=object)
    assert keys(*encoded(tensor("customer_id", ids, "BYTES", binary)), route("STRING")) == ["c-42", "ß-7"]
    assert keys(*encoded(tensor("customer_id", ids, "BYTES", binary)), route("BYTES")) == [b"c-42", "ß-7".encode()]


def test_a_request_with_features_inline_takes_the_usual_path() -> None:
    inline = tensor("features", np.zeros((2, 3), dtype=np.float32), "FP32")
    assert entity_request(*encoded(inline), route()) is None
    assert entity_request(b"not json", None, route()) is None, "the usual checks name what is wrong"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "needs input 'customer_id' (INT64 or INT32, one entity key per row, read from FeatureView"),
        (["features", "customer_id"], "either 'customer_id' (entity keys) or 'features' (features), not both"),
    ],
)
def test_a_request_without_entity_keys_is_told_what_the_model_takes(inputs: list[str], message: str) -> None:
    body = {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    body["inputs"] += [{"name": n, "datatype": "INT64", "shape": [1], "data": [1]} for n in inputs]
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        entity_request(json.dumps(body).encode(), None, route())


@pytest.mark.parametrize(
    ("ids", "datatype", "message"),
    [
        (np.array([1.5], dtype=np.float32), "FP32", "input 'customer_id' has datatype 'FP32', the model takes INT64"),
        (np.arange(9, dtype=np.int64), "INT64", "batch size 9, more than the model's 8"),
        (np.array([[1, 2]], dtype=np.int64), "INT64", r"shape \[1, 2\], the model takes \[-1, 1\]"),
    ],
)
def test_entity_keys_get_the_usual_checks(ids: np.ndarray, datatype: str, message: str) -> None:
    request = entity_request(*encoded(tensor("customer_id", ids, datatype)), route())
    assert request is not None
    with pytest.raises(BadRequest, match=message):
        request.entities(SCHEMA)


def test_integer_keys_out_of_an_int32_join_keys_range_are_refused() -> None:
    request = entity_request(
        *encoded(tensor("customer_id", np.array([2**40], dtype=np.int64), "INT64")), route("INT32")
    )
    assert request is not None
    with pytest.raises(BadRequest, match="entity keys of FeatureView 'customer-stats' are INT32"):
        request.entities(SCHEMA)


def test_string_keys_that_are_not_utf8_are_refused() -> None:
    ids = np.array([b"\xff\xfe"], dtype=object)
    request = entity_request(*encoded(tensor("customer_id", ids, "BYTES")), route("STRING"))
    assert request is not None
    with pytest.raises(BadRequest, match="entity keys of FeatureView 'customer-stats' are UTF-8 strings"):
        request.entities(SCHEMA)


def looked_up(r: Route, values: list[list[float]], state: list[list[int]] | None = None) -> Lookup:
    """A lookup of entities 42 and 7 (rows) over the route's features (columns, in r.lookup order)."""
    assert list(r.lookup) == ["spend", "age", "visits", "tenure"]
    request = Entities([42, 7], {"id": "r1", "parameters": {"binary_data_output": True}})
    shape = np.array(values).shape
    return Lookup(r, request, np.array(values, dtype=np.float64), np.array(state or np.zeros(shape), dtype=np.int8))


def sent(body: bytes, headers: dict[str, str]) -> tuple[dict, np.ndarray]:
    length = int(headers[HEADER_LENGTH])
    header = json.loads(body[:length])
    (inp,) = header.pop("inputs")
    return header, np.frombuffer(body[length:], dtype=np.float32).reshape(inp["shape"])


def test_each_version_gets_the_features_in_the_order_it_was_trained_with() -> None:
    r = route()
    lookup = looked_up(r, [[10.5, 30, 3, 12], [0.25, 41, 9, 1]])
    header, stable = sent(*lookup.body(r.stable))
    assert stable.tolist() == [[10.5, 30, 3], [0.25, 41, 9]]
    assert header == {"id": "r1", "parameters": {"binary_data_output": True}}, "the rest of the request goes on"
    assert r.canary is not None
    assert sent(*lookup.body(r.canary))[1].tolist() == [[3, 10.5, 12], [9, 0.25, 1]]


def test_a_value_not_served_takes_the_declared_default_or_is_refused_naming_entity_and_feature() -> None:
    state = [[0, 0, 0, MISSING], [EXPIRED, 0, 0, 0]]
    values = [[10.5, 30, 3, 0], [0, 41, 9, 1]]
    r = route()
    with pytest.raises(BadRequest) as refused:
        looked_up(r, values, state).body(r.stable)
    assert refused.value.status == 422
    message = str(refused.value)
    assert "model 'clf' version 1" in message and "FeatureView 'customer-stats'" in message
    assert "entity customer_id=7: feature spend expired (older than ttl 24h)" in message
    assert "tenure" not in message, "the stable version does not take tenure"

    r = route(defaults={"spend": -1.0})
    assert sent(*looked_up(r, values, state).body(r.stable))[1].tolist() == [[10.5, 30, 3], [-1, 41, 9]]
    assert r.canary is not None
    with pytest.raises(BadRequest, match=r"entity customer_id=42: feature tenure missing$"):
        looked_up(r, values, state).body(r.canary)


def test_a_version_the_view_cannot_feed_is_unavailable_for_entity_requests() -> None:
    r = route()
    assert r.shadow is not None and r.shadow.columns is None
    with pytest.raises(Unavailable, match="version 3 cannot be fed from FeatureView 'customer-stats'"):
        looked_up(r, [[1, 2, 3, 4], [5, 6, 7, 8]]).body(r.shadow)


def test_the_entity_key_cannot_be_the_model_input() -> None:
    features = {"namespace": "a", "featureView": "v", "entityKey": "features", "joinKey": "k", "ttlSeconds": 1}
    versions = [{"version": "1", "role": "stable", "url": URL, "weight": 1}]
    with pytest.raises(ValidationError, match="the model's own input"):
        RouteTable.model_validate({"models": {"clf": {"versions": versions, "features": features}}})


def test_a_gateway_without_features_never_imports_feast(tmp_path) -> None:
    """import feast takes seconds: a gateway whose table names no view must not pay for it, nor for its stores."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        json.dumps({"models": {"clf": {"versions": [{"version": "1", "role": "stable", "url": URL, "weight": 1}]}}})
    )
    program = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kubeforge.serving.gateway import Gateway, Settings\n"
        f"gw = Gateway(Settings(Path({str(routes)!r})))\n"
        "gw.reload()\n"
        "gw.stores.open(gw.routes.values())\n"
        "assert gw.loaded and gw.stores.ready(gw.routes['clf'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'feast'))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
