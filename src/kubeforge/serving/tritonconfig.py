"""Triton ``config.pbtxt`` for an exported model version, in both flavours from one description.

The config is built as Triton's own ``ModelConfig`` protobuf (shipped with tritonclient)
and printed in text format, so a field name or enum Triton would refuse cannot be
written in the first place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from kubeforge.api.modeldeployment import TritonRuntime
from kubeforge.core.modelcontract import ModelFormat

Flavour = Literal["python", "pytorch_libtorch"]

# numpy dtype name -> (Triton config enum, Open Inference Protocol datatype). Only what
# TorchScript models take and return: strings and unsigned wide ints have no torch tensor.
DTYPES: dict[str, tuple[str, str]] = {
    "bool": ("TYPE_BOOL", "BOOL"),
    "uint8": ("TYPE_UINT8", "UINT8"),
    "int8": ("TYPE_INT8", "INT8"),
    "int16": ("TYPE_INT16", "INT16"),
    "int32": ("TYPE_INT32", "INT32"),
    "int64": ("TYPE_INT64", "INT64"),
    "float16": ("TYPE_FP16", "FP16"),
    "float32": ("TYPE_FP32", "FP32"),
    "float64": ("TYPE_FP64", "FP64"),
}


class UnsupportedSignature(ValueError):
    """The registered signature cannot be served by Triton as it stands."""


@dataclass(frozen=True)
class Tensor:
    """One input or output as the MLflow signature declares it (shape includes the batch dimension)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def triton_type(self) -> str:
        try:
            return DTYPES[self.dtype][0]
        except KeyError:
            raise UnsupportedSignature(
                f"tensor {self.name!r} has dtype {self.dtype}, which Triton cannot serve from TorchScript; "
                f"supported: {', '.join(DTYPES)}"
            ) from None


def tensor_from_numpy(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> Tensor:
    return Tensor(name=name, dtype=np.dtype(dtype).name, shape=tuple(int(d) for d in shape))


def _io(tensor: Tensor, name: str, batched: bool, cls: type) -> object:
    shape = list(tensor.shape)
    if batched:
        if not shape or shape[0] != -1:
            raise UnsupportedSignature(
                f"tensor {tensor.name!r} has shape {tensor.shape}: with maxBatchSize > 0 its first dimension "
                "must be the batch (-1); set maxBatchSize to 0 to serve fixed shapes"
            )
        shape = shape[1:]
    io = cls(name=name, data_type=pb.DataType.Value(tensor.triton_type), dims=shape or [1])
    if not shape:  # a batch of scalars: Triton wants one dim, the model sees none
        io.reshape.shape[:] = []
        io.reshape.SetInParent()
    return io


def tensor_names(tensors: list[Tensor], flavour: Flavour, model_format: ModelFormat = "torchscript") -> list[str]:
    """Names Triton exposes: the signature's for python and for ONNX graphs (which name their tensors);
    ``<name>__<index>`` for libtorch, whose TorchScript modules carry no output names (Triton's naming
    convention for that backend)."""
    if flavour == "python" or model_format == "onnx":
        return [t.name for t in tensors]
    return [f"{t.name}__{i}" for i, t in enumerate(tensors)]


def build(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    runtime: TritonRuntime,
    flavour: Flavour,
    model_format: ModelFormat = "torchscript",
) -> pb.ModelConfig:
    """The ModelConfig of model name for the given runtime settings. A TorchScript model runs on the libtorch
    backend in the native flavour, an ONNX model on the onnxruntime backend; both on the python backend else."""
    batched = runtime.max_batch_size > 0
    cfg = pb.ModelConfig(name=name, max_batch_size=runtime.max_batch_size)
    if flavour == "python":
        cfg.backend = "python"
    elif model_format == "onnx":
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = "model.onnx"
    else:
        cfg.platform = "pytorch_libtorch"
        cfg.default_model_filename = "model.pt"
    # Every version directory present is served: a repository holds the versions its pod serves.
    cfg.version_policy.all.SetInParent()
    in_names, out_names = tensor_names(inputs, flavour, model_format), tensor_names(outputs, flavour, model_format)
    cfg.input.extend(_io(t, n, batched, pb.ModelInput) for t, n in zip(inputs, in_names, strict=True))
    cfg.output.extend(_io(t, n, batched, pb.ModelOutput) for t, n in zip(outputs, out_names, strict=True))
    db = runtime.dynamic_batching
    if db is not None:
        if not batched:
            raise UnsupportedSignature("dynamicBatching needs maxBatchSize > 0")
        too_big = [s for s in db.preferred_batch_sizes if s > runtime.max_batch_size]
        if too_big:
            raise UnsupportedSignature(
                f"dynamicBatching.preferredBatchSizes {too_big} exceed maxBatchSize {runtime.max_batch_size}"
            )
        cfg.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_microseconds
        cfg.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_sizes)
        cfg.dynamic_batching.SetInParent()
    group = cfg.instance_group.add()
    group.count = runtime.instances
    group.kind = pb.ModelInstanceGroup.KIND_GPU if runtime.gpus > 0 else pb.ModelInstanceGroup.KIND_CPU
    if runtime.gpus > 0:
        group.gpus.extend(range(runtime.gpus))
    return cfg


def render(cfg: pb.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse(text: str) -> pb.ModelConfig:
    """Parse a config.pbtxt the way Triton does (unknown fields are errors)."""
    return text_format.Parse(text, pb.ModelConfig())
