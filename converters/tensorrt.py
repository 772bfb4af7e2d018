"""Make a Q/DQ ONNX model what TensorRT's explicit quantisation accepts, and say what would break it.

tf2onnx writes each tfmot fake-quant as a uint8 QuantizeLinear/DequantizeLinear pair with the
learned (asymmetric) range, and bakes the fake-quantised weights into float constants. TensorRT
takes only signed int8 Q/DQ with zero point 0, and runs a convolution in int8 only when its
weights are quantised too. ``for_tensorrt``:

1. re-expresses every uint8 activation pair as int8 with zero point 0 and the scale that covers
   the same real range (``max(|lo|, |hi|) / 127``; for post-ReLU tensors that is half the steps);
2. puts a symmetric Q/DQ pair on every Conv's float weights, per output channel
   (``scale = max|w_c| / 127``) or per tensor for a model trained with per-tensor weights. tfmot's
   weights are already on that grid (8-bit, symmetric, narrow range), so this step loses nothing.

The engine itself is built on the device (``edge-seg model build-engine``,
``edge_seg.backends.tensorrt``): engines do not move between TensorRT versions or GPUs.
"""

from __future__ import annotations

import numpy as np

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


def _initializers(graph) -> dict:
    return {init.name: init for init in graph.initializer}


def tensorrt_problems(proto) -> list[str]:
    """What keeps TensorRT from running this model in explicit int8 (empty when it is ready).

    Checks: Q/DQ scales and zero points are constants; zero points are int8 and 0; every Conv's
    weights pass through DequantizeLinear; no tf2onnx leftovers (FakeQuant*) or custom domains.
    """
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    inits = _initializers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    problems = []
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"node {i} {node.op_type}: custom domain {node.domain!r}")
        if node.op_type.startswith("FakeQuant"):
            problems.append(f"node {i} {node.op_type} ({node.name}): not an ONNX op")
        if node.op_type in (_Q, _DQ):
            if len(node.input) < 3 or node.input[2] not in inits or node.input[1] not in inits:
                problems.append(f"node {i} {node.op_type} ({node.name}): scale/zero point must be constants")
                continue
            zp = inits[node.input[2]]
            if zp.data_type != TensorProto.INT8:
                problems.append(f"node {i} {node.op_type} ({node.name}): zero point is "
                                f"{TensorProto.DataType.Name(zp.data_type)}, TensorRT needs INT8")
            elif np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"node {i} {node.op_type} ({node.name}): zero point is not 0")
        if node.op_type == "Conv":
            weight = producers.get(node.input[1])
            if weight is None or weight.op_type != _DQ:
                problems.append(f"node {i} Conv ({node.name}): weights are not quantised (no DequantizeLinear)")
    return problems


def _on_grid(weights: np.ndarray, scale: np.ndarray) -> bool:
    steps = weights / scale
    return bool(np.all(np.abs(steps - np.round(steps)) < 1e-3))


def weight_scale(weights: np.ndarray) -> tuple[np.ndarray, dict]:
    """Symmetric int8 scale(s) for Conv weights (O, I, kh, kw) and the Q/DQ ``axis`` attribute.

    Per output channel, unless the weights already sit exactly on one per-tensor grid (a model
    trained with ``--per-tensor``): then one scale, so re-quantising loses nothing.
    """
    amax = np.abs(weights.reshape(weights.shape[0], -1)).max(axis=1)
    per_channel = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    per_channel_exact = _on_grid(weights, per_channel.reshape(-1, *([1] * (weights.ndim - 1))))
    tensor = np.float32(max(float(amax.max()), 1e-12) / 127.0)
    if not per_channel_exact and _on_grid(weights, tensor):
        return np.array(tensor, np.float32), {}
    return per_channel, {"axis": 0}


def for_tensorrt(proto):
    """A copy of a tf2onnx Q/DQ model rewritten for TensorRT (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = _initializers(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    # 1. activations: uint8 asymmetric -> int8 symmetric, one new scale/zero point per Q node and its DQs
    for node in list(graph.node):
        if node.op_type != _Q or len(node.input) < 3 or node.input[2] not in inits:
            continue
        zp_init = inits[node.input[2]]
        if zp_init.data_type != TensorProto.UINT8:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(zp_init).astype(np.float64)
        lo, hi = (0.0 - zp) * scale, (255.0 - zp) * scale
        new_scale = np.maximum(np.maximum(np.abs(lo), np.abs(hi)) / 127.0, 1e-12).astype(np.float32)
        s_name = const(f"{node.name}_trt_scale", new_scale)
        z_name = const(f"{node.name}_trt_zp", np.zeros(new_scale.shape, np.int8))
        targets = [node] + [c for c in consumers.get(node.output[0], []) if c.op_type == _DQ]
        for target in targets:
            target.input[1], target.input[2] = s_name, z_name

    # 2. Conv weights: per-output-channel symmetric Q/DQ on the float initializer
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            w_name = node.input[1]
            weights = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            scale, axis_args = weight_scale(weights)
            s_name = const(f"{w_name}_w_scale", scale)
            z_name = const(f"{w_name}_w_zp", np.zeros(scale.shape, np.int8))
            q_out, dq_out = f"{w_name}_w_q", f"{w_name}_w_dq"
            new_nodes.append(helper.make_node(_Q, [w_name, s_name, z_name], [q_out], name=f"{w_name}_wQ", **axis_args))
            new_nodes.append(helper.make_node(_DQ, [q_out, s_name, z_name], [dq_out], name=f"{w_name}_wDQ",
                                              **axis_args))
            node.input[1] = dq_out
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    # drop initializers nothing reads any more (the old uint8 scales/zero points)
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model
