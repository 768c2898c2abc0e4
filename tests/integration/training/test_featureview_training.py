"""Training on a FeatureView against real Feast and a real MLflow server: the point-in-time join keeps
later values out, rows without a value are refused, and the model version names the view, its generation
and the feature order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from kubeforge.api import FeatureView
from kubeforge.api.trainingjob import DatasetSpec
from kubeforge.core import modelcontract as contract
from kubeforge.featurestore import trainingsets
from kubeforge.featurestore.config import StoreSettings
from kubeforge.training import datasets
from kubeforge.training.errors import TrainerError
from kubeforge.training.main import main

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
CUSTOMERS = 60
LEAK = 1000.0
"""Added to every value recorded after the entity rows: a naive (latest value) join would train on these."""


@dataclass(frozen=True)
class Registered:
    view: FeatureView
    store: StoreSettings
    entities: Path
    """One row per customer an hour ago, labelled churned when its spend then was 30 or more."""


def _view(source: Path, generation: int) -> FeatureView:
    return FeatureView.model_validate(
        {
            "apiVersion": "kubeforge.dev/v1alpha1",
            "kind": "FeatureView",
            "metadata": {"name": "spend", "namespace": "shop", "generation": generation, "uid": "fv-1"},
            "spec": {
                "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
                "features": [{"name": "spend", "dtype": "Float64"}, {"name": "visits", "dtype": "Int64"}],
                "source": {"path": str(source)},
                "ttl": "24h",
            },
        }
    )


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """Each customer's values 3 h ago (spend = its id) and 30 min ago (spend = id + LEAK), registered as the
    FeatureView operator registers a view."""
    from kubeforge.featurestore.store import Store

    tmp = tmp_path_factory.mktemp("featureview-training")
    ids = list(range(CUSTOMERS))
    source = pd.DataFrame(
        {
            "customer_id": ids * 2,
            "spend": [float(i) for i in ids] + [i + LEAK for i in ids],
            "visits": [i % 7 for i in ids] + [100 + i % 7 for i in ids],
            "event_timestamp": [NOW - timedelta(hours=3)] * CUSTOMERS + [NOW - timedelta(minutes=30)] * CUSTOMERS,
        }
    )
    source.to_parquet(tmp / "spend.parquet", index=False)
    view, store = _view(tmp / "spend.parquet", generation=4), StoreSettings(tmp / "store")
    Store(store, "shop").apply("spend", view.spec)
    entities = pd.DataFrame(
        {
            "customer_id": ids,
            "event_timestamp": [(NOW - timedelta(hours=1)).isoformat()] * CUSTOMERS,
            "churned": [int(i >= 30) for i in ids],
        }
    )
    entities.to_csv(tmp / "entities.csv", index=False)
    return Registered(view, store, tmp / "entities.csv")


def _dataset(entities: Path, **fields: Any) -> DatasetSpec:
    source = {"name": "spend", "entitiesUri": str(entities)}
    return DatasetSpec.model_validate({"featureView": source, "target": "churned", **fields})


def test_each_row_gets_the_value_it_had_at_its_timestamp_never_a_later_one(registered: Registered) -> None:
    rows = pd.DataFrame(
        {
            "customer_id": [7, 7, 7],
            "event_timestamp": [NOW - timedelta(hours=1), NOW - timedelta(minutes=10), NOW - timedelta(hours=1)],
            "churned": [0, 1, 1],
        }
    )
    joined = trainingsets.join(registered.store, registered.view, ["spend"], rows)
    # Every row, in order, the duplicate included: 7's value from 3 h ago for the rows an hour ago, the later one
    # only for the row after it was recorded.
    assert joined["spend"].tolist() == [7.0, 7 + LEAK, 7.0]
    assert joined["churned"].tolist() == [0, 1, 1]

    loaded = datasets.load(
        _dataset(registered.entities, validationSplit=0), "classification", registered.view, registered.store
    )
    assert loaded.features == ["spend", "visits"]
    assert sorted(loaded.x_train[:, 0].tolist()) == [float(i) for i in range(CUSTOMERS)]
    assert loaded.x_train[:, 1].max() < 100


def test_rows_without_a_value_are_refused_with_the_rows_and_the_reason(registered: Registered, tmp_path: Path) -> None:
    rows = pd.read_csv(registered.entities)
    early = pd.DataFrame(
        {"customer_id": [3, 99], "event_timestamp": [(NOW - timedelta(hours=5)).isoformat()] * 2, "churned": [0, 1]}
    )
    path = tmp_path / "entities.parquet"
    pd.concat([rows, early], ignore_index=True).to_parquet(path)
    with pytest.raises(TrainerError) as raised:
        datasets.load(_dataset(path), "classification", registered.view, registered.store)
    message = str(raised.value)
    assert message.startswith(
        "dataset has 4 missing values (NaN or empty) in 2 rows; columns: spend (2), visits (2); "
        f"rows (0-based, header excluded): {CUSTOMERS}, {CUSTOMERS + 1}; a feature is missing where FeatureView "
        "'spend' has no value for the row's entity at or before its event_timestamp within the view's ttl (24h)"
    )


def test_a_view_missing_from_the_registry_is_named(registered: Registered, tmp_path: Path) -> None:
    elsewhere = StoreSettings(tmp_path / "empty-store")
    with pytest.raises(TrainerError, match=r"^spec\.dataset\.featureView\.name: FeatureView 'spend' is not in the"):
        datasets.load(_dataset(registered.entities), "classification", registered.view, elsewhere)


def test_a_trainingjob_on_a_featureview_registers_a_version_that_names_the_view_generation_and_feature_order(
    registered: Registered, mlflow: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    spec = {
        "model": {"name": "churn", "architecture": "logistic", "hyperparameters": {"epochs": 40, "learningRate": 0.1}},
        "dataset": {
            "featureView": {"name": "spend", "entitiesUri": str(registered.entities)},
            "target": "churned",
            "features": ["visits", "spend"],
        },
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "featureview.yaml").write_text(yaml.safe_dump(registered.view.model_dump(mode="json", by_alias=True)))
    monkeypatch.setenv("KUBEFORGE_FEAST_DIR", str(registered.store.root))
    argv = ["--spec", str(tmp_path / "spec.json"), "--featureview", str(tmp_path / "featureview.yaml")]
    code = main([*argv, "--tracking-uri", mlflow.url, "--namespace", "shop", "--name", "churn-v1", "--uid", "u-7"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])["kubeforge.result"]
    assert result["metrics"]["accuracy"] > 0.8  # spend an hour ago tells churn apart; the later values would not

    tags = MlflowClient(mlflow.url).get_model_version("churn", result["modelVersion"]).tags
    assert (tags[contract.TAG_FEATUREVIEW], tags[contract.TAG_FEATUREVIEW_GENERATION]) == ("spend", "4")
    assert json.loads(tags[contract.TAG_FEATURES]) == ["visits", "spend"]
    assert tags[contract.TAG_DATASET_URI] == str(registered.entities)
    assert tags[contract.TAG_DATASET_ROWS] == str(CUSTOMERS)
    again = datasets.load(
        DatasetSpec.model_validate(spec["dataset"]), "classification", registered.view, registered.store
    )
    assert tags[contract.TAG_DATASET_SHA256] == again.sha256
