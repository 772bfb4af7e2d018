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
JPEG_TOLERANCE = 12  # per-pixel difference (largest channel) a JPEG keeps most pixels of these scenes under
SAME_IMAGE = 20  # mean of that difference over a whole crop or snapshot: a small JPEG of an edge rings more


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
        if float(_diff(image, expected).mean()) >= SAME_IMAGE:
            off.append((crop.frame_seq, crop.bbox))
        if not hidden.any():
            continue
        with_redacted += 1
        visible = hidden & (_diff(raw, expected) > 4 * JPEG_TOLERANCE)  # object pixels the fill really changes
        if visible.sum() < 20:
            continue
        # the raw object's pixels are far from the fill; in the JPEG they must be near the fill, not the object
        shows_raw = float(np.mean(_diff(image, raw)[visible] < JPEG_TOLERANCE))
        near_fill = float(np.mean(_diff(image, expected)[visible]))  # mean error from the fill (JPEG ringing)
        if shows_raw > 0.01 or near_fill > JPEG_TOLERANCE:
            leaking.append((crop.frame_seq, crop.bbox, round(shows_raw, 3), round(near_fill, 1), int(visible.sum())))
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
    assert float(_diff(image, want).mean()) < SAME_IMAGE
    visible = hidden & (_diff(want, leak) > 4 * JPEG_TOLERANCE)  # where redacting changes the overlay a lot
    assert visible.sum() > 100
    assert float(np.mean(_diff(image, leak)[visible] < JPEG_TOLERANCE)) < 0.01  # the raw object does not show
    assert float(np.mean(_diff(image, want)[visible])) < JPEG_TOLERANCE  # the fill does


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


# --- the loop without a broker: every stage, in any order, sees redacted pixels only ------------------

class SeenByStage:
    """A loop stage keeping what it was handed: the frame, the segmented image, the raw image, the class map."""

    name = "seen"

    def __init__(self):
        self.results: list = []

    def __call__(self, result) -> None:
        self.results.append((result.frame.image.copy(), result.image.copy(), result.raw_image.copy(),
                             result.segmentation.class_map.copy(), result.extras.get("crops")))


def _colour_frames(directory, count: int = 4) -> np.ndarray:
    """Images for the tiny colour model: red left, blue right (red, class 0, is the class to hide)."""
    directory.mkdir()
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, :70] = (0, 0, 255)
    frame[:, 70:] = (255, 0, 0)
    frame[40:80, 60:90] = (0, 128, 128)  # a region the model cannot decide: crops come from here
    for i in range(count):
        cv2.imwrite(str(directory / f"{i:03d}.png"), frame)
    return frame


class PreviewJpegs:
    """A loop stage (after the preview's) fetching the preview server's snapshot.jpg of each frame."""

    name = "fetch_preview"

    def __init__(self, built):
        self.built = built
        self.images: list[np.ndarray] = []

    def __call__(self, result) -> None:
        import urllib.request

        with urllib.request.urlopen(self.built.preview.url + "snapshot.jpg", timeout=10) as response:
            self.images.append(_jpeg(response.read()))


@pytest.mark.parametrize("roi", [None, [20, 10, 120, 100]])
def test_every_stage_the_preview_and_the_video_get_redacted_pixels_whatever_the_order(tiny_models, tmp_path, roi):
    raw = _colour_frames(tmp_path / "imgs")
    video = tmp_path / "out.avi"
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": f"images://{tmp_path / 'imgs'}", "loop": False},
                           "pipeline": {"roi": roi},
                           "overlay": {"enabled": False, "redact_classes": [0]},
                           "uncertainty": {"enabled": True, "crops": {"threshold": 0.2, "min_area": 0.0,
                                                                                "crops_per_minute": 100}},
                           "preview": {"enabled": True, "port": 0},
                           "output": {"video": str(video)}})
    built = build(config)
    first, last, preview = SeenByStage(), SeenByStage(), PreviewJpegs(built)
    crops = next(s for s in built.pipeline.stages if s.name == "crops")
    built.pipeline.stages.remove(crops)
    built.pipeline.stages[:0] = [first, crops]  # the crops before anything else, the overlay stage or not
    built.pipeline.stages += [last, preview]
    stats = built.pipeline.run()
    built.segmenter.close()
    assert stats.completed == 4 and len(first.results) == len(last.results) == 4
    x, y, w, h = roi or (0, 0, 160, 120)
    for seen in (first, last):
        for frame, image, raw_image, class_map, found in seen.results:
            hidden = class_map == 0  # "red"
            assert hidden.mean() > 0.2
            assert (image[hidden] == 0).all() and np.array_equal(image[~hidden], raw[y:y + h, x:x + w][~hidden])
            assert np.array_equal(frame[y:y + h, x:x + w], image)
            assert np.array_equal(raw_image, raw[y:y + h, x:x + w])  # the model's own view stays on the device
            if roi is not None:
                assert np.array_equal(frame[:y], raw[:y])  # outside the ROI there is no class map to redact by
            if seen is first:  # before the crop stage
                continue
            assert found, "no crop: the test proves nothing about them"
            for crop in found:
                cx, cy, cw, ch = crop.bbox
                decoded = cv2.imdecode(np.frombuffer(crop.jpeg, np.uint8), cv2.IMREAD_COLOR)
                mask = crop.class_map == 0
                assert mask.any() and float(_diff(decoded, image[cy:cy + ch, cx:cx + cw])[mask].mean()) < JPEG_TOLERANCE
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (ok := capture.read())[0]:
        frames.append(ok[1])
    capture.release()
    assert len(frames) == len(preview.images) == 4
    for written in frames + preview.images:
        region = written[y:y + h, x:x + w]
        hidden = first.results[0][3] == 0
        assert float(_diff(region, first.results[0][1])[hidden].mean()) < JPEG_TOLERANCE
        assert float(np.mean(_diff(region, raw[y:y + h, x:x + w])[hidden] < JPEG_TOLERANCE)) < 0.01


def test_a_frame_that_cannot_be_redacted_reaches_no_stage(tiny_models, tmp_path, caplog):
    """A model swapped in without the redacted class (hot reload): its frames go nowhere, logged once."""
    from edge_seg.loop.pipeline import Pipeline
    from edge_seg.segmenter import Segmenter
    from edge_seg.sources import open_source
    from edge_seg.view.redact import Redactor

    _colour_frames(tmp_path / "imgs")
    seen = SeenByStage()
    with Segmenter.create(model=tiny_models["colour_probs_uint8"]) as segmenter:
        pipeline = Pipeline(open_source(f"images://{tmp_path / 'imgs'}", loop=False), segmenter, stages=[seen],
                            redactor=Redactor(["person"]))
        stats = pipeline.run()
    assert stats.segmented == 4 and seen.results == [] and stats.sink_errors == 4
    failures = [r for r in caplog.records if "redacting frame" in r.getMessage()]
    assert len(failures) == 1 and "'person'" in failures[0].getMessage()


# --- instance crops: every instance of a redacted class is hidden, also where another instance covers it ---

INSTANCE_CANDIDATES = [  # cx, cy, w, h (input px), class, score, prototype 3 (the whole box); 64x64 input
    (16, 48, 20, 20, 0, 0.88, 3),  # a box ...
    (20, 48, 20, 20, 1, 0.86, 3),  # ... and a bag under it (mask IoU 2/3): one "overlap" crop of both
    (50, 14, 14, 14, 1, 0.35, 3),  # a bag of low score: a "low_score" crop
    (14, 14, 16, 16, 0, 0.90, 3),  # a confident box: no crop
]


@pytest.fixture(scope="module")
def bag_model(tmp_path_factory):
    import instance_builders as ib

    from edge_seg.manifest import FileEntry, InputSpec, Manifest, OutputSpec, sha256_file

    root = tmp_path_factory.mktemp("redact_instances")
    model = ib.build(root / "yolo_seg.tflite", "float32", INSTANCE_CANDIDATES)
    manifest = Manifest(name="bags", version="1.0.0", task="instance", classes=["box", "bag"],
                        input=InputSpec(width=64, height=64, resize="letterbox"), output=OutputSpec(kind="yolo_seg"),
                        files={"tflite": FileEntry(path=model.name, sha256=sha256_file(model))})
    (root / "manifest.json").write_text(manifest.dump())
    return root


def test_published_instance_crops_hide_every_instance_of_a_redacted_class(bag_model, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    raw = Collector(broker.host, broker.port, "edge_seg/cam-i/#")
    try:
        config = parse_config({
            "device": {"name": "cam-i", "state_dir": str(tmp_path / "state")},
            "model": {"path": str(bag_model)},
            "source": {"uri": "synthetic://?seed=3&width=128&height=128", "fps": 15},
            "pipeline": {"max_frames": 5},
            "overlay": {"enabled": False, "redact_classes": ["bag"]},
            "uncertainty": {"enabled": True, "crops": {"max_crops": 8, "crops_per_minute": 100}},
            "mqtt": {"url": broker.url, "policy": {"every_n": 1, "max_rate": 100}}})
        built = build(config)
        source = built.pipeline.source = RawFrames(built.pipeline.source)
        stats = built.pipeline.run()  # closes the publisher: flushed
        built.segmenter.close()
        assert stats.completed == 5
        received = wait_for(lambda: len(raw.on("crop")) >= 10 and raw.on("crop"), 20, what="2 crops a frame")
    finally:
        raw.close()
        broker.stop()
    bags_seen = 0
    for message in received:
        crop = decode(message.payload, message.content_type)
        x, y, w, h = crop.bbox
        image, frame = _jpeg(crop.jpeg), source.frames[crop.frame_seq][y:y + h, x:x + w]
        hidden = np.zeros((h, w), bool)
        for item in crop.instances:
            if item.class_id == 1:  # a bag, wherever it is: under the box too
                hidden |= coco_mask.decode({"size": [h, w], "counts": item.counts.encode("ascii")}).astype(bool)
        assert hidden.any(), f"crop {crop.reasons} of frame {crop.frame_seq} shows no bag"
        bags_seen += 1
        expected = frame.copy()
        expected[hidden] = FILL
        visible = hidden & (_diff(frame, expected) > 4 * JPEG_TOLERANCE)
        assert visible.sum() > 50
        assert float(np.mean(_diff(image, frame)[visible] < JPEG_TOLERANCE)) < 0.01, "the raw bag shows"
        assert float(np.mean(_diff(image, expected)[visible])) < JPEG_TOLERANCE
        assert float(_diff(image, expected)[~hidden].mean()) < SAME_IMAGE  # the rest keeps the frame's pixels
    assert bags_seen == len(received) >= 10
