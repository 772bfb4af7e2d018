"""Helpers shared by the source modules: frame pacing, URI queries, and a capture thread.

The capture thread exists because a camera's blocking read (OpenCV ``VideoCapture.read``,
picamera2 ``capture_request``) can hang forever when the device or stream vanishes. The blocking
call runs on its own daemon thread and hands each result over through one slot; ``get(timeout)``
waits on that slot only, so the caller's timeout always holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from edge_seg.sources.base import SourceEnded, SourceError

log = logging.getLogger(__name__)


class Pacer:
    """Spaces frames ``1/fps`` apart; when the consumer is late the schedule restarts (no burst)."""

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic) -> None:
        if fps <= 0:
            raise SourceError(f"fps must be > 0, got {fps:g}")
        self.period = 1.0 / fps
        self._clock = clock
        self._due: float | None = None

    def delay(self) -> float:
        """Seconds until the next frame is due (0 when it is due now)."""
        return 0.0 if self._due is None else max(0.0, self._due - self._clock())

    def tick(self) -> None:
        """Record that a frame was delivered now."""
        now = self._clock()
        self._due = now + self.period if self._due is None else max(self._due + self.period, now)


def wait_until_due(pacer: Pacer | None, timeout: float, sleep: Callable[[float], None]) -> bool:
    """Sleep until the paced next frame is due; False (after sleeping ``timeout``) if it is due later."""
    if pacer is None:
        return True
    wait = pacer.delay()
    if wait > timeout:
        sleep(max(0.0, timeout))
        return False
    sleep(wait)
    return True


def redact(uri: str) -> str:
    """``uri`` without a password (``rtsp://user:secret@host`` → ``rtsp://user:***@host``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


def query_options(uri: str, allowed: dict[str, type]) -> dict[str, Any]:
    """Parse ``?a=1&b=2`` of ``uri`` into typed values; unknown keys or bad values → ``SourceError``."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(urlsplit(uri).query, keep_blank_values=True):
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise SourceError(f"{redact(uri)}: unknown option '{key}' (valid: {valid})")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise SourceError(f"{redact(uri)}: option {key}={value!r} is not a valid {allowed[key].__name__}") from None
    return out


def timed_grab(grab: Callable[[], Any], name: str) -> tuple[Any, float, float]:
    """``(grab(), capture time, CPU ms of the grab)``; an error other than ``SourceEnded``/``SourceError``
    becomes a one-line ``SourceError`` named after ``name``."""
    cpu0 = time.thread_time()
    try:
        payload = grab()
    except (SourceEnded, SourceError):
        raise
    except Exception as exc:  # noqa: BLE001 - a driver error becomes the source's one-line error
        raise SourceError(f"{name}: capture failed: {exc}") from None
    return payload, time.time(), (time.thread_time() - cpu0) * 1e3


class CaptureThread:
    """Runs ``grab()`` over and over on a daemon thread and hands results over through one slot.

    ``grab`` returns a payload or raises ``SourceEnded``/``SourceError`` (anything else becomes a
    ``SourceError``); the first exception ends the thread and is raised by ``get`` once every
    frame before it was taken. A frame nobody took is overwritten, so ``get`` returns the newest
    (live cameras, paced files; an unpaced file is read without a thread). ``on_exit`` (e.g.
    release the device) runs on the capture thread when it ends, so ``stop()`` never waits on a
    hung driver for long.
    """

    def __init__(self, name: str, grab: Callable[[], Any], *,
                 pacer: Pacer | None = None, on_exit: Callable[[], None] | None = None) -> None:
        self._grab = grab
        self._pacer = pacer
        self._on_exit = on_exit
        self._cond = threading.Condition()
        self._item: tuple[Any, float, float] | None = None
        self._final: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: tuple[Any, float, float]) -> bool:
        with self._cond:
            if self._stopping:
                return False
            self._item = item
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        try:
            while not self._stopping:
                if self._pacer is not None:
                    with self._cond:
                        if self._cond.wait_for(lambda: self._stopping, self._pacer.delay()):
                            break
                item = timed_grab(self._grab, self._thread.name)
                if self._pacer is not None:
                    self._pacer.tick()
                if not self._put(item):
                    break
        except (SourceEnded, SourceError) as exc:
            self._finish(exc)
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception as exc:  # noqa: BLE001 - releasing a broken device must not raise
                    log.warning("%s: release failed: %s", self._thread.name, exc)

    def _finish(self, exc: BaseException) -> None:
        with self._cond:
            self._final = exc
            self._cond.notify_all()

    def get(self, timeout: float) -> tuple[Any, float, float] | None:
        """The next ``(payload, capture time, CPU ms of the grab)``, ``None`` after ``timeout`` s.

        Raises the thread's end (``SourceEnded``/``SourceError``) once every earlier frame was taken.
        """
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._item is not None or self._final is not None or self._stopping, max(0.0, timeout))
            if self._item is not None:
                item, self._item = self._item, None
                self._cond.notify_all()
                return item
            if self._final is not None:
                raise self._final
            if ready:  # stopping
                raise SourceEnded(f"{self._thread.name}: closed")
            return None

    @property
    def alive(self) -> bool:
        """The thread still runs (after ``stop``: stuck in the driver)."""
        return self._thread.is_alive()

    def stop(self, join_timeout: float = 2.0) -> None:
        """Ask the thread to end and wait up to ``join_timeout`` s; a thread stuck in a driver is left."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(join_timeout)
        if self._thread.is_alive():
            log.warning("%s: capture thread still blocked in the driver; left to finish on its own",
                        self._thread.name)
