"""The reconnect watchdog (``ResilientSource``): backoff, timeouts, the degraded state, a driver that hangs."""

from __future__ import annotations

import calendar
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from source_helpers import threads_stopped, write_image_dir

from edge_seg.sources import Frame, Source, SourceEnded, SourceError, open_source
from edge_seg.sources.reconnect import ResilientSource, SourceEvent


@pytest.fixture(autouse=True)
def no_threads_left():
    """Every test must end with the threads it started stopped."""
    with threads_stopped():
        yield


@pytest.fixture
def image_dir(tmp_path) -> Path:
    return write_image_dir(tmp_path / "images")


# ---------------------------------------------------------------- ResilientSource

class Link:
    """A network link that can go silent: opens still succeed but frames stop (an RTSP stall).

    It heals on the ``heal_at``-th open, so the test does not depend on how fast this machine is.
    """

    def __init__(self) -> None:
        self.silent = False
        self.heal_at = 0
        self.opens = 0

    def go_silent(self, reopens: int) -> None:
        self.silent, self.heal_at = True, self.opens + reopens


class LinkedCamera:
    """A real ``images://`` source behind a ``Link``."""

    def __init__(self, directory: Path, link: Link) -> None:
        self.inner = open_source(f"images://{directory}", loop=True, fps=200.0)
        self.uri = "cam://link"
        self.link = link
        link.opens += 1
        if link.silent and link.opens >= link.heal_at:
            link.silent = False

    def read(self, timeout: float) -> Frame | None:
        if self.link.silent:
            time.sleep(timeout)
            return None
        return self.inner.read(timeout)

    def close(self) -> None:
        self.inner.close()


def _read_until_frame(source: ResilientSource, limit_s: float) -> Frame:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        start = time.monotonic()
        frame = source.read(0.1)
        assert time.monotonic() - start < 0.1 + 0.15  # never much longer than asked
        if frame is not None:
            return frame
    raise AssertionError("no frame after the outage")


def test_stalled_source_is_reopened_with_doubling_capped_backoff(image_dir):
    link, events = Link(), []
    source = ResilientSource(lambda: LinkedCamera(image_dir, link), deadline=0.15, backoff_initial=0.05,
                             backoff_cap=0.2, on_event=events.append)
    try:
        seqs = [source.read(1.0).seq for _ in range(3)]
        assert source.state == "live" and [e.kind for e in events] == ["recovered"]  # the first frame
        events.clear()
        link.go_silent(reopens=4)
        frame = _read_until_frame(source, 5.0)
        # a reopen that brings no frame is not a recovery: "recovered" only once frames flow again
        assert [e.kind for e in events] == ["stalled", "reopened"] * 4 + ["recovered"]
        stalls = [e for e in events if e.kind == "stalled"]
        assert [e.delay for e in stalls] == pytest.approx([0.05, 0.1, 0.2, 0.2])  # doubling, capped
        assert [e.attempt for e in stalls] == [1, 2, 3, 4]
        assert source.reconnects == 4 and link.opens == 5
        assert frame.seq == seqs[-1] + 1 and source.state == "live"
        # frames flow again and the backoff starts over after the next stall
        assert source.read(1.0).seq == frame.seq + 1
        events.clear()
        link.go_silent(reopens=1)
        _read_until_frame(source, 2.0)
        assert [(e.kind, e.delay) for e in events] == [("stalled", pytest.approx(0.05)), ("reopened", 0.0),
                                                       ("recovered", 0.0)]
    finally:
        source.close()
    assert source.state == "ended"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def test_failed_opens_back_off_up_to_the_cap_then_recover():
    fake, events, calls = FakeTime(), [], []

    def factory() -> Source:
        calls.append(fake.now)
        if len(calls) <= 9:
            raise SourceError("camera unplugged")
        return open_source("synthetic://?width=32&height=32")

    source = ResilientSource(factory, on_event=events.append, clock=fake.clock, sleep=fake.sleep)
    assert source.read(100.0) is None
    assert source.state == "reconnecting"
    assert [e.delay for e in events] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]  # 9 failures in 100 s
    assert {e.kind for e in events} == {"open_failed"} and "camera unplugged" in events[0].detail
    frame = source.read(100.0)
    assert frame is not None and frame.seq == 0
    assert [e.kind for e in events[-3:]] == ["open_failed", "reopened", "recovered"] and source.reconnects == 1
    source.close()


def test_read_stays_within_its_timeout_while_the_factory_blocks():
    def slow_factory() -> Source:
        time.sleep(0.5)
        return open_source("synthetic://?width=32&height=32")

    source = ResilientSource(slow_factory)
    start = time.monotonic()
    assert source.read(0.1) is None
    assert time.monotonic() - start < 0.25
    assert source.read(2.0) is not None
    source.close()


def test_a_source_error_reopens_and_end_of_stream_passes_through():
    events: list[SourceEvent] = []
    opened: list[Source] = []

    class Lost:
        uri = "lost://"

        def read(self, timeout: float) -> Frame | None:
            raise SourceError("lost the stream")

        def close(self) -> None:
            pass

    def factory() -> Source:
        opened.append(Lost() if not opened else open_source("synthetic://?width=32&height=32&frames=2"))
        return opened[-1]

    source = ResilientSource(factory, backoff_initial=0.01, on_event=events.append)
    assert [source.read(1.0).seq for _ in range(2)] == [0, 1]
    with pytest.raises(SourceEnded):
        source.read(1.0)
    assert [e.kind for e in events] == ["stalled", "reopened", "recovered", "ended"]
    assert "lost the stream" in events[0].detail and source.state == "ended"
    with pytest.raises(SourceEnded):
        source.read(0.1)
    source.close()


def test_a_slow_close_of_a_stalled_source_does_not_hold_up_read():
    class Hung:
        uri = "hung://"

        def read(self, timeout: float) -> Frame | None:
            time.sleep(timeout)
            return None

        def close(self) -> None:
            time.sleep(0.4)  # like releasing a stream stuck in its driver

    events: list[SourceEvent] = []
    source = ResilientSource(Hung, deadline=0.1, on_event=events.append)
    start = time.monotonic()
    assert source.read(0.3) is None
    assert time.monotonic() - start < 0.45
    assert [e.kind for e in events] == ["stalled"] and source.state == "reconnecting"
    source.close()


def test_a_source_down_says_since_when_and_clears_on_the_first_frame():
    fake, calls = FakeTime(), []

    def factory() -> Source:
        calls.append(fake.now)
        if len(calls) <= 9:
            raise SourceError("camera unplugged")
        return open_source("synthetic://?width=32&height=32")

    source = ResilientSource(factory, on_event=lambda e: None, clock=fake.clock, sleep=fake.sleep)
    assert source.degraded() is None  # nothing has failed yet
    before = time.time()
    assert source.read(100.0) is None
    text = source.degraded()
    assert text is not None and text.startswith("source down since ") and text.endswith("(100 s)")
    since = calendar.timegm(time.strptime(text.split("since ")[1].split(" ")[0], "%Y-%m-%dT%H:%M:%SZ"))
    assert int(before) - 1 <= since <= time.time() + 1  # wall time of the first failure
    assert source.read(100.0) is not None and source.degraded() is None
    source.close()


class HungDriverSource:
    """A camera whose driver call never returns once it hangs (``release`` lets every stuck call go): the capture
    thread stays in ``grab`` after close, as OpenCV's does with a vanished USB or RTSP device."""

    def __init__(self, release: threading.Event, opens: list) -> None:
        from edge_seg.sources._common import CaptureThread

        self.uri = "hung://cam"
        opens.append(self)
        self._release = release
        self._thread = CaptureThread("capture hung://cam", self._grab)

    def _grab(self) -> np.ndarray:
        self._release.wait()  # the driver hangs until released; then it delivers
        time.sleep(0.01)
        return np.zeros((8, 8, 3), np.uint8)

    def read(self, timeout: float) -> Frame | None:
        got = self._thread.get(timeout)
        return None if got is None else Frame(image=got[0], ts=got[1], seq=0)

    def capturing(self) -> bool:
        return self._thread.alive

    def close(self) -> None:
        self._thread.stop(join_timeout=0.05)


def test_a_capture_thread_stuck_in_the_driver_is_not_joined_by_more_on_every_reopen():
    release, opens, events = threading.Event(), [], []
    source = ResilientSource(lambda: HungDriverSource(release, opens), deadline=0.1, backoff_initial=0.05,
                             backoff_cap=0.1, on_event=events.append)
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            source.read(0.1)
        stuck = [t for t in threading.enumerate() if t.name == "capture hung://cam" and t.is_alive()]
        # today: a new capture thread per reopen, each stuck (about 20 in 2 s); now one, until it lets go
        assert len(stuck) == 1 and len(opens) == 1, (len(stuck), len(opens))
        assert source.stuck == 1 and [e.kind for e in events].count("stuck") == 1
        release.set()  # the driver lets go: the device can be opened again, and frames flow
        assert _read_until_frame(source, 3.0) is not None and len(opens) == 2
    finally:
        release.set()
        source.close()
