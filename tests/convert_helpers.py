"""Small labelled datasets the converter tests write: a tiny network learns them in seconds.

``write_blobs``: discs and boxes of three colour classes (red, green, blue, with noise) on a dark
noisy background, as ``images/`` + ``masks/``. Parity between exported models only means something
when the model predicts every class with some confidence; these sets give that with a few hundred
training steps, which the synthetic scenes of ``edge_seg.demo.scenes`` do not.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

BLOB_CLASSES = ("background", "red", "green", "blue")
_RGB = {1: (210, 50, 50), 2: (50, 190, 60), 3: (50, 70, 210)}


def blob_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, uint8 mask) of one scene; ``size`` is (width, height)."""
    w, h = size
    image = rng.integers(30, 130, (h, w, 3)).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, 4))
        layer = np.zeros((h, w), np.uint8)
        r = int(rng.integers(min(w, h) // 10, min(w, h) // 4))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        if rng.random() < 0.5:
            cv2.circle(layer, (cx, cy), r, 1, -1)
        else:
            cv2.rectangle(layer, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
        colour = np.array(_RGB[cls], np.float32) + rng.normal(0, 12, 3)
        region = layer.astype(bool)
        image[region] = colour + rng.normal(0, 10, (int(region.sum()), 3))
        mask[region] = cls
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_blobs(root: Path, n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Write ``n`` blob scenes to ``root/images`` and ``root/masks`` (+ ``classes.txt``); returns ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        rgb, mask = blob_scene(rng, size)
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i:05d}.png"), mask)
    (root / "classes.txt").write_text("\n".join(BLOB_CLASSES) + "\n")
    return root
