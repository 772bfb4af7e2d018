"""Tiny TFLite models whose outputs are known tensors in the YOLO-seg layout, for tests.

The model all but ignores its input (``+ 1e-6 * mean(input)`` keeps it in the graph) and returns a
detection tensor ``[1, 4+nc+nm, N]`` and prototypes ``[1, mh, mw, nm]`` fixed below: 64x64 input,
nc=2 classes, nm=4 prototypes at 16x16 (stride 4), N=8 candidates.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
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


# ---------------------------------------------------------------- an independent, loop-by-loop decoder
def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference(det, protos, transform, nc, score_thr=0.25, iou_thr=0.5, mask_thr=0.5):
    """det (C, N) and protos (mh, mw, nm) real values → [(class, score, bbox xywh frame px, mask)]."""
    cands = []
    for n in range(det.shape[1]):
        col = det[:, n]
        scores = col[4:4 + nc]
        cls = int(np.argmax(scores))
        if scores[cls] < score_thr:
            continue
        cx, cy, w, h = (float(v) for v in col[:4])
        cands.append((float(scores[cls]), cls, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), col[4 + nc:]))
    cands.sort(key=lambda c: -c[0])
    kept = []
    for cand in cands:
        if all(k[1] != cand[1] or _iou(k[2], cand[2]) <= iou_thr for k in kept):
            kept.append(cand)
    fw, fh = transform.frame_size
    iw, ih = transform.input_size
    x, y, w, h = transform.content
    out = []
    yy, xx = np.mgrid[0:fh, 0:fw] + 0.5
    for score, cls, box, coeff in kept:
        logits = np.tensordot(protos, coeff, axes=([2], [0]))
        prob = 1.0 / (1.0 + np.exp(-logits))
        full = cv2.resize(prob.astype(np.float32), (iw, ih), interpolation=cv2.INTER_LINEAR)
        frame_prob = cv2.resize(full[y:y + h, x:x + w], (fw, fh), interpolation=cv2.INTER_LINEAR)
        fb = [(box[0] - x) * fw / w, (box[1] - y) * fh / h, (box[2] - x) * fw / w, (box[3] - y) * fh / h]
        fb = [min(max(fb[0], 0), fw), min(max(fb[1], 0), fh), min(max(fb[2], 0), fw), min(max(fb[3], 0), fh)]
        inside = (xx > fb[0]) & (xx <= fb[2]) & (yy > fb[1]) & (yy <= fb[3])
        out.append((cls, score, (fb[0], fb[1], fb[2] - fb[0], fb[3] - fb[1]), (frame_prob > mask_thr) & inside))
    return out


FRAME = (128, 96)  # letterboxed into 64x64: content (0, 8, 64, 48)
