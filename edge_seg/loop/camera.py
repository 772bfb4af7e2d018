"""``Camera``: what one source of the loop owns (its slot is the scheduler's): counters, ROI, every-n, stages.

A loop with one camera has one ``Camera`` named None (topics and messages keep their short form) whose
``stats`` are the loop's; with several, each camera has its own ``stats`` and its own sink stages
(tracking, zones, overlay, metrics, preview, files), and the loop's ``stats`` add them up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from edge_seg.errors import InputError
from edge_seg.loop.stats import LoopStats
from edge_seg.sources.base import Frame, Source
from edge_seg.sources.reconnect import degraded_of

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Camera:
    """One source of the loop; ``name`` None: the only camera."""

    source: Source
    name: str | None = None
    every_n: int = 1
    roi: tuple[int, int, int, int] | None = None
    stages: list = field(default_factory=list)  # run before the loop's own stages, for this camera's results
    stats: LoopStats = field(default_factory=LoopStats)
    listeners: list = field(default_factory=list)  # told each event of its source (reconnect watchdog)
    error: BaseException | None = None  # what ended its capture thread, if anything did
    beats: int = 0  # its capture thread goes round (a frame or a timed-out read)
    seen: int = 0  # frames the inference thread took from it (every_n counts these)
    roi_checked: tuple | None = None  # the frame shape the ROI was last found to fit

    @property
    def label(self) -> str:
        """The name in logs and liveness keys."""
        return self.name or "camera"

    @property
    def lossless(self) -> bool:
        """An unpaced file: every frame is segmented, capture waits for the slot (``Source.lossless``)."""
        return bool(getattr(self.source, "lossless", False))

    def check_roi(self, frame: Frame) -> None:
        """Raise ``InputError`` when the ROI does not lie inside the frame; checked on the first frame and whenever
        the frame size changes."""
        shape = frame.image.shape[:2]
        if self.roi is None or shape == self.roi_checked:
            return
        x, y, w, h = self.roi
        height, width = shape
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
            where = f"sources[{self.name}].roi" if self.name else "pipeline.roi"
            raise InputError(f"{where} [x, y, width, height] = {list(self.roi)} does not lie inside the "
                             f"{width}x{height} frame: make it fit (x + width <= {width}, y + height <= {height})")
        self.roi_checked = shape

    def lores(self, frame: Frame):
        """The camera's model-size copy of the frame (picamera2 lores), unless a region of interest is cut."""
        return frame.lores if self.roi is None else None

    @property
    def state(self) -> str | None:
        """The source's state (``ResilientSource.state``: running, reconnecting, ...), None if it has none."""
        return getattr(self.source, "state", None)


def add_up(total: LoopStats, cameras: list[Camera]) -> None:
    """Set the loop's capture-side counters to the sum of its cameras' (their capture threads count them)."""
    total.captured = sum(cam.stats.captured for cam in cameras)
    total.dropped = sum(cam.stats.dropped for cam in cameras)
    total.reconnects = sum(cam.stats.reconnects for cam in cameras)


def states(cameras: list[Camera], ended: list[bool]) -> dict[str, dict]:
    """Per camera (by label): source state, ``degraded`` (what is wrong, or None), FPS and counters."""
    out = {}
    for cam, done in zip(cameras, ended):
        s = cam.stats
        out[cam.label] = {"state": cam.state or ("ended" if done else "live"), "degraded": degraded_of(cam.source),
                          "fps": round(s.fps, 2), "captured": s.captured, "segmented": s.segmented,
                          "dropped": s.dropped, "reconnects": s.reconnects}
    return out


def source_state(cameras: list[Camera]) -> str | None:
    """One camera: its source's state; several: ``name state`` of each, comma-separated."""
    if len(cameras) == 1:
        return cameras[0].state
    return ", ".join(f"{cam.label} {cam.state or '?'}" for cam in cameras)[:256]  # the status field's limit


def degraded(cameras: list[Camera]) -> str | None:
    """What is wrong with the sources while the loop runs on (one line; ``name: problem`` with several)."""
    if len(cameras) == 1:
        return degraded_of(cameras[0].source)
    problems = [f"{cam.label}: {d}" for cam in cameras if (d := degraded_of(cam.source))]
    return "; ".join(problems) or None



def close_stages(stages, when: str) -> Exception | None:
    """Close every stage that has ``close``, each even if an earlier one fails (a video file still gets
    finished); failures are logged (``when``: e.g. "at the end"), the first is returned."""
    first = None
    for stage in stages:
        close = getattr(stage, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as err:  # noqa: BLE001 - every other stage is still closed
            log.warning("closing %s %s: %s", getattr(stage, "name", type(stage).__name__), when, err)
            first = first or err
    return first

__all__ = ["Camera", "add_up", "close_stages", "degraded", "source_state", "states"]
