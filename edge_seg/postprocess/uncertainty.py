"""Uncertain regions of a frame, cut out as JPEG crops for the publisher (active learning).

Everything up to the boxes runs at model resolution: an uncertainty map, a threshold, connected
components (``cv2.connectedComponentsWithStats``, a fraction of a millisecond at 256x256). Only
the few boxes that survive merging, the area filter, the top-K and the budget are encoded, from
the full-resolution frame. A frame with no pixel above the threshold costs one min/max pass over
the map (microseconds); a frame that arrives while the budget window is full costs nothing.

Instance models (``Segmentation.instances`` set) get crops of uncertain *instances* instead (low
score, overlapping masks, ambiguous class: ``edge_seg.postprocess.instance_crops``), under the same
per-frame cap and the same budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_seg.errors import EdgeSegError, InputError
from edge_seg.postprocess.instance_crops import InstanceCrop, InstanceCropConfig, instance_regions, pad_boxes
from edge_seg.segmentation import Segmentation

Method = Literal["confidence", "margin", "entropy"]
WINDOW_S = 60.0  # the budget's rolling window
MAX_REGIONS = 64  # largest components kept before merging; the rest is speckle


def uncertainty_map(segmentation: Segmentation, method: Method = "confidence") -> np.ndarray:
    """Per-pixel uncertainty in [0, 1], float32 (h, w) at model resolution.

    * ``confidence``: 1 - top-class probability.
    * ``margin``: 1 - (p1 - p2), p1 and p2 the two largest class probabilities (for a binary
      model 1 - |2p - 1|); the Segmenter must be created with ``margin=True``, which keeps
      p1 - p2 per pixel (``Segmentation.margin_map``). High where two classes compete, even when
      p1 is not low: (0.4, 0.35, 0.25) gives 0.95.
    * ``entropy``: the normalised entropy map; the Segmenter must be created with ``entropy=True``.
    """
    if method == "confidence":
        unc = np.subtract(np.float32(1.0), segmentation.confidence_map, dtype=np.float32)
        return np.clip(unc, 0.0, 1.0, out=unc)
    if method == "margin":
        if segmentation.margin_map is None:
            raise EdgeSegError("uncertainty method 'margin' needs a margin map: create the Segmenter with "
                               "margin=True, or use method 'confidence'")
        unc = np.subtract(np.float32(1.0), segmentation.margin_map, dtype=np.float32)
        return np.clip(unc, 0.0, 1.0, out=unc)
    if method == "entropy":
        if segmentation.entropy_map is None:
            raise EdgeSegError("uncertainty method 'entropy' needs an entropy map: create the Segmenter with "
                               "entropy=True, or use method 'confidence'")
        return np.asarray(segmentation.entropy_map, dtype=np.float32)
    raise EdgeSegError(f"unknown uncertainty method '{method}' (valid: confidence, margin, entropy)")


def _max_uncertainty(segmentation: Segmentation, method: Method) -> float:
    """The largest value of ``uncertainty_map`` from one min/max pass over the source map."""
    if method == "entropy" and segmentation.entropy_map is not None:
        return float(cv2.minMaxLoc(segmentation.entropy_map)[1])
    if method == "confidence":
        return min(1.0, 1.0 - float(cv2.minMaxLoc(segmentation.confidence_map)[0]))
    if method == "margin" and segmentation.margin_map is not None:
        return min(1.0, 1.0 - float(cv2.minMaxLoc(segmentation.margin_map)[0]))
    return float(uncertainty_map(segmentation, method).max())  # raises the map's own error


@dataclass(frozen=True, eq=False)
class Crop:
    """One uncertain region: JPEG of the frame inside ``bbox`` and the class map there."""

    kind: ClassVar[str] = "semantic"
    jpeg: bytes
    bbox: tuple[int, int, int, int]  # (x, y, w, h) in frame pixels
    score: float  # mean uncertainty of the uncertain pixels inside
    class_map: np.ndarray  # uint8 (h, w): the frame-size class map inside bbox
    ts: float
    seq: int | None = None


class CropConfig(BaseModel):
    """Which regions become crops, and how many bytes they may cost.

    ``min_area`` is a fraction of the frame, so it does not depend on the model or camera
    resolution; it is measured on the region's uncertain pixels (at model resolution), not on
    its box, so a box around a few scattered pixels does not pass. 0.002 of 720p is ~43x43 px.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: Method = "confidence"
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="a pixel is uncertain above this")
    min_area: float = Field(0.002, ge=0.0, le=1.0,
                            description="fraction of the frame a region's uncertain pixels must cover")
    padding: float = Field(0.15, ge=0.0, le=2.0, description="added on each side, as a fraction of box width/height")
    join: int = Field(1, ge=0, le=8, description="model pixels: uncertain fragments this close form one region")
    max_crops: int = Field(3, ge=1, le=32, description="per frame, highest score first")
    merge: bool = Field(True, description="merge boxes that overlap or touch after padding")
    crops_per_minute: int = Field(6, ge=0, description="in any rolling 60 s")
    bytes_per_minute: int = Field(1_000_000, ge=0, description="JPEG bytes in any rolling 60 s")
    jpeg_quality: int = Field(85, ge=1, le=100)
    instances: InstanceCropConfig = Field(InstanceCropConfig(), description="instance models: uncertain instances")


@dataclass
class _Regions:
    """Boxes as (x0, y0, x1, y1) with exclusive x1/y1, their uncertain pixel count and summed uncertainty."""

    boxes: np.ndarray  # int64 (n, 4)
    area: np.ndarray  # float64 (n,) uncertain pixels at model resolution
    total: np.ndarray  # float64 (n,) sum of uncertainty over them

    def union(self, group: np.ndarray) -> "_Regions":
        """One region per distinct value of ``group`` (n,): bounding box of the members, summed area/total."""
        ids, index = np.unique(group, return_inverse=True)
        first = np.zeros(len(ids), np.int64)
        first[index] = np.arange(len(group))  # any member of each group, to start from
        boxes = self.boxes[first].copy()
        np.minimum.at(boxes[:, :2], index, self.boxes[:, :2])
        np.maximum.at(boxes[:, 2:], index, self.boxes[:, 2:])
        return _Regions(boxes, np.bincount(index, weights=self.area, minlength=len(ids)),
                        np.bincount(index, weights=self.total, minlength=len(ids)))

    def select(self, keep: np.ndarray) -> "_Regions":
        return _Regions(self.boxes[keep], self.area[keep], self.total[keep])


def _components(uncertain: np.ndarray, unc: np.ndarray, join: int) -> _Regions:
    """Connected uncertain regions at model resolution; fragments within ``join`` pixels form one region.

    Boxes stay tight around the uncertain pixels: the dilated mask only decides the grouping.
    """
    # 16-bit labels are ~3x faster; 8-connected regions number at most ceil(h/2) * ceil(w/2)
    h, w = uncertain.shape
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 65535 else cv2.CV_32S
    count, labels, stats, _ = cv2.connectedComponentsWithStats(uncertain, connectivity=8, ltype=ltype)
    inside = uncertain > 0
    own = labels[inside].astype(np.intp)  # bincount is ~3x faster on intp/float64 than on uint16/float32
    total = np.bincount(own, weights=unc[inside].astype(np.float64), minlength=count)[1:]
    x, y, bw, bh, area = (stats[1:, i].astype(np.int64) for i in range(5))
    regions = _Regions(np.stack([x, y, x + bw, y + bh], axis=1), area.astype(np.float64), total)
    if join > 0 and count > 2:
        grown = cv2.dilate(uncertain, np.ones((2 * join + 1, 2 * join + 1), np.uint8))
        _, grown_labels = cv2.connectedComponents(grown, connectivity=8, ltype=ltype)
        group = np.zeros(count, np.int64)
        group[own] = grown_labels[inside]
        regions = regions.union(group[1:])
    return regions


def _to_frame(boxes: np.ndarray, map_size: tuple[int, int], frame_size: tuple[int, int],
              padding: float) -> np.ndarray:
    """Model-resolution (x0, y0, x1, y1) → padded frame pixels, clipped to the frame."""
    (mw, mh), (fw, fh) = map_size, frame_size
    return pad_boxes(boxes * np.array([fw / mw, fh / mh, fw / mw, fh / mh]), frame_size, padding)


def _merge(regions: _Regions) -> _Regions:
    """Union boxes that overlap or touch, until none do (groups found by min-label propagation)."""
    while len(regions.boxes) > 1:
        x0, y0, x1, y1 = regions.boxes.T
        touch = ((x0[:, None] <= x1[None, :]) & (x0[None, :] <= x1[:, None])
                 & (y0[:, None] <= y1[None, :]) & (y0[None, :] <= y1[:, None]))
        if touch.sum() == len(x0):  # only the diagonal
            break
        group = np.arange(len(x0))
        while True:
            lowest = np.where(touch, group[None, :], len(x0)).min(axis=1)
            if np.array_equal(lowest, group):
                break
            group = lowest
        regions = regions.union(group)
    return regions


class CropExtractor:
    """Turns a frame and its ``Segmentation`` into at most ``max_crops`` JPEG crops of uncertain regions.

    The budget is a sliding window: in any 60 s (by the ``now`` values passed in) at most
    ``crops_per_minute`` crops and ``bytes_per_minute`` JPEG bytes are returned; a classic token
    bucket would allow twice that in a window (a full bucket plus a minute of refill). Crops that
    do not fit are dropped, not queued: the next uncertain frame brings fresher ones.

    ``stats``: frames; skipped_budget (frames not analysed because the window was already full:
    the cheapest path, no map is computed); candidates (regions after filtering and top-K of the
    analysed frames); extracted; dropped_budget (candidates that did not fit); bytes (extracted).
    """

    def __init__(self, config: CropConfig | None = None):
        self.config = config or CropConfig()
        self.stats: dict[str, int] = {"frames": 0, "skipped_budget": 0, "candidates": 0, "extracted": 0,
                                      "dropped_budget": 0, "bytes": 0}
        self._sent: deque[tuple[float, int]] = deque()  # (now, bytes) of crops in the window
        self._sent_bytes = 0

    def extract(self, frame_bgr: np.ndarray, segmentation: Segmentation, now: float,
                seq: int | None = None) -> list[Crop] | list[InstanceCrop]:
        """The frame's uncertain regions (of an instance model: instances) as crops, best first, within the budget."""
        fw, fh = segmentation.frame_size
        if frame_bgr.shape[:2] != (fh, fw):
            raise InputError(f"frame is {frame_bgr.shape[1]}x{frame_bgr.shape[0]} but the segmentation "
                             f"was made for {fw}x{fh}")
        self.stats["frames"] += 1
        if not self._fits(now, 0):  # no crop could be sent: skip the analysis altogether
            self.stats["skipped_budget"] += 1
            return []
        if segmentation.instances is not None:
            cfg = self.config
            regions = instance_regions(segmentation, cfg.instances, padding=cfg.padding, min_area=cfg.min_area,
                                       max_crops=cfg.max_crops)
            self.stats["candidates"] += len(regions)
            jpegs = [(region, self._jpeg(frame_bgr, region.box, now)) for region in regions]
            return [region.crop(segmentation.instances, jpeg, now, seq) for region, jpeg in jpegs if jpeg is not None]
        candidates = self.regions(segmentation)
        self.stats["candidates"] += len(candidates)
        crops = []
        for (x0, y0, x1, y1), score in candidates:
            jpeg = self._jpeg(frame_bgr, (x0, y0, x1, y1), now)
            if jpeg is not None:
                crops.append(Crop(jpeg=jpeg, bbox=(x0, y0, x1 - x0, y1 - y0), score=score,
                                  class_map=segmentation.class_map[y0:y1, x0:x1].copy(), ts=now, seq=seq))
        return crops

    def regions(self, segmentation: Segmentation) -> list[tuple[tuple[int, int, int, int], float]]:
        """The regions to crop, best first, before the budget: ((x0, y0, x1, y1) in frame pixels, score)."""
        cfg = self.config
        if _max_uncertainty(segmentation, cfg.method) <= cfg.threshold:
            return []
        unc = uncertainty_map(segmentation, cfg.method)
        uncertain = cv2.compare(unc, cfg.threshold, cv2.CMP_GT)
        found = _components(uncertain, unc, cfg.join)
        if len(found.area) > MAX_REGIONS:
            found = found.select(np.argpartition(found.area, -MAX_REGIONS)[-MAX_REGIONS:])
        map_size = (unc.shape[1], unc.shape[0])
        boxes = _to_frame(found.boxes, map_size, segmentation.frame_size, cfg.padding)
        found = _Regions(boxes, found.area, found.total)
        if cfg.merge:
            found = _merge(found)
        big = found.area >= cfg.min_area * unc.size
        big &= (found.boxes[:, 2] > found.boxes[:, 0]) & (found.boxes[:, 3] > found.boxes[:, 1])
        boxes, score = found.boxes[big], found.total[big] / np.maximum(found.area[big], 1.0)
        order = np.argsort(-score, kind="stable")[: cfg.max_crops]
        return [(tuple(int(v) for v in boxes[i]), float(score[i])) for i in order]

    def _fits(self, now: float, size: int) -> bool:
        while self._sent and self._sent[0][0] <= now - WINDOW_S:
            self._sent_bytes -= self._sent.popleft()[1]
        return (len(self._sent) + 1 <= self.config.crops_per_minute
                and self._sent_bytes + size <= self.config.bytes_per_minute)

    def _jpeg(self, frame: np.ndarray, box: tuple[int, int, int, int], now: float) -> bytes | None:
        """JPEG of the frame inside ``box`` (x0, y0, x1, y1), counted in the budget; None if it does not fit."""
        if not self._fits(now, 0):  # no count left (or bytes spent): do not encode at all
            self.stats["dropped_budget"] += 1
            return None
        x0, y0, x1, y1 = box
        ok, buf = cv2.imencode(".jpg", frame[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok or not self._fits(now, len(buf)):
            self.stats["dropped_budget"] += 1
            return None
        jpeg = buf.tobytes()
        self._sent.append((now, len(jpeg)))
        self._sent_bytes += len(jpeg)
        self.stats["extracted"] += 1
        self.stats["bytes"] += len(jpeg)
        return jpeg


__all__ = ["Crop", "CropConfig", "CropExtractor", "InstanceCrop", "InstanceCropConfig", "Method", "uncertainty_map"]
