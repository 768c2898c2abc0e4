"""ModelDeployments with spec.features: what the gateway is told about the FeatureView, and what status says
when the view or a version's features do not fit."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from kubeforge.api import FeatureViewSpec
from kubeforge.featurestore.config import StoreSettings
from kubeforge.operators.deployment.rollout import FeatureSource, Plan, Resolved, plan
from tests.unit.operators.test_rollout_plan import CANARY, EVERYTHING_READY, SETTINGS, T0, cond, md, routes, run

FEATURES = {"featureView": "customer-stats", "entityKey": "customer_id"}
STORE = StoreSettings(Path("/var/lib/kubeforge/features"), online="redis://redis.ml:6379/0")


def view(**spec: Any) -> FeatureViewSpec:
    return FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [
                {"name": "spend", "dtype": "Float64"},
                {"name": "age", "dtype": "Int64", "default": 40},
                {"name": "visits", "dtype": "Float32"},
                {"name": "segment", "dtype": "String"},
            ],
            "source": {"path": "s3://bucket/customers.parquet"},
            "ttl": "24h",
            **spec,
        }
    )


def source(**orders: list[str] | None) -> FeatureSource:
    return FeatureSource(view(), orders={("clf", v): order for v, order in orders.items()})


def gateway_container(p: Plan) -> dict[str, Any]:
    dep = next(o for o in p.apply if o["kind"] == "Deployment" and o["metadata"]["name"] == "clf-gateway")
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_the_gateway_gets_the_view_and_each_version_its_own_feature_order() -> None:
    b = md(features=FEATURES, canary=CANARY)
    resolved = Resolved(stable="1", canary="2", features=source(**{"1": ["spend", "age"], "2": ["age", "visits"]}))
    p = run(b, resolved)
    table = routes(p)
    assert table["features"] == {
        "namespace": "ml",
        "featureView": "customer-stats",
        "entityKey": "customer_id",
        "joinKey": "customer_id",
        "valueType": "INT64",
        "ttlSeconds": 86400.0,
        "defaults": {"age": 40.0},
    }
    assert {v["version"]: v["featureOrder"] for v in table["versions"]} == {
        "1": ["spend", "age"],
        "2": ["age", "visits"],
    }
    assert cond(b, "Ready")["status"] == "True" and cond(b, "Degraded")["status"] == "False"


def test_the_gateway_is_given_the_feature_store_only_with_features() -> None:
    settings = replace(SETTINGS, feature_store=STORE, feature_store_pvc="features")
    resolved = Resolved(stable="1", features=source(**{"1": ["spend"]}))
    container = gateway_container(plan(md(features=FEATURES), resolved, EVERYTHING_READY, None, settings, T0))
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBEFORGE_FEAST_DIR"] == "/var/lib/kubeforge/features"
    assert env["KUBEFORGE_FEAST_ONLINE_STORE"] == "redis://redis.ml:6379/0"
    assert {"name": "feature-store", "mountPath": "/var/lib/kubeforge/features"} in container["volumeMounts"]

    container = gateway_container(plan(md(), Resolved(stable="1"), EVERYTHING_READY, None, settings, T0))
    assert not [e for e in container["env"] if e["name"].startswith("KUBEFORGE_FEAST")]
    assert all(m["name"] != "feature-store" for m in container["volumeMounts"])


def test_a_missing_view_keeps_the_deployment_from_ready_naming_the_field() -> None:
    b = md(features=FEATURES)
    message = "spec.features.featureView: FeatureView 'customer-stats' does not exist in namespace 'ml'"
    p = run(b, Resolved(stable="1", features=FeatureSource(error=message)))
    assert (cond(b, "Ready")["status"], cond(b, "Ready")["reason"]) == ("False", "FeatureViewNotFound")
    assert cond(b, "Ready")["message"] == message and cond(b, "Degraded")["reason"] == "FeatureViewNotFound"
    assert ("Warning", "FeatureViewNotFound", message) in p.events
    assert "features" not in routes(p), "features inline are still answered"
    run(b, Resolved(stable="1", features=source(**{"1": ["spend"]})), now=T0 + timedelta(seconds=5))
    assert cond(b, "Ready")["status"] == "True" and cond(b, "Degraded")["status"] == "False"


def test_a_view_with_more_than_one_join_key_is_refused_naming_them() -> None:
    b = md(features=FEATURES)
    entities = [{"name": "customer", "joinKeys": ["customer_id"]}, {"name": "store", "joinKeys": ["store_id"]}]
    two_keys = FeatureSource(view(entities=entities), orders={("clf", "1"): ["spend"]})
    run(b, Resolved(stable="1", features=two_keys))
    ready = cond(b, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.features.featureView" in ready["message"]
    assert "customer.customer_id, store.store_id" in ready["message"]


def test_versions_whose_features_do_not_fit_the_view_are_named_with_the_features() -> None:
    b = md(features=FEATURES, canary=CANARY)
    fits = ["spend", "age"]
    p = run(b, Resolved(stable="1", canary="2", features=source(**{"1": fits, "2": ["spend", "tenure", "segment"]})))
    degraded = cond(b, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "FeaturesNotInView")
    unfit = "version 2 takes features the view does not have: tenure and strings, not numbers: segment"
    assert unfit in degraded["message"]
    assert cond(b, "Ready")["status"] == "True", "the stable version is fed"
    canary = next(v for v in routes(p)["versions"] if v["role"] == "canary")
    assert "featureOrder" not in canary, "the gateway routes entity requests around it"

    run(b, Resolved(stable="1", canary="2", features=source(**{"1": None, "2": fits})), now=T0 + timedelta(seconds=1))
    ready = cond(b, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "FeaturesNotInView")
    assert "version 1 has no kubeforge.features tag" in ready["message"]
