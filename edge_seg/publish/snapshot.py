"""The JPEG overlay a ``snapshot`` command answers with, sized to fit in one MQTT message."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from edge_seg.view.overlay import Overlay

MAX_SIDE = 960  # snapshots are for a human to look at: no need for the full camera resolution


def overlay_jpeg_b64(result, overlay: np.ndarray | None, max_b64: int,
                     quality: int = 80) -> tuple[str, tuple[int, int]]:
    """Base64 JPEG of the result's overlay (drawn here when the loop drew none) and its (width, height).

    The image is downscaled (max side ``MAX_SIDE``, then halved) until its base64 fits ``max_b64`` bytes.
    """
    if overlay is None:
        image = result.frame.image
        if result.roi is not None:
            x, y, w, h = result.roi
            image = image[y:y + h, x:x + w]
        overlay = Overlay(alpha=0.5, legend=True).annotate(image, result.segmentation)
    height, width = overlay.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    while True:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = overlay if size == (width, height) else cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
        text = base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""
        if ok and (len(text) <= max_b64 or max(size) <= 16):
            return text, size
        scale /= 2


__all__ = ["overlay_jpeg_b64"]
