"""Build tiny TFLite models whose outputs are known functions of the input, for tests.

"Colour" models classify each pixel by colour: with RGB input scaled to [0, 1], the logits
are (4r, 4g, 4b, 2), so pure red/green/blue pixels are classes 0/1/2 and dark pixels class 3.
The "binary" model outputs sigmoid(8 * (r - 0.5)): red pixels are foreground.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

COLOUR_CLASSES = ["red", "green", "blue", "dark"]
# BGR frames of each class colour
BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "dark": (20, 20, 20)}


def _colour_logits(tf, x):
    weights = tf.constant(np.array([[[[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]]]], np.float32))
    return tf.nn.conv2d(x, weights, strides=1, padding="SAME") + tf.constant([0, 0, 0, 2.0])


def build(kind: str, path: Path, size: int = 32, io: str = "float32") -> Path:
    """Write a tiny model. kind: colour_logits | colour_probs | binary_sigmoid | binary_logits;
    io: float32 | uint8 | int8 (full-integer quantisation with that input/output type)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def model(x):
        if kind.startswith("colour"):
            logits = _colour_logits(tf, x)
            return tf.nn.softmax(logits) if kind == "colour_probs" else logits
        logit = 8.0 * (x[..., :1] - 0.5)
        return tf.sigmoid(logit) if kind == "binary_sigmoid" else logit

    return convert(model, path, io, size)


def convert(model, path: Path, io: str, size: int, samples: int = 16) -> Path:
    """Write the TFLite of a ``tf.function`` taking a (1, size, size, 3) float image; with ``io`` uint8
    or int8 it is fully integer-quantised with that input/output type (random representative images)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    if io != "float32":
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(samples):
                yield [rng.random((1, size, size, 3), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)
    path = Path(path)
    path.write_bytes(converter.convert())
    return path


def colour_frame(width: int = 64, height: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A BGR frame with four vertical bands (red, green, blue, dark) and its class map."""
    frame = np.zeros((height, width, 3), np.uint8)
    truth = np.zeros((height, width), np.uint8)
    bands = np.array_split(np.arange(width), 4)
    for cls, cols in enumerate(bands):
        frame[:, cols] = BGR[COLOUR_CLASSES[cls]]
        truth[:, cols] = cls
    return frame, truth


def build_nchw(path: Path, size: int = 32) -> Path:
    """The float colour-logits model with NCHW tensors ([1, 3, size, size] in, [1, 4, size, size] out), as a
    PyTorch model converted to TFLite without layout changes would be."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 3, size, size], tf.float32)])
    def model(x):
        logits = _colour_logits(tf, tf.transpose(x, [0, 2, 3, 1]))
        return tf.transpose(logits, [0, 3, 1, 2])

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    path = Path(path)
    path.write_bytes(converter.convert())
    return path
