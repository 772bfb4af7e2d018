"""``ResilientSource``: a deadline watchdog that reopens a stalled or lost source with backoff.

Wraps any ``Source`` made by ``factory()``. When no frame arrives for ``deadline`` seconds, or the
source raises anything but ``SourceEnded`` or ``SourceUnusable`` (both pass through: the end, and
a source that can never deliver), it is closed and reopened after a delay that doubles from
``backoff_initial`` up to ``backoff_cap`` (reset by the next frame). Failed opens back off the
same way. Every step is reported as a ``SourceEvent``: ``stalled``, ``open_failed``, ``reopened``
(an open succeeded after a failure), ``recovered`` (the first frame after any open: the source
delivers, which an open alone does not prove) and ``ended`` (loop or end is the inner source's policy). Frames are
renumbered so ``seq`` stays monotonic.

Timeouts: ``read(timeout)`` never blocks much longer than ``timeout``: the inner read gets the
remaining time, backoff waits are cut at the caller's deadline, ``factory()`` runs on a
short-lived opener thread (opening an RTSP stream or a camera can take seconds) that ``read``
waits on only for the remaining time, and a stalled source is closed on a short-lived thread
(releasing a hung stream can block).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from edge_seg.sources.base import Frame, Source, SourceEnded, SourceError, SourceUnusable

log = logging.getLogger(__name__)

PERIODS_PER_DEADLINE = 3  # frame periods a deadline never runs shorter than (see ``_adopt``)
EventKind = Literal["stalled", "reopened", "recovered", "open_failed", "ended", "stuck"]


@dataclass(frozen=True)
class SourceEvent:
    """What happened: ``attempt`` counts tries since the last frame; ``delay`` is the wait before the next."""

    kind: EventKind
    detail: str
    attempt: int
    delay: float


class _Opener:
    """Calls ``factory()`` on a thread; an abandoned result is closed when it arrives."""

    def __init__(self, factory: Callable[[], Source]) -> None:
        self.source: Source | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, args=(factory,), name="source-open", daemon=True)
        self._thread.start()

    def _run(self, factory: Callable[[], Source]) -> None:
        try:
            source = factory()
        except Exception as exc:  # noqa: BLE001 - reported as an open_failed event
            self.error = exc
        else:
            with self._lock:
                self.source = source
                if self._abandoned:
                    _close_quietly(source)
        finally:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once ``factory()`` returned or raised (the thread is then joined)."""
        if not self._done.wait(max(0.0, timeout)):
            return False
        self._thread.join()
        return True

    def abandon(self, join_timeout: float) -> None:
        with self._lock:
            self._abandoned = True
            if self.source is not None:
                _close_quietly(self.source)
        self._thread.join(join_timeout)


def _close_quietly(source: Source) -> None:
    try:
        source.close()
    except Exception as exc:  # noqa: BLE001 - a broken source may fail to close; we are replacing it anyway
        log.warning("closing %s failed: %s", getattr(source, "uri", "source"), exc)


class ResilientSource:
    """A ``Source`` that keeps ``factory()``'s source alive.

    ``state``: "reconnecting" while no source is open (backoff, opening, also before the first
    open), "live" while one is open, "ended" after ``SourceEnded`` or ``close()``. ``reconnects``
    counts successful reopens. ``uri`` is the inner source's unless given. ``first``: a source
    already opened by ``factory`` (e.g. to fail fast on a bad URI), used before any reopen, so a
    camera is not opened twice at start.
    """

    def __init__(self, factory: Callable[[], Source], deadline: float = 2.0, backoff_initial: float = 0.5,
                 backoff_cap: float = 30.0, on_event: Callable[[SourceEvent], None] | None = None, *,
                 uri: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, first: Source | None = None) -> None:
        if deadline <= 0 or backoff_initial <= 0 or backoff_cap < backoff_initial:
            raise SourceError("ResilientSource needs deadline > 0 and 0 < backoff_initial <= backoff_cap")
        self.uri = uri
        self.state: Literal["live", "reconnecting", "ended"] = "reconnecting"
        self.reconnects = 0
        self.stuck = 0  # retired sources whose capture thread stayed in the driver (counted once each)
        self._retired: list[list] = []  # [source, its closer thread, reported stuck] of closed, maybe capturing
        self._down: tuple[float, float] | None = None  # (wall, clock) of the first failure since the last frame
        self._factory, self._deadline, self._on_event = factory, deadline, on_event
        self._initial, self._cap = backoff_initial, backoff_cap
        self._clock, self._sleep = clock, sleep
        self._inner: Source | None = None
        self._opener: _Opener | None = None
        self._backoff = backoff_initial
        self._attempt = 0
        self._next_open = clock()
        self._last_frame = clock()
        self._seq = 0
        self._closed = False
        self._closers: list[threading.Thread] = []
        self._lossless = False
        self._base_deadline = deadline
        self.nominal_fps: float | None = None  # the open source's (see base.Source)
        self._recovering = False  # opened, no frame yet
        if first is not None:
            self._inner, self.state, self._recovering = first, "live", True
            self._adopt(first)
        self._unread = first is not None  # the deadline of ``first`` runs from the first read, not from here

    def _emit(self, kind: EventKind, detail: str, delay: float = 0.0) -> None:
        event = SourceEvent(kind, detail, self._attempt, delay)
        if self._on_event is not None:
            self._on_event(event)
        else:
            log.warning("source %s: %s", kind, detail)

    def _fail(self, kind: EventKind, detail: str) -> None:
        """Drop the inner source and schedule the next open after the current backoff."""
        if self._inner is not None:
            self._retire(self._inner)
            self._inner = None
        self._attempt += 1
        delay, self._backoff = self._backoff, min(self._backoff * 2, self._cap)
        self._next_open = self._clock() + delay
        self.state = "reconnecting"
        if self._down is None:
            self._down = (time.time(), self._clock())
        self._emit(kind, detail, delay)

    def _retire(self, source: Source) -> None:
        """Close a failed source on a thread: a stream stuck in its driver can take seconds to let go."""
        self._closers = [t for t in self._closers if t.is_alive()]
        closer = threading.Thread(target=_close_quietly, args=(source,), name="source-close", daemon=True)
        closer.start()
        self._closers.append(closer)
        self._retired.append([source, closer, False])

    def _open_step(self, end: float) -> None:
        """Wait out the backoff, start or finish an open; returns early at ``end``."""
        if self._opener is None:
            now = self._clock()
            if now < self._next_open:
                self._sleep(max(0.0, min(self._next_open, end) - now))
                if self._clock() < self._next_open:
                    return
            if self._still_capturing():
                self._next_open = self._clock() + self._backoff  # opening again would strand one more thread
                return
            self._opener = _Opener(self._factory)
        if not self._opener.wait(end - self._clock()):
            return
        opener, self._opener = self._opener, None
        if opener.source is None:
            self._fail("open_failed", f"{self.uri or 'source'}: {opener.error}")
            return
        self._inner, self.state = opener.source, "live"
        self._adopt(self._inner)
        self._last_frame = self._clock()  # the deadline runs from the open
        self._recovering = True
        if self._attempt:
            self.reconnects += 1
            self._emit("reopened", f"{self.uri}: reopened after {self._attempt} attempt(s)")

    def _still_capturing(self) -> bool:
        """True while a retired source's capture thread is still in its driver: the device is not free, and each
        reopen would leave one more thread stuck there. Reported once per source, once its close has given up."""
        self._retired = [entry for entry in self._retired if getattr(entry[0], "capturing", lambda: False)()]
        for entry in self._retired:
            source, closer, reported = entry
            if not reported and not closer.is_alive():
                entry[2] = True
                self.stuck += 1
                self._emit("stuck", f"{self.uri}: the capture thread of the closed source is stuck in the driver; "
                                    "reopening waits until it lets go")
        return bool(self._retired)

    def _adopt(self, source: Source) -> None:
        """Take on what the newly opened ``source`` says of itself; a slow source (a frame every few
        seconds) gets a deadline of at least ``PERIODS_PER_DEADLINE`` frame periods, so it is not called stalled."""
        self._lossless = bool(getattr(source, "lossless", False))
        self.uri = self.uri or getattr(source, "uri", "")
        self.nominal_fps = getattr(source, "nominal_fps", None)
        self._deadline = self._base_deadline
        if self.nominal_fps:
            self._deadline = max(self._base_deadline, PERIODS_PER_DEADLINE / self.nominal_fps)

    def degraded(self) -> str | None:
        """``source down since <UTC time> (<seconds> s)`` from the first failure after the last frame; else None."""
        down = self._down
        if down is None or self.state == "ended":
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(down[0]))
        return f"source down since {since} ({self._clock() - down[1]:.0f} s)"

    @property
    def lossless(self) -> bool:
        """The ``lossless`` of the source opened last (see base.Source); False before the first open."""
        return self._lossless

    def read(self, timeout: float) -> Frame | None:
        """The next frame, ``None`` after ``timeout`` s (also while reconnecting); ``SourceEnded`` at the end."""
        end = self._clock() + max(0.0, timeout)
        if self._unread:
            self._unread, self._last_frame = False, self._clock()
        while True:
            if self._closed or self.state == "ended":
                raise SourceEnded(f"{self.uri}: ended")
            if self._inner is None:
                self._open_step(end)
                if self._inner is None:
                    if self._clock() >= end:
                        return None
                    continue
            now = self._clock()
            try:
                frame = self._inner.read(max(0.0, min(end, self._last_frame + self._deadline) - now))
            except SourceEnded as exc:
                _close_quietly(self._inner)
                self._inner, self.state = None, "ended"
                self._emit("ended", str(exc) or f"{self.uri}: end of stream")
                raise
            except SourceUnusable as exc:  # it will never deliver: reopening would loop forever
                _close_quietly(self._inner)
                self._inner, self.state = None, "ended"
                self._emit("ended", str(exc))
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure of the inner source means reopen
                self._fail("stalled", f"{self.uri}: {exc}")
                continue
            now = self._clock()
            if frame is not None:
                if self._recovering:
                    self._recovering = False
                    again = f" again after {self._attempt} attempt(s)" if self._attempt else ""
                    self._emit("recovered", f"{self.uri}: frames flowing{again}")
                self._last_frame, self._backoff, self._attempt, self.state = now, self._initial, 0, "live"
                self._down = None
                frame = replace(frame, seq=self._seq)
                self._seq += 1
                return frame
            if now - self._last_frame >= self._deadline:
                self._fail("stalled", f"{self.uri}: no frame for {self._deadline:g} s")
            elif now >= end:
                return None

    def close(self, join_timeout: float = 1.0) -> None:
        """Close the inner source, abandon an open in progress, wait for retired sources to close.

        Each wait is at most ``join_timeout`` s; a source stuck in its driver is left to a daemon thread.
        """
        self._closed, self.state = True, "ended"
        if self._opener is not None:
            self._opener.abandon(join_timeout)
            self._opener = None
        if self._inner is not None:
            _close_quietly(self._inner)
            self._inner = None
        for closer in self._closers:
            closer.join(join_timeout)


def degraded_of(source) -> str | None:
    """What is wrong with ``source`` while the loop runs on (``ResilientSource.degraded``); None for any other."""
    degraded = getattr(source, "degraded", None)
    return degraded() if degraded is not None else None
