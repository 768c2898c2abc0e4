"""`kubeforge features` against a real API server and real Feast: online values as served (missing and expired
ones named), point-in-time training sets, errors that name the option, and a materialization the operator runs
while the command follows it."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from kubernetes import client

from kubeforge.cli import main
from kubeforge.core import kube
from kubeforge.featurestore.config import StoreSettings
from kubeforge.local.processes import free_port, spawn, terminate, wait_http

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "kubeforge.dev", "v1alpha1", "featureviews"


def write_source(path: Path, now: datetime) -> Path:
    """Customer 1 has values 90 and 5 minutes old, customer 2 one 30 minutes old, customer 3 one 3 hours old."""
    rows = [(1, 1.0, 4, 90), (1, 1.5, 5, 5), (2, 2.0, 6, 30), (3, 3.0, 7, 180)]
    pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "spend": [r[1] for r in rows],
            "visits": [r[2] for r in rows],
            "event_timestamp": [now - timedelta(minutes=r[3]) for r in rows],
        }
    ).to_parquet(path)
    return path


def view_spec(source: Path, ttl: str = "1h", **more: Any) -> dict[str, Any]:
    return {
        "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
        "features": [{"name": "spend", "dtype": "Float64"}, {"name": "visits", "dtype": "Int64"}],
        "source": {"path": str(source)},
        "ttl": ttl,
        **more,
    }


def create_view(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FeatureView", "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


class Features:
    """`kubeforge features ...` in this process, with the test's kubeconfig, namespace and feature store."""

    def __init__(self, kubeconfig: Path, namespace: str, store: Path, now: datetime):
        self.namespace, self.now = namespace, now
        self.env = {"KUBECONFIG": str(kubeconfig), "KUBEFORGE_FEAST_DIR": str(store)}

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["features", *args, "-n", self.namespace], env=self.env)


@pytest.fixture
def features(controlplane, crds_installed, namespace: str, tmp_path: Path) -> Features:
    """A FeatureView "spend" (ttl 1h), registered in the store and materialized up to 20 minutes ago while its ttl
    was 2h, as the operator and its Jobs would have: the online store holds customer 1's value from 90 minutes ago
    (expired now) and customer 2's from 30 minutes ago (live), and none of customer 3."""
    from kubeforge.api import FeatureViewSpec
    from kubeforge.featurestore.store import Store

    now = datetime.now(UTC).replace(microsecond=0)
    source = write_source(tmp_path / "spend.parquet", now)
    create_view(kube.api_client(controlplane.kubeconfig), namespace, "spend", view_spec(source))
    settings = StoreSettings(tmp_path / "store")
    store = Store(settings, namespace)
    earlier = FeatureViewSpec.model_validate(view_spec(source, ttl="2h"))
    store.apply("spend", earlier)
    store.materialize("spend", earlier, now - timedelta(minutes=20))
    store.apply("spend", FeatureViewSpec.model_validate(view_spec(source)))
    return Features(controlplane.kubeconfig, namespace, settings.root, now)


def test_get_prints_served_values_and_names_the_missing_and_expired_ones(features: Features) -> None:
    result = features(
        "get", "spend", "--entity", "customer_id=1", "--entity", "customer_id=2", "--entity=customer_id=3"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "customer_id   spend       visits",
        "1             <expired>   <expired>",
        "2             2.0         6",
        "3             <missing>   <missing>",
        "missing (no value in the online store): customer_id=3: spend, visits",
        "expired (older than the ttl, 1h): customer_id=1: spend, visits",
    ]

    result = features("get", "spend", "--entity", "customer_id=2", "--entity", "customer_id=1", "--features", "visits")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:3] == ["customer_id   visits", "2             6", "1             <expired>"]

    result = features("get", "spend", "--entity", "customer_id=1", "--entity", "customer_id=2", "-o", "json")
    assert json.loads(result.stdout) == {
        "featureView": "spend",
        "ttl": "1h",
        "rows": [
            {
                "entity": {"customer_id": 1},
                "values": {"spend": None, "visits": None},
                "missing": [],
                "expired": ["spend", "visits"],
            },
            {"entity": {"customer_id": 2}, "values": {"spend": 2.0, "visits": 6}, "missing": [], "expired": []},
        ],
    }


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--entity", "customer_id"],
            2,
            "Invalid value for --entity: 'customer_id': write KEY=VALUE, one entity per --entity "
            "(e.g. --entity customer_id=...)",
        ),
        (
            ["--entity", "user_id=1"],
            2,
            "Invalid value for --entity: user_id=1: 'user_id' is not a join key of FeatureView spend; "
            "its join keys: customer_id",
        ),
        (
            ["--entity", "customer_id=one"],
            2,
            "Invalid value for --entity: customer_id=one: join key 'customer_id' holds INT64 values, not 'one'",
        ),
        (
            ["--entity", "customer_id=1", "--features", "spend,age"],
            2,
            "Invalid value for --features: age not a feature of FeatureView spend; its features: spend, visits",
        ),
    ],
)
def test_bad_entities_and_features_are_refused_naming_the_option(
    features: Features, args: list[str], code: int, message: str
) -> None:
    result = features("get", "spend", *args)
    assert result.exit_code == code
    assert message in " ".join(result.stderr.split())


def test_unknown_and_unregistered_views_are_named(features: Features, controlplane, tmp_path: Path) -> None:
    result = features("get", "nope", "--entity", "customer_id=1")
    assert result.exit_code == 1
    assert f"Error: FeatureView 'nope' not found in namespace '{features.namespace}'" in result.stderr

    spec = view_spec(tmp_path / "spend.parquet")
    create_view(kube.api_client(controlplane.kubeconfig), features.namespace, "visits", spec)
    result = features("get", "visits", "--entity", "customer_id=1")
    assert result.exit_code == 1
    assert "Error: FeatureView visits is not registered in the feature store (" in result.stderr


def test_training_set_joins_point_in_time_keeps_every_row_and_counts_those_without_a_value(
    features: Features, tmp_path: Path
) -> None:
    entities = pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 3, 9],
            "event_timestamp": [features.now - timedelta(minutes=m) for m in (60, 1, 1, 1, 1)],
            "churned": [0, 1, 0, 1, 0],
        }
    )
    entities.to_parquet(tmp_path / "entities.parquet")
    out = tmp_path / "out" / "train.csv"
    result = features("training-set", "spend", "--entities", str(tmp_path / "entities.parquet"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote 5 rows to {out}: spend, visits from FeatureView spend",
        "2 of 5 rows have no value for some feature: spend (2), visits (2)",
    ]
    written = pd.read_csv(out)
    assert written.columns.tolist() == ["customer_id", "event_timestamp", "churned", "spend", "visits"]
    # An hour ago customer 1 had the value recorded 90 minutes ago, not the later one; customer 3's only value is
    # older than the ttl and customer 9 has none.
    rows = written[["customer_id", "churned", "spend"]].astype(object).where(written.notna(), None)
    assert rows.values.tolist() == [[1, 0, 1.0], [1, 1, 1.5], [2, 0, 2.0], [3, 1, None], [9, 0, None]]

    entities.drop(columns="event_timestamp").to_csv(tmp_path / "no-time.csv", index=False)
    result = features("training-set", "spend", "--entities", str(tmp_path / "no-time.csv"), "--out", str(out))
    assert result.exit_code == 1
    assert (
        f"Error: --entities {tmp_path / 'no-time.csv'}: no column 'event_timestamp': entity rows need the join keys "
        "of FeatureView 'spend' (customer_id) and 'event_timestamp' (when the row's label was observed); "
        "its columns: customer_id, churned"
    ) in result.stderr


@pytest.fixture
def featureview_operator(controlplane, crds_installed, runner_namespace: str, tmp_path: Path) -> Iterator[Path]:
    """The FeatureView operator for this test's namespace alone (the store directory it uses): the runner runs
    its Jobs. It watches one namespace so that it never acts on another test's views."""
    port, log, store = free_port(), tmp_path / "operator.log", tmp_path / "operator-store"
    env = {**os.environ, "KUBECONFIG": str(controlplane.kubeconfig), "KUBEFORGE_FEAST_DIR": str(store)}
    argv = [sys.executable, "-m", "kubeforge.cli", "operator", "run", "--kind", "featureview"]
    argv += ["--namespace", runner_namespace, "--liveness", f"http://127.0.0.1:{port}/healthz"]
    proc = spawn(argv, log, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=120)
        yield store
    finally:
        terminate(proc.pid)


def test_materialize_asks_the_operator_and_follows_its_run_to_the_end(
    featureview_operator: Path, controlplane, runner_namespace: str, tmp_path: Path
) -> None:
    api = kube.api_client(controlplane.kubeconfig)
    source = write_source(tmp_path / "spend.parquet", datetime.now(UTC))
    # Suspended: no scheduled run, so the one asked for is the first.
    create_view(api, runner_namespace, "spend", view_spec(source, "2h", materialization={"suspend": True}))
    run = Features(controlplane.kubeconfig, runner_namespace, featureview_operator, datetime.now(UTC))

    result = run("materialize", "spend", "--timeout", "400")
    assert result.exit_code == 0, result.output
    done = r"materialized spend with Job spend-mat-1 in \d+s: 2 rows written, values up to \S+Z; 2 entities online"
    assert re.fullmatch(done, result.stdout.strip()), result.stdout
    assert "Job spend-mat-1 materializes spend" in result.stderr

    listed = [line.split() for line in run("list").stdout.splitlines()]
    assert listed[0] == ["NAME", "ENTITIES", "FEATURES", "READY", "FRESHNESS", "LAST", "MATERIALIZED", "ONLINE", "ROWS"]
    name, entities, names, ready, freshness, _, rows = listed[1]
    assert (name, entities, names, ready, rows) == ("spend", "customer", "spend,visits", "True", "2")
    assert re.fullmatch(r"[5-9]m", freshness)  # the newest value is 5 minutes old, give or take the run

    source.unlink()  # the next run finds no source: its Job fails, and so does the command, with the reason
    result = run("materialize", "spend", "--timeout", "400")
    assert result.exit_code == 1
    assert "Error: Job spend-mat-2 failed after " in result.stderr
    assert f"SourceNotFound: spec.source.path: {source} does not exist" in result.stderr
