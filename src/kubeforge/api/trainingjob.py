"""TrainingJob: train a model on a dataset and register the result in MLflow.

Shaped after Kubeflow Trainer's TrainJob and batch/v1 Job: the run-control fields
(backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished, suspend) mean what they
mean on a Job, and the operator maps them onto the Job it creates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, WithJsonSchema, model_validator

from .meta import (
    ColumnName,
    Conditions,
    CRDInfo,
    FailureInfo,
    KubeModel,
    PrinterColumn,
    Quantity,
    RegistryName,
    Resource,
    SecretKeyRef,
    Toleration,
    UniqueNames,
    age_column,
    exactly_one_of,
    ready_column,
    reason_column,
)

Architecture = Literal["logistic", "mlp"]
Framework = Literal["torch", "sklearn", "xgboost", "lightgbm"]
# Frameworks whose model is a scikit-learn-API estimator named by spec.model.estimator, served as ONNX.
ESTIMATOR_FRAMEWORKS = ("sklearn", "xgboost", "lightgbm")
Task = Literal["classification", "regression"]
DatasetFormat = Literal["csv", "json", "jsonl", "parquet"]
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# A scikit-learn estimator class name, or a user "module:factory".
ESTIMATOR_PATTERN = r"^([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:)?[A-Za-z_][A-Za-z0-9_]*$"
MAX_PARAMS = 64
# TrainingJob annotations that go into the model card of every version the TrainingJob registers.
INTENDED_USE_ANNOTATION = "kubeforge.dev/intended-use"
LIMITATIONS_ANNOTATION = "kubeforge.dev/limitations"
# Labels of a TrainingJob a ModelDeployment's spec.retrain created: the ModelDeployment, and the trigger that fired.
RETRAIN_OF_LABEL = "kubeforge.dev/retrain-of"
RETRAIN_TRIGGER_LABEL = "kubeforge.dev/retrain-trigger"
# The label Kueue reads on a Job to queue it (spec.queueName).
QUEUE_NAME_LABEL = "kueue.x-k8s.io/queue-name"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Scalar = bool | int | float | Annotated[str, Field(max_length=1024)] | None
ParamValue = Scalar | Annotated[list[Scalar], Field(max_length=256)]
# The API server keeps params as given (values of several types have no structural schema); pydantic checks them.
Params = Annotated[
    dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)], ParamValue],
    Field(max_length=MAX_PARAMS),
    WithJsonSchema({"type": "object", "maxProperties": MAX_PARAMS}),
]


class Hyperparameters(KubeModel):
    """Settings of the training loop and of the built-in architectures."""

    epochs: Annotated[int, Field(ge=1, le=100000)] = 20
    """Passes over the training split."""
    batch_size: Annotated[int, Field(ge=1, le=1048576)] = 64
    """Examples per optimizer step (per replica when replicas > 1)."""
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.001
    """Optimizer step size."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimizer: adam, adamw or sgd (with momentum 0.9)."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """L2 penalty applied by the optimizer."""
    hidden_units: Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(max_length=16)] = [64, 64]
    """Widths of the hidden layers of the mlp architecture (ignored by logistic)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout probability after each hidden layer of the mlp architecture."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    """Seed for weight initialisation and shuffling, so a run can be repeated."""


class ModelSpec(KubeModel):
    """What to train and the registered model name the result is stored under."""

    model_config = exactly_one_of("architecture", "entrypoint", "estimator")

    name: RegistryName
    """Registered model name in MLflow; each successful run adds a version to it."""
    framework: Framework = "torch"
    """torch (architecture or entrypoint, trained with the torch loop and served as TorchScript); sklearn, xgboost
    or lightgbm (estimator, fitted through the scikit-learn API and served as ONNX, checked against the original
    at training time)."""
    architecture: Architecture | None = None
    """torch: built-in architecture, logistic (softmax/linear regression) or mlp. Set this or entrypoint."""
    entrypoint: Annotated[str, Field(pattern=ENTRYPOINT_PATTERN, max_length=512)] | None = None
    """torch: a user model as "module:factory"; factory(n_features, n_outputs, **args) returns a torch.nn.Module.
    Set this or architecture."""
    args: dict[str, str] = Field(default_factory=dict)
    """torch: keyword arguments passed to the entrypoint factory, as strings."""
    estimator: Annotated[str, Field(pattern=ESTIMATOR_PATTERN, max_length=512)] | None = None
    """sklearn, xgboost, lightgbm: the estimator class (sklearn: GradientBoostingClassifier, RandomForestRegressor,
    LogisticRegression, ...; xgboost: XGBClassifier, XGBRegressor, XGBRFClassifier, XGBRFRegressor; lightgbm:
    LGBMClassifier, LGBMRegressor: a classifier for task classification, a regressor for regression), or a user
    "module:factory" where factory(**params) returns an unfitted estimator with the scikit-learn API. Required
    with those frameworks, not allowed with torch."""
    params: Params = Field(default_factory=dict)
    """sklearn, xgboost, lightgbm: estimator parameters (numbers, strings, booleans, null, or lists of them), e.g.
    n_estimators: 200; passed to the estimator class, or as keyword arguments to the factory. random_state
    defaults to hyperparameters.seed where the estimator has one."""
    task: Task = "classification"
    """classification (probabilities over classes, accuracy/F1 reported) or regression (values, RMSE/R2
    reported)."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """torch: training loop and architecture settings (the estimator frameworks use only seed)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.framework in ESTIMATOR_FRAMEWORKS:
            if self.architecture is not None or self.entrypoint is not None or self.args:
                raise ValueError(
                    "spec.model.architecture, entrypoint and args are for framework torch; "
                    f"with framework {self.framework} set spec.model.estimator (and params)"
                )
            if self.estimator is None:
                example = {"sklearn": "GradientBoostingClassifier", "xgboost": "XGBClassifier"}.get(
                    self.framework, "LGBMClassifier"
                )
                raise ValueError(f"framework {self.framework} needs spec.model.estimator, e.g. {example}")
            return self
        if self.estimator is not None or self.params:
            raise ValueError(
                "spec.model.estimator and params are for frameworks sklearn, xgboost and lightgbm, not torch; "
                "set spec.model.framework"
            )
        if (self.architecture is None) == (self.entrypoint is None):
            raise ValueError("set exactly one of spec.model.architecture or spec.model.entrypoint")
        return self


class FeatureViewSource(KubeModel):
    """Training data built by a point-in-time join against a FeatureView: each entity row gets the newest value of
    each feature at or before its event_timestamp (within the view's ttl), never a later one."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
    """Name of the FeatureView in the TrainingJob's namespace; training starts once its generation is registered."""
    entities_uri: Annotated[str, Field(min_length=1, max_length=2048)]
    """Entity rows to join the features onto, as a file or directory like uri: the view's join keys, event_timestamp
    (when the label was observed) and the target column. A row that gets no value for a feature fails the job,
    naming the row."""


class DatasetSpec(KubeModel):
    """Where the training data comes from and which columns mean what."""

    model_config = exactly_one_of("uri", "featureView")

    uri: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    """File or directory of files: a local path or an fsspec URI (s3://, gs://, file://). Set this or featureView."""
    format: DatasetFormat | None = None
    """csv, json, jsonl or parquet; taken from the file extension when omitted."""
    feature_view: FeatureViewSource | None = None
    """Build the dataset from a FeatureView with a point-in-time join. Set this or uri."""
    target: ColumnName
    """Column holding the label (classification) or value (regression) to predict."""
    features: UniqueNames | None = None
    """Feature columns, in the order the model takes them; all columns but the target when omitted (with
    featureView: features of the view, all of them in the view's order when omitted)."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a bearer token the trainer sends when it reads an http(s) uri: a gateway's feedback data
    set behind spec.auth, or a data service of your own."""
    validation_split: Annotated[float, Field(ge=0, le=0.9)] = 0.2
    """Fraction of rows held out for validation metrics."""
    split_seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the train/validation split."""

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.uri is None) == (self.feature_view is None):
            raise ValueError("set exactly one of spec.dataset.uri or spec.dataset.featureView")
        return self


class Resources(KubeModel):
    """Compute for each training replica."""

    cpu: Quantity = "1"
    """CPU request and limit per replica, e.g. 2 or 500m."""
    memory: Quantity = "2Gi"
    """Memory request and limit per replica, e.g. 4Gi."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    """NVIDIA GPUs per replica (nvidia.com/gpu); training uses CUDA when > 0."""


class CheckpointSpec(KubeModel):
    """Periodic checkpoints, so a restarted attempt resumes instead of starting over."""

    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    """Directory (local path or fsspec URI) to write checkpoints to and resume from."""
    every_epochs: Annotated[int, Field(ge=1, le=100000)] = 1
    """Write a checkpoint every this many epochs."""


class RegisterSpec(KubeModel):
    """How the trained model version is labelled in the MLflow registry."""

    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=255)] | None = None
    """Alias to point at the new version (e.g. candidate); a ModelDeployment can follow it."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra tags on the model version, next to the lineage tags kubeforge writes."""


class TrainingJobSpec(KubeModel):
    """Desired state of a TrainingJob."""

    model: ModelSpec
    """Model to train and the registered name it is stored under."""
    dataset: DatasetSpec
    """Training data and its columns."""
    resources: Resources = Field(default_factory=Resources)
    """Compute per replica."""
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    """Training processes; more than 1 runs torch DistributedDataParallel (gloo on CPU, nccl on GPU). The
    estimator frameworks (sklearn, xgboost, lightgbm) train in one process: 1."""
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Trainer container image; the operator's default when omitted."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Retries before the TrainingJob is marked Failed; counted on the TrainingJob, across Job deletions."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Wall-clock limit for the whole TrainingJob, retries included."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """Delete the finished Job (not the TrainingJob) this long after it ends."""
    suspend: bool = False
    """Pause: running pods are stopped and nothing starts until set back to false."""
    checkpoint: CheckpointSpec | None = None
    """Checkpoint and resume; without it a retry starts from epoch 1. Framework torch only."""
    registration: RegisterSpec = Field(default_factory=RegisterSpec, alias="register")
    """Registry alias and tags for the resulting model version."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the training pods must be scheduled on."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Tolerations of the training pods (e.g. for tainted GPU nodes)."""
    priority_class_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] | None = None
    """PriorityClass of the training pods: the scheduler (and a quota system such as Kueue) orders and preempts
    work by it, e.g. interactive training over batch retrains."""
    queue_name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = None
    """Kueue LocalQueue in the TrainingJob's namespace: each attempt's Job is created suspended with the label
    kueue.x-k8s.io/queue-name, and starts when Kueue admits it under the queue's quota; until then the
    TrainingJob is Pending with reason Queued. Needs Job suspend (Kubernetes 1.21+)."""

    @model_validator(mode="after")
    def _framework_fits(self) -> TrainingJobSpec:
        framework = self.model.framework
        if framework not in ESTIMATOR_FRAMEWORKS:
            return self
        if self.replicas != 1:
            raise ValueError(f"spec.replicas: framework {framework} trains in one process; set 1, not {self.replicas}")
        if self.checkpoint is not None:
            raise ValueError(
                f"spec.checkpoint: framework {framework} fits in one call and has no epochs to resume; omit it"
            )
        if self.resources.gpus and framework != "xgboost":
            raise ValueError(
                f"spec.resources.gpus: framework {framework} trains on CPU; set 0 (xgboost can use one GPU)"
            )
        if self.resources.gpus > 1:
            raise ValueError(f"spec.resources.gpus: xgboost trains on one GPU; set 1, not {self.resources.gpus}")
        return self


TrainingPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class MLflowRef(KubeModel):
    """Where the run and the registered model version live in MLflow."""

    experiment_id: str | None = None
    """MLflow experiment id."""
    run_id: str | None = None
    """MLflow run that trained the model."""
    model_version: str | None = None
    """Registered model version created by the run."""
    model_uri: str | None = None
    """URI that loads the version, models:/<name>/<version>."""


class TrainedOn(KubeModel):
    """The data set the registered version was trained on, as the trainer recorded it on the version."""

    uri: str | None = None
    """Where it was read: spec.dataset.uri, or the entity file of a FeatureView."""
    sha256: str | None = None
    """SHA-256 of what was read: two TrainingJobs with the same value trained on the same data."""
    rows: Annotated[int, Field(ge=0)] | None = None
    """Labelled rows read, training and validation together."""
    rows_left_out: Annotated[int, Field(ge=0)] | None = None
    """Labelled rows a feedback data set left out, answered by model versions without one of its features; absent
    when none were."""


class TrainingJobStatus(KubeModel):
    """Observed state of a TrainingJob, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this status describes."""
    phase: TrainingPhase | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    conditions: Conditions = Field(default_factory=list)
    """Ready, Running, Succeeded, Failed, Suspended."""
    attempts: Annotated[int, Field(ge=0)] = 0
    """Attempts started so far, retries included."""
    job_name: str | None = None
    """Name of the batch/v1 Job running the current attempt."""
    start_time: datetime | None = None
    """When the first attempt started."""
    completion_time: datetime | None = None
    """When the TrainingJob succeeded or failed for good."""
    mlflow: MLflowRef | None = None
    """MLflow run and model version produced."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Final validation metrics, e.g. accuracy, f1, rmse."""
    dataset: TrainedOn | None = None
    """The data set the registered version was trained on."""
    last_failure: FailureInfo | None = None
    """Why the last attempt's trainer pod failed or does not run (container, reason, exit code, the telling line
    of its log), kept after a retry or recovery for reference."""


class TrainingJob(Resource):
    """Trains a model on a dataset and registers it in MLflow with its lineage."""

    crd: ClassVar[CRDInfo] = CRDInfo(
        plural="trainingjobs",
        short_names=("tj",),
        printer_columns=(
            PrinterColumn("Model", ".spec.model.name", description="Registered model name"),
            PrinterColumn("Phase", ".status.phase", description="Pending, Running, Succeeded, Failed or Suspended"),
            ready_column(),
            PrinterColumn("Version", ".status.mlflow.modelVersion", description="Registered model version"),
            PrinterColumn("Attempts", ".status.attempts", "integer", "Attempts started"),
            reason_column(),
            age_column(),
        ),
    )

    kind: Literal["TrainingJob"] = "TrainingJob"
    spec: TrainingJobSpec
    """Desired state."""
    status: TrainingJobStatus | None = None
    """Observed state, written by the operator."""


__all__ = ["TrainingJob", "TrainingJobSpec", "TrainingJobStatus"]
