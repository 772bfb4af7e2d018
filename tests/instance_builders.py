"""Tiny TFLite models whose outputs are known tensors in the YOLO-seg layout, for tests.

The model all but ignores its input (``+ 1e-6 * mean(input)`` keeps it in the graph) and returns a
detection tensor ``[1, 4+nc+nm, N]`` and prototypes ``[1, mh, mw, nm]`` fixed below: 64x64 input,
nc=2 classes, nm=4 prototypes at 16x16 (stride 4), N=8 candidates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tflite_builders

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE, NC, NM, MH = 64, 2, 4, 16
SCORE_THRESHOLD = 0.25
# cx, cy, w, h (input px), class, score, mask prototype (one-hot coefficient of +1)[, score of the other class]
CANDIDATES = [
    (20, 20, 24, 24, 0, 0.90, 0),  # kept
    (21, 20, 24, 24, 0, 0.80, 0),  # same class, IoU ~0.92 with #0: suppressed
    (21, 20, 24, 24, 1, 0.70, 1),  # other class: kept (class-aware NMS)
    (44, 44, 20, 16, 1, 0.85, 2),  # kept
    (44, 12, 16, 16, 0, 0.10, 3),  # below the score threshold
    (12, 50, 16, 12, 0, 0.30, 3),  # kept
    (50, 30, 10, 10, 1, 0.05, 2),  # below the score threshold
    (30, 30, 8, 8, 1, 0.20, 1),  # below the score threshold
]
EXPECTED_ORDER = [0, 3, 2, 5]  # kept candidates, highest score first


def prototypes() -> np.ndarray:
    """(mh, mw, nm) float32 logit patterns with values ±6."""
    yy, xx = np.mgrid[0:MH, 0:MH] + 0.5
    protos = np.stack([
        np.where(xx < 6, 6.0, -6.0),  # left columns
        np.where(yy < 5, 6.0, -6.0),  # top rows
        np.where((xx - 11) ** 2 + (yy - 11) ** 2 < 9, 6.0, -6.0),  # a disc
        np.full((MH, MH), 6.0),  # everything
    ], axis=-1)
    return protos.astype(np.float32)


def detections(candidates=CANDIDATES) -> np.ndarray:
    """(4+nc+nm, N) float32; the other class scores 0.02 unless a candidate gives its score (8th field)."""
    out = np.zeros((4 + NC + NM, len(candidates)), np.float32)
    for n, (cx, cy, w, h, cls, score, proto, *other) in enumerate(candidates):
        out[:4, n] = (cx, cy, w, h)
        out[4:4 + NC, n] = other[0] if other else 0.02
        out[4 + cls, n] = score
        out[4 + NC:, n] = -0.5
        out[4 + NC + proto, n] = 1.0
    return out


def build(path: Path, io: str = "float32", candidates=CANDIDATES) -> Path:
    """Write the model (``candidates`` as ``CANDIDATES``); io float32 or int8 (full-integer quantisation)."""
    import tensorflow as tf

    det = tf.constant(detections(candidates)[None])
    protos = tf.constant(prototypes()[None])

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
    def model(x):
        zero = 1e-6 * tf.reduce_mean(x)  # keeps the input in the graph (no constant folding)
        return {"output0": det + zero, "output1": protos + zero}

    return tflite_builders.convert(model, path, io, SIZE, samples=4)
