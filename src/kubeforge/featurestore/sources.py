"""A FeatureView's offline source: found, readable, and with the columns and types the spec declares.

Checked before anything is registered or materialized, so a renamed column or a wrong
dtype becomes a condition that names it (``SchemaMismatch``) rather than a stack trace
from deep inside Feast. CSV sources are copied to parquet (Feast's file offline store
reads parquet), again whenever the CSV changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..api.featureview import FeatureViewSpec
from .errors import SchemaMismatch, SourceError, SourceNotFound

__all__ = ["SchemaMismatch", "SourceError", "SourceNotFound", "check", "offline_path"]


# Arrow type families each declared type accepts.
_FEATURE_TYPES = {
    "Float32": ("floating", "integer"),
    "Float64": ("floating", "integer"),
    "Int32": ("integer",),
    "Int64": ("integer",),
    "String": ("string",),
    "Bool": ("boolean",),
    "UnixTimestamp": ("timestamp", "integer"),
}
_KEY_TYPES = {"INT64": ("integer",), "INT32": ("integer",), "STRING": ("string",), "BYTES": ("binary", "string")}


def _family(t: pa.DataType) -> str:
    for name, test in (
        ("integer", pa.types.is_integer),
        ("floating", pa.types.is_floating),
        ("boolean", pa.types.is_boolean),
        ("timestamp", pa.types.is_timestamp),
        ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)),
        ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)),
    ):
        if test(t):
            return name
    return str(t)


def _csv_to_parquet(path: str, spec: FeatureViewSpec, copy: Path) -> None:
    with fsspec.open(path, "rb") as f:
        frame = pd.read_csv(f)
    ts = spec.source.timestamp_field
    if ts in frame.columns:
        try:
            frame[ts] = pd.to_datetime(frame[ts], utc=True)
        except (ValueError, TypeError) as err:
            raise SchemaMismatch(f"spec.source: column {ts!r} does not hold timestamps: {err}") from err
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_name(f".{copy.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, copy)


def offline_path(spec: FeatureViewSpec, copies: Path, name: str) -> str:
    """The parquet file or directory Feast reads: the source itself, or its parquet copy under copies."""
    path = spec.source.path
    try:
        fs, _, [local] = fsspec.get_fs_token_paths(path)
        found = fs.exists(local)
    except (ImportError, ValueError, OSError) as err:
        # A scheme whose filesystem package is not installed (s3fs, gcsfs), an unknown one, or storage that does
        # not answer: the path cannot be used, and the message says which and why.
        raise SourceNotFound(f"spec.source.path: cannot open {path}: {err}") from err
    if not found:
        raise SourceNotFound(f"spec.source.path: {path} does not exist")
    if spec.source.format == "parquet":
        return path
    copy = copies / f"{name}.parquet"
    modified = fs.modified(local).timestamp() if hasattr(fs, "modified") else float("inf")
    if not copy.exists() or copy.stat().st_mtime < modified:
        _csv_to_parquet(path, spec, copy)
    return str(copy)


def check(spec: FeatureViewSpec, parquet: str) -> pa.Schema:
    """The source's schema, after checking every declared column; raises SchemaMismatch naming the first problem."""
    try:
        schema = pq.read_schema(parquet) if not Path(parquet).is_dir() else pq.ParquetDataset(parquet).schema
    except (OSError, pa.ArrowInvalid) as err:
        raise SourceNotFound(f"spec.source.path: cannot read {spec.source.path} as parquet: {err}") from err
    columns = {f.name: _family(f.type) for f in schema}

    def need(field: str, column: str, allowed: tuple[str, ...], declared: str) -> None:
        if column not in columns:
            near = sorted(columns)
            raise SchemaMismatch(f"{field}: column {column!r} is not in {spec.source.path} (columns: {near})")
        if columns[column] not in allowed:
            raise SchemaMismatch(
                f"{field}: column {column!r} holds {columns[column]} values, not {declared}: "
                f"fix the data or declare the type it has"
            )

    need("spec.source.timestampField", spec.source.timestamp_field, ("timestamp",), "timestamps")
    if spec.source.created_timestamp_field:
        need("spec.source.createdTimestampField", spec.source.created_timestamp_field, ("timestamp",), "timestamps")
    for i, entity in enumerate(spec.entities):
        for key in entity.join_keys:
            need(f"spec.entities[{i}].joinKeys", key, _KEY_TYPES[entity.value_type], entity.value_type)
    for i, feature in enumerate(spec.features):
        need(f"spec.features[{i}].dtype", feature.name, _FEATURE_TYPES[feature.dtype], feature.dtype)
    return schema
