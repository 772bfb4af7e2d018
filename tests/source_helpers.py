"""Source test helpers: a check that a test stopped the threads it started, and a small image directory."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np


@contextlib.contextmanager
def threads_stopped(grace_s: float = 1.0) -> Iterator[None]:
    """Fails when threads started inside the block are still running ``grace_s`` after it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.01)
    assert [t.name for t in set(threading.enumerate()) - before] == []


def write_image_dir(directory: Path) -> Path:
    """frame_1, frame_2, frame_10 (grey 10, 20, 100) and one file that is not an image."""
    directory.mkdir()
    for n in (10, 1, 2):
        cv2.imwrite(str(directory / f"frame_{n}.png"), np.full((24, 32, 3), 10 * n, np.uint8))
    (directory / "broken.jpg").write_bytes(b"not a jpeg")
    (directory / "notes.txt").write_text("ignored: not an image suffix")
    return directory
