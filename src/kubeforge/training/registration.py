"""Register the trained model in MLflow exactly as :mod:`kubeforge.core.modelcontract` describes.

Serving and drift monitoring read what is written here, so every name comes from the
contract module. The same TorchScript module is logged twice: as the ``mlflow.pytorch``
model (so ``mlflow.pytorch.load_model`` and pyfunc work, and log_model does not need an
input example) and as the standalone artifact the Triton exporter copies.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

import kubeforge
from kubeforge.api.trainingjob import ESTIMATOR_FRAMEWORKS, TrainingJobSpec
from kubeforge.core import modelcard
from kubeforge.core import modelcontract as contract

from .datasets import Dataset
from .models import quiet_torchscript


@dataclass(frozen=True)
class Identity:
    """The TrainingJob this run belongs to, for lineage (empty when run outside Kubernetes)."""

    namespace: str = ""
    name: str = ""
    uid: str = ""


@dataclass(frozen=True)
class Registered:
    version: str
    model_uri: str


def lineage_tags(spec: TrainingJobSpec, dataset: Dataset, identity: Identity) -> dict[str, str]:
    """Tags saying what the model is and where it came from, for the run and the model version."""
    tags = {
        contract.TAG_TASK: spec.model.task,
        contract.TAG_FRAMEWORK: spec.model.framework,
        contract.TAG_FEATURES: json.dumps(dataset.features),
        contract.TAG_DATASET_URI: dataset.uri,
        contract.TAG_DATASET_SHA256: dataset.sha256,
        contract.TAG_DATASET_ROWS: str(dataset.rows),
        contract.TAG_JOB_NAMESPACE: identity.namespace,
        contract.TAG_JOB_NAME: identity.name,
        contract.TAG_JOB_UID: identity.uid,
        contract.TAG_CODE_VERSION: kubeforge.__version__,
    }
    if spec.model.framework in ESTIMATOR_FRAMEWORKS:
        tags[contract.TAG_FORMAT] = contract.FORMAT_ONNX
    if spec.model.task == "classification":
        tags[contract.TAG_CLASSES] = json.dumps(dataset.classes)
    if dataset.rows_left_out:
        tags[contract.TAG_DATASET_ROWS_LEFT_OUT] = str(dataset.rows_left_out)
    if dataset.feature_view is not None:
        tags[contract.TAG_FEATUREVIEW] = dataset.feature_view.metadata.name or ""
        tags[contract.TAG_FEATUREVIEW_GENERATION] = str(dataset.feature_view.metadata.generation or "")
    return tags


def signature(n_features: int, n_outputs: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_features), contract.INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_outputs), contract.OUTPUT_NAME)]),
    )


def register(
    spec: TrainingJobSpec,
    run_id: str,
    scripted: torch.jit.ScriptModule,
    n_outputs: int,
    baseline: contract.Baseline,
    tags: dict[str, str],
) -> Registered:
    """Log the model and its artifacts to the active run and add a version under spec.model.name.

    A retried attempt that finds a version already registered from this run (the pod
    died after registering) returns that version instead of adding a duplicate.
    """
    name = spec.model.name
    client = MlflowClient()
    version = _registered_from(client, name, run_id)
    if version is None:
        with quiet_torchscript():
            _log_artifacts(scripted, baseline)
            model_uri = log_torchscript(scripted, len(baseline.features), n_outputs)
        version = mlflow.register_model(model_uri, name, tags={**tags, **spec.registration.tags}).version
    return _aliased(client, spec, version)


def log_torchscript(scripted: torch.jit.ScriptModule, n_features: int, n_outputs: int) -> str:
    """Log scripted as the active run's mlflow.pytorch model with the contract's signature; its model URI."""
    # "pickle" is how mlflow.pytorch names its torch.jit.save path for a ScriptModule.
    info = mlflow.pytorch.log_model(
        scripted,
        name=contract.MODEL_ARTIFACT_PATH,
        signature=signature(n_features, n_outputs),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        serialization_format="pickle",
    )
    return info.model_uri


def register_estimator(
    spec: TrainingJobSpec,
    run_id: str,
    estimator: Any,
    onnx_model: bytes,
    n_outputs: int,
    baseline: contract.Baseline,
    example: np.ndarray,
    tags: dict[str, str],
) -> Registered:
    """Log a fitted estimator in its framework's MLflow flavour, with its ONNX export and baseline, to the active
    run and add a version under spec.model.name; retries as register.

    No flavour pickles: scikit-learn and LightGBM models are written with skops, XGBoost
    models in XGBoost's own UBJSON format.
    """
    name = spec.model.name
    client = MlflowClient()
    version = _registered_from(client, name, run_id)
    if version is None:
        with tempfile.TemporaryDirectory() as tmp:
            log_file(Path(tmp), contract.ONNX_ARTIFACT, onnx_model)
            log_file(Path(tmp), contract.BASELINE_ARTIFACT, baseline.model_dump_json().encode())
        info = log_estimator(
            spec.model.framework,
            estimator,
            name=contract.MODEL_ARTIFACT_PATH,
            signature=signature(len(baseline.features), n_outputs),
            input_example=np.ascontiguousarray(example, dtype=np.float32),
            classifier=spec.model.task == "classification",
        )
        version = mlflow.register_model(info.model_uri, name, tags={**tags, **spec.registration.tags}).version
    return _aliased(client, spec, version)


def log_estimator(framework: str, estimator: Any, classifier: bool, **common: Any) -> Any:
    """mlflow.<framework>.log_model with the requirements the flavour's pyfunc needs to load it."""
    import sklearn

    requirements = [f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"]
    if framework == "xgboost":
        import mlflow.xgboost
        import xgboost

        return mlflow.xgboost.log_model(
            estimator, pip_requirements=[f"xgboost=={xgboost.__version__}", *requirements], **common
        )
    skops = {"serialization_format": "skops", "skops_trusted_types": _skops_trusted(estimator)}
    if framework == "lightgbm":
        import lightgbm
        import mlflow.lightgbm

        return mlflow.lightgbm.log_model(
            estimator, pip_requirements=[f"lightgbm=={lightgbm.__version__}", *requirements], **skops, **common
        )
    import mlflow.sklearn

    return mlflow.sklearn.log_model(
        estimator,
        pip_requirements=requirements,
        pyfunc_predict_fn="predict_proba" if classifier else "predict",
        **skops,
        **common,
    )


def write_card(name: str, version: str, card: modelcard.ModelCard, preface: str | None = None) -> None:
    """Log the version's model card to the active run (JSON and Markdown) and make the Markdown, after preface if
    given, the version's description, which the MLflow UI shows on the version's page. Written again by a retried
    attempt."""
    card = card.model_copy(update={"version": version})
    text = modelcard.markdown(card)
    with tempfile.TemporaryDirectory() as tmp:
        log_file(Path(tmp), modelcard.CARD_JSON, card.model_dump_json(indent=2).encode())
        log_file(Path(tmp), modelcard.CARD_MARKDOWN, text.encode())
    MlflowClient().update_model_version(name, version, description=f"{preface}\n\n{text}" if preface else text)


def _skops_trusted(estimator: Any) -> list[str]:
    """Types in estimator's skops file that skops does not trust by default: the trainer wrote them itself."""
    import skops.io

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.skops"
        skops.io.dump(estimator, path)
        return skops.io.get_untrusted_types(file=path)


def _registered_from(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The newest version of name that run_id registered: a retried attempt whose pod died after registering."""
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(existing, key=lambda v: int(v.version)).version if existing else None


def _aliased(client: MlflowClient, spec: TrainingJobSpec, version: str) -> Registered:
    name = spec.model.name
    if spec.registration.alias:
        client.set_registered_model_alias(name, spec.registration.alias, version)
    return Registered(version=str(version), model_uri=f"models:/{name}/{version}")


def log_file(tmp: Path, artifact: str, data: bytes) -> None:
    local = tmp / artifact
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    mlflow.log_artifact(str(local), artifact_path=posixpath.dirname(artifact) or None)


def _log_artifacts(scripted: torch.jit.ScriptModule, baseline: contract.Baseline) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in (contract.TORCHSCRIPT_ARTIFACT, contract.BASELINE_ARTIFACT):
            local = Path(tmp) / artifact
            local.parent.mkdir(parents=True, exist_ok=True)
            if artifact == contract.TORCHSCRIPT_ARTIFACT:
                torch.jit.save(scripted, str(local))
            else:
                local.write_text(baseline.model_dump_json())
            mlflow.log_artifact(str(local), artifact_path=posixpath.dirname(artifact) or None)
