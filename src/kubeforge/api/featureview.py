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
    Quantity,
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
    default: float | None = None
    """Value a model deployment's gateway uses when the online store has none for an entity (never written, or
    older than the ttl); without one such a request is refused with 422 naming the entity and the feature."""


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
    """How often to materialize new data: a run is due this long after the last one started."""
    suspend: bool = False
    """Stop scheduled runs; a run asked for with the kubeforge.dev/materialize-now annotation still happens."""
    cpu: Quantity = "1"
    """CPU requested and limited for each run's Job, e.g. 2 or 500m."""
    memory: Quantity = "2Gi"
    """Memory requested and limited for each run's Job, e.g. 4Gi: a run holds the window of the source it copies."""


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


class LastMaterialization(KubeModel):
    """The most recent materialization Job: running, or how it ended."""

    job: str
    """Name of the Job (`<featureview>-mat-<n>`), for `kubectl logs job/...`."""
    generation: Annotated[int, Field(ge=0)]
    """The FeatureView generation the Job materializes."""
    phase: Literal["Running", "Succeeded", "Failed"]
    """Running, Succeeded or Failed."""
    start_time: datetime
    """When the operator created the Job; the next scheduled run is due spec.materialization.interval later."""
    completion_time: datetime | None = None
    """When the operator saw the Job finish."""
    rows: Annotated[int, Field(ge=0)] | None = None
    """Entities whose values the Job wrote to the online store."""
    window_start: datetime | None = None
    """Start of the materialized window (empty on the first run: the view's ttl back from its end)."""
    window_end: datetime | None = None
    """End of the materialized window: values with event times up to here are online."""
    reason: str | None = None
    """Why a failed run failed: SourceNotFound, SchemaMismatch or MaterializationFailed."""
    message: str | None = None
    """What went wrong in a failed run: the source's problem, naming the column, or the tail of the Job's log."""


class FeatureViewStatus(KubeModel):
    """Observed state of a FeatureView, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this status describes."""
    conditions: Conditions = Field(default_factory=list)
    """Ready (registered and materialized; its reason names the problem otherwise: InvalidSpec, SourceNotFound,
    SchemaMismatch, RegistrationFailed, MaterializationFailed), Materializing (a Job runs) and Stale (the newest
    value online is older than the ttl, so nothing is served)."""
    registered_generation: Annotated[int, Field(ge=0)] | None = None
    """The generation last applied to the Feast registry."""
    materializations: Annotated[int, Field(ge=0)] | None = None
    """Materialization Jobs started so far; the latest is `<name>-mat-<materializations>`."""
    last_materialization: LastMaterialization | None = None
    """The most recent materialization Job."""
    materialize_now: str | None = None
    """The value of the kubeforge.dev/materialize-now annotation that the operator last answered with a run; setting
    the annotation to any other value asks for one more run at once."""
    last_materialized_time: datetime | None = None
    """End of the last successful materialization window."""
    newest_event_time: datetime | None = None
    """Event time of the newest value in the online store, as of the last successful materialization. Its age
    (kubectl's Freshness column; the operator's kubeforge_featureview_freshness_seconds) is not written here: a
    value that changes with the clock would rewrite the object, and wake every watcher, every few seconds."""
    online_rows: Annotated[int, Field(ge=0)] | None = None
    """Entities with a value in the online store not older than the ttl, as of the last successful
    materialization."""


class FeatureView(Resource):
    """A set of features served from Feast's online store and joined point-in-time for training."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="featureviews",
        short_names=("fv",),
        printer_columns=(
            PrinterColumn("Entities", ".spec.entities[*].name", description="Entity names"),
            ready_column(),
            PrinterColumn("Materialized", ".status.lastMaterializedTime", "date", "Last materialization"),
            PrinterColumn("Freshness", ".status.newestEventTime", "date", "Age of the newest online value"),
            PrinterColumn("Rows", ".status.onlineRows", "integer", "Entities with a live online value", priority=1),
            reason_column(),
            age_column(),
        ),
    )

    kind: Literal["FeatureView"] = "FeatureView"
    spec: FeatureViewSpec
    """Desired state."""
    status: FeatureViewStatus | None = None
    """Observed state, written by the operator."""
