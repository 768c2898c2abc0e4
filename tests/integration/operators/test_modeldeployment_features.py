"""What the ModelDeployment operator reads for spec.features, from a real API server and a real MLflow, and the
route table it writes from it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient

from kubeforge.api import ModelDeployment, parse
from kubeforge.core import kube
from kubeforge.core import modelcontract as mc
from kubeforge.core.mlflow_rest import MLflowRegistry
from kubeforge.operators.deployment import handlers
from kubeforge.operators.deployment.rollout import FEATURE_VIEW_NOT_FOUND, Observed, plan
from kubeforge.operators.deployment.versions import Versions
from kubeforge.operators.runtime import Context
from kubeforge.operators.settings import Settings
from kubeforge.serving.routes import RouteTable
from tests.integration.operators.conftest import Operator, wait_for
from tests.integration.serving.conftest import Threshold, register, signature

pytestmark = pytest.mark.integration
NAME = "fed"
GROUP, VERSION = "kubeforge.dev", "v1alpha1"
ORDERS = {"1": ["spend", "age", "visits", "tenure"], "2": ["tenure", "visits", "age", "spend"]}


def test_the_view_and_each_versions_feature_order_reach_the_route_table(
    api: client.ApiClient, crds_installed, namespace: str, mlflow
) -> None:
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    for version, order in ORDERS.items():
        assert register(mlflow.url, NAME, Threshold(0.0, 1.0), signature()) == version
        registry.set_model_version_tag(NAME, version, mc.TAG_FEATURES, json.dumps(order))
    ctx = Context(
        api,
        Settings(mlflow.url, "kf", "triton", "kf", "http://prom"),
        kube.capabilities(api),
        MLflowRegistry(mlflow.url),
    )
    spec = {
        "model": {"name": NAME, "version": 1},
        "canary": {"model": {"name": NAME, "version": 2}, "steps": [{"weight": 50}]},
        "features": {"featureView": "customer-stats", "entityKey": "customer_id"},
    }
    md = parse({"kind": "ModelDeployment", "metadata": {"name": NAME}, "spec": spec})
    assert isinstance(md, ModelDeployment)

    missing = handlers.resolve(ctx, Versions(ctx.registry), md, namespace, {}).features
    assert missing is not None and missing.view is None
    assert (
        missing.error == f"spec.features.featureView: FeatureView 'customer-stats' does not exist in namespace "
        f"{namespace!r}"
    )

    view = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "customer-stats"},
        "spec": {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"], "valueType": "STRING"}],
            "features": [
                {"name": f, "dtype": "Float64", **({"default": 0} if f == "visits" else {})} for f in ORDERS["1"]
            ],
            "source": {"path": "/data/customers.parquet"},
            "ttl": "2h",
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kubeforge.dev", "v1alpha1", namespace, "featureviews", view
    )
    resolved = handlers.resolve(ctx, Versions(ctx.registry), md, namespace, {})
    assert resolved.stable == "1" and resolved.canary == "2" and resolved.features is not None
    assert resolved.features.orders == {(NAME, "1"): ORDERS["1"], (NAME, "2"): ORDERS["2"]}

    body = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace, "uid": "u1", "generation": 1},
        "spec": spec,
    }
    urls = {v: f"http://127.0.0.1:900{v}" for v in ORDERS}
    observed = Observed(frozenset(ORDERS), urls, True, "http://127.0.0.1:8080", True)
    p = plan(body, resolved, observed, None, ctx.settings, datetime.now(UTC))
    configmap = next(o for o in p.apply if o["kind"] == "ConfigMap")
    route = RouteTable.parse(configmap["data"]["routes.yaml"]).models[NAME]
    assert route.features is not None
    assert (route.features.namespace, route.features.join_key, route.features.value_type) == (
        namespace,
        "customer_id",
        "STRING",
    )
    assert route.features.ttl_seconds == 7200 and route.features.defaults == {"visits": 0}
    assert {v.version: v.feature_order for v in route.versions} == ORDERS


def test_a_deployment_takes_up_its_feature_view_when_the_view_is_created_and_lets_go_when_it_is_deleted(
    operator: Operator, api: client.ApiClient, namespace: str, mlflow
) -> None:
    """Nothing else moves meanwhile (no pods run in this namespace, and a deployment waiting for its Triton is not
    on the operator's clock): the FeatureView's own events are what bring each change."""
    name, view_name = "late-fed", "late-stats"
    registry = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
    version = register(mlflow.url, name, Threshold(0.0, 1.0), signature())
    registry.set_model_version_tag(name, version, mc.TAG_FEATURES, json.dumps(ORDERS["1"]))
    spec = {"model": {"name": name, "version": int(version)}, "features": {"featureView": view_name, "entityKey": "id"}}
    custom = client.CustomObjectsApi(api)
    md = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", md)

    def degraded() -> dict[str, Any]:
        md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", name)
        return next((c for c in (md.get("status") or {}).get("conditions", []) if c["type"] == "Degraded"), {})

    missing = wait_for(lambda: degraded().get("reason") == FEATURE_VIEW_NOT_FOUND and degraded(), what="no view")
    assert view_name in missing["message"]

    view = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FeatureView",
        "metadata": {"name": view_name},
        "spec": {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"], "valueType": "STRING"}],
            "features": [{"name": f, "dtype": "Float64"} for f in ORDERS["1"]],
            "source": {"path": "/data/customers.parquet"},
            "ttl": "2h",
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "featureviews", view)
    wait_for(lambda: degraded().get("status") == "False", what="Degraded=False once the view exists")

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "featureviews", view_name)
    wait_for(lambda: degraded().get("reason") == FEATURE_VIEW_NOT_FOUND, what="Degraded: FeatureViewNotFound again")
