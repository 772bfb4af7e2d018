"""Several cameras on one device (issue 17): one model, per-camera topics and state, fairness, a camera down.

Real parts: the bundled models, a real Mosquitto, the real consumer; the sources are synthetic, file and image
directory ones (no camera hardware here).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import cv2
import pytest
from broker import Broker
from conftest import write_scene_clip
from mqtt_helpers import Collector, wait_for
from prometheus_client.parser import text_string_to_metric_families

from edge_seg.cloud.consumer import Consumer
from edge_seg.config import parse_config
from edge_seg.demo.clips import render_clip
from edge_seg.loop.runner import build
from edge_seg.publish.messages import decode
from edge_seg.segmenter import DEFAULT_MODEL, Segmenter
from edge_seg.service.notify import Notifier, Watchdog
from edge_seg.sources import SourceUnavailable, open_source
from edge_seg.sources.reconnect import ResilientSource

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _running(built):
    thread = threading.Thread(target=built.pipeline.run, name="test-loop", daemon=True)
    thread.start()
    return thread


def _stop(built, thread) -> None:
    built.pipeline.stop()
    thread.join(20)
    built.segmenter.close()
    assert not thread.is_alive()


def test_three_cameras_publish_on_their_own_topics_and_the_consumer_stores_each(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i, scene in enumerate(render_clip(2, 6, (160, 96))):
        cv2.imwrite(str(images / f"{i:03d}.png"), scene.image)
    clip = write_scene_clip(tmp_path / "clip.mp4", 3, 20)
    broker = Broker(tmp_path / "broker").start()
    raw = Collector(broker.host, broker.port, "edge_seg/#")
    consumer = Consumer(broker.url, tmp_path / "consumer").start()
    try:
        assert consumer.ready.wait(10)
        built = build(parse_config({
            "device": {"name": "box", "state_dir": str(tmp_path / "state")},
            "sources": [{"name": "street", "uri": "synthetic://?width=320&height=180", "fps": 8},
                        {"name": "door", "uri": f"file://{clip}", "fps": 8},
                        {"name": "yard", "uri": f"images://{images}", "fps": 8, "publish": {"every_n": 1}}],
            "output": {"jsonl": str(tmp_path / "out.jsonl")},
            "mqtt": {"url": broker.url, "status_interval_s": 0.5, "policy": {"every_n": 1, "max_rate": 100}}}))
        thread = _running(built)
        names = ("street", "door", "yard")
        wait_for(lambda: {m.topic.split("/")[2] for m in raw.on("mask")} >= set(names), 30, what="masks of each")
        wait_for(lambda: any("cameras" in json.loads(m.payload).get("extra", {}) for m in raw.on("status")), 10,
                 what="a status listing the cameras")
        _stop(built, thread)
        built.publisher.close()
        masks = raw.on("mask")
        for message in masks:  # every message carries the camera of its topic, and decodes as a v1 mask
            prefix, device, camera, kind = message.topic.split("/")
            assert (prefix, device, kind) == ("edge_seg", "box", "mask") and camera in names
            decoded = decode(message.payload, message.content_type)
            assert decoded.camera == camera and decoded.schema_ == "edge_seg.mask/v1"
        status = json.loads([m for m in raw.on("status") if "cameras" in json.loads(m.payload)["extra"]][-1].payload)
        assert set(status["extra"]["cameras"]) == set(names)
        for name in names:  # one JSONL file per camera, each record naming its camera
            records = [json.loads(line) for line in (tmp_path / f"out-{name}.jsonl").read_text().splitlines()]
            assert records and {r["camera"] for r in records} == {name}
        def stored() -> dict:
            db = sqlite3.connect(tmp_path / "consumer" / "consumer.sqlite")
            try:
                return dict(db.execute("SELECT camera, COUNT(*) FROM messages WHERE kind = 'mask' GROUP BY camera"))
            finally:
                db.close()

        wait_for(lambda: sum(stored().values()) >= len(masks), 20, what="the consumer storing every mask")
        assert set(stored()) == set(names) and sum(stored().values()) == len(masks)
        gaps = json.loads((tmp_path / "consumer" / "devices.json").read_text())["box"].get("gaps", {})
        assert not any(gaps.get(f"{name}/mask") for name in names)  # each camera's seq counts on its own
    finally:
        consumer.close()
        raw.close()
        broker.stop()


class _Gate:
    """Kills a camera: while ``down`` its source delivers nothing and cannot be reopened."""

    def __init__(self):
        self.down = threading.Event()

    def factory(self, uri: str, fps: float):
        def open_():
            if self.down.is_set():
                raise SourceUnavailable(f"{uri}: unplugged (test)")
            return _Gated(open_source(uri, fps=fps), self.down)
        return open_


class _Gated:
    def __init__(self, inner, down):
        self.inner, self.down, self.uri = inner, down, inner.uri

    def read(self, timeout):
        if self.down.is_set():
            time.sleep(timeout)
            return None
        return self.inner.read(timeout)

    def close(self):
        self.inner.close()


def _segmented(built) -> dict[str, int]:
    return {cam.name: cam.stats.segmented for cam in built.pipeline.cameras}


WINDOW_S = 3.0


def _rates(built, seconds: float) -> dict[str, float]:
    """Each camera's segmented frames per second over the next ``seconds``."""
    before, t0 = _segmented(built), time.monotonic()
    time.sleep(seconds)
    return {k: (v - before[k]) / (time.monotonic() - t0) for k, v in _segmented(built).items()}


def test_a_camera_down_leaves_the_others_running_shows_in_metrics_and_status_and_recovers(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    raw = Collector(broker.host, broker.port, "edge_seg/+/status")
    uri = "synthetic://?width=320&height=180"
    built = build(parse_config({
        "device": {"name": "box", "state_dir": str(tmp_path / "state")},
        "sources": [{"name": n, "uri": uri, "fps": 10, "deadline_s": 0.5, "backoff_cap_s": 0.5} for n in "abc"],
        "mqtt": {"url": broker.url, "status_interval_s": 0.3}}))
    gate, cam_b = _Gate(), built.pipeline.cameras[1]
    old = cam_b.source
    cam_b.source = ResilientSource(gate.factory(uri, 10), deadline=0.5, backoff_cap=0.5, on_event=old._on_event)
    old.close()
    watchdog = Watchdog(Notifier(None), built.pipeline.liveness, interval=0.3)
    thread = _running(built)
    try:
        wait_for(lambda: min(_segmented(built).values()) >= 5, 20, what="every camera segmenting")
        rate_before = _rates(built, WINDOW_S)
        watchdog.start()
        gate.down.set()  # camera b is unplugged for 4 s
        wait_for(lambda: 'edge_seg_source_up{camera="b"} 0.0' in built.metrics.exposition().decode(), 5,
                 what="camera b's source_up going to 0")
        down = _rates(built, WINDOW_S)
        exposition = built.metrics.exposition().decode()
        statuses = [json.loads(m.payload) for m in raw.on("status")]
        assert 'edge_seg_source_up{camera="a"} 1.0' in exposition
        families = {f.name: f for f in text_string_to_metric_families(exposition)}  # one valid exposition
        assert {s.labels["camera"] for s in families["edge_seg_fps"].samples} == {"a", "b", "c"}
        assert [s.labels for s in families["edge_seg_outbox_messages"].samples] == [{}]  # the device's own
        assert any(s["extra"].get("cameras", {}).get("b", {}).get("state") == "reconnecting" for s in statuses)
        assert any("b: " in (s.get("degraded") or "") for s in statuses)
        gate.down.clear()
        wait_for(lambda: 'edge_seg_source_up{camera="b"} 1.0' in built.metrics.exposition().decode(), 10,
                 what="camera b recovering")
        back = _segmented(built)["b"]
        wait_for(lambda: _segmented(built)["b"] >= back + 5, 10, what="camera b segmenting again")
    finally:
        watchdog.stop()
        _stop(built, thread)
        built.publisher.close()
        raw.close()
        broker.stop()
    assert down["b"] < 0.5 and built.pipeline.stats.reconnects >= 1
    for name in "ac":  # the others keep their frame rate within 10 % (and a frame of counting granularity)
        assert abs(down[name] - rate_before[name]) <= 0.1 * rate_before[name] + 1 / WINDOW_S, (rate_before, down)
    assert watchdog.pings >= 8 and watchdog.withheld == 0  # the systemd watchdog kept being pinged


def test_fast_cameras_share_a_loaded_loop_evenly_and_the_slow_one_loses_no_frame(tmp_path):
    uri = "synthetic://?width=160&height=96"
    rates = {"f1": 30, "f2": 30, "f3": 30, "slow": 5}
    built = build(parse_config({"sources": [{"name": n, "uri": uri, "fps": r} for n, r in rates.items()]}))
    built.pipeline.after_frame = lambda: time.sleep(0.025)  # a slow model: at most ~40 FPS for 95 offered
    thread = _running(built)
    time.sleep(5)
    _stop(built, thread)
    cams = {cam.name: cam.stats for cam in built.pipeline.cameras}
    fast = [cams[n].segmented for n in ("f1", "f2", "f3")]
    assert sum(fast) + cams["slow"].segmented < 0.7 * sum(c.captured for c in cams.values())  # it was loaded
    assert max(fast) - min(fast) <= 0.1 * min(fast), fast
    # the slow camera's frames are all segmented but for the odd one its paced capture delivered twice in a row
    # under load (overwritten in its slot; strictly never skipped: the scheduler's unit test)
    assert cams["slow"].segmented >= 0.9 * cams["slow"].captured - 1


class _Models:
    """A stage recording, in processing order, which model segmented which camera's frame."""

    name = "record"

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def __call__(self, result) -> None:
        self.seen.append((result.camera, result.segmentation.model.name))


def test_a_model_swap_applies_to_every_camera_at_one_frame_boundary(tmp_path):
    uri = "synthetic://?width=160&height=96"
    built = build(parse_config({"sources": [{"name": n, "uri": uri, "fps": 15} for n in ("a", "b", "c")]}))
    record = _Models()
    built.pipeline.stages.append(record)
    old = built.segmenter.manifest.name
    thread = _running(built)
    new = Segmenter.create(model=DEFAULT_MODEL.parent / "instance")
    try:
        wait_for(lambda: len(record.seen) >= 9, 20, what="frames of the first model")
        assert built.pipeline.swap_segmenter(new).wait(5)
        wait_for(lambda: len({c for c, m in record.seen if m == new.manifest.name}) == 3, 20,
                 what="every camera on the new model")
    finally:
        built.pipeline.stop()
        thread.join(20)
        built.segmenter.close()
        new.close()
    models = [m for _, m in record.seen]
    switch = models.index(new.manifest.name)
    assert set(models[:switch]) == {old} and set(models[switch:]) == {new.manifest.name}  # one boundary
    assert {c for c, _ in record.seen[:switch]} == {"a", "b", "c"}
