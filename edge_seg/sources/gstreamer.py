"""``csi://N[?width=&height=&fps=&flip=]``: a Jetson CSI camera through ``nvarguscamerasrc``.

The pipeline ends in ``appsink max-buffers=1 drop=true sync=false``: without it appsink queues
every frame (unbounded memory, growing latency). It is opened through OpenCV when OpenCV was
built with GStreamer (JetPack's python3-opencv is), else through PyGObject's appsink, where
``try-pull-sample`` gives ``read(timeout)`` directly. PyGObject is imported only when used.
"""

from __future__ import annotations

import re
import time
from fractions import Fraction

import cv2
import numpy as np

from edge_seg.sources._common import query_options
from edge_seg.sources.base import Frame, SourceEnded, SourceError, SourceUnavailable

DEFAULT_SIZE = (1280, 720)
DEFAULT_FPS = 30.0
_SINK_NAME = "edge_seg_sink"
_NO_GSTREAMER = ("csi:// needs GStreamer, but this OpenCV is built without it and PyGObject is missing: "
                 "on Jetson use JetPack's OpenCV (sudo apt install python3-opencv) or "
                 "sudo apt install python3-gi gir1.2-gstreamer-1.0")


def csi_pipeline(sensor_id: int = 0, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                 fps: float = DEFAULT_FPS, flip: int = 0) -> str:
    """The GStreamer pipeline for CSI sensor ``sensor_id`` as BGR frames of ``width`` x ``height``."""
    rate = Fraction(fps).limit_denominator(1001)
    flip_method = f" flip-method={flip}" if flip else ""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={rate.numerator}/{rate.denominator} ! "
            f"nvvidconv{flip_method} ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            f"appsink max-buffers=1 drop=true sync=false")


def opencv_has_gstreamer() -> bool:
    """True when this OpenCV build can open GStreamer pipelines."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def _import_gst():
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError):
        return None
    Gst.init(None)
    return Gst


class AppSinkSource:
    """A GStreamer pipeline ending in a named appsink, read with ``try-pull-sample`` (PyGObject)."""

    def __init__(self, uri: str, pipeline: str, gst) -> None:
        self.uri = uri
        self._gst = gst
        try:
            self._pipeline = gst.parse_launch(f"{pipeline} name={_SINK_NAME}")
        except Exception as exc:  # noqa: BLE001 - GLib.Error: the pipeline string or a plugin is wrong
            raise SourceError(f"{uri}: cannot build the GStreamer pipeline: {exc}") from None
        self._sink = self._pipeline.get_by_name(_SINK_NAME)
        self._seq = 0
        if self._pipeline.set_state(gst.State.PLAYING) == gst.StateChangeReturn.FAILURE:
            error = self._bus_error()
            self._pipeline.set_state(gst.State.NULL)
            raise SourceUnavailable(f"cannot start {uri}: "
                                    f"{error or 'pipeline failed to start (is the camera connected?)'}")

    def _bus_error(self) -> str | None:
        message = self._pipeline.get_bus().pop_filtered(self._gst.MessageType.ERROR)
        if message is None:
            return None
        err, _debug = message.parse_error()
        return str(err.message)

    def read(self, timeout: float) -> Frame | None:
        """The next frame, ``None`` after ``timeout`` s; ``SourceError`` on a pipeline error."""
        sample = self._sink.emit("try-pull-sample", int(max(0.0, timeout) * self._gst.SECOND))
        if sample is None:
            error = self._bus_error()
            if error:
                raise SourceUnavailable(f"lost {self.uri}: {error}")
            if self._sink.get_property("eos"):
                raise SourceEnded(f"end of {self.uri}")
            return None
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_value("width"), structure.get_value("height")
        buffer = sample.get_buffer()
        ok, info = buffer.map(self._gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.uri}: cannot map a GStreamer buffer")
        try:
            data = np.frombuffer(info.data, np.uint8)
            stride = data.size // height  # rows may be padded
            image = data[: stride * height].reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()
        finally:
            buffer.unmap(info)
        frame = Frame(image=image, ts=time.time(), seq=self._seq)
        self._seq += 1
        return frame

    def close(self) -> None:
        """Stop the pipeline. Safe to call twice."""
        self._pipeline.set_state(self._gst.State.NULL)


def open_csi(uri: str, *, loop: bool = False, fps: float | None = None, size: tuple[int, int] | None = None,
             **options):
    """``csi://N``: query values win over ``size``/``fps`` (default 1280x720 at 30 fps)."""
    if options:
        raise SourceError(f"csi:// does not take option(s) {', '.join(sorted(options))}")
    sensor = uri[len("csi://"):].split("?", 1)[0].strip("/") or "0"
    if not sensor.isdigit():
        raise SourceError(f"{uri}: expected csi://N with N the sensor id, e.g. csi://0")
    query = query_options(uri, {"width": int, "height": int, "fps": float, "flip": int})
    width, height = size or DEFAULT_SIZE
    rate = query.get("fps", fps or DEFAULT_FPS)
    pipeline = csi_pipeline(int(sensor), query.get("width", width), query.get("height", height), rate,
                            query.get("flip", 0))
    if opencv_has_gstreamer():
        from edge_seg.sources.opencv import OpenCVSource

        source = OpenCVSource(uri, pipeline, cv2.CAP_GSTREAMER, live=True)
    else:
        gst = _import_gst()
        if gst is None:
            raise SourceError(_NO_GSTREAMER)
        source = AppSinkSource(uri, pipeline, gst)
    source.nominal_fps = rate  # see base.Source
    return source
