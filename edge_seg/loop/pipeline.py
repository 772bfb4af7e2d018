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
- Several cameras (``cameras``): one capture thread and slot each, one model, one inference and
  one sink thread for all; the inference thread takes the newest frame of each ready camera in
  turn (``edge_seg.loop.scheduler.RoundRobin``), and each result goes through its camera's own
  stages (``Camera.stages``: tracking, zones, overlay, metrics, files) and then the loop's
  (``stages``: e.g. the one publisher). A camera whose capture ends or fails leaves the others running.
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
from dataclasses import replace

from edge_seg.errors import InputError
from edge_seg.loop.batching import invoke_batch
from edge_seg.loop.camera import Camera, add_up, close_stages, states
from edge_seg.loop.result import FrameResult, region
from edge_seg.loop.scheduler import LatestSlot, RoundRobin
from edge_seg.loop.stats import LoopStats, StageClock
from edge_seg.segmentation import Segmentation
from edge_seg.segmenter import Segmenter
from edge_seg.sources.base import Frame, Source, SourceEnded
from edge_seg.view.redact import Redactor

log = logging.getLogger(__name__)
__all__ = ["Camera", "FrameResult", "LatestSlot", "Pipeline", "Stage"]

Stage = Callable[[FrameResult], None]


class Pipeline:
    """Runs capture, inference and sinks until every source ends, ``max_frames`` or ``stop()``.

    One camera: ``Pipeline(source, segmenter, stages, every_n=, roi=)``. Several:
    ``Pipeline(None, segmenter, stages, cameras=[Camera(...), ...])``, each camera with its own name.
    """

    def __init__(self, source: Source | None, segmenter: Segmenter, stages: list[Stage] | None = None,
                 every_n: int = 1, roi: tuple[int, int, int, int] | None = None, max_frames: int | None = None,
                 tiler=None, sink_queue: int = 2, stats: LoopStats | None = None,
                 other_cpus: set[int] | None = None, after_frame: Callable[[], None] | None = None,
                 redactor: Redactor | None = None, cameras: list[Camera] | None = None, batch: int = 1):
        self.segmenter = segmenter
        self.stages = list(stages or [])
        self.max_frames = max_frames
        self.tiler = tiler
        self.stats = stats or LoopStats()
        if cameras is None:
            cameras = [Camera(source, every_n=every_n, roi=roi, stats=self.stats)]
        self.cameras = list(cameras)
        self.multi = len(self.cameras) > 1
        self.other_cpus = other_cpus  # where the capture and sink threads run (None: anywhere); see bench
        self.after_frame = after_frame  # called on the inference thread after each segmented frame (bench)
        self.redactor = redactor  # hides the chosen classes in every frame before the first stage sees it
        self.scheduler = RoundRobin(len(self.cameras))
        self._batch_wanted = min(batch, len(self.cameras)) if tiler is None else 1  # one frame per camera at most
        self.batch = segmenter.batch_size(self._batch_wanted) if self._batch_wanted > 1 else 1
        self._queue: queue.Queue = queue.Queue(maxsize=sink_queue * len(self.cameras))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self._redact_error: str | None = None  # the last redaction failure logged
        self._swap: tuple | None = None  # (segmenter, applied event) waiting for the next frame boundary
        self._swap_lock = threading.Lock()
        self._running = False
        # one counter per loop thread, bumped every time it goes round (a frame or a timed-out wait): a thread
        # whose counter stands still is wedged; a source that delivers nothing is not (see ``liveness``)
        self.beats = {"infer": 0, "sink": 0}
        # called with an exception raised by the model (infer, decode); True: handled (e.g. by a rollback)
        self.on_model_error: Callable[[BaseException], bool] | None = None

    @property
    def source(self) -> Source:
        """The (first) camera's source."""
        return self.cameras[0].source

    @source.setter
    def source(self, source: Source) -> None:
        self.cameras[0].source = source

    # --- threads -----------------------------------------------------------------------
    def _pin(self) -> None:
        if self.other_cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, self.other_cpus)  # Linux: the calling thread only

    def _capture(self, index: int) -> None:
        self._pin()
        cam, slot = self.cameras[index], self.scheduler.slots[index]
        stats = cam.stats
        try:
            while not self._stop.is_set():
                w0, c0 = time.perf_counter(), time.thread_time()
                frame = cam.source.read(0.2)
                cam.beats += 1
                if frame is None:
                    continue
                stats.sample("capture", (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3)
                if frame.decode_ms is not None:
                    stats.sample("decode", frame.decode_ms, frame.decode_ms)
                stats.captured += 1
                item = (frame, self._prepare(cam, frame))
                if cam.lossless:
                    while not slot.wait_empty(0.1):
                        cam.beats += 1
                        if self._stop.is_set():
                            return
                if slot.put(item):
                    stats.dropped += 1
        except SourceEnded:
            log.info("source ended: %s", getattr(cam.source, "uri", cam.label))
        except Exception as err:  # noqa: BLE001 - reported; ends this camera (the loop, when it is the only one)
            cam.error = err
            log.error("capture of %s failed: %s", cam.label, err)
        finally:
            slot.close()

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
            cam, frame, raw, transform, clock, segmenter, tiler = item  # the model that produced ``raw`` decodes it
            try:
                with clock.stage("postprocess"):
                    decoder = tiler if tiler is not None else segmenter
                    if cam.name is None:
                        segmentation = decoder.decode(raw, transform, clock.wall, frame=frame.image)
                    else:  # its own smoothing state
                        segmentation = decoder.decode(raw, transform, clock.wall, frame=frame.image, stream=cam.name)
            except Exception as err:  # noqa: BLE001 - a bad model's output must not end the sink thread
                self._count(cam, "sink_errors")
                log.error("decoding frame %d failed: %s", frame.seq, err)
                if self.on_model_error is not None:
                    self.on_model_error(err)
                continue
            result = self._result(cam, frame, segmentation, clock)
            if result is None:
                continue
            for stages in (cam.stages, self.stages) if cam.stages else (self.stages,):
                self._run_stages(cam, stages, result, clock)
            cam.stats.record(clock.wall, frame.ts, clock.cpu)
            if cam.stats is not self.stats:
                self.stats.record(clock.wall, frame.ts)

    def _run_stages(self, cam: Camera, stages: list[Stage], result: FrameResult, clock: StageClock) -> None:
        for stage in stages:
            name = getattr(stage, "name", type(stage).__name__)
            with clock.stage(name):
                try:
                    stage(result)
                except Exception as err:  # noqa: BLE001 - a broken sink must not stop the loop
                    self._count(cam, "sink_errors")
                    log.error("sink %s failed: %s", name, err)

    def _count(self, cam: Camera, counter: str) -> None:
        """Count one of ``counter`` for ``cam`` (and the loop, if the camera has its own stats)."""
        setattr(cam.stats, counter, getattr(cam.stats, counter) + 1)
        if cam.stats is not self.stats:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def _result(self, cam: Camera, frame: Frame, segmentation: Segmentation,
                clock: StageClock) -> FrameResult | None:
        """What the stages get: the frame with the chosen classes hidden (None if that fails: sent nowhere)."""
        image = frame.image
        if self.redactor is not None:
            try:
                with clock.stage("redact"):
                    image = self.redactor.redact(frame.image, segmentation, cam.roi)
            except Exception as err:  # noqa: BLE001 - e.g. a swapped-in model without a redacted class
                self._count(cam, "sink_errors")
                if str(err) != self._redact_error:  # once per failure, not per frame
                    log.error("redacting frame %d failed, frames are dropped until it works: %s", frame.seq, err)
                self._redact_error = str(err)
                return None
            self._redact_error = None
        if image is frame.image:  # no redactor, or nothing to hide in this frame
            return FrameResult(frame, segmentation, cam.roi, clock.wall, camera=cam.name)
        return FrameResult(replace(frame, image=image, lores=None), segmentation, cam.roi, clock.wall,
                           unredacted=frame.image, camera=cam.name)

    def _handoff(self, cam: Camera, item) -> None:
        if cam.lossless:  # every frame of a file is kept: wait for the sinks
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
                dropped = self._queue.get_nowait()  # drop the oldest result, keep the newest
                self._count(dropped[0], "sink_dropped")
            except queue.Empty:
                pass
            self._queue.put_nowait(item)

    def _prepare(self, cam: Camera, frame: Frame) -> tuple | None:
        """The model input of ``frame`` (on the capture thread): (segmenter, batch, transform, clock)."""
        segmenter = self.segmenter
        if self.tiler is not None:
            return None
        clock = StageClock.for_frame(frame.seq)
        try:
            with clock.stage("preprocess"):
                batch, transform = segmenter.prepare(region(frame.image, cam.roi), cam.lores(frame))
        except Exception:  # noqa: BLE001 - the inference thread prepares again and reports the error
            return None
        return segmenter, batch, transform, clock

    def _infer_one(self, cam: Camera, frame: Frame, prepared: tuple | None = None) -> None:
        clock = StageClock.for_frame(frame.seq, {"capture_age": (time.time() - frame.ts) * 1e3})
        if self.tiler is not None:
            with clock.stage("tiles"):
                raw, transform, invoke_ms = self.tiler.run(region(frame.image, cam.roi))
            clock.wall["infer"] = invoke_ms
        else:
            if prepared is not None and prepared[0] is self.segmenter:  # not prepared for a model since swapped
                _, batch, transform, pre = prepared
                clock.wall.update(pre.wall)
                clock.cpu.update(pre.cpu)
            else:
                with clock.stage("preprocess"):
                    batch, transform = self.segmenter.prepare(region(frame.image, cam.roi), cam.lores(frame))
            with clock.stage("infer"):
                raw = self.segmenter.invoke(batch)
        self._handoff(cam, (cam, frame, raw, transform, clock, self.segmenter, self.tiler))

    # --- control -----------------------------------------------------------------------
    def run(self) -> LoopStats:
        """Run until every source ends, ``max_frames`` are segmented, or ``stop()``; returns the stats."""
        self.stats.start()
        for cam in self.cameras:
            if cam.stats is not self.stats:
                cam.stats.start()
        self._threads = [threading.Thread(target=self._capture, args=(i,), daemon=True,
                                          name="edge-seg-capture" + (f"-{cam.name}" if self.multi else ""))
                         for i, cam in enumerate(self.cameras)]
        self._threads.append(threading.Thread(target=self._sink, name="edge-seg-sink", daemon=True))
        for thread in self._threads:
            thread.start()
        with self._swap_lock:
            self._running = True
        try:
            self._infer_loop()
        finally:
            with self._swap_lock:
                self._running = False
            self._apply_swap()
            self._shutdown()
        return self.stats

    def _infer_loop(self) -> None:
        scheduler, stats = self.scheduler, self.stats
        while not self._stop.is_set():
            if self._swap is not None:
                self._apply_swap()
            if self.batch == 1:
                taken = scheduler.take(0.1)
                picks = [taken] if taken is not None else []
            else:
                picks = scheduler.take_many(self.batch, 0.1)
            self.beats["infer"] += 1
            if self.multi:
                add_up(stats, self.cameras)
            if not picks:
                if scheduler.closed:
                    break
                continue
            due = self._due(picks)
            try:
                if self.batch > 1 and due:
                    for cam, frame, raw, transform, clock in invoke_batch(self.segmenter, due):
                        self._handoff(cam, (cam, frame, raw, transform, clock, self.segmenter, None))
                elif due:
                    self._infer_one(*due[0])
            except Exception as err:
                if self.on_model_error is None or not self.on_model_error(err):
                    raise
                log.error("inference on frame %d failed: %s", due[0][1].seq, err)
                continue
            for cam, _frame, _prepared in due:
                self._count(cam, "segmented")
                if self.after_frame is not None:
                    self.after_frame()
            if self.max_frames is not None and stats.segmented >= self.max_frames:
                break

    def _due(self, picks: list) -> list[tuple]:
        """The (camera, frame, prepared) of the frames taken that are to be segmented (``every_n``)."""
        due = []
        for index, (frame, prepared) in picks:
            cam = self.cameras[index]
            try:
                cam.check_roi(frame)
            except InputError as err:
                self.error = err
                raise
            cam.seen += 1
            if (cam.seen - 1) % cam.every_n:
                self._count(cam, "skipped")
            else:
                due.append((cam, frame, prepared))
        return due

    def liveness(self) -> dict[str, int]:
        """Each loop thread's counter (capture — one per camera: ``capture:NAME`` —, infer, sink): all of them move
        while the loop is deciding, reconnecting a lost camera included; one that stands still is stuck (in a
        driver, a model, a sink). A camera whose capture ended (its source ended) is left out."""
        out = dict(self.beats)
        for i, cam in enumerate(self.cameras):
            if not self.scheduler.slots[i].closed or not self.multi:
                out[f"capture:{cam.name}" if self.multi else "capture"] = cam.beats
        return out

    def camera_states(self) -> dict[str, dict]:
        """Per camera: its source's state, what is wrong, FPS and counters (``edge_seg.loop.camera.states``)."""
        return states(self.cameras, [slot.closed for slot in self.scheduler.slots])

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
        if self._batch_wanted > 1:
            self.batch = segmenter.batch_size(self._batch_wanted)
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
        for cam in self.cameras:
            cam.source.close()
        failed = close_stages([*(s for cam in self.cameras for s in cam.stages), *self.stages], "at the end")
        errors = [cam.error for cam in self.cameras if cam.error is not None] + ([failed] if failed else [])
        if self.error is None and errors:
            self.error = errors[0]
        if self.multi:
            add_up(self.stats, self.cameras)
        for cam in self.cameras:
            cam.stats.finish()
        self.stats.finish()
