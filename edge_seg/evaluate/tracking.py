"""Tracking metrics against ground-truth ids: CLEAR-MOT (MOTA) and IDF1 with ``motmetrics``.

Ground truth is a synthetic clip with per-object ids over time
(``edge_seg.demo.instance_clips.render_instance_clip``: crossing and touching objects). A
predicted instance matches a ground-truth object when their masks overlap with IoU >= 0.5 (as in
MOTS, Voigtlaender et al. 2019); only instances with a ``track_id`` count as hypotheses. HOTA
(with DetA, AssA, LocA) comes from ``edge_seg.evaluate.hota`` on the mask IoUs, a small
implementation of the paper: ``trackeval`` 1.3.0 runs on NumPy 2 but requires ``opencv-python`` (a
second ``cv2`` over ``opencv-python-headless``), ``matplotlib`` and ``tabulate``, so it is not
added even to the ``dev`` extras.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edge_seg.evaluate.hota import hota
from edge_seg.segmentation import Instance

MATCH_IOU = 0.5
METRICS = ("idf1", "mota", "motp", "num_switches", "num_fragmentations", "num_false_positives", "num_misses",
           "num_objects", "num_unique_objects", "precision", "recall")


def mask_ious(gt_masks: list[np.ndarray], instances: list[Instance], frame_size: tuple[int, int]) -> np.ndarray:
    """Mask IoU (gt, hypotheses) of ground-truth masks and instances, at frame size."""
    out = np.zeros((len(gt_masks), len(instances)))
    gt_areas = [int(np.count_nonzero(gt)) for gt in gt_masks]
    for j, inst in enumerate(instances):
        pred = inst.frame_mask(frame_size)
        area = int(np.count_nonzero(pred))
        for i, gt in enumerate(gt_masks):
            inter = int(np.count_nonzero(gt & pred))
            union = gt_areas[i] + area - inter
            out[i, j] = inter / union if union else 0.0
    return out


def mask_distances(gt_masks: list[np.ndarray], instances: list[Instance], frame_size: tuple[int, int]) -> np.ndarray:
    """motmetrics distances (gt, hypotheses): 1 - mask IoU, NaN where the IoU is below ``MATCH_IOU``."""
    return _distances(mask_ious(gt_masks, instances, frame_size))


def _distances(ious: np.ndarray) -> np.ndarray:
    return np.where(ious >= MATCH_IOU, 1.0 - ious, np.nan)


def evaluate_tracking(frames: Iterable, segment: Callable[[np.ndarray], tuple[Instance, ...]],
                      tracker, progress: bool = False) -> dict:
    """Run ``segment`` (image -> instances) and ``tracker.update`` over ``frames`` (``Scene`` values with
    ``instances`` ids) and score the track ids; returns the metrics plus tracking ms per frame."""
    import motmetrics as mm
    from tqdm import tqdm

    acc = mm.MOTAccumulator(auto_id=True)
    track_ms, sequence = [], []
    for scene in tqdm(frames, disable=not progress, unit="frame", desc="tracking"):
        height, width = scene.mask.shape
        instances = segment(scene.image)
        start = time.perf_counter()
        tracked = tracker.update(instances)
        track_ms.append((time.perf_counter() - start) * 1e3)
        hyps = [i for i in tracked if i.track_id is not None]
        ids = [int(k) for k in np.unique(scene.instances) if k]
        gt_masks = [scene.instances == k for k in ids]
        ious = mask_ious(gt_masks, hyps, (width, height))
        acc.update(ids, [i.track_id for i in hyps], _distances(ious))
        sequence.append((ids, [i.track_id for i in hyps], ious))
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS), name="clip")
    out = {k: float(summary[k].iloc[0]) for k in METRICS}
    out.update(hota(sequence))
    for k in ("num_switches", "num_fragmentations", "num_false_positives", "num_misses", "num_objects",
              "num_unique_objects"):
        out[k] = int(out[k])
    out["switches_per_100"] = 100.0 * out["num_switches"] / max(out["num_objects"], 1)
    out["frames"] = len(track_ms)
    out["track_ms_p50"] = float(np.percentile(track_ms, 50)) if track_ms else 0.0
    return out


def run_tracking_eval(segmenter, out_dir: str | Path, seed: int = 1, frames: int = 150,
                      size: tuple[int, int] = (320, 240), progress: bool = False,
                      tracker_options: dict | None = None) -> tuple[dict, Path]:
    """Score a default ``Tracker`` (or one with ``tracker_options``) on ``render_instance_clip(seed, frames)``
    segmented by ``segmenter``; writes ``tracking.json`` into ``out_dir`` and returns (metrics, its path)."""
    from edge_seg.demo.instance_clips import render_instance_clip
    from edge_seg.errors import InputError
    from edge_seg.postprocess.tracking import Tracker

    if frames < 2:
        raise InputError(f"--frames must be at least 2, got {frames}")
    result = evaluate_tracking(render_instance_clip(seed, frames, size), lambda im: segmenter.segment(im).instances,
                               Tracker(**(tracker_options or {})), progress=progress)
    result.update(seed=seed, size=list(size), model=f"{segmenter.manifest.name} {segmenter.manifest.version}",
                  match="mask IoU >= 0.5 (HOTA: every mask IoU, alpha 0.05..0.95)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tracking.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result, path


__all__ = ["MATCH_IOU", "evaluate_tracking", "mask_distances", "mask_ious", "run_tracking_eval"]
