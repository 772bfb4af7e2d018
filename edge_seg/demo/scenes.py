"""Synthetic scenes and clips with exact ground truth (demo source, tests, training data).

NumPy + OpenCV only: this runs on the device (the ``synthetic://`` source) as well as on the
workstation (training data). Every random choice comes from one NumPy generator seeded by the
caller, so the same seed gives identical arrays.

A scene is a random background (colour gradient, smooth and fine noise textures, clutter lines
that are *not* objects) with 1–5 objects painted back to front. The three object classes differ
by shape and by texture: a striped *disc*, a checkered *box* and a dotted *triangle*; colours,
texture scale and angle, size (8–35 % of the short side), rotation and position are random, and
objects may overlap (the mask shows the top one). Lighting (contrast, brightness, colour cast, a
shading ramp), blur and sensor noise come last and never touch the mask.

Clips (scenes over time) are in ``edge_seg.demo.clips``, built from the pieces here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

__all__ = ["CLASSES", "PALETTE", "Light", "Scene", "check_size", "compose", "instance_annotations", "random_background",
           "random_light", "random_object", "render_scene", "render_touching_scene", "write_dataset"]

CLASSES: tuple[str, ...] = ("background", "disc", "box", "triangle")
PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))

_DISC, _BOX, _TRIANGLE = 1, 2, 3
_SIZE_RANGE = (0.08, 0.35)  # object extent as a fraction of the image's short side
_SHIFT = 4  # sub-pixel bits for cv2 drawing (smooth motion in clips)


@dataclass(frozen=True)
class Scene:
    """One rendered frame: ``image`` is (H, W, 3) uint8 **BGR**, ``mask`` is (H, W) uint8 class ids.

    ``instances`` (only when asked for) is (H, W) uint16 instance ids: 0 = background, k = the k-th
    object painted (1-based, back to front; an object hidden by others keeps only what shows, and
    one hidden entirely has no pixels).
    """

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray | None = None


@dataclass(frozen=True)
class _Obj:
    cls: int
    cx: float
    cy: float
    size: float  # pixels: disc diameter, box long side, triangle circumscribed diameter
    angle: float  # radians; the texture turns with the object
    aspect: float  # box short/long side
    jitter: tuple[float, ...]  # triangle: per-vertex angle and radius jitter
    color0: tuple[float, float, float]
    color1: tuple[float, float, float]
    period: float  # texture period in pixels
    tex_angle: float  # texture angle relative to the object
    shade: tuple[float, float]  # linear shading ramp across the object


@dataclass(frozen=True)
class Light:
    contrast: float
    brightness: float
    gain: tuple[float, float, float]  # per-channel colour cast (BGR)
    shade_amp: float
    shade_angle: float
    blur: float  # Gaussian sigma in pixels, 0 = none
    noise: float  # sensor noise sigma in grey levels


# ---------------------------------------------------------------- random parameters

def _two_colours(rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    for _ in range(8):  # a texture needs contrast between its two colours
        if np.abs(c1 - c0).mean() >= 60:
            break
        c1 = rng.uniform(0, 255, 3)
    else:
        c1 = 255.0 - c0
    return tuple(float(v) for v in c0), tuple(float(v) for v in c1)


def random_object(rng: np.random.Generator, width: int, height: int) -> _Obj:
    short = min(width, height)
    size = float(rng.uniform(*_SIZE_RANGE) * short)
    c0, c1 = _two_colours(rng)
    return _Obj(
        cls=int(rng.integers(1, len(CLASSES))),
        cx=float(rng.uniform(0.05, 0.95) * width),
        cy=float(rng.uniform(0.05, 0.95) * height),
        size=size,
        angle=float(rng.uniform(0, 2 * math.pi)),
        aspect=float(rng.uniform(0.55, 1.0)),
        jitter=tuple(float(v) for v in rng.uniform(-0.2, 0.2, 6)),
        color0=c0,
        color1=c1,
        period=float(max(3.0, rng.uniform(0.12, 0.3) * size)),
        tex_angle=float(rng.uniform(0, math.pi)),
        shade=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
    )


def random_light(rng: np.random.Generator) -> Light:
    return Light(
        contrast=float(rng.uniform(0.65, 1.25)),
        brightness=float(rng.uniform(-35, 35)),
        gain=tuple(float(v) for v in rng.uniform(0.8, 1.2, 3)),
        shade_amp=float(rng.uniform(-0.35, 0.35)),
        shade_angle=float(rng.uniform(0, 2 * math.pi)),
        blur=float(rng.uniform(0.3, 1.6)) if rng.random() < 0.6 else 0.0,
        noise=float(rng.uniform(0, 10)),
    )


# ---------------------------------------------------------------- drawing

@lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int, amp: float) -> np.ndarray:
    """Band-limited colour noise: a coarse random grid upsampled (cubic)."""
    gw = max(2, cells)
    gh = max(2, round(cells * height / width))
    grid = rng.standard_normal((gh, gw, 3)).astype(np.float32) * np.float32(amp)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def random_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient + noise textures + clutter lines (float32 BGR)."""
    xs, ys = _grid(width, height)
    ca, cb = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    corners = [x * c + y * s for x in (0, width - 1) for y in (0, height - 1)]
    lo, span = min(corners), max(max(corners) - min(corners), 1.0)
    ramp = xs * np.float32(c / span) + ys * np.float32(s / span) - np.float32(lo / span)  # 0..1
    bg = cv2.merge([ramp * np.float32(b - a) + np.float32(a) for a, b in zip(ca, cb)])
    bg += _smooth_noise(rng, width, height, int(rng.integers(3, 9)), float(rng.uniform(8, 40)))
    if rng.random() < 0.6:
        fine = int(rng.integers(width // 16, width // 4 + 1))
        bg += _smooth_noise(rng, width, height, fine, float(rng.uniform(4, 18)))
    _clutter(rng, bg)
    return bg


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Random straight lines and open polylines: texture the model must learn to ignore."""
    height, width = img.shape[:2]
    scale = 1 << _SHIFT
    for _ in range(int(rng.integers(0, 9))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        thick = int(rng.integers(1, 4))
        n = int(rng.integers(2, 6))
        pts = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height], (n, 2))
        pts = (pts * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [pts], False, colour, thick, cv2.LINE_8, _SHIFT)


def _outline(obj: _Obj) -> np.ndarray | None:
    """Polygon vertices (float, image coordinates) of a box or triangle; None for a disc."""
    if obj.cls == _BOX:
        hw, hh = obj.size / 2, obj.size * obj.aspect / 2
        local = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    elif obj.cls == _TRIANGLE:
        k = np.arange(3)
        ang = k * (2 * math.pi / 3) + np.array(obj.jitter[:3]) - math.pi / 2
        rad = obj.size / 2 * (1.0 + 0.5 * np.array(obj.jitter[3:]))
        local = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    else:
        return None
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    rot = np.array([[c, s], [-s, c]])
    return local @ rot + np.array([obj.cx, obj.cy])


def _texture(obj: _Obj, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mix weight in [0, 1] of colour1 over colour0, in object coordinates (u, v)."""
    p = np.float32(obj.period)
    if obj.cls == _DISC:  # stripes, soft edged
        return np.clip(np.sin(u * np.float32(2 * math.pi) / p) * 3.0 + 0.5, 0.0, 1.0)
    if obj.cls == _BOX:  # checker board
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    du = np.mod(u, p) - p / 2  # dots on a grid
    dv = np.mod(v, p) - p / 2
    return np.clip(np.float32(0.3) * p - np.sqrt(du * du + dv * dv) + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, mask: np.ndarray, obj: _Obj, ids: np.ndarray | None = None, instance: int = 0) -> None:
    """Paint ``obj`` over ``img`` (float32) and write its class into ``mask`` (and ``instance`` into ``ids``)."""
    height, width = mask.shape
    poly = _outline(obj)
    r = obj.size / 2
    lo = poly.min(axis=0) if poly is not None else np.array([obj.cx - r, obj.cy - r])
    hi = poly.max(axis=0) if poly is not None else np.array([obj.cx + r, obj.cy + r])
    x0, y0 = max(int(math.floor(lo[0])), 0), max(int(math.floor(lo[1])), 0)
    x1, y1 = min(int(math.ceil(hi[0])) + 1, width), min(int(math.ceil(hi[1])) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return
    scale = 1 << _SHIFT
    shape = np.zeros((y1 - y0, x1 - x0), np.uint8)
    if poly is None:
        centre = (round((obj.cx - x0) * scale), round((obj.cy - y0) * scale))
        cv2.circle(shape, centre, round(r * scale), 1, -1, cv2.LINE_8, _SHIFT)
    else:
        pts = np.round((poly - [x0, y0]) * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(shape, [pts], 1, cv2.LINE_8, _SHIFT)
    inside = shape.astype(bool)
    if not inside.any():
        return
    xs, ys = _grid(width, height)
    x = xs[y0:y1, x0:x1] - np.float32(obj.cx)
    y = ys[y0:y1, x0:x1] - np.float32(obj.cy)
    a = obj.angle + obj.tex_angle
    c, s = np.float32(math.cos(a)), np.float32(math.sin(a))
    u, v = x * c + y * s, y * c - x * s
    t = _texture(obj, u, v)[..., None]
    c0 = np.asarray(obj.color0, np.float32)
    colour = c0 + t * (np.asarray(obj.color1, np.float32) - c0)
    colour *= (1.0 + (x * np.float32(obj.shade[0]) + y * np.float32(obj.shade[1])) / np.float32(obj.size))[..., None]
    img[y0:y1, x0:x1][inside] = colour[inside]
    mask[y0:y1, x0:x1][inside] = obj.cls
    if ids is not None:
        ids[y0:y1, x0:x1][inside] = instance


@lru_cache(maxsize=1)
def _normal_lut() -> np.ndarray:
    """Standard-normal quantiles of 256 equiprobable bins: random bytes -> Gaussian noise."""
    dist = NormalDist()
    return np.array([dist.inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


def _finish(img: np.ndarray, light: Light, rng: np.random.Generator) -> np.ndarray:
    """Apply lighting, blur and noise to a float32 image and return uint8 BGR."""
    height, width = img.shape[:2]
    xs, ys = _grid(width, height)
    ca, sa = math.cos(light.shade_angle), math.sin(light.shade_angle)
    k = light.shade_amp / max(width, height)
    shade = xs * np.float32(ca * k) + ys * np.float32(sa * k)
    shade += np.float32(1.0 - k * (ca * width / 2 + sa * height / 2))
    # out = (img * gain + offset) * shade, as per-channel 2-D products (cheaper than broadcasting)
    offset = 128.0 * (1.0 - light.contrast) + light.brightness
    factor = cv2.merge([shade * np.float32(g * light.contrast) for g in light.gain])
    img = cv2.multiply(img, factor)
    img = cv2.add(img, cv2.merge([shade * np.float32(offset)] * 3))
    if light.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), light.blur)
    if light.noise > 0:
        raw = np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape)
        img = cv2.add(img, cv2.LUT(raw, _normal_lut() * np.float32(light.noise)))
    return cv2.add(img, 0.0, dtype=cv2.CV_8U)  # rounds and saturates to [0, 255]


def compose(background: np.ndarray, objs: list[_Obj], light: Light,
             rng: np.random.Generator, instances: bool = False) -> Scene:
    img = background.copy()
    mask = np.zeros(img.shape[:2], np.uint8)
    ids = np.zeros(img.shape[:2], np.uint16) if instances else None
    for k, obj in enumerate(objs, start=1):
        _paint(img, mask, obj, ids, k)
    return Scene(image=_finish(img, light, rng), mask=mask, instances=ids)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 16 or height < 16:
        raise ValueError(f"scene size must be at least 16x16, got {width}x{height}")
    return width, height


# ---------------------------------------------------------------- public API

def render_scene(seed: int, size: tuple[int, int] = (256, 256), instances: bool = False) -> Scene:
    """Render one random scene; ``size`` is (width, height). The same seed gives the same arrays.

    ``instances=True`` also fills ``Scene.instances`` (image and mask are the same as without).
    """
    width, height = check_size(size)
    rng = np.random.default_rng(seed)
    background = random_background(rng, width, height)
    objs = [random_object(rng, width, height) for _ in range(int(rng.integers(1, 6)))]
    return compose(background, objs, random_light(rng), rng, instances)


def render_touching_scene(seed: int, size: tuple[int, int] = (256, 256), count: tuple[int, int] = (3, 6)) -> Scene:
    """A scene for instance segmentation: a cluster of ``count`` (min, max inclusive) objects of one class.

    Each object after the first is placed against a random earlier one (centre distance 75-95 % of
    the sum of their half sizes), so same-class objects touch or overlap slightly; 0-2 objects of
    other classes lie behind them. ``Scene.instances`` is always filled.
    """
    width, height = check_size(size)
    rng = np.random.default_rng(seed)
    background = random_background(rng, width, height)
    short = min(width, height)
    cls = int(rng.integers(1, len(CLASSES)))
    others = []
    for _ in range(int(rng.integers(0, 3))):
        obj = random_object(rng, width, height)
        others.append(obj if obj.cls != cls else replace(obj, cls=cls % (len(CLASSES) - 1) + 1))
    cluster: list[_Obj] = []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        obj = random_object(rng, width, height)
        extent = float(rng.uniform(0.12, 0.22) * short)
        if cluster:
            anchor = cluster[int(rng.integers(len(cluster)))]
            angle = float(rng.uniform(0, 2 * math.pi))
            dist = (anchor.size + extent) / 2 * float(rng.uniform(0.75, 0.95))
            cx = float(np.clip(anchor.cx + dist * math.cos(angle), 0.05 * width, 0.95 * width))
            cy = float(np.clip(anchor.cy + dist * math.sin(angle), 0.05 * height, 0.95 * height))
        else:
            cx, cy = float(rng.uniform(0.3, 0.7) * width), float(rng.uniform(0.3, 0.7) * height)
        cluster.append(replace(obj, cls=cls, size=extent, cx=cx, cy=cy,
                               period=float(max(3.0, rng.uniform(0.12, 0.3) * extent))))
    return compose(background, others + cluster, random_light(rng), rng, instances=True)


def instance_annotations(scene: Scene) -> list[dict]:
    """``[{"instance": k, "class_id": c, "mask": bool (H, W)}, ...]`` of a scene rendered with instances=True.

    ``class_id`` is the scene class (1 = disc, 2 = box, 3 = triangle); objects with no visible pixel are left out.
    """
    if scene.instances is None:
        raise ValueError("render the scene with instances=True")
    out = []
    for k in np.unique(scene.instances):
        if k == 0:
            continue
        mask = scene.instances == k
        out.append({"instance": int(k), "class_id": int(scene.mask[mask][0]), "mask": mask})
    return out


def write_dataset(out_dir: str | Path, n: int, seed: int = 0,
                  size: tuple[int, int] | Sequence[tuple[int, int]] = (256, 256)) -> Path:
    """Write ``n`` scenes as ``out_dir/images/00000.png`` (BGR colour) and ``out_dir/masks/00000.png``.

    Masks are 8-bit single-channel PNGs of class ids. Scene ``i`` is ``render_scene(seed + i, size)``,
    so use seeds far apart (e.g. 0, 10**6, 2*10**6) for train / validation / test sets. ``size`` may
    be a list of sizes, used in turn (scene ``i`` gets ``size[i % len(size)]``): a mix of aspect
    ratios, as cameras deliver, for a model that stretches frames to a square input.
    """
    sizes = [tuple(size)] if isinstance(size[0], int) else [tuple(s) for s in size]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(int(n)):
        scene = render_scene(seed + i, sizes[i % len(sizes)])
        name = f"{i:05d}.png"
        if not (cv2.imwrite(str(out / "images" / name), scene.image)
                and cv2.imwrite(str(out / "masks" / name), scene.mask)):
            raise OSError(f"cannot write {out / 'images' / name}")
    return out
