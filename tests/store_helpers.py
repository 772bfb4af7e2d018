"""Helpers for tests of the consumer's stores: one mixed batch of device messages, and a Postgres reader."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import psycopg
from consumer_helpers import Device
from message_builders import MODEL, instances_payload, make_crop, make_seg

from edge_seg.postprocess.zones import ZoneEvent
from edge_seg.publish import messages as m
from edge_seg.publish.zone_messages import encode_event

FRAME = (1280, 720)
CLASSES = ("background", "disc", "box", "triangle")


@dataclass
class Batch:
    """What ``send_batch`` sent: the msg_ids that must be stored, the class maps of the masks, the crops."""

    stored: set[str] = field(default_factory=set)
    class_maps: dict[str, np.ndarray] = field(default_factory=dict)
    crops: dict[str, object] = field(default_factory=dict)
    sent: int = 0
    bad: int = 0
    duplicates: int = 0
    snapshot: bytes = b""  # the zone event's JPEG snapshot


def tracked_instances(msg_id: str, device: str, seq: int) -> bytes:
    """An instances message (640x480, 2 instances) whose instances carry track ids 7 and 8."""
    masks = [np.zeros((480, 640), bool) for _ in range(2)]
    masks[0][10:60, 20:90] = True
    masks[1][200:260, 300:400] = True
    obj = json.loads(instances_payload((640, 480), masks, msg_id=msg_id, device=device, seq=seq))
    for k, item in enumerate(obj["instances"]):
        item["track_id"] = 7 + k
    return json.dumps(obj).encode()


def send_batch(dev: Device) -> Batch:
    """Masks (RLE and PNG), instances with tracks, crops, status, metrics, an event, a duplicate, 3 bad ones."""
    batch = Batch()
    segs = [make_seg(seed) for seed in range(3)]
    sends: list[tuple[str, m.Encoded]] = []
    for i, seg in enumerate(segs):
        enc = m.encode_mask(seg, device="cam-1", seq=i + 1, ts=100.0 + i)
        sends.append(("cam-1", enc))
        batch.class_maps[enc.msg_id] = seg.class_map
    enc = m.encode_mask(segs[0], device="cam-2", seq=1, ts=1.0, fmt="png")
    sends.append(("cam-2", enc))
    batch.class_maps[enc.msg_id] = segs[0].class_map
    for i, bbox in enumerate([(100, 50, 64, 48), (300, 200, 96, 80)]):
        crop = make_crop(i, bbox=bbox)
        enc = m.encode_crop(crop, device="cam-1", seq=1 + i, model=MODEL, frame_size=FRAME, classes=CLASSES)
        sends.append(("cam-1", enc))
        batch.crops[enc.msg_id] = crop
    sends.append(("cam-1", m.encode_status(device="cam-1", seq=1, online=True, model=MODEL, fps=14.9,
                                           outbox_depth=2, degraded="source down since 12:00")))
    sends.append(("cam-1", m.encode_metrics(device="cam-1", seq=1, summary={"fps": 15, "drift_js": 0.125})))
    event = ZoneEvent("driveway", "disc", "enter", (7,), 12, 5.0, 0.25)
    snapshot = base64.b64encode(make_crop(3).jpeg).decode("ascii")
    sends.append(("cam-1", encode_event(event, device="cam-1", seq=1, snapshot=(snapshot, (64, 48)))))
    batch.snapshot = make_crop(3).jpeg
    for device, enc in sends:
        dev.send(device, enc)
        batch.stored.add(enc.msg_id)
    dev.send("cam-3", topic="mask", payload=tracked_instances("inst-1", "cam-3", 1))
    batch.stored.add("inst-1")
    dev.send("cam-1", sends[0][1])  # the same msg_id again: a duplicate
    dev.send("cam-1", topic="mask", payload=b"\x00garbage\xff")
    dev.send("cam-1", topic="status", payload=b'{"schema":"edge_seg.status/v1"}')
    dev.send("cam-9", sends[1][1])  # cam-1's message on cam-9's topic
    batch.sent, batch.bad, batch.duplicates = len(sends) + 5, 3, 1
    return batch


def pg_rows(url: str, sql: str, params=None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as con:
        return con.execute(sql, params).fetchall()
