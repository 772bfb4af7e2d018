"""Losses for imbalanced segmentation: class weights, weighted cross-entropy, focal and Dice.

All losses take the model's per-class probabilities (the networks end in a softmax) and integer
labels (B, H, W, 1); pixels labelled ``IGNORE_LABEL`` (255) contribute nothing.

* ``ce``: cross-entropy, optionally weighted per class (``class_weights``).
* ``focal``: ``-(1 - p_t)^gamma * log(p_t)``, weighted like ``ce`` (Lin et al. 2017).
* ``dice``: ``1 - mean over classes of soft Dice`` over the batch (classes absent from the
  batch's labels and predictions count as a perfect 1).
* ``ce+dice``: their sum, a common choice when small classes matter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from converters.formats import IGNORE_LABEL  # noqa: E402
from edge_seg.errors import InputError  # noqa: E402

LOSSES = ("ce", "focal", "dice", "ce+dice")
_EPS = 1e-7


def class_weights(masks: np.ndarray, num_classes: int, method: str = "median") -> np.ndarray:
    """Per-class loss weights from label frequencies (ignore pixels excluded).

    ``median``: median-frequency balancing, ``w_c = median(f) / f_c`` (Eigen & Fergus);
    ``inverse``: ``1 / f_c`` normalised to mean 1; ``none``: all ones. Classes that never
    occur get the largest weight of the others. Weights are clipped to [0.05, 20].
    """
    if method == "none":
        return np.ones(num_classes, np.float32)
    labels = np.asarray(masks).ravel()
    labels = labels[labels != IGNORE_LABEL]
    counts = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    if counts.sum() == 0:
        raise InputError("no labelled pixels: every mask pixel is the ignore label")
    freq = counts / counts.sum()
    present = freq > 0
    if method == "median":
        weights = np.where(present, np.median(freq[present]) / np.maximum(freq, 1e-12), 0.0)
    elif method == "inverse":
        weights = np.where(present, 1.0 / np.maximum(freq, 1e-12), 0.0)
        weights = weights / weights[present].mean()
    else:
        raise InputError(f"unknown class-weight method {method!r}: expected median, inverse or none")
    weights[~present] = weights[present].max()
    return np.clip(weights, 0.05, 20.0).astype(np.float32)


def _flatten(y_true, y_pred):
    """(labels (N,), probabilities (N, C), valid (N,) float) with ignore pixels zeroed and masked."""
    num_classes = tf.shape(y_pred)[-1]
    labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    probs = tf.reshape(y_pred, [-1, num_classes])
    valid = tf.not_equal(labels, IGNORE_LABEL)
    labels = tf.where(valid, labels, tf.zeros_like(labels))
    return labels, probs, tf.cast(valid, probs.dtype)


def _pixel_weights(labels, valid, weights):
    if weights is None:
        return valid
    return valid * tf.gather(tf.constant(weights, valid.dtype), labels)


def crossentropy(weights: Sequence[float] | None = None):
    """(Weighted) cross-entropy on probabilities, averaged over the weight of non-ignored pixels."""

    def loss(y_true, y_pred):
        labels, probs, valid = _flatten(y_true, y_pred)
        p_t = tf.gather(probs, labels, batch_dims=1)
        w = _pixel_weights(labels, valid, weights)
        ce = -tf.math.log(tf.clip_by_value(p_t, _EPS, 1.0))
        return tf.reduce_sum(ce * w) / tf.maximum(tf.reduce_sum(w), 1.0)

    loss.__name__ = "crossentropy"
    return loss


def focal(gamma: float = 2.0, weights: Sequence[float] | None = None):
    """Focal loss on probabilities: down-weights pixels the model already gets right."""

    def loss(y_true, y_pred):
        labels, probs, valid = _flatten(y_true, y_pred)
        p_t = tf.clip_by_value(tf.gather(probs, labels, batch_dims=1), _EPS, 1.0)
        w = _pixel_weights(labels, valid, weights)
        term = -tf.pow(1.0 - p_t, gamma) * tf.math.log(p_t)
        return tf.reduce_sum(term * w) / tf.maximum(tf.reduce_sum(w), 1.0)

    loss.__name__ = "focal"
    return loss


def dice(smooth: float = 1.0):
    """``1 - mean soft Dice`` over classes, on non-ignored pixels of the batch."""

    def loss(y_true, y_pred):
        labels, probs, valid = _flatten(y_true, y_pred)
        onehot = tf.one_hot(labels, tf.shape(probs)[-1], dtype=probs.dtype) * valid[:, None]
        probs = probs * valid[:, None]
        inter = tf.reduce_sum(onehot * probs, axis=0)
        total = tf.reduce_sum(onehot, axis=0) + tf.reduce_sum(probs, axis=0)
        return 1.0 - tf.reduce_mean((2.0 * inter + smooth) / (total + smooth))

    loss.__name__ = "dice"
    return loss


def make_loss(name: str = "ce", weights: Sequence[float] | None = None, gamma: float = 2.0):
    """A loss by name (``LOSSES``); ``weights`` apply to ``ce``/``focal`` terms."""
    if name == "ce":
        return crossentropy(weights)
    if name == "focal":
        return focal(gamma, weights)
    if name == "dice":
        return dice()
    if name == "ce+dice":
        ce, dl = crossentropy(weights), dice()

        def loss(y_true, y_pred):
            return ce(y_true, y_pred) + dl(y_true, y_pred)

        loss.__name__ = "ce_dice"
        return loss
    raise InputError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
