"""Export a registered MLflow model version into a Triton model repository.

This is what a serving pod's init step runs: it resolves the version (by number or
alias), reads its tensor signature and serving artifact (TorchScript, or ONNX where the
version's tags say so) as the model contract in :mod:`kubeforge.core.modelcontract` lays
them out, and writes ``<model>/config.pbtxt`` plus ``<model>/<version>/``. It speaks
MLflow's REST API where the tracking server serves the artifacts (the default): a
second, where importing the mlflow package alone takes several, and every rollout waits
for it. Other artifact stores are read with mlflow.
The version directory is written beside its final place and renamed into it, so a
Triton loading the repository never sees half a version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import yaml

from kubeforge.api.modeldeployment import ModelRef, TritonRuntime
from kubeforge.core import modelcontract, plainhttp
from kubeforge.core.files import replace_whole
from kubeforge.core.mlflow_rest import MLflowError, MLflowRegistry

from . import tritonconfig
from .tritonconfig import Flavour, Tensor

MODEL_PY = "python_model.py.tmpl"
ONNX_MODEL_PY = "onnx_model.py.tmpl"
# What each format's file in a version directory is called, as Triton's native backends expect it.
VERSION_FILES: dict[modelcontract.ModelFormat, str] = {"torchscript": "model.pt", "onnx": "model.onnx"}


class ExportError(RuntimeError):
    """Exporting failed; the message names the model and version and says what to fix."""


@dataclass(frozen=True)
class ExportedModel:
    """A model version written into a Triton repository."""

    name: str
    version: str
    directory: Path
    task: str | None
    inputs: list[Tensor]
    outputs: list[Tensor]


def _label(ref: ModelRef) -> str:
    return f"model {ref.name!r} " + (f"version {ref.version}" if ref.version else f"alias {ref.alias!r}")


def _probe(tracking_uri: str, ref: ModelRef) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when the tracking server is down."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    try:
        status = plainhttp.get(tracking_uri.rstrip("/") + "/health", timeout=10).status
    except plainhttp.HttpError as err:
        raise ExportError(f"cannot export {_label(ref)}: MLflow at {tracking_uri} is unreachable ({err})") from err
    if status >= 400:
        raise ExportError(f"cannot export {_label(ref)}: MLflow at {tracking_uri} answers /health with {status}")


def _tensors(specs: list[dict[str, Any]], label: str, what: str, default_name: str) -> list[Tensor]:
    """Tensors of a signature's inputs or outputs, as the MLmodel file writes them (JSON column specs)."""
    if not specs or not all(s.get("type") == "tensor" for s in specs):
        raise ExportError(f"{label}: the signature's {what} must be tensors (mlflow TensorSpec), got {specs}")
    tensors = []
    for i, spec in enumerate(specs):
        name = spec.get("name") or (default_name if len(specs) == 1 else f"{default_name}_{i}")
        tensor = spec["tensor-spec"]
        tensors.append(tritonconfig.tensor_from_numpy(name, np.dtype(tensor["dtype"]), tuple(tensor["shape"])))
    return tensors


@dataclass(frozen=True)
class _Found:
    """A registered version as export needs it: its number, task tag, MLmodel file and serving artifact (format:
    TorchScript or ONNX)."""

    version: str
    task: str | None
    model_file: bytes
    script: Callable[[], bytes]
    format: modelcontract.ModelFormat = "torchscript"


def _over_rest(tracking_uri: str, ref: ModelRef) -> _Found | None:
    """The version read with plain HTTP calls, in a second rather than the mlflow package's several; None where
    the artifacts are not served by the tracking server."""
    registry = MLflowRegistry(tracking_uri)
    label = _label(ref)
    try:
        mv = (
            registry.by_version(ref.name, ref.version)
            if ref.version is not None
            else registry.by_alias(ref.name, ref.alias or "")
        )
        label = f"model {ref.name!r} version {mv.version}"
        model_file = registry.model_file(mv)
    except MLflowError as err:
        raise ExportError(f"cannot export {label}: {err}") from err
    if model_file is None:
        return None

    fmt = modelcontract.model_format(mv.tags)
    artifact = modelcontract.serving_artifact(fmt)

    def script() -> bytes:
        try:
            return registry.artifact(mv.run_id, artifact)
        except MLflowError as err:
            raise ExportError(f"cannot export {label}: its run {mv.run_id} has no {artifact} ({err})") from err

    return _Found(mv.version, mv.tags.get(modelcontract.TAG_TASK), model_file, script, fmt)


def _with_mlflow(tracking_uri: str, ref: ModelRef) -> _Found:
    """The version read with the mlflow package, which reaches every artifact store it supports."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    label = _label(ref)
    try:
        mv = (
            client.get_model_version(ref.name, str(ref.version))
            if ref.version is not None
            else client.get_model_version_by_alias(ref.name, ref.alias or "")
        )
        label = f"model {ref.name!r} version {mv.version}"
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"models:/{ref.name}/{mv.version}/MLmodel"
            model_file = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp)).read_bytes()
    except MlflowException as err:
        raise ExportError(f"cannot export {label}: {err.message}") from err

    fmt = modelcontract.model_format(mv.tags or {})
    artifact = modelcontract.serving_artifact(fmt)

    def script() -> bytes:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                # A version without a run (run_id None): mlflow raises MlflowException, reported below.
                return Path(client.download_artifacts(mv.run_id, artifact, tmp)).read_bytes()  # type: ignore[arg-type]
        except (MlflowException, OSError) as err:
            raise ExportError(f"cannot export {label}: its run {mv.run_id} has no {artifact} ({err})") from err

    return _Found(str(mv.version), mv.tags.get(modelcontract.TAG_TASK), model_file, script, fmt)


def export(
    tracking_uri: str,
    ref: ModelRef,
    repository: Path,
    runtime: TritonRuntime | None = None,
    triton_name: str | None = None,
) -> ExportedModel:
    """Write ref's version into repository for Triton; the flavour follows runtime.backend."""
    runtime = runtime or TritonRuntime()
    _probe(tracking_uri, ref)
    found = _over_rest(tracking_uri, ref) or _with_mlflow(tracking_uri, ref)
    label = f"model {ref.name!r} version {found.version}"
    signature = (yaml.safe_load(found.model_file) or {}).get("signature") or {}
    if not signature.get("inputs") or not signature.get("outputs"):
        raise ExportError(
            f"cannot export {label}: it has no input/output signature; log it with a tensor signature "
            f"(inputs {modelcontract.INPUT_NAME!r}, outputs {modelcontract.OUTPUT_NAME!r})"
        )
    inputs = _tensors(json.loads(signature["inputs"]), label, "inputs", modelcontract.INPUT_NAME)
    outputs = _tensors(json.loads(signature["outputs"]), label, "outputs", modelcontract.OUTPUT_NAME)
    name = triton_name or ref.name
    try:
        config = tritonconfig.render(tritonconfig.build(name, inputs, outputs, runtime, runtime.backend, found.format))
    except tritonconfig.UnsupportedSignature as err:
        raise ExportError(f"cannot export {label}: {err}") from err

    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{found.version}-", dir=model_dir))
    try:
        _write_version(staging, found.script(), runtime.backend, found.format)
        target = model_dir / found.version
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    replace_whole(model_dir / "config.pbtxt", config)
    return ExportedModel(name, found.version, model_dir, found.task, inputs, outputs)


def _write_version(
    directory: Path, artifact: bytes, flavour: Flavour, model_format: modelcontract.ModelFormat = "torchscript"
) -> None:
    (directory / VERSION_FILES[model_format]).write_bytes(artifact)
    if flavour == "python":
        template = ONNX_MODEL_PY if model_format == "onnx" else MODEL_PY
        (directory / "model.py").write_text(resources.files(__package__).joinpath(template).read_text())
