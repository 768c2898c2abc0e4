"""`kubeforge model import`: register a model trained elsewhere as a version a ModelDeployment serves.

The checks and the registration are :mod:`kubeforge.training.importer`'s; this module
parses the options, prints the progress, and shows how to serve what was registered.
"""

from __future__ import annotations

import re
from pathlib import Path

import click


def _comma_separated(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return None if value is None else [n.strip() for n in value.split(",")]


@click.command("import")
@click.option("--name", required=True, help="Registered model name the version is added to.")
@click.option(
    "--file",
    "file",
    required=True,
    type=click.Path(path_type=Path),
    help="The model: ONNX (.onnx), TorchScript (.pt), skops (.skops) or joblib/pickle (.joblib, needs --trust).",
)
@click.option("--task", required=True, type=click.Choice(["classification", "regression"]))
@click.option(
    "--features",
    callback=_comma_separated,
    help="Feature names in the model's input order, comma-separated (needed when the file does not say them).",
)
@click.option("--classes", callback=_comma_separated, help="Class names in the model's output order (classification).")
@click.option(
    "--reference-data",
    help="CSV or Parquet file with the feature columns (e.g. training data): checked against the model, and the "
    "drift baseline.",
)
@click.option(
    "--trust",
    is_flag=True,
    help="Load a joblib/pickle file (or skops types skops does not trust): this runs code the file names.",
)
@click.option("--alias", help="Alias to point at the new version, e.g. candidate.")
@click.option("--description", help="Description of the model version (the model card follows it).")
@click.option("--intended-use", help="What the model is for, for its model card.")
@click.option("--limitations", help="Where the model should not be trusted, for its model card.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", required=True, help="MLflow tracking server.")
def model_import(
    name: str,
    file: Path,
    task: str,
    features: list[str] | None,
    classes: list[str] | None,
    reference_data: str | None,
    trust: bool,
    alias: str | None,
    description: str | None,
    intended_use: str | None,
    limitations: str | None,
    tracking_uri: str,
) -> None:
    """Bring your own model: check a model file against the model contract and register it as a version."""
    from mlflow.exceptions import MlflowException

    from . import importer
    from .errors import TrainerError

    request = importer.Request(
        name=name,
        file=file,
        task=task,  # type: ignore[arg-type]  # click.Choice
        features=features,
        classes=classes,
        reference_data=reference_data,
        trust=trust,
        alias=alias,
        description=description,
        intended_use=intended_use,
        limitations=limitations,
    )
    try:
        checked = importer.check(request, click.echo)
        click.echo("checks passed; registering")
        imported = importer.register(checked, tracking_uri, click.echo)
    except TrainerError as err:
        raise click.ClickException(f"{err} (nothing registered)") from None
    except MlflowException as err:
        raise click.ClickException(f"MLflow at {tracking_uri} failed: {err.message}") from None
    click.echo(f"registered {imported.model_uri}" + (f" (alias {alias})" if alias else ""))
    click.echo(serving_hint(imported.name, imported.version, alias))


def serving_hint(name: str, version: str, alias: str | None) -> str:
    """How to serve the version: a ModelDeployment to kubectl apply."""
    from kubeforge.api import API_VERSION

    deployment = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-") or "model"
    ref = f"alias: {alias}" if alias else f"version: {version}"
    return (
        "serve it (kubectl apply -f -):\n"
        f"  apiVersion: {API_VERSION}\n"
        "  kind: ModelDeployment\n"
        "  metadata:\n"
        f"    name: {deployment}\n"
        "  spec:\n"
        f"    model: {{name: {name}, {ref}}}\n"
        "or roll it out to an existing ModelDeployment as its canary.model"
    )
