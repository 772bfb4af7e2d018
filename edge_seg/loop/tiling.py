"""Tiling for frames much larger than the model input: overlapping tiles, probabilities stitched.

Each tile is ``zoom`` times the model input in frame pixels (default 2: a tile is downscaled 2x,
so small objects keep more pixels than with one 6x downscale of a 4K frame). Tile outputs are
turned into probabilities and accumulated, weighted, on a mosaic at the model's output
resolution; overlaps average. Argmax then runs on the mosaic, once, through the segmenter's
``decode_probabilities``: temporal smoothing (when on) averages the mosaic over frames, and the
entropy and margin maps the segmenter was asked for are computed from it.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from edge_seg.postprocess.semantic import probabilities
from edge_seg.preprocess import Transform
from edge_seg.segmentation import Segmentation
from edge_seg.segmenter import Segmenter


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared."""
    if tile >= length:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def should_tile(frame_size: tuple[int, int], input_size: tuple[int, int], min_scale: float) -> bool:
    """True when the frame is at least ``min_scale`` times the model input along both axes."""
    return frame_size[0] >= min_scale * input_size[0] and frame_size[1] >= min_scale * input_size[1]


class Tiler:
    """Segments one large frame as overlapping tiles with one segmenter (same thread)."""

    def __init__(self, segmenter: Segmenter, overlap: float = 0.25, zoom: float = 2.0, min_scale: float = 2.5):
        self.segmenter = segmenter
        self.min_scale = min_scale
        self.overlap = overlap
        self.zoom = zoom
        manifest = segmenter.manifest
        self._kind = manifest.output.kind
        self._num_classes = manifest.num_classes
        self._input_size = (manifest.input.width, manifest.input.height)

    def tiles(self, frame_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """(x, y, w, h) of every tile in frame pixels."""
        fw, fh = frame_size
        if not should_tile(frame_size, self._input_size, self.min_scale):
            return [(0, 0, fw, fh)]
        tw = min(fw, int(self._input_size[0] * self.zoom))
        th = min(fh, int(self._input_size[1] * self.zoom))
        return [(x, y, tw, th) for y in tile_starts(fh, th, self.overlap) for x in tile_starts(fw, tw, self.overlap)]

    def run(self, image: np.ndarray) -> tuple[np.ndarray, Transform, float]:
        """Infer every tile; returns (stitched probabilities (1, H', W', C), Transform, invoke ms)."""
        frame_size = (image.shape[1], image.shape[0])
        mosaic = weights = None
        invoke_ms = 0.0
        scale = 1.0
        for x, y, w, h in self.tiles(frame_size):
            batch, transform = self.segmenter.prepare(image[y:y + h, x:x + w])
            t0 = time.perf_counter()
            raw = self.segmenter.invoke(batch)
            invoke_ms += (time.perf_counter() - t0) * 1e3
            probs = probabilities(raw, self._kind, self.segmenter.output_tensor, self._num_classes)
            probs = transform.crop(probs)
            if mosaic is None:
                scale = probs.shape[1] / w
                size = (max(1, round(frame_size[0] * scale)), max(1, round(frame_size[1] * scale)))
                mosaic = np.zeros((size[1], size[0], probs.shape[-1]), np.float32)
                weights = np.zeros((size[1], size[0], 1), np.float32)
            x0, y0 = round(x * scale), round(y * scale)
            x1, y1 = min(mosaic.shape[1], round((x + w) * scale)), min(mosaic.shape[0], round((y + h) * scale))
            if probs.shape[:2] != (y1 - y0, x1 - x0):
                probs = cv2.resize(probs, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
                probs = probs.reshape(y1 - y0, x1 - x0, -1)
            mosaic[y0:y1, x0:x1] += probs
            weights[y0:y1, x0:x1] += 1.0
        mosaic /= np.maximum(weights, 1.0)
        mosaic_size = (mosaic.shape[1], mosaic.shape[0])
        return mosaic[None], Transform(frame_size, mosaic_size, (0, 0, *mosaic_size)), invoke_ms

    def decode(self, raw: np.ndarray, transform: Transform, timings: dict[str, float] | None = None,
               frame: np.ndarray | None = None, stream: str | None = None) -> Segmentation:
        """Stitched probabilities → ``Segmentation`` of the whole frame (smoothed over time when the
        segmenter smooths; ``frame``, the BGR image, lets it detect scene cuts)."""
        return self.segmenter.decode_probabilities(raw, transform, timings, frame=frame, stream=stream)
