"""Export to TFLite (float32 and full-int8), run exported models, write the model manifest.

The int8 model is fully integer: ``TFLITE_BUILTINS_INT8`` only, uint8 input (RGB pixels) and
uint8 output (probabilities, scale 1/256). Exporting a quantisation-aware model reuses the ranges
learned in training; the representative images calibrate whatever QAT did not cover.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edge_seg.errors import ModelError  # noqa: E402
from edge_seg.evaluate import confusion_matrix  # noqa: E402
from edge_seg.manifest import (  # noqa: E402
    MANIFEST_NAME,
    FileEntry,
    InputSpec,
    Manifest,
    OutputSpec,
    sha256_file,
)

INT8_NAME = "model_int8.tflite"
FLOAT_NAME = "model_float.tflite"


def _converter(model: keras.Model, tmp: str) -> tf.lite.TFLiteConverter:
    """A converter over a minimal SavedModel: one serving function, batch 1.

    ``from_keras_model`` serialises every Keras layer's call functions into its SavedModel (about
    20 s even for a tiny QAT model); a plain ``tf.Module`` holding the model's variables and one
    traced function converts to the same flatbuffer several times faster.
    """
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name="image")
    module = tf.Module()
    module.weights = list(model.variables)  # tracked, so the SavedModel holds them

    def serve(image):
        return {"probabilities": model(image, training=False)}

    module.serve = tf.function(serve, input_signature=[spec], autograph=False)
    tf.saved_model.save(module, tmp, signatures=module.serve.get_concrete_function())
    return tf.lite.TFLiteConverter.from_saved_model(tmp)


def export_float(model: keras.Model) -> bytes:
    """A float32 TFLite flatbuffer of ``model`` (input float32 RGB in [0, 1])."""
    with tempfile.TemporaryDirectory(prefix="edge_seg_export_") as tmp:
        return _converter(model, tmp).convert()


def export_int8(model: keras.Model, representative: Callable[[], Iterable[list[np.ndarray]]]) -> bytes:
    """A full-int8 TFLite flatbuffer: int8 kernels only, uint8 input and output tensors.

    ``representative`` yields ``[float32 (1, H, W, 3) in [0, 1]]`` samples (see
    ``converters.data.representative_images``). For a quantisation-aware model the ranges come
    from training (``qat.pin_input_range`` fixes the input to scale 1/255, zero point 0).
    """
    with tempfile.TemporaryDirectory(prefix="edge_seg_export_") as tmp:
        converter = _converter(model, tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        return converter.convert()


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


def _info(detail: dict) -> TensorInfo:
    scale, zero_point = detail["quantization"]
    return TensorInfo(detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale), int(zero_point))


class TFLiteRunner:
    """Runs an exported model the way the device does: stretch-resize, RGB, quantise, argmax, resize back."""

    def __init__(self, model: bytes | str | Path, num_threads: int = 2):
        kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        self._interp = Interpreter(num_threads=num_threads, **kwargs)
        self._interp.allocate_tensors()
        self.input = _info(self._interp.get_input_details()[0])
        self.output = _info(self._interp.get_output_details()[0])
        self._in_index = self._interp.get_input_details()[0]["index"]
        self._out_index = self._interp.get_output_details()[0]["index"]

    @property
    def size(self) -> tuple[int, int]:
        return self.input.shape[2], self.input.shape[1]

    def tensor(self, rgb: np.ndarray) -> np.ndarray:
        """The input tensor for an RGB uint8 image already at model size (``real = pixel / 255``)."""
        if self.input.dtype == "float32":
            return (rgb.astype(np.float32) / 255.0)[None]
        q = np.round(rgb.astype(np.float32) / 255.0 / self.input.scale + self.input.zero_point)
        info = np.iinfo(self.input.dtype)
        return np.clip(q, info.min, info.max).astype(self.input.dtype)[None]

    def raw(self, rgb: np.ndarray) -> np.ndarray:
        """The raw output (H, W, C) for an RGB uint8 image at model size."""
        self._interp.set_tensor(self._in_index, self.tensor(rgb))
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)[0]

    def invoke(self) -> None:
        self._interp.invoke()

    def segment(self, image_bgr: np.ndarray) -> np.ndarray:
        """Class map (H, W) uint8 at the frame's size for a BGR frame of any size."""
        h, w = image_bgr.shape[:2]
        small = cv2.resize(image_bgr, self.size, interpolation=cv2.INTER_LINEAR)
        labels = self.raw(cv2.cvtColor(small, cv2.COLOR_BGR2RGB)).argmax(axis=-1).astype(np.uint8)
        return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def miou(runner: TFLiteRunner, frames: Sequence, num_classes: int) -> tuple[float, list[float]]:
    """Mean and per-class IoU of ``runner`` over ``Scene``-like frames (``.image`` BGR, ``.mask`` ids)."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for frame in frames:
        cm += confusion_matrix(runner.segment(frame.image), frame.mask, num_classes)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.full(num_classes, np.nan), where=present)
    return float(iou[present].mean()), [float(v) for v in iou]


def parity(model: keras.Model, runner: TFLiteRunner, images_rgb: np.ndarray) -> float:
    """Fraction of pixels where the TFLite model's argmax agrees with the Keras model's."""
    agree = total = 0
    for rgb in images_rgb:
        ref = model(rgb[None].astype(np.float32) / 255.0, training=False).numpy()[0].argmax(-1)
        agree += int((runner.raw(rgb).argmax(-1) == ref).sum())
        total += ref.size
    return agree / max(total, 1)


def write_manifest(out_dir: str | Path, model_file: str, *, name: str, version: str,
                   classes: Sequence[str], palette: Sequence[tuple[int, int, int]],
                   baseline: dict[str, float] | None = None,
                   metrics: dict[str, float] | None = None) -> Path:
    """Write ``manifest.json`` for an exported int8/float TFLite model in ``out_dir`` (read from the file)."""
    out = Path(out_dir)
    path = out / model_file
    runner = TFLiteRunner(path, num_threads=1)
    manifest = Manifest(
        name=name, version=version, task="semantic", classes=list(classes), palette=list(palette),
        input=InputSpec(width=runner.size[0], height=runner.size[1], color_order="rgb",
                        dtype=runner.input.dtype, resize="stretch", mean=[0.0] * 3, std=[255.0] * 3),
        output=OutputSpec(kind="probabilities", tensors=[runner.output.name]),
        files={"tflite": FileEntry(path=model_file, sha256=sha256_file(path))},
        baseline=baseline, metrics=dict(metrics or {}))
    target = out / MANIFEST_NAME
    target.write_text(manifest.dump())
    return target


def convert(model: keras.Model, out_dir: str | Path, representative: Callable[[], Iterable[list[np.ndarray]]],
            check_images: np.ndarray, *, name: str, version: str, classes: Sequence[str],
            palette: Sequence[tuple[int, int, int]], baseline: dict[str, float] | None = None,
            metrics: dict[str, float] | None = None, min_agreement: float = 0.95) -> tuple[Path, float]:
    """Export ``model`` as ``model_int8.tflite`` + ``manifest.json`` in ``out_dir``, checked against ``model``.

    ``check_images`` are RGB uint8 at model size; the int8 model's argmax must agree with the
    Keras model's on at least ``min_agreement`` of their pixels, else ``ModelError``. Returns the
    manifest path and the agreement.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / INT8_NAME
    path.write_bytes(export_int8(model, representative))
    agreement = parity(model, TFLiteRunner(path), check_images)
    if agreement < min_agreement:
        raise ModelError(f"{path.name} agrees with the Keras model on only {agreement:.1%} of pixels "
                         f"(need {min_agreement:.0%}): check the quantisation ranges / representative data")
    manifest = write_manifest(out, INT8_NAME, name=name, version=version, classes=classes, palette=palette,
                              baseline=baseline, metrics=metrics)
    return manifest, agreement
