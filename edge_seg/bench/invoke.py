"""Bare invoke, measured three ways, and the CPU pinning the bench's loop uses.

- alone, after warm-up (``bench_invoke``);
- while another process keeps the other CPUs busy (``bench_invoke_contended``): how much this
  machine's CPUs slow each other;
- inside the loop, between windows of frames, on the inference thread (``PairedWindows``), so
  each window's loop FPS is paired with the bare invoke of the same seconds.

``one_core_infers`` pins the inference thread to one CPU and everything else to the others: what
the issue's benchmark emulates (an accelerator runs ``invoke`` while the CPU does the rest).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import cv2
import numpy as np

from edge_seg.segmenter import Segmenter


def percentiles(values) -> dict[str, float]:
    """p50/p95/p99 of ``values`` (NaN when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def bench_invoke(segmenter: Segmenter, image: np.ndarray, frames: int, warmup: int = 20) -> dict[str, float]:
    """The backend alone on one prepared input."""
    batch, _ = segmenter.prepare(image)
    times = []
    for i in range(-warmup, frames):
        t0 = time.perf_counter()
        segmenter.invoke(batch)
        if i >= 0:
            times.append((time.perf_counter() - t0) * 1e3)
    return percentiles(times)


def _busy(kind: str, ready, stop, cpus: set[int] | None) -> None:
    """Keeps ``cpus`` busy until ``stop``: an integer loop (no memory traffic) or 720p frame copies."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    src = np.full((720, 1280, 3), 7, np.uint8) if kind == "copy" else None
    dst = np.empty_like(src) if src is not None else None
    ready.set()
    total = 0
    while not stop.is_set():
        if src is not None:
            np.copyto(dst, src)
        else:
            for i in range(20000):
                total += i


# What the probe's other process does: kind -> what it loads on the other CPUs.
BUSY_KINDS = {"integer": "an integer loop (no memory traffic)", "copy": "a loop copying 720p frames"}


def bench_invoke_contended(segmenter: Segmenter, image: np.ndarray, frames: int,
                           kind: str = "integer") -> dict[str, float] | None:
    """Bare invoke while another process keeps the other CPUs busy (``BUSY_KINDS``); None on one CPU.

    On a device the accelerator does not slow down when the CPU works. On a machine whose CPUs
    share execution units or clocks (SMT siblings of a VM's host: even an integer loop slows
    invoke) or memory bandwidth (copying does), it does, and then no loop that keeps the other
    CPU busy can reach bare-invoke FPS. This measures by how much.
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    if len(cpus) < 2:
        return None
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    with one_core_infers() as others:  # others: None where affinity cannot be set (the load then runs anywhere)
        load = context.Process(target=_busy, args=(kind, ready, stop, others), name="edge-seg-bench-load",
                               daemon=True)
        load.start()
        try:
            ready.wait(60)  # the load is up before the clock starts
            return bench_invoke(segmenter, image, frames)
        finally:
            stop.set()
            load.join(10)


class PairedWindows:
    """Bare invoke timed inside the loop, between windows of frames, on the inference thread.

    After every ``every`` segmented frames the inference thread stops taking frames and times
    ``invokes`` bare invokes of one prepared input (the capture thread waits with the next frame,
    the sink thread drains its queue), then the loop goes on. Each window's loop FPS is paired with
    the bare invoke timed right after it, so their ratio holds when the machine's speed drifts
    within seconds (shared VMs, thermal throttling). The first window (start-up) is not counted.
    ``after_pause`` lists, per pause, the index of the first frame segmented after it: that frame
    and the next (captured before the pause ended) waited through it.
    """

    def __init__(self, segmenter: Segmenter, image: np.ndarray, every: int, invokes: int = 100, settle: int = 3):
        self.segmenter = segmenter
        self.batch = segmenter.prepare(image)[0]
        self.every, self.invokes, self.settle = every, invokes, settle
        self.windows: list[tuple[int, float, float]] = []  # (frames, loop seconds, bare invoke p50 ms)
        self.paused_wall = self.paused_cpu = 0.0  # time spent timing bare invokes (taken out of the loop's figures)
        self.after_pause: list[int] = []
        self._frames = self._total = 0
        self._start: float | None = None

    def __call__(self) -> None:
        now = time.perf_counter()
        self._total += 1
        if self._start is None:
            self._start = now
            return
        self._frames += 1
        if self._frames < self.every:
            return
        cpu0 = time.thread_time()
        for _ in range(self.settle):  # the sink thread finishes the frames in flight meanwhile
            self.segmenter.invoke(self.batch)
        times = []
        for _ in range(self.invokes):
            t0 = time.perf_counter()
            self.segmenter.invoke(self.batch)
            times.append(time.perf_counter() - t0)
        self.windows.append((self._frames, now - self._start, float(np.median(times)) * 1e3))
        end = time.perf_counter()
        self.paused_wall += end - now
        self.paused_cpu += time.thread_time() - cpu0
        self.after_pause.append(self._total)
        self._frames, self._start = 0, end

    def steady_end_to_end(self, samples: np.ndarray) -> np.ndarray:
        """End-to-end ms of the loop's frames (in completion order) without the ones that waited through a pause."""
        keep = np.ones(samples.size, bool)
        for first in self.after_pause:
            keep[first:first + 2] = False
        return samples[keep]

    def summary(self) -> dict | None:
        """Per-window loop FPS, bare invoke and their ratio; None without a counted window."""
        counted = self.windows[1:]
        if not counted:
            return None
        fps = [frames / seconds for frames, seconds, _ in counted]
        ratios = [f * bare / 1e3 for f, (_, _, bare) in zip(fps, counted)]
        return {"every": self.every, "invokes": self.invokes, "windows": len(counted),
                "loop_fps": fps, "bare_invoke_p50_ms": [bare for _, _, bare in counted], "ratios": ratios,
                "ratio_median": float(np.median(ratios)), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "fps": sum(f for f, _, _ in counted) / sum(s for _, s, _ in counted)}


@contextmanager
def one_core_infers():
    """Pin the calling (inference) thread to the first CPU and every other thread to the others.

    What the issue's benchmark emulates: on a device the accelerator runs ``invoke`` while the CPU
    does everything else. Yields the other CPUs (for the threads the loop starts later), or None
    where affinity cannot be set (not Linux, one CPU). Every thread gets all CPUs back afterwards.
    """
    tasks = Path("/proc/self/task")
    if not hasattr(os, "sched_setaffinity") or not tasks.is_dir() or len(os.sched_getaffinity(0)) < 2:
        yield None
        return
    cpus = sorted(os.sched_getaffinity(0))
    me, others = threading.get_native_id(), set(cpus[1:])

    def pin_all(choose) -> None:
        for tid in (int(t) for t in os.listdir(tasks)):
            with suppress(OSError):  # a thread may end meanwhile
                os.sched_setaffinity(tid, choose(tid))

    pin_all(lambda tid: {cpus[0]} if tid == me else others)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(len(others))  # OpenCV's own workers would only share the other CPUs
    try:
        yield others
    finally:
        cv2.setNumThreads(cv_threads)
        pin_all(lambda tid: set(cpus))
