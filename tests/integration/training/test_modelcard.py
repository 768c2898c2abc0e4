"""Every registered version has a model card: in MLflow (JSON and Markdown artifacts, and the version's
description the MLflow UI shows) and through `kubeforge model card`, with the approval as it is now."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kubeforge import cli
from kubeforge.core import approval, modelcard
from kubeforge.core import modelcontract as mc
from kubeforge.core.mlflow_rest import MLflowRegistry
from kubeforge.training.main import main
from tests.unit.training import data

pytestmark = pytest.mark.integration


def _train(tmp: Path, tracking_uri: str, model: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    csv = data.write(data.iris(), tmp / "iris.csv", "csv")
    job = {
        "apiVersion": "kubeforge.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"{model['name']}-job", "namespace": "team-a", "annotations": annotations},
        "spec": {"model": model, "dataset": {"uri": str(csv), "target": "target"}},
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--spec", str(tmp / "job.yaml"), "--tracking-uri", tracking_uri]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])["kubeforge.result"]


@pytest.mark.parametrize(
    "model",
    [
        {"name": "iris-card", "architecture": "mlp", "hyperparameters": {"epochs": 40}},
        {"name": "iris-card-sk", "framework": "sklearn", "estimator": "RandomForestClassifier"},
    ],
    ids=["torch", "sklearn"],
)
def test_the_card_says_what_the_version_learned_from_and_how_well_it_did(
    model: dict[str, Any], mlflow: Any, tmp_path: Path
) -> None:
    notes = {
        "kubeforge.dev/intended-use": "Sorting iris flowers in the teaching garden.",
        "kubeforge.dev/limitations": "Three species only.",
        "example.com/owner": "not for the card",
    }
    result = _train(tmp_path, mlflow.url, model, notes)
    name, version = model["name"], result["modelVersion"]
    client = MlflowClient(mlflow.url)
    registered = client.get_model_version(name, version)
    card = modelcard.ModelCard.model_validate_json(
        Path(client.download_artifacts(result["runId"], modelcard.CARD_JSON, str(tmp_path))).read_text()
    )
    assert (card.model, card.version, card.task) == (name, version, "classification")
    assert card.framework == model.get("framework", "torch")
    assert card.dataset.sha256 == registered.tags[mc.TAG_DATASET_SHA256]
    assert card.dataset.train_rows + card.dataset.validation_rows == card.dataset.rows == 150
    assert card.metrics == pytest.approx(result["metrics"])
    assert [c.label for c in card.per_class] == ["setosa", "versicolor", "virginica"]
    assert sum(c.support for c in card.per_class) == card.dataset.validation_rows
    correct = sum(round(c.recall * c.support) for c in card.per_class)
    assert correct / card.dataset.validation_rows == pytest.approx(result["metrics"]["accuracy"])
    assert [f.name for f in card.features] == json.loads(registered.tags[mc.TAG_FEATURES])
    assert card.training.training_job == f"team-a/{name}-job" and card.training.run_id == result["runId"]
    assert card.training.seconds > 0 and card.training.attempt == 1
    assert card.intended_use == notes["kubeforge.dev/intended-use"] and card.limitations == "Three species only."
    assert "not for the card" not in card.model_dump_json()
    # The MLflow UI shows the version's description: the Markdown card.
    assert registered.description.startswith(f"# {name} version {version}")
    assert "**Approval:** not approved" in registered.description

    shown = CliRunner().invoke(cli.main, ["model", "card", name, version, "--tracking-uri", mlflow.url])
    assert shown.exit_code == 0, shown.output
    assert card.dataset.sha256 in shown.output and "| setosa |" in shown.output
    approval.record(MLflowRegistry(mlflow.url), name, version, approval.APPROVED, "alice", "ok", datetime.now(UTC))
    shown = CliRunner().invoke(cli.main, ["model", "card", name, version, "--json", "--tracking-uri", mlflow.url])
    assert json.loads(shown.output)["approval"]["state"] == "approved"
    assert json.loads(shown.output)["approval"]["by"] == "alice"


def test_a_card_of_a_version_that_does_not_exist_lists_those_that_do(mlflow: Any, tmp_path: Path) -> None:
    _train(tmp_path, mlflow.url, {"name": "iris-lonely", "architecture": "logistic"}, {})
    shown = CliRunner().invoke(cli.main, ["model", "card", "iris-lonely", "7", "--tracking-uri", mlflow.url])
    assert shown.exit_code == 1
    assert "registered model 'iris-lonely' has no version 7; its versions: 1" in shown.output
    # With no API server to ask, lineage still tells what MLflow knows, and says what it could not.
    walked = CliRunner().invoke(
        cli.main,
        ["lineage", "model", "iris-lonely", "1", "--json", "--tracking-uri", mlflow.url, "--kubeconfig", "/no"],
    )
    assert walked.exit_code == 0, walked.output
    (found,) = json.loads(walked.output)["versions"]
    assert found["trainingJob"]["name"] == "iris-lonely-job" and found["trainingJob"]["state"] == "unknown"
    assert len(found["data"]["sha256"]) == 64 and found["approval"] == "not approved"
