"""Acceptance (issue 14, privacy): redacted classes never leave the device with their raw pixels.

A real loop (the bundled model on synthetic:// scenes of discs, boxes and triangles) redacts two of
its three object classes, extracts uncertain crops with no overlay, no preview and no video (the
sinks that used to redact), and publishes through a real Mosquitto. Every crop that arrives is
decoded (JPEG with OpenCV, class map with pycocotools) and compared, pixel by pixel, with the raw
frame the source delivered: where the crop's class map says "redacted class", the JPEG must show
the redaction fill, not the object. A signed ``snapshot`` command is answered during the same run;
its JPEG is checked the same way against an overlay of the raw and of the redacted frame.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import cv2
import numpy as np
import pytest
from broker import Broker
from mqtt_helpers import Collector, device_model, results_of, wait_for
from pycocotools import mask as coco_mask

from edge_seg.config import parse_config
from edge_seg.errors import EdgeSegError
from edge_seg.loop.runner import build
from edge_seg.publish.commands import sign_command
from edge_seg.publish.messages import CROP_CONTENT_TYPE, decode
from edge_seg.view.overlay import Overlay

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

REDACT = ["disc", "triangle"]  # "box" stays visible: unredacted pixels must keep the frame's values
HMAC_KEY = "r" * 32
FILL = np.zeros(3)  # redact_mode "fill" with the default colour (0, 0, 0)
JPEG_TOLERANCE = 12  # mean abs difference a q85 JPEG of these flat scenes stays well under


class RawFrames:
    """The loop's source, keeping a copy of every frame it delivers (the raw pixels, before anything)."""

    def __init__(self, source):
        self.source = source
        self.frames: dict[int, np.ndarray] = {}

    def read(self, timeout: float):
        frame = self.source.read(timeout)
        if frame is not None:
            self.frames[frame.seq] = frame.image.copy()
        return frame

    def __getattr__(self, name):  # uri, state, degraded, nominal_fps, lossless, close ...
        return getattr(self.source, name)


class Segmentations:
    """A loop stage (first) keeping each frame's segmentation by frame seq."""

    name = "record"

    def __init__(self):
        self.by_seq: dict = {}

    def __call__(self, result) -> None:
        self.by_seq[result.frame.seq] = result.segmentation


def _config(model, broker_url: str, state_dir, **overlay) -> dict:
    return {"device": {"name": "cam-r", "state_dir": str(state_dir)},
            "model": {"path": str(model)},
            "source": {"uri": "synthetic://?seed=21&width=320&height=240", "fps": 15},
            "overlay": {"enabled": False, "redact_classes": REDACT, **overlay},
            "uncertainty": {"enabled": True, "crops": {"threshold": 0.3, "min_area": 0.0005, "max_crops": 8,
                                                       "crops_per_minute": 100_000,
                                                       "bytes_per_minute": 100_000_000}},
            "mqtt": {"url": broker_url, "policy": {"every_n": 1, "max_rate": 100},
                     "commands": {"require_signature": "hmac", "key": HMAC_KEY}}}


@pytest.fixture(scope="module")
def redacted_run(request, tmp_path_factory):
    """Run the loop for ~60 frames with a snapshot command in the middle; what the broker carried."""
    tmp = tmp_path_factory.mktemp("redaction")
    model = device_model(request)
    broker = Broker(tmp / "broker").start()
    raw = Collector(broker.host, broker.port, "edge_seg/cam-r/#")
    try:
        built = build(parse_config(_config(model, broker.url, tmp / "state")))
        source = built.pipeline.source = RawFrames(built.pipeline.source)
        record = Segmentations()
        built.pipeline.stages.insert(0, record)
        thread = threading.Thread(target=built.pipeline.run, name="test-loop", daemon=True)
        thread.start()
        try:
            wait_for(lambda: built.publisher.link.connected and len(source.frames) > 10, 30, what="loop running")
            time.sleep(0.3)  # the device's command subscription is in place
            command = sign_command({"id": "snap", "cmd": "snapshot"}, hmac_key=HMAC_KEY.encode())
            raw.publish("edge_seg/cam-r/cmd", json.dumps(command).encode())
            wait_for(lambda: any(r.command_id == "snap" for r in results_of(raw)), 30, what="the snapshot answer")
            wait_for(lambda: len(record.by_seq) >= 60, 60, what="60 frames")
        finally:
            built.pipeline.stop()
            thread.join(30)
            built.segmenter.close()
        published = built.publisher.counts.get("crops", None)
        wait_for(lambda: raw.on("status") and not json.loads(raw.on("status")[-1].payload).get("online", True), 10,
                 what="the offline status (the publisher flushed)")
        crops = [decode(m.payload, m.content_type) for m in raw.on("crop")]
        assert all(m.content_type == CROP_CONTENT_TYPE for m in raw.on("crop"))
        snap = next(r for r in results_of(raw) if r.command_id == "snap")
        ids = [built.segmenter.manifest.classes.index(name) for name in REDACT]
        yield {"crops": crops, "published": published, "snap": snap, "frames": source.frames,
               "segs": record.by_seq, "ids": ids}
    finally:
        raw.close()
        broker.stop()


def _crop_class_map(crop) -> np.ndarray:
    """The crop's class map, from pycocotools alone."""
    width, height = crop.mask_resolution
    labels = np.full((height, width), 255, np.uint8)
    for item in crop.rle:
        labels[coco_mask.decode({"size": [height, width], "counts": item.counts.encode("ascii")}) == 1] = item.id
    assert (labels != 255).all(), "a crop pixel belongs to no class"
    return labels


def _jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)


def test_every_published_crop_shows_redacted_classes_redacted(redacted_run):
    crops, frames, ids = redacted_run["crops"], redacted_run["frames"], redacted_run["ids"]
    assert len(crops) >= 20, f"only {len(crops)} crops: the scene no longer makes uncertain regions"
    with_redacted, leaking, off = 0, [], []
    for crop in crops:
        x, y, w, h = crop.bbox
        raw = frames[crop.frame_seq][y:y + h, x:x + w]
        image = _jpeg(crop.jpeg)
        assert image.shape[:2] == (h, w)
        hidden = np.isin(_crop_class_map(crop), ids)
        expected = raw.copy()
        expected[hidden] = FILL  # the redacted crop, made here from the raw frame and the crop's own class map
        if float(_diff(image, expected).mean()) >= JPEG_TOLERANCE:
            off.append((crop.frame_seq, crop.bbox))
        if not hidden.any():
            continue
        with_redacted += 1
        visible = hidden & (_diff(raw, expected) > 4 * JPEG_TOLERANCE)  # object pixels the fill really changes
        if visible.sum() < 20:
            continue
        # the raw object's pixels are far from the fill; in the JPEG they must be near the fill, not the object
        shows_raw = float(np.mean(_diff(image, raw)[visible] < JPEG_TOLERANCE))
        near_fill = float(np.mean(_diff(image, expected)[visible] < 3 * JPEG_TOLERANCE))
        if shows_raw > 0.01 or near_fill < 0.97:
            leaking.append((crop.frame_seq, crop.bbox, round(shows_raw, 3)))
    assert with_redacted >= 10, f"only {with_redacted} crops hold a redacted class: the test proves nothing"
    assert not leaking, f"{len(leaking)} of {with_redacted} crops holding redacted classes show their raw pixels: " \
                        f"{leaking[:5]}"
    assert not off, f"{len(off)} of {len(crops)} crops differ from the redacted frame beyond JPEG error: {off[:5]}"
    print(f"\n{len(crops)} crops, {with_redacted} with redacted pixels, none leaking")


def test_the_snapshot_jpeg_without_video_is_redacted(redacted_run):
    snap, frames, segs, ids = redacted_run["snap"], redacted_run["frames"], redacted_run["segs"], redacted_run["ids"]
    assert snap.ok, snap.error
    seq = snap.result["frame_seq"]
    seg, raw = segs[seq], frames[seq]
    image = _jpeg(base64.b64decode(snap.result["overlay_jpeg"]))
    assert image.shape[:2] == raw.shape[:2]  # 320x240: not downscaled
    hidden = np.isin(seg.class_map, ids)
    assert hidden.sum() > 200, "the snapshot frame shows no redacted object: the test proves nothing"
    redacted = raw.copy()
    redacted[hidden] = FILL
    drawn = Overlay(alpha=0.5, legend=True)  # what the snapshot answer draws when the loop drew no overlay
    want, leak = drawn.annotate(redacted, seg), drawn.annotate(raw, seg)
    assert float(_diff(image, want).mean()) < JPEG_TOLERANCE
    visible = hidden & (_diff(want, leak) > 4 * JPEG_TOLERANCE)
    assert visible.sum() > 100
    assert float(np.mean(_diff(image, leak)[visible] < JPEG_TOLERANCE)) < 0.01
    assert float(np.mean(_diff(image, want)[visible] < 3 * JPEG_TOLERANCE)) > 0.97


def test_a_redacted_class_the_model_does_not_have_is_a_one_line_error(request, tmp_path):
    model = device_model(request)
    for classes, said in ((["disc", "cat"], "'cat'"), ([7], "class id 7")):
        config = parse_config({"model": {"path": str(model)}, "overlay": {"redact_classes": classes},
                               "source": {"uri": "synthetic://?width=64&height=48"}})
        with pytest.raises(EdgeSegError) as err:
            build(config)
        message = str(err.value)
        assert "\n" not in message and "overlay.redact_classes" in message and said in message, message
        assert "disc, box, triangle" in message or "4 classes" in message, message
