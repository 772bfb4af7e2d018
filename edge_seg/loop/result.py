"""``FrameResult``: what the loop's sink stages get for each segmented frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_seg.segmentation import Segmentation
from edge_seg.sources.base import Frame


@dataclass
class FrameResult:
    """What the sinks get: the frame, its segmentation (of the ROI if one is set) and timings."""

    frame: Frame
    segmentation: Segmentation
    roi: tuple[int, int, int, int] | None
    timings: dict[str, float]
    overlay: np.ndarray | None = None  # filled by the overlay stage when one runs
    extras: dict = field(default_factory=dict)  # e.g. "crops" from the uncertainty stage
    unredacted: np.ndarray | None = field(default=None, repr=False)  # the frame before redaction, if any was done
    camera: str | None = None  # the camera's name when the loop has several (None: the only camera)

    @property
    def image(self) -> np.ndarray:
        """The part of the frame that was segmented (the ROI, or the whole frame); redacted when the loop redacts."""
        return region(self.frame.image, self.roi)

    @property
    def raw_image(self) -> np.ndarray:
        """``image`` before redaction, for on-device model checks only (hot-reload shadow): never send or show it."""
        return region(self.frame.image if self.unredacted is None else self.unredacted, self.roi)


def region(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """The ROI of ``image`` (a view), or the whole image."""
    if roi is None:
        return image
    x, y, w, h = roi
    return image[y:y + h, x:x + w]


__all__ = ["FrameResult", "region"]
