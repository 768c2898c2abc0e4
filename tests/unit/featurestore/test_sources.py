"""Source checks: a missing file, a renamed column or a wrong dtype is named before Feast sees the source."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kubeforge.api import FeatureViewSpec
from kubeforge.featurestore import sources

NOW = datetime.now(UTC).replace(microsecond=0)


def spec(path: Path | str, **source: Any) -> FeatureViewSpec:
    return FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
            "features": [{"name": "spend", "dtype": "Float64"}, {"name": "visits", "dtype": "Int64"}],
            "source": {"path": str(path), **source},
        }
    )


def frame(**renamed: str) -> pd.DataFrame:
    data = {
        "customer_id": [1, 2],
        "spend": [1.5, 2.5],
        "visits": [3, 4],
        "event_timestamp": [NOW - timedelta(hours=1), NOW],
    }
    return pd.DataFrame({renamed.get(k, k): v for k, v in data.items()})


def check(tmp_path: Path, data: pd.DataFrame, **source: Any) -> None:
    path = tmp_path / "src.parquet"
    data.to_parquet(path)
    s = spec(path, **source)
    sources.check(s, sources.offline_path(s, tmp_path / "copies", "v"))


def test_a_good_source_passes(tmp_path: Path) -> None:
    check(tmp_path, frame())


def test_missing_file(tmp_path: Path) -> None:
    s = spec(tmp_path / "nowhere.parquet")
    with pytest.raises(sources.SourceNotFound, match=r"spec\.source\.path: .*nowhere\.parquet does not exist"):
        sources.offline_path(s, tmp_path, "v")


def test_a_scheme_without_its_filesystem_package_is_named(tmp_path: Path) -> None:
    s = spec("nosuchscheme://bucket/features.parquet")
    with pytest.raises(sources.SourceNotFound, match=r"cannot open nosuchscheme://bucket/features\.parquet"):
        sources.offline_path(s, tmp_path, "v")


def test_renamed_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(sources.SchemaMismatch) as err:
        check(tmp_path, frame(spend="amount"))
    assert err.value.reason == "SchemaMismatch"
    assert "spec.features[0].dtype: column 'spend' is not in" in str(err.value)
    assert "'amount'" in str(err.value)


def test_wrong_dtype_is_named(tmp_path: Path) -> None:
    data = frame()
    data["visits"] = ["three", "four"]
    with pytest.raises(sources.SchemaMismatch, match=r"spec.features\[1\].dtype: column 'visits' holds string values"):
        check(tmp_path, data)


def test_join_key_and_timestamp_are_checked(tmp_path: Path) -> None:
    with pytest.raises(sources.SchemaMismatch, match=r"spec.entities\[0\].joinKeys: column 'customer_id'"):
        check(tmp_path, frame(customer_id="cid"))
    with pytest.raises(sources.SchemaMismatch, match=r"spec\.source\.timestampField: column 'ts' is not in"):
        check(tmp_path, frame(), timestampField="ts")


def test_csv_is_copied_to_parquet_and_again_when_it_changes(tmp_path: Path) -> None:
    csv = tmp_path / "src.csv"
    frame().to_csv(csv, index=False)
    s = spec(csv, format="csv")
    copy = sources.offline_path(s, tmp_path / "copies", "v")
    assert copy.endswith(".parquet") and len(pd.read_parquet(copy)) == 2
    sources.check(s, copy)
    pd.concat([frame(), frame()]).to_csv(csv, index=False)
    later = Path(copy).stat().st_mtime + 5
    os.utime(csv, (later, later))  # written after the copy, even on a filesystem with coarse times
    assert len(pd.read_parquet(sources.offline_path(s, tmp_path / "copies", "v"))) == 4
