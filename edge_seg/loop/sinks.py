"""Sink stages of the loop: each is a callable ``stage(result)`` run on the sink thread, in order.

Overlay first (it fills ``result.overlay``), then consumers: preview, video file, JSONL, metrics,
uncertain crops, and the publish sink that the MQTT publisher implements (``PublishSink``).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_seg.errors import InputError
from edge_seg.loop.result import FrameResult
from edge_seg.view.overlay import Overlay
from edge_seg.view.redact import Redactor


class PublishSink(Protocol):
    """What the loop hands to a publisher (MQTT): one call per segmented frame, never blocking."""

    def publish(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


def _paste(frame: np.ndarray, region: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    if roi is None:
        return region
    x, y, w, h = roi
    out = frame.copy()
    out[y:y + h, x:x + w] = region
    cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1)
    return out


class OverlayStage:
    """Draws the class overlay into ``result.overlay`` (and a ``redactor``'s redaction first, if given).

    The runner gives none: its pipeline redacts every frame before the first stage (``Pipeline.redactor``),
    so the overlay, like every other stage, draws on redacted pixels already.
    """

    name = "overlay"

    def __init__(self, overlay: Overlay | None, redactor: Redactor | None = None, zones=None):
        self.overlay = overlay
        self.redactor = redactor
        self.zones = zones  # a ZoneLayer (edge_seg.view.zone_layer): zone outlines over the whole frame

    def __call__(self, result: FrameResult) -> None:
        result.overlay = self.draw(result)

    def draw(self, result: FrameResult) -> np.ndarray:
        """The frame with redaction and overlay drawn (a new image)."""
        drawn = result.image
        if self.redactor is not None:
            drawn = self.redactor.annotate(drawn, result.segmentation)
        if self.overlay is not None:
            drawn = self.overlay.annotate(drawn, result.segmentation)
        out = _paste(result.frame.image, drawn, result.roi)
        if self.zones is not None:
            out = self.zones.draw(out if out is not result.frame.image else out.copy())
        return out


def writable_file(path: str | Path, what: str) -> Path:
    """``path``, once it is known that a file can be written there; ``what`` names the option in the message.

    Creates the missing parent directories. Probes by opening the file for appending (``os.access`` says yes
    to root even where nothing can be created, e.g. under /proc); a file the probe created is removed again.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what}: {path} is a directory: give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{what}: cannot create directory {path.parent}: {err.strerror or err}") from None
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise InputError(f"{what}: cannot write {path}: {err.strerror or err}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


class VideoSink:
    """Writes the overlay (or the frame) of every result to a video file."""

    name = "video"

    def __init__(self, path: Path, fps: float = 15.0):
        self.path = writable_file(path, "video output (output.video, --out)")
        self.fps = fps
        self.frames = 0
        existed = self.path.exists()
        self._open((64, 64)).release()  # fail now, not at the first frame, if no encoder can write there
        if not existed:
            self.path.unlink(missing_ok=True)  # the probe's stub; the first frame opens the real file
        self._writer: cv2.VideoWriter | None = None

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter:
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
        writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, size)
        if not writer.isOpened():
            raise InputError(f"cannot write a video to {self.path}: OpenCV has no encoder for "
                             f"'{self.path.suffix}' files there (use .mp4 or .avi)")
        return writer

    def __call__(self, result: FrameResult) -> None:
        image = result.overlay if result.overlay is not None else result.frame.image
        if self._writer is None:
            self._writer = self._open((image.shape[1], image.shape[0]))
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class JsonlSink:
    """Appends one JSON summary per frame (seq, capture ts, areas, confidence, timings; ``camera`` when named)."""

    name = "jsonl"

    def __init__(self, path: Path, camera: str | None = None):
        self.path = writable_file(path, "JSONL output (output.jsonl, --jsonl)")
        self.camera = camera
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def __call__(self, result: FrameResult) -> None:
        record = {"seq": result.frame.seq, "ts": result.frame.ts, **result.segmentation.summary()}
        if self.camera is not None:
            record["camera"] = self.camera
        record["timings_ms"] = {k: round(v, 3) for k, v in result.timings.items()}
        crops = result.extras.get("crops")
        if crops:
            record["crops"] = [{"bbox": list(c.bbox), "score": round(c.score, 4)} for c in crops]
            for item, crop in zip(record["crops"], crops):
                if getattr(crop, "reasons", None):  # instance crops say why they were sent
                    item["reasons"] = list(crop.reasons)
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


class PreviewSink:
    """Hands the overlay and the loop's stats to the preview server (which encodes lazily).

    The stats dict (percentiles over a window) is rebuilt at most every ``stats_every`` seconds.
    With ``draw`` (e.g. ``OverlayStage.draw``) and no overlay drawn by an earlier stage, the
    server gets a function that draws this result's overlay: it runs only for the frames the
    preview encodes (at most its ``max_fps``, none while no client watches), not for every frame.
    With ``tracking`` (the loop tracks instances), the stats also carry ``tracks``: the track ids and
    class names of the frame the stats were built on, for the page's track list. ``camera``: the camera's
    view of the server (several cameras: one view each, the page shows a grid).
    """

    name = "preview"

    def __init__(self, server, stats_fn, stats_every: float = 0.5, draw=None, tracking: bool = False,
                 camera: str | None = None):
        self.server = server
        self.camera = camera
        self.stats_fn = stats_fn
        self.stats_every = stats_every
        self.draw = draw
        self.tracking = tracking
        self._stats: dict = {}
        self._built = 0.0

    def __call__(self, result: FrameResult) -> None:
        now = time.monotonic()
        if now - self._built >= self.stats_every:
            self._stats, self._built = self.stats_fn(), now
            if self.tracking:
                self._stats = {**self._stats, "tracks": self._tracks(result)}
        if result.overlay is not None:
            image = result.overlay
        elif self.draw is not None:
            image = partial(self.draw, result)
        else:
            image = result.frame.image
        frame = result.frame.image
        self.server.update(image, self._stats, size=(frame.shape[1], frame.shape[0]), camera=self.camera)

    def _tracks(self, result: FrameResult) -> list[dict]:
        seg = result.segmentation
        out = []
        for inst in (seg.instances or ()) if seg is not None else ():
            if inst.track_id is not None:
                name = seg.classes[inst.class_id] if 0 <= inst.class_id < len(seg.classes) else str(inst.class_id)
                out.append({"id": int(inst.track_id), "class": name})
        return sorted(out, key=lambda t: t["id"])

    def close(self) -> None:
        self.server.stop()


class CropStage:
    """Extracts uncertain crops (within their budget) into ``result.extras['crops']``.

    The extractor picks by the result: uncertain regions of a semantic model, uncertain instances
    (low score, overlapping, ambiguous class) of an instance model.
    """

    name = "crops"

    def __init__(self, extractor):
        self.extractor = extractor

    def __call__(self, result: FrameResult) -> None:
        result.extras["crops"] = self.extractor.extract(result.image, result.segmentation, result.frame.ts,
                                                        seq=result.frame.seq)


class MetricsStage:
    """Feeds the Prometheus metrics: counters, class areas, uncertainty, drift on each frame.

    Latencies come from the loop's ``stats`` instead (this stage listens to it): every timing the
    loop records (capture, decode, every sink stage, including those after this one) and each
    frame's end to end, once its last stage is done.
    """

    name = "metrics"

    def __init__(self, metrics, stats):
        self.metrics = metrics
        self.stats = stats
        self._dropped = self._sink_dropped = self._skipped = self._reconnects = 0
        stats.listeners.append(metrics.observe_stages)

    def __call__(self, result: FrameResult) -> None:
        m, stats = self.metrics, self.stats
        m.frame_processed()
        # the loop's counters only grow (on other threads): pass on what changed since the last frame,
        # reading each once so an increment between the difference and the update is not lost
        dropped, sink_dropped, skipped, reconnects = stats.dropped, stats.sink_dropped, stats.skipped, stats.reconnects
        m.frames_dropped(dropped - self._dropped, where="capture")
        m.frames_dropped(sink_dropped - self._sink_dropped, where="sink")
        m.frame_skipped(skipped - self._skipped)
        m.source_reconnect(reconnects - self._reconnects)
        self._dropped, self._sink_dropped, self._skipped, self._reconnects = dropped, sink_dropped, skipped, reconnects
        m.set_fps(self.stats.fps)
        seg = result.segmentation
        m.observe_segmentation(seg.area_fractions, 1.0 - seg.mean_confidence)
