"""``edge-seg bench``: time each stage of one frame's path and print ratios measured in one run.

Stages: preprocess (resize, colour, normalise/quantise), invoke (the backend alone),
postprocess (decode + crop at model resolution), to_frame (class map + confidence resized to
the frame), overlay. "outside invoke" is everything but invoke; the target for a 1280x720
frame and the bundled model is <= 3 ms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge_seg import scenes
from edge_seg.overlay import Overlay
from edge_seg.segmenter import Segmenter

STAGES = ("preprocess", "invoke", "postprocess", "to_frame", "overlay")


@dataclass
class BenchResult:
    frames: int
    frame_size: tuple[int, int]
    ms: dict[str, np.ndarray]  # per stage, one value per frame

    def percentile(self, stage: str, q: float) -> float:
        return float(np.percentile(self.ms[stage], q))

    @property
    def outside_invoke_ms(self) -> np.ndarray:
        return sum(self.ms[s] for s in STAGES if s != "invoke")

    def lines(self, target_ms: float = 3.0) -> list[str]:
        w, h = self.frame_size
        out = [f"{self.frames} frames at {w}x{h}", f"{'stage':<14}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"]
        for stage in STAGES:
            out.append(f"{stage:<14}{self.percentile(stage, 50):9.3f}{self.percentile(stage, 90):9.3f}"
                       f"{self.percentile(stage, 99):9.3f}")
        outside = float(np.median(self.outside_invoke_ms))
        invoke = self.percentile("invoke", 50)
        total = float(np.median(self.outside_invoke_ms + self.ms["invoke"]))
        verdict = "OK" if outside <= target_ms else "OVER"
        out += [f"outside invoke: {outside:.3f} ms (target <= {target_ms:g} ms: {verdict}); "
                f"ratio outside/invoke = {outside / invoke:.2f}",
                f"throughput: loop {1e3 / total:.1f} FPS vs bare invoke {1e3 / invoke:.1f} FPS "
                f"(ratio {invoke / total:.2f})"]
        return out


def run_bench(segmenter: Segmenter, frames: int = 200, frame_size: tuple[int, int] = (1280, 720),
              warmup: int = 10) -> BenchResult:
    """Segment and overlay ``frames`` synthetic frames; every stage timed for every frame."""
    images = [scenes.render_scene(seed, frame_size).image for seed in range(8)]
    overlay = Overlay(alpha=0.5)
    ms = {stage: np.zeros(frames) for stage in STAGES}
    for i in range(-warmup, frames):
        frame = images[i % len(images)]
        t0 = time.perf_counter()
        result = segmenter.segment(frame)
        t1 = time.perf_counter()
        _ = result.class_map, result.confidence
        t2 = time.perf_counter()
        overlay.annotate(frame, result)
        t3 = time.perf_counter()
        if i < 0:
            continue
        timings = result.timings
        ms["preprocess"][i] = timings["preprocess"]
        ms["invoke"][i] = timings["infer"]
        # segment()'s own bookkeeping (building the value) counts as postprocess
        ms["postprocess"][i] = (t1 - t0) * 1e3 - timings["preprocess"] - timings["infer"]
        ms["to_frame"][i] = (t2 - t1) * 1e3
        ms["overlay"][i] = (t3 - t2) * 1e3
    return BenchResult(frames=frames, frame_size=frame_size, ms=ms)
