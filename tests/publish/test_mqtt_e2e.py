"""Acceptance: the loop on synthetic:// → Publisher → a real Mosquitto → the consumer.

* Every mask decodes with ``pycocotools.mask.decode`` (+ one nearest resize) to exactly the device's
  ``nearest_class_map`` (the model-resolution label map is what travels), and agrees with the device's
  smooth (bilinear, default) ``class_map`` everywhere but a band of about one model pixel around class
  edges; crops carry the device's smooth local class map exactly.
* A 30 s broker outage at >= 10 msg/s, with the device SIGKILLed and restarted during the outage,
  and a SIGKILL while connected: the consumer ends with every produced message exactly once.

"Produced" is the device's outbox audit log: a message is produced when it is committed to the
outbox (the audit row is in the same transaction). Frames still in the publisher's in-memory
queue when the process is killed were never produced; the test reports how many that was.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from broker import Broker
from mqtt_helpers import Collector, device_model, outbox_db, start_device, wait_for
from pycocotools import mask as coco_mask

from edge_seg.cloud.consumer import Consumer, iter_masks
from edge_seg.config import parse_config
from edge_seg.loop.runner import build
from edge_seg.publish.messages import CROP_CONTENT_TYPE, decode
from edge_seg.publish.mqtt import Publisher
from edge_seg.publish.mqtt_config import MqttConfig
from edge_seg.publish.payload_masks import crop_class_map

DATA_TOPICS = ("mask", "crop", "metrics")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2


@pytest.fixture
def e2e_model(request) -> Path:
    """The bundled model when it is there, else a tiny colour model."""
    return device_model(request)


class RecordClassMaps:
    """A loop stage (before the publisher) keeping each frame's class maps, by frame seq: ``maps`` the
    device's (smooth) ``class_map``, ``nearest`` its ``nearest_class_map``."""

    name = "record"

    def __init__(self):
        self.maps: dict[int, np.ndarray] = {}
        self.nearest: dict[int, np.ndarray] = {}
        self.model_size: tuple[int, int] | None = None  # (width, height) of the label map

    def __call__(self, result) -> None:
        seg = result.segmentation
        self.maps[result.frame.seq] = seg.class_map.copy()
        self.nearest[result.frame.seq] = seg.nearest_class_map.copy()
        self.model_size = seg.label_map.shape[::-1]


def edge_band(class_map: np.ndarray, frame_size: tuple[int, int], model_size: tuple[int, int]) -> np.ndarray:
    """bool: frame pixels within one model pixel (+1 px) of a class edge of ``class_map``."""
    edges = cv2.morphologyEx(class_map, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) != 0
    radius = int(np.ceil(max(frame_size[0] / model_size[0], frame_size[1] / model_size[1]))) + 1
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(edges.view(np.uint8), kernel) != 0


def coco_decode(msg) -> np.ndarray:
    """The frame-size class map of a mask message, from pycocotools alone (+ the nearest resize)."""
    width, height = msg.mask_resolution
    labels = np.full((height, width), 255, np.uint8)
    for item in msg.rle:
        binary = coco_mask.decode({"size": [height, width], "counts": item.counts.encode("ascii")})
        assert not (labels[binary == 1] != 255).any(), "two classes claim one pixel"
        labels[binary == 1] = item.id
    assert (labels != 255).all(), "a pixel belongs to no class"
    return cv2.resize(labels, tuple(msg.frame_size), interpolation=cv2.INTER_NEAREST)


def test_every_mask_decodes_to_the_device_class_map(tmp_path, e2e_model):
    broker = Broker(tmp_path / "broker").start()
    raw = Collector(broker.host, broker.port)
    consumer = Consumer(broker.url, tmp_path / "consumer").start()
    try:
        assert consumer.ready.wait(10)
        config = parse_config({"model": {"path": str(e2e_model)},
                               "source": {"uri": "synthetic://?seed=11&width=320&height=240", "fps": 15},
                               "pipeline": {"max_frames": 45},
                               "uncertainty": {"enabled": True, "crops": {"threshold": 0.3, "min_area": 0.0005,
                                                                          "crops_per_minute": 20}}})
        built = build(config)
        record = RecordClassMaps()
        publisher = Publisher(MqttConfig(url=broker.url, policy={"every_n": 1, "max_rate": 100}), device="cam-1",
                              state_dir=tmp_path / "state")
        built.pipeline.stages += [record, publisher]
        stats = built.pipeline.run()  # closes the publisher: flush, offline status
        built.segmenter.close()
        masks = publisher.counts["masks"]
        assert masks == stats.completed == len(record.maps) > 0
        wait_for(lambda: len(raw.on("mask")) >= masks and consumer.stats["by_kind"]["mask"] >= masks, 20,
                 what="all masks at the consumer")
        decoded = [decode(m.payload, m.content_type) for m in raw.on("mask")]
        assert len(decoded) == masks == len(record.maps)
        smooth_differs = 0
        for msg in decoded:
            assert msg.mask_format == "rle" and msg.scale == 1.0
            got, smooth = coco_decode(msg), record.maps[msg.frame_seq]
            assert np.array_equal(got, record.nearest[msg.frame_seq]), f"frame {msg.frame_seq}"
            differ = got != smooth  # the smooth map moves edges by less than a model pixel, nothing else
            assert not (differ & ~edge_band(got, tuple(msg.frame_size), record.model_size)).any()
            assert differ.mean() < 0.05
            smooth_differs += int(differ.any())
        assert smooth_differs > 0  # the device ran the smooth (bilinear) path: the two maps are not the same
        stored = list(iter_masks(tmp_path / "consumer", "cam-1"))
        assert len(stored) == masks
        for item in stored:
            assert np.array_equal(item.class_map(), record.nearest[item.frame_seq])
        for m in raw.on("crop"):  # crops carry the device's exact (smooth) local class map
            crop = decode(m.payload, m.content_type)
            assert m.content_type == CROP_CONTENT_TYPE
            x, y, w, h = crop.bbox
            assert np.array_equal(crop_class_map(crop), record.maps[crop.frame_seq][y:y + h, x:x + w])
        print(f"\n{masks} masks, {len(raw.on('crop'))} crops; publish() ms on the sink thread: "
              f"{publisher.summary()['publish_call_ms']}")
    finally:
        consumer.close()
        raw.close()
        broker.stop()


def produced(state_dir: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{outbox_db(state_dir)}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT msg_id, topic, seq, outcome FROM produced ORDER BY id").fetchall()
    finally:
        db.close()
    return [dict(zip(("msg_id", "topic", "seq", "outcome"), r)) for r in rows]


def consumed(out_dir: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{out_dir / 'consumer.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT msg_id, kind FROM messages").fetchall()
    finally:
        db.close()


def outbox_depth(state_dir: Path) -> int:
    db = sqlite3.connect(f"file:{outbox_db(state_dir)}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()


def check_exactly_once(state_dir: Path, out_dir: Path, consumer: Consumer, record: Path) -> dict:
    made = produced(state_dir)
    assert [p for p in made if p["outcome"]] == [], "the outbox dropped messages (TTL/cap) in the test"
    made_ids = [p["msg_id"] for p in made]
    assert len(made_ids) == len(set(made_ids))
    got = [(msg_id, kind) for msg_id, kind in consumed(out_dir) if kind in DATA_TOPICS]
    got_ids = [msg_id for msg_id, _ in got]
    missing, extra = set(made_ids) - set(got_ids), set(got_ids) - set(made_ids)
    assert not missing, f"{len(missing)} produced messages never reached the consumer"
    assert not extra, f"{len(extra)} messages at the consumer were never produced"
    assert len(got_ids) == len(set(got_ids)) == len(made_ids)  # exactly once after dedupe
    # masks decode to the class map the device recorded for that frame (same seq → same frame: seeded source)
    digests: dict[int, set] = {}
    for line in record.read_text().splitlines():
        item = json.loads(line)
        digests.setdefault(item["seq"], set()).add(item["sha256"])
    assert all(len(v) == 1 for v in digests.values())
    checked = 0
    for mask in iter_masks(out_dir, "dev1"):
        if mask.frame_seq in digests:
            assert hashlib.sha256(mask.class_map().tobytes()).hexdigest() in digests[mask.frame_seq]
            checked += 1
    stats = consumer.stats
    frames = len(record.read_text().splitlines())  # frames the loops handed to their sinks, over all runs
    return {"produced": len(made_ids), "masks_checked": checked, "duplicates_dropped": stats["duplicates"],
            "frames_not_produced": frames - sum(1 for p in made if p["topic"] == "mask"),
            "by_topic": {t: sum(1 for p in made if p["topic"] == t) for t in DATA_TOPICS}}


def test_broker_outage_and_device_sigkill_lose_nothing_and_duplicate_nothing(tmp_path, e2e_model):
    broker = Broker(tmp_path / "broker").start()
    state, out, log = tmp_path / "state", tmp_path / "consumer", tmp_path / "device.log"
    record = tmp_path / "record.jsonl"
    consumer = Consumer(broker.url, out, client_id="e2e-consumer")  # persistent session
    consumer.client.reconnect_delay_set(1, 2)  # back soon after the outage (its default backs off to 30 s)
    consumer.start()
    device = None
    try:
        assert consumer.ready.wait(10)
        device = start_device(broker.url, state, e2e_model, fps=12, record=record, log=log)
        wait_for(lambda: consumer.stats["by_kind"]["mask"] >= 30, 30, what="masks flowing")
        t0 = time.monotonic()
        before = consumer.stats["by_kind"]["mask"]
        time.sleep(3)
        rate = (consumer.stats["by_kind"]["mask"] - before) / (time.monotonic() - t0)
        assert rate >= 10, f"only {rate:.1f} msg/s"

        broker.stop()
        outage = time.monotonic()
        time.sleep(8)
        waiting = outbox_depth(state)
        assert waiting >= 60, f"the outbox holds only {waiting} messages after 8 s of outage"
        device.send_signal(signal.SIGKILL)  # mid-outage: everything unacknowledged is only on disk
        assert device.wait(10) == -signal.SIGKILL
        device = start_device(broker.url, state, e2e_model, fps=12, record=record, log=log)
        time.sleep(max(0.0, 31 - (time.monotonic() - outage)))
        assert outbox_depth(state) > waiting  # the restarted device kept producing into the same outbox
        broker.start()

        wait_for(lambda: outbox_depth(state) < 30, 60, interval=0.2, what="the backlog to drain")
        time.sleep(2)
        device.send_signal(signal.SIGKILL)  # connected this time: in-flight messages die with paho's memory
        device.wait(10)
        connects = log.read_text().count("MQTT connected")
        device = start_device(broker.url, state, e2e_model, fps=12, record=record, log=log)
        wait_for(lambda: log.read_text().count("MQTT connected") > connects, 30, what="the restarted device")
        at_restart = consumer.stats["by_kind"]["mask"]
        wait_for(lambda: consumer.stats["by_kind"]["mask"] >= at_restart + 24, 30, what="its masks")
        device.send_signal(signal.SIGTERM)  # graceful: flush, then offline status
        assert device.wait(20) == 0, log.read_text()[-2000:]
        device = None
        wait_for(lambda: outbox_depth(state) == 0, 10, what="an empty outbox")
        made = {p["msg_id"] for p in produced(state)}
        wait_for(lambda: made <= {m for m, _ in consumed(out)}, 30, interval=0.2, what="every message consumed")
        summary = check_exactly_once(state, out, consumer, record)
        assert summary["masks_checked"] > 300
        print(f"\n{summary}")
    finally:
        if device is not None and device.poll() is None:
            device.kill()
            device.wait()
        consumer.close()
        broker.stop()
    assert "Traceback" not in log.read_text()
    assert os.path.getsize(log) > 0
