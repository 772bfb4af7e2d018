"""Counters and per-stage timings of the loop, and the stats line printed at exit."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np

log = logging.getLogger(__name__)

# told every timing LoopStats records: (stage -> wall ms, the frame's end-to-end ms or None for a sample)
TimingListener = Callable[[Mapping[str, float], float | None], None]


class StageClock:
    """Per-stage wall and CPU milliseconds of one frame (CPU = this thread's CPU time).

    ``cpu=False`` measures wall time only: the loop reads thread CPU time (a system call, with
    the GIL held) on one frame in ``CPU_SAMPLE_EVERY``, which is enough for per-stage means.
    """

    def __init__(self, wall: dict[str, float] | None = None, cpu: bool = True):
        self.wall: dict[str, float] = wall if wall is not None else {}
        self.cpu: dict[str, float] = {}
        self._measure_cpu = cpu

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.thread_time() if self._measure_cpu else 0.0
        try:
            yield
        finally:
            self.wall[name] = (time.perf_counter() - w0) * 1e3
            if self._measure_cpu:
                self.cpu[name] = (time.thread_time() - c0) * 1e3

    @classmethod
    def for_frame(cls, seq: int, wall: dict[str, float] | None = None) -> "StageClock":
        """A clock for frame ``seq`` of the loop: CPU time on one frame in ``CPU_SAMPLE_EVERY``."""
        return cls(wall, cpu=seq % CPU_SAMPLE_EVERY == 0)


CPU_SAMPLE_EVERY = 8  # frames per CPU-time sample in the loop


class LoopStats:
    """Frame counters plus a rolling window of per-stage milliseconds (for percentiles and FPS)."""

    def __init__(self, window: int = 2000):
        self.captured = 0
        self.segmented = 0
        self.completed = 0
        self.dropped = 0  # frames overwritten in the latest-frame slot before inference took them
        self.sink_dropped = 0  # results dropped because the sink queue was full
        self.skipped = 0  # every_n
        self.sink_errors = 0
        self.reconnects = 0
        self.started = 0.0
        self.finished = 0.0
        self._lock = threading.Lock()
        self._stages: dict[str, deque] = {}
        self._cpu: dict[str, deque] = {}
        self._done_at: deque = deque(maxlen=64)
        self._window = window
        self.listeners: list[TimingListener] = []  # e.g. the Prometheus stage histograms (MetricsStage)

    def start(self) -> None:
        self.started = time.monotonic()

    def finish(self) -> None:
        self.finished = time.monotonic()

    def record(self, timings: dict[str, float], capture_ts: float, cpu: dict[str, float] | None = None) -> None:
        """One completed frame's per-stage wall ms (and CPU ms), called from the sink thread after its
        last stage; ``end_to_end`` is capture time to now."""
        end_to_end = (time.time() - capture_ts) * 1e3
        with self._lock:
            self.completed += 1
            for stage, ms in timings.items():
                self._stages.setdefault(stage, deque(maxlen=self._window)).append(ms)
            for stage, ms in (cpu or {}).items():
                self._cpu.setdefault(stage, deque(maxlen=self._window)).append(ms)
            self._stages.setdefault("end_to_end", deque(maxlen=self._window)).append(end_to_end)
            self._done_at.append(time.monotonic())
        self._tell(timings, end_to_end)

    def percentiles(self, q: float = 50) -> dict[str, float]:
        with self._lock:
            return {k: float(np.percentile(v, q)) for k, v in self._stages.items() if v}

    def sample(self, stage: str, wall_ms: float, cpu_ms: float | None = None) -> None:
        """One measurement of a stage that is not part of a frame's record (e.g. capture decode)."""
        with self._lock:
            self._stages.setdefault(stage, deque(maxlen=self._window)).append(wall_ms)
            if cpu_ms is not None:
                self._cpu.setdefault(stage, deque(maxlen=self._window)).append(cpu_ms)
        if self.listeners:
            self._tell({stage: wall_ms}, None)

    def _tell(self, timings: Mapping[str, float], end_to_end: float | None) -> None:
        for listener in self.listeners:
            try:
                listener(timings, end_to_end)
            except Exception as err:  # noqa: BLE001 - a listener must not end the capture or sink thread
                log.error("timing listener failed: %s", err)

    def samples(self, stage: str, cpu: bool = False) -> np.ndarray:
        with self._lock:
            return np.array((self._cpu if cpu else self._stages).get(stage, ()), dtype=np.float64)

    def cpu_means(self) -> dict[str, float]:
        """Mean CPU ms per frame of every stage measured."""
        with self._lock:
            return {k: float(np.mean(v)) for k, v in self._cpu.items() if v}

    @property
    def fps(self) -> float:
        """Recent completed frames per second (over the last 64 frames)."""
        with self._lock:
            if len(self._done_at) < 2:
                return 0.0
            span = self._done_at[-1] - self._done_at[0]
            return (len(self._done_at) - 1) / span if span > 0 else 0.0

    @property
    def elapsed(self) -> float:
        end = self.finished or time.monotonic()
        return end - self.started if self.started else 0.0

    def snapshot(self) -> dict:
        """JSON-ready counters and p50 per stage."""
        return {"captured": self.captured, "segmented": self.segmented, "completed": self.completed,
                "dropped": self.dropped, "sink_dropped": self.sink_dropped, "skipped": self.skipped,
                "reconnects": self.reconnects, "sink_errors": self.sink_errors, "fps": round(self.fps, 2),
                "p50_ms": {k: round(v, 3) for k, v in self.percentiles(50).items()}}

    def line(self) -> str:
        """The one-line summary printed when the loop exits."""
        elapsed = self.elapsed
        fps = self.completed / elapsed if elapsed > 0 else 0.0
        p50 = ", ".join(f"{k} {v:.1f}" for k, v in self.percentiles(50).items())
        return (f"stats: {self.completed} frames in {elapsed:.1f} s ({fps:.1f} FPS); captured {self.captured}, "
                f"dropped {self.dropped}, skipped {self.skipped}, sink-dropped {self.sink_dropped}, "
                f"reconnects {self.reconnects}; p50 ms: {p50}")
