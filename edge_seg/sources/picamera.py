"""``picam://N[?width=&height=&fps=]``: a Raspberry Pi camera through picamera2 (imported only here).

Two streams from one capture: ``main`` (BGR, the URI's width x height, else the ``size``
argument, default 1280x720) for overlays and crops, and ``lores`` scaled by the ISP to the model's
input size (the ``lores`` argument), so inference needs no CPU resize; it becomes ``Frame.lores``. ``lores`` is YUV420
(the only lores format a Pi 4 offers) and is converted to BGR here. ``capture_request`` blocks,
so it runs on a capture thread and ``read(timeout)`` waits on the newest-frame slot.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_seg.sources._common import CaptureThread, query_options
from edge_seg.sources.base import Frame, SourceError, SourceUnavailable

MISSING = ("picamera2 is not installed: sudo apt install python3-picamera2 (Raspberry Pi OS) "
           "or pip install edge-seg[pi]")
DEFAULT_MAIN = (1280, 720)


def _import_picamera2():
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise SourceError(MISSING) from None
    return Picamera2


def lores_to_bgr(yuv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H*3/2, stride) I420 lores array to BGR of exactly ``size`` (width, height).

    Row padding and the even-size rounding are cropped off; if the ISP gave another size, resize.
    """
    width, height = size
    bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)[:height, :width]
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return bgr


class PicameraSource:
    """picamera2 main (BGR) + lores (model size) streams; see the module docstring."""

    def __init__(self, uri: str, camera: int, *, main: tuple[int, int] = DEFAULT_MAIN,
                 lores: tuple[int, int] | None = None, fps: float | None = None) -> None:
        picamera2 = _import_picamera2()
        if lores is not None and (lores[0] > main[0] or lores[1] > main[1]):
            raise SourceError(f"{uri}: lores (model) size {lores[0]}x{lores[1]} is larger than "
                              f"main {main[0]}x{main[1]}; raise width/height in the URI")
        self.uri = uri
        self.nominal_fps = fps or None  # see base.Source (None: the sensor mode's own rate)
        self._lores = lores
        self._seq = 0
        try:
            self._cam = picamera2(camera)
        except Exception as exc:  # noqa: BLE001 - picamera2 raises IndexError/RuntimeError for a missing camera
            raise SourceUnavailable(f"cannot open {uri}: camera {camera} not found or busy ({exc})") from None
        try:
            streams = {"main": {"size": main, "format": "RGB888"}}  # libcamera RGB888 is B,G,R in memory
            if lores is not None:
                even = (lores[0] + lores[0] % 2, lores[1] + lores[1] % 2)  # YUV420 needs even sizes
                streams["lores"] = {"size": even, "format": "YUV420"}
            controls = {"FrameRate": float(fps)} if fps else {}
            self._cam.configure(self._cam.create_video_configuration(**streams, controls=controls, buffer_count=4))
            self._cam.start()
        except Exception as exc:  # noqa: BLE001 - configuration errors come as assorted exception types
            self._cam.close()
            raise SourceError(f"cannot start {uri}: {exc}") from None
        self._thread = CaptureThread(f"capture {uri}", self._grab, on_exit=self._release)

    def _grab(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Runs on the capture thread only: one request, both streams copied out."""
        request = self._cam.capture_request()
        try:
            image = np.ascontiguousarray(request.make_array("main")[:, :, :3])
            lores = None
            if self._lores is not None:
                lores = lores_to_bgr(request.make_array("lores"), self._lores)
        finally:
            request.release()
        return image, lores

    def _release(self) -> None:
        self._cam.stop()
        self._cam.close()

    def read(self, timeout: float) -> Frame | None:
        """The newest frame (with ``lores``), ``None`` after ``timeout`` s."""
        got = self._thread.get(timeout)
        if got is None:
            return None
        (image, lores), ts, decode_ms = got
        frame = Frame(image=image, ts=ts, seq=self._seq, lores=lores, decode_ms=decode_ms)
        self._seq += 1
        return frame

    def capturing(self) -> bool:
        """The capture thread still runs (after ``close``: stuck in the driver, holding the camera)."""
        return self._thread.alive

    def close(self) -> None:
        """Stop capturing; the camera is closed on the capture thread. Safe to call twice."""
        self._thread.stop()


def open_picam(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
               lores: tuple[int, int] | None = None, **options) -> PicameraSource:
    """``picam://N``: ``lores`` is the model input size; the URI's width/height/fps (else ``size``/``fps``)
    set the main stream."""
    if options:
        raise SourceError(f"picam:// does not take option(s) {', '.join(sorted(options))}")
    camera = uri[len("picam://"):].split("?", 1)[0].strip("/") or "0"
    if not camera.isdigit():
        raise SourceError(f"{uri}: expected picam://N with N the camera number, e.g. picam://0")
    query = query_options(uri, {"width": int, "height": int, "fps": float})
    width, height = size or DEFAULT_MAIN
    main = (query.get("width", width), query.get("height", height))
    return PicameraSource(uri, int(camera), main=main, lores=lores, fps=query.get("fps", fps))
