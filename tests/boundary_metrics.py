"""Boundary IoU (Cheng et al. 2021, "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation"), for tests.

The boundary region of a mask is its pixels within ``d`` pixels of its contour: the mask minus
its erosion by a 3x3 kernel ``d`` times, after padding with one pixel of background (so the image
border counts as contour, as in the authors' ``mask_to_boundary``). Boundary IoU is the IoU of the
two boundary regions. For class maps the intersections and unions are summed over frames per
class and the per-class IoUs averaged over the classes present.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

_KERNEL = np.ones((3, 3), np.uint8)


def boundary_region(mask: np.ndarray, d: int) -> np.ndarray:
    """bool (h, w): the pixels of ``mask`` within ``d`` px of its contour (image border included)."""
    m = mask.astype(np.uint8)
    h, w = m.shape
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, _KERNEL, iterations=d)[1:h + 1, 1:w + 1]
    return (m > 0) & (eroded == 0)


def boundary_counts(truth: np.ndarray, pred: np.ndarray, d: int) -> tuple[int, int]:
    """(|intersection|, |union|) of the boundary regions of two bool masks."""
    bt, bp = boundary_region(truth, d), boundary_region(pred, d)
    return int(np.count_nonzero(bt & bp)), int(np.count_nonzero(bt | bp))


def boundary_iou(truth: np.ndarray, pred: np.ndarray, d: int = 3) -> float:
    """Boundary IoU of two bool masks (1.0 when both are empty)."""
    inter, union = boundary_counts(truth, pred, d)
    return inter / union if union else 1.0


def mean_boundary_iou(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, d: int = 3,
                      classes: Iterable[int] | None = None) -> tuple[float, dict[int, float]]:
    """(mean over classes present, per-class boundary IoU) of (reference, predicted) class maps,
    intersections and unions summed over all pairs first."""
    wanted = list(range(num_classes)) if classes is None else list(classes)
    inter = dict.fromkeys(wanted, 0)
    union = dict.fromkeys(wanted, 0)
    for truth, pred in pairs:
        for c in wanted:
            i, u = boundary_counts(truth == c, pred == c, d)
            inter[c] += i
            union[c] += u
    per_class = {c: inter[c] / union[c] for c in wanted if union[c]}
    return float(np.mean(list(per_class.values()))), per_class
