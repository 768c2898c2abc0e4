"""Point-in-time training sets: a FeatureView's features joined onto entity rows, row for row.

An entity row is a set of join keys, an ``event_timestamp`` (when the row's label was
observed) and whatever else the caller keeps (the label). Each row gets, per feature, the
newest value at or before its timestamp and not older than the view's ttl, so a value
recorded after the label never leaks into training.

Feast's join alone is not enough for training: it collapses entity rows that share keys
and timestamp and leaves out rows whose only values are past the ttl, so the rows that
come back are neither all of them nor in order. Here the distinct (keys, timestamp)
pairs are joined and the values mapped back onto every entity row, in the caller's order;
a row without a value keeps NaN, for the caller to count or refuse.

The trainer (``kubeforge train``) and ``kubeforge features training-set`` both use this.
"""

from __future__ import annotations

import pandas as pd

from ..api.featureview import FeatureView, FeatureViewSpec
from .config import StoreSettings
from .store import Store

EVENT_TIMESTAMP = "event_timestamp"
"""The entity rows' timestamp column, as Feast names it."""
_ROW = "__kubeforge_row"


class EntitiesError(ValueError):
    """The entity rows cannot be joined; the message says what to fix, the caller names the file."""


class NotRegistered(LookupError):
    """The FeatureView is not in the feature store's registry."""


def join_keys(spec: FeatureViewSpec) -> list[str]:
    """The join keys of all the view's entities, in order."""
    return [key for entity in spec.entities for key in entity.join_keys]


def check_entities(view: FeatureView, entities: pd.DataFrame) -> pd.Series:
    """The entity rows' timestamps as UTC; EntitiesError when a join key or the timestamp is missing or unusable."""
    keys = join_keys(view.spec)
    absent = [c for c in [*keys, EVENT_TIMESTAMP] if c not in entities.columns]
    if absent:
        raise EntitiesError(
            f"no column {', '.join(map(repr, absent))}: entity rows need the join keys of FeatureView "
            f"{view.metadata.name!r} ({', '.join(keys)}) and {EVENT_TIMESTAMP!r} (when the row's label was observed); "
            f"its columns: {', '.join(map(str, entities.columns))}"
        )
    empty = entities[keys].isna().any(axis=1)
    if empty.any():
        first = int(empty.to_numpy().argmax())
        raise EntitiesError(
            f"{int(empty.sum())} rows have no value in a join key column (the first: row {first}): "
            f"every row needs all of {', '.join(keys)}"
        )
    try:
        stamps = pd.to_datetime(entities[EVENT_TIMESTAMP], utc=True)
    except (ValueError, TypeError) as err:
        raise EntitiesError(f"column {EVENT_TIMESTAMP!r} does not hold timestamps: {err}") from None
    if stamps.isna().any():
        raise EntitiesError(
            f"column {EVENT_TIMESTAMP!r} is empty in {int(stamps.isna().sum())} rows: every row needs a timestamp"
        )
    return stamps


def join(settings: StoreSettings, view: FeatureView, features: list[str], entities: pd.DataFrame) -> pd.DataFrame:
    """entities, with event_timestamp as UTC timestamps, and the view's features appended in the order given.

    Raises EntitiesError for entity rows that cannot be joined (also when a column has a
    feature's name, which the join would overwrite) and NotRegistered when the view is not
    in the store's registry.
    """
    name = view.metadata.name or ""
    stamps = check_entities(view, entities)
    clash = [f for f in features if f in entities.columns]
    if clash:
        raise EntitiesError(
            f"column {', '.join(map(repr, clash))} has the name of a feature of FeatureView {name!r}: "
            "rename or drop it, the join adds the feature"
        )
    keys = join_keys(view.spec)
    frame = entities.assign(**{EVENT_TIMESTAMP: stamps})
    pairs = frame.groupby([*keys, EVENT_TIMESTAMP], sort=False).ngroup()
    first = ~pairs.duplicated()
    distinct = frame.loc[first, [*keys, EVENT_TIMESTAMP]].assign(**{_ROW: pairs[first]})
    store = Store(settings, view.metadata.namespace or "")
    if not store.registered(name):
        raise NotRegistered(
            f"FeatureView {name!r} is not in the feature store's registry ({settings.registry_location}) for "
            f"namespace {view.metadata.namespace!r}: its operator registers it; `kubectl describe featureview {name}` "
            "says why it has not"
        )
    joined = store.training_set(name, features, distinct).set_index(_ROW)[features]
    values = joined.reindex(pairs.to_numpy()).set_axis(frame.index)
    return pd.concat([frame, values], axis=1)
