"""Mask and crop values for message tests: a noisy synthetic-scene segmentation and a JPEG crop of a scene."""

from __future__ import annotations

import json

import cv2
import numpy as np

from edge_seg.bench.messages import noisy_label_map
from edge_seg.demo.scenes import CLASSES, PALETTE, render_scene
from edge_seg.postprocess.uncertainty import Crop
from edge_seg.segmentation import ModelIdentity, Segmentation

MODEL = ModelIdentity("scenes-seg", "1.2.0", "ab" * 32)
FRAME = (1280, 720)


def make_seg(seed: int = 0, frame=FRAME, model_size=(192, 108), noise: bool = True) -> Segmentation:
    scene = render_scene(seed, frame)
    rng = np.random.default_rng(seed)
    labels = noisy_label_map(scene.mask, model_size, rng) if noise else cv2.resize(
        scene.mask, model_size, interpolation=cv2.INTER_NEAREST)
    conf = rng.uniform(0.4, 1.0, labels.shape).astype(np.float32)
    return Segmentation(labels, conf, frame, CLASSES, PALETTE, MODEL, timings={"infer": 7.5, "post": 0.8})


def make_crop(seed: int = 0, bbox=(100, 50, 64, 48)) -> Crop:
    scene = render_scene(seed, FRAME)
    x, y, w, h = bbox
    ok, jpeg = cv2.imencode(".jpg", scene.image[y:y + h, x:x + w])
    assert ok
    return Crop(jpeg=jpeg.tobytes(), bbox=bbox, score=0.42, class_map=scene.mask[y:y + h, x:x + w].copy(),
                ts=1700000000.5, seq=17)


def instances_payload(frame: tuple[int, int], masks: list[np.ndarray] | None = None, *, n_full: int = 0,
                      msg_id: str = "m1", device: str = "cam-1", seq: int = 1) -> bytes:
    """An instances message (JSON) whose instance masks are ``masks`` (frame-size bool), encoded by pycocotools,
    or ``n_full`` full-frame masks (two runs: a dozen bytes of RLE whatever the frame size)."""
    from pycocotools import mask as coco_mask

    width, height = frame
    if masks is not None:
        counts = [coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")
                  for mask in masks]
    else:
        counts = [coco_mask.frPyObjects([{"size": [height, width], "counts": [0, width * height]}],
                                        height, width)[0]["counts"].decode("ascii")] * n_full
    return json.dumps({
        "schema": "edge_seg.instances/v1", "device": device, "msg_id": msg_id, "seq": seq, "ts": 1.0,
        "model": {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256},
        "frame_size": [width, height], "classes": ["a", "b", "c"],
        "instances": [{"class_id": k % 3, "score": 0.9, "bbox": [0.0, 0.0, 1.0, 1.0], "counts": c}
                      for k, c in enumerate(counts)]}).encode()
