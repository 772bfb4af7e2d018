"""What one message may cost the consumer: frame and pixel limits checked before decoding, instances
decoded at their box, crop file names that two devices cannot share. No broker needed."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
from message_builders import MODEL, make_crop
from message_builders import instances_payload as _instances_payload
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from edge_seg.cloud.store import Store
from edge_seg.maskio import read_palette_png
from edge_seg.publish import messages as m
from edge_seg.publish import payload_masks as pm


def _random_masks(frame: tuple[int, int], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    width, height = frame
    masks = []
    for k in range(n):
        mask = np.zeros((height, width), bool)
        if k == 0:
            mask[:, :] = True  # the whole frame
        elif k == 1:
            mask[max(0, height - 3):, 2:5] = True  # runs that cross columns (bottom of one, top of next)
            mask[:2, 3:6] = True
        elif k == 2:
            pass  # empty
        else:
            w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            mask[y:y + h, x:x + w] = rng.random((h, w)) > 0.5
        masks.append(mask)
    return masks


@pytest.mark.parametrize("frame", [(53, 31), (7, 1), (1, 9), (6, 6)])
def test_box_decode_is_pixel_equal_to_pycocotools(frame):
    masks = _random_masks(frame, 12, seed=sum(frame))
    msg = m.decode(_instances_payload(frame, masks))
    boxes = list(pm.instance_boxes(msg))
    assert len(boxes) == len(masks)
    for box, truth, item in zip(boxes, masks, msg.instances, strict=True):
        standard = coco_mask.decode({"size": [frame[1], frame[0]], "counts": item.counts.encode()}).astype(bool)
        assert np.array_equal(standard, truth)
        pasted = np.zeros_like(truth)
        if box is not None:
            x, y = box.origin
            h, w = box.mask.shape
            assert box.mask.any() and box.mask[0].any() and box.mask[:, 0].any()  # the tight box
            assert box.mask[-1].any() and box.mask[:, -1].any()
            pasted[y:y + h, x:x + w] = box.mask
        assert np.array_equal(pasted, truth)


def test_valid_instances_store_the_same_frame_size_id_png(tmp_path):
    frame = (64, 40)
    masks = _random_masks(frame, 9, seed=2)
    store = Store(tmp_path)
    assert store.store(m.decode(_instances_payload(frame, masks)))
    store.close()
    (png,) = (tmp_path / "masks" / "cam-1").glob("*_instances.png")
    expected = np.zeros((frame[1], frame[0]), np.uint8)
    for k in reversed(range(len(masks))):  # the highest score (first) wins overlaps
        expected[masks[k]] = k + 1
    assert np.array_equal(read_palette_png(png), expected)


def test_huge_frame_times_many_instances_is_refused_before_decoding(tmp_path):
    payload = _instances_payload((16384, 16384), n_full=40)
    assert len(payload) < 8000  # a small message...
    msg = m.decode(payload)
    store = Store(tmp_path)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(m.MessageError, match="limit"):
            pm.check_limits(msg)
        with pytest.raises(m.MessageError, match="limit"):
            store.store(msg)  # the store checks too: nothing reaches the decoder unchecked
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()
    assert elapsed < 1.0 and peak < 20 * 2**20, (elapsed, peak)  # ...that would have cost ~11 GB and minutes
    assert not (tmp_path / "masks").exists()


def test_frame_and_mask_sizes_are_bounded():
    seg_payload = json.loads(_instances_payload((8, 8), n_full=1))
    seg_payload["frame_size"] = [16384, 16384]
    seg_payload["instances"] = []
    with pytest.raises(m.MessageError, match="limit"):
        pm.check_limits(m.decode(json.dumps(seg_payload).encode()))  # no instances, but the frame alone is too big
    side = 16384  # a mask message whose one class covers a 16384x16384 mask: a dozen bytes of RLE
    counts = coco_mask.frPyObjects([{"size": [side, side], "counts": [side * side]}], side, side)[0]["counts"]
    mask = {"schema": m.MASK_SCHEMA, "device": "cam-1", "msg_id": "big", "seq": 1, "ts": 1.0,
            "model": {"name": "x", "version": "1", "sha256": "ab"}, "frame_size": [640, 480], "classes": ["a"],
            "mask_format": "rle", "mask_resolution": [side, side], "rle": [{"id": 0, "counts": counts.decode()}]}
    msg = m.decode(json.dumps(mask).encode())
    with pytest.raises(m.MessageError, match="limit"):
        pm.check_limits(msg)
    with pytest.raises(m.MessageError, match="limit"):
        pm.class_map_from_mask(msg)
    assert side * side > pm.MAX_FRAME_PIXELS


def test_crop_names_of_two_devices_never_collide(tmp_path):
    crops = [make_crop(0), make_crop(1, bbox=(300, 200, 96, 80))]
    assert crops[0].jpeg != crops[1].jpeg
    encs = [m.encode_crop(crops[0], device="cam", seq=1, model=MODEL, frame_size=(1280, 720)),
            m.encode_crop(crops[1], device="cam_000000001", seq=2, model=MODEL, frame_size=(1280, 720))]
    msgs = []
    for enc, msg_id in zip(encs, ["000000002_x", "x"]):
        head, _, jpeg = enc.payload.partition(b"\n")
        obj = json.loads(head)
        obj["msg_id"] = msg_id
        msgs.append(m.decode(json.dumps(obj).encode() + b"\n" + jpeg, enc.content_type))
    store = Store(tmp_path)
    assert all(store.store(msg) for msg in msgs)
    store.close()
    coco = COCO(str(tmp_path / "labelling" / "annotations.json"))
    names = {image["msg_id"]: image["file_name"] for image in coco.imgs.values()}
    assert len(set(names.values())) == 2, names
    for msg, crop in zip(msgs, crops):
        assert (tmp_path / "labelling" / names[msg.msg_id]).read_bytes() == crop.jpeg
        assert msg.device in names[msg.msg_id]  # still readable: device, seq and msg_id in the name
    assert len(list((tmp_path / "labelling" / "images").rglob("*.jpg"))) == 2


def test_many_class_masks_decode_pixel_equal_and_gaps_are_refused():
    from edge_seg.publish import rle

    rng = np.random.default_rng(7)
    labels = rng.permutation(np.arange(37 * 29) % 256).reshape(37, 29).astype(np.uint8)
    labels[:, 3:5] = 9  # long runs crossing columns
    rles = rle.encode_classes(labels)
    assert len(rles) == 256
    assert np.array_equal(rle.decode_classes(rles, 37, 29), labels)
    for item in rles[:5]:
        standard = coco_mask.decode({"size": [37, 29], "counts": item["counts"].encode()})
        assert np.array_equal(standard.astype(bool), labels == item["id"])
    with pytest.raises(rle.RLEError, match="uncovered"):
        rle.decode_classes(rles[1:], 37, 29)
    with pytest.raises(rle.RLEError, match="overlaps"):
        rle.decode_classes([*rles, {**rles[0], "id": 3}], 37, 29)
