"""One attempt of a TrainingJob: load data, resume or start, train, register.

Every replica runs this; rank 0 alone talks to MLflow and writes checkpoints, so a
job with several replicas produces one run and one model version. Everything that can
be wrong with the input (spec, data, user model, checkpoint) is checked before the
MLflow run starts, so a bad job leaves no half-made run behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import torch

import kubeforge
from kubeforge.api.featureview import FeatureView
from kubeforge.api.trainingjob import (
    ESTIMATOR_FRAMEWORKS,
    INTENDED_USE_ANNOTATION,
    LIMITATIONS_ANNOTATION,
    TrainingJobSpec,
)
from kubeforge.core import modelcard
from kubeforge.core import modelcontract as contract
from kubeforge.featurestore.config import StoreSettings

from . import baseline, datasets, distributed, estimators, models, registration, tracking
from .checkpoint import Checkpoint, Store, capture_rng, restore_rng
from .distributed import Context
from .loop import EpochResult, Loop, make_optimizer
from .registration import Identity


@dataclass(frozen=True)
class Settings:
    """Where this attempt reports (MLflow, the TrainingJob it belongs to) and what it reads besides the spec."""

    tracking_uri: str
    experiment: str | None = None
    identity: Identity = field(default_factory=Identity)
    feature_view: FeatureView | None = None
    """The FeatureView spec.dataset.featureView names, as the operator passed it."""
    feature_store: StoreSettings = field(default_factory=StoreSettings.from_env)
    """The feature store a FeatureView dataset is joined from: KUBEFORGE_FEAST_*, as the operator sets them."""
    annotations: dict[str, str] = field(default_factory=dict)
    """The TrainingJob's annotations: intended use and limitations go into the model card."""
    attempt: int = 1
    """Which attempt of the TrainingJob this is (the operator's KUBEFORGE_ATTEMPT), for the model card."""


def run(spec: TrainingJobSpec, settings: Settings) -> dict[str, Any] | None:
    """Train and register; the result for the operator on rank 0, None on other ranks."""
    ctx = distributed.start(spec.replicas)
    try:
        return _attempt(spec, settings, ctx, time.monotonic())
    finally:
        distributed.stop(ctx)


def _attempt(spec: TrainingJobSpec, settings: Settings, ctx: Context, started: float) -> dict[str, Any] | None:
    if spec.model.framework in ESTIMATOR_FRAMEWORKS:
        return _attempt_estimator(spec, settings, started)
    hp, task = spec.model.hyperparameters, spec.model.task
    data = _load(spec, settings)
    torch.manual_seed(hp.seed)
    network = models.build(spec.model, len(data.features), len(data.classes) or 1).to(ctx.device)
    optimizer = make_optimizer(network, hp)
    store = Store(spec.checkpoint.uri) if spec.checkpoint else None
    resumed = store.latest(data.sha256) if store else None
    if resumed:
        network.load_state_dict(resumed.model)
        optimizer.load_state_dict(resumed.optimizer)
        restore_rng(resumed.rng)
    standardiser = models.Standardiser.fit(data.x_train, data.y_train, task)
    loop = Loop(network, optimizer, (data.x_train, data.y_train, data.x_val, data.y_val), standardiser, task, hp, ctx)
    first_epoch = resumed.epoch + 1 if resumed else 1
    if not ctx.is_main:
        loop.fit(first_epoch, lambda _: None)
        return None

    tags = registration.lineage_tags(spec, data, settings.identity)
    tracking.connect(settings.tracking_uri)
    experiment = mlflow.set_experiment(settings.experiment or spec.model.name)
    with mlflow.start_run(run_id=resumed.run_id if resumed else None, run_name=settings.identity.name or None) as run:
        run_id = run.info.run_id
        if resumed:
            assert spec.checkpoint is not None  # resumed from its store
            print(f"resuming run {run_id} after epoch {resumed.epoch} from {spec.checkpoint.uri}", flush=True)
        else:
            print(f"started run {run_id} in experiment {experiment.name!r}", flush=True)
            mlflow.log_params(_params(spec, data))
            mlflow.set_tags(tags)

        def on_epoch(result: EpochResult) -> None:
            print(progress_line(result), flush=True)
            values = {"train_loss": result.train_loss} | {f"val_{k}": v for k, v in result.metrics.items()}
            mlflow.log_metrics(values, step=result.epoch, synchronous=False)
            if (
                store
                and spec.checkpoint
                and (result.epoch % spec.checkpoint.every_epochs == 0 or result.epoch == result.epochs)
            ):
                # What a checkpoint resumes after must be in MLflow: a kill right after the save would
                # otherwise lose the epochs still queued, and the resumed run never logs them again.
                mlflow.flush_async_logging()
                state = Checkpoint(
                    epoch=result.epoch,
                    model=network.state_dict(),
                    optimizer=optimizer.state_dict(),
                    rng=capture_rng(),
                    run_id=run_id,
                    dataset_sha256=data.sha256,
                )
                store.save(state)

        loop.fit(first_epoch, on_epoch)
        final = loop.evaluate()
        mlflow.log_metrics(final, step=hp.epochs)
        mlflow.flush_async_logging()
        scripted = models.export(network, standardiser, task, data.x_train[:8])
        drift_baseline = baseline.compute(data.x_train, data.features)
        registered = registration.register(
            spec, run_id, scripted, len(data.classes) or 1, drift_baseline, tags | _metric_tags(final)
        )
        with torch.inference_mode():
            answers = scripted(torch.as_tensor(data.x_val, dtype=torch.float32)).numpy()
        card = _card(spec, settings, data, drift_baseline, _params(spec, data), final, answers, run_id, started)
        registration.write_card(spec.model.name, registered.version, card)
    return _result(experiment.experiment_id, run_id, registered, final)


def _metric_tags(final: dict[str, float]) -> dict[str, str]:
    """The validation metrics as version tags, so the registry shows them without opening the run."""
    return {contract.TAG_METRIC_PREFIX + k: repr(v) for k, v in final.items()}


def _result(experiment_id: str, run_id: str, registered: registration.Registered, final: dict[str, float]) -> dict:
    """What the trainer prints last for the operator: the run, the registered version and its metrics."""
    return {
        "experimentId": experiment_id,
        "runId": run_id,
        "modelVersion": registered.version,
        "modelUri": registered.model_uri,
        "metrics": final,
    }


def _card(
    spec: TrainingJobSpec,
    settings: Settings,
    data: datasets.Dataset,
    drift_baseline: contract.Baseline,
    params: dict[str, Any],
    final: dict[str, float],
    answers: np.ndarray,
    run_id: str,
    started: float,
) -> modelcard.ModelCard:
    """The model card of the version this attempt registers; answers are the contract outputs on x_val."""
    model, identity, classes = spec.model, settings.identity, [str(c) for c in data.classes]
    view = data.feature_view
    per_class = (
        modelcard.per_class(answers, data.y_val, classes) if model.task == "classification" and len(data.x_val) else []
    )
    return modelcard.ModelCard(
        model=model.name,
        task=model.task,
        framework=model.framework,
        model_class=model.estimator or model.architecture or model.entrypoint or "",
        features=modelcard.features(drift_baseline),
        classes=classes,
        dataset=modelcard.Dataset(
            uri=data.uri,
            sha256=data.sha256,
            rows=data.rows,
            train_rows=len(data.x_train),
            validation_rows=len(data.x_val),
            feature_view=view.metadata.name if view else None,
            feature_view_generation=str(view.metadata.generation or "") if view else None,
            rows_left_out=data.rows_left_out,
        ),
        hyperparameters=params,
        metrics=final,
        per_class=per_class,
        training=modelcard.Training(
            training_job=f"{identity.namespace}/{identity.name}" if identity.name else "",
            run_id=run_id,
            attempt=settings.attempt,
            seconds=round(time.monotonic() - started, 3),
            code_version=kubeforge.__version__,
        ),
        intended_use=settings.annotations.get(INTENDED_USE_ANNOTATION),
        limitations=settings.annotations.get(LIMITATIONS_ANNOTATION),
    )


def _attempt_estimator(spec: TrainingJobSpec, settings: Settings, started: float) -> dict[str, Any]:
    """Fit a scikit-learn-API estimator, export it to ONNX checked against itself, and register both."""
    task = spec.model.task
    # A bad estimator or params fails before the data is read.
    estimator = estimators.build(spec.model, spec.resources.gpus)
    data = _load(spec, settings)
    n_outputs = len(data.classes) or 1
    print(f"fitting {estimators.describe(estimator)} on {len(data.x_train)} rows", flush=True)
    estimators.fit(estimator, data.x_train, data.y_train, task, len(data.classes))
    evaluated = data.x_val if len(data.x_val) else data.x_train
    truth = data.y_val if len(data.x_val) else data.y_train
    answers = estimators.predict(estimator, evaluated, task)  # the validation rows', when there are any
    final = estimators.evaluate(answers, truth, task)
    onnx_model = estimators.to_onnx(estimator, len(data.features), task)
    estimators.check_onnx(onnx_model, estimator, evaluated, task)
    print("fitted: " + " ".join(f"val_{k}={v:.4f}" for k, v in final.items()), flush=True)

    tags = registration.lineage_tags(spec, data, settings.identity)
    tracking.connect(settings.tracking_uri)
    experiment = mlflow.set_experiment(settings.experiment or spec.model.name)
    with mlflow.start_run(run_name=settings.identity.name or None) as run:
        run_id = run.info.run_id
        print(f"started run {run_id} in experiment {experiment.name!r}", flush=True)
        params = _estimator_params(spec, data, estimator)
        mlflow.log_params(params)
        mlflow.set_tags(tags)
        mlflow.log_metrics(final, step=0)
        drift_baseline = baseline.compute(data.x_train, data.features)
        registered = registration.register_estimator(
            spec,
            run_id,
            estimator,
            onnx_model,
            n_outputs,
            drift_baseline,
            data.x_train[:5],
            tags | _metric_tags(final),
        )
        card = _card(spec, settings, data, drift_baseline, params, final, answers, run_id, started)
        registration.write_card(spec.model.name, registered.version, card)
    return _result(experiment.experiment_id, run_id, registered, final)


def _estimator_params(spec: TrainingJobSpec, data: datasets.Dataset, estimator: Any) -> dict[str, Any]:
    params = {f"param.{k}": v for k, v in estimator.get_params(deep=False).items() if not hasattr(v, "get_params")}
    return {
        "framework": spec.model.framework,
        "estimator": spec.model.estimator,
        "estimator_class": estimators.describe(estimator),
        "task": spec.model.task,
        "dataset_uri": data.uri,
        "train_rows": len(data.x_train),
        "validation_rows": len(data.x_val),
        "n_features": len(data.features),
        **{k: str(v)[:500] for k, v in params.items()},
    }


def progress_line(result: EpochResult) -> str:
    """The line users follow with kubectl logs."""
    scores = " ".join(f"val_{k}={v:.4f}" for k, v in result.metrics.items())
    return f"epoch {result.epoch}/{result.epochs} train_loss={result.train_loss:.4f} {scores} {result.seconds:.2f}s"


def _load(spec: TrainingJobSpec, settings: Settings) -> datasets.Dataset:
    """The job's data, saying in the log what a feedback data set left out: a retrain that trains on fewer rows
    than were labelled says so where its user looks."""
    data = datasets.load(spec.dataset, spec.model.task, settings.feature_view, settings.feature_store)
    if data.rows_left_out:
        print(
            f"dataset: {data.rows} labelled rows; {data.rows_left_out} more left out, answered by model versions "
            f"without one of its features ({', '.join(data.features)})",
            flush=True,
        )
    return data


def _params(spec: TrainingJobSpec, data: datasets.Dataset) -> dict[str, Any]:
    hp = spec.model.hyperparameters.model_dump()
    return {
        **hp,
        "hidden_units": ",".join(map(str, hp["hidden_units"])),
        "architecture": spec.model.architecture or spec.model.entrypoint,
        "task": spec.model.task,
        "replicas": spec.replicas,
        "dataset_uri": data.uri,
        "train_rows": len(data.x_train),
        "validation_rows": len(data.x_val),
        "n_features": len(data.features),
        **{f"arg.{k}": v for k, v in spec.model.args.items()},
    }
