"""Frame sources: real files, directories and generated scenes (the reconnect watchdog: test_reconnect.py)."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from source_helpers import threads_stopped, write_image_dir

from edge_seg.errors import EdgeSegError
from edge_seg.sources import Frame, Source, SourceEnded, SourceError, open_source
from edge_seg.sources.gstreamer import csi_pipeline, opencv_has_gstreamer
from edge_seg.sources.picamera import MISSING, lores_to_bgr

CLIP_FRAMES = 12
CLIP_SIZE = (96, 64)


@pytest.fixture(autouse=True)
def no_threads_left():
    """Every test must end with the threads it started stopped."""
    with threads_stopped():
        yield


@pytest.fixture
def clip(tmp_path) -> Path:
    """A real mp4v clip whose frame i is filled with grey level 20*i (order is visible)."""
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, CLIP_SIZE)
    assert writer.isOpened()
    for i in range(CLIP_FRAMES):
        writer.write(np.full((CLIP_SIZE[1], CLIP_SIZE[0], 3), 20 * i, np.uint8))
    writer.release()
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    return write_image_dir(tmp_path / "images")


def _drain(source: Source, limit: int = 1000) -> list[Frame]:
    frames = []
    with pytest.raises(SourceEnded):
        for _ in range(limit):
            frame = source.read(2.0)
            assert frame is not None
            frames.append(frame)
    return frames


def _grey(frame: Frame) -> int:
    return int(round(float(frame.image.mean())))


# ---------------------------------------------------------------- file://

def test_file_frames_come_in_order_then_source_ended(clip):
    source = open_source(f"file://{clip}")
    try:
        frames = _drain(source)
        with pytest.raises(SourceEnded):
            source.read(0.1)  # stays ended
    finally:
        source.close()
    assert [f.seq for f in frames] == list(range(CLIP_FRAMES))
    assert frames[0].image.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3) and frames[0].image.dtype == np.uint8
    greys = [_grey(f) for f in frames]
    assert greys == sorted(greys) and greys[-1] - greys[0] > 150
    assert all(a.ts <= b.ts for a, b in zip(frames, frames[1:]))


def test_bare_path_opens_a_file_and_loop_starts_again(clip):
    source = open_source(str(clip), loop=True)
    try:
        frames = [source.read(2.0) for _ in range(2 * CLIP_FRAMES + 3)]
    finally:
        source.close()
    assert [f.seq for f in frames] == list(range(2 * CLIP_FRAMES + 3))
    assert _grey(frames[CLIP_FRAMES]) == _grey(frames[0])  # back at the first frame
    assert _grey(frames[CLIP_FRAMES - 1]) > _grey(frames[CLIP_FRAMES])


def test_file_fps_paces_frames(clip):
    source = open_source(f"file://{clip}", fps=50.0)
    try:
        start = time.monotonic()
        frames = [source.read(1.0) for _ in range(6)]
        elapsed = time.monotonic() - start
    finally:
        source.close()
    assert all(f is not None for f in frames)
    assert elapsed >= 5 * 0.02 - 0.01


def test_close_stops_the_capture_thread_mid_file(clip):
    source = open_source(f"file://{clip}")
    assert source.read(2.0) is not None
    source.close()
    source.close()  # safe twice
    assert not [t for t in threading.enumerate() if t.name.startswith("capture")]


# ---------------------------------------------------------------- images://

def test_images_come_in_natural_order_and_unreadable_files_are_skipped(image_dir, caplog):
    with caplog.at_level(logging.WARNING):
        source = open_source(f"images://{image_dir}")
        frames = _drain(source)
    assert [_grey(f) for f in frames] == [10, 20, 100]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert "broken.jpg" in caplog.text


def test_images_loop_and_bare_directory(image_dir, caplog):
    with caplog.at_level(logging.WARNING):
        source = open_source(str(image_dir), loop=True)
        greys = [_grey(source.read(1.0)) for _ in range(7)]
    assert greys == [10, 20, 100, 10, 20, 100, 10]
    assert caplog.text.count("broken.jpg") == 1  # warned once, not on every pass


def test_images_fps_returns_none_when_the_next_frame_is_not_due(image_dir):
    source = open_source(f"images://{image_dir}", fps=2.0)
    assert source.read(0.05) is not None
    start = time.monotonic()
    assert source.read(0.05) is None
    assert time.monotonic() - start < 0.3
    assert source.read(1.0) is not None


# ---------------------------------------------------------------- synthetic://

def test_synthetic_is_deterministic_by_seed_and_honours_size():
    def grab(uri: str, n: int = 3) -> list[np.ndarray]:
        source = open_source(uri)
        try:
            return [source.read(1.0).image for _ in range(n)]
        finally:
            source.close()

    a = grab("synthetic://?seed=3&width=64&height=48")
    b = grab("synthetic://?seed=3&width=64&height=48")
    c = grab("synthetic://?seed=4&width=64&height=48")
    assert a[0].shape == (48, 64, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # the scene moves
    assert open_source("synthetic://", size=(80, 40)).read(1.0).image.shape == (40, 80, 3)


def test_synthetic_frames_end_or_loop_across_clips():
    frames = _drain(open_source("synthetic://?width=32&height=32&clip=2&frames=5"))
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    looped = open_source("synthetic://?width=32&height=32&clip=2&frames=3", loop=True)
    images = [looped.read(1.0).image for _ in range(6)]
    assert all(np.array_equal(images[i], images[i + 3]) for i in range(3))
    assert looped.ground_truth.shape == (32, 32)


# ---------------------------------------------------------------- errors are one line

@pytest.mark.parametrize("uri, words", [
    ("ftp://camera/x", ["unknown source scheme", "synthetic://", "images://"]),
    ("file:///no/such/clip.mp4", ["no such video file"]),
    ("/no/such/clip.mp4", ["no such video file"]),
    ("images:///no/such/dir", ["no such image directory"]),
    ("v4l2:///dev/video99", ["no such camera device"]),
    ("synthetic://?colour=red", ["unknown option 'colour'"]),
    ("synthetic://?width=wide", ["not a valid int"]),
    ("rtsp://admin:hunter2@127.0.0.1:1/stream", ["cannot open", "admin:***@"]),
])
def test_bad_uris_give_one_line_source_errors(uri, words):
    with pytest.raises(SourceError) as info:
        open_source(uri, open_timeout=1.0) if uri.startswith("rtsp") else open_source(uri)
    message = str(info.value)
    assert isinstance(info.value, EdgeSegError)
    assert "\n" not in message and "hunter2" not in message
    assert all(w in message for w in words), message


def test_empty_image_directory_and_undecodable_file_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="no image files"):
        open_source(f"images://{tmp_path}")
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot open video file"):
        open_source(f"file://{bogus}")


# ---------------------------------------------------------------- cameras without hardware

def test_csi_pipeline_keeps_one_buffer_and_drops():
    pipeline = csi_pipeline(1, 1920, 1080, 30)
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=1920,height=1080,framerate=30/1" in pipeline
    assert pipeline.endswith("appsink max-buffers=1 drop=true sync=false")
    assert "video/x-raw,format=BGR !" in pipeline
    assert "framerate=30000/1001" in csi_pipeline(0, 1280, 720, 30000 / 1001)
    assert "nvvidconv flip-method=2 !" in csi_pipeline(0, flip=2)


@pytest.mark.skipif(opencv_has_gstreamer() or importlib.util.find_spec("gi") is not None,
                    reason="GStreamer is available here: the missing-GStreamer message cannot be shown")
def test_csi_without_gstreamer_says_what_to_install():
    with pytest.raises(SourceError, match="needs GStreamer") as info:
        open_source("csi://0")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed")
def test_picam_without_picamera2_says_what_to_install():
    with pytest.raises(SourceError) as info:
        open_source("picam://0", lores=(256, 256))
    assert str(info.value) == MISSING
    assert "sudo apt install python3-picamera2" in MISSING and "edge-seg[pi]" in MISSING


def test_lores_yuv_becomes_bgr_of_the_model_size():
    bgr = np.zeros((50, 64, 3), np.uint8)
    bgr[:, :, 2] = 200  # red
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # (75, 64), requested 63x49 rounded up to even
    out = lores_to_bgr(yuv, (63, 49))
    assert out.shape == (49, 63, 3)
    assert abs(int(out[..., 2].mean()) - 200) < 6 and out[..., 0].mean() < 10


@pytest.mark.hardware
@pytest.mark.skipif(not Path("/etc/nv_tegra_release").exists(), reason="needs a Jetson with a CSI camera")
def test_csi_camera_delivers_frames():
    source = open_source("csi://0", size=(1280, 720), fps=30)
    try:
        frame = source.read(5.0)
        assert frame is not None and frame.image.shape == (720, 1280, 3)
    finally:
        source.close()


@pytest.mark.hardware
@pytest.mark.skipif(importlib.util.find_spec("picamera2") is None, reason="needs a Raspberry Pi camera and picamera2")
def test_picam_delivers_main_and_lores():
    source = open_source("picam://0", lores=(256, 256))
    try:
        frame = source.read(5.0)
        assert frame is not None and frame.image.shape == (720, 1280, 3)
        assert frame.lores is not None and frame.lores.shape == (256, 256, 3)
    finally:
        source.close()


@pytest.mark.hardware
@pytest.mark.skipif(not Path("/dev/video0").exists(), reason="needs a USB/V4L2 camera at /dev/video0")
def test_v4l2_camera_delivers_frames():
    source = open_source("v4l2:///dev/video0")
    try:
        assert source.read(5.0) is not None
    finally:
        source.close()
