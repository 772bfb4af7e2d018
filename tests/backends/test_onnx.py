"""ONNX export (tf2onnx), the TensorRT Q/DQ rewrite, and the onnxruntime backend (agreement on a trained
model is checked in test_converters_pipeline)."""

from __future__ import annotations

import numpy as np
import pytest

import converters  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow_model_optimization")

import onnx  # noqa: E402

from converters import onnx as conv_onnx  # noqa: E402
from converters import qat  # noqa: E402
from converters.architectures import ArchConfig, build_model  # noqa: E402
from converters.tensorrt import for_tensorrt, tensorrt_problems, weight_scale  # noqa: E402
from edge_seg.backends.base import BackendOptions  # noqa: E402
from edge_seg.errors import BackendUnavailable, ModelError  # noqa: E402


@pytest.fixture(scope="module")
def models():
    """(float model, QAT model with its input range pinned) of a small untrained LR-ASPP network."""
    model = build_model(ArchConfig(width=32, height=32, num_classes=3, alpha=0.25, arch="lraspp"))
    q = qat.quantize(model)
    q(np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32), training=True)  # calibrate ranges
    qat.pin_input_range(q)
    return model, q


@pytest.fixture(scope="module")
def qdq(models):
    return conv_onnx.export(models[1], qdq=True)


def test_float_export_takes_float_input_and_matches_keras(models, tmp_path):
    model = models[0]
    proto = conv_onnx.export(model, output_name="probs_out")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].name == "probs_out"
    assert not any(p.key.startswith("edge_seg.") for p in proto.metadata_props)
    runner = conv_onnx.OnnxRunner(proto.SerializeToString())
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = model(x[None].astype(np.float32) / 255.0).numpy()[0]
    assert np.allclose(runner.raw(x), ref, atol=1e-5)


def test_qdq_export_takes_uint8_pixels_and_records_the_input_scale(qdq):
    assert qdq.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in qdq.metadata_props}
    assert float(meta[conv_onnx.META_SCALE]) == pytest.approx(1 / 255) and meta[conv_onnx.META_ZERO_POINT] == "0"
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and "Mul" in ops  # the LR-ASPP gate survives as a quantised Mul


def test_tensorrt_rewrite_fixes_every_problem_and_still_runs(qdq):
    before = tensorrt_problems(qdq)
    assert any("zero point is UINT8" in p for p in before)
    assert any("weights are not quantised" in p for p in before)
    ready = for_tensorrt(qdq)
    assert tensorrt_problems(ready) == []
    x = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a = conv_onnx.OnnxRunner(qdq.SerializeToString()).raw(x)
    b = conv_onnx.OnnxRunner(ready.SerializeToString()).raw(x)
    assert a.shape == b.shape == (32, 32, 3)
    assert np.abs(a - b).max() < 0.15  # symmetric int8 activations have half the steps after a ReLU


def test_weight_scales_reproduce_the_qat_grid_per_channel_or_per_tensor():
    rng = np.random.default_rng(0)
    channel_scales = np.array([0.01, 0.02, 0.05], np.float32).reshape(3, 1, 1, 1)
    weights = np.clip(rng.integers(-127, 128, (3, 2, 3, 3)), -127, 127).astype(np.float32) * channel_scales
    weights[:, 0, 0, 0] = 127 * channel_scales[:, 0, 0, 0]  # each channel reaches its range
    scale, axis = weight_scale(weights)
    assert axis == {"axis": 0} and np.allclose(scale, channel_scales.ravel())
    tensor_grid = rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.float32) * 0.01
    tensor_grid[0, 0, 0, 0] = 1.27
    scale, axis = weight_scale(tensor_grid)
    assert axis == {} and float(scale) == pytest.approx(0.01)


def test_an_untrained_input_range_is_a_clear_error():
    model = build_model(ArchConfig(width=32, height=32, num_classes=3, alpha=0.25))
    with pytest.raises(ModelError, match="pin the input range"):
        conv_onnx.export(qat.quantize(model), qdq=True)


def test_onnxruntime_backend_reports_the_metadata_input_quantisation(qdq, tmp_path):
    from edge_seg.backends import backend_for_path, create
    from edge_seg.backends.tensorrt import onnx_input_quantisation

    path = tmp_path / "model_qdq.onnx"
    path.write_bytes(qdq.SerializeToString())
    assert backend_for_path(path) == "onnxruntime"
    backend = create("onnxruntime")
    backend.load(path, None, BackendOptions(num_threads=1))
    spec = backend.input_spec
    assert spec.dtype == np.uint8 and spec.shape == (1, 32, 32, 3)
    assert spec.quantized and spec.scale == pytest.approx(1 / 255) and spec.zero_point == 0
    assert backend.providers == ["CPUExecutionProvider"]
    out = backend.infer(np.zeros(spec.shape, np.uint8))
    assert out[0].shape == backend.output_specs[0].shape == (1, 32, 32, 3)
    backend.close()
    assert onnx_input_quantisation(path) == (pytest.approx(1 / 255), 0)


def test_onnxruntime_provider_choice():
    from edge_seg.backends.onnxruntime import choose_providers

    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(list(reversed(gpu))) == gpu
    assert choose_providers(gpu, ["CUDAExecutionProvider"]) == ["CUDAExecutionProvider"]
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):
        choose_providers(["CPUExecutionProvider"], ["TensorrtExecutionProvider"])


def test_onnxruntime_backend_refuses_a_broken_file(tmp_path):
    from edge_seg.backends import create

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load bad.onnx"):
        create("onnxruntime").load(bad, None, BackendOptions())
