"""``edge-seg demo``: segment a synthetic moving clip with the bundled model, write an overlay video.

Needs no network, camera or broker. The clip comes from ``edge_seg.demo.scenes`` with ground truth,
so the summary reports mIoU as well as time per stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_seg.demo.clips import render_clip
from edge_seg.errors import InputError
from edge_seg.evaluate.semantic import confusion_matrix, metrics_from_confusion
from edge_seg.segmenter import Segmenter
from edge_seg.view.overlay import Overlay


@dataclass
class DemoSummary:
    video: Path
    frames: int
    ms_per_stage: dict[str, float]
    miou: float
    per_class_iou: dict[str, float | None]

    def lines(self) -> list[str]:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in self.ms_per_stage.items())
        ious = ", ".join(f"{k} {v:.3f}" for k, v in self.per_class_iou.items() if v is not None)
        return [f"wrote {self.video} ({self.frames} frames)",
                f"ms per frame (median): {stages}",
                f"mIoU vs generator ground truth: {self.miou:.3f} ({ious})"]


def run_demo(segmenter: Segmenter, out_dir: Path, frames: int = 150, size: tuple[int, int] = (640, 360),
             seed: int = 7, fps: float = 15.0, progress: bool = True, link=None) -> DemoSummary:
    """Render ``frames`` clip frames, segment and overlay each, write ``demo_overlay.mp4``.

    ``link`` (a ``demo.mqtt.DemoLink``) also publishes every frame's mask over MQTT.
    """
    if frames < 1:
        raise InputError("--frames must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    video_path = out_dir / "demo_overlay.mp4"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise InputError(f"cannot write a video to {video_path}")
    overlay = Overlay(alpha=0.5, contours=True, legend=True)
    classes = list(segmenter.manifest.classes)
    cm = np.zeros((len(classes), len(classes)), np.int64)
    timings: dict[str, list[float]] = {}
    try:
        clip = render_clip(seed, frames, size)
        for seq, scene in enumerate(tqdm(clip, total=frames, desc="demo", unit="frame", disable=not progress)):
            result = segmenter.segment(scene.image)
            if link is not None:
                link.publish(seq, scene.image, result)
            t0 = time.perf_counter()
            drawn = overlay.annotate(scene.image, result)
            timings_ms = dict(result.timings, overlay=(time.perf_counter() - t0) * 1e3)
            for stage, ms in timings_ms.items():
                timings.setdefault(stage, []).append(ms)
            cm += confusion_matrix(result.class_map, scene.mask, len(classes))
            writer.write(drawn)
    finally:
        writer.release()
    metrics = metrics_from_confusion(cm, classes)
    return DemoSummary(video=video_path, frames=frames,
                       ms_per_stage={k: float(np.median(v)) for k, v in timings.items()},
                       miou=float(metrics["mean_iou"] or 0.0),
                       per_class_iou={k: v["iou"] for k, v in metrics["per_class"].items()})
