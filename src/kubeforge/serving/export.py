"""Export a registered MLflow model version into a Triton model repository.

This is what a serving pod's init step runs: it resolves the version (by number or
alias), reads its tensor signature and TorchScript artifact as the model contract in
:mod:`kubeforge.core.modelcontract` lays them out, and writes ``<model>/config.pbtxt``
plus ``<model>/<version>/``. The version directory is written beside its final place
and renamed into it, so a Triton loading the repository never sees half a version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import httpx

from kubeforge.api.modeldeployment import ModelRef, TritonRuntime
from kubeforge.core import modelcontract

from . import tritonconfig
from .tritonconfig import Flavour, Tensor

MODEL_PY = "python_model.py.tmpl"


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
        httpx.get(tracking_uri.rstrip("/") + "/health", timeout=10).raise_for_status()
    except httpx.HTTPError as err:
        raise ExportError(f"cannot export {_label(ref)}: MLflow at {tracking_uri} is unreachable ({err})") from err


def _tensors(schema: object, label: str, what: str, default_name: str) -> list[Tensor]:
    from mlflow.types.schema import TensorSpec

    specs = list(getattr(schema, "inputs", None) or [])
    if not specs or not all(isinstance(s, TensorSpec) for s in specs):
        raise ExportError(f"{label}: the signature's {what} must be tensors (mlflow TensorSpec), got {schema}")
    named = [s.name or (default_name if len(specs) == 1 else f"{default_name}_{i}") for i, s in enumerate(specs)]
    return [tritonconfig.tensor_from_numpy(n, s.type, s.shape) for n, s in zip(named, specs, strict=True)]


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
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        info = mlflow.models.get_model_info(f"models:/{ref.name}/{mv.version}")
    except MlflowException as err:
        raise ExportError(f"cannot export {label}: {err.message}") from err
    if info.signature is None or info.signature.outputs is None:
        raise ExportError(
            f"cannot export {label}: it has no input/output signature; log it with a tensor signature "
            f"(inputs {modelcontract.INPUT_NAME!r}, outputs {modelcontract.OUTPUT_NAME!r})"
        )
    inputs = _tensors(info.signature.inputs, label, "inputs", modelcontract.INPUT_NAME)
    outputs = _tensors(info.signature.outputs, label, "outputs", modelcontract.OUTPUT_NAME)
    name = triton_name or ref.name
    try:
        config = tritonconfig.render(tritonconfig.build(name, inputs, outputs, runtime, runtime.backend))
    except tritonconfig.UnsupportedSignature as err:
        raise ExportError(f"cannot export {label}: {err}") from err

    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=model_dir))
    try:
        try:
            script = client.download_artifacts(mv.run_id, modelcontract.TORCHSCRIPT_ARTIFACT, str(staging))
        except (MlflowException, OSError) as err:
            raise ExportError(
                f"cannot export {label}: its run {mv.run_id} has no {modelcontract.TORCHSCRIPT_ARTIFACT} ({err})"
            ) from err
        _write_version(staging, Path(script), runtime.backend)
        target = model_dir / str(mv.version)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_atomic(model_dir / "config.pbtxt", config)
    task = mv.tags.get(modelcontract.TAG_TASK)
    return ExportedModel(name, str(mv.version), model_dir, task, inputs, outputs)


def _write_version(directory: Path, torchscript: Path, flavour: Flavour) -> None:
    os.replace(torchscript, directory / "model.pt")
    shutil.rmtree(directory / Path(modelcontract.TORCHSCRIPT_ARTIFACT).parts[0], ignore_errors=True)
    if flavour == "python":
        (directory / "model.py").write_text(resources.files(__package__).joinpath(MODEL_PY).read_text())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
