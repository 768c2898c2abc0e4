"""Load a TrainingJob's dataset into train and validation arrays, refusing bad data early.

Data problems are the most common reason a training run fails, and a stack trace from
deep inside pandas or torch does not tell a user which file or column to fix. So every
check here runs before any training starts and raises a :class:`TrainerError` that names
the field, file, column and rows at fault.

Files are read once through fsspec (local paths, ``file://``, ``memory://``, ``s3://``
with s3fs installed, ...); the same bytes are hashed for the lineage tag and parsed. An
``http(s)://`` URL is read with one GET, so it may be a query (a gateway's
``/v2/models/<name>/feedback/dataset?since=24h``); ``spec.dataset.format`` names its format.

A dataset built from a FeatureView (``spec.dataset.featureView``) is the entity file
(join keys, ``event_timestamp``, the target) with the view's features joined on point in
time: each row gets the newest value at or before its timestamp, never a later one. Rows
that get no value (none recorded before the row, or only one older than the view's ttl)
are refused like any missing value, never trained on as NaN or dropped unseen. Its hash
for the lineage tag is the hash of the joined frame: the same entity file trains on other
values once the view's source changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urljoin

import fsspec
import numpy as np
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from kubeforge.api.featureview import FeatureView
from kubeforge.api.trainingjob import DatasetSpec, Task
from kubeforge.core import feedbackset, plainhttp
from kubeforge.featurestore import trainingsets
from kubeforge.featurestore.config import StoreSettings

from .errors import TrainerError

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "json": (".json",),
    "jsonl": (".jsonl", ".ndjson"),
    "parquet": (".parquet", ".pq"),
}
# How many row numbers an error message lists before it stops.
_SHOWN_ROWS = 10


@dataclass(frozen=True)
class Dataset:
    """The job's data as float32 feature matrices (raw, not yet standardised) and targets.

    Targets are class indices (int64, positions in ``classes``) for classification and
    float32 values for regression.
    """

    uri: str
    sha256: str
    rows: int
    features: list[str]
    classes: list[str | int | bool]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    feature_view: FeatureView | None = None
    """The FeatureView the features were joined from (uri is then the entity file)."""
    rows_left_out: int = 0
    """Labelled rows the gateway's feedback data set at uri left out: answered by versions without one of its
    features."""


def load(spec: DatasetSpec, task: Task, view: FeatureView | None = None, store: StoreSettings | None = None) -> Dataset:
    """Read, check and split the dataset described by spec for the given task.

    When spec names a FeatureView, view is that view as the operator passed it (spec and
    generation) and store the feature store to join from (default: KUBEFORGE_FEAST_*).
    """
    if spec.feature_view is not None:
        uri = spec.feature_view.entities_uri
        frame, features, digest, hint = _joined(spec, view, store or StoreSettings.from_env())
        left_out = 0
    else:
        assert spec.uri is not None  # DatasetSpec requires uri or featureView
        uri, hint = spec.uri, ""
        frame, digest, left_out = read(spec.uri, spec.format)
        features = _feature_columns(frame, spec)
    x = _feature_matrix(frame, features)
    classes, y = _targets(frame[spec.target], spec.target, task)
    _refuse_missing_values(x, y, features, spec.target, hint)
    x, y = x.astype(np.float32), y.astype(np.int64) if task == "classification" else y.astype(np.float32)
    train, val = _split(len(frame), spec.validation_split, spec.split_seed)
    return Dataset(
        uri=uri,
        sha256=digest,
        rows=len(frame),
        features=features,
        classes=classes,
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        feature_view=view if spec.feature_view is not None else None,
        rows_left_out=left_out,
    )


def _joined(
    spec: DatasetSpec, view: FeatureView | None, store: StoreSettings
) -> tuple[pd.DataFrame, list[str], str, str]:
    """(entity rows with the view's features joined point in time, the features in order, the joined frame's hash,
    what to say about missing values)."""
    source = spec.feature_view
    assert source is not None
    if view is None:
        raise TrainerError(
            f"spec.dataset.featureView: the trainer needs FeatureView {source.name!r} itself: pass it with "
            "--featureview FILE (the operator does)"
        )
    if view.metadata.name != source.name:
        raise TrainerError(
            f"spec.dataset.featureView.name is {source.name!r} but --featureview holds FeatureView "
            f"{view.metadata.name!r}"
        )
    field = "spec.dataset.featureView.entitiesUri"
    entities = read(source.entities_uri, spec.format, field).frame
    available = [f.name for f in view.spec.features]
    features = list(spec.features) if spec.features is not None else available
    unknown = [f for f in features if f not in available]
    if unknown:
        raise TrainerError(
            f"spec.dataset.features: {unknown} are not features of FeatureView {source.name!r}; "
            f"its features: {', '.join(available)}"
        )
    if spec.target not in entities.columns:
        raise TrainerError(
            f"spec.dataset.target: column {spec.target!r} is not in {field} {source.entities_uri}; "
            f"its columns: {', '.join(map(str, entities.columns))}"
        )
    try:
        frame = trainingsets.join(store, view, features, entities)
    except trainingsets.EntitiesError as err:
        raise TrainerError(f"{field}: {source.entities_uri}: {err}") from None
    except trainingsets.NotRegistered as err:
        raise TrainerError(f"spec.dataset.featureView.name: {err}") from None
    keys = trainingsets.join_keys(view.spec)
    digest = _frame_digest(frame[[*keys, trainingsets.EVENT_TIMESTAMP, spec.target, *features]])
    hint = (
        f"; a feature is missing where FeatureView {source.name!r} has no value for the row's entity at or before "
        f"its {trainingsets.EVENT_TIMESTAMP} within the view's ttl ({view.spec.ttl}): drop those rows from "
        f"{source.entities_uri} or widen the ttl"
    )
    return frame, features, digest, hint


def _frame_digest(frame: pd.DataFrame) -> str:
    """sha256 of a frame's column names, types and values, row order included."""
    digest = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


class Read(NamedTuple):
    """What reading a dataset's URI gave."""

    frame: pd.DataFrame
    sha256: str
    """Of the bytes read."""
    rows_left_out: int = 0
    """Labelled rows a gateway's feedback data set left out (answered by versions without one of its features)."""


def read(uri: str, fmt: str | None, field: str = "spec.dataset.uri") -> Read:
    """All rows of the file or directory at uri (named by field in messages)."""
    if uri.startswith(("http://", "https://")):
        return _read_http(uri, fmt, field)
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise TrainerError(f"{field}: cannot open {uri}: {exc}") from None
    if not fs.exists(path):
        raise TrainerError(f"{field}: no such file or directory: {uri}")
    if fs.isdir(path):
        files, fmt = _directory_files(fs, path, uri, fmt, field)
    else:
        files, fmt = [path], _file_format(path, uri, fmt)
    parse = _PARSERS[fmt]
    digest = hashlib.sha256()
    frames: list[tuple[str, pd.DataFrame]] = []
    for file in files:
        name = file if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(file)
        with fs.open(file, "rb") as f:
            data = f.read()
        digest.update(data)
        frame = parse(data, name) if data.strip() else pd.DataFrame()
        if frame.empty:
            raise TrainerError(f"dataset file {name} is empty (no rows)")
        if frames and list(frame.columns) != list(frames[0][1].columns):
            first, first_frame = frames[0]
            raise TrainerError(
                f"dataset files in {uri} have different columns: {first} has {list(first_frame.columns)}, "
                f"{name} has {list(frame.columns)}"
            )
        frames.append((name, frame))
    frame = frames[0][1] if len(frames) == 1 else pd.concat([f for _, f in frames], ignore_index=True)
    return Read(frame, digest.hexdigest())


def _read_http(uri: str, fmt: str | None, field: str) -> Read:
    """The rows an HTTP(S) URL answers with, read in one GET (a URL may be a query, such as a gateway's feedback
    data set, which has no size to read ranges of and no directory listing), and the labelled rows a feedback data
    set says it left out. With KUBEFORGE_DATASET_TOKEN set it is sent as a bearer token; a redirect is not followed,
    so that the token goes to the server named and no other."""
    token = os.environ.get("KUBEFORGE_DATASET_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = plainhttp.get(uri, timeout=feedbackset.READ_TIMEOUT_S, headers=headers)
    except plainhttp.HttpError as exc:
        raise TrainerError(f"{field}: cannot {exc}") from None  # "GET <uri>: <why>"
    if 300 <= answer.status < 400:
        raise TrainerError(
            f"{field}: {uri} answered {answer.status}, a redirect, which is not followed: set {field} to where it "
            f"points ({urljoin(uri, answer.headers['location']) if 'location' in answer.headers else 'no Location'})"
        )
    if answer.status != 200:
        said = answer.text.strip().replace("\n", " ")[:300]
        raise TrainerError(f"{field}: cannot read {uri}: it answered {answer.status}{': ' + said if said else ''}")
    data = answer.content
    left_out = feedbackset.rows_left_out(answer.headers.get(feedbackset.ROWS_LEFT_OUT_HEADER))
    fmt = _file_format(uri.split("?", 1)[0], uri, fmt)
    frame = _PARSERS[fmt](data, uri) if data.strip() else pd.DataFrame()
    if frame.empty:
        why = (
            f"; it left out {left_out} labelled rows answered by model versions without one of its features: "
            "name features those versions take in spec.dataset.features"
            if left_out
            else ""
        )
        raise TrainerError(f"dataset {uri} is empty (no rows){why}")
    return Read(frame, hashlib.sha256(data).hexdigest(), left_out)


def _format_of(path: str) -> str | None:
    lower = path.lower()
    return next((fmt for fmt, exts in EXTENSIONS.items() if lower.endswith(exts)), None)


def _file_format(path: str, uri: str, fmt: str | None) -> str:
    """The format of one file: spec.dataset.format, checked against the file's extension."""
    inferred = _format_of(path)
    if fmt is None and inferred is None:
        raise TrainerError(
            f"spec.dataset.format: cannot tell the format of {uri} from its extension; "
            "set spec.dataset.format to csv, json, jsonl or parquet"
        )
    if fmt is not None and inferred is not None and inferred != fmt:
        raise TrainerError(
            f"spec.dataset.format is {fmt!r} but {uri} has the extension of a {inferred} file; "
            "fix spec.dataset.format or the file name"
        )
    found = fmt or inferred
    assert found is not None  # both None raised above
    return found


def _directory_files(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, fmt: str | None, field: str
) -> tuple[list[str], str]:
    """The files of one format in a directory (hidden and _-prefixed files skipped), sorted."""
    names = sorted(
        p for p in fs.ls(path, detail=False) if not posixpath.basename(p).startswith((".", "_")) and fs.isfile(p)
    )
    by_format: dict[str, list[str]] = {}
    for name in names:
        if (found := _format_of(name)) is not None:
            by_format.setdefault(found, []).append(name)
    if fmt is None:
        if len(by_format) > 1:
            raise TrainerError(
                f"spec.dataset.format: directory {uri} holds files of several formats ({', '.join(sorted(by_format))});"
                " set spec.dataset.format to pick one"
            )
        fmt = next(iter(by_format), None)
    files = by_format.get(fmt, []) if fmt else []
    if not files:
        wanted = ", ".join(f"*{e}" for e in EXTENSIONS[fmt]) if fmt else "csv, json, jsonl or parquet files"
        raise TrainerError(f"{field}: directory {uri} has no dataset files ({wanted})")
    assert fmt is not None  # files were found for it
    return files, fmt


def _parse_csv(data: bytes, name: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TrainerError(f"dataset file {name} is not valid CSV: {exc}") from None


def _parse_json(data: bytes, name: str) -> pd.DataFrame:
    try:
        records = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainerError(f"dataset file {name} is not valid JSON: {exc}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TrainerError(f"dataset file {name} must hold a JSON array of records (objects), one per row")
    return pd.DataFrame.from_records(records)


def _parse_jsonl(data: bytes, name: str) -> pd.DataFrame:
    try:
        return pd.read_json(io.BytesIO(data), lines=True, dtype=False, convert_dates=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainerError(f"dataset file {name} is not valid JSON Lines (one JSON object per line): {exc}") from None


def _parse_parquet(data: bytes, name: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(data))
    except (OSError, ValueError) as exc:
        raise TrainerError(f"dataset file {name} is not valid Parquet: {exc}") from None


_PARSERS: dict[str, Callable[[bytes, str], pd.DataFrame]] = {
    "csv": _parse_csv,
    "json": _parse_json,
    "jsonl": _parse_jsonl,
    "parquet": _parse_parquet,
}


def _feature_columns(frame: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    columns = [str(c) for c in frame.columns]
    available = ", ".join(columns)
    if spec.target not in columns:
        raise TrainerError(
            f"spec.dataset.target: column {spec.target!r} is not in the dataset; available columns: {available}"
        )
    if spec.features is None:  # a timestamp column says when a row was recorded, not what it was
        features = [c for c in columns if c not in (spec.target, trainingsets.EVENT_TIMESTAMP)]
    else:
        missing = [c for c in spec.features if c not in columns]
        if missing:
            raise TrainerError(
                f"spec.dataset.features: columns {missing} are not in the dataset; available columns: {available}"
            )
        if spec.target in spec.features:
            raise TrainerError(f"spec.dataset.features: the target column {spec.target!r} cannot also be a feature")
        features = list(spec.features)
    if not features:
        raise TrainerError("spec.dataset.features: the dataset has no feature columns besides the target")
    return features


def _numeric(column: pd.Series, what: str, hint: str) -> np.ndarray:
    """column as float64, or an error showing a value that is not a number."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    converted = pd.to_numeric(column, errors="coerce")
    bad = column[converted.isna() & column.notna()]
    if len(bad):
        raise TrainerError(f"{what} is not numeric: row {bad.index[0]} holds {bad.iloc[0]!r}; {hint}")
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    hint = "encode it as numbers or leave it out of spec.dataset.features"
    columns = [_numeric(frame[name], f"feature column {name!r}", hint) for name in features]
    return np.stack(columns, axis=1)


def _targets(column: pd.Series, target: str, task: Task) -> tuple[list[str | int | bool], np.ndarray]:
    """(class labels, class indices) for classification; ([], values) for regression."""
    if task == "regression":
        hint = "a regression target must be a number (or set spec.model.task: classification)"
        return [], _numeric(column, f"target column {target!r}", hint)
    labels = column.dropna()
    if pd.api.types.is_float_dtype(labels):
        fractional = labels[labels != labels.round()]
        if len(fractional):
            raise TrainerError(
                f"spec.dataset.target: column {target!r} holds non-integer values (row {fractional.index[0]}: "
                f"{fractional.iloc[0]!r}) for a classification task; set spec.model.task: regression"
            )
        labels = labels.astype(np.int64)
    elif not (pd.api.types.is_integer_dtype(labels) or pd.api.types.is_bool_dtype(labels)):
        labels = labels.astype(str)
    classes = sorted(pd.unique(labels))
    if len(classes) < 2:
        raise TrainerError(f"spec.dataset.target: column {target!r} has {len(classes)} class(es); at least 2 needed")
    indices = pd.Categorical(labels.reindex(column.index), categories=classes).codes.astype(np.float64)
    indices[column.isna().to_numpy()] = np.nan
    return [c.item() if isinstance(c, np.generic) else c for c in classes], indices


def _refuse_missing_values(x: np.ndarray, y: np.ndarray, features: list[str], target: str, hint: str) -> None:
    """TrainerError naming the columns and rows with missing values, if any; hint says why they may be missing."""
    values = np.column_stack([x, y])
    missing = np.isnan(values)
    if not missing.any():
        return
    per_column = missing.sum(axis=0)
    columns = ", ".join(f"{name} ({n})" for name, n in zip([*features, target], per_column, strict=True) if n)
    rows = np.flatnonzero(missing.any(axis=1))
    shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS]) + (", ..." if len(rows) > _SHOWN_ROWS else "")
    raise TrainerError(
        f"dataset has {int(per_column.sum())} missing values (NaN or empty) in {len(rows)} rows; "
        f"columns: {columns}; rows (0-based, header excluded): {shown}{hint}"
    )


def _split(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation splits, shuffled with seed."""
    order = np.random.default_rng(seed).permutation(rows)
    n_val = max(1, round(rows * fraction)) if fraction > 0 else 0
    if rows - n_val < 1:
        raise TrainerError(
            f"spec.dataset.validationSplit: {rows} rows leave none for training with a validation split of {fraction}"
        )
    return order[n_val:], order[:n_val]
