"""What a kubeforge model version in MLflow contains: the contract between trainer and serving.

The trainer writes it, the Triton exporter and the drift monitor read it. Keeping the
names here means neither side guesses the other's layout.

A registered model version (``models:/<name>/<version>``) is an MLflow model logged by
the trainer's run under :data:`MODEL_ARTIFACT_PATH` with the flavour of its framework
(``mlflow.pytorch`` for torch; ``mlflow.sklearn``, ``mlflow.xgboost`` or ``mlflow.lightgbm``
for the estimator frameworks) and a tensor signature. Next to it, in the same run, the
trainer logs the serving artifact, one of:

- :data:`TORCHSCRIPT_ARTIFACT` (torch) — ``torch.jit.save`` of the model *including* its
  input normalisation, taking raw features ``float32 [batch, n_features]`` and returning
  ``float32 [batch, n_outputs]`` (class probabilities, or the predicted value);
- :data:`ONNX_ARTIFACT` (scikit-learn) — the same contract as an ONNX graph with input
  :data:`INPUT_NAME` and output :data:`OUTPUT_NAME`, checked at training time to match
  the original model on the validation rows;

and, for every framework:

- :data:`BASELINE_ARTIFACT` — per-feature histograms of the training data, what drift
  detection compares live inputs against (see :class:`Baseline`).

Tags on the model version carry the task and the lineage (:data:`TAG_PREFIX` + name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

MODEL_ARTIFACT_PATH = "model"
TORCHSCRIPT_ARTIFACT = "kubeforge/model.torchscript.pt"
ONNX_ARTIFACT = "kubeforge/model.onnx"
BASELINE_ARTIFACT = "kubeforge/baseline.json"

# Tensor names in the MLflow signature and in the Triton model config.
INPUT_NAME = "features"
OUTPUT_NAME = "outputs"

TAG_PREFIX = "kubeforge."
TAG_TASK = TAG_PREFIX + "task"  # "classification" | "regression"
TAG_FEATURES = TAG_PREFIX + "features"  # JSON list of feature names, in input order
TAG_CLASSES = TAG_PREFIX + "classes"  # JSON list of class labels (classification), in output order
TAG_DATASET_URI = TAG_PREFIX + "dataset.uri"
TAG_DATASET_SHA256 = TAG_PREFIX + "dataset.sha256"
TAG_DATASET_ROWS = TAG_PREFIX + "dataset.rows"
# Labelled rows a gateway's feedback data set left out (answered by versions without one of its features); absent: 0.
TAG_DATASET_ROWS_LEFT_OUT = TAG_PREFIX + "dataset.leftout"
# A version brought in by `kubeforge model import` rather than trained: the file's name and the sha256 of its bytes
# (TAG_FRAMEWORK is "onnx" for an ONNX graph), and the data its drift baseline was computed from, when given. It has
# no dataset, job or metric tags: what it was trained on is not known.
TAG_IMPORTED_FILE = TAG_PREFIX + "imported.file"
TAG_IMPORTED_SHA256 = TAG_PREFIX + "imported.sha256"
TAG_REFERENCE_URI = TAG_PREFIX + "reference.uri"
TAG_REFERENCE_SHA256 = TAG_PREFIX + "reference.sha256"
TAG_REFERENCE_ROWS = TAG_PREFIX + "reference.rows"
# A model trained on a FeatureView: its name and metadata.generation (the spec the features were joined from);
# TAG_FEATURES holds the features in input order and TAG_DATASET_URI the entity file.
TAG_FEATUREVIEW = TAG_PREFIX + "featureview.name"
TAG_FEATUREVIEW_GENERATION = TAG_PREFIX + "featureview.generation"
TAG_JOB_NAMESPACE = TAG_PREFIX + "trainingjob.namespace"
TAG_JOB_NAME = TAG_PREFIX + "trainingjob.name"
TAG_JOB_UID = TAG_PREFIX + "trainingjob.uid"
TAG_CODE_VERSION = TAG_PREFIX + "code.version"
TAG_METRIC_PREFIX = TAG_PREFIX + "metric."  # + metric name, e.g. kubeforge.metric.accuracy
# "torch" | "sklearn" | "xgboost" | "lightgbm"; absent on versions from before it existed: torch.
TAG_FRAMEWORK = TAG_PREFIX + "framework"
# Which serving artifact the version's run holds: FORMAT_TORCHSCRIPT (TORCHSCRIPT_ARTIFACT, also when the tag is
# absent) or FORMAT_ONNX (ONNX_ARTIFACT).
TAG_FORMAT = TAG_PREFIX + "format"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_ONNX = "onnx"

Task = Literal["classification", "regression"]
ModelFormat = Literal["torchscript", "onnx"]


def model_format(tags: dict[str, str]) -> ModelFormat:
    """The serving artifact a model version's tags say its run holds (TorchScript when they say nothing)."""
    return "onnx" if tags.get(TAG_FORMAT) == FORMAT_ONNX else "torchscript"


def trained_on(tags: Mapping[str, str]) -> dict[str, Any]:
    """The data a version learned from, as its tags say: uri, sha256, rows and, for a feedback data set, the labelled
    rows it left out (rowsLeftOut); for an imported model, the data its drift baseline came from. What no tag says,
    or a count that is not one, is left out. One reading for the TrainingJob's status.dataset and `kubeforge
    lineage`."""
    found: dict[str, Any] = {
        "uri": tags.get(TAG_DATASET_URI) or tags.get(TAG_REFERENCE_URI),
        "sha256": tags.get(TAG_DATASET_SHA256) or tags.get(TAG_REFERENCE_SHA256),
    }
    rows = tags.get(TAG_DATASET_ROWS) or tags.get(TAG_REFERENCE_ROWS)
    for key, count in (("rows", rows), ("rowsLeftOut", tags.get(TAG_DATASET_ROWS_LEFT_OUT))):
        found[key] = int(count) if count and count.isdigit() else None
    return {k: v for k, v in found.items() if v is not None}


def serving_artifact(fmt: ModelFormat) -> str:
    """Path, in the version's run, of the artifact Triton serves for fmt."""
    return ONNX_ARTIFACT if fmt == "onnx" else TORCHSCRIPT_ARTIFACT


class FeatureHistogram(BaseModel):
    """Histogram of one feature over the training data (fixed bin edges, counts per bin)."""

    name: str
    edges: list[float] = Field(description="Bin edges, len(counts) + 1 of them, increasing")
    counts: list[int] = Field(description="Training rows per bin")
    mean: float
    std: float


class Baseline(BaseModel):
    """Drift baseline of a model version."""

    rows: int
    features: list[FeatureHistogram]
