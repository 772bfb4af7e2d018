"""Tracker cost per frame at a given number of instances (``edge-seg bench`` and the closing note)."""

from __future__ import annotations

import time

import numpy as np

from edge_seg.postprocess.tracking import Tracker
from edge_seg.segmentation import Instance


def _ellipse(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    return ((2 * xx / width - 1) ** 2 + (2 * yy / height - 1) ** 2) <= 1


def moving_instances(n: int, frames: int, seed: int = 0, size: tuple[int, int] = (1280, 720)) -> list[list[Instance]]:
    """``frames`` frames of ``n`` objects (40-120 px boxes, each with the ellipse that fills its box as mask, so
    mask IoU costs what it does on real masks) moving at constant velocity, bouncing off the borders."""
    rng = np.random.default_rng(seed)
    width, height = size
    wh = rng.uniform(40, 120, (n, 2))
    pos = rng.uniform([0, 0], [width, height], (n, 2)) - wh / 2
    vel = rng.uniform(-6, 6, (n, 2))
    scores = rng.uniform(0.3, 0.95, n)
    masks = [_ellipse(int(w), int(h)) for w, h in wh]
    out = []
    for _ in range(frames):
        pos += vel
        bounce = (pos < 0) | (pos + wh > [width, height])
        vel[bounce] *= -1
        out.append([Instance(int(k % 3), float(scores[k]), (float(pos[k, 0]), float(pos[k, 1]), float(wh[k, 0]),
                                                          float(wh[k, 1])), masks[k], (int(pos[k, 0]), int(pos[k, 1])))
                    for k in np.argsort(-scores)])
    return out


def tracking_ms(n: int = 20, frames: int = 300, **tracker_options) -> dict[str, float]:
    """Milliseconds per ``Tracker.update`` at ``n`` instances: p50, p95 and mean over ``frames`` frames."""
    tracker = Tracker(**tracker_options)
    times = []
    for instances in moving_instances(n, frames):
        start = time.perf_counter()
        tracker.update(instances)
        times.append((time.perf_counter() - start) * 1e3)
    times = np.asarray(times[10:])  # the first frames only start tracks
    return {"instances": n, "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(times.mean())}


__all__ = ["moving_instances", "tracking_ms"]
