"""Synthetic clips with per-object ground-truth ids over time (tracking evaluation).

``render_instance_clip`` scripts the hard cases of a tracker on one scene: two objects whose paths
cross (one passes in front of the other and hides it for a few frames), a pair of same-class
objects that move side by side touching, and one more object that passes close behind the second
of the crossing pair on its way down. Every object keeps its id
(``Scene.instances``: 1-based, fixed depth order) for the whole clip; an object covered by
another keeps only what shows. Deterministic by seed, like ``edge_seg.demo.scenes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from edge_seg.demo.scenes import Scene, check_size, compose, random_background, random_light, random_object

__all__ = ["render_instance_clip"]

# per object (back to front): class (None: random), start and end centre as fractions of the frame,
# size as a fraction of the short side, and a sideways wobble (fraction of the short side)
_SCRIPT = (
    (None, (0.12, 0.30), (0.88, 0.38), 0.20, 0.00),  # crosses the next one ...
    (None, (0.88, 0.42), (0.12, 0.30), 0.20, 0.00),  # ... in front of it, half way
    ("pair", (0.80, 0.78), (0.25, 0.72), 0.19, 0.02),  # two of one class, touching, side by side
    ("pair", (0.80, 0.78), (0.25, 0.72), 0.19, 0.02),
    (None, (0.72, 0.05), (0.92, 0.95), 0.17, 0.00),  # top to bottom, passing close behind the second one
)


def _track(start: tuple[float, float], end: tuple[float, float], f: float) -> tuple[float, float]:
    ease = 0.5 - 0.5 * math.cos(math.pi * f)  # starts and stops smoothly
    return start[0] + (end[0] - start[0]) * ease, start[1] + (end[1] - start[1]) * ease


def render_instance_clip(seed: int, n_frames: int, size: tuple[int, int] = (320, 240)) -> Iterator[Scene]:
    """Yield ``n_frames`` frames of a scripted scene with crossing and touching objects.

    ``Scene.instances`` holds the same id for an object in every frame (ids 1..5), so the frames
    are ground truth for tracking. The objects' looks, the background and the lighting come from
    ``seed``; their paths are fixed (as fractions of the frame), so every clip has the crossing
    at mid-clip and the touching pair throughout.
    """
    width, height = check_size(size)
    short = min(width, height)
    rng = np.random.default_rng(seed)
    background = random_background(rng, width, height)
    light = random_light(rng)
    light = replace(light, blur=min(light.blur, 0.8), noise=min(light.noise, 6.0))
    pair_cls = int(rng.integers(1, 4))
    objs = []
    for k, (cls, _, _, frac, _) in enumerate(_SCRIPT):
        obj = random_object(rng, width, height)
        cls = pair_cls if cls == "pair" else (pair_cls + k) % 3 + 1
        extent = frac * short
        objs.append(replace(obj, cls=cls, size=extent, period=float(max(3.0, obj.period * extent / obj.size))))
    spins = rng.uniform(-0.02, 0.02, len(objs))
    phases = rng.uniform(0, 2 * math.pi, len(objs))
    steps = max(int(n_frames) - 1, 1)
    for t in range(int(n_frames)):
        f = t / steps
        frame_objs = []
        for k, ((_, start, end, _size, wobble), obj) in enumerate(zip(_SCRIPT, objs)):
            cx, cy = _track(start, end, f)
            cx, cy = cx * width, cy * height + wobble * short * math.sin(2 * math.pi * 2 * f + phases[k])
            if k == 3:  # the second of the pair rides beside the first: centres 73-83 % of a size apart
                cx, cy = cx - objs[2].size * (0.78 + 0.05 * math.sin(2 * math.pi * 3 * f)), cy - 0.1 * obj.size
            frame_objs.append(replace(obj, cx=cx, cy=cy, angle=obj.angle + spins[k] * t))
        yield compose(background, frame_objs, light, rng, instances=True)
