"""The source contract: one capture kind behind one small Protocol (DESIGN §3).

``read(timeout)`` returns the next ``Frame``, ``None`` when no frame came within ``timeout``
seconds (the source may still recover), and raises ``SourceEnded`` at end of stream (a file or
image directory that does not loop). ``close()`` releases the device; it is safe to call twice.

An optional attribute ``lossless`` (default False) says that every frame must be segmented: an
unpaced file, image directory or synthetic clip has no "newest" frame in real time, so the loop
waits for inference instead of dropping frames (live cameras and paced sources: newest frame wins).

An optional attribute ``nominal_fps`` (default None: unknown) is the rate frames are meant to come
at: a paced source's pace, a video file's or stream's own rate, a camera's mode. The loop writes
its video at that rate, and the reconnect deadline never runs shorter than a few frame periods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_seg.errors import EdgeSegError


class SourceEnded(Exception):
    """End of stream: no more frames will come from this source."""


class SourceError(EdgeSegError):
    """A source cannot be opened (bad URI, missing device, missing package)."""


class SourceUnavailable(SourceError):
    """A well-formed live source that cannot deliver now (camera unplugged or busy, stream unreachable).

    Worth retrying: the loop starts anyway and reopens it with backoff.
    """


class SourceUnusable(SourceError):
    """A source that opened but can never deliver a frame (no readable image, no decodable frame).

    Reopening would not help: the loop ends with this error.
    """


@dataclass(frozen=True)
class Frame:
    """One captured image: BGR uint8 (H, W, 3), wall-clock capture time, sequence number."""

    image: np.ndarray
    ts: float  # time.time() at capture
    seq: int  # 0, 1, 2, ... per source, across reopens
    lores: np.ndarray | None = None  # a second, model-size stream where the camera gives one (picamera2)
    decode_ms: float | None = None  # CPU ms the capture thread spent grabbing/decoding it, where measured


@runtime_checkable
class Source(Protocol):
    uri: str

    def read(self, timeout: float) -> Frame | None: ...

    def close(self) -> None: ...
