"""``ZoneLayer``: the configured zones drawn on a frame (outline and name), from a layer cached per frame size.

The outlines and labels are rendered once per frame size into a BGR layer and a mask; each frame
then costs one masked copy per zone, limited to the zone's bounding box (no drawing calls, no
text layout per frame). Zones in ``fractions`` follow the frame size.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge_seg.postprocess.zones import ZoneConfig, polygon_pixels

COLOUR = (0, 215, 255)  # BGR amber: stands out from the class palettes' usual reds, greens and blues


class ZoneLayer:
    """Draw ``zones`` on frames of any size (one cached layer per size; use one per thread)."""

    def __init__(self, zones: Sequence[ZoneConfig], colour: tuple[int, int, int] = COLOUR):
        self.zones = tuple(zones)
        self.colour = tuple(int(v) for v in colour)
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]] = {}

    def draw(self, image: np.ndarray) -> np.ndarray:
        """Draw the zones into ``image`` (BGR, modified in place) and return it."""
        height, width = image.shape[:2]
        cached = self._cache.get((width, height))
        if cached is None:
            cached = self._cache[(width, height)] = self._render(width, height)
        layer, mask, boxes = cached
        for x0, y0, x1, y1 in boxes:
            cv2.copyTo(layer[y0:y1, x0:x1], mask[y0:y1, x0:x1], image[y0:y1, x0:x1])
        return image

    def _render(self, width: int, height: int):
        layer = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        thick = max(1, round(height / 360))
        font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(height / 1200, 0.35)
        boxes = []
        for zone in self.zones:
            pts = np.rint(polygon_pixels(zone, (width, height))).astype(np.int32).reshape(-1, 1, 2)
            for target, colour in ((layer, self.colour), (mask, 255)):
                cv2.polylines(target, [pts], True, colour, thick, cv2.LINE_8)
            (tw, th), base = cv2.getTextSize(zone.name, font, scale, 1)
            top = pts[:, 0, 1].argmin()
            x = int(min(max(pts[top, 0, 0], 0), max(width - tw - 4, 0)))
            y = int(min(max(pts[top, 0, 1] + 2, 0), max(height - th - base - 4, 0)))
            cv2.rectangle(layer, (x, y), (x + tw + 4, y + th + base + 4), (0, 0, 0), cv2.FILLED)
            cv2.rectangle(mask, (x, y), (x + tw + 4, y + th + base + 4), 255, cv2.FILLED)
            cv2.putText(layer, zone.name, (x + 2, y + th + 2), font, scale, self.colour, 1, cv2.LINE_AA)
            corners = np.vstack([pts.reshape(-1, 2), [[x, y], [x + tw + 4, y + th + base + 4]]]).astype(np.int32)
            bx, by, bw, bh = cv2.boundingRect(corners)
            x0, y0 = max(bx - thick, 0), max(by - thick, 0)
            boxes.append((x0, y0, min(bx + bw + thick, width), min(by + bh + thick, height)))
        return layer, mask, boxes


__all__ = ["COLOUR", "ZoneLayer"]
