"""kubeforge's FeatureViews in Feast: register, remove, materialize, read online, join point-in-time.

A FeatureView maps one to one onto Feast's objects: each entity an ``Entity``, the source
a ``FileSource``, the view a ``FeatureView`` with its TTL, all in the Feast project named
after the Kubernetes namespace. ``import feast`` takes seconds, so it happens here, on
first use, and never in a module that merely names these functions.

Online reads enforce the TTL themselves: Feast's online store returns a value however
old it is, so a value older than the view's ``ttl`` is reported as expired, not served.

Several processes write one registry (the operator registers, materialization Jobs record
their windows) and Feast writes a file registry from its in-memory copy, so every change
starts from a fresh read of the registry: a stale copy would undo another process's change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ..api.featureview import FeatureViewSpec
from ..api.meta import duration_seconds
from . import sources
from .config import StoreSettings

_VALUE_TYPES = {"INT64": "INT64", "INT32": "INT32", "STRING": "STRING", "BYTES": "BYTES"}


@dataclass(frozen=True)
class Materialized:
    """What one materialization did."""

    start: datetime | None
    """Start of the window (None: the first run, which starts the view's TTL before now)."""
    end: datetime
    """End of the window: values up to this time are online."""
    rows: int
    """Entities whose values the window updated."""
    online_rows: int
    """Entities with a value online that is not older than the view's TTL at end."""
    newest: datetime | None
    """Event time of the newest value in the source up to end."""


@dataclass(frozen=True)
class OnlineValues:
    """Feature values for a list of entity keys, row by row; None where missing or expired."""

    rows: list[list[Any]]
    missing: list[tuple[int, str]]
    """(row, feature) with no value in the online store."""
    expired: list[tuple[int, str]]
    """(row, feature) whose value is older than the view's TTL."""


class Store:
    """Feast's FeatureStore for one namespace (one Feast project)."""

    def __init__(self, settings: StoreSettings, namespace: str):
        from feast import FeatureStore, RepoConfig

        settings.root.mkdir(parents=True, exist_ok=True)
        self.settings, self.namespace = settings, namespace
        self.feast = FeatureStore(config=RepoConfig(**settings.repo_config(namespace)))

    # --- registry ---------------------------------------------------------------------
    def definitions(self, name: str, spec: FeatureViewSpec) -> list[Any]:
        """The Feast Entity objects and FeatureView of spec; checks the source first (raises SourceError)."""
        from feast import Entity, FeatureView, Field, FileSource, ValueType, types

        parquet = sources.offline_path(spec, self.settings.sources / self.namespace, name)
        sources.check(spec, parquet)
        entities = [
            Entity(
                name=e.name,
                join_keys=list(e.join_keys),
                value_type=ValueType[_VALUE_TYPES[e.value_type]],
                description=e.description,
            )
            for e in spec.entities
        ]
        source = FileSource(
            name=f"{name}-source",
            path=parquet,
            timestamp_field=spec.source.timestamp_field,
            created_timestamp_column=spec.source.created_timestamp_field or "",
        )
        view = FeatureView(
            name=name,
            entities=entities,
            schema=[
                Field(name=f.name, dtype=getattr(types, f.dtype), description=f.description) for f in spec.features
            ],
            source=source,
            ttl=timedelta(seconds=duration_seconds(spec.ttl)),
            online=spec.online,
            tags={"kubeforge.dev/namespace": self.namespace},
        )
        return [*entities, view]

    def apply(self, name: str, spec: FeatureViewSpec) -> None:
        """Register (or update) the view and its entities in the registry."""
        definitions = self.definitions(name, spec)
        self.feast.refresh_registry()
        self.feast.apply(definitions)

    def registered(self, name: str) -> bool:
        return any(v.name == name for v in self.feast.list_feature_views())

    def remove(self, name: str) -> bool:
        """Remove the view and its source from the registry and its table from the online store (entities stay:
        other views may share them); False if it was not registered."""
        self.feast.refresh_registry()
        if not self.registered(name):
            return False
        view = self.feast.get_feature_view(name)
        assert view.batch_source is not None  # the FileSource every view kubeforge registers reads (definitions)
        self.feast.apply([], objects_to_delete=[view, view.batch_source], partial=False)
        return True

    # --- materialization --------------------------------------------------------------
    def materialize(self, name: str, spec: FeatureViewSpec, end: datetime | None = None) -> Materialized:
        """Copy values from the last materialized time (or TTL back) up to end into the online store."""
        end = (end or datetime.now(UTC)).replace(microsecond=0)
        self.feast.refresh_registry()
        view = self.feast.get_feature_view(name)
        start = view.most_recent_end_time
        parquet = sources.offline_path(spec, self.settings.sources / self.namespace, name)
        sources.check(spec, parquet)
        ttl = timedelta(seconds=duration_seconds(spec.ttl))
        first_start = datetime.now(UTC) - ttl  # where Feast starts a view's first window
        self.feast.materialize_incremental(end_date=end, feature_views=[name])
        rows, online_rows, newest = _window_stats(parquet, spec, start or first_start, end - ttl, end)
        return Materialized(start, end, rows, online_rows, newest)

    # --- reads ------------------------------------------------------------------------
    def online(
        self, name: str, features: list[str], entity_rows: dict[str, list[Any]], ttl_seconds: float
    ) -> OnlineValues:
        """Values of features for each entity row, in the order given; expired values are not returned."""
        response = self.feast.get_online_features(
            features=[f"{name}:{f}" for f in features], entity_rows=entity_rows
        ).to_dict(include_event_timestamps=True)
        oldest = time.time() - ttl_seconds
        count = len(next(iter(entity_rows.values())))
        rows: list[list[Any]] = [[None] * len(features) for _ in range(count)]
        missing, expired = [], []
        for j, feature in enumerate(features):
            values, stamps = response[feature], response[f"{feature}__ts"]
            for i in range(count):
                if values[i] is None or not stamps[i]:
                    missing.append((i, feature))
                elif stamps[i] < oldest:
                    expired.append((i, feature))
                else:
                    rows[i][j] = values[i]
        return OnlineValues(rows, missing, expired)

    def training_set(self, name: str, features: list[str], entities: pd.DataFrame) -> pd.DataFrame:
        """entities joined point-in-time with features: each row gets the latest value at or before its timestamp.

        entities needs the view's join keys and ``event_timestamp``; a value from after a
        row's timestamp never reaches it, nor one older than the view's TTL.
        """
        job = self.feast.get_historical_features(entity_df=entities, features=[f"{name}:{f}" for f in features])
        return job.to_df()


def _window_stats(
    parquet: str, spec: FeatureViewSpec, start: datetime, live_from: datetime, end: datetime
) -> tuple[int, int, datetime | None]:
    """(entities with a value in [start, end], entities with a value in [live_from, end], newest event time up
    to end) of the source."""
    keys = [k for e in spec.entities for k in e.join_keys]
    frame = pd.read_parquet(parquet, columns=[*keys, spec.source.timestamp_field])
    stamps = pd.to_datetime(frame[spec.source.timestamp_field], utc=True)
    upto = stamps <= pd.Timestamp(end)

    def entities(since: datetime) -> int:
        return len(frame[upto & (stamps >= pd.Timestamp(since))].drop_duplicates(keys))

    newest = stamps[upto].max() if upto.any() else None
    return entities(start), entities(live_from), (newest.to_pydatetime() if newest is not None else None)
