"""Crops of uncertain instances (issue 7): low score, overlapping masks, ambiguous class.

A tiny YOLO-seg model (``instance_builders``) outputs known instances on a 128x128 frame (2 frame
pixels per input pixel, full-box masks), so which instances must be cropped is known exactly:

* ``A``, ``G``, ``H``: confident; G and H touch (mask IoU 1/7) but do not overlap strongly: no crop;
* ``B``: score 0.35, in the band between the decode threshold (0.25) and ``low_score`` (0.5);
* ``C``/``D``: different classes (both survive class-aware NMS) with mask IoU 2/3: one crop for both;
* ``E``: class scores 0.80 / 0.75, closer than ``class_margin`` (0.1);
* ``F``: score 0.10, below the decode threshold: never decoded, never cropped.
"""

from __future__ import annotations

import json
import typing

import cv2
import instance_builders as ib
import numpy as np
import pytest
from broker import Broker, requires_mosquitto
from mqtt_helpers import Collector, wait_for
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from edge_seg import Segmenter
from edge_seg.cloud.consumer import Consumer
from edge_seg.cloud.store import Store
from edge_seg.config import parse_config
from edge_seg.loop.runner import build
from edge_seg.manifest import FileEntry, InputSpec, Manifest, OutputSpec, sha256_file
from edge_seg.postprocess.instance_crops import REASONS, InstanceCrop, InstanceCropConfig, mask_ious
from edge_seg.postprocess.uncertainty import Crop, CropConfig, CropExtractor
from edge_seg.publish import messages, schemas
from edge_seg.publish.instance_crop import instance_crop_masks
from edge_seg.segmentation import ModelIdentity, Segmentation

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

FRAME = (128, 128)
CLASSES = ("box", "bag")
CANDIDATES = {  # cx, cy, w, h (input px), class, score, prototype 3 (the whole box)[, other class's score]
    "A": (14, 14, 16, 16, 0, 0.90, 3),
    "B": (50, 14, 14, 14, 1, 0.35, 3),
    "C": (16, 48, 20, 20, 0, 0.88, 3),
    "D": (20, 48, 20, 20, 1, 0.86, 3),
    "E": (50, 50, 12, 12, 0, 0.80, 3, 0.75),
    "F": (40, 30, 8, 8, 1, 0.10, 3),
    "G": (34, 28, 8, 8, 1, 0.92, 3),
    "H": (40, 28, 8, 8, 0, 0.91, 3),
}
EXPECTED = {("B",): ("low_score",), ("C", "D"): ("overlap",), ("E",): ("ambiguous_class",)}


def frame_box(name: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) frame pixels of a candidate (letterbox of a square frame: scale 2, no offset)."""
    cx, cy, w, h = CANDIDATES[name][:4]
    return 2 * (cx - w // 2), 2 * (cy - h // 2), 2 * (cx + w // 2), 2 * (cy + h // 2)


def crop_box(names, padding: float = 0.15) -> tuple[int, int, int, int]:
    """The padded union box of ``names``, (x, y, w, h) in frame pixels."""
    boxes = np.array([frame_box(n) for n in names], float)
    x0, y0, x1, y1 = boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()
    px, py = (x1 - x0) * padding, (y1 - y0) * padding
    lo = np.clip(np.floor([x0 - px, y0 - py]), 0, FRAME[0]).astype(int)
    hi = np.clip(np.ceil([x1 + px, y1 + py]), 0, FRAME[0]).astype(int)
    return int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1])


def local_mask(name: str, bbox) -> np.ndarray:
    """A candidate's full-box mask cut to a crop (x, y, w, h)."""
    x, y, w, h = bbox
    full = np.zeros((FRAME[1], FRAME[0]), bool)
    x0, y0, x1, y1 = frame_box(name)
    full[y0:y1, x0:x1] = True
    return full[y:y + h, x:x + w]


def name_of(inst) -> str:
    """Which candidate an instance (or crop instance) is, by class and score."""
    (name,) = [n for n, c in CANDIDATES.items() if c[4] == inst.class_id and abs(c[5] - inst.score) < 1e-4]
    return name


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance_crops")
    model = ib.build(root / "yolo_seg.tflite", "float32", list(CANDIDATES.values()))
    manifest = Manifest(name="crops", version="1.0.0", task="instance", classes=list(CLASSES),
                        input=InputSpec(width=64, height=64, resize="letterbox"), output=OutputSpec(kind="yolo_seg"),
                        files={"tflite": FileEntry(path=model.name, sha256=sha256_file(model))})
    (root / "manifest.json").write_text(manifest.dump())
    return root


@pytest.fixture(scope="module")
def scene(model_dir):
    yy, xx = np.mgrid[0:FRAME[1], 0:FRAME[0]]
    frame = np.stack([2 * xx, 2 * yy, xx + yy], axis=-1).clip(0, 255).astype(np.uint8)  # smooth: JPEG keeps it
    with Segmenter.create(model=model_dir) as seg:
        return frame, seg.segment(frame)


def _by_members(crops) -> dict[tuple[str, ...], InstanceCrop]:
    return {tuple(sorted(name_of(i) for i in c.instances)): c for c in crops}


def test_decoder_keeps_the_runner_up_class(scene):
    _, result = scene
    found = {name_of(inst): inst for inst in result.instances}
    assert sorted(found) == ["A", "B", "C", "D", "E", "G", "H"]  # F is below the decode threshold
    assert found["E"].runner_up[0] == 1 and found["E"].runner_up[1] == pytest.approx(0.75, abs=1e-5)
    assert found["A"].runner_up[0] == 1 and found["A"].runner_up[1] == pytest.approx(0.02, abs=1e-5)
    assert found["D"].runner_up[0] == 0
    ious = mask_ious(result.instances)
    index = {name_of(inst): k for k, inst in enumerate(result.instances)}
    assert ious[index["C"], index["D"]] == pytest.approx(2 / 3) and ious[index["G"], index["H"]] == pytest.approx(1 / 7)
    assert ious[index["A"], index["B"]] == 0.0


def test_crops_exactly_for_low_score_overlapping_and_ambiguous_instances(scene):
    frame, result = scene
    crops = CropExtractor(CropConfig(max_crops=8)).extract(frame, result, now=3.0, seq=11)
    assert all(isinstance(c, InstanceCrop) for c in crops)
    by_members = _by_members(crops)
    assert set(by_members) == set(EXPECTED)  # never A, G, H (confident) or F (not decoded)
    for members, reasons in EXPECTED.items():
        crop = by_members[members]
        assert crop.reasons == reasons and crop.bbox == crop_box(members) and crop.ts == 3.0 and crop.seq == 11
        x, y, w, h = crop.bbox
        jpeg = cv2.imdecode(np.frombuffer(crop.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert jpeg.shape == (h, w, 3) and np.abs(jpeg.astype(int) - frame[y:y + h, x:x + w]).mean() < 3
        for inst in crop.instances:
            assert inst.reasons == reasons
            assert np.array_equal(inst.mask, local_mask(name_of(inst), crop.bbox))
    # most uncertain first: E (1 - 0.05), C/D (IoU 2/3), B (1 - 0.35)
    assert [c.score for c in crops] == pytest.approx([0.95, 2 / 3, 0.65], abs=1e-5)
    assert [tuple(sorted(name_of(i) for i in c.instances)) for c in crops] == [("E",), ("C", "D"), ("B",)]
    top2 = CropExtractor(CropConfig(max_crops=2)).extract(frame, result, now=3.0)
    assert [c.reasons for c in top2] == [("ambiguous_class",), ("overlap",)]


def test_a_crop_lists_every_instance_it_shows(scene):
    """Wide padding brings the confident G and H into B's crop: there as context, with no reasons."""
    frame, result = scene
    crops = CropExtractor(CropConfig(padding=1.0, max_crops=8, instances={"overlap_iou": 1.0, "class_margin": 0.0})
                          ).extract(frame, result, now=0.0)
    (crop,) = crops
    assert crop.reasons == ("low_score",)
    shown = {name_of(i): i for i in crop.instances}
    assert shown["B"].reasons == ("low_score",)
    assert sorted(shown) == ["B", "G", "H"]
    assert shown["G"].reasons == shown["H"].reasons == () and shown["G"].mask.any() and shown["H"].mask.any()
    for name, inst in shown.items():
        assert np.array_equal(inst.mask, local_mask(name, crop.bbox)), name


@pytest.mark.parametrize(("settings", "missing"), [
    ({"low_score": 0.0}, ("B",)),  # 0: off
    ({"low_score": 0.3}, ("B",)),  # 0.35 is not below 0.3
    ({"overlap_iou": 1.0}, ("C", "D")),  # off
    ({"overlap_iou": 0.7}, ("C", "D")),  # 2/3 is not above 0.7
    ({"class_margin": 0.0}, ("E",)),  # off
    ({"class_margin": 0.05}, ("E",)),  # a gap of 0.05 is not below 0.05
])
def test_each_test_has_its_threshold(scene, settings, missing):
    frame, result = scene
    crops = CropExtractor(CropConfig(max_crops=8, instances=settings)).extract(frame, result, now=0.0)
    assert set(_by_members(crops)) == set(EXPECTED) - {missing}


def test_touching_instances_are_flagged_only_below_their_iou(scene):
    frame, result = scene
    crops = CropExtractor(CropConfig(max_crops=8, instances={"overlap_iou": 0.1})).extract(frame, result, now=0.0)
    assert set(_by_members(crops)) == set(EXPECTED) | {("G", "H")}
    assert _by_members(crops)[("G", "H")].score == pytest.approx(1 / 7)


def test_small_instances_are_not_flagged(scene):
    frame, result = scene
    # B covers 28x28 = 784 px = 0.048 of the frame, E 576 px = 0.035, C and D 1600 px = 0.098
    crops = CropExtractor(CropConfig(max_crops=8, min_area=0.04)).extract(frame, result, now=0.0)
    assert set(_by_members(crops)) == {("B",), ("C", "D")}


def _semantic_uncertain() -> tuple[np.ndarray, Segmentation]:
    conf = np.full((32, 32), 0.99, np.float32)
    conf[4:12, 4:12] = 0.3
    seg = Segmentation(label_map=np.zeros((32, 32), np.uint8), confidence_map=conf, frame_size=FRAME,
                       classes=CLASSES, palette=((0, 0, 0), (255, 255, 255)), model=ModelIdentity("s", "1", "0" * 64))
    return np.zeros((FRAME[1], FRAME[0], 3), np.uint8), seg


def test_the_budget_holds_for_instance_crops_and_is_shared_with_semantic_ones(scene):
    frame, result = scene
    extractor = CropExtractor(CropConfig(max_crops=8, crops_per_minute=4))
    assert len(extractor.extract(frame, result, now=0.0)) == 3
    (crop,) = extractor.extract(frame, result, now=10.0)  # one left: the most uncertain
    assert crop.reasons == ("ambiguous_class",)
    assert extractor.extract(frame, result, now=59.9) == []
    assert extractor.stats["skipped_budget"] == 1
    assert len(extractor.extract(frame, result, now=60.5)) == 3  # the first three left the window
    sem_frame, semantic = _semantic_uncertain()
    assert extractor.extract(sem_frame, semantic, now=61.0) == []  # the window is full whatever the kind
    (sem,) = extractor.extract(sem_frame, semantic, now=70.5)  # the t=10 crop left it
    assert isinstance(sem, Crop)

    sizes = [len(c.jpeg) for c in CropExtractor(CropConfig(max_crops=8)).extract(frame, result, now=0.0)]
    limit = sizes[0] + min(sizes[1:]) - 1  # room for the first crop only
    tight = CropExtractor(CropConfig(max_crops=8, bytes_per_minute=limit))
    crops = tight.extract(frame, result, now=0.0)
    assert [len(c.jpeg) for c in crops] == [sizes[0]] and tight.stats["dropped_budget"] == 2
    assert tight.stats["bytes"] == sizes[0] <= limit


def test_instance_crop_message_round_trip_with_pycocotools(scene):
    frame, result = scene
    crops = CropExtractor(CropConfig(max_crops=8)).extract(frame, result, now=7.25, seq=42)
    model = ModelIdentity("crops", "1.0.0", "ab" * 32)
    for crop in crops:
        enc = messages.encode_crop(crop, device="cam-1", seq=5, model=model, frame_size=FRAME, classes=CLASSES)
        assert enc.topic == "crop" and enc.content_type == messages.CROP_CONTENT_TYPE
        header, jpeg = enc.payload.split(b"\n", 1)
        raw = json.loads(header)
        assert raw["schema"] == "edge_seg.instance_crop/v1" and jpeg == crop.jpeg
        for msg in (messages.decode(enc.payload, enc.content_type), messages.decode(enc.payload)):  # MQTT 5 / 3.1.1
            assert isinstance(msg, messages.InstanceCropMessage)
            assert msg.bbox == list(crop.bbox) and msg.frame_seq == 42 and msg.ts == 7.25 and msg.jpeg == crop.jpeg
            assert msg.reasons == list(crop.reasons) and msg.score == pytest.approx(crop.score, abs=1e-6)
            x, y, w, h = crop.bbox
            for item, inst, ours in zip(msg.instances, crop.instances, instance_crop_masks(msg), strict=True):
                coco = coco_mask.decode({"size": [h, w], "counts": item.counts.encode("ascii")}).astype(bool)
                assert np.array_equal(coco, inst.mask) and np.array_equal(ours, inst.mask)
                assert item.class_id == inst.class_id and item.name == CLASSES[inst.class_id]
                assert item.score == pytest.approx(inst.score, abs=1e-6) and item.reasons == list(inst.reasons)
                assert item.runner_up.class_id == inst.runner_up[0]
                assert item.runner_up.score == pytest.approx(inst.runner_up[1], abs=1e-6)


def _instance_crop_payload(scene) -> tuple[dict, bytes]:
    frame, result = scene
    crop = CropExtractor(CropConfig()).extract(frame, result, now=1.0)[1]  # C and D
    enc = messages.encode_crop(crop, device="cam-1", seq=1, model=result.model, frame_size=FRAME, classes=CLASSES)
    header, jpeg = enc.payload.split(b"\n", 1)
    return json.loads(header), jpeg


@pytest.mark.parametrize(("change", "error"), [
    (lambda h: h["instances"][0].update(counts="0"), "RLE runs cover"),
    (lambda h: h["instances"][1].update(class_id=2), "class id 2"),
    (lambda h: h["instances"][0].update(reasons=["blurry"]), "instances.0.reasons.0"),
    (lambda h: h.update(reasons=["overlap", "low_score"]), "are not those of the instances"),
    (lambda h: h.update(instances=[]), "instances"),
    (lambda h: h.update(jpeg_bytes=h["jpeg_bytes"] + 1), "jpeg_bytes"),
    (lambda h: h.update(mask_resolution=[h["mask_resolution"][0] + 1, h["mask_resolution"][1]]),
     "mask_resolution is not the bbox size"),
    (lambda h: h["instances"][0].update(runner_up={"class_id": 1, "score": 1.5}), "runner_up.score"),
])
def test_bad_instance_crops_are_refused(scene, change, error):
    head, jpeg = _instance_crop_payload(scene)
    messages.decode(json.dumps(head).encode() + b"\n" + jpeg)  # the untouched payload is fine
    change(head)
    with pytest.raises(messages.MessageError, match=error) as err:
        messages.decode(json.dumps(head).encode() + b"\n" + jpeg, messages.CROP_CONTENT_TYPE)
    assert str(err.value).startswith("bad instance crop message")


def test_an_unframed_instance_crop_is_refused(scene):
    head, _ = _instance_crop_payload(scene)
    with pytest.raises(messages.MessageError, match="framed as"):
        messages.decode(json.dumps(head).encode())


def test_wire_reasons_are_the_extractor_reasons():
    assert typing.get_args(schemas.Reason) == REASONS
    with pytest.raises(ValueError, match="extra"):
        InstanceCropConfig(low_scor=0.4)


def test_the_store_queues_instance_crops_as_coco(scene, tmp_path):
    frame, result = scene
    crops = CropExtractor(CropConfig()).extract(frame, result, now=1.0, seq=3)
    encoded = [messages.encode_crop(c, device="cam-1", seq=i, model=result.model, frame_size=FRAME, classes=CLASSES)
               for i, c in enumerate(crops)]
    store = Store(tmp_path)
    for enc in encoded:
        assert store.store(messages.decode(enc.payload, enc.content_type))
    assert not store.store(messages.decode(encoded[0].payload, encoded[0].content_type))  # duplicate
    store.close()
    _check_queue(tmp_path, {enc.msg_id: crop for enc, crop in zip(encoded, crops)})
    lines = [json.loads(line) for line in (tmp_path / "messages.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["crop"] * 3
    assert all("jpeg" not in line and "counts" not in line["instances"][0] for line in lines)


def _check_queue(out, crops_by_msg_id: dict) -> None:
    """The labelling queue holds each crop's JPEG and one COCO annotation per instance, pixel-equal."""
    coco = COCO(str(out / "labelling" / "annotations.json"))
    assert len(coco.imgs) == len(crops_by_msg_id)
    for image_id, image in coco.imgs.items():
        crop = crops_by_msg_id[image["msg_id"]]
        assert (out / "labelling" / image["file_name"]).read_bytes() == crop.jpeg
        assert image["kind"] == "instance" and image["reasons"] == list(crop.reasons)
        assert image["frame_bbox"] == list(crop.bbox) and (image["width"], image["height"]) == crop.bbox[2:]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(crop.instances)
        for ann, inst in zip(anns, crop.instances, strict=True):
            assert coco.cats[ann["category_id"]]["name"] == CLASSES[inst.class_id]
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
            assert ann["area"] == int(inst.mask.sum()) and ann["iscrowd"] == 0
            assert ann["attributes"]["reasons"] == list(inst.reasons)
            assert ann["score"] == pytest.approx(inst.score, abs=1e-6)


class RecordCrops:
    """A loop stage keeping every crop the device made."""

    name = "record_crops"

    def __init__(self):
        self.crops: list = []

    def __call__(self, result) -> None:
        self.crops += result.extras.get("crops") or []


@requires_mosquitto
def test_instance_crops_reach_the_labelling_queue_through_mosquitto(model_dir, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    raw = Collector(broker.host, broker.port)
    consumer = Consumer(broker.url, tmp_path / "consumer").start()
    try:
        assert consumer.ready.wait(10)
        config = parse_config({
            "device": {"name": "cam-7", "state_dir": str(tmp_path / "state")},
            "model": {"path": str(model_dir)},
            "source": {"uri": "synthetic://?seed=3&width=128&height=128", "fps": 15},
            "pipeline": {"max_frames": 6},
            "uncertainty": {"enabled": True, "crops": {"max_crops": 8, "crops_per_minute": 2}},
            "output": {"jsonl": str(tmp_path / "frames.jsonl")},
            "mqtt": {"url": broker.url}})
        built = build(config)  # the runner's own stages: CropStage → ... → Publisher
        record = RecordCrops()
        built.pipeline.stages.append(record)
        stats = built.pipeline.run()
        built.segmenter.close()
        assert stats.completed == 6
        # the budget: 2 crops in the minute, the two most uncertain of the first frame
        assert [c.reasons for c in record.crops] == [("ambiguous_class",), ("overlap",)]
        frames = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
        assert [c["reasons"] for f in frames for c in f.get("crops", [])] == [["ambiguous_class"], ["overlap"]]
        wait_for(lambda: consumer.stats["by_kind"]["crop"] >= 2, 20, what="2 crops at the consumer")
        consumer.store.flush(force=True)
        received = [messages.decode(m.payload, m.content_type) for m in raw.on("crop")]
        assert [type(m) for m in received] == [messages.InstanceCropMessage] * 2
        assert all(m.device == "cam-7" and m.model.name == "crops" for m in received)
        by_jpeg = {c.jpeg: c for c in record.crops}
        _check_queue(tmp_path / "consumer", {m.msg_id: by_jpeg[m.jpeg] for m in received})
    finally:
        consumer.close()
        raw.close()
        broker.stop()
