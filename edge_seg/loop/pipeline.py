"""The on-device loop: capture thread → latest-frame slot → inference → sink thread.

- The capture thread reads the source, preprocesses the frame into the model's input tensor (so
  the inference thread does nothing but invoke) and overwrites one slot; a frame that was never
  taken is dropped and counted (inference always works on the newest frame, Coral examples-camera
  style). A ``lossless`` source (an unpaced file: there is no "newest" frame in real time) makes
  the capture thread wait for the slot instead, so every frame is segmented and none is decoded
  for nothing.
- The inference loop (the thread that calls ``run``) owns the backend: invoke, one frame in
  flight. ``every_n`` skips frames, ``roi`` crops them, tiling splits big frames (tiles are
  prepared on the inference thread).
- The sink thread decodes the raw output, redacts the chosen classes (``redactor``: no sink sees their
  pixels) and runs the sinks (overlay → preview / video / JSONL / crops / publish). Its queue is
  bounded; when it is full the oldest result is dropped and counted, so a slow sink never blocks
  inference (a ``lossless`` source waits instead).
- ``stop()`` (SIGTERM/SIGINT via ``install_signal_handlers``) drains in-flight work and ends with
  a stats line.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from edge_seg.errors import InputError
from edge_seg.loop.stats import LoopStats, StageClock
from edge_seg.segmentation import Segmentation
from edge_seg.segmenter import Segmenter
from edge_seg.sources.base import Frame, Source, SourceEnded
from edge_seg.view.redact import Redactor

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """What the sinks get: the frame, its segmentation (of the ROI if one is set) and timings."""

    frame: Frame
    segmentation: Segmentation
    roi: tuple[int, int, int, int] | None
    timings: dict[str, float]
    overlay: np.ndarray | None = None  # filled by the overlay stage when one runs
    extras: dict = field(default_factory=dict)  # e.g. "crops" from the uncertainty stage
    unredacted: np.ndarray | None = field(default=None, repr=False)  # the frame before redaction, if any was done

    @property
    def image(self) -> np.ndarray:
        """The part of the frame that was segmented (the ROI, or the whole frame); redacted when the loop redacts."""
        return _region(self.frame.image, self.roi)

    @property
    def raw_image(self) -> np.ndarray:
        """``image`` before redaction, for on-device model checks only (hot-reload shadow): never send or show it."""
        return _region(self.frame.image if self.unredacted is None else self.unredacted, self.roi)


def _region(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    if roi is None:
        return image
    x, y, w, h = roi
    return image[y:y + h, x:x + w]


class LatestSlot:
    """One frame slot: ``put`` overwrites (returns True when an untaken frame was dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def put(self, frame) -> bool:
        with self._cond:
            dropped = self._frame is not None
            self._frame = frame
            self._cond.notify_all()
            return dropped

    def wait_empty(self, timeout: float) -> bool:
        """Wait until the slot's frame was taken (or the slot closed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._frame is None or self._closed, timeout)

    def take(self, timeout: float):
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


Stage = Callable[[FrameResult], None]


class Pipeline:
    """Runs capture, inference and sinks until the source ends, ``max_frames`` or ``stop()``."""

    def __init__(self, source: Source, segmenter: Segmenter, stages: list[Stage] | None = None,
                 every_n: int = 1, roi: tuple[int, int, int, int] | None = None, max_frames: int | None = None,
                 tiler=None, sink_queue: int = 2, stats: LoopStats | None = None,
                 other_cpus: set[int] | None = None, after_frame: Callable[[], None] | None = None,
                 redactor: Redactor | None = None):
        self.source = source
        self.segmenter = segmenter
        self.stages = list(stages or [])
        self.every_n = every_n
        self.roi = roi
        self.max_frames = max_frames
        self.tiler = tiler
        self.stats = stats or LoopStats()
        self.other_cpus = other_cpus  # where the capture and sink threads run (None: anywhere); see bench
        self.after_frame = after_frame  # called on the inference thread after each segmented frame (bench)
        self.redactor = redactor  # hides the chosen classes in every frame before the first stage sees it
        self._slot = LatestSlot()
        self._queue: queue.Queue = queue.Queue(maxsize=sink_queue)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self._roi_checked: tuple | None = None  # the frame shape the ROI was last found to fit
        self._redact_error: str | None = None  # the last redaction failure logged
        self._swap: tuple | None = None  # (segmenter, applied event) waiting for the next frame boundary
        self._swap_lock = threading.Lock()
        self._running = False
        # one counter per loop thread, bumped every time it goes round (a frame or a timed-out wait): a thread
        # whose counter stands still is wedged; a source that delivers nothing is not (see ``liveness``)
        self.beats = {"capture": 0, "infer": 0, "sink": 0}
        # called with an exception raised by the model (infer, decode); True: handled (e.g. by a rollback)
        self.on_model_error: Callable[[BaseException], bool] | None = None

    # --- threads -----------------------------------------------------------------------
    def _pin(self) -> None:
        if self.other_cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, self.other_cpus)  # Linux: the calling thread only

    def _capture(self) -> None:
        self._pin()
        try:
            while not self._stop.is_set():
                w0, c0 = time.perf_counter(), time.thread_time()
                frame = self.source.read(0.2)
                self.beats["capture"] += 1
                if frame is None:
                    continue
                self.stats.sample("capture", (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3)
                if frame.decode_ms is not None:
                    self.stats.sample("decode", frame.decode_ms, frame.decode_ms)
                self.stats.captured += 1
                item = (frame, self._prepare(frame))
                if getattr(self.source, "lossless", False):
                    while not self._slot.wait_empty(0.1):
                        self.beats["capture"] += 1
                        if self._stop.is_set():
                            return
                if self._slot.put(item):
                    self.stats.dropped += 1
        except SourceEnded:
            log.info("source ended: %s", self.source.uri)
        except Exception as err:  # noqa: BLE001 - reported and ends the loop
            self.error = err
            log.error("capture failed: %s", err)
        finally:
            self._slot.close()

    def _sink(self) -> None:
        self._pin()
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                self.beats["sink"] += 1
                continue
            self.beats["sink"] += 1
            if item is None:
                return
            frame, raw, transform, clock, segmenter, tiler = item  # the model that produced ``raw`` decodes it
            try:
                with clock.stage("postprocess"):
                    if tiler is not None:
                        segmentation = tiler.decode(raw, transform, clock.wall, frame=frame.image)
                    else:
                        segmentation = segmenter.decode(raw, transform, clock.wall, frame=frame.image)
            except Exception as err:  # noqa: BLE001 - a bad model's output must not end the sink thread
                self.stats.sink_errors += 1
                log.error("decoding frame %d failed: %s", frame.seq, err)
                if self.on_model_error is not None:
                    self.on_model_error(err)
                continue
            result = self._result(frame, segmentation, clock)
            if result is None:
                continue
            for stage in self.stages:
                name = getattr(stage, "name", type(stage).__name__)
                with clock.stage(name):
                    try:
                        stage(result)
                    except Exception as err:  # noqa: BLE001 - a broken sink must not stop the loop
                        self.stats.sink_errors += 1
                        log.error("sink %s failed: %s", name, err)
            self.stats.record(clock.wall, frame.ts, clock.cpu)

    def _result(self, frame: Frame, segmentation: Segmentation, clock: StageClock) -> FrameResult | None:
        """What the stages get: the frame with the chosen classes hidden (None if that fails: sent nowhere)."""
        image = frame.image
        if self.redactor is not None:
            try:
                with clock.stage("redact"):
                    image = self.redactor.redact(frame.image, segmentation, self.roi)
            except Exception as err:  # noqa: BLE001 - e.g. a swapped-in model without a redacted class
                self.stats.sink_errors += 1
                if str(err) != self._redact_error:  # once per failure, not per frame
                    log.error("redacting frame %d failed, frames are dropped until it works: %s", frame.seq, err)
                self._redact_error = str(err)
                return None
            self._redact_error = None
        if image is frame.image:  # no redactor, or nothing to hide in this frame
            return FrameResult(frame, segmentation, self.roi, clock.wall)
        return FrameResult(replace(frame, image=image, lores=None), segmentation, self.roi, clock.wall,
                           unredacted=frame.image)

    def _handoff(self, item) -> None:
        if getattr(self.source, "lossless", False):  # every frame of a file is kept: wait for the sinks
            while not self._stop.is_set():
                self.beats["infer"] += 1
                try:
                    self._queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            try:
                self._queue.get_nowait()  # drop the oldest result, keep the newest
                self.stats.sink_dropped += 1
            except queue.Empty:
                pass
            self._queue.put_nowait(item)

    def _check_roi(self, frame: Frame) -> None:
        """Raise ``InputError`` (recorded in ``self.error``) when the ROI does not lie inside the frame; checked
        on the first frame and whenever the frame size changes."""
        shape = frame.image.shape[:2]
        if self.roi is None or shape == self._roi_checked:
            return
        x, y, w, h = self.roi
        height, width = shape
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
            self.error = InputError(f"pipeline.roi [x, y, width, height] = {list(self.roi)} does not lie inside the "
                                    f"{width}x{height} frame: make it fit (x + width <= "
                                    f"{width}, y + height <= {height})")
            raise self.error
        self._roi_checked = shape

    def _lores(self, frame: Frame):
        """The camera's model-size copy of the frame (picamera2 lores), unless a region of interest is cut."""
        return frame.lores if self.roi is None else None

    def _prepare(self, frame: Frame) -> tuple | None:
        """The model input of ``frame`` (on the capture thread): (segmenter, batch, transform, clock)."""
        segmenter = self.segmenter
        if self.tiler is not None:
            return None
        clock = StageClock.for_frame(frame.seq)
        try:
            with clock.stage("preprocess"):
                batch, transform = segmenter.prepare(_region(frame.image, self.roi), self._lores(frame))
        except Exception:  # noqa: BLE001 - the inference thread prepares again and reports the error
            return None
        return segmenter, batch, transform, clock

    def _infer_one(self, frame: Frame, prepared: tuple | None = None) -> None:
        clock = StageClock.for_frame(frame.seq, {"capture_age": (time.time() - frame.ts) * 1e3})
        if self.tiler is not None:
            with clock.stage("tiles"):
                raw, transform, invoke_ms = self.tiler.run(_region(frame.image, self.roi))
            clock.wall["infer"] = invoke_ms
        else:
            if prepared is not None and prepared[0] is self.segmenter:  # not prepared for a model since swapped
                _, batch, transform, pre = prepared
                clock.wall.update(pre.wall)
                clock.cpu.update(pre.cpu)
            else:
                with clock.stage("preprocess"):
                    batch, transform = self.segmenter.prepare(_region(frame.image, self.roi), self._lores(frame))
            with clock.stage("infer"):
                raw = self.segmenter.invoke(batch)
        self._handoff((frame, raw, transform, clock, self.segmenter, self.tiler))

    # --- control -----------------------------------------------------------------------
    def run(self) -> LoopStats:
        """Run until the source ends, ``max_frames`` are segmented, or ``stop()``; returns the stats."""
        self.stats.start()
        self._threads = [threading.Thread(target=self._capture, name="edge-seg-capture", daemon=True),
                         threading.Thread(target=self._sink, name="edge-seg-sink", daemon=True)]
        for thread in self._threads:
            thread.start()
        seen = 0
        with self._swap_lock:
            self._running = True
        try:
            while not self._stop.is_set():
                if self._swap is not None:
                    self._apply_swap()
                item = self._slot.take(0.1)
                self.beats["infer"] += 1
                if item is None:
                    if self._slot.closed:
                        break
                    continue
                frame, prepared = item
                self._check_roi(frame)
                seen += 1
                if (seen - 1) % self.every_n:
                    self.stats.skipped += 1
                    continue
                try:
                    self._infer_one(frame, prepared)
                except Exception as err:
                    if self.on_model_error is None or not self.on_model_error(err):
                        raise
                    log.error("inference on frame %d failed: %s", frame.seq, err)
                    continue
                self.stats.segmented += 1
                if self.after_frame is not None:
                    self.after_frame()
                if self.max_frames is not None and self.stats.segmented >= self.max_frames:
                    break
        finally:
            with self._swap_lock:
                self._running = False
            self._apply_swap()
            self._shutdown()
        return self.stats

    def liveness(self) -> dict[str, int]:
        """Each loop thread's counter (capture, infer, sink): all of them move while the loop is deciding,
        reconnecting a lost camera included; one that stands still is stuck (in a driver, a model, a sink)."""
        return dict(self.beats)

    def swap_segmenter(self, segmenter: Segmenter) -> threading.Event:
        """Run ``segmenter`` from the next frame on; the returned event is set once it is in use.

        The inference thread applies the swap between two frames (no frame is lost; results still in
        flight are decoded by the model that produced them); when the loop is not running it applies at
        once. The caller keeps the old segmenter and closes it when it likes.
        """
        applied = threading.Event()
        with self._swap_lock:
            self._swap = (segmenter, applied)
            running = self._running
        if not running:
            self._apply_swap()
        return applied

    def _apply_swap(self) -> None:
        with self._swap_lock:
            pending, self._swap = self._swap, None
        if pending is None:
            return
        segmenter, applied = pending
        self.segmenter = segmenter
        if self.tiler is not None:
            tiler = self.tiler
            self.tiler = type(tiler)(segmenter, overlap=tiler.overlap, zoom=tiler.zoom, min_scale=tiler.min_scale)
        applied.set()

    def stop(self) -> None:
        """Ask the loop to finish (safe from signal handlers and other threads)."""
        self._stop.set()

    def _shutdown(self) -> None:
        self._stop.set()
        self._queue.put(None)  # after the in-flight results: the sink thread drains, then exits
        for thread in self._threads:
            thread.join(timeout=10)
        self.source.close()
        for stage in self.stages:
            close = getattr(stage, "close", None)
            if close is not None:
                close()
        self.stats.finish()
