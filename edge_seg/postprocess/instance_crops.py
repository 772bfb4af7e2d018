"""Which instances of an instance model are worth a labeller's look, and the crops around them.

An instance is **flagged** for one or more reasons, each with an uncertainty in [0, 1]:

* ``low_score``: its score is below ``low_score`` (it passed the model's decode threshold, so it
  sits in the band between that threshold and ``low_score``); uncertainty 1 - score.
* ``overlap``: its mask overlaps another instance's with mask IoU above ``overlap_iou`` (class-aware
  NMS keeps such pairs when their classes differ, and masks can collide where boxes do not);
  uncertainty the IoU.
* ``ambiguous_class``: its top two class scores are less than ``class_margin`` apart; uncertainty
  1 - (top - runner-up).

Instances smaller than ``min_area`` of the frame are not flagged. Flagged instances that overlap
each other make one crop (no near-duplicate crops of a pair); a crop is their union box, padded and
clipped to the frame, and lists every instance with pixels in it, its mask cut to the crop, so
the crop is fully pre-annotated. Crops rank by their largest uncertainty. The JPEG and the budget
are ``CropExtractor``'s (``edge_seg.postprocess.uncertainty``). Cost when nothing is flagged: a few
NumPy operations on the instances' boxes, plus one small mask intersection per overlapping pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_seg.segmentation import Instance, Segmentation

Reason = Literal["low_score", "overlap", "ambiguous_class"]
REASONS: tuple[str, ...] = ("low_score", "overlap", "ambiguous_class")


class InstanceCropConfig(BaseModel):
    """When an instance of an instance model is uncertain (each test can be switched off)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    low_score: float = Field(0.5, ge=0.0, le=1.0, description="instances scoring below this are uncertain (0: off)")
    overlap_iou: float = Field(0.5, ge=0.0, le=1.0,
                               description="instances whose masks overlap with IoU above this are ambiguous (1: off)")
    class_margin: float = Field(0.1, ge=0.0, le=1.0,
                                description="instances whose top two class scores are closer than this are "
                                            "ambiguous (0: off)")


@dataclass(frozen=True, eq=False)
class CropInstance:
    """One instance inside an instance crop; ``mask`` is bool at the crop's size, ``reasons`` empty if not flagged."""

    class_id: int
    score: float
    bbox: tuple[float, float, float, float]  # (x, y, w, h) in frame pixels, the instance's own box
    mask: np.ndarray
    reasons: tuple[str, ...] = ()
    runner_up: tuple[int, float] | None = None


@dataclass(frozen=True, eq=False)
class InstanceCrop:
    """A crop around flagged instances: JPEG of the frame inside ``bbox`` and every instance in it."""

    kind: ClassVar[str] = "instance"
    jpeg: bytes
    bbox: tuple[int, int, int, int]  # (x, y, w, h) in frame pixels
    score: float  # the largest uncertainty of its flagged instances
    reasons: tuple[str, ...]  # every reason of its flagged instances, in REASONS order
    instances: tuple[CropInstance, ...]
    ts: float
    seq: int | None = None


@dataclass(frozen=True)
class InstanceRegion:
    """A crop to make: (x0, y0, x1, y1) frame pixels, its uncertainty, and the reasons per flagged instance."""

    box: tuple[int, int, int, int]
    score: float
    flagged: dict[int, dict[str, float]]  # instance index -> {reason: uncertainty}

    def crop(self, instances, jpeg: bytes, ts: float, seq: int | None = None) -> InstanceCrop:
        """The ``InstanceCrop`` of this region, given the frame's instances and the JPEG of the box."""
        x0, y0, x1, y1 = self.box
        reasons = tuple(r for r in REASONS if any(r in found for found in self.flagged.values()))
        return InstanceCrop(jpeg, (x0, y0, x1 - x0, y1 - y0), self.score, reasons, crop_instances(instances, self),
                            ts, seq)


def _pixel_boxes(instances) -> np.ndarray:
    """(n, 4) int64 (x0, y0, x1, y1) of each instance's mask array in the frame."""
    return np.array([[i.origin[0], i.origin[1], i.origin[0] + i.mask.shape[1], i.origin[1] + i.mask.shape[0]]
                     for i in instances], np.int64).reshape(-1, 4)


def mask_ious(instances) -> np.ndarray:
    """(n, n) float64 mask IoU between instances (0 on the diagonal); masks compared only where boxes meet."""
    n = len(instances)
    iou = np.zeros((n, n))
    boxes = _pixel_boxes(instances)
    lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    meet = np.triu((hi > lo).all(axis=2), k=1)
    areas = [inst.area for inst in instances]
    for i, j in zip(*np.nonzero(meet)):
        (x0, y0), (x1, y1) = lo[i, j], hi[i, j]
        a, b = instances[i], instances[j]
        inter = np.count_nonzero(a.mask[y0 - a.origin[1]:y1 - a.origin[1], x0 - a.origin[0]:x1 - a.origin[0]]
                                 & b.mask[y0 - b.origin[1]:y1 - b.origin[1], x0 - b.origin[0]:x1 - b.origin[0]])
        union = areas[i] + areas[j] - inter
        iou[i, j] = iou[j, i] = inter / union if union else 0.0
    return iou


def flag_instances(instances, config: InstanceCropConfig, min_pixels: float = 0.0
                   ) -> tuple[dict[int, dict[str, float]], np.ndarray]:
    """({instance index: {reason: uncertainty}} for the flagged ones, the (n, n) overlap matrix)."""
    n = len(instances)
    iou = mask_ious(instances) if n > 1 and config.overlap_iou < 1.0 else np.zeros((n, n))
    overlap = iou > config.overlap_iou
    flagged: dict[int, dict[str, float]] = {}
    for k, inst in enumerate(instances):
        if inst.area < min_pixels:
            continue
        reasons = {}
        if inst.score < config.low_score:
            reasons["low_score"] = 1.0 - inst.score
        if overlap[k].any():
            reasons["overlap"] = float(iou[k].max())
        if inst.runner_up is not None and inst.score - inst.runner_up[1] < config.class_margin:
            reasons["ambiguous_class"] = 1.0 - max(0.0, inst.score - inst.runner_up[1])
        if reasons:
            flagged[k] = reasons
    return flagged, overlap


def _groups(flagged: dict[int, dict[str, float]], overlap: np.ndarray) -> list[list[int]]:
    """Flagged instances joined through overlaps (union-find over the few flagged ones)."""
    parent = {k: k for k in flagged}

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i in flagged:
        for j in flagged:
            if i < j and overlap[i, j]:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for k in flagged:
        groups.setdefault(root(k), []).append(k)
    return list(groups.values())


def pad_boxes(boxes: np.ndarray, frame_size: tuple[int, int], padding: float) -> np.ndarray:
    """(n, 4) frame-pixel (x0, y0, x1, y1) grown by ``padding`` x their width/height on each side,
    rounded outwards and clipped to the frame (int64). Semantic and instance crops share it."""
    fw, fh = frame_size
    pad = (boxes[:, 2:] - boxes[:, :2]) * padding  # (n, 2): padding * (width, height)
    lo, hi = np.floor(boxes[:, :2] - pad), np.ceil(boxes[:, 2:] + pad)
    return np.clip(np.concatenate([lo, hi], axis=1), 0, [fw, fh, fw, fh]).astype(np.int64)


def _padded_box(instances, members: list[int], frame_size: tuple[int, int], padding: float) -> tuple[int, ...]:
    boxes = np.array([instances[k].bbox for k in members], np.float64)
    union = np.array([[boxes[:, 0].min(), boxes[:, 1].min(),
                       (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()]])
    return tuple(int(v) for v in pad_boxes(union, frame_size, padding)[0])


def instance_regions(segmentation: Segmentation, config: InstanceCropConfig, *, padding: float = 0.15,
                     min_area: float = 0.0, max_crops: int = 3) -> list[InstanceRegion]:
    """The crops to make for an instance model's result, most uncertain first, at most ``max_crops``."""
    instances = segmentation.instances or ()
    fw, fh = segmentation.frame_size
    flagged, overlap = flag_instances(instances, config, min_area * fw * fh)
    regions = []
    for members in _groups(flagged, overlap):
        x0, y0, x1, y1 = _padded_box(instances, members, segmentation.frame_size, padding)
        if x1 > x0 and y1 > y0:
            score = max(max(flagged[k].values()) for k in members)
            regions.append(InstanceRegion((x0, y0, x1, y1), score, {k: flagged[k] for k in members}))
    regions.sort(key=lambda r: -r.score)
    return regions[:max_crops]


def crop_instances(instances: tuple[Instance, ...] | list[Instance], region: InstanceRegion
                   ) -> tuple[CropInstance, ...]:
    """Every instance with pixels inside the region (flagged ones always), masks cut to the region's box."""
    x0, y0, x1, y1 = region.box
    out = []
    for k, inst in enumerate(instances):
        ox, oy = inst.origin
        h, w = inst.mask.shape
        ix0, iy0, ix1, iy1 = max(x0, ox), max(y0, oy), min(x1, ox + w), min(y1, oy + h)
        local = np.zeros((y1 - y0, x1 - x0), bool)
        if ix1 > ix0 and iy1 > iy0:
            local[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = inst.mask[iy0 - oy:iy1 - oy, ix0 - ox:ix1 - ox]
        reasons = region.flagged.get(k, {})
        if reasons or local.any():
            out.append(CropInstance(inst.class_id, inst.score, inst.bbox, local,
                                    tuple(r for r in REASONS if r in reasons), inst.runner_up))
    return tuple(out)


__all__ = ["REASONS", "CropInstance", "InstanceCrop", "InstanceCropConfig", "InstanceRegion", "Reason",
           "crop_instances", "flag_instances", "instance_regions", "mask_ious", "pad_boxes"]
