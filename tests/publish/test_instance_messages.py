"""Instance mask messages: one COCO RLE per instance, decoded by pycocotools to pixel-equal masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from edge_seg.postprocess.instance import label_map
from edge_seg.publish import messages
from edge_seg.publish import payload_masks as pm
from edge_seg.publish.messages import InstancesMessage, MessageError
from edge_seg.segmentation import Instance, ModelIdentity, Segmentation

MODEL = ModelIdentity("yolo", "1.0.0", "ab" * 32)
FRAME = (97, 61)


def _segmentation(n: int = 5, seed: int = 0) -> Segmentation:
    rng = np.random.default_rng(seed)
    instances = []
    for k in range(n):
        w, h = int(rng.integers(5, 40)), int(rng.integers(5, 30))
        x, y = int(rng.integers(0, FRAME[0] - w)), int(rng.integers(0, FRAME[1] - h))
        mask = rng.random((h, w)) > 0.4
        bbox = (x + 0.3, y + 0.2, w - 0.5, h - 0.4)
        instances.append(Instance(int(rng.integers(0, 3)), round(0.95 - 0.1 * k, 3), bbox, mask, (x, y)))
    labels, conf = label_map(instances, FRAME)
    return Segmentation(labels, conf, FRAME, ("a", "b", "c"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)), MODEL,
                        timings={"infer": 3.0}, instances=tuple(instances))


def test_instances_round_trip_pixel_equal_with_pycocotools():
    seg = _segmentation()
    enc = messages.encode_instances(seg, device="cam-1", seq=4, ts=12.5, frame_seq=9)
    assert enc.topic == "mask" and enc.content_type == messages.JSON_CONTENT_TYPE
    msg = messages.decode(enc.payload, enc.content_type)
    assert isinstance(msg, InstancesMessage) and msg.dropped == 0 and msg.frame_seq == 9
    assert len(msg.instances) == len(seg.instances)
    raw = json.loads(enc.payload)
    h, w = FRAME[1], FRAME[0]
    for item, inst, ours in zip(raw["instances"], seg.instances, pm.instance_masks(msg), strict=True):
        decoded = coco_mask.decode({"size": [h, w], "counts": item["counts"]}).astype(bool)
        truth = inst.frame_mask(FRAME)
        assert np.array_equal(decoded, truth) and np.array_equal(ours, truth)
        assert item["class_id"] == inst.class_id and item["name"] == seg.classes[inst.class_id]
        assert item["score"] == pytest.approx(inst.score) and item["bbox"] == pytest.approx(list(inst.bbox), abs=0.01)


def test_payload_cap_drops_lowest_scores():
    seg = _segmentation(8)
    full = messages.encode_instances(seg, device="cam-1", seq=1, ts=1.0)
    capped = messages.encode_instances(seg, device="cam-1", seq=2, ts=1.0, max_bytes=len(full.payload) - 1)
    msg = messages.decode(capped.payload)
    assert msg.dropped >= 1 and len(msg.instances) == 8 - msg.dropped
    assert [i.score for i in msg.instances] == [i.score for i in seg.instances[: len(msg.instances)]]
    with pytest.raises(MessageError, match="cannot fit"):
        messages.encode_instances(seg, device="cam-1", seq=3, ts=1.0, max_bytes=100)


def test_bad_instances_messages_are_refused():
    seg = _segmentation(2)
    obj = json.loads(messages.encode_instances(seg, device="cam-1", seq=1, ts=1.0).payload)
    bad = json.loads(json.dumps(obj))
    bad["instances"][0]["counts"] = "0"  # covers 0 pixels
    with pytest.raises(MessageError, match="instances message"):
        messages.decode(json.dumps(bad).encode())
    bad = json.loads(json.dumps(obj))
    bad["instances"][0]["class_id"] = 7
    with pytest.raises(MessageError, match="class id 7"):
        messages.decode(json.dumps(bad).encode())
    semantic = Segmentation(seg.label_map, seg.confidence_map, FRAME, seg.classes, seg.palette, MODEL)
    with pytest.raises(MessageError, match="instance model"):
        messages.encode_instances(semantic, device="cam-1", seq=1, ts=1.0)


def test_the_consumer_stores_instances_as_an_instance_id_png(tmp_path):
    from edge_seg.cloud.store import Store
    from edge_seg.maskio import read_palette_png

    seg = _segmentation(n=4, seed=3)
    enc = messages.encode_instances(seg, device="cam-1", seq=7, ts=1.0)
    store = Store(tmp_path)
    assert store.store(messages.decode(enc.payload, enc.content_type))
    assert not store.store(messages.decode(enc.payload, enc.content_type))  # duplicate msg_id
    store.close()
    (png,) = (tmp_path / "masks" / "cam-1").glob("*_instances.png")
    ids = read_palette_png(png)
    expected = np.zeros((FRAME[1], FRAME[0]), np.uint8)
    for k in reversed(range(len(seg.instances))):  # the highest score (first) wins overlaps
        expected[seg.instances[k].frame_mask(FRAME)] = k + 1
    assert np.array_equal(ids, expected)
    record = json.loads((tmp_path / "messages.jsonl").read_text().splitlines()[0])
    assert record["kind"] == "mask" and "counts" not in record["instances"][0]
