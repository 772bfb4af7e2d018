"""Zones end to end on a real Mosquitto: the scripted clip through the real zone stage and Publisher.

Events go through the outbox across a broker outage, the consumer stores each once, the retained
zone state is re-sent on reconnect and survives a broker restart, Home Assistant discovery
payloads use only documented keys, the Prometheus gauges follow the zones.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import cv2
import numpy as np
import pytest
from mqtt_helpers import Collector, publisher_factory, run_broker, wait_for
from zone_clips import EXPECTED, LENGTH, ZONES, segmentation_at

from edge_seg.cloud.consumer import Consumer
from edge_seg.cloud.events import iter_events
from edge_seg.loop.metrics import Metrics
from edge_seg.loop.pipeline import FrameResult
from edge_seg.loop.zone_stage import ZoneStage
from edge_seg.postprocess.zones import ZoneTracker
from edge_seg.publish.discovery import discovery_configs, zone_discovery_configs
from edge_seg.publish.messages import EventMessage, ZoneStateMessage, decode
from edge_seg.sources.base import Frame

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
broker = pytest.fixture(run_broker, name="broker")
make_publisher = pytest.fixture(publisher_factory, name="make_publisher")

# Home Assistant's documented MQTT discovery keys (full names), from the configuration variables of
# https://www.home-assistant.io/integrations/binary_sensor.mqtt/ and
# https://www.home-assistant.io/integrations/sensor.mqtt/ ; the device map's keys from the "device"
# variable on the same pages (and https://www.home-assistant.io/integrations/mqtt/#discovery-messages).
HA_COMMON = {"availability", "availability_mode", "availability_template", "availability_topic", "device",
             "default_entity_id", "enabled_by_default", "encoding", "entity_category", "entity_picture",
             "expire_after", "force_update", "icon", "json_attributes_template", "json_attributes_topic", "name",
             "object_id", "payload_available", "payload_not_available", "platform", "qos", "state_topic",
             "unique_id", "value_template", "device_class"}
HA_KEYS = {"binary_sensor": HA_COMMON | {"off_delay", "payload_off", "payload_on"},
           "sensor": HA_COMMON | {"last_reset_value_template", "options", "state_class",
                                  "suggested_display_precision", "unit_of_measurement"}}
HA_DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
                  "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device"}
HA_BINARY_DEVICE_CLASSES = {"occupancy", "presence", "motion", "moving"}  # the ones a zone could be


def _check_ha(topic: str, payload: bytes) -> dict:
    component = topic.split("/")[1]
    body = json.loads(payload)
    unknown = set(body) - HA_KEYS[component]
    assert not unknown, f"{topic}: keys Home Assistant does not document: {unknown}"
    assert not set(body["device"]) - HA_DEVICE_KEYS and body["unique_id"] and body["state_topic"]
    if component == "binary_sensor":
        assert body["device_class"] in HA_BINARY_DEVICE_CLASSES
    return body


def test_discovery_payloads_use_only_documented_home_assistant_keys():
    base = "edge_seg/cam1"
    configs = discovery_configs("cam1", base, ["road", "car"], "m 1.0") + \
        zone_discovery_configs("cam1", base, ZONES, counting=True, model="m 1.0")
    semantic = zone_discovery_configs("cam1", base, ZONES[:1], counting=False)
    for topic, payload in configs + semantic:
        _check_ha(topic, payload)
    topics = {t for t, _ in configs}
    assert {"homeassistant/binary_sensor/cam1_zone_left/config", "homeassistant/binary_sensor/cam1_zone_right/config",
            "homeassistant/sensor/cam1_zone_right_car/config"} <= topics
    car = json.loads(dict(configs)["homeassistant/sensor/cam1_zone_right_car/config"])
    assert car["state_topic"] == f"{base}/zone/right/state" and ".count" in car["value_template"]
    area = json.loads(dict(semantic)["homeassistant/sensor/cam1_zone_left_person/config"])
    assert area["unit_of_measurement"] == "%" and ".area" in area["value_template"]


def test_each_camera_of_a_device_gets_its_own_zone_entities_on_its_own_topics():
    base = "edge_seg/box"
    front = zone_discovery_configs("box", base, ZONES, counting=True, camera="front")
    yard = zone_discovery_configs("box", base, ZONES, counting=True, camera="yard")
    for topic, payload in front + yard:
        body = _check_ha(topic, payload)
        assert body["availability_topic"] == f"{base}/status"  # the device's, not the camera's
    bodies = {t: json.loads(p) for t, p in front + yard}
    assert len(bodies) == len(front) + len(yard)  # no entity of one camera overwrites the other's
    left = bodies["homeassistant/binary_sensor/box_front_zone_left/config"]
    assert left["state_topic"] == f"{base}/front/zone/left/state" and left["name"].startswith("front ")
    assert bodies["homeassistant/sensor/box_yard_zone_right_car/config"]["state_topic"] == \
        f"{base}/yard/zone/right/state"


def _retained_states(broker) -> dict[str, ZoneStateMessage]:
    """The retained state of both zones, as a new subscriber gets it from the broker (retain flag set)."""
    def kept():
        watcher = Collector(broker.host, broker.port, "edge_seg/dev1/zone/+/state")
        try:
            time.sleep(0.5)  # retained messages come right after the subscription
            return {m.topic.split("/")[3]: decode(m.payload) for m in watcher.messages if m.retain}
        finally:
            watcher.close()

    return wait_for(lambda: (states := kept()).keys() == {"left", "right"} and states, 15, interval=0.2,
                    what="both zones' retained states")


def test_the_scripted_clip_gives_exactly_the_expected_events_across_an_outage_and_a_restart(broker, make_publisher,
                                                                                          tmp_path):
    out = tmp_path / "consumer"
    consumer = Consumer(broker.url, out, client_id="zone-consumer")  # persistent session: queued while away
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    assert consumer.ready.wait(10)
    raw = Collector(broker.host, broker.port, "edge_seg/dev1/event", client_id="zone-raw")
    ha = Collector(broker.host, broker.port, "homeassistant/+/+/config")
    metrics = Metrics(device="dev1")
    publisher = make_publisher(broker.url, ha_discovery=True, policy={"every_n": 0, "area_delta": None},
                               metrics_interval_s=None, hooks={"zones": ZONES, "zone_counts": True})
    wait_for(lambda: publisher.link.connected, 10, what="connect")
    stage, t0 = ZoneStage(ZoneTracker(ZONES), metrics), time.time()

    def play(seqs) -> None:
        for seq in seqs:
            frame = Frame(np.zeros((360, 640, 3), np.uint8), t0 + seq / 10, seq)
            result = FrameResult(frame, segmentation_at(seq), None, {})
            stage(result)
            publisher.publish(result)

    try:
        play(range(13))
        assert publisher.flush(10)
        broker.stop()
        wait_for(lambda: not publisher.link.connected, 10, what="disconnect")
        play(range(13, 17))  # the person and the car enter the right zone while the broker is away
        wait_for(lambda: publisher.outbox.stats().written >= 8, 10, what="the outage's events in the outbox")
        assert publisher.outbox.stats().depth == 4
        broker.start()
        wait_for(lambda: publisher.link.connected, 20, what="reconnect")
        right = _retained_states(broker)["right"]  # re-sent on reconnect: the change made while away
        assert right.occupied and right.classes["person"].count == 1 and right.classes["car"].track_ids == [2]
        assert right.frame_seq == 15
        play(range(17, LENGTH))
        assert publisher.flush(20)

        wait_for(lambda: len(list(iter_events(out, device="dev1"))) >= len(EXPECTED), 30, what="stored events")
        time.sleep(0.5)  # any late duplicate would arrive now
        stored = [(e.frame_seq, e.zone, e.class_name, e.kind, list(e.track_ids)) for e in iter_events(out)]
        assert stored == EXPECTED
        first: list[str] = []
        for m in raw.on("event"):
            msg = decode(m.payload)
            assert isinstance(msg, EventMessage)
            if msg.msg_id not in first:
                first.append(msg.msg_id)
        by_id = {e.msg_id: e for e in iter_events(out)}
        assert [by_id[i].kind for i in first] == [e[3] for e in EXPECTED]  # first deliveries in order
        assert consumer.stats["by_kind"]["event"] == len(EXPECTED)

        exposition = metrics.exposition().decode()
        assert 'edge_seg_zone_occupied{class="car",zone="right"} 0.0' in exposition
        assert 'edge_seg_zone_count{class="person",zone="left"} 0.0' in exposition
        topics = {m.topic for m in ha.messages}
        assert {"homeassistant/binary_sensor/dev1_zone_left/config",
                "homeassistant/sensor/dev1_zone_right_person/config"} <= topics
        for m in ha.messages:
            _check_ha(m.topic, m.payload)
    finally:
        stop.set()
        thread.join(10)
        raw.close()
        ha.close()
    publisher.close()
    broker.stop()  # Mosquitto keeps retained messages across its restart (persistence true in tests/broker.py)
    broker.start()
    states = _retained_states(broker)
    assert {z: (s.occupied, s.frame_seq) for z, s in states.items()} == {"left": (False, 11), "right": (False, 25)}
    assert states["right"].classes["car"].count == 0 and states["right"].classes["car"].track_ids == []


def test_a_zone_with_snapshots_sends_a_small_jpeg_of_the_frame_with_its_events(broker, make_publisher, tmp_path):
    zones = [ZONES[0], ZONES[1].model_copy(update={"snapshot": True})]  # right only
    out = tmp_path / "consumer"
    consumer = Consumer(broker.url, out, client_id="snap-consumer")
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    assert consumer.ready.wait(10)
    raw = Collector(broker.host, broker.port, "edge_seg/dev1/event", client_id="snap-raw")
    publisher = make_publisher(broker.url, policy={"every_n": 0, "area_delta": None}, metrics_interval_s=None,
                               hooks={"zones": zones, "zone_counts": True})
    wait_for(lambda: publisher.link.connected, 10, what="connect")
    stage, t0 = ZoneStage(ZoneTracker(zones)), time.time()
    image = np.zeros((360, 640, 3), np.uint8)
    image[:, :320] = (200, 0, 0)  # blue left half, red right half (BGR)
    image[:, 320:] = (0, 0, 200)
    try:
        for seq in range(16):  # up to the car entering the right zone
            result = FrameResult(Frame(image, t0 + seq / 10, seq), segmentation_at(seq), None, {})
            stage(result)
            publisher.publish(result)
        assert publisher.flush(10)
        wanted = [e for e in EXPECTED if e[0] < 16]
        wait_for(lambda: len(raw.on("event")) >= len(wanted), 15, what="the events")
        wait_for(lambda: len(list(iter_events(out))) >= len(wanted), 15, what="the stored events")
    finally:
        stop.set()
        thread.join(10)
        raw.close()
    events = [decode(m.payload) for m in raw.on("event")]
    assert [(e.frame_seq, e.zone, e.kind) for e in events] == [(f, z, k) for f, z, _c, k, _t in wanted]
    for event in events:
        if event.zone == "left":
            assert event.snapshot_jpeg is None and event.snapshot_size is None
            continue
        thumb = cv2.imdecode(np.frombuffer(base64.b64decode(event.snapshot_jpeg), np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape == (180, 320, 3) and event.snapshot_size == [320, 180]
        assert thumb[5, 5, 0] > 150 and thumb[5, 5, 2] < 50  # the frame's blue half, top left
        assert thumb[5, 314, 2] > 150 and thumb[5, 314, 0] < 50  # and its red half
    stored = {e.msg_id: e for e in iter_events(out)}
    for event in events:  # the consumer keeps each snapshot as a file next to its event row
        path = stored[event.msg_id].snapshot
        if event.snapshot_jpeg is None:
            assert path is None
        else:
            assert path.read_bytes() == base64.b64decode(event.snapshot_jpeg)
    assert "snapshot_jpeg" not in (out / "messages.jsonl").read_text()  # pixel data stays out of the JSON lines
