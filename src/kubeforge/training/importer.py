"""Bring your own model: check a model file against the model contract and register it as a model version.

``kubeforge model import`` takes a model trained elsewhere: an ONNX graph, a TorchScript
module, or a scikit-learn-API estimator (scikit-learn, XGBoost, LightGBM) saved with skops
or joblib/pickle. The format is read from the file's content, and an extension that claims
another is refused. Every check runs before MLflow is written to, so a refused file leaves
no run and no version behind:

- ONNX: parsed and checked (``onnx.checker``). Its one input must be a float tensor
  ``[batch, n]``; its answer is the one float output (for a classifier the probabilities,
  also behind skl2onnx's ZipMap). The graph is wrapped to the contract's names (input
  :data:`~kubeforge.core.modelcontract.INPUT_NAME`, output
  :data:`~kubeforge.core.modelcontract.OUTPUT_NAME`, float32), pruned to that answer, and
  registered with MLflow's onnx flavour.
- TorchScript: ``torch.jit.load`` (no Python objects unpickled), registered as the trainer
  registers a torch model.
- skops: loaded with the types skops trusts, others only with ``--trust``; joblib/pickle:
  loading one runs whatever code the file names, so only with ``--trust``. The estimator
  is then exported to ONNX and checked against itself, and registered as the trainer
  registers an estimator (its framework's MLflow flavour, written without pickle).

Each model is run on zeros ``[2, n]`` and on the reference data, when given, and must
answer ``[rows, classes]`` probabilities summing to 1 (classification) or ``[rows, 1]``
(regression). The drift baseline is computed from the reference data as the trainer
computes it from training data. The version carries the tags of a trained one (task,
framework, format, features, classes) plus the imported file's name and sha256, and a model
card of what was checked (:meth:`Checked.card`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

import kubeforge
from kubeforge.api.meta import REGISTRY_NAME_PATTERN
from kubeforge.api.trainingjob import Task
from kubeforge.core import modelcard
from kubeforge.core import modelcontract as contract

from . import baseline as baselines
from . import datasets
from .errors import TrainerError

if TYPE_CHECKING:
    import onnx

Kind = Literal["onnx", "torchscript", "skops", "pickle", "torch-pickle"]

# What a file's extension claims it holds.
CLAIMS: dict[str, Kind] = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".torchscript": "torchscript",
    ".skops": "skops",
    ".joblib": "pickle",
    ".pkl": "pickle",
    ".pickle": "pickle",
}
WHAT: dict[Kind, str] = {
    "onnx": "an ONNX model",
    "torchscript": "a TorchScript module",
    "skops": "a skops file",
    "pickle": "a joblib/pickle file",
    "torch-pickle": "a torch.save file (a pickled model object or state_dict, not TorchScript)",
}
# How the compressed files joblib writes begin: zlib, gzip, bz2, xz, lzma.
_COMPRESSED = (
    b"\x78\x01",
    b"\x78\x5e",
    b"\x78\x9c",
    b"\x78\xda",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x5d\x00\x00",
)
# Rows of the reference data the model is run on (the baseline takes all of them).
CHECKED_ROWS = 10_000
# How far a row of probabilities may sum from 1.
PROBABILITY_TOLERANCE = 1e-3

PICKLE_REFUSED = (
    "loading a pickle runs whatever code the file names, so kubeforge loads one only with --trust, for a file from "
    "a source you trust. Better: export the model to ONNX (skl2onnx, torch.onnx.export) or save it with skops "
    "(skops.io.dump), which load without running code"
)


@dataclass(frozen=True)
class Request:
    """What `kubeforge model import` was asked to do."""

    name: str
    file: Path
    task: Task
    features: list[str] | None = None
    classes: list[str] | None = None
    reference_data: str | None = None
    trust: bool = False
    alias: str | None = None
    description: str | None = None
    intended_use: str | None = None
    limitations: str | None = None


@dataclass(frozen=True)
class Checked:
    """A model file that passed every check, with everything its version is registered with."""

    request: Request
    kind: Kind
    model: _Model
    sha256: str
    features: list[str]
    classes: list[Any]
    n_outputs: int
    baseline: contract.Baseline | None
    reference: tuple[str, str, int] | None
    """(uri, sha256, rows) of the reference data."""

    @property
    def tags(self) -> dict[str, str]:
        """The version's tags: those a trained version of the framework gets, and where the file came from."""
        tags = {
            contract.TAG_TASK: self.request.task,
            contract.TAG_FRAMEWORK: self.model.framework,
            contract.TAG_FEATURES: json.dumps(self.features),
            contract.TAG_CODE_VERSION: kubeforge.__version__,
            contract.TAG_IMPORTED_FILE: self.request.file.name,
            contract.TAG_IMPORTED_SHA256: self.sha256,
        }
        if self.model.model_format == "onnx":
            tags[contract.TAG_FORMAT] = contract.FORMAT_ONNX
        if self.request.task == "classification":
            tags[contract.TAG_CLASSES] = json.dumps(self.classes)
        if self.reference is not None:
            uri, sha256, rows = self.reference
            tags |= {contract.TAG_REFERENCE_URI: uri, contract.TAG_REFERENCE_SHA256: sha256}
            tags[contract.TAG_REFERENCE_ROWS] = str(rows)
        return tags

    def card(self) -> modelcard.ModelCard:
        """The version's model card: the file, the reference data and its statistics; no training, no metrics."""
        request, reference = self.request, None
        if self.reference is not None:
            uri, sha256, rows = self.reference
            reference = modelcard.Dataset(uri=uri, sha256=sha256, rows=rows, train_rows=0, validation_rows=0)
        return modelcard.ModelCard(
            model=request.name,
            task=request.task,
            framework=self.model.framework,
            model_class=self.model.model_class,
            features=(
                modelcard.features(self.baseline)
                if self.baseline is not None
                else [modelcard.FeatureSummary(name=name) for name in self.features]
            ),
            classes=[str(c) for c in self.classes],
            imported=modelcard.Origin(
                file=request.file.name, sha256=self.sha256, format=WHAT[self.kind], reference_data=reference
            ),
            intended_use=request.intended_use,
            limitations=request.limitations,
        )


@dataclass(frozen=True)
class Imported:
    """The registered version."""

    name: str
    version: str
    model_uri: str
    run_id: str


def check(request: Request, say: Callable[[str], None]) -> Checked:
    """Read, inspect and run the model file; TrainerError naming the option and the fix at the first problem."""
    _check_names(request)
    path = request.file
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise TrainerError(f"--file: {path} {what}; pass the model file (.onnx, .pt TorchScript, .skops or .joblib)")
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    kind = _kind(path, data)
    model = _load(kind, path, data, request)
    say(f"{path.name}: {model.described} (sha256 {sha256[:12]}...)")

    reference_file = _reference_file(request)
    columns = None if reference_file is None else [str(c) for c in reference_file[0].columns]
    features = _features(request, model, columns, say)
    model.prepare(len(features))
    zeros = np.zeros((2, len(features)), dtype=np.float32)
    try:
        out = model.predict(zeros)
    except TrainerError:
        raise
    except Exception as err:
        if model.width is not None:  # the file says it takes this many: the fault is the model's
            raise TrainerError(
                f"--file {path.name}: it fails on zeros [2, {model.width}] ({_last_line(err)})"
            ) from None
        raise TrainerError(
            f"--features: {path.name} does not run on {len(features)} features ({_last_line(err)}); "
            "pass the names of the features it takes, in its input order"
        ) from None
    n_outputs = _check_answers(out, len(zeros), request, f"zeros [2, {len(features)}]", finite=False)
    classes = _classes(request, model, n_outputs)
    what = f"{n_outputs} class probabilities per row" if request.task == "classification" else "one value per row"
    say(f"runs on zeros [2, {len(features)}]: {what}")

    reference = baseline = None
    if reference_file is not None:
        assert request.reference_data is not None
        rows, reference = _reference_rows(*reference_file, features, request.reference_data)
        checked = rows[:CHECKED_ROWS]
        try:
            answers = model.predict(checked)
        except TrainerError:
            raise
        except Exception as err:
            raise TrainerError(f"--reference-data: {path.name} fails on its rows ({_last_line(err)})") from None
        _check_answers(answers, len(checked), request, f"the rows of --reference-data {request.reference_data}")
        model.check_against(checked)
        baseline = baselines.compute(rows, features)
        say(f"runs on {len(checked)} reference rows; drift baseline of {len(features)} features from {len(rows)} rows")
    else:
        model.check_against(zeros)
        say("no --reference-data: registered without a drift baseline (drift is not monitored for this version)")
    return Checked(request, kind, model, sha256, features, classes, n_outputs, baseline, reference)


def register(checked: Checked, tracking_uri: str, say: Callable[[str], None]) -> Imported:
    """Log the checked model to a new run and register it under request.name, as the trainer registers a version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from . import registration, tracking

    request, model = checked.request, checked.model
    _reachable(tracking_uri)
    tracking.connect(tracking_uri)
    experiment = mlflow.set_experiment(request.name)
    tags = checked.tags
    with mlflow.start_run(run_name=f"import {request.file.name}") as run:
        say(f"started run {run.info.run_id} in experiment {experiment.name!r}")
        mlflow.log_params(
            {
                "imported_file": request.file.name,
                "imported_kind": checked.kind,
                "task": request.task,
                "n_features": len(checked.features),
                "reference_data": request.reference_data or "",
            }
        )
        mlflow.set_tags(tags)
        with tempfile.TemporaryDirectory() as tmp:
            registration.log_file(Path(tmp), contract.serving_artifact(model.model_format), model.artifact())
            if checked.baseline is not None:
                baseline = checked.baseline.model_dump_json().encode()
                registration.log_file(Path(tmp), contract.BASELINE_ARTIFACT, baseline)
        model_uri = model.log_model(len(checked.features), checked.n_outputs, request.task)
        version = str(mlflow.register_model(model_uri, request.name, tags=tags).version)
        # The description given goes above the card, which the MLflow UI shows as the rest of it.
        registration.write_card(request.name, version, checked.card(), request.description)
    client = MlflowClient()
    if request.alias:
        client.set_registered_model_alias(request.name, request.alias, version)
    return Imported(request.name, version, f"models:/{request.name}/{version}", run.info.run_id)


class _Model:
    """A loaded model file: what it says about its inputs and how it answers."""

    framework: str
    model_format: contract.ModelFormat
    described: str
    model_class: str
    """What the model is, for its card: the estimator's class, or the kind of graph and who made it."""
    width: int | None = None
    """How many features it takes, when the file says."""
    names: list[str] | None = None
    """The feature names it was fitted on, when the file says."""
    classes: list[Any] | None = None
    """Its class labels, in output order, when the file says."""

    def prepare(self, n_features: int) -> None:
        """Get ready to answer rows of n_features (the estimators export themselves to ONNX)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """What the served model answers for x (float32 [rows, n_features])."""
        raise NotImplementedError

    def check_against(self, x: np.ndarray) -> None:
        """Refuse when what is served differs from the original model on x (nothing to compare for most)."""

    def artifact(self) -> bytes:
        """The serving artifact: TorchScript or ONNX under the contract's names."""
        raise NotImplementedError

    def log_model(self, n_features: int, n_outputs: int, task: Task) -> str:
        """Log the MLflow model to the active run; its model URI."""
        raise NotImplementedError


class _Onnx(_Model):
    framework = "onnx"
    model_format = "onnx"

    def __init__(self, model: onnx.ModelProto, label: str, task: Task):
        import onnx

        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as err:
            raise TrainerError(f"--file {label}: the ONNX checker refuses the model ({_last_line(err)})") from None
        producer = " ".join(p for p in (model.producer_name, model.producer_version) if p) or "unknown producer"
        self.wrapped, self.width, notes = _contract_graph(model, label, task)
        self.classes = _onnx_classes(model.graph)
        self.described = f"ONNX model ({producer}); " + "; ".join(notes)
        self.model_class = f"ONNX graph from {producer}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        from .estimators import run_onnx

        return run_onnx(self.artifact(), x)

    def artifact(self) -> bytes:
        return self.wrapped.SerializeToString()

    def log_model(self, n_features: int, n_outputs: int, task: Task) -> str:
        import mlflow.onnx
        import onnx
        import onnxruntime

        from .registration import signature

        info = mlflow.onnx.log_model(
            self.wrapped,
            name=contract.MODEL_ARTIFACT_PATH,
            signature=signature(n_features, n_outputs),
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
            save_as_external_data=False,
        )
        return info.model_uri


class _TorchScript(_Model):
    framework = "torch"
    model_format = "torchscript"
    described = "TorchScript module (it does not say how many features it takes)"
    model_class = "TorchScript module"

    def __init__(self, path: Path, data: bytes):
        import torch

        from .models import quiet_torchscript

        self.data, self.label = data, path.name
        try:
            with quiet_torchscript():
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as err:
            raise TrainerError(
                f"--file {path.name}: torch.jit.load cannot read it ({_last_line(err)}); save the model with "
                "torch.jit.save(torch.jit.script(model), 'model.pt')"
            ) from None

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.as_tensor(x, dtype=torch.float32))
        if not isinstance(out, torch.Tensor):
            raise TrainerError(
                f"--file {self.label}: the module returns {type(out).__name__}, not a tensor; return the class "
                "probabilities (classification) or the values (regression) as one float32 tensor"
            )
        if out.dtype != torch.float32:
            raise TrainerError(
                f"--file {self.label}: the module returns {out.dtype}, not float32; end forward with .float()"
            )
        return out.numpy()

    def artifact(self) -> bytes:
        return self.data

    def log_model(self, n_features: int, n_outputs: int, task: Task) -> str:
        from .models import quiet_torchscript
        from .registration import log_torchscript

        with quiet_torchscript():
            return log_torchscript(self.module, n_features, n_outputs)


class _Estimator(_Model):
    model_format = "onnx"

    def __init__(self, estimator: Any, label: str, task: Task, how: str):
        from sklearn.base import is_classifier, is_regressor
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        self.estimator, self.label, self.task = estimator, label, task
        name = type(estimator).__name__
        if not (hasattr(estimator, "predict") and hasattr(estimator, "get_params")):
            raise TrainerError(
                f"--file {label}: it holds a {name}, not a scikit-learn-API estimator (with fit, predict and "
                "get_params); save a fitted estimator or pipeline, or export the model to ONNX"
            )
        kind = "classifier" if is_classifier(estimator) else "regressor" if is_regressor(estimator) else None
        wanted = "classifier" if task == "classification" else "regressor"
        if kind != wanted:
            other = {"classifier": "classification", "regressor": "regression"}.get(kind or "")
            fix = f"pass --task {other}" if other else f"save a {wanted}"
            raise TrainerError(f"--task {task}: {label} holds a {name}, which is not a {wanted}; {fix}")
        if task == "classification" and not hasattr(estimator, "predict_proba"):
            raise TrainerError(
                f"--file {label}: {name} has no predict_proba, and a classifier version answers class probabilities"
            )
        try:
            check_is_fitted(estimator)
        except NotFittedError:
            raise TrainerError(f"--file {label}: the {name} in it is not fitted; save it after fit") from None
        module = type(estimator).__module__.split(".")[0]
        self.framework = module if module in ("xgboost", "lightgbm") else "sklearn"
        self.width = getattr(estimator, "n_features_in_", None)
        fitted_on = getattr(estimator, "feature_names_in_", None)
        self.names = [str(n) for n in fitted_on] if fitted_on is not None else None
        if task == "classification" and hasattr(estimator, "classes_"):
            self.classes = [c.item() if isinstance(c, np.generic) else c for c in estimator.classes_]
        self.described = f"{how} holding a fitted {name} ({self.framework})"
        self.model_class = name
        self.onnx = b""

    def prepare(self, n_features: int) -> None:
        from .estimators import to_onnx

        self.onnx = _from_trainer(lambda: to_onnx(self.estimator, n_features, self.task), self.label)

    def predict(self, x: np.ndarray) -> np.ndarray:
        from .estimators import run_onnx

        return run_onnx(self.onnx, x)

    def check_against(self, x: np.ndarray) -> None:
        from .estimators import check_onnx

        with warnings.catch_warnings():  # an estimator fitted on a DataFrame warns about the arrays it is given
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            _from_trainer(lambda: check_onnx(self.onnx, self.estimator, x, self.task), self.label)

    def artifact(self) -> bytes:
        return self.onnx

    def log_model(self, n_features: int, n_outputs: int, task: Task) -> str:
        from .registration import log_estimator, signature

        info = log_estimator(
            self.framework,
            self.estimator,
            name=contract.MODEL_ARTIFACT_PATH,
            signature=signature(n_features, n_outputs),
            input_example=np.zeros((2, n_features), dtype=np.float32),
            classifier=task == "classification",
        )
        return info.model_uri


def _from_trainer(step: Callable[[], Any], label: str) -> Any:
    """step's result; the trainer's errors about the estimator said of the file instead of the TrainingJob field."""
    try:
        return step()
    except TrainerError as err:
        raise TrainerError(f"--file {label}: {str(err).removeprefix('spec.model.estimator: ')}") from None


def _check_names(request: Request) -> None:
    if not re.fullmatch(REGISTRY_NAME_PATTERN, request.name) or len(request.name) > 128:
        raise TrainerError(
            f"--name: {request.name!r} is not a registered model name a ModelDeployment can refer to: use letters, "
            "digits, '.', '_' and '-', starting with a letter or digit (at most 128)"
        )
    if request.alias is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", request.alias):
        raise TrainerError(f"--alias: {request.alias!r} must start with a letter and hold letters, digits, _ and -")
    if request.classes is not None and request.task != "classification":
        raise TrainerError("--classes names the classes of a classifier; leave it out with --task regression")
    for option, names in (("--features", request.features), ("--classes", request.classes)):
        if names is not None:
            repeated = sorted({n for n in names if names.count(n) > 1})
            if not names or "" in names or repeated:
                why = f"{repeated} appear more than once" if repeated else "a name is empty"
                raise TrainerError(f"{option}: {why}; pass distinct names separated by commas, e.g. a,b,c")


def _kind(path: Path, data: bytes) -> Kind:
    """What the file holds, by its content; refused when its extension claims something else."""
    found = _content(data)
    claimed = CLAIMS.get(path.suffix.lower())
    if claimed == "pickle" and found is None:
        return "pickle"  # no header tells a pickle of an old protocol apart: joblib.load (with --trust) decides
    if found is None:
        claim = f"its extension says {WHAT[claimed]}, but it is not one" if claimed else "its content is not a model"
        raise TrainerError(
            f"--file {path.name}: {claim}; kubeforge imports ONNX (.onnx), TorchScript (.pt, torch.jit.save), "
            "skops (.skops) and joblib/pickle (.joblib, .pkl) files: pass one of those"
        )
    if found == "torch-pickle":
        raise TrainerError(
            f"--file {path.name}: it is {WHAT[found]}; loading it runs code and needs the model's Python class. "
            "Save the model with torch.jit.save(torch.jit.script(model), 'model.pt') (or torch.jit.trace) and "
            "import that"
        )
    if claimed is not None and claimed != found:
        rename = next(ext for ext, kind in CLAIMS.items() if kind == found)
        raise TrainerError(
            f"--file {path.name}: its extension says {WHAT[claimed]}, but it is {WHAT[found]}; pass the file you "
            f"meant, or name this one *{rename}"
        )
    return found


def _content(data: bytes) -> Kind | None:
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return None
        if "schema.json" in names:
            return "skops"
        if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        return "torch-pickle" if any(n.endswith("/data.pkl") for n in names) else None
    if (len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data.startswith(_COMPRESSED):
        return "pickle"
    return "onnx" if _parse_onnx(data) is not None else None


def _parse_onnx(data: bytes) -> onnx.ModelProto | None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    # Protocol buffers parse many byte strings; a model has an IR version and a graph with nodes.
    return model if model.ir_version and len(model.graph.node) else None


def _load(kind: Kind, path: Path, data: bytes, request: Request) -> _Model:
    label = path.name
    if kind == "onnx":
        model = _parse_onnx(data)
        assert model is not None
        return _Onnx(model, label, request.task)
    if kind == "torchscript":
        return _TorchScript(path, data)
    if kind == "skops":
        return _Estimator(_load_skops(path, request.trust), label, request.task, "skops file")
    if not request.trust:
        raise TrainerError(f"--file {label} is {WHAT['pickle']}: {PICKLE_REFUSED}")
    import joblib

    try:
        estimator = joblib.load(path)
    except ModuleNotFoundError as err:
        raise TrainerError(
            f"--file {label}: loading it needs the module {err.name!r}, which is not installed"
        ) from None
    except Exception as err:
        raise TrainerError(f"--file {label}: joblib cannot load it ({type(err).__name__}: {_last_line(err)})") from None
    return _Estimator(estimator, label, request.task, "joblib/pickle file (loaded with --trust)")


def _load_skops(path: Path, trust: bool) -> Any:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
        if untrusted and not trust:
            raise TrainerError(
                f"--file {path.name}: the skops file holds types skops does not trust by default "
                f"({', '.join(untrusted)}), and loading them may run their code; pass --trust if you trust the "
                "file's source"
            )
        return skops.io.load(path, trusted=untrusted or None)
    except TrainerError:
        raise
    except Exception as err:
        raise TrainerError(
            f"--file {path.name}: skops cannot load it ({type(err).__name__}: {_last_line(err)})"
        ) from None


def _contract_graph(model: onnx.ModelProto, label: str, task: Task) -> tuple[onnx.ModelProto, int | None, list[str]]:
    """(model wrapped to the contract's input and output names, the input width when fixed, what was found/done)."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    contract_input = f"float [batch, n_features] (name it {contract.INPUT_NAME!r} or kubeforge renames it)"
    if len(inputs) != 1:
        raise TrainerError(
            f"--file {label}: the graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a kubeforge "
            f"model takes one, {contract_input}: export it with a single input (skl2onnx: initial_types="
            f"[('{contract.INPUT_NAME}', FloatTensorType([None, n]))])"
        )
    (given,) = inputs
    tensor = given.type.tensor_type
    dims = tensor.shape.dim
    if not given.type.HasField("tensor_type") or tensor.elem_type != TensorProto.FLOAT or len(dims) != 2:
        raise TrainerError(
            f"--file {label}: its input {given.name!r} is {_describe(given.type)}; a kubeforge model takes "
            f"{contract_input}: export it with a float32 input of shape [batch, n]"
        )
    if dims[0].HasField("dim_value"):
        raise TrainerError(
            f"--file {label}: its input {given.name!r} has a fixed batch size of {dims[0].dim_value}; export it "
            "with a dynamic first axis (skl2onnx: None; torch.onnx.export: dynamic_axes or dynamic_shapes)"
        )
    width = dims[1].dim_value if dims[1].HasField("dim_value") else None
    answer, note = _answer(graph, label, task)

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    kept = _needed(list(model.graph.node), answer)
    if not any(o.domain in ("", "ai.onnx") for o in wrapped.opset_import):
        wrapped.opset_import.append(helper.make_opsetid("", 13))
    del wrapped.graph.node[:], wrapped.graph.input[:], wrapped.graph.output[:]
    wrapped.graph.input.extend([helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.FLOAT, [None, width])])
    wrapped.graph.input.extend(i for i in model.graph.input if i.name in initializers)
    if given.name != contract.INPUT_NAME:
        wrapped.graph.node.append(
            helper.make_node("Identity", [contract.INPUT_NAME], [given.name], name="kubeforge_features")
        )
    wrapped.graph.node.extend(kept)
    named = next((o for o in model.graph.output if o.name == answer == contract.OUTPUT_NAME), None)
    if named is not None and named.type.tensor_type.elem_type == TensorProto.FLOAT:
        wrapped.graph.output.append(named)  # already the contract's output
    elif named is not None:
        raise TrainerError(
            f"--file {label}: its output {answer!r} is {_describe(named.type)}; a kubeforge model answers float32: "
            "export it with a float32 output"
        )
    else:
        cast = helper.make_node(
            "Cast", [answer], [contract.OUTPUT_NAME], name="kubeforge_outputs", to=TensorProto.FLOAT
        )
        wrapped.graph.node.append(cast)
        wrapped.graph.output.append(
            helper.make_tensor_value_info(contract.OUTPUT_NAME, TensorProto.FLOAT, [None, None])
        )
    try:
        onnx.checker.check_model(wrapped)
    except onnx.checker.ValidationError as err:
        raise TrainerError(
            f"--file {label}: cannot wrap the graph to the contract's names ({_last_line(err)}); export it with input "
            f"{contract.INPUT_NAME!r} and output {contract.OUTPUT_NAME!r}"
        ) from None
    shape = f"[batch, {width if width is not None else '?'}]"
    return wrapped, width, [f"input {given.name!r} float {shape}", note]


def _answer(graph: onnx.GraphProto, label: str, task: Task) -> tuple[str, str]:
    """(the tensor the model answers with, how it was found): the one float output, or the probabilities a ZipMap
    turns into a list of maps."""
    from onnx import TensorProto

    producers = {out: node for node in graph.node for out in node.output}
    found: dict[str, str] = {}
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE)
    for out in graph.output:
        if out.type.HasField("tensor_type") and out.type.tensor_type.elem_type in floats:
            found[out.name] = f"answer: output {out.name!r}"
        elif out.type.HasField("sequence_type") and getattr(producers.get(out.name), "op_type", "") == "ZipMap":
            found[producers[out.name].input[0]] = f"answer: the probabilities behind the ZipMap of output {out.name!r}"
    if len(found) > 1 and task == "classification":
        found = {k: v for k, v in found.items() if "prob" in k.lower()} or found
    if len(found) != 1:
        outputs = ", ".join(f"{o.name} ({_describe(o.type)})" for o in graph.output)
        which = "several" if found else "no"
        want = "class probabilities [batch, classes]" if task == "classification" else "values [batch, 1]"
        raise TrainerError(
            f"--file {label}: the graph has {which} float outputs to answer with ({outputs}); export it with one "
            f"output holding the {want}"
        )
    ((answer, note),) = found.items()
    return answer, note


def _needed(nodes: list[onnx.NodeProto], answer: str) -> list[onnx.NodeProto]:
    """The nodes answer depends on, in their order (what else the graph computed is left out)."""
    wanted, kept = {answer}, []
    for node in reversed(nodes):
        if wanted.intersection(node.output):
            kept.append(node)
            wanted.update(_inputs(node))
    return kept[::-1]


def _inputs(node: onnx.NodeProto) -> set[str]:
    """The tensors node reads, also those its subgraphs (If, Loop, Scan) read from outside."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in [attribute.g, *attribute.graphs]:
            for inner in graph.node:
                names |= _inputs(inner)
    return names


def _describe(value_type: Any) -> str:
    from onnx import TensorProto

    if not value_type.HasField("tensor_type"):
        return value_type.WhichOneof("value") or "untyped"
    tensor = value_type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?" for d in tensor.shape.dim]
    return f"{TensorProto.DataType.Name(tensor.elem_type).lower()} [{', '.join(dims)}]"


def _onnx_classes(graph: onnx.GraphProto) -> list[Any] | None:
    """The class labels a classifier's nodes carry (skl2onnx, onnxmltools), when they do."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in ("classlabels_ints", "classlabels_int64s") and attribute.ints:
                return list(attribute.ints)
            if attribute.name == "classlabels_strings" and attribute.strings:
                return [s.decode() for s in attribute.strings]
    return None


def _reference_file(request: Request) -> tuple[Any, str] | None:
    """(the reference data's rows as a DataFrame, the sha256 of its bytes), or None without --reference-data."""
    uri = request.reference_data
    if uri is None:
        return None
    if not uri.lower().split("?", 1)[0].endswith(tuple(e for exts in datasets.EXTENSIONS.values() for e in exts)):
        raise TrainerError(f"--reference-data: {uri}: pass a .csv or .parquet file (or .json, .jsonl)")
    try:
        found = datasets.read(uri, None, "--reference-data")
    except TrainerError as err:
        raise TrainerError(f"--reference-data: {str(err).removeprefix('--reference-data: ')}") from None
    return found.frame, found.sha256


def _reference_rows(frame: Any, digest: str, features: list[str], uri: str) -> tuple[np.ndarray, tuple[str, str, int]]:
    """(the reference data's feature columns as float32 rows, (uri, sha256 of the file, rows))."""
    columns = [str(c) for c in frame.columns]
    missing = [f for f in features if f not in columns]
    if missing:
        shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise TrainerError(
            f"--reference-data: {uri} has no column(s) {missing[:10]} (its columns: {shown}); it must hold the "
            "model's features, as --features names them"
        )
    try:
        x = frame[features].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TrainerError(f"--reference-data: the feature columns of {uri} must hold numbers ({err})") from None
    bad = ~np.isfinite(x)
    if bad.any():
        names = [f for f, b in zip(features, bad.any(axis=0), strict=True) if b]
        raise TrainerError(
            f"--reference-data: {uri} has {int(bad.any(axis=1).sum())} rows with missing or infinite values "
            f"(columns {names[:10]}); drop or fill them"
        )
    return x.astype(np.float32), (uri, digest, len(x))


def _features(request: Request, model: _Model, columns: list[str] | None, say: Callable[[str], None]) -> list[str]:
    """The feature names in input order: --features, checked against what the file says, else the file's."""
    width, label = model.width, request.file.name
    if request.features is not None:
        names = request.features
        if width is not None and len(names) != width:
            raise TrainerError(
                f"--features: {len(names)} names given, but {label} takes {width} features; pass {width} names, in "
                "the model's input order"
            )
        if model.names is not None and names != model.names:
            raise TrainerError(
                f"--features: {label} was fitted on the columns {model.names} (in that order); pass those, or leave "
                "--features out"
            )
    elif model.names is not None:
        names = model.names
        say(f"features: the {len(names)} columns the estimator was fitted on")
    elif width is None:
        raise TrainerError(
            f"--features: {label} does not say how many features it takes; pass their names in the model's input "
            "order, e.g. --features age,income,tenure"
        )
    elif columns is not None and len(columns) == width:
        names = columns
        say(f"features: the {width} columns of --reference-data, in its order (pass --features to say otherwise)")
    elif columns is not None:
        raise TrainerError(
            f"--features: {label} takes {width} features but does not name them, and --reference-data has "
            f"{len(columns)} columns; pass --features with the columns the model takes, in its input order"
        )
    else:
        names = [f"feature_{i}" for i in range(width)]
        say(f"features: feature_0 .. feature_{width - 1} (the file names none; --features names them)")
    return list(names)


def _check_answers(out: np.ndarray, rows: int, request: Request, what: str, finite: bool = True) -> int:
    """The number of outputs per row, or TrainerError when out is not what the contract answers for rows rows."""
    task, label, shape = request.task, request.file.name, list(np.shape(out))
    want = "[rows, classes] class probabilities" if task == "classification" else "[rows, 1] values"
    if len(shape) != 2 or shape[0] != rows:
        fix = " (return x.unsqueeze(1) or reshape to [-1, 1])" if task == "regression" and len(shape) == 1 else ""
        raise TrainerError(f"--file {label}: on {what} the model answers shape {shape}; it must answer {want}{fix}")
    if task == "regression" and shape[1] != 1:
        raise TrainerError(
            f"--task regression: on {what} the model answers {shape[1]} values per row; a regression model answers "
            "one ([rows, 1]); is it a classifier (--task classification)?"
        )
    if task == "classification" and shape[1] < 2:
        raise TrainerError(
            f"--task classification: on {what} the model answers {shape[1]} value per row; a classifier answers a "
            "probability per class (for a binary one, both)"
        )
    values = np.asarray(out, dtype=np.float64)
    usable = np.isfinite(values).all(axis=1)
    if finite and not usable.all():
        raise TrainerError(
            f"--file {label}: on {what} the model answers NaN or infinity in {int((~usable).sum())} rows"
        )
    if task == "classification":
        sums = values[usable].sum(axis=1)
        far = np.abs(sums - 1) > PROBABILITY_TOLERANCE
        if far.any() or (values[usable] < -PROBABILITY_TOLERANCE).any():
            raise TrainerError(
                f"--file {label}: on {what} the model's answers are not probabilities (a row sums to "
                f"{float(sums[far][0]) if far.any() else float(sums[0]):.4g}); end the model with a softmax"
            )
    return shape[1]


def _classes(request: Request, model: _Model, n_outputs: int) -> list[Any]:
    """The class labels in output order: --classes, else the file's, else the class indices."""
    if request.task != "classification":
        return []
    if request.classes is not None:
        if len(request.classes) != n_outputs:
            raise TrainerError(
                f"--classes: {len(request.classes)} names given, but the model answers {n_outputs} class "
                f"probabilities per row; pass {n_outputs} names, in its output order"
            )
        labels = request.classes
        return [int(c) for c in labels] if all(re.fullmatch(r"-?\d+", c) for c in labels) else list(labels)
    if model.classes is not None and len(model.classes) == n_outputs:
        return model.classes
    return list(range(n_outputs))


def _reachable(tracking_uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when the tracking server does not answer."""
    from kubeforge.core.mlflow_rest import MLflowError, MLflowRegistry

    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        MLflowRegistry(tracking_uri).registered_models(1)
    except MLflowError as err:
        raise TrainerError(f"--tracking-uri: {err}; start MLflow or point --tracking-uri at it") from None


def _last_line(err: BaseException) -> str:
    """The last line of an error's message (torch and onnx put tracebacks before it)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
