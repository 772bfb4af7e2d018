"""``synthetic://[?seed=3&width=640&height=360&fps=15&clip=300&frames=N]``: the demo scene generator as a camera.

Frames come from ``edge_seg.demo.clips.render_clip``, rendered lazily one at a time on the caller's
thread: a clip of ``clip`` frames (one scene with moving objects), then the next clip with a
seed derived from ``(seed, clip index)``, forever; or ``frames`` in total, then ``SourceEnded``
(or the same frames again with ``loop``). The same seed gives the same frames. The ground truth
of the last frame is ``ground_truth``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from edge_seg.demo.clips import render_clip
from edge_seg.demo.scenes import Scene
from edge_seg.sources._common import Pacer, query_options, wait_until_due
from edge_seg.sources.base import Frame, SourceEnded, SourceError

DEFAULT_SIZE = (640, 360)
_QUERY = {"seed": int, "width": int, "height": int, "fps": float, "clip": int, "frames": int}


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` of a stream seeded ``seed`` (distinct streams do not share clips)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class SyntheticSource:
    """Endless (or ``frames``-long) moving synthetic scenes; deterministic by seed."""

    def __init__(self, uri: str, *, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, fps: float | None = None,
                 clip: int = 300, frames: int | None = None, loop: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if clip < 1 or (frames is not None and frames < 1):
            raise SourceError(f"{uri}: clip and frames must be >= 1")
        if size[0] < 16 or size[1] < 16:
            raise SourceError(f"{uri}: width and height must be >= 16, got {size[0]}x{size[1]}")
        self.uri = uri
        self.size = size
        self._seed, self._clip, self._frames, self._loop = seed, clip, frames, loop
        self._pacer = Pacer(fps) if fps else None
        self.lossless = self._pacer is None  # see base.Source
        self.nominal_fps = fps or None
        self._sleep = sleep
        self._seq = 0
        self._pos = 0  # frame index within the (possibly looped) stream
        self._clip_index = -1
        self._scenes: Iterator[Scene] | None = None
        self._closed = False
        self.ground_truth: np.ndarray | None = None

    def _render_next(self) -> Scene:
        if self._frames is not None and self._pos >= self._frames:
            if not self._loop:
                raise SourceEnded(f"end of {self.uri}")
            self._pos, self._clip_index, self._scenes = 0, -1, None
        index = self._pos // self._clip
        if index != self._clip_index or self._scenes is None:
            length = self._clip if self._frames is None else min(self._clip, self._frames - index * self._clip)
            self._scenes = render_clip(clip_seed(self._seed, index), length, self.size)
            self._clip_index = index
        self._pos += 1
        return next(self._scenes)

    def read(self, timeout: float) -> Frame | None:
        """Render the next frame; ``None`` if pacing makes it due later than ``timeout`` s from now."""
        if self._closed:
            raise SourceEnded(f"{self.uri}: closed")
        if not wait_until_due(self._pacer, timeout, self._sleep):
            return None
        scene = self._render_next()
        if self._pacer is not None:
            self._pacer.tick()
        self.ground_truth = scene.mask
        frame = Frame(image=scene.image, ts=time.time(), seq=self._seq)
        self._seq += 1
        return frame

    def close(self) -> None:
        """Nothing to release; later reads raise ``SourceEnded``."""
        self._closed = True
        self._scenes = None


def open_synthetic(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
                   **options) -> SyntheticSource:
    """``synthetic://?…``; query values win over the ``fps``/``size`` arguments (default 640x360, unpaced)."""
    if options:
        raise SourceError(f"synthetic:// does not take option(s) {', '.join(sorted(options))}")
    rest = uri[len("synthetic://"):].split("?", 1)[0]
    if rest.strip("/"):
        raise SourceError(f"{uri}: synthetic:// takes only query options, e.g. synthetic://?seed=3&fps=15")
    query = query_options(uri, _QUERY)
    width, height = size or DEFAULT_SIZE
    size = (query.get("width", width), query.get("height", height))
    return SyntheticSource(uri, seed=query.get("seed", 0), size=size, fps=query.get("fps", fps),
                           clip=query.get("clip", 300), frames=query.get("frames"), loop=loop)
