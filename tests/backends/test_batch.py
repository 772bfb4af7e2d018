"""Batch > 1 in one invoke: ONNX Runtime with a dynamic batch dimension, a fixed one refused (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from edge_seg.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402


def _softmax_model(path, batch) -> str:
    """NHWC float input → per-pixel softmax over 3 channels; ``batch`` a number (fixed) or a name (dynamic)."""
    shape = [batch, 8, 8, 3]
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_dynamic_batch_takes_several_frames_in_one_run_with_the_same_outputs(tmp_path):
    backend = OnnxRuntimeBackend()
    backend.load(_softmax_model(tmp_path / "dyn.onnx", "N"))
    assert backend.resize_batch(4) == 4 and not backend.fixed_batch
    frames = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    together = backend.infer(frames)[0]
    alone = [backend.infer(frames[i:i + 1])[0] for i in range(3)]
    assert together.shape == (3, 8, 8, 3) and np.allclose(together, np.concatenate(alone), atol=1e-6)


def test_a_fixed_batch_of_one_stays_one_frame_per_run(tmp_path):
    backend = OnnxRuntimeBackend()
    backend.load(_softmax_model(tmp_path / "fixed.onnx", 1))
    assert backend.resize_batch(4) == 1
