"""The ``Segmentation`` value: what one frame's inference produced.

Postprocessing works at model resolution (DESIGN §5: argmax there, then one resize). The value
keeps the model-resolution maps plus the ``Transform`` that maps them back to the frame, and
resizes to frame size lazily, once, on first access of ``class_map`` / ``confidence``. With
``prob_map`` (uint8 class probabilities at model resolution, the Segmenter's default) ``class_map``
has smooth edges: the probabilities are upsampled bilinearly, then argmax/threshold
(``edge_seg.postprocess.upsample``); without it, and always in ``nearest_class_map``, the label
map is nearest-resized (what mask messages reproduce).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from edge_seg.postprocess.upsample import upsample_labels


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True, eq=False)
class Instance:
    """One detected object of an instance model.

    ``bbox`` is (x, y, width, height) in frame pixels; ``mask`` is a bool array covering the
    integer pixel box that starts at ``origin`` (x, y) in the frame (``frame_mask`` gives it at
    frame size). ``runner_up`` is (class id, score) of the second-best class when the model has
    more than one (a small gap to ``score`` means the class is ambiguous). ``track_id`` names the
    same object over frames once a tracker follows it (None without tracking or before confirmation).
    """

    class_id: int
    score: float
    bbox: tuple[float, float, float, float]
    mask: np.ndarray
    origin: tuple[int, int] = (0, 0)
    runner_up: tuple[int, float] | None = None
    track_id: int | None = None  # set by a tracker (edge_seg.postprocess.tracking) when tracking is on

    def frame_mask(self, frame_size: tuple[int, int]) -> np.ndarray:
        """The instance mask as bool (height, width) at ``frame_size`` (width, height)."""
        full = np.zeros((frame_size[1], frame_size[0]), bool)
        x, y = self.origin
        h, w = self.mask.shape
        full[y:y + h, x:x + w] = self.mask[: max(0, frame_size[1] - y), : max(0, frame_size[0] - x)]
        return full

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class Segmentation:
    """One frame's result.

    ``label_map``/``confidence_map`` are at model resolution, cropped to the part of the
    model input that shows the frame (letterbox padding removed). ``class_map`` and
    ``confidence`` are the same at frame size.
    """

    label_map: np.ndarray  # uint8 (h, w) class ids at model resolution
    confidence_map: np.ndarray  # float32 (h, w) top-class probability in [0, 1]
    frame_size: tuple[int, int]  # (width, height)
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per class
    model: ModelIdentity
    entropy_map: np.ndarray | None = None  # float32 (h, w), normalised to [0, 1], optional
    timings: dict[str, float] = field(default_factory=dict, compare=False)  # ms per stage
    # Instance models only: detections, highest score first. Their label_map is the class of the
    # top-scoring instance per pixel, 255 where no instance is (classes list real classes only).
    instances: tuple[Instance, ...] | None = field(default=None, compare=False)
    # float32 (h, w): top-1 minus top-2 class probability, in [0, 1]; only when the Segmenter was
    # created with ``margin=True`` (for the ``margin`` uncertainty method)
    margin_map: np.ndarray | None = None
    # uint8 (h, w, C) class probabilities (codes) at model resolution, cropped like label_map (C = 1: the
    # foreground of a binary model, class 1 where >= prob_threshold); None: class_map is nearest-resized
    prob_map: np.ndarray | None = field(default=None, compare=False)
    prob_threshold: int = 128

    @cached_property
    def class_map(self) -> np.ndarray:
        """uint8 class id per frame pixel: argmax/threshold of bilinearly upsampled ``prob_map`` (smooth
        edges), or ``nearest_class_map`` when there is no ``prob_map``."""
        if self.prob_map is None:
            return self.nearest_class_map
        if (self.prob_map.shape[1], self.prob_map.shape[0]) == tuple(self.frame_size):
            return self.label_map
        return upsample_labels(self.prob_map, self.frame_size, self.prob_threshold)

    @cached_property
    def nearest_class_map(self) -> np.ndarray:
        """uint8 class id per frame pixel: nearest-neighbour resize of ``label_map`` (blocky edges; what a
        mask message's ``payload_masks.class_map_from_mask`` reproduces exactly)."""
        return resize_to_frame(self.label_map, self.frame_size, cv2.INTER_NEAREST)

    @cached_property
    def confidence(self) -> np.ndarray:
        """float32 top-class probability per frame pixel."""
        return resize_to_frame(self.confidence_map, self.frame_size, cv2.INTER_LINEAR)

    @cached_property
    def area_fractions(self) -> dict[str, float]:
        """Fraction of the frame covered by each class (all classes, summing to 1)."""
        counts = np.bincount(self.label_map.ravel(), minlength=len(self.classes))[: len(self.classes)]
        total = max(int(counts.sum()), 1)
        return {name: float(c) / total for name, c in zip(self.classes, counts)}

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence_map.mean())

    def summary(self) -> dict:
        """A JSON-ready description (no pixel data; instance models add class, score, bbox per instance)."""
        out = {
            "model": {"name": self.model.name, "version": self.model.version, "sha256": self.model.sha256},
            "frame": {"width": self.frame_size[0], "height": self.frame_size[1]},
            "classes": list(self.classes),
            "area_fractions": {k: round(v, 6) for k, v in self.area_fractions.items()},
            "mean_confidence": round(self.mean_confidence, 6),
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.instances is not None:
            out["instances"] = [{"class": self.classes[i.class_id] if i.class_id < len(self.classes) else i.class_id,
                                 "score": round(i.score, 6), "bbox": [round(v, 2) for v in i.bbox], "area": i.area,
                                 **({} if i.track_id is None else {"track_id": i.track_id})}
                                for i in self.instances]
        return out


def resize_to_frame(image: np.ndarray, frame_size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize a model-resolution map to ``frame_size`` (width, height)."""
    if (image.shape[1], image.shape[0]) == tuple(frame_size):
        return image
    return cv2.resize(image, tuple(frame_size), interpolation=interpolation)


__all__ = ["Instance", "ModelIdentity", "Segmentation", "resize_to_frame"]
