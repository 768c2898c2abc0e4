"""The feature store against real Feast: the embedded store (file registry, sqlite online store) and the
production option (SQL registry, Redis online store from Debian's redis-server) pass the same tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kubeforge.api import FeatureViewSpec
from kubeforge.featurestore.config import StoreSettings

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _clock() -> None:
    """Data times are relative to each test's start, not to collection: a long session would age them past ttls."""
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(params=["embedded", "redis-sql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    if request.param == "embedded":
        return StoreSettings(tmp_path / "store")
    return StoreSettings(
        tmp_path / "store",
        registry=f"sqlite:///{tmp_path / 'registry.sqlite'}",
        online=request.getfixturevalue("redis_url"),
    )


def spend_view(tmp_path: Path, name: str = "spend", ttl: str = "1h") -> FeatureViewSpec:
    """Customer 1 has a value 70 min and 5 min ago, customer 2 one 55 min ago, customer 3 one 3 h ago."""
    path = tmp_path / f"{name}.parquet"
    rows = [(1, 1.0, 70), (1, 1.5, 5), (2, 2.0, 55), (3, 3.0, 180)]
    pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "spend": [r[1] for r in rows],
            "event_timestamp": [NOW - timedelta(minutes=r[2]) for r in rows],
        }
    ).to_parquet(path)
    return FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [{"name": "spend", "dtype": "Float64"}],
            "source": {"path": str(path)},
            "ttl": ttl,
        }
    )


def served(store: Any, name: str = "spend", ttl: float = 3600) -> dict[Any, Any]:
    values = store.online(name, ["spend"], {"customer_id": [1, 2, 3]}, ttl)
    return {i + 1: row[0] for i, row in enumerate(values.rows)} | {"expired": [r + 1 for r, _ in values.expired]}


def test_materialized_values_are_served_and_expired_ones_are_not(settings: StoreSettings, tmp_path: Path) -> None:
    from kubeforge.featurestore.store import Store

    store = Store(settings, "shop-a")
    store.apply("spend", spend_view(tmp_path, ttl="2h"))
    assert Store(settings, "shop-a").registered("spend")  # a second process sees it
    assert not Store(settings, "shop-b").registered("spend")  # namespaces are projects of their own

    first = store.materialize("spend", spend_view(tmp_path, ttl="2h"), end=NOW - timedelta(minutes=50))
    assert (first.start, first.rows, first.online_rows) == (None, 2, 2)
    assert first.newest == NOW - timedelta(minutes=55)
    assert served(store, ttl=7200) == {1: 1.0, 2: 2.0, 3: None, "expired": []}

    # The ttl is shortened to 1h: customer 1's value, 70 min old, is expired and not served.
    spec = spend_view(tmp_path, ttl="1h")
    store.apply("spend", spec)
    assert served(store) == {1: None, 2: 2.0, 3: None, "expired": [1]}

    second = Store(settings, "shop-a").materialize("spend", spec)  # the next Job is another process
    assert second.start == NOW - timedelta(minutes=50)
    assert (second.rows, second.online_rows, second.newest) == (1, 2, NOW - timedelta(minutes=5))
    assert served(store) == {1: 1.5, 2: 2.0, 3: None, "expired": []}


def test_removing_a_view_leaves_the_others(settings: StoreSettings, tmp_path: Path) -> None:
    from kubeforge.featurestore.store import Store

    store = Store(settings, "shop")
    for name in ("spend", "spend-copy"):
        spec = spend_view(tmp_path, name)
        store.apply(name, spec)
        store.materialize(name, spec)
    assert store.remove("spend")
    assert not store.remove("spend")
    fresh = Store(settings, "shop")
    assert not fresh.registered("spend") and fresh.registered("spend-copy")
    assert served(fresh, "spend-copy")[1] == 1.5


def test_training_set_is_joined_point_in_time(tmp_path: Path) -> None:
    from kubeforge.featurestore.store import Store

    store = Store(StoreSettings(tmp_path / "store"), "shop")
    store.apply("spend", spend_view(tmp_path, ttl="2h"))
    entities = pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 3],
            "event_timestamp": [NOW - timedelta(minutes=m) for m in (60, 1, 1, 1)],
        }
    )
    joined = store.training_set("spend", ["spend"], entities).sort_values(["customer_id", "event_timestamp"])
    # Customer 1 an hour ago gets the value from 70 min ago, not the later one; customer 3's value, 3 h old, is
    # past the ttl and never joined (Feast's file offline store leaves such a row out).
    assert joined[["customer_id", "spend"]].values.tolist() == [[1, 1.0], [1, 1.5], [2, 2.0]]
