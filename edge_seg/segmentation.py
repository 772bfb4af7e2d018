"""The ``Segmentation`` value: what one frame's inference produced.

Postprocessing works at model resolution (DESIGN §5: argmax there, then one resize). The value
keeps the model-resolution maps plus the ``Transform`` that maps them back to the frame, and
resizes to frame size lazily, once, on first access of ``class_map`` / ``confidence``; overlays
colour at model resolution and resize once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str


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

    @cached_property
    def class_map(self) -> np.ndarray:
        """uint8 class id per frame pixel (nearest-neighbour resize of ``label_map``)."""
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
        """A JSON-ready description (no pixel data)."""
        return {
            "model": {"name": self.model.name, "version": self.model.version, "sha256": self.model.sha256},
            "frame": {"width": self.frame_size[0], "height": self.frame_size[1]},
            "classes": list(self.classes),
            "area_fractions": {k: round(v, 6) for k, v in self.area_fractions.items()},
            "mean_confidence": round(self.mean_confidence, 6),
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


def resize_to_frame(image: np.ndarray, frame_size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize a model-resolution map to ``frame_size`` (width, height)."""
    if (image.shape[1], image.shape[0]) == tuple(frame_size):
        return image
    return cv2.resize(image, tuple(frame_size), interpolation=interpolation)


__all__ = ["ModelIdentity", "Segmentation", "resize_to_frame"]
