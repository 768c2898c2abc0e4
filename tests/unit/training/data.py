"""Real datasets shipped with scikit-learn, written out as the files a TrainingJob points at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn import datasets


def breast_cancer() -> pd.DataFrame:
    """Binary classification, 569 rows, 30 features, integer target 0/1."""
    frame = datasets.load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def iris() -> pd.DataFrame:
    """Three classes with string labels, 150 rows, 4 features."""
    data = datasets.load_iris(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["target"] = data.target_names[data.target]
    return frame


def diabetes() -> pd.DataFrame:
    """Regression, 442 rows, 10 features, target 'progression'."""
    return datasets.load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})


def write(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    """frame as a csv, json (records array), jsonl or parquet file at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "json":
        frame.to_json(path, orient="records")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def spec_file(path: Path, uri: str | Path, target: str = "target", **spec: Any) -> Path:
    """A bare TrainingJob spec as JSON; spec holds its other top-level fields (model, checkpoint, ...)."""
    body = {"model": {"name": "m", "architecture": "logistic"}, **spec}
    body["dataset"] = {"uri": str(uri), "target": target, **body.get("dataset", {})}
    path.write_text(json.dumps(body))
    return path
