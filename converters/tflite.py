"""Export to TFLite, run exported models, write the model manifest.

Variants (``VARIANTS``): ``float32``; ``float16`` (weights stored as float16, computed in float
on CPUs); ``dynamic`` (dynamic-range: int8 weights, float activations, no calibration);
``int8`` (full integer: ``TFLITE_BUILTINS_INT8`` only, uint8 input = RGB pixels, uint8 output,
probabilities at scale 1/256). ``int8`` of a float model is post-training quantisation (PTQ)
calibrated on the representative images; of a quantisation-aware model it reuses the ranges
learned in training. ``fuse_argmax`` replaces the final softmax by ARG_MAX + CAST: the output is
a uint8 (1, H, W) class map (manifest output kind ``class_map``), so the device skips the argmax
over full logits. (On the Edge TPU, ARG_MAX and CAST are the last two ops and run on the CPU.)
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
from edge_seg.evaluate.semantic import confusion_matrix  # noqa: E402
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
VARIANTS = ("float32", "float16", "dynamic", "int8")
Representative = Callable[[], Iterable[list[np.ndarray]]]


def _logits_model(model: keras.Model) -> keras.Model:
    """``model`` without its final softmax (argmax of logits == argmax of probabilities), if it ends in one."""
    last = model.layers[-1]
    inner = getattr(last, "layer", last)  # a tfmot QuantizeWrapper holds the real layer
    if isinstance(inner, keras.layers.Softmax) or getattr(inner, "activation", None) is keras.activations.softmax:
        return keras.Model(model.inputs, last.input, name=f"{model.name}_logits")
    return model


def serving_function(model: keras.Model, fuse_argmax: bool = False, uint8_input: bool = False):
    """A batch-1 ``tf.function`` of ``model``: probabilities, or a uint8 class map with ``fuse_argmax``.

    ``uint8_input`` takes RGB pixels (uint8) and divides by 255 inside the graph (used for ONNX,
    whose inputs carry no quantisation parameters).
    """
    shape = [1, *model.input_shape[1:]]
    spec = tf.TensorSpec(shape, tf.uint8 if uint8_input else tf.float32, name="image")
    net = _logits_model(model) if fuse_argmax else model

    def serve(image):
        x = tf.cast(image, tf.float32) * (1.0 / 255.0) if uint8_input else image
        probs = net(x, training=False)
        if fuse_argmax:
            return {"class_map": tf.cast(tf.argmax(probs, axis=-1, output_type=tf.int32), tf.uint8)}
        return {"probabilities": probs}

    return tf.function(serve, input_signature=[spec], autograph=False)


def _converter(model: keras.Model, tmp: str, fuse_argmax: bool = False) -> tf.lite.TFLiteConverter:
    """A converter over a minimal SavedModel: one serving function, batch 1.

    ``from_keras_model`` serialises every Keras layer's call functions into its SavedModel (about
    20 s even for a tiny QAT model); a plain ``tf.Module`` holding the model's variables and one
    traced function converts to the same flatbuffer several times faster.
    """
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name="image")
    module = tf.Module()
    module.weights = list(model.variables)  # tracked, so the SavedModel holds them
    net = _logits_model(model) if fuse_argmax else model

    def serve(image):
        probs = net(image, training=False)
        if fuse_argmax:
            return {"class_map": tf.cast(tf.argmax(probs, axis=-1, output_type=tf.int32), tf.uint8)}
        return {"probabilities": probs}

    module.serve = tf.function(serve, input_signature=[spec], autograph=False)
    tf.saved_model.save(module, tmp, signatures=module.serve.get_concrete_function())
    return tf.lite.TFLiteConverter.from_saved_model(tmp)


def export(model: keras.Model, variant: str = "float32", representative: Representative | None = None,
           fuse_argmax: bool = False, per_channel: bool = True) -> bytes:
    """A TFLite flatbuffer of ``model`` in one of ``VARIANTS`` (see the module docstring).

    ``representative`` (needed for ``int8``) yields ``[float32 (1, H, W, 3) in [0, 1]]`` samples
    (``converters.data.representative_images``); its length is the calibration set size.
    ``per_channel=False`` gives int8 weights one scale per tensor (match it to how QAT was run).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="edge_seg_export_") as tmp:
        converter = _converter(model, tmp, fuse_argmax)
        if variant == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif variant == "int8":
            if representative is None:
                raise ValueError("full-int8 export needs representative images")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
            converter._experimental_disable_per_channel = not per_channel
        return converter.convert()


def strip_tensor_names(flatbuffer: bytes) -> bytes:
    """The model without the names of its intermediate tensors (inputs, outputs and signatures keep theirs).

    The converter names every tensor after the TensorFlow ops fused into it; for a small int8
    network that is ~5 % of the file. Kernels never read the names.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    for subgraph in model.subgraphs:
        keep = {int(i) for i in subgraph.inputs} | {int(i) for i in subgraph.outputs}
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_float(model: keras.Model) -> bytes:
    """A float32 TFLite flatbuffer of ``model`` (input float32 RGB in [0, 1])."""
    return export(model, "float32")


def export_int8(model: keras.Model, representative: Representative, fuse_argmax: bool = False) -> bytes:
    """A full-int8 TFLite flatbuffer: int8 kernels only, uint8 input and output tensors.

    For a quantisation-aware model the ranges come from training (``qat.pin_input_range`` fixes
    the input to scale 1/255, zero point 0); for a float model this is PTQ.
    """
    return export(model, "int8", representative, fuse_argmax)


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

    @property
    def is_class_map(self) -> bool:
        """True when the model ends in a fused argmax (uint8 (1, H, W) output)."""
        return len(self.output.shape) == 3

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """Class map (h, w) uint8 at model size for an RGB uint8 image at model size."""
        raw = self.raw(rgb)
        return raw.astype(np.uint8) if self.is_class_map else raw.argmax(axis=-1).astype(np.uint8)

    def segment(self, image_bgr: np.ndarray) -> np.ndarray:
        """Class map (H, W) uint8 at the frame's size for a BGR frame of any size."""
        h, w = image_bgr.shape[:2]
        small = cv2.resize(image_bgr, self.size, interpolation=cv2.INTER_LINEAR)
        labels = self.labels(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
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


def parity(model: keras.Model, runner: TFLiteRunner, images_rgb: np.ndarray, margin: float = 0.05) -> float:
    """Fraction of pixels where the TFLite model's argmax agrees with the Keras model's.

    Only pixels the Keras model decides count: where its top score beats the runner-up by at least
    ``margin`` (of the output's range over the image). An int8 model flips near-ties, which is
    rounding, not a conversion fault; a barely trained model (the smoke-test recipe) is mostly ties.
    """
    agree = total = 0
    for rgb in images_rgb:
        out = model(rgb[None].astype(np.float32) / 255.0, training=False).numpy()[0]
        ref = out.argmax(-1)
        top2 = np.sort(out, axis=-1)[..., -2:]
        decided = (top2[..., 1] - top2[..., 0]) >= margin * max(float(out.max() - out.min()), 1e-6)
        agree += int((runner.labels(rgb) == ref)[decided].sum())
        total += int(decided.sum())
    return agree / total if total else 1.0


def write_manifest(out_dir: str | Path, model_file: str, *, name: str, version: str,
                   classes: Sequence[str], palette: Sequence[tuple[int, int, int]],
                   baseline: dict[str, float] | None = None,
                   metrics: dict[str, float] | None = None,
                   extra_files: dict[str, FileEntry] | None = None) -> Path:
    """Write ``manifest.json`` for an exported TFLite model in ``out_dir`` (read from the file).

    ``extra_files`` adds other entries (``onnx``, ``edgetpu``) to ``files`` beside ``tflite``.
    """
    out = Path(out_dir)
    path = out / model_file
    runner = TFLiteRunner(path, num_threads=1)
    manifest = Manifest(
        name=name, version=version, task="semantic", classes=list(classes), palette=list(palette),
        input=InputSpec(width=runner.size[0], height=runner.size[1], color_order="rgb",
                        dtype=runner.input.dtype, resize="stretch", mean=[0.0] * 3, std=[255.0] * 3),
        output=OutputSpec(kind="class_map" if runner.is_class_map else "probabilities", tensors=[runner.output.name]),
        files={"tflite": FileEntry(path=model_file, sha256=sha256_file(path)), **(extra_files or {})},
        baseline=baseline, metrics=dict(metrics or {}))
    target = out / MANIFEST_NAME
    target.write_text(manifest.dump())
    return target


def convert(model: keras.Model, out_dir: str | Path, representative: Representative | None,
            check_images: np.ndarray, *, name: str, version: str, classes: Sequence[str],
            palette: Sequence[tuple[int, int, int]], baseline: dict[str, float] | None = None,
            metrics: dict[str, float] | None = None, min_agreement: float = 0.95, variant: str = "int8",
            fuse_argmax: bool = False, file_name: str | None = None,
            reference: keras.Model | None = None, per_channel: bool = True,
            strip_names: bool = False) -> tuple[Path, float]:
    """Export ``model`` as one TFLite ``variant`` + ``manifest.json`` in ``out_dir``, checked against a Keras model.

    ``check_images`` are RGB uint8 at model size; the exported model's class map must agree
    with the argmax of ``reference`` (default: ``model``) on at least ``min_agreement`` of their
    pixels, else ``ModelError``. ``strip_names`` drops intermediate tensor names (``strip_tensor_names``).
    Returns the manifest path and the agreement.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (file_name or (INT8_NAME if variant == "int8" else f"model_{variant}.tflite"))
    flatbuffer = export(model, variant, representative, fuse_argmax, per_channel)
    path.write_bytes(strip_tensor_names(flatbuffer) if strip_names else flatbuffer)
    agreement = parity(reference or model, TFLiteRunner(path), check_images)
    if agreement < min_agreement:
        raise ModelError(f"{path.name} agrees with the Keras model on only {agreement:.1%} of pixels "
                         f"(need {min_agreement:.0%}): check the quantisation ranges / representative data")
    manifest = write_manifest(out, path.name, name=name, version=version, classes=classes, palette=palette,
                              baseline=baseline, metrics=metrics)
    return manifest, agreement
