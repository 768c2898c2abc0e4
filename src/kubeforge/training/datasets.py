"""Load a TrainingJob's dataset into train and validation arrays, refusing bad data early.

Data problems are the most common reason a training run fails, and a stack trace from
deep inside pandas or torch does not tell a user which file or column to fix. So every
check here runs before any training starts and raises a :class:`TrainerError` that names
the field, file, column and rows at fault.

Files are read once through fsspec (local paths, ``file://``, ``memory://``, ``s3://``
with s3fs installed, ...); the same bytes are hashed for the lineage tag and parsed.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from kubeforge.api.trainingjob import DatasetSpec, Task

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


def load(spec: DatasetSpec, task: Task) -> Dataset:
    """Read, check and split the dataset described by spec for the given task."""
    if spec.feature_view is not None or spec.uri is None:
        raise TrainerError(
            "spec.dataset.featureView: building the dataset from a FeatureView is not supported by this trainer "
            "yet; export the joined data to a file and set spec.dataset.uri"
        )
    frame, digest = _read(spec.uri, spec.format)
    features = _feature_columns(frame, spec)
    x = _feature_matrix(frame, features)
    classes, y = _targets(frame[spec.target], spec.target, task)
    _refuse_missing_values(x, y, features, spec.target)
    x, y = x.astype(np.float32), y.astype(np.int64) if task == "classification" else y.astype(np.float32)
    train, val = _split(len(frame), spec.validation_split, spec.split_seed)
    return Dataset(
        uri=spec.uri,
        sha256=digest,
        rows=len(frame),
        features=features,
        classes=classes,
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
    )


def _read(uri: str, fmt: str | None) -> tuple[pd.DataFrame, str]:
    """All rows of the file or directory at uri, and the sha256 of the bytes read."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise TrainerError(f"spec.dataset.uri: cannot open {uri}: {exc}") from None
    if not fs.exists(path):
        raise TrainerError(f"spec.dataset.uri: no such file or directory: {uri}")
    files, fmt = _directory_files(fs, path, uri, fmt) if fs.isdir(path) else ([path], _file_format(path, uri, fmt))
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
    return frame, digest.hexdigest()


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
    return fmt or inferred


def _directory_files(fs: fsspec.AbstractFileSystem, path: str, uri: str, fmt: str | None) -> tuple[list[str], str]:
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
        raise TrainerError(f"spec.dataset.uri: directory {uri} has no dataset files ({wanted})")
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
    if spec.features is None:
        features = [c for c in columns if c != spec.target]
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


def _refuse_missing_values(x: np.ndarray, y: np.ndarray, features: list[str], target: str) -> None:
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
        f"columns: {columns}; rows (0-based, header excluded): {shown}"
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
