"""Preview-server test helpers: a recognisable frame, a GET that returns error bodies too, the server's threads."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import cv2
import numpy as np


def make_frame(i: int) -> np.ndarray:
    """A 240x320 BGR frame: blue background, a green square that moves, the frame number in white."""
    img = np.zeros((240, 320, 3), np.uint8)
    img[:] = (160, 40, 20)
    x = 10 + (i * 7) % 240
    img[150:210, x:x + 60] = (0, 200, 0)
    cv2.putText(img, f"#{i}", (10, 80), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 4)
    return img


def get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def preview_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("preview")]
