"""Versioned MQTT messages: round trips, the payload-cap fallback, and rejection of malformed payloads."""

from __future__ import annotations

import base64
import json
import random

import cv2
import numpy as np
import pytest
from message_builders import FRAME, MODEL, make_crop, make_seg
from pycocotools import mask as coco_mask

from edge_seg.demo.scenes import CLASSES, PALETTE
from edge_seg.publish import messages as m
from edge_seg.publish import payload_masks as pm
from edge_seg.publish.rle import RLEError, check_counts, decode_classes, encode_classes
from edge_seg.segmentation import Segmentation


# ------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_mask_round_trip_with_pycocotools(seed):
    seg = make_seg(seed)
    enc = m.encode_mask(seg, device="cam-1", seq=5, ts=1700000000.25)
    assert enc.topic == "mask" and enc.content_type == "application/json" and enc.seq == 5
    raw = json.loads(enc.payload)  # plain UTF-8 JSON, as mosquitto_sub / Node-RED see it
    assert raw["schema"] == m.MASK_SCHEMA and raw["msg_id"] == enc.msg_id and raw["frame_size"] == [1280, 720]
    assert raw["mask_resolution"] == [192, 108] and raw["scale"] == 1.0
    assert raw["model"] == {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256}
    # pycocotools alone, per class, then the same nearest resize as Segmentation.class_map
    w, h = raw["mask_resolution"]
    labels = np.zeros((h, w), np.uint8)
    for item in raw["rle"]:
        binary = coco_mask.decode({"size": [h, w], "counts": item["counts"]})
        labels[binary == 1] = item["id"]
        assert item["name"] == CLASSES[item["id"]]
    assert np.array_equal(cv2.resize(labels, FRAME, interpolation=cv2.INTER_NEAREST), seg.class_map)
    msg = m.decode(enc.payload, enc.content_type)
    assert isinstance(msg, m.MaskMessage) and msg.device == "cam-1" and msg.seq == 5 and msg.ts == 1700000000.25
    assert np.array_equal(pm.class_map_from_mask(msg), seg.class_map)
    assert msg.area_fractions["background"] == pytest.approx(seg.area_fractions["background"], abs=1e-6)
    assert msg.timings_ms == {"infer": 7.5, "post": 0.8}
    assert msg.mean_uncertainty == pytest.approx(1 - seg.mean_confidence, abs=1e-6)


def test_frame_resolution_label_map_and_single_class():
    seg = make_seg(3, frame=(320, 240), model_size=(320, 240))
    msg = m.decode(m.encode_mask(seg, device="d", seq=0, ts=1.0).payload)
    assert msg.mask_resolution == [320, 240] and np.array_equal(pm.class_map_from_mask(msg), seg.class_map)
    flat = Segmentation(np.full((20, 30), 2, np.uint8), np.ones((20, 30), np.float32), (60, 40), CLASSES, PALETTE,
                        MODEL)
    msg = m.decode(m.encode_mask(flat, device="d", seq=1, ts=1.0).payload)
    assert [item.id for item in msg.rle] == [2] and np.array_equal(pm.class_map_from_mask(msg), flat.class_map)


def test_rle_equals_pycocotools_encode():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 60, 2)
        labels = rng.integers(0, rng.integers(1, 6), (h, w)).astype(np.uint8)
        ours = encode_classes(labels)
        for item in ours:
            ref = coco_mask.encode(np.asfortranarray((labels == item["id"]).astype(np.uint8)))
            assert item["counts"] == ref["counts"].decode()
        assert [item["id"] for item in ours] == sorted(set(labels.ravel().tolist()))
        assert np.array_equal(decode_classes(ours, h, w), labels)


def test_png_mask_round_trip():
    seg = make_seg(4)
    enc = m.encode_mask(seg, device="cam-1", seq=9, ts=2.0, fmt="png")
    msg = m.decode(enc.payload)
    assert msg.mask_format == "png" and msg.rle is None and msg.scale == 1.0
    assert np.array_equal(pm.class_map_from_mask(msg), seg.class_map)


def test_cap_fallback_rle_then_png_then_downscale():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (128, 128)).astype(np.uint8)  # noise: RLE is far bigger than PNG
    labels[:, 64:] = 0
    seg = Segmentation(labels, np.ones(labels.shape, np.float32), (512, 512), CLASSES, PALETTE, MODEL)
    rle_size = len(m.encode_mask(seg, device="d", seq=0, ts=1.0, max_bytes=10**7).payload)
    png_size = len(m.encode_mask(seg, device="d", seq=0, ts=1.0, fmt="png").payload)
    assert png_size < rle_size
    enc = m.encode_mask(seg, device="d", seq=0, ts=1.0, max_bytes=png_size + 10)
    msg = m.decode(enc.payload)
    assert msg.mask_format == "png" and msg.scale == 1.0 and np.array_equal(pm.class_map_from_mask(msg),
                                                                            seg.class_map)
    enc = m.encode_mask(seg, device="d", seq=0, ts=1.0, max_bytes=png_size // 2)
    msg = m.decode(enc.payload)
    assert len(enc.payload) <= png_size // 2 and msg.mask_format == "png" and msg.scale < 1.0
    assert msg.mask_resolution[0] < 128 and pm.class_map_from_mask(msg).shape == (512, 512)
    with pytest.raises(m.MessageError, match="cannot fit"):
        m.encode_mask(seg, device="d", seq=0, ts=1.0, max_bytes=200)


def test_crop_round_trip_binary_framing():
    crop = make_crop()
    enc = m.encode_crop(crop, device="cam-1", seq=3, model=MODEL, frame_size=FRAME, classes=CLASSES)
    assert enc.topic == "crop" and enc.content_type == m.CROP_CONTENT_TYPE
    header, jpeg = enc.payload.split(b"\n", 1)
    assert json.loads(header)["bbox"] == [100, 50, 64, 48] and jpeg == crop.jpeg
    for content_type in (m.CROP_CONTENT_TYPE, None):  # MQTT 3.1.1 has no content type: sniffed
        msg = m.decode(enc.payload, content_type)
        assert isinstance(msg, m.CropMessage) and msg.jpeg == crop.jpeg and msg.frame_seq == 17
        assert msg.score == pytest.approx(0.42) and msg.classes == list(CLASSES)
        assert np.array_equal(pm.crop_class_map(msg), crop.class_map)
    with pytest.raises(m.MessageError, match="bytes follow the header"):
        m.decode(enc.payload[:-5], m.CROP_CONTENT_TYPE)


def test_status_metrics_result_round_trip():
    enc = m.encode_status(device="cam-1", seq=1, online=True, model=MODEL, fps=14.96, uptime_s=12.5,
                          source_state="up", outbox_depth=3, extra={"temp_c": 51})
    msg = m.decode(enc.payload)
    assert isinstance(msg, m.StatusMessage) and msg.online and msg.model.sha256 == MODEL.sha256
    assert msg.fps == pytest.approx(14.96) and msg.outbox_depth == 3 and msg.extra == {"temp_c": 51}
    offline = m.decode(m.encode_status(device="cam-1", seq=2, online=False).payload)
    assert offline.online is False and offline.model is None
    metrics = m.decode(m.encode_metrics(device="cam-1", seq=3, summary={"fps": 15.0, "drops": 2}).payload)
    assert isinstance(metrics, m.MetricsMessage) and metrics.summary["drops"] == 2
    res = m.decode(m.encode_command_result(device="cam-1", seq=4, command_id="c1", ok=False, error="nope").payload)
    assert isinstance(res, m.CommandResultMessage) and res.command_id == "c1" and res.error == "nope"
    assert m.encode_command_result(device="cam-1", seq=5, command_id=None, ok=True).topic == "cmd/result"


def test_msg_ids_unique_and_time_sortable():
    ids = [m.new_msg_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_encode_rejects_bad_device_ids():
    for device in ("", "a/b", "../x", "+", "x" * 65, None):
        with pytest.raises(m.MessageError, match="device id"):
            m.encode_status(device=device, seq=0, online=True)
    with pytest.raises(m.MessageError, match="seq"):
        m.encode_status(device="d", seq=-1, online=True)


def test_decode_command():
    cmd = m.decode_command(b'{"schema":"edge_seg.cmd/v1","id":"c-1","cmd":"set_policy","args":{"every_n":5}}')
    assert cmd.id == "c-1" and cmd.cmd == "set_policy" and cmd.args == {"every_n": 5} and cmd.sig is None
    assert m.decode_command(b'{"id":"x","cmd":"ping"}').args == {}
    with pytest.raises(m.MessageError, match="unknown command 'explode'") as err:
        m.decode_command(b'{"id":"c-2","cmd":"explode"}')
    assert err.value.command_id == "c-2"
    with pytest.raises(m.MessageError, match="args") as err:
        m.decode_command(b'{"id":"c-3","cmd":"ping","args":[1]}')
    assert err.value.command_id == "c-3"
    with pytest.raises(m.MessageError, match="Extra inputs"):
        m.decode_command(b'{"id":"c-4","cmd":"ping","rm":"-rf"}')


# ------------------------------------------------------------------------------------------ malformed
def _valid_mask() -> dict:
    return json.loads(m.encode_mask(make_seg(0, frame=(128, 96), model_size=(64, 48)), device="d", seq=1,
                                    ts=1.0).payload)


def _b(obj) -> bytes:
    return json.dumps(obj).encode()


def _with(**changes) -> bytes:
    obj = _valid_mask()
    obj.update(changes)
    return _b(obj)


BAD_PAYLOADS = {
    "empty": b"",
    "random bytes": bytes(range(256)) * 3,
    "not utf-8": b'{"schema": "\xff"}',
    "truncated json": m.encode_status(device="d", seq=0, online=True).payload[:-7],
    "json array": b"[1, 2]",
    "json null": b"null",
    "no schema": b'{"device": "d"}',
    "wrong schema": _with(schema="edge_seg.mask/v2"),
    "schema wrong type": _with(schema=7),
    "seq as string": _with(seq="5"),
    "seq negative": _with(seq=-1),
    "seq bool": _with(seq=True),
    "ts NaN": json.dumps({**_valid_mask(), "ts": float("nan")}).encode(),
    "ts overflow": _b(_valid_mask()).replace(b'"ts": 1.0', b'"ts": 1e999'),
    "frame size zero": _with(frame_size=[0, 96]),
    "frame size 3 values": _with(frame_size=[1, 2, 3]),
    "huge device": _with(device="d" * 1_000_000),
    "device path": _with(device="../../etc"),
    "msg_id path": _with(msg_id="a/b"),
    "classes not list": _with(classes="background"),
    "rle counts garbage": _with(rle=[{"id": 0, "counts": "~~~~"}]),
    "rle counts short": _with(rle=[{"id": 0, "counts": "00"}]),
    "rle counts end mid-run": _with(rle=[{"id": 0, "counts": "P"}]),
    "rle counts unicode": _with(rle=[{"id": 0, "counts": "é"}]),
    "rle class out of range": _with(rle=[{"id": 9, "counts": _valid_mask()["rle"][0]["counts"]}]),
    "rle empty": _with(rle=[]),
    "png bad base64": _with(mask_format="png", png="!!!", rle=None),
    "png wrong size": _with(mask_format="png", rle=None, png=base64.b64encode(
        m.rle.encode_png(np.zeros((5, 5), np.uint8), PALETTE)).decode()),
    "deep nesting": b'{"a":' * 20000 + b"1" + b"}" * 20000,
    "huge int": b'{"seq": ' + b"9" * 5000 + b"}",
    "crop no jpeg": b'{"schema":"edge_seg.crop/v1"}\n',
    "crop json body": _b({"schema": m.CROP_SCHEMA}),
}
for _key in ("device", "msg_id", "seq", "ts", "model", "frame_size", "classes", "mask_format", "mask_resolution"):
    BAD_PAYLOADS[f"missing {_key}"] = _b({k: v for k, v in _valid_mask().items() if k != _key})


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_malformed_payloads_raise_message_error(name):
    with pytest.raises(m.MessageError) as err:
        m.decode(BAD_PAYLOADS[name])
    text = str(err.value)
    assert "\n" not in text and len(text) < 400 and text.startswith("bad ")


def test_overlapping_rles_rejected_when_building_the_map():
    obj = _valid_mask()
    obj["rle"] = [obj["rle"][0], {**obj["rle"][0], "id": 3}]
    msg = m.decode(_b(obj))  # each RLE on its own is well formed
    with pytest.raises(m.MessageError, match="overlaps"):
        pm.class_map_from_mask(msg)


def test_check_counts_guards_pycocotools():
    check_counts(encode_classes(np.zeros((4, 4), np.uint8))[0]["counts"], 4, 4)
    for counts in ("", "0000", "o", "0R", "P" * 6 + "0", "\x00", "4"):
        with pytest.raises(RLEError):
            check_counts(counts, 4, 4)


def _mutations(seed_payloads: list[bytes], rng: random.Random):
    alphabet = b'{}[]":,0123456789.-eEtrufalsn \\\n\xff'
    for _ in range(4000):
        base = bytearray(rng.choice(seed_payloads))
        op = rng.random()
        if op < 0.3 and base:
            for _ in range(rng.randint(1, 8)):
                base[rng.randrange(len(base))] = rng.randrange(256)
        elif op < 0.5:
            base = base[: rng.randrange(len(base) + 1)]
        elif op < 0.7:
            pos = rng.randrange(len(base) + 1)
            base[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        elif op < 0.85:
            base = bytearray(rng.randbytes(rng.randint(0, 300)))
        else:
            obj = json.loads(rng.choice(seed_payloads).split(b"\n", 1)[0])
            key = rng.choice(list(obj))
            obj[key] = rng.choice([None, 0, -1, 1.5, "x" * rng.randint(0, 3000), [], {}, [1, 2], True, {"a": [1]}])
            base = bytearray(json.dumps(obj).encode())
        yield bytes(base)


def test_fuzz_decode_and_decode_command_only_raise_message_error():
    rng = random.Random(1234)
    seeds = [_b(_valid_mask()),
             m.encode_mask(make_seg(1, frame=(64, 48), model_size=(32, 24)), device="d", seq=1, ts=1.0,
                           fmt="png").payload,
             m.encode_crop(make_crop(bbox=(0, 0, 16, 16)), device="d", seq=2, model=MODEL, frame_size=FRAME).payload,
             m.encode_status(device="d", seq=3, online=True, model=MODEL, fps=1.0).payload,
             m.encode_command_result(device="d", seq=4, command_id="x", ok=True, result={"a": 1}).payload,
             b'{"id":"c1","cmd":"set_policy","args":{"every_n":3,"max_rate":2.5}}']
    outcomes = {"ok": 0, "error": 0}
    for payload in _mutations(seeds, rng):
        for content_type in (None, m.CROP_CONTENT_TYPE) if payload[:1] == b"{" else (None,):
            try:
                msg = m.decode(payload, content_type)
                if isinstance(msg, m.MaskMessage):
                    pm.class_map_from_mask(msg)
                elif isinstance(msg, m.CropMessage):
                    pm.crop_class_map(msg)
                outcomes["ok"] += 1
            except m.MessageError:
                outcomes["error"] += 1
        try:
            m.decode_command(payload)
        except m.MessageError:
            pass
    assert outcomes["error"] > 1000 and outcomes["ok"] > 10
