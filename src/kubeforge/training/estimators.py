"""Estimator models of a TrainingJob (``spec.model.framework: sklearn | xgboost | lightgbm``): build, fit, score,
export.

The three frameworks share scikit-learn's estimator API, so one path serves them all. The
estimator is named by class (for sklearn anything :func:`sklearn.utils.all_estimators`
lists; for xgboost and lightgbm their scikit-learn-API classes) or given by a user
``module:factory``. It is checked against the task before any data is
fitted, fitted on the raw training rows, scored with the same metric definitions as the
torch loop, and exported to ONNX (skl2onnx) under the model contract: input
:data:`~kubeforge.core.modelcontract.INPUT_NAME` ``float32 [batch, n_features]``,
output :data:`~kubeforge.core.modelcontract.OUTPUT_NAME` ``float32 [batch, n_outputs]``
(class probabilities, or the predicted value); XGBoost and LightGBM through onnxmltools'
converters registered with skl2onnx. The ONNX graph is run with onnxruntime on the
validation rows and refused when it does not give what the original model gives.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, is_classifier, is_regressor

from kubeforge.api.trainingjob import Framework, ModelSpec, Task
from kubeforge.core import modelcontract as contract

from . import metrics
from .errors import TrainerError

# The ONNX opsets the exported graphs target (default and ai.onnx.ml domains): what onnxruntime 1.31 and Triton's
# onnxruntime backend run.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# The scikit-learn-API classes of the gradient boosting libraries, by framework.
LIBRARY_ESTIMATORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "xgboost": ("xgboost", ("XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor")),
    "lightgbm": ("lightgbm", ("LGBMClassifier", "LGBMRegressor")),
}
# How far the ONNX graph may be from the original model: float32 arithmetic against scikit-learn's float64.
RTOL = 1e-4
ATOL = 1e-5


def build(spec: ModelSpec, gpus: int = 0) -> BaseEstimator:
    """The unfitted estimator spec names, with spec.params set, checked to suit spec.task.

    With a GPU (xgboost only) the estimator runs on it unless params name a device.
    """
    name = spec.estimator or ""
    params = dict(spec.params)
    if gpus and spec.framework == "xgboost":
        params.setdefault("device", "cuda")
    if ":" in name:
        estimator = _from_factory(name, params)
    else:
        cls = _estimator_class(spec.framework, name)
        defaults = cls().get_params()
        if "random_state" in defaults and "random_state" not in params:
            params["random_state"] = spec.hyperparameters.seed
        if spec.framework == "lightgbm" and "verbose" not in params:
            params["verbose"] = -1  # LightGBM warns on every split it cannot make; the trainer reports its own lines
        try:
            estimator = cls(**params)
        except TypeError as exc:
            raise TrainerError(f"spec.model.params: {name} does not take them: {exc}") from None
        # Parameter values are validated by scikit-learn at fit; do it now, before the data is read.
        # (scikit-learn's own estimators declare their constraints; XGBoost and LightGBM check at fit.)
        try:
            if hasattr(estimator, "_parameter_constraints"):
                estimator._validate_params()
        except (ValueError, TypeError) as exc:
            raise TrainerError(f"spec.model.params: {exc}") from None
    _check_task(estimator, spec)
    return estimator


def _estimator_class(framework: Framework, name: str) -> type[BaseEstimator]:
    if framework in LIBRARY_ESTIMATORS:
        module_name, names = LIBRARY_ESTIMATORS[framework]
        module = importlib.import_module(module_name)
        known = {n: getattr(module, n) for n in names}
        what = f"an estimator of {framework}"
    else:
        from sklearn.utils import all_estimators

        known = dict(all_estimators(type_filter=["classifier", "regressor"]))
        what = "a scikit-learn classifier or regressor"
    if name not in known:
        close = [k for k in known if k.lower() == name.lower() or name.lower() in k.lower()][:5]
        examples = ", ".join(list(known)[:4]) + (", ..." if len(known) > 4 else "")
        hint = f"; did you mean {', '.join(close)}?" if close else f"; one of {examples}"
        raise TrainerError(f"spec.model.estimator: {name!r} is not {what}{hint}")
    return known[name]


def _from_factory(entrypoint: str, params: dict[str, Any]) -> BaseEstimator:
    module_name, attr = entrypoint.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainerError(
            f"spec.model.estimator: cannot import module {module_name!r} ({exc}); "
            "is it installed in the trainer image or on PYTHONPATH?"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no attribute" if factory is None else "has a non-callable attribute"
        raise TrainerError(f"spec.model.estimator: module {module_name!r} {what} {attr!r}")
    try:
        estimator = factory(**params)
    except Exception as exc:
        raise TrainerError(f"spec.model.estimator: {entrypoint}(**params) raised {type(exc).__name__}: {exc}") from None
    if not (hasattr(estimator, "fit") and hasattr(estimator, "get_params")):
        raise TrainerError(
            f"spec.model.estimator: {entrypoint} returned {type(estimator).__name__}, "
            "expected a scikit-learn estimator (with fit and get_params)"
        )
    return estimator


def _check_task(estimator: BaseEstimator, spec: ModelSpec) -> None:
    kind = "classifier" if is_classifier(estimator) else "regressor" if is_regressor(estimator) else None
    wanted = "classifier" if spec.task == "classification" else "regressor"
    if kind != wanted:
        what = f"a {kind}" if kind else "neither a classifier nor a regressor"
        other = "regression" if spec.task == "classification" else "classification"
        raise TrainerError(
            f"spec.model.estimator: {spec.estimator} is {what}, but spec.model.task is {spec.task}; "
            f"name a {wanted} or set spec.model.task: {other}"
        )
    if spec.task == "classification" and not hasattr(estimator, "predict_proba"):
        raise TrainerError(
            f"spec.model.estimator: {spec.estimator} has no predict_proba, and a classifier version returns class "
            "probabilities (for SVC set params probability: true)"
        )


def fit(estimator: BaseEstimator, x: np.ndarray, y: np.ndarray, task: Task, n_classes: int) -> BaseEstimator:
    """estimator fitted on raw training rows (y: class indices or values)."""
    target = y.astype(np.int64) if task == "classification" else y.astype(np.float64)
    try:
        estimator.fit(x, target)
    except Exception as exc:
        raise TrainerError(f"spec.model.estimator: fitting {type(estimator).__name__} failed: {exc}") from None
    if task == "classification":
        seen = [int(c) for c in getattr(estimator, "classes_", [])]
        if seen != list(range(n_classes)):
            missing = sorted(set(range(n_classes)) - set(seen))
            raise TrainerError(
                f"spec.dataset: classes at positions {missing} have no rows in the training split; "
                "add rows of every class or lower spec.dataset.validationSplit"
            )
    return estimator


def predict(estimator: BaseEstimator, x: np.ndarray, task: Task) -> np.ndarray:
    """What the model contract returns for x: probabilities [n, classes] or values [n, 1], float64."""
    if task == "classification":
        return np.asarray(estimator.predict_proba(x), dtype=np.float64)
    return np.asarray(estimator.predict(x), dtype=np.float64).reshape(len(x), -1)


def evaluate(outputs: np.ndarray, y: np.ndarray, task: Task) -> dict[str, float]:
    """Validation metrics of contract outputs, defined exactly as for torch models."""
    if task == "classification":
        logits = torch.as_tensor(np.log(np.clip(outputs, 1e-15, None)), dtype=torch.float32)
        return metrics.compute(logits, torch.as_tensor(y, dtype=torch.int64), task, 0.0, 1.0)
    values = torch.as_tensor(outputs, dtype=torch.float32)
    return metrics.compute(values, torch.as_tensor(y, dtype=torch.float32), task, 0.0, 1.0)


def to_onnx(estimator: BaseEstimator, n_features: int, task: Task) -> bytes:
    """The fitted estimator as an ONNX graph following the model contract."""
    import onnx
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _register_converters()
    options = {id(estimator): {"zipmap": False}} if task == "classification" else None
    try:
        model = convert_sklearn(
            estimator,
            initial_types=[(contract.INPUT_NAME, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:
        raise TrainerError(
            f"spec.model.estimator: {type(estimator).__name__} cannot be exported to ONNX for serving "
            f"(skl2onnx/onnxmltools: {type(exc).__name__}: {exc}); choose an estimator they support"
        ) from None
    if hasattr(estimator, "booster_") and hasattr(estimator.booster_, "dump_model"):
        _round_lightgbm_thresholds(model, estimator.booster_.dump_model())
    graph = model.graph
    produced = [o.name for o in graph.output]
    # Classifiers produce (label, probabilities), regressors (variable): keep the contract's one output.
    source = produced[1] if task == "classification" else produced[0]
    kept = next(o for o in graph.output if o.name == source)
    del graph.output[:]
    graph.node.append(helper.make_node("Identity", [source], [contract.OUTPUT_NAME], name="kubeforge_outputs"))
    graph.output.append(
        helper.make_tensor_value_info(contract.OUTPUT_NAME, kept.type.tensor_type.elem_type, [None, None])
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _round_lightgbm_thresholds(model: Any, dump: dict[str, Any]) -> None:
    """Round each float32 split threshold of a converted LightGBM model toward its branch.

    LightGBM splits at float64 thresholds; the ONNX tree ensemble holds float32 ones,
    rounded to nearest by the converter, which sends a float32 feature lying between the
    two to the wrong child. Rounded down for ``x <= t`` (up for ``x < t``), the float32
    threshold sends every float32 input where LightGBM sends it. Nodes are matched by
    tree, feature and nearest float32 threshold; an ambiguous match is left as it is and
    the export check decides.
    """
    exact: dict[tuple[int, int, bytes, float], set[float]] = {}

    def walk(tree: int, node: dict[str, Any]) -> None:
        if "split_index" not in node:
            return
        mode = {"<=": b"BRANCH_LEQ", "<": b"BRANCH_LT"}.get(node.get("decision_type", ""))
        if mode is not None:
            t = float(node["threshold"])
            v = np.float32(t)
            if mode == b"BRANCH_LEQ" and float(v) > t:
                v = np.nextafter(v, np.float32(-np.inf))
            elif mode == b"BRANCH_LT" and float(v) < t:
                v = np.nextafter(v, np.float32(np.inf))
            exact.setdefault((tree, int(node["split_feature"]), mode, float(np.float32(t))), set()).add(float(v))
        walk(tree, node["left_child"])
        walk(tree, node["right_child"])

    for i, tree in enumerate(dump.get("tree_info", [])):
        walk(i, tree["tree_structure"])
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if not node.op_type.startswith("TreeEnsemble") or "nodes_values" not in attrs:
            continue
        values = attrs["nodes_values"].floats
        trees, features, modes = (
            attrs["nodes_treeids"].ints,
            attrs["nodes_featureids"].ints,
            attrs["nodes_modes"].strings,
        )
        for i, key in enumerate(list(zip(trees, features, modes, values, strict=True))):
            rounded = exact.get(key, set())
            if len(rounded) == 1:
                values[i] = next(iter(rounded))


@functools.cache
def _register_converters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM estimators, with onnxmltools' converters (its documented way);
    once per process."""
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    converters = {"xgboost": convert_xgboost, "lightgbm": convert_lightgbm}
    for framework, (module_name, names) in LIBRARY_ESTIMATORS.items():
        module = importlib.import_module(module_name)
        for name in names:
            if name.endswith("Classifier"):
                shapes, options = calculate_linear_classifier_output_shapes, {"zipmap": [True, False], "nocl": [False]}
            else:
                shapes, options = calculate_linear_regressor_output_shapes, None
            alias = f"{framework}{name}"
            update_registered_converter(getattr(module, name), alias, shapes, converters[framework], options=options)


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    """The ONNX graph's outputs for x, with onnxruntime on CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    (out,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out)


def check_onnx(model: bytes, estimator: BaseEstimator, x: np.ndarray, task: Task) -> None:
    """Refuse an ONNX graph that does not reproduce the estimator on x (the validation rows).

    Both see the rows as float32, as served requests carry them: a float64 value a hair from a
    tree's split would otherwise fall on the other side once a client sends it.
    """
    x = np.asarray(x, dtype=np.float32)
    expected = predict(estimator, x.astype(np.float64), task)
    got = run_onnx(model, x).astype(np.float64)
    if got.shape != expected.shape:
        raise TrainerError(
            f"spec.model.estimator: the ONNX export of {type(estimator).__name__} returns shape {list(got.shape)}, "
            f"the model {list(expected.shape)}; not registered"
        )
    scale = float(np.abs(expected).max()) if expected.size else 1.0
    tolerance = ATOL * max(scale, 1.0)
    far = ~np.isclose(got, expected, rtol=RTOL, atol=tolerance)
    if far.any():
        row = int(np.argwhere(far)[0][0])
        raise TrainerError(
            f"spec.model.estimator: the ONNX export of {type(estimator).__name__} differs from the model on "
            f"{int(far.any(axis=1).sum())} of {len(x)} validation rows (row {row}: {got[row].tolist()} vs "
            f"{expected[row].tolist()}, tolerance rtol={RTOL} atol={tolerance:g}); not registered"
        )


def describe(estimator: BaseEstimator) -> str:
    """What the estimator is, for the run's params: its class and module."""
    cls = type(estimator)
    module = inspect.getmodule(cls)
    return f"{module.__name__ if module else ''}.{cls.__name__}".lstrip(".")
