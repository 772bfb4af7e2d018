"""``edge-seg bench``: what a frame costs, stage by stage, measured in one run.

Three measurements on the same model and backend, so their ratios mean something:

1. **frame path**: one 1280x720 frame through preprocess → invoke → postprocess → upsample (the
   frame-size class map: bilinear uint8 probabilities + argmax by default, the nearest label-map
   resize with ``upsample="nearest"``) → confidence (at frame size) → overlay, every stage timed;
   "outside invoke" is everything but invoke (target for the bundled model: <= 3 ms).
2. **bare invoke**: the backend alone on a prepared input, after warm-up: p50/p95/p99 and FPS.
3. **loop**: the real pipeline (capture thread, inference, sink thread with overlay and crop
   extraction) on a file or synthetic source: per-stage p50/p95/p99 wall time and CPU time per
   frame, end-to-end FPS, drops, peak RSS, CPU %, and loop FPS / bare-invoke FPS.

Plus thermal zones and throttling where the board exposes them ("n/a" elsewhere).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_seg.bench.invoke import (
    BUSY_KINDS,
    PairedWindows,
    bench_invoke,
    bench_invoke_contended,
    one_core_infers,
    percentiles,
)
from edge_seg.bench.system import current_memory_mb, peak_rss_mb, thermals
from edge_seg.demo.clips import render_clip
from edge_seg.errors import InputError
from edge_seg.segmenter import Segmenter
from edge_seg.view.overlay import Overlay

FRAME_STAGES = ("preprocess", "invoke", "postprocess", "upsample", "confidence", "overlay")
TRACKED_INSTANCES = 20  # the tracker's cost is timed on this many moving boxes (issue 16: <= 0.5 ms p50)


@dataclass
class BenchReport:
    """All three measurements of one model/backend, JSON-ready via ``as_dict``."""

    label: str
    frame_size: tuple[int, int]
    frame_path: dict[str, dict[str, float]] = field(default_factory=dict)
    outside_invoke_ms: float = float("nan")
    invoke: dict[str, float] = field(default_factory=dict)
    loop: dict = field(default_factory=dict)
    system: dict = field(default_factory=dict)
    contended_invoke: dict[str, dict[str, float]] = field(default_factory=dict)  # BUSY_KINDS -> bare invoke
    tracking: dict[str, float] = field(default_factory=dict)  # Tracker.update at TRACKED_INSTANCES instances

    @property
    def bare_fps(self) -> float:
        return 1e3 / self.invoke["p50"] if self.invoke.get("p50") else float("nan")

    def as_dict(self) -> dict:
        return {"label": self.label, "frame_size": list(self.frame_size), "frame_path_ms": self.frame_path,
                "outside_invoke_ms": self.outside_invoke_ms, "bare_invoke_ms": self.invoke,
                "bare_invoke_fps": self.bare_fps, "bare_invoke_other_cpus_busy_ms": self.contended_invoke,
                "loop": self.loop, "tracking_ms_per_frame": self.tracking, "system": self.system}


def bench_frame_path(segmenter: Segmenter, images: list[np.ndarray], frames: int,
                     warmup: int = 10) -> tuple[dict[str, dict[str, float]], float]:
    """Every stage of one frame's path over ``images``; returns (percentiles per stage, median outside-invoke)."""
    overlay = Overlay(alpha=0.5)
    ms = {stage: [] for stage in FRAME_STAGES}
    for i in range(-warmup, frames):
        frame = images[i % len(images)]
        t0 = time.perf_counter()
        result = segmenter.segment(frame)
        t1 = time.perf_counter()
        _ = result.class_map
        t_up = time.perf_counter()
        _ = result.confidence
        t2 = time.perf_counter()
        overlay.annotate(frame, result)
        t3 = time.perf_counter()
        if i < 0:
            continue
        timings = result.timings
        ms["preprocess"].append(timings["preprocess"])
        ms["invoke"].append(timings["infer"])
        ms["postprocess"].append((t1 - t0) * 1e3 - timings["preprocess"] - timings["infer"])
        ms["upsample"].append((t_up - t1) * 1e3)
        ms["confidence"].append((t2 - t_up) * 1e3)
        ms["overlay"].append((t3 - t2) * 1e3)
    outside = np.sum([ms[s] for s in FRAME_STAGES if s != "invoke"], axis=0)
    return {s: percentiles(v) for s, v in ms.items()}, float(np.median(outside))


# How the generated clip is stored: (fourcc, suffix, what it emulates).
CLIP_CODECS = {
    "i420": ("I420", ".avi", "raw YUV 4:2:0 frames: the loop pays the YUV->BGR conversion a camera source pays"),
    "mp4v": ("mp4v", ".mp4", "MPEG-4 part 2: the loop also pays a software video decode"),
    "mjpg": ("MJPG", ".avi", "motion JPEG: a USB camera's MJPEG stream decoded on the CPU"),
}


def write_clip(path: Path, frames: int, size: tuple[int, int], fps: float = 30.0, codec: str = "mp4v") -> Path:
    """A synthetic clip on disk, so the loop measures real reading and decoding."""
    fourcc = CLIP_CODECS[codec][0]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise InputError(f"this OpenCV cannot write {codec} clips")
    for scene in render_clip(11, frames, size):
        writer.write(scene.image)
    writer.release()
    return path


def bench_decode(path: Path, frames: int) -> dict[str, float]:
    """CPU ms per frame of reading + decoding ``path`` alone, codec threads included (process CPU time).

    The loop's own "decode" stage counts only the capture thread's CPU; a codec that decodes on
    threads of its own (FFmpeg frame threading) hides the rest there.
    """
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        done = 0
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        while done < frames:
            ok, _ = cap.read()
            if not ok:
                if done == 0 or not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                    break
                continue
            done += 1
        wall, cpu1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
    finally:
        cap.release()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"cpu_ms": cpu * 1e3 / max(done, 1), "wall_ms": wall * 1e3 / max(done, 1), "frames": done}


def read_frames(uri_or_path: str, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of a video file or any source URI."""
    from edge_seg.sources import open_source

    source = open_source(uri_or_path, loop=True)
    try:
        images = []
        while len(images) < count:
            frame = source.read(5.0)
            if frame is None:
                break
            images.append(frame.image)
    finally:
        source.close()
    if not images:
        raise InputError(f"no frames from {uri_or_path}")
    return images


class _Progress:
    """Advances the progress bar and samples the resident memory every 10 frames (peak RSS and
    peak anonymous memory, the process's own, with the file-backed pages at that peak)."""

    name = "progress"

    def __init__(self, bar: tqdm):
        self.bar = bar
        self.frames = 0
        self.peak_rss_mb = self.peak_anon_mb = self.file_at_anon_peak_mb = 0.0
        self._sample()

    def __call__(self, result) -> None:
        self.bar.update(1)
        self.frames += 1
        now = time.monotonic()
        if self.frames == self.SKIP:
            self._first = now
        self._last = now
        if self.frames % 10 == 0:
            self._sample()

    def _sample(self) -> None:
        rss, file_backed = current_memory_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if rss - file_backed > self.peak_anon_mb:
            self.peak_anon_mb, self.file_at_anon_peak_mb = rss - file_backed, file_backed

    SKIP = 10  # frames of warm-up not counted in the steady FPS
    _first = _last = 0.0

    def steady_fps(self) -> float:
        """Frames per second after the first ``SKIP`` frames (0 below ``10 * SKIP`` frames)."""
        span = self._last - self._first
        # a short run is mostly warm-up and the sink's last burst: no steady state to speak of
        return (self.frames - self.SKIP) / span if self.frames >= 10 * self.SKIP and span > 0 else 0.0


def bench_loop(segmenter: Segmenter, source_uri: str, frames: int, fps: float | None,
               progress: bool = True, pin: bool = True, pair_image: np.ndarray | None = None, streams: int = 1,
               batch: int = 1) -> dict:
    """The real pipeline with overlay and crop extraction on; stats of ``frames`` segmented frames.

    ``streams`` > 1: that many cameras, each reading its own copy of ``source_uri`` with its own overlay and
    crop stages, share the model (``edge_seg.loop.scheduler``); the figures are the aggregate's, plus
    ``per_stream_fps`` and their spread ((max - min) / mean); ``batch``: frames of up to that many streams per
    invoke where the backend allows (``batch`` in the result: what it took).

    With ``pin`` the inference thread gets one CPU and everything else the others (``one_core_infers``).
    With ``pair_image`` bare invoke (of that image) is timed between windows of frames (``PairedWindows``);
    the loop's FPS, CPU and wall figures leave those pauses out.
    """
    from edge_seg.loop.camera import Camera
    from edge_seg.loop.pipeline import Pipeline
    from edge_seg.loop.sinks import CropStage, OverlayStage
    from edge_seg.postprocess.uncertainty import CropConfig, CropExtractor
    from edge_seg.sources import open_source

    def sinks() -> list:
        return [OverlayStage(Overlay(alpha=0.5)), CropStage(CropExtractor(CropConfig()))]

    cameras = None
    if streams > 1:
        cameras = [Camera(open_source(source_uri, loop=True, fps=fps), name=f"stream{i}", stages=sinks())
                   for i in range(streams)]
    source = open_source(source_uri, loop=True, fps=fps) if cameras is None else None
    bar = tqdm(total=frames, desc="loop", unit="frame", disable=not progress, leave=False)
    progress_stage = _Progress(bar)
    stages = ([] if cameras else sinks()) + [progress_stage]
    paired = None
    if pair_image is not None and batch == 1:  # (a batched model's bare invoke would be a padded batch)
        paired = PairedWindows(segmenter, pair_image, every=max(10, min(150, frames // 8)))
    with one_core_infers() if pin else nullcontext(None) as other_cpus:
        pipeline = Pipeline(source, segmenter, stages=stages, max_frames=frames, other_cpus=other_cpus,
                            after_frame=paired, cameras=cameras, batch=batch)
        cpu0, wall0, mine0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), time.thread_time()
        stats = pipeline.run()  # this thread is the inference thread
        mine = time.thread_time() - mine0
        cpu1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - wall0
    if batch > 1:
        segmenter.batch_size(1)  # one frame per invoke again, for the measurements after the loop
    bar.close()
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    pairs = paired.summary() if paired is not None else None
    if paired is not None:  # the bare-invoke pauses are not the loop's
        wall, cpu_s, mine = wall - paired.paused_wall, cpu_s - paired.paused_cpu, mine - paired.paused_cpu
    per_frame = 1e3 / max(stats.segmented, 1)
    order = ("capture", "decode", "preprocess", "infer", "postprocess", "overlay", "crops", "end_to_end")
    stage_names = [s for s in order if stats.samples(s).size]
    # steady state: from the first completed frame to the last (start-up and warm-up excluded)
    steady = pairs["fps"] if pairs else progress_stage.steady_fps()
    infer_ms = stats.samples("infer")

    def wall_samples(stage: str) -> np.ndarray:
        samples = stats.samples(stage)
        if stage == "end_to_end" and paired is not None and samples.size == stats.completed:  # the whole run kept
            return paired.steady_end_to_end(samples)
        return samples

    # the share of the loop's time the inference thread spent in invoke: what an accelerator would be kept busy
    occupancy = float(infer_ms.mean() * stats.segmented / 1e3 / wall) if infer_ms.size and wall > 0 else float("nan")
    return {"source": source_uri, "frames": stats.completed, "captured": stats.captured, "dropped": stats.dropped,
            "sink_dropped": stats.sink_dropped, "fps": steady if steady > 0 else stats.completed / max(wall, 1e-9),
            "fps_with_startup": stats.completed / wall if wall > 0 else 0.0, "invoke_occupancy": occupancy,
            "wall_ms": {s: percentiles(wall_samples(s)) for s in stage_names},
            "cpu_ms_per_frame": {k: v for k, v in stats.cpu_means().items() if k != "progress"},
            "cpu_percent": 100.0 * cpu_s / wall if wall > 0 else 0.0, "pinned": other_cpus is not None,
            "cpu_ms_per_frame_by_thread": {"inference": mine * per_frame, "all_others": (cpu_s - mine) * per_frame},
            "peak_rss_mb": peak_rss_mb(), "sampled_rss_mb": progress_stage.peak_rss_mb,
            "sampled_peak_anonymous_mb": progress_stage.peak_anon_mb,
            "sampled_file_backed_at_that_peak_mb": progress_stage.file_at_anon_peak_mb, "paired": pairs,
            "batch": pipeline.batch, **_per_stream(pipeline, wall)}


def _per_stream(pipeline, wall: float) -> dict:
    """Several streams: how many, each one's FPS over the run and their spread ((max - min) / mean)."""
    if not pipeline.multi:
        return {"streams": 1}
    fps = [cam.stats.completed / wall if wall > 0 else 0.0 for cam in pipeline.cameras]
    mean = sum(fps) / len(fps)
    return {"streams": len(fps), "per_stream_fps": fps,
            "per_stream_fps_spread": (max(fps) - min(fps)) / mean if mean > 0 else float("nan")}


def run_bench(segmenter: Segmenter, frames: int = 300, frame_size: tuple[int, int] = (1280, 720),
              source: str | None = None, loop_frames: int | None = None, progress: bool = True,
              label: str = "", clip_codec: str = "i420", streams: int = 1, batch: int = 1) -> BenchReport:
    """All three measurements; the loop runs on ``source`` or on a generated clip of ``frame_size``.

    The clip is rendered in a child process and the frame-path frames are read back from it, so this
    process's peak RSS is the runtime's own (the scene generator's temporaries never count).
    Bare invoke is also timed inside the loop, after every window of frames, and the ratio loop FPS /
    bare-invoke FPS is the median of the windows' ratios, so a machine whose speed drifts within
    seconds (shared or throttling CPUs) does not skew it. The bare invoke of the table is the mean
    of the runs just before and just after the loop. ``streams`` > 1: the loop runs that many streams of the clip
    (one camera each, one model), after a one-stream loop of a third of the frames whose peak RSS it is compared to.
    """
    report = BenchReport(label=label or segmenter.manifest.name, frame_size=frame_size)
    with tempfile.TemporaryDirectory(prefix="edge-seg-bench-") as tmp:
        uri = source
        clip = None
        if uri is None:
            clip = Path(tmp) / f"clip{CLIP_CODECS[clip_codec][1]}"
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                pool.submit(write_clip, clip, 60, frame_size, 30.0, clip_codec).result()
            uri = f"file://{clip}"
        # the loop first, so its peak RSS is its own (the frame path's buffers come later)
        first = read_frames(uri, 1)[0]
        before = bench_invoke(segmenter, first, frames)
        one_stream_rss = None
        if streams > 1:  # the one-stream peak first: the process's peak RSS only grows
            one_stream_rss = bench_loop(segmenter, uri, max(30, (loop_frames or frames) // 3), fps=None,
                                        progress=progress)["peak_rss_mb"]
        report.loop = bench_loop(segmenter, uri, loop_frames or frames, fps=None, progress=progress, pair_image=first,
                                 streams=streams, batch=batch)
        if one_stream_rss is not None:
            report.loop["peak_rss_mb_one_stream"] = one_stream_rss
        after = bench_invoke(segmenter, first, frames)
        report.invoke = {q: (before[q] + after[q]) / 2 for q in before}
        report.loop["bare_invoke_p50_before_after_ms"] = [before["p50"], after["p50"]]
        images = read_frames(uri, 4)
        report.frame_size = (images[0].shape[1], images[0].shape[0])
        report.frame_path, report.outside_invoke_ms = bench_frame_path(segmenter, images, frames)
        for kind in BUSY_KINDS:
            busy = bench_invoke_contended(segmenter, first, frames, kind)
            if busy is not None:
                report.contended_invoke[kind] = busy
        if clip is not None:
            report.loop["clip"] = {"codec": clip_codec, "emulates": CLIP_CODECS[clip_codec][2],
                                   "decode_alone": bench_decode(clip, min(frames, 120))}
    # the ratio: paired window by window where there are windows, else against bare invoke before/after the loop
    report.loop["fps_ratio_to_bare_invoke_before_after"] = report.loop["fps"] / report.bare_fps
    pairs = report.loop["paired"]
    report.loop["fps_ratio_to_bare_invoke"] = (pairs["ratio_median"] if pairs
                                               else report.loop["fps_ratio_to_bare_invoke_before_after"])
    report.loop["fps_ratio_to_invoke_with_other_cpus_busy"] = {
        kind: report.loop["fps"] * busy["p50"] / 1e3 for kind, busy in report.contended_invoke.items()}
    from edge_seg.bench.tracking import tracking_ms  # after the loop: scipy's memory is not the loop's peak RSS

    report.tracking = tracking_ms(TRACKED_INSTANCES, frames=max(frames, 110))  # its first 10 frames not counted
    report.system = {"thermals": thermals(), "cpus": os.cpu_count()}
    return report
