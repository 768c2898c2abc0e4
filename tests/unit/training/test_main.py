"""The trainer's command line: spec errors name fields, and problems exit non-zero with one line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeforge.training.main import main
from tests.unit.training import data


def _run(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--spec", str(spec), "--tracking-uri", "http://127.0.0.1:9"])
    return code, capsys.readouterr().err


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    return data.write(data.breast_cancer().head(40), tmp_path / "bc.csv", "csv")


def test_invalid_spec_names_each_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "bad"},
        "spec": {
            "model": {"name": "m", "architecture": "forest", "hyperparameters": {"epochs": 0}},
            "dataset": {"uri": "x.csv", "target": "y"},
        },
    }
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job))
    code, err = _run(spec, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: spec.model.architecture: ")
    assert lines[1].startswith("error: spec.model.hyperparameters.epochs: ")


def test_bad_entrypoint_exits_non_zero(tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = data.spec_file(tmp_path / "spec.json", csv, model={"name": "m", "entrypoint": "no_such_pkg:build"})
    code, err = _run(spec, capsys)
    assert code == 1
    assert "error: spec.model.entrypoint: cannot import module 'no_such_pkg'" in err


def test_a_feature_view_dataset_needs_the_feature_view_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        '{"model": {"name": "m", "architecture": "mlp"},'
        ' "dataset": {"featureView": {"name": "fv", "entitiesUri": "e.parquet"}, "target": "y"}}'
    )
    code, err = _run(spec, capsys)
    assert code == 1
    assert "error: spec.dataset.featureView: the trainer needs FeatureView 'fv' itself: pass it with" in err

    code = main(["--spec", str(spec), "--featureview", str(spec), "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: --featureview: {spec}: kind: must be one of" in err


def test_several_replicas_need_a_launcher(tmp_path: Path, csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(data.spec_file(tmp_path / "spec.json", csv, replicas=2), capsys)
    assert code == 1
    assert "spec.replicas is 2 but this trainer was started with WORLD_SIZE=1" in err
    assert "torch.distributed.run --standalone --nproc-per-node=2" in err
