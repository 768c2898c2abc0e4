"""FeatureView: a set of features of one or more entities, kept fresh in the online store.

It maps onto Feast's objects one to one (Entity, FileSource, FeatureView with a TTL), so
people who know Feast recognise every field; kubeforge adds scheduled materialization
and freshness reporting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .meta import (
    ColumnName,
    Conditions,
    CRDInfo,
    Duration,
    KubeModel,
    PrinterColumn,
    Resource,
    UniqueNames,
    age_column,
    ready_column,
    reason_column,
)

ValueType = Literal["INT64", "INT32", "STRING", "BYTES"]
FeatureDType = Literal["Float32", "Float64", "Int32", "Int64", "String", "Bool", "UnixTimestamp"]


class Entity(KubeModel):
    """Something features describe (a customer, a driver), identified by join keys."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
    """Entity name."""
    join_keys: Annotated[UniqueNames, Field(min_length=1, max_length=8)]
    """Columns that identify the entity in the source and in requests."""
    value_type: ValueType = "INT64"
    """Type of the join keys: INT64, INT32, STRING or BYTES."""
    description: Annotated[str, Field(max_length=1024)] = ""
    """What the entity is."""


class Feature(KubeModel):
    """One feature column."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
    """Column name in the source."""
    dtype: FeatureDType
    """Feast type: Float32, Float64, Int32, Int64, String, Bool or UnixTimestamp."""
    description: Annotated[str, Field(max_length=1024)] = ""
    """What the feature means."""


class Source(KubeModel):
    """Offline data the features are read from."""

    path: Annotated[str, Field(min_length=1, max_length=2048)]
    """Parquet or CSV file or directory: a local path or an fsspec URI."""
    format: Literal["parquet", "csv"] = "parquet"
    """File format."""
    timestamp_field: ColumnName = "event_timestamp"
    """Column with the time each row's values became true (used for point-in-time joins)."""
    created_timestamp_field: ColumnName | None = None
    """Column with when the row was written; breaks ties between rows with the same event time."""


class Materialization(KubeModel):
    """Copying the latest values into the online store."""

    interval: Duration = "1h"
    """How often to materialize new data."""
    suspend: bool = False
    """Stop scheduled materialization."""


# Lists of named items are maps keyed by name: the API server rejects a name given twice.
_keyed_by_name = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


class FeatureViewSpec(KubeModel):
    """Desired state of a FeatureView."""

    entities: Annotated[list[Entity], Field(min_length=1, max_length=8, json_schema_extra=_keyed_by_name)]
    """Entities the features belong to."""
    features: Annotated[list[Feature], Field(min_length=1, max_length=1024, json_schema_extra=_keyed_by_name)]
    """Feature columns."""
    source: Source
    """Where the offline data is."""
    ttl: Duration = "24h"
    """How far back a point-in-time join or an online read looks for a value."""
    online: bool = True
    """Serve the features from the online store."""
    materialization: Materialization = Field(default_factory=Materialization)
    """Schedule of online-store updates."""

    @model_validator(mode="after")
    def _unique_features(self) -> FeatureViewSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features lists {dupes!r} more than once: list each feature once")
        return self


class FeatureViewStatus(KubeModel):
    """Observed state of a FeatureView, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this status describes."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Materializing, Stale."""
    registered_generation: Annotated[int, Field(ge=0)] | None = None
    """The generation last applied to the Feast registry."""
    last_materialized_time: datetime | None = None
    """End of the last successful materialization window."""
    freshness_seconds: Annotated[float, Field(ge=0)] | None = None
    """Age of the newest value in the online store at the last check."""
    online_rows: Annotated[int, Field(ge=0)] | None = None
    """Rows written by the last materialization."""


class FeatureView(Resource):
    """A set of features served from Feast's online store and joined point-in-time for training."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="featureviews",
        short_names=("fv",),
        printer_columns=(
            PrinterColumn("Entities", ".spec.entities[*].name", description="Entity names"),
            ready_column(),
            PrinterColumn("Materialized", ".status.lastMaterializedTime", "date", "Last materialization"),
            PrinterColumn("Freshness", ".status.freshnessSeconds", "number", "Age of newest online value (s)"),
            reason_column(),
            age_column(),
        ),
    )

    kind: Literal["FeatureView"] = "FeatureView"
    spec: FeatureViewSpec
    """Desired state."""
    status: FeatureViewStatus | None = None
    """Observed state, written by the operator."""
