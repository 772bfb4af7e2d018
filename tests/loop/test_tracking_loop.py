"""The tracked clip through the whole loop: the same track ids in the JSONL and in the MQTT messages."""

from __future__ import annotations

import json
import sqlite3

import cv2
import pytest
from broker import Broker
from mqtt_helpers import Collector, wait_for

from edge_seg.cloud.consumer import Consumer
from edge_seg.config import parse_config
from edge_seg.demo.instance_clips import render_instance_clip
from edge_seg.loop.runner import build
from edge_seg.publish.messages import decode
from edge_seg.segmenter import DEFAULT_MODEL

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
FRAMES = 40


def test_published_track_ids_are_those_of_the_jsonl(tmp_path):
    images = tmp_path / "clip"
    images.mkdir()
    for t, scene in enumerate(render_instance_clip(1, FRAMES)):
        assert cv2.imwrite(str(images / f"{t:04d}.png"), scene.image)
    broker = Broker(tmp_path / "broker").start()
    raw = Collector(broker.host, broker.port)
    consumer = Consumer(broker.url, tmp_path / "consumer").start()
    try:
        assert consumer.ready.wait(10)
        config = parse_config({
            "device": {"name": "cam-1", "state_dir": str(tmp_path / "state")},
            "model": {"path": str(DEFAULT_MODEL.parent / "instance")},
            "source": {"uri": f"images://{images}", "loop": False, "fps": 20},
            "tracking": {"enabled": True},
            "output": {"jsonl": str(tmp_path / "out.jsonl")},
            "mqtt": {"url": broker.url, "policy": {"every_n": 1, "max_rate": 100}}})
        built = build(config)
        stats = built.pipeline.run()
        built.segmenter.close()
        assert stats.completed == FRAMES
        jsonl = {r["seq"]: [i.get("track_id") for i in r["instances"]]
                 for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
        assert len(jsonl) == FRAMES
        assert len({t for ids in jsonl.values() for t in ids if t is not None}) >= 5
        wait_for(lambda: len(raw.on("mask")) >= built.publisher.counts["masks"] > 0, 20, what="the instances messages")
        published = {}
        for m in raw.on("mask"):
            msg = decode(m.payload, m.content_type)
            published[msg.frame_seq] = [i.track_id for i in msg.instances]
        assert len(published) >= 0.9 * FRAMES  # the rate limit (100/s) may skip one now and then
        assert published == {seq: jsonl[seq] for seq in published}
        wait_for(lambda: consumer.stats["by_kind"]["mask"] >= len(published), 20, what="all at the consumer")
        consumer.close()
        db = sqlite3.connect(tmp_path / "consumer" / "consumer.sqlite")
        rows = db.execute("SELECT frame_seq, track_id FROM instance_tracks ORDER BY rowid").fetchall()
        db.close()
        stored: dict[int, list[int]] = {}
        for seq, track in rows:
            stored.setdefault(seq, []).append(track)
        assert stored == {seq: [t for t in jsonl[seq] if t is not None] for seq in published if any(jsonl[seq])}
    finally:
        consumer.close()
        raw.close()
        broker.stop()
