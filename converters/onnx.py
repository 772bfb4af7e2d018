"""Export to ONNX with tf2onnx: the float model, and the QAT model with QuantizeLinear/DequantizeLinear.

Two files, each mirroring its TFLite sibling's input contract so it can share that manifest:

* ``model_float.onnx`` (float model): float32 RGB input in [0, 1], probabilities out.
* ``model_qdq.onnx`` (QAT model, explicit quantisation): uint8 RGB pixels in (the graph divides by
  255; the input scale 1/255 and zero point 0 are stored in the model's metadata as
  ``edge_seg.input_scale`` / ``edge_seg.input_zero_point`` for the runtime). tf2onnx turns each
  fake-quant node into a QuantizeLinear/DequantizeLinear pair; ``converters.tensorrt.for_tensorrt``
  then makes the pairs what TensorRT accepts (symmetric int8, weight Q/DQ).

``fuse_argmax`` ends either graph with ArgMax + Cast: a uint8 (1, H, W) class map.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from edge_seg.errors import ModelError  # noqa: E402

OPSET = 17
FLOAT_NAME = "model_float.onnx"
QDQ_NAME = "model_qdq.onnx"
META_SCALE = "edge_seg.input_scale"
META_ZERO_POINT = "edge_seg.input_zero_point"


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise ModelError("ONNX export needs tf2onnx and onnx: pip install 'edge-seg[convert]'") from None
    return tf2onnx


def rename_output(proto, new_name: str) -> None:
    """Rename the graph's (single) output tensor in place, e.g. to its TFLite sibling's output name,
    so one manifest's ``output.tensors`` fits both files."""
    old = proto.graph.output[0].name
    if old == new_name:
        return
    for node in proto.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new_name
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new_name
    proto.graph.output[0].name = new_name


def export(model, *, qdq: bool = False, fuse_argmax: bool = False, opset: int = OPSET,
           output_name: str | None = None):
    """An ``onnx.ModelProto`` of a Keras model (float, or QAT with ``qdq``); see the module docstring."""
    import onnx

    from converters.tflite import serving_function

    tf2onnx = _tf2onnx()
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    function = serving_function(model, fuse_argmax=fuse_argmax, uint8_input=qdq)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                             opset=opset)
    leftovers = sorted({n.op_type for n in proto.graph.node if n.op_type.startswith("FakeQuant")})
    if leftovers:
        raise ModelError(f"tf2onnx left {', '.join(leftovers)} in the graph: a fake-quant range is empty "
                         "(pin the input range with qat.pin_input_range and train at least one QAT step)")
    if qdq:
        for key, value in ((META_SCALE, repr(1.0 / 255.0)), (META_ZERO_POINT, "0")):
            proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    proto.producer_name = "edge_seg.converters"
    if output_name:
        rename_output(proto, output_name)
    onnx.checker.check_model(proto)
    return proto


class OnnxRunner:
    """Runs an ONNX model with onnxruntime (CPU) the way the device does, for parity checks."""

    def __init__(self, model: "bytes | str | Path", num_threads: int = 2):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0]
        self._dtype = np.uint8 if self._input.type == "tensor(uint8)" else np.float32
        self.size = (int(self._input.shape[2]), int(self._input.shape[1]))
        out = self.session.get_outputs()[0]
        self.is_class_map = len(out.shape) == 3

    def raw(self, rgb: np.ndarray) -> np.ndarray:
        x = rgb[None] if self._dtype == np.uint8 else (rgb.astype(np.float32) / 255.0)[None]
        return self.session.run(None, {self._input.name: x})[0][0]

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        raw = self.raw(rgb)
        return raw.astype(np.uint8) if self.is_class_map else raw.argmax(-1).astype(np.uint8)

    def segment(self, image_bgr: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image_bgr.shape[:2]
        small = cv2.resize(image_bgr, self.size, interpolation=cv2.INTER_LINEAR)
        labels = self.labels(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def agreement(a, b, images_rgb: Sequence[np.ndarray]) -> float:
    """Fraction of pixels where two runners (``.labels(rgb)``) give the same class."""
    same = total = 0
    for rgb in images_rgb:
        la, lb = a.labels(rgb), b.labels(rgb)
        same += int((la == lb).sum())
        total += la.size
    return same / max(total, 1)


def convert(model, out_dir: str | Path, check_images: np.ndarray, *, reference, qdq: bool = False,
            fuse_argmax: bool = False, tensorrt: bool = True, min_agreement: float | None = None,
            file_name: str | None = None) -> tuple[Path, float]:
    """Write ``model`` as ONNX into ``out_dir`` and check it against ``reference`` (a runner of the source).

    ``reference`` is the TFLite runner of the same model (float TFLite for the float export,
    the QAT int8 TFLite for ``qdq``); their class maps must agree on ``min_agreement`` of the
    ``check_images`` pixels (default 99.5 % float, 99 % Q/DQ) or ``ModelError`` is raised. With
    ``qdq`` and ``tensorrt`` the Q/DQ pairs are rewritten for TensorRT first. The manifest entry is
    written by the caller (the ONNX file shares its TFLite sibling's manifest). Returns (path, agreement).
    """
    output = getattr(reference, "output", None)  # a TFLiteRunner: name the output like the TFLite model
    proto = export(model, qdq=qdq, fuse_argmax=fuse_argmax, output_name=getattr(output, "name", None))
    if qdq and tensorrt:
        from converters.tensorrt import for_tensorrt

        proto = for_tensorrt(proto)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (file_name or (QDQ_NAME if qdq else FLOAT_NAME))
    path.write_bytes(proto.SerializeToString())
    agreed = agreement(OnnxRunner(path), reference, check_images)
    need = min_agreement if min_agreement is not None else (0.99 if qdq else 0.995)
    if agreed < need:
        raise ModelError(f"{path.name} agrees with {'the int8' if qdq else 'the float'} TFLite model on only "
                         f"{agreed:.2%} of pixels (need {need:.1%})")
    return path, agreed
