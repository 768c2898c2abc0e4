"""config.pbtxt for both flavours, parsed back with Triton's own ModelConfig schema."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from kubeforge.api.modeldeployment import DynamicBatching, TritonRuntime
from kubeforge.serving import tritonconfig
from kubeforge.serving.tritonconfig import Tensor, UnsupportedSignature

INPUTS = [Tensor("features", "float32", (-1, 4))]
OUTPUTS = [Tensor("outputs", "float32", (-1, 3))]


def config(runtime: TritonRuntime, flavour: tritonconfig.Flavour = "python", inputs=INPUTS) -> pb.ModelConfig:
    return tritonconfig.parse(tritonconfig.render(tritonconfig.build("iris", inputs, OUTPUTS, runtime, flavour)))


def test_python_flavour_runs_on_cpu_with_signature_names_and_batching():
    cfg = config(TritonRuntime(max_batch_size=16, instances=2, dynamic_batching=DynamicBatching(
        max_queue_delay_microseconds=250, preferred_batch_sizes=[4, 8])))  # fmt: skip
    assert cfg.name == "iris" and cfg.backend == "python" and not cfg.platform
    assert cfg.max_batch_size == 16
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("features", "TYPE_FP32", [4])
    ]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("outputs", [3])]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]
    assert cfg.version_policy.HasField("all")


def test_libtorch_flavour_for_gpu_images():
    cfg = config(TritonRuntime(backend="pytorch_libtorch", gpus=2, max_batch_size=0), "pytorch_libtorch")
    assert cfg.platform == "pytorch_libtorch" and not cfg.backend
    assert cfg.default_model_filename == "model.pt"
    assert [i.name for i in cfg.input] == ["features__0"] and [o.name for o in cfg.output] == ["outputs__0"]
    assert list(cfg.input[0].dims) == [-1, 4]  # no batching: the batch dimension is part of the shape
    assert not cfg.HasField("dynamic_batching")
    group = cfg.instance_group[0]
    assert group.kind == pb.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0, 1]


def test_every_torch_dtype_maps_and_strings_do_not():
    for dtype, (triton, _) in tritonconfig.DTYPES.items():
        cfg = config(TritonRuntime(), inputs=[Tensor("features", dtype, (-1, 2))])
        assert pb.DataType.Name(cfg.input[0].data_type) == triton
    with pytest.raises(UnsupportedSignature, match="'features' has dtype str"):
        config(TritonRuntime(), inputs=[Tensor("features", "str", (-1, 2))])


def test_shapes_and_batching_that_triton_would_refuse():
    with pytest.raises(UnsupportedSignature, match="first dimension must be the batch"):
        config(TritonRuntime(max_batch_size=8), inputs=[Tensor("features", "float32", (3, 4))])
    with pytest.raises(UnsupportedSignature, match="needs maxBatchSize > 0"):
        config(TritonRuntime(max_batch_size=0, dynamic_batching=DynamicBatching()))
    with pytest.raises(UnsupportedSignature, match=r"preferredBatchSizes \[32\] exceed maxBatchSize 8"):
        config(TritonRuntime(max_batch_size=8, dynamic_batching=DynamicBatching(preferred_batch_sizes=[4, 32])))


def test_a_batch_of_scalars_gets_a_reshape():
    cfg = config(TritonRuntime(), inputs=[Tensor("features", "float32", (-1,))])
    assert list(cfg.input[0].dims) == [1] and cfg.input[0].HasField("reshape")
    assert list(cfg.input[0].reshape.shape) == []
