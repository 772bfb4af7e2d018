"""Tiny ONNX models in the forms PyTorch / Ultralytics exports take (NCHW), built with ``onnx.helper``.

* ``colour``: the colour model of ``tflite_builders`` (logits (4r, 4g, 4b, 2) on RGB in [0, 1]) as an
  NCHW graph ``[1, 3, H, W] → [1, 4, H, W]`` (``layout="NHWC"``: the same weights behind NHWC
  tensors, for comparing the two layouts); ``colour_probs`` ends in a Softmax over the channels;
* ``u2net``: seven ``[1, 1, H, W]`` sigmoid outputs like U²-Net's side outputs, the first the fused
  one (``sigmoid(8 (r - 0.5))``: red is foreground), the others different;
* ``class_map``: ArgMax of the colour logits as an int64 ``[1, H, W]`` class map (DeepLab exports);
* ``yolo_seg``: the detections and prototypes of ``instance_builders`` with NCHW prototypes
  ``[1, nm, mh, mw]``; ``yolo_seg_end2end``: an end-to-end head ``[1, K, 6 + nm]``.

``numpy_colour`` is the independent reference of the colour graph. ``ultralytics_props`` gives the
``metadata_props`` an Ultralytics export writes (``str()`` of Python values).
"""

from __future__ import annotations

from pathlib import Path

import instance_builders
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COLOUR_W = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 4], [0, 0, 0]], np.float32)  # (C, 3) over r, g, b
COLOUR_B = np.array([0, 0, 0, 2.0], np.float32)


def numpy_colour(rgb_unit: np.ndarray) -> np.ndarray:
    """Reference logits (h, w, 4) of RGB values in [0, 1] (h, w, 3)."""
    return rgb_unit.astype(np.float32) @ COLOUR_W.T + COLOUR_B


def _save(graph, path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge_seg tests")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def _input(height, width, layout: str = "NCHW", name: str = "images"):
    dims = [1, 3, height, width] if layout == "NCHW" else [1, height, width, 3]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _colour_nodes(x: str, out: str) -> tuple[list, list]:
    weights = numpy_helper.from_array(COLOUR_W.reshape(4, 3, 1, 1), "colour_w")
    bias = numpy_helper.from_array(COLOUR_B, "colour_b")
    return [helper.make_node("Conv", [x, "colour_w", "colour_b"], [out])], [weights, bias]


def build_colour(path: Path, size: tuple[int, int] = (32, 32), layout: str = "NCHW", probs: bool = False,
                 metadata: dict[str, str] | None = None, dynamic: bool = False) -> Path:
    """The colour model, ``size`` (width, height); ``dynamic``: batch, height and width are symbolic."""
    width, height = size
    nodes, inits = [], []
    x = "images"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    conv, inits = _colour_nodes(x, "conv")
    nodes += conv
    last = "conv"
    if probs:
        nodes.append(helper.make_node("Softmax", ["conv"], ["soft"], axis=1))
        last = "soft"
    name = "probs" if probs else "logits"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], [name], perm=[0, 2, 3, 1]))
    else:
        nodes.append(helper.make_node("Identity", [last], [name]))
    out_dims = [1, 4, height, width] if layout == "NCHW" else [1, height, width, 4]
    in_value = _input(height, width, layout)
    if dynamic:
        in_value = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
        out_dims = ["batch", 4, "height", "width"]
    graph = helper.make_graph(nodes, "colour", [in_value],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, out_dims)], inits)
    return _save(graph, path, metadata)


def build_u2net(path: Path, size: int = 32, outputs: int = 7) -> Path:
    """``outputs`` sigmoid maps [1, 1, size, size]: d0 = sigmoid(8 (r - 0.5)), d_k = sigmoid(8 (g - 0.5) + k)."""
    nodes, inits = [], []
    for k in range(outputs):
        w = np.zeros((1, 3, 1, 1), np.float32)
        w[0, 0 if k == 0 else 1] = 8.0
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(np.array([-4.0 + k], np.float32),
                                                                              f"b{k}")]
        nodes += [helper.make_node("Conv", ["input.1", f"w{k}", f"b{k}"], [f"z{k}"]),
                  helper.make_node("Sigmoid", [f"z{k}"], [f"d{k}"])]
    graph = helper.make_graph(
        nodes, "u2net_like", [_input(size, size, name="input.1")],
        [helper.make_tensor_value_info(f"d{k}", TensorProto.FLOAT, [1, 1, size, size]) for k in range(outputs)], inits)
    return _save(graph, path)


def build_class_map(path: Path, size: int = 32) -> Path:
    """ArgMax over the colour logits: int64 [1, size, size]."""
    nodes, inits = _colour_nodes("images", "logits")
    nodes.append(helper.make_node("ArgMax", ["logits"], ["classes"], axis=1, keepdims=0))
    graph = helper.make_graph(nodes, "class_map", [_input(size, size)],
                              [helper.make_tensor_value_info("classes", TensorProto.INT64, [1, size, size])], inits)
    return _save(graph, path)


def constant_outputs(outputs: dict[str, np.ndarray], size: int, name: str, path: Path,
                      metadata: dict[str, str] | None) -> Path:
    """A graph returning ``outputs`` (+ 0 * mean(input), which keeps the input in the graph)."""
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero")]
    values = []
    for out, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{out}_const"))
        flat = f"{out}_z"
        nodes += [helper.make_node("Reshape", ["z", f"{out}_shape"], [flat]),
                  helper.make_node("Add", [f"{out}_const", flat], [out])]
        inits.append(numpy_helper.from_array(np.ones(value.ndim, np.int64), f"{out}_shape"))
        values.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, name, [_input(size, size)], values, inits)
    return _save(graph, path, metadata)


def build_yolo_seg(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """``instance_builders``' candidates as an ONNX export: detections [1, 4+nc+nm, N], prototypes NCHW."""
    det = instance_builders.detections()[None]
    protos = instance_builders.prototypes().transpose(2, 0, 1)[None]
    return constant_outputs({"output0": det, "output1": protos}, instance_builders.SIZE, "yolo_seg", path, metadata)


def end2end_rows(max_det: int = 10) -> np.ndarray:
    """[max_det, 6 + nm]: the candidates ``instance_builders`` keeps after NMS as x1, y1, x2, y2, score, class,
    coefficients, the rest zero rows (score 0)."""
    det = instance_builders.detections()
    rows = np.zeros((max_det, 6 + instance_builders.NM), np.float32)
    for r, n in enumerate(instance_builders.EXPECTED_ORDER):
        cx, cy, w, h = det[:4, n]
        scores = det[4:4 + instance_builders.NC, n]
        rows[r, :6] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores.max(), scores.argmax())
        rows[r, 6:] = det[4 + instance_builders.NC:, n]
    return rows


def build_yolo_seg_end2end(path: Path, metadata: dict[str, str] | None = None, max_det: int = 10) -> Path:
    """An end-to-end head [1, max_det, 6 + nm] (NMS in the graph) with NCHW prototypes."""
    protos = instance_builders.prototypes().transpose(2, 0, 1)[None]
    return constant_outputs({"output0": end2end_rows(max_det)[None], "output1": protos}, instance_builders.SIZE,
                             "yolo_seg_end2end", path, metadata)


def ultralytics_props(names: dict[int, str], imgsz: list[int], task: str = "segment", end2end: bool = False,
                      dynamic: bool = False) -> dict[str, str]:
    """The ``metadata_props`` of an Ultralytics ONNX export: ``str()`` of each Python value."""
    return {"description": "Ultralytics YOLO11n-seg model", "author": "Ultralytics", "version": "8.3.0",
            "task": task, "stride": "32", "batch": "1", "imgsz": str(imgsz), "names": str(names),
            "end2end": str(end2end), "args": str({"batch": 1, "dynamic": dynamic, "nms": False})}
