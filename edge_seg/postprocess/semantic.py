"""Semantic and binary outputs → class map + confidence at model resolution.

Argmax runs on the raw (possibly quantised) values: dequantisation is monotonic, so the winner
is the same and the float conversion of the whole tensor is avoided. Only the winning value is
dequantised for the confidence. Everything stays at model resolution; the ``Segmentation``
value resizes once to the frame. With ``probs`` the decoder also keeps the class probabilities
as uint8 (``Decoded.probs``) for the bilinear upsampling of ``edge_seg.postprocess.upsample``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_seg.errors import ModelError
from edge_seg.manifest import INSTANCE_KINDS, OutputSpec
from edge_seg.postprocess.upsample import binary_threshold, binary_uint8, channel_planes, uint8_probabilities
from edge_seg.tensors import TensorSpec


@dataclass(frozen=True)
class Decoded:
    label_map: np.ndarray  # uint8 (h, w)
    confidence: np.ndarray  # float32 (h, w)
    entropy: np.ndarray | None = None  # float32 (h, w) in [0, 1]
    margin: np.ndarray | None = None  # float32 (h, w): top-1 minus top-2 probability, in [0, 1]
    probs: np.ndarray | None = None  # uint8 (h, w, C) probabilities (C = 1: binary foreground), for upsampling
    threshold_u8: int = 128  # binary: class 1 where probs >= this


def argmax_max(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax as uint8, max) over the last axis of (h, w, C), first maximum wins.

    For up to 32 channels the channels are split into planes and compared plane by plane with
    OpenCV (about 15x faster than ``np.argmax`` over a short last axis).
    """
    idx, best, _ = _argmax(raw, runner_up=False)
    return idx, best


def argmax_top2(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmax as uint8, max, second largest value) over the last axis of (h, w, C), C >= 2.

    The loop of ``argmax_max`` plus a running second maximum (``second = max(second, min(best,
    plane))``): two more element-wise ops per channel.
    """
    return _argmax(raw, runner_up=True)


def _argmax(raw: np.ndarray, runner_up: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    channels = raw.shape[-1]
    if channels > 32 or raw.dtype not in (np.uint8, np.int8, np.float32):
        idx = raw.argmax(axis=-1)
        if runner_up:
            part = np.partition(raw, channels - 2, axis=-1)
            return idx.astype(np.uint8), part[..., -1], part[..., -2]
        return idx.astype(np.uint8), np.take_along_axis(raw, idx[..., None], axis=-1)[..., 0], None
    planes = channel_planes(raw)
    best = planes[0].copy()
    idx = np.zeros(best.shape, dtype=np.uint8)
    second = None
    if runner_up:
        lowest = -np.inf if raw.dtype == np.float32 else np.iinfo(raw.dtype).min
        second = np.full_like(best, lowest)
    for c in range(1, channels):
        better = cv2.compare(planes[c], best, cv2.CMP_GT)  # 255 where channel c wins
        idx = (idx & ~better) | (better & np.uint8(c))
        if second is not None:
            cv2.max(second, cv2.min(best, planes[c]), dst=second)
        cv2.max(best, planes[c], dst=best)
    return idx, best, second


def _softmax_stats(values: np.ndarray, top: np.ndarray, want_entropy: bool):
    """Top softmax probability (and normalised entropy) of logits (h, w, C)."""
    shifted = values - top[..., None]
    exp = np.exp(shifted, dtype=np.float32)
    total = exp.sum(axis=-1)
    confidence = (1.0 / total).astype(np.float32)
    entropy = None
    if want_entropy:
        probs = exp / total[..., None]
        entropy = _entropy(probs)
    return confidence, entropy


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy over the last axis, divided by log(C) so it lies in [0, 1]."""
    p = np.clip(probs, 1e-12, 1.0)
    return (-(p * np.log(p)).sum(axis=-1) / np.log(probs.shape[-1])).astype(np.float32)


class SemanticDecoder:
    """Decodes one output tensor according to the manifest's output kind."""

    def __init__(self, output: OutputSpec, tensor: TensorSpec, num_classes: int, entropy: bool = False,
                 margin: bool = False, probs: bool = False):
        self.kind = output.kind
        self.tensor = tensor
        self.threshold = output.threshold
        self.entropy = entropy
        self.margin = margin  # also the top-1 minus top-2 probability (off the default path: one more pass)
        self.num_classes = num_classes
        self.probs = probs and self.kind != "class_map"  # also uint8 probabilities (``Decoded.probs``)
        self.threshold_u8 = binary_threshold(self.threshold)
        if self.kind in INSTANCE_KINDS:
            raise ModelError("output kind 'yolo_seg' (instance segmentation) is not supported by this version")

    def __call__(self, raw: np.ndarray) -> Decoded:
        """Raw output of shape (1, h, w, C) or (1, h, w) → ``Decoded`` at output resolution."""
        raw = raw[0]
        if self.kind == "class_map":
            labels = raw[..., 0] if raw.ndim == 3 else raw
            ones = np.ones(labels.shape, np.float32)
            return Decoded(labels.astype(np.uint8, copy=False), ones, margin=ones if self.margin else None)
        if raw.shape[-1] == 1:
            return self._binary(raw[..., 0])
        return self._semantic(raw)

    def _semantic(self, raw: np.ndarray) -> Decoded:
        """Argmax and top value on the raw values; with ``margin`` also the runner-up, in the same pass.

        Dequantisation is affine and increasing, so the raw top-2 are the dequantised top-2. For
        logits, p1 - p2 = p1 (1 - exp(l2 - l1)): one exp over a single plane, no full softmax.
        """
        second_raw = margin = None
        probs = self._uint8_probabilities(raw) if self.probs else None
        if self.margin:
            idx, top_raw, second_raw = argmax_top2(raw)
        else:
            idx, top_raw = argmax_max(raw)
        if self.kind == "probabilities":
            confidence = np.clip(self.tensor.dequantize(top_raw), 0.0, 1.0)
            entropy = _entropy(self.tensor.dequantize(raw)) if self.entropy else None
            if second_raw is not None:
                margin = np.subtract(confidence, self.tensor.dequantize(second_raw), dtype=np.float32)
                np.clip(margin, 0.0, 1.0, out=margin)
            return Decoded(idx, confidence, entropy, margin, probs)
        values = self.tensor.dequantize(raw)
        top = self.tensor.dequantize(top_raw)
        confidence, entropy = _softmax_stats(values, top, self.entropy)
        if second_raw is not None:
            gap = np.exp(self.tensor.dequantize(second_raw) - top, dtype=np.float32)
            margin = (confidence * (1.0 - gap)).astype(np.float32)
        return Decoded(idx, confidence, entropy, margin, probs)

    def _uint8_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """uint8 (h, w, C) probabilities: 8-bit probability codes as they are, anything else via float."""
        if self.kind == "probabilities" and self.tensor.quantized and raw.dtype in (np.uint8, np.int8):
            return uint8_probabilities(raw, quantized_uint8=True)
        return uint8_probabilities(probabilities(raw[None], self.kind, self.tensor, self.num_classes), False)

    def _binary(self, raw: np.ndarray) -> Decoded:
        values = self.tensor.dequantize(raw)
        prob = values if self.kind in ("sigmoid", "probabilities") else 1.0 / (1.0 + np.exp(-values))
        labels = (prob >= self.threshold).astype(np.uint8)
        confidence = np.where(labels == 1, prob, 1.0 - prob).astype(np.float32)
        entropy = None
        if self.entropy:
            entropy = _entropy(np.stack([1.0 - prob, prob], axis=-1))
        margin = np.abs(2.0 * prob - 1.0).astype(np.float32) if self.margin else None  # |p - (1 - p)|
        probs = binary_uint8(prob, labels, self.threshold_u8) if self.probs else None
        return Decoded(labels, confidence, entropy, margin, probs, self.threshold_u8)


def probabilities(raw: np.ndarray, kind: str, tensor: TensorSpec, num_classes: int) -> np.ndarray:
    """Per-class probabilities (h, w, C) float32 of one raw output (1, h, w, C) or (1, h, w).

    For smoothing and tiling, which need the whole distribution rather than argmax + top value.
    A 1-channel output stays 1 channel (the foreground probability).
    """
    raw = raw[0]
    if kind == "class_map":
        labels = raw[..., 0] if raw.ndim == 3 else raw
        return np.eye(num_classes, dtype=np.float32)[labels]
    values = tensor.dequantize(raw)
    if kind in ("probabilities", "sigmoid"):
        return values
    if values.shape[-1] == 1:
        return (1.0 / (1.0 + np.exp(-values))).astype(np.float32)
    exp = np.exp(values - values.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def float_spec(name: str = "probabilities") -> TensorSpec:
    """The spec of an already-dequantised float32 tensor."""
    return TensorSpec(name=name, shape=(), dtype=np.dtype(np.float32))
