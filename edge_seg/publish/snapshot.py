"""``snapshot`` commands: the requests waiting for the next published frame, and the JPEG overlay they are
answered with, sized to fit in one MQTT message."""

from __future__ import annotations

import base64
import threading
import time

import cv2
import numpy as np

from edge_seg.view.overlay import Overlay

MAX_SIDE = 960  # snapshots are for a human to look at: no need for the full camera resolution
EVENT_SIDE = 320  # a zone event's optional snapshot: a thumbnail (long side), a few KB
SNAPSHOT_TIMEOUT_S = 10.0  # a snapshot request with no published frame by then is answered with an error


def overlay_jpeg_b64(result, overlay: np.ndarray | None, max_b64: int, quality: int = 80,
                     max_side: int = MAX_SIDE) -> tuple[str, tuple[int, int]]:
    """Base64 JPEG of the result's overlay (drawn here when the loop drew none) and its (width, height).

    The image is downscaled (long side at most ``max_side``, then halved) until its base64 fits ``max_b64`` bytes.
    The result's frame is already redacted (the loop redacts before any stage), so is the JPEG.
    """
    if overlay is None:
        image = result.frame.image
        if result.roi is not None:
            x, y, w, h = result.roi
            image = image[y:y + h, x:x + w]
        overlay = Overlay(alpha=0.5, legend=True).annotate(image, result.segmentation)
    height, width = overlay.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    while True:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = overlay if size == (width, height) else cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
        text = base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""
        if ok and (len(text) <= max_b64 or max(size) <= 16):
            return text, size
        scale /= 2


def snapshot_answer(result, mask_msg_id: str, max_b64: int) -> dict:
    """The body of a successful ``snapshot`` result: the frame, its mask message and the overlay JPEG."""
    jpeg, size = overlay_jpeg_b64(result, result.overlay, max_b64)
    return {"frame_seq": result.frame.seq, "mask_msg_id": mask_msg_id, "overlay_jpeg": jpeg, "overlay_size": list(size)}


class SnapshotRequests:
    """Command ids of ``snapshot`` requests waiting for a frame, each with its deadline; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: list[tuple[str, float]] = []

    def arm(self, command_id: str) -> None:
        with self._lock:
            self._waiting.append((command_id, time.monotonic() + SNAPSHOT_TIMEOUT_S))

    def take(self) -> list[str]:
        """Every waiting request (a frame is here to answer them), removed."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return [command_id for command_id, _deadline in waiting]

    def expire(self, now: float) -> list[str]:
        """The requests whose deadline passed by ``now`` (monotonic), removed."""
        with self._lock:
            late = [c for c, deadline in self._waiting if deadline <= now]
            self._waiting = [(c, d) for c, d in self._waiting if d > now]
        return late

    def answer(self, result, mask_msg_id: str, max_b64: int, reply) -> None:
        """Answer every waiting request with this frame: ``reply(command_id, ok, body, error)``."""
        waiting = self.take()
        if waiting:
            body = snapshot_answer(result, mask_msg_id, max_b64)
            for command_id in waiting:
                reply(command_id, True, body, None)

    def fail_expired(self, now: float, reply) -> None:
        """Answer the requests whose deadline passed by ``now`` with an error."""
        for command_id in self.expire(now):
            reply(command_id, False, None, f"snapshot: no frame within {SNAPSHOT_TIMEOUT_S:.0f} s")


__all__ = ["EVENT_SIDE", "SNAPSHOT_TIMEOUT_S", "SnapshotRequests", "overlay_jpeg_b64", "snapshot_answer"]
