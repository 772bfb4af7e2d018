"""Synthetic clips: one scene over time, with smoothly moving objects (the ``synthetic://`` source, demo, bench).

A clip keeps one background and one set of objects; the objects drift, bounce off the borders,
spin and breathe in scale smoothly, while the global lighting drifts slowly like an auto-exposing
camera. Each frame gets fresh sensor noise. Deterministic by seed, like ``edge_seg.demo.scenes``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from edge_seg.demo.scenes import Light, Scene, check_size, compose, random_background, random_light, random_object

__all__ = ["render_clip"]


@dataclass(frozen=True)
class _Motion:
    vx: float
    vy: float
    spin: float  # radians per frame
    pulse: float  # relative scale amplitude
    pulse_rate: float  # radians per frame
    phase: float


def _random_motion(rng: np.random.Generator, short: int) -> _Motion:
    speed = rng.uniform(0.4, 2.5) * short / 256
    heading = rng.uniform(0, 2 * math.pi)
    return _Motion(vx=float(speed * math.cos(heading)), vy=float(speed * math.sin(heading)),
                   spin=float(rng.uniform(-0.03, 0.03)), pulse=float(rng.uniform(0, 0.12)),
                   pulse_rate=float(rng.uniform(0.01, 0.05)), phase=float(rng.uniform(0, 2 * math.pi)))


def _bounce(pos: float, vel: float, limit: float) -> tuple[float, float]:
    if pos < 0:
        return -pos, abs(vel)
    if pos > limit:
        return 2 * limit - pos, -abs(vel)
    return pos, vel


def _drift(base: Light, t: int, waves: np.ndarray) -> Light:
    """Slow, smooth lighting drift: sinusoids with periods of a few seconds."""
    period, phase = waves[:, 0], waves[:, 1]
    s = np.sin(2 * math.pi * t / period + phase)
    gain = np.asarray(base.gain) * (1.0 + 0.06 * s[2:5])
    return replace(base, contrast=base.contrast * (1.0 + 0.08 * s[0]), brightness=base.brightness + 18 * s[1],
                   gain=tuple(float(g) for g in gain), shade_angle=base.shade_angle + 0.3 * s[5])


def render_clip(seed: int, n_frames: int, size: tuple[int, int] = (640, 360)) -> Iterator[Scene]:
    """Yield ``n_frames`` consecutive frames of one scene with smoothly moving objects.

    Objects drift, bounce off the borders, spin and pulse in scale; the depth order is fixed;
    global lighting drifts slowly; each frame has fresh sensor noise. Deterministic by seed.
    """
    width, height = check_size(size)
    rng = np.random.default_rng(seed)
    background = random_background(rng, width, height)
    objs = [random_object(rng, width, height) for _ in range(int(rng.integers(1, 6)))]
    motions = [_random_motion(rng, min(width, height)) for _ in objs]
    light = random_light(rng)
    light = replace(light, blur=min(light.blur, 1.0))
    waves = np.stack([rng.uniform(90, 300, 6), rng.uniform(0, 2 * math.pi, 6)], axis=1)
    base_sizes = [o.size for o in objs]
    for t in range(int(n_frames)):
        frame_objs = [replace(o, size=s * (1.0 + m.pulse * math.sin(m.pulse_rate * t + m.phase)))
                      for o, m, s in zip(objs, motions, base_sizes)]
        yield compose(background, frame_objs, _drift(light, t, waves), rng)
        for i, (o, m) in enumerate(zip(objs, motions)):
            cx, vx = _bounce(o.cx + m.vx, m.vx, width)
            cy, vy = _bounce(o.cy + m.vy, m.vy, height)
            objs[i] = replace(o, cx=cx, cy=cy, angle=o.angle + m.spin)
            motions[i] = replace(m, vx=vx, vy=vy)
