"""Starting a camera: picamera2's lores stream feeds inference, the camera opens once, source_up follows frames.

There is no Pi camera here, so ``picamera2`` is a stand-in module written by the test: it records the
configuration the runner asks for and hands out real frames (a BGR ``main`` stream and an I420
``lores`` stream, as libcamera does). Everything from ``open_source`` on is the real code, and the
real tiny colour model segments what it is given.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
import tflite_builders

from edge_seg.config import parse_config
from edge_seg.loop.metrics import Metrics
from edge_seg.loop.runner import _source_state, build
from edge_seg.sources import open_source
from edge_seg.sources.reconnect import ResilientSource, SourceEvent

FAKE_PICAMERA2 = textwrap.dedent('''
    """A stand-in for picamera2 on a machine without a Pi camera (see tests/loop/test_camera_start.py)."""
    import cv2
    import numpy as np

    OPENED, CONFIGS = [], []
    MAIN_BGR = (0, 0, 255)  # the main stream is all red


    class Request:
        def __init__(self, config):
            self.config = config

        def make_array(self, name):
            width, height = self.config[name]["size"]
            if name == "main":
                return np.full((height, width, 3), MAIN_BGR, np.uint8)
            bgr = np.zeros((height, width, 3), np.uint8)  # lores: left half green, right half blue
            bgr[:, : width // 2] = (0, 255, 0)
            bgr[:, width // 2:] = (255, 0, 0)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)

        def release(self):
            pass


    class Picamera2:
        def __init__(self, camera=0):
            OPENED.append(self)
            self.closed = False
            self.config = None

        def create_video_configuration(self, main, lores=None, controls=None, buffer_count=4):
            streams = {"main": main}
            if lores is not None:
                streams["lores"] = lores
            return streams

        def configure(self, config):
            self.config = config
            CONFIGS.append(config)

        def start(self):
            pass

        def capture_request(self):
            return Request(self.config)

        def stop(self):
            pass

        def close(self):
            self.closed = True
''')


@pytest.fixture()
def fake_picamera2(tmp_path, monkeypatch):
    (tmp_path / "picamera2.py").write_text(FAKE_PICAMERA2)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    import picamera2

    yield picamera2
    sys.modules.pop("picamera2", None)


def _segment_three(config) -> tuple[list, object]:
    built = build(config)
    seen: list = []
    built.pipeline.stages.append(lambda result: seen.append(result.segmentation.label_map.copy()))
    try:
        built.pipeline.run()
    finally:
        built.segmenter.close()
    return seen, built


def test_picam_lores_is_the_model_size_and_inference_reads_it(fake_picamera2, tiny_models):
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": "picam://0?width=320&height=240"}, "pipeline": {"max_frames": 3}})
    seen, built = _segment_three(config)
    assert fake_picamera2.CONFIGS == [{"main": {"size": (320, 240), "format": "RGB888"},
                                       "lores": {"size": built.segmenter.input_size, "format": "YUV420"}}]
    assert len(fake_picamera2.OPENED) == 1 and fake_picamera2.OPENED[0].closed  # opened once, released at the end
    stats = built.pipeline.stats  # a live camera: the sink may drop a frame when it falls behind
    assert stats.segmented == 3 and len(seen) == stats.completed >= 1
    green, blue = tflite_builders.COLOUR_CLASSES.index("green"), tflite_builders.COLOUR_CLASSES.index("blue")
    for labels in seen:  # the lores picture (green | blue), not the all-red main stream
        half = labels.shape[1] // 2
        assert (labels[:, : half - 1] == green).all() and (labels[:, half + 1:] == blue).all()


def test_a_region_of_interest_segments_the_main_stream(fake_picamera2, tiny_models):
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": "picam://0?width=320&height=240"},
                           "pipeline": {"max_frames": 3, "roi": [40, 40, 200, 120]}})
    seen, built = _segment_three(config)
    red = tflite_builders.COLOUR_CLASSES.index("red")
    stats = built.pipeline.stats  # a live camera: the sink may drop a frame when it falls behind
    assert stats.segmented == 3 and len(seen) == stats.completed >= 1
    assert all((labels == red).all() for labels in seen)  # lores shows the whole view: not asked for, not used
    assert "lores" not in fake_picamera2.CONFIGS[0]


def test_a_source_opened_up_front_is_used_and_its_deadline_starts_at_the_first_read():
    opens, events = [], []

    def factory():
        opens.append(1)
        return open_source("synthetic://?width=32&height=32")

    source = ResilientSource(factory, deadline=0.2, on_event=events.append, first=factory())
    try:
        time.sleep(0.3)  # start-up work longer than the deadline (loading sinks, connecting)
        frame = source.read(1.0)
        assert frame is not None and frame.seq == 0
        assert len(opens) == 1 and source.state == "live"
        assert [e.kind for e in events] == ["recovered"]  # frames flow: no stall, no reopen
    finally:
        source.close()


def test_source_up_waits_for_a_frame_after_a_reopen():
    metrics = Metrics(device="cam")

    def up() -> float:
        return metrics.registry.get_sample_value("edge_seg_source_up")

    metrics.set_source_up(True)
    for kind, expected in (("stalled", 0), ("reopened", 0), ("stalled", 0), ("reopened", 0), ("recovered", 1),
                           ("open_failed", 0), ("recovered", 1), ("ended", 0)):
        _source_state(metrics, SourceEvent(kind, "", 1, 0.0))
        assert up() == expected, kind


def test_an_unavailable_camera_at_start_is_retried_not_fatal(tiny_models):
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": "v4l2:///dev/video99", "backoff_cap_s": 0.5}})
    built = build(config)  # no camera yet (not plugged in, or not up at boot): the loop starts anyway
    thread = threading.Thread(target=built.pipeline.run, name="test-loop")
    thread.start()
    try:
        deadline = time.time() + 20
        while time.time() < deadline and sum(e.kind == "open_failed" for e in built.events) < 2:
            time.sleep(0.05)
        assert built.metrics.registry.get_sample_value("edge_seg_source_up") == 0
    finally:
        built.pipeline.stop()
        thread.join(timeout=20)
        built.segmenter.close()
    failed = [e for e in built.events if e.kind == "open_failed"]
    assert len(failed) >= 2 and "no such camera device" in failed[0].detail
    assert failed[1].delay >= failed[0].delay  # backing off
    assert not thread.is_alive() and built.pipeline.stats.segmented == 0


def test_a_source_that_can_never_deliver_ends_the_run_with_its_error(tiny_models, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        (images / name).write_bytes(b"not an image")
    model = str(tiny_models["colour_probs_uint8"])
    proc = subprocess.run([sys.executable, "-m", "edge_seg.cli", "run", "--model", model,
                           "--source", f"images://{images}", "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no readable images" in proc.stderr and "Traceback" not in proc.stderr
    assert "stats: " in proc.stdout  # the stats line still comes first


def test_a_slow_source_is_not_called_stalled_between_its_frames():
    events = []
    source = ResilientSource(lambda: open_source("synthetic://?width=32&height=32&fps=5"), deadline=0.1,
                             on_event=events.append)  # a frame every 0.2 s, a deadline of 0.1 s
    try:
        frames = [source.read(1.0) for _ in range(4)]
        assert all(f is not None for f in frames) and [f.seq for f in frames] == [0, 1, 2, 3]
        assert [e.kind for e in events] == ["recovered"] and source.nominal_fps == 5  # no stall between frames
    finally:
        source.close()


def test_the_overlay_video_keeps_the_file_s_frame_rate(tiny_models, tmp_path):
    import cv2
    from conftest import write_scene_clip

    clip = write_scene_clip(tmp_path / "clip.mp4", seed=2, frames=8)  # 10 FPS
    out = tmp_path / "overlay.mp4"
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": f"file://{clip}", "loop": False}, "output": {"video": str(out)}})
    built = build(config)
    try:
        stats = built.pipeline.run()
    finally:
        built.segmenter.close()
    video = cv2.VideoCapture(str(out))
    assert stats.completed == 8 and video.get(cv2.CAP_PROP_FPS) == 10.0
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 8
    video.release()


def test_source_up_turns_on_with_the_first_frame_whoever_opened_the_source():
    for first in (None, open_source("synthetic://?width=32&height=32")):  # opened by the loop, or up front
        metrics = Metrics(device="cam")
        metrics.set_source_up(False)  # as build() starts it
        source = ResilientSource(lambda: open_source("synthetic://?width=32&height=32"),
                                 on_event=lambda event, m=metrics: _source_state(m, event), first=first)
        try:
            assert metrics.registry.get_sample_value("edge_seg_source_up") == 0
            assert source.read(2.0) is not None
            assert metrics.registry.get_sample_value("edge_seg_source_up") == 1
        finally:
            source.close()
