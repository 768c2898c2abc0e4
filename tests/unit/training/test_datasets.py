"""Loading TrainingJob datasets: every format, directories, fsspec and HTTP URIs, and a clear error for each bad
input."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from kubeforge.api import FeatureView
from kubeforge.api.trainingjob import DatasetSpec
from kubeforge.core.feedbackset import ROWS_LEFT_OUT_HEADER
from kubeforge.featurestore.config import StoreSettings
from kubeforge.training import datasets
from kubeforge.training.errors import TrainerError
from kubeforge.training.main import main
from tests.unit.training import data

FORMATS = ("csv", "json", "jsonl", "parquet")


def _load(uri: str | Path, task: str = "classification", **spec: object) -> datasets.Dataset:
    fields = {"uri": str(uri), "target": "target", **spec}
    return datasets.load(DatasetSpec.model_validate(fields), task)


def test_every_format_yields_the_same_arrays(tmp_path: Path) -> None:
    frame = data.breast_cancer()
    loaded = [_load(data.write(frame, tmp_path / f"bc.{fmt}", fmt)) for fmt in FORMATS]
    for other in loaded[1:]:
        np.testing.assert_allclose(other.x_train, loaded[0].x_train, rtol=1e-6)
        np.testing.assert_array_equal(other.y_val, loaded[0].y_val)
    first = loaded[0]
    assert first.rows == 569
    assert len(first.x_val) == round(569 * 0.2)
    assert first.features == [c for c in frame.columns if c != "target"]
    assert first.classes == [0, 1]


def test_string_labels_become_class_indices_in_sorted_order(tmp_path: Path) -> None:
    loaded = _load(data.write(data.iris(), tmp_path / "iris.jsonl", "jsonl"))
    assert loaded.classes == ["setosa", "versicolor", "virginica"]
    assert set(np.unique(loaded.y_train)) == {0, 1, 2}
    assert loaded.y_train.dtype == np.int64


def test_directory_of_parts_and_memory_uri(tmp_path: Path) -> None:
    frame = data.diabetes()
    data.write(frame.iloc[:200], tmp_path / "parts" / "part-0.parquet", "parquet")
    data.write(frame.iloc[200:], tmp_path / "parts" / "part-1.parquet", "parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    with fsspec.open("memory://kf-test/diabetes.csv", "w") as f:
        frame.to_csv(f, index=False)
    from_dir = _load(tmp_path / "parts", "regression", target="progression")
    from_memory = _load("memory://kf-test/diabetes.csv", "regression", target="progression")
    assert from_dir.rows == from_memory.rows == 442
    np.testing.assert_allclose(np.sort(from_dir.y_train), np.sort(from_memory.y_train))
    assert from_dir.y_train.dtype == np.float32


def test_features_and_split_follow_the_spec(tmp_path: Path) -> None:
    path = data.write(data.breast_cancer(), tmp_path / "bc.csv", "csv")
    chosen = ["worst_area", "mean_radius"]
    a = _load(path, features=chosen, validationSplit=0.5, splitSeed=7)
    b = _load(path, features=chosen, validationSplit=0.5, splitSeed=7)
    c = _load(path, features=chosen, validationSplit=0.5, splitSeed=8)
    assert a.features == chosen
    assert a.x_train.shape == (285, 2)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)


SPEND_VIEW = {
    "apiVersion": "kubeforge.dev/v1alpha1",
    "kind": "FeatureView",
    "metadata": {"name": "spend", "namespace": "shop", "generation": 2},
    "spec": {
        "entities": [{"name": "customer", "joinKeys": ["customer_id"]}],
        "features": [{"name": "spend", "dtype": "Float64"}, {"name": "visits", "dtype": "Int64"}],
        "source": {"path": "/data/spend.parquet"},
    },
}


def _feature_view_cases(tmp: Path) -> dict[str, tuple[dict, dict | None, str]]:
    """name -> (dataset fields, the FeatureView passed to the trainer, the message a user must see); every problem
    here is found before the feature store is opened."""
    rows = pd.DataFrame({"customer_id": [1, 2], "event_timestamp": ["2026-01-01T10:00:00Z"] * 2, "churned": [0, 1]})
    good = data.write(rows, tmp / "entities.csv", "csv")
    no_time = data.write(rows.drop(columns="event_timestamp"), tmp / "no-time.csv", "csv")
    no_key = data.write(rows.drop(columns="customer_id"), tmp / "no-key.parquet", "parquet")
    bad_time = data.write(rows.assign(event_timestamp=["yesterday", "today"]), tmp / "bad-time.csv", "csv")
    clash = data.write(rows.assign(spend=[1.0, 2.0]), tmp / "clash.csv", "csv")
    other = {**SPEND_VIEW, "metadata": {"name": "visits", "namespace": "shop", "generation": 1}}

    def fields(path: Path, **more: object) -> dict:
        return {"featureView": {"name": "spend", "entitiesUri": str(path)}, "target": "churned", **more}

    return {
        "no view given": (
            fields(good),
            None,
            "spec.dataset.featureView: the trainer needs FeatureView 'spend' itself: pass it with --featureview FILE",
        ),
        "another view given": (
            fields(good),
            other,
            "spec.dataset.featureView.name is 'spend' but --featureview holds FeatureView 'visits'",
        ),
        "no event_timestamp": (
            fields(no_time),
            SPEND_VIEW,
            f"spec.dataset.featureView.entitiesUri: {no_time}: no column 'event_timestamp': entity rows need the join "
            "keys of FeatureView 'spend' (customer_id) and 'event_timestamp' (when the row's label was observed); "
            "its columns: customer_id, churned",
        ),
        "no join key": (
            fields(no_key),
            SPEND_VIEW,
            f"spec.dataset.featureView.entitiesUri: {no_key}: no column 'customer_id'",
        ),
        "not timestamps": (
            fields(bad_time),
            SPEND_VIEW,
            f"spec.dataset.featureView.entitiesUri: {bad_time}: column 'event_timestamp' does not hold timestamps",
        ),
        "a column named like a feature": (
            fields(clash),
            SPEND_VIEW,
            "column 'spend' has the name of a feature of FeatureView 'spend': rename or drop it",
        ),
        "no target": (
            fields(good, target="label"),
            SPEND_VIEW,
            f"spec.dataset.target: column 'label' is not in spec.dataset.featureView.entitiesUri {good}; its columns: "
            "customer_id, event_timestamp, churned",
        ),
        "unknown feature": (
            fields(good, features=["visits", "age"]),
            SPEND_VIEW,
            "spec.dataset.features: ['age'] are not features of FeatureView 'spend'; its features: spend, visits",
        ),
        "no entity file": (
            fields(tmp / "nope.csv"),
            SPEND_VIEW,
            f"spec.dataset.featureView.entitiesUri: no such file or directory: {tmp / 'nope.csv'}",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no view given",
        "another view given",
        "no event_timestamp",
        "no join key",
        "not timestamps",
        "a column named like a feature",
        "no target",
        "unknown feature",
        "no entity file",
    ],
)
def test_feature_view_dataset_problems_name_the_field(case: str, tmp_path: Path) -> None:
    fields, view, message = _feature_view_cases(tmp_path)[case]
    store = StoreSettings(tmp_path / "store")
    with pytest.raises(TrainerError) as raised:
        datasets.load(DatasetSpec.model_validate(fields), "classification", view and FeatureView(**view), store)
    assert message in str(raised.value)


def _bad_datasets(tmp: Path) -> dict[str, tuple[dict, str]]:
    """name -> (dataset fields, the message a user must see)."""
    frame = data.breast_cancer()
    text = frame.head(8).astype({"mean_radius": object})
    text.loc[3, "mean_radius"] = "red"
    holes = frame.head(20).copy()
    holes.loc[[5, 7], "mean_texture"] = np.nan
    holes.loc[9, "target"] = np.nan
    (tmp / "empty.csv").write_text("")
    (tmp / "header-only.csv").write_text("a,b,target\n")
    data.write(frame.head(5), tmp / "mixed" / "a.csv", "csv")
    data.write(frame.head(5).drop(columns="mean_area"), tmp / "mixed" / "b.csv", "csv")
    return {
        "missing file": ({"uri": str(tmp / "nope.csv")}, f"no such file or directory: {tmp / 'nope.csv'}"),
        "missing target": (
            {"uri": str(data.write(frame, tmp / "bc.csv", "csv")), "target": "label"},
            "column 'label' is not in the dataset; available columns: mean_radius, mean_texture",
        ),
        "non-numeric feature": (
            {"uri": str(data.write(text, tmp / "text.json", "json"))},
            "feature column 'mean_radius' is not numeric: row 3 holds 'red'",
        ),
        "empty file": ({"uri": str(tmp / "empty.csv")}, f"dataset file {tmp / 'empty.csv'} is empty (no rows)"),
        "header only": ({"uri": str(tmp / "header-only.csv")}, "header-only.csv is empty (no rows)"),
        "NaNs": (
            {"uri": str(data.write(holes, tmp / "holes.parquet", "parquet"))},
            "dataset has 3 missing values (NaN or empty) in 3 rows; columns: mean_texture (2), target (1); "
            "rows (0-based, header excluded): 5, 7, 9",
        ),
        "mismatched schema": ({"uri": str(tmp / "mixed")}, "have different columns"),
        "format mismatch": (
            {"uri": str(tmp / "bc.csv"), "format": "parquet"},
            "spec.dataset.format is 'parquet' but",
        ),
        "unknown extension": (
            {"uri": str(Path(data.write(frame, tmp / "bc.data", "csv")))},
            "spec.dataset.format: cannot tell the format",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing target",
        "non-numeric feature",
        "empty file",
        "header only",
        "NaNs",
        "mismatched schema",
        "format mismatch",
        "unknown extension",
    ],
)
def test_bad_dataset_exits_non_zero_with_its_message(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields, message = _bad_datasets(tmp_path)[case]
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBEFORGE_TERMINATION_LOG", str(termination_log))
    spec = data.spec_file(tmp_path / "spec.json", fields.pop("uri"), fields.pop("target", "target"), dataset=fields)

    code = main(["--spec", str(spec), "--tracking-uri", "http://127.0.0.1:9"])

    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert err.count("error: ") == 1
    assert message in termination_log.read_text()


class _DataServer(BaseHTTPRequestHandler):
    """Serves iris as CSV at /iris.csv to a caller with the token, /moved.csv as a redirect to it, and a 404
    with a gateway-like JSON error for anything else."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/moved.csv":
            self.send_response(302)
            self.send_header("Location", "/iris.csv")
            body = b""
        elif path == "/iris.csv" and self.headers.get("authorization") == "Bearer s3cret":
            self.send_response(200)
            self.send_header(ROWS_LEFT_OUT_HEADER, "7")
            body = data.iris().to_csv(index=False).encode()
        elif path == "/iris.csv":
            self.send_response(401)
            body = b'{"error": "send a bearer token"}'
        else:
            self.send_response(404)
            body = b'{"error": "model \'clf\' is not served here"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_an_http_dataset_is_read_with_the_token_and_what_it_left_out_and_not_followed_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _DataServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(
            TrainerError, match=r"spec\.dataset\.uri: cannot read .*/iris\.csv: it answered 401: .*token"
        ):
            _load(f"{base}/iris.csv")
        monkeypatch.setenv("KUBEFORGE_DATASET_TOKEN", "s3cret")
        loaded = _load(f"{base}/iris.csv?since=1h")
        assert (loaded.rows, loaded.rows_left_out) == (150, 7)
        with pytest.raises(TrainerError, match=rf"answered 302, a redirect, which is not followed: .*\({base}/iris"):
            _load(f"{base}/moved.csv")
        with pytest.raises(TrainerError, match=r"it answered 404: .*not served here"):
            _load(f"{base}/gone.csv")
    finally:
        httpd.shutdown()
        httpd.server_close()
    with socket.socket() as closed:  # bound, never listening: refuses connections, and its port is not reused
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(TrainerError, match=r"spec\.dataset\.uri: cannot GET .*/iris\.csv: .*refused"):
            _load(f"http://127.0.0.1:{closed.getsockname()[1]}/iris.csv")
