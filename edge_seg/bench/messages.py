"""Mask-message size and encode time for a 1280x720 frame: ``edge-seg bench-messages``.

The "model output" is a synthetic scene's ground truth downscaled (nearest) to the model
resolution, with the noise a real model shows: ragged class boundaries (30 % of the pixels on a
boundary take a neighbour's class) and 0.5 % isolated wrong pixels. Each timed call encodes a fresh
``Segmentation`` (so class areas and mean confidence are computed, not cached).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from edge_seg.demo.scenes import CLASSES, PALETTE, render_scene
from edge_seg.publish.messages import decode, encode_mask
from edge_seg.segmentation import ModelIdentity, Segmentation

FRAME = (1280, 720)
SIZES = ((192, 108), (256, 144), (512, 288), FRAME)  # model resolutions measured by `edge-seg bench-messages`


def noisy_label_map(mask: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                    boundary: float = 0.3, salt: float = 0.005) -> np.ndarray:
    """``mask`` resized to ``size`` (w, h) with ragged boundaries and salt noise, like a small model's argmax."""
    labels = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    kernel = np.ones((3, 3), np.uint8)
    grown, shrunk = cv2.dilate(labels, kernel), cv2.erode(labels, kernel)
    edge = (grown != shrunk) & (rng.random(labels.shape) < boundary)
    labels[edge] = np.where(rng.random(int(edge.sum())) < 0.5, grown[edge], shrunk[edge])
    speck = rng.random(labels.shape) < salt
    labels[speck] = rng.integers(0, len(CLASSES), int(speck.sum()))
    return labels


def measure(model_size: tuple[int, int], fmt: str = "rle", n: int = 200, seeds: int = 8) -> dict:
    """Size and encode time of ``n`` mask messages (at least one per scene seed) at ``model_size``."""
    rng = np.random.default_rng(0)
    model = ModelIdentity("bench", "1", "0" * 64)
    sizes, times = [], []
    for seed in range(seeds):
        scene = render_scene(seed, FRAME)
        labels = noisy_label_map(scene.mask, model_size, rng)
        conf = rng.uniform(0.5, 1.0, labels.shape).astype(np.float32)
        for i in range(max(1, n // seeds)):
            seg = Segmentation(labels, conf, FRAME, CLASSES, PALETTE, model, timings={"infer": 9.0, "post": 1.0})
            start = time.perf_counter()
            enc = encode_mask(seg, device="bench", seq=i, ts=1.0, fmt=fmt)
            times.append((time.perf_counter() - start) * 1e3)
            sizes.append(len(enc.payload))
        assert decode(enc.payload).mask_format == fmt
    raw = FRAME[0] * FRAME[1]
    return {"model_size": list(model_size), "fmt": fmt, "payload_bytes_mean": round(float(np.mean(sizes))),
            "payload_bytes_max": int(np.max(sizes)), "fraction_of_raw_max": round(float(np.max(sizes)) / raw, 4),
            "encode_ms_median": round(float(np.median(times)), 3),
            "encode_ms_p95": round(float(np.percentile(times, 95)), 3)}
