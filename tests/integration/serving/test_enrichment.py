"""Requests with entity keys through a real gateway process, a real Triton and a real Feast online store.

Three versions of a linear classifier, each trained on the view's features in another
order (the shadow on another set), so a feature in the wrong place changes the answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import tritonclient.http as httpclient

from kubeforge.api import FeatureViewSpec
from kubeforge.api.modeldeployment import ModelRef
from kubeforge.core import modelcontract as mc
from kubeforge.featurestore.config import DIR_ENV, StoreSettings
from kubeforge.local import triton as local_triton
from kubeforge.serving import export
from tests.integration.operators.conftest import wait_for

from .conftest import N_FEATURES, RUNTIME, Gateway, register, send, signature

pytestmark = pytest.mark.integration
NAME, VIEW, NAMESPACE = "churn", "customer-stats", "shop"
FEATURES = ["spend", "age", "visits", "tenure", "score"]
ORDERS = {  # version -> its features in input order
    "1": ["spend", "age", "visits", "tenure"],
    "2": ["tenure", "visits", "age", "spend"],
    "3": ["score", "spend", "age", "visits"],
}
CUSTOMERS = list(range(1, 31))
EXPIRED, NO_VISITS, UNKNOWN = 31, 32, 999
VISITS_DEFAULT = 0.0
TTL = 3600


class Linear(torch.nn.Module):
    """Class 1 when features @ weights > 0: every feature, in its place, moves the answer."""

    def __init__(self, weights: list[float]):
        super().__init__()
        self.register_buffer("weights", torch.tensor(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x @ self.weights
        return torch.softmax(torch.stack([-d, d], dim=1), dim=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Customers 1-30 with values 5 minutes old; 31's are 3 hours old (past the 1h ttl); 32 has no visits."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    ids = [*CUSTOMERS, EXPIRED, NO_VISITS]
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "spend": [rng.uniform(0, 500) for _ in ids],
            "age": [rng.randrange(18, 90) for _ in ids],
            "visits": pd.array([float(rng.randrange(0, 40)) for _ in ids[:-1]] + [None], dtype="Float64"),
            "tenure": [rng.uniform(0, 10) for _ in ids],
            "score": [rng.uniform(-1, 1) for _ in ids],
            "event_timestamp": [now - timedelta(hours=3 if i == EXPIRED else 0, minutes=5) for i in ids],
        }
    )
    path = tmp_path_factory.mktemp("source") / "customers.parquet"
    frame.to_parquet(path)
    frame.attrs["path"] = str(path)
    return frame


@pytest.fixture(scope="module")
def store(source: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> StoreSettings:
    """The view registered and materialized, with a ttl of 4h so that customer 31's old values are online too."""
    from kubeforge.featurestore.store import Store

    settings = StoreSettings(tmp_path_factory.mktemp("features"))
    dtypes = {"age": "Int64"}
    spec = FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [{"name": f, "dtype": dtypes.get(f, "Float64")} for f in FEATURES],
            "source": {"path": source.attrs["path"]},
            "ttl": "4h",
        }
    )
    feast = Store(settings, NAMESPACE)
    feast.apply(VIEW, spec)
    feast.materialize(VIEW, spec)
    return settings


@pytest.fixture(scope="module")
def churn_triton(mlflow, triton_venv, tmp_path_factory) -> Iterator[local_triton.TritonServer]:
    weights = {"1": [0.01, -0.05, 0.2, 0.3], "2": [0.3, 0.2, -0.05, 0.01], "3": [2.0, 0.01, -0.05, 0.2]}
    assert all(len(order) == N_FEATURES for order in ORDERS.values())
    work = tmp_path_factory.mktemp("churn-triton")
    for version, w in weights.items():
        assert register(mlflow.url, NAME, Linear(w), signature()) == version
        export.export(mlflow.url, ModelRef(name=NAME, version=int(version)), work / "repo", RUNTIME)
    server = local_triton.start(work / "repo", work, models=[NAME], venv=triton_venv)
    yield server
    server.stop()


def routes(triton_url: str, canary_weight: int = 0, shadow: bool = False) -> dict:
    versions = [
        {"version": "1", "role": "stable", "url": triton_url, "weight": 100 - canary_weight},
        {"version": "2", "role": "canary", "url": triton_url, "weight": canary_weight},
    ]
    if shadow:
        versions.append({"version": "3", "role": "shadow", "url": triton_url, "percent": 100})
    for v in versions:
        v["featureOrder"] = ORDERS[v["version"]]
    features = {
        "namespace": NAMESPACE,
        "featureView": VIEW,
        "entityKey": "customer_id",
        "joinKey": "customer_id",
        "valueType": "INT64",
        "ttlSeconds": TTL,
        "defaults": {"visits": VISITS_DEFAULT},
    }
    return {"models": {NAME: {"versions": versions, "features": features}}}


@pytest.fixture(scope="module")
def gw(store: StoreSettings, churn_triton, tmp_path_factory) -> Iterator[Gateway]:
    """One gateway for the module (its first table with features imports Feast, which takes a while)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(DIR_ENV, str(store.root))  # the process inherits it, as the operator passes it to the pod
        gateway = Gateway(tmp_path_factory.mktemp("gw") / "gw", {"models": {}})
    try:
        gateway.write(routes(churn_triton.url))
        wait_for(lambda: httpx.get(f"{gateway.url}/v2/models/{NAME}/ready").status_code == 200, 300, "features")
        yield gateway
    finally:
        gateway.stop()


def features(source: pd.DataFrame, customers: list[int], version: str) -> np.ndarray:
    """What the version takes for these customers, as a caller sending them inline would."""
    rows = source.set_index("customer_id").loc[customers, ORDERS[version]]
    return rows.astype("float64").fillna(VISITS_DEFAULT).to_numpy(dtype=np.float32)


def inline(client: httpclient.InferenceServerClient, x: np.ndarray, version: str) -> np.ndarray:
    inp = httpclient.InferInput(mc.INPUT_NAME, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(NAME, [inp], model_version=version).as_numpy(mc.OUTPUT_NAME)


def keyed(customers: list[int], shape: tuple[int, ...] | None = None, binary: bool = True) -> httpclient.InferInput:
    ids = np.array(customers, dtype=np.int64).reshape(shape or (len(customers),))
    inp = httpclient.InferInput("customer_id", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids, binary_data=binary)
    return inp


def post(gw: Gateway, customers: list[int], datatype: str = "INT64", name: str = "customer_id") -> httpx.Response:
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": [len(customers)], "data": customers}]}
    return httpx.post(f"{gw.url}/v2/models/{NAME}/infer", content=json.dumps(body), timeout=30)


def test_the_enriched_prediction_equals_the_prediction_for_the_same_features_inline(
    gw: Gateway, source: pd.DataFrame
) -> None:
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    customers = [3, 1, 17, NO_VISITS, 8, 30, 12, 5]
    for version in ("1", "2"):
        want = inline(client, features(source, customers, version), version)
        assert len(set(want.argmax(axis=1).tolist())) == 2, "both classes among the answers"
        for shape, binary in (((8,), True), ((8, 1), True), ((8,), False)):
            got = client.infer(NAME, [keyed(customers, shape, binary)], model_version=version)
            np.testing.assert_array_equal(got.as_numpy(mc.OUTPUT_NAME), want)
    live = client.infer(NAME, [keyed(customers)])  # not pinned: the stable version answers
    np.testing.assert_array_equal(live.as_numpy(mc.OUTPUT_NAME), inline(client, features(source, customers, "1"), "1"))


def test_stable_canary_and_shadow_each_get_their_own_feature_order(
    gw: Gateway, source: pd.DataFrame, churn_triton
) -> None:
    gw.write(routes(churn_triton.url, canary_weight=50, shadow=True))
    direct = httpclient.InferenceServerClient(churn_triton.url.removeprefix("http://"))
    shadowed = gw.metric("kubeforge_shadow_requests_total", model=NAME, version="3", outcome="ok")
    try:
        wait_for(lambda: post(gw, [1]).headers.get("kubeforge-model-version") == "2", 30, "the canary in the table")
        answered = set()
        for customer in CUSTOMERS:
            resp = post(gw, [customer])
            assert resp.status_code == 200, resp.text
            version = resp.headers["kubeforge-model-version"]
            answered.add(version)
            want = inline(direct, features(source, [customer], version), version)
            got = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_array_equal(got, want.reshape(-1), err_msg=f"customer {customer}, version {version}")
        assert answered == {"1", "2"}
        mirrored = lambda: gw.metric("kubeforge_shadow_requests_total", model=NAME, version="3", outcome="ok")  # noqa: E731
        wait_for(lambda: mirrored() - shadowed >= len(CUSTOMERS) / 2, 30, "the shadow answering mirrored requests")
        assert gw.metric("kubeforge_shadow_requests_total", model=NAME, version="3", outcome="error") == 0
    finally:
        gw.write(routes(churn_triton.url))


def test_concurrent_requests_sharing_reads_each_get_their_own_rows(gw: Gateway, source: pd.DataFrame, churn_triton):
    direct = httpclient.InferenceServerClient(churn_triton.url.removeprefix("http://"))
    batches = [CUSTOMERS[i : i + 1 + i % 3] for i in range(len(CUSTOMERS))]  # 1 to 3 rows each
    requests = []
    for batch in batches:
        payload = {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [len(batch)], "data": batch}]}
        requests.append((json.dumps(payload).encode(), {}))
    results = send(f"{gw.url}/v2/models/{NAME}/infer", requests, concurrency=8)
    for batch, result in zip(batches, results, strict=True):
        assert result.status == 200, result.content
        got = np.array(json.loads(result.content)["outputs"][0]["data"], dtype=np.float32)
        want = inline(direct, features(source, batch, "1"), "1")
        # Triton batches concurrent requests together, which moves the last bits of a product; another customer's
        # row would move the answer entirely.
        np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-4, err_msg=f"customers {batch}")


def test_values_not_served_are_refused_by_entity_and_feature_never_guessed(gw: Gateway, source: pd.DataFrame) -> None:
    misses = {kind: gw.metric("kubeforge_feature_lookup_misses_total", kind=kind) for kind in ("missing", "expired")}
    lookups = gw.metric("kubeforge_feature_lookup_duration_seconds_count", namespace=NAMESPACE, featureview=VIEW)

    expired = post(gw, [EXPIRED])
    assert expired.status_code == 422
    assert "entity customer_id=31: feature spend expired (older than ttl 1h)" in expired.json()["error"]
    assert "visits" not in expired.json()["error"], "visits declares a default"

    unknown = post(gw, [2, UNKNOWN])
    assert unknown.status_code == 422, "one unknown entity fails the whole request, never a row silently"
    assert "entity customer_id=999: feature spend missing" in unknown.json()["error"]
    assert "customer_id=2" not in unknown.json()["error"]

    absent = post(gw, [2], name="user_id")
    assert absent.status_code == 400
    assert "needs input 'customer_id'" in absent.json()["error"]
    assert "FeatureView 'customer-stats'" in absent.json()["error"]
    wrong_type = post(gw, ["2"], datatype="BYTES")
    assert wrong_type.status_code == 400 and "the model takes INT64" in wrong_type.json()["error"]

    served = post(gw, [NO_VISITS])  # visits missing: its declared default stands in
    assert served.status_code == 200, served.text
    assert gw.metric("kubeforge_feature_lookup_misses_total", kind="expired") > misses["expired"]
    assert gw.metric("kubeforge_feature_lookup_misses_total", kind="missing") >= misses["missing"] + 5
    count = gw.metric("kubeforge_feature_lookup_duration_seconds_count", namespace=NAMESPACE, featureview=VIEW)
    assert count == lookups + 3, "one read per request that got as far as the store"


def test_features_sent_inline_still_work(gw: Gateway, source: pd.DataFrame, churn_triton) -> None:
    x = features(source, [4, 9], "1")
    via_gateway = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    direct = httpclient.InferenceServerClient(churn_triton.url.removeprefix("http://"))
    np.testing.assert_array_equal(inline(via_gateway, x, "1"), inline(direct, x, "1"))
