"""``file://PATH`` (or a bare path), ``rtsp://…`` and ``v4l2:///dev/videoN`` through ``cv2.VideoCapture``.

Thread model: ``VideoCapture.read`` can block forever when a stream or USB camera vanishes
(opencv #4468, #22677), so it runs on a capture thread (``CaptureThread``) and ``read(timeout)``
only waits on the hand-over slot. FFmpeg also gets open/read timeouts of its own, so a dead RTSP
stream ends the thread with a ``SourceError`` instead of hanging it.

- Live streams (rtsp, v4l2): the slot keeps only the newest frame; a lost stream raises
  ``SourceError`` from ``read`` (wrap in ``ResilientSource`` to reopen it).
- Files, unpaced (default): every frame is delivered, decoded in ``read`` on the caller's thread
  (the loop's capture thread: a file does not hang, and one thread less per frame) as fast as the
  consumer takes them (``lossless``: the pipeline segments every frame and decodes none for nothing).
- Files, paced (``fps=`` or ``realtime=True`` for the file's own rate): frames are decoded on
  that schedule and behave like a live camera (newest frame wins).
- End of file: ``SourceEnded``, or start again when ``loop=True``.

RTSP over TCP: set ``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp`` in the environment.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge_seg.sources._common import CaptureThread, Pacer, query_options, redact, timed_grab
from edge_seg.sources.base import Frame, SourceEnded, SourceError, SourceUnavailable, SourceUnusable

log = logging.getLogger(__name__)


class OpenCVSource:
    """A ``cv2.VideoCapture`` read on a capture thread; see the module docstring for the policies."""

    def __init__(self, uri: str, target: str, api: int, *, live: bool, loop: bool = False,
                 fps: float | None = None, size: tuple[int, int] | None = None,
                 open_timeout: float = 10.0, read_timeout: float = 5.0) -> None:
        self.uri = uri
        self._target, self._api, self._live, self._loop = target, api, live, loop
        self._size = size
        self._params: list[int] = []
        if api == cv2.CAP_FFMPEG:
            self._params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000)]
        self._cap = self._open()
        if api == cv2.CAP_V4L2:
            self._configure_camera(fps)
        pacer = Pacer(fps) if fps and not live else None
        reported = self._cap.get(cv2.CAP_PROP_FPS)  # the file's or stream's own rate (0 when unknown)
        self.nominal_fps = fps or (reported if 0 < reported <= 1000 else None)  # see base.Source
        self._seq = 0
        self.lossless = not live and pacer is None  # see base.Source
        # an unpaced file is decoded in read() itself: its reader is already a loop thread, and a file does not hang
        self._thread = None if self.lossless else CaptureThread(f"capture {redact(uri)}", self._grab,
                                                                pacer=pacer, on_exit=self._release)
        self._closed = False

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self._target, self._api, self._params)
        if not cap.isOpened():
            cap.release()
            if self._live:
                raise SourceUnavailable(f"cannot open stream or device: {redact(self.uri)}")
            raise SourceError(f"cannot open video file (not a format FFmpeg can decode?): {redact(self.uri)}")
        return cap

    def _configure_camera(self, fps: float | None) -> None:
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self._size is not None:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        if fps:
            self._cap.set(cv2.CAP_PROP_FPS, fps)

    def _grab(self) -> np.ndarray:
        """Runs on the capture thread only (or in ``read`` for an unpaced file)."""
        ok, image = self._cap.read()
        if ok:
            return image
        if self._live:
            raise SourceUnavailable(f"lost {redact(self.uri)}: no frame from the stream")
        if not self._loop:
            raise SourceEnded(f"end of {self.uri}")
        self._cap.release()
        self._cap = self._open()
        ok, image = self._cap.read()
        if not ok:
            raise SourceUnusable(f"no decodable frame in {self.uri}")
        return image

    def _release(self) -> None:
        self._cap.release()

    def read(self, timeout: float) -> Frame | None:
        """The next frame, ``None`` after ``timeout`` s; ``SourceEnded`` at end of file."""
        if self._thread is None:
            got = self._decode_here()
        else:
            got = self._thread.get(timeout)
        if got is None:
            return None
        image, ts, decode_ms = got
        frame = Frame(image=image, ts=ts, seq=self._seq, decode_ms=decode_ms)
        self._seq += 1
        return frame

    def _decode_here(self) -> tuple[np.ndarray, float, float]:
        if self._closed:
            raise SourceEnded(f"{self.uri}: closed")
        return timed_grab(self._grab, f"capture {redact(self.uri)}")

    def capturing(self) -> bool:
        """The capture thread still runs (after ``close``: stuck in the driver, holding the device)."""
        return self._thread is not None and self._thread.alive

    def close(self) -> None:
        """Stop the capture thread; the device is released on that thread. Safe to call twice."""
        if self._thread is not None:
            self._thread.stop()
        elif not self._closed:
            self._closed = True
            self._release()


def _check(options: dict, scheme: str, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SourceError(f"{scheme}:// does not take option(s) {', '.join(unknown)} "
                          f"(valid: {', '.join(valid) or 'none'})")


def open_file(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
              realtime: bool = False, **options) -> OpenCVSource:
    """``file://PATH`` or a bare path; ``fps`` paces decoding, ``realtime=True`` paces at the file's rate.

    ``size`` is ignored (frames come as stored).
    """
    _check(options, "file", ())
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
    if not path.is_file():
        raise SourceError(f"no such video file: {path}")
    if realtime and not fps:
        probe = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        fps = float(probe.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0  # 30 when the container does not say
        probe.release()
    return OpenCVSource(uri, str(path), cv2.CAP_FFMPEG, live=False, loop=loop, fps=fps)


def open_rtsp(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
              open_timeout: float = 10.0, read_timeout: float = 5.0, **options) -> OpenCVSource:
    """``rtsp://[user:pass@]host[:port]/path``; frames come at the camera's rate (``fps``/``size`` ignored)."""
    _check(options, "rtsp", ("open_timeout", "read_timeout"))
    return OpenCVSource(uri, uri, cv2.CAP_FFMPEG, live=True, open_timeout=open_timeout, read_timeout=read_timeout)


def open_v4l2(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
              **options) -> OpenCVSource:
    """``v4l2:///dev/videoN`` (or ``v4l2://N``), optional ``?width=&height=&fps=``; ``size``/``fps`` request a mode."""
    _check(options, "v4l2", ())
    query = query_options(uri, {"width": int, "height": int, "fps": float})
    device = uri[len("v4l2://"):].split("?", 1)[0]
    if device.isdigit():
        device = f"/dev/video{device}"
    if not Path(device).exists():
        raise SourceUnavailable(f"no such camera device: {device} (list them with: ls /dev/video*)")
    if "width" in query or "height" in query:
        if "width" not in query or "height" not in query:
            raise SourceError(f"{uri}: give both width and height")
        size = (query["width"], query["height"])
    return OpenCVSource(uri, device, cv2.CAP_V4L2, live=True, fps=query.get("fps", fps), size=size)
