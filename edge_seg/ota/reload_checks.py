"""What the hot reloader measures and judges: agreement of two class maps, per-frame health, the probation verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLLAPSE_FRACTION = 0.995  # one class covering this much of a frame: collapsed


@dataclass(frozen=True)
class ReloadPolicy:
    """Bounds of the shadow phase and the probation (from the ``ota`` config section)."""

    watch_interval_s: float = 2.0
    shadow_frames: int = 10
    shadow_timeout_s: float = 30.0
    min_agreement: float = 0.0
    max_latency_factor: float = 3.0
    latency_slack_ms: float = 2.0
    probation_frames: int = 30
    probation_s: float = 60.0
    max_confidence_drop: float = 0.35

    @classmethod
    def from_config(cls, ota) -> "ReloadPolicy":
        return cls(watch_interval_s=ota.watch_interval_s, shadow_frames=ota.shadow_frames,
                   min_agreement=ota.min_agreement, max_latency_factor=ota.max_latency_factor,
                   probation_frames=ota.probation_frames, probation_s=ota.probation_s,
                   max_confidence_drop=ota.max_confidence_drop)


@dataclass(frozen=True)
class FrameCheck:
    """What probation looks at in one result (computed on the sink thread, cheap)."""

    seq: int
    model: object
    infer_ms: float
    confidence: float
    top_fraction: float
    finite: bool
    labels_ok: bool


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU between two class maps (``b`` resized to ``a``), over the classes present in either."""
    if a.shape != b.shape:
        import cv2

        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
    n = int(max(a.max(), b.max())) + 1
    joint = np.bincount(a.astype(np.int64).ravel() * n + b.astype(np.int64).ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(joint).astype(np.float64)
    union = joint.sum(0) + joint.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 1.0


def frame_check(result) -> FrameCheck:
    seg = result.segmentation
    finite = bool(np.isfinite(seg.confidence_map).all())
    labels_ok = seg.label_map.size > 0 and int(seg.label_map.max()) < len(seg.classes)
    fractions = seg.area_fractions.values() if labels_ok else [1.0]
    confidence = float(np.nanmean(seg.confidence_map)) if finite else float("nan")
    return FrameCheck(result.frame.seq, seg.model, float(result.timings.get("infer", 0.0)), confidence,
                      float(max(fractions)), finite, labels_ok)


def judge(frames: list[FrameCheck], baseline: list[FrameCheck], p: ReloadPolicy) -> str | None:
    """None when the probation frames look healthy next to the old model's ``baseline``; else why not."""
    new_ms = float(np.median([f.infer_ms for f in frames]))
    if len(baseline) >= 3:
        old_ms = float(np.median([f.infer_ms for f in baseline]))
        if new_ms > p.max_latency_factor * old_ms + p.latency_slack_ms:
            return f"latency {new_ms:.1f} ms per frame vs {old_ms:.1f} ms before (limit {p.max_latency_factor:g}x)"
        old_conf = float(np.mean([f.confidence for f in baseline]))
        new_conf = float(np.mean([f.confidence for f in frames]))
        if new_conf < old_conf - p.max_confidence_drop:
            return (f"uncertainty rose: mean confidence {new_conf:.2f} vs {old_conf:.2f} before "
                    f"(limit -{p.max_confidence_drop:g})")
    collapsed = sum(f.top_fraction >= COLLAPSE_FRACTION for f in frames) / len(frames)
    before = (sum(f.top_fraction >= COLLAPSE_FRACTION for f in baseline) / len(baseline)) if baseline else 0.0
    if collapsed >= 0.9 and before < 0.5:
        return f"class areas collapsed: one class covers >= {COLLAPSE_FRACTION:.1%} of {collapsed:.0%} of frames"
    return None

__all__ = ["COLLAPSE_FRACTION", "FrameCheck", "ReloadPolicy", "agreement", "frame_check", "judge"]
