"""The retained status says what is wrong while the device runs on (a camera down), through a real broker."""

from __future__ import annotations

import pytest
from mqtt_helpers import Collector, run_broker, wait_for

from edge_seg.publish.messages import StatusMessage, decode
from edge_seg.publish.mqtt import Publisher
from edge_seg.publish.mqtt_config import MqttConfig

broker = pytest.fixture(run_broker, name="broker")


def _retained_status(broker) -> StatusMessage:
    collector = Collector(broker.host, broker.port, "edge_seg/cam1/status")
    try:
        got = wait_for(lambda: collector.on("status"), 5, what="retained status")
    finally:
        collector.close()
    assert got[0].retain  # what a new subscriber gets first: the retained status
    return decode(got[0].payload)


def test_the_retained_status_carries_the_degraded_state_and_clears_it(broker, tmp_path):
    state = {"degraded": "source down since 2026-12-07T10:00:00Z (620 s)", "source": "reconnecting"}
    publisher = Publisher(MqttConfig(url=broker.url, status_interval_s=0.2, reconnect_max_s=2), device="cam1",
                          state_dir=tmp_path / "state", source_state=lambda: state["source"],
                          degraded=lambda: state["degraded"])
    try:
        wait_for(lambda: publisher.link.connected, 10, what="connect")
        down = wait_for(lambda: (s := _retained_status(broker)).degraded and s, 10, interval=0.3, what="degraded")
        assert down.degraded == state["degraded"] and down.source_state == "reconnecting" and down.online
        state.update(degraded=None, source="live")
        up = wait_for(lambda: (s := _retained_status(broker)).source_state == "live" and s, 10, interval=0.3,
                      what="status after recovery")
        assert up.degraded is None
    finally:
        publisher.close()


def test_a_failing_hook_does_not_stop_the_status(broker, tmp_path):
    def broken() -> str:
        raise RuntimeError("hook failed")

    publisher = Publisher(MqttConfig(url=broker.url, status_interval_s=0.2, reconnect_max_s=2), device="cam1",
                          state_dir=tmp_path / "state", degraded=broken)
    try:
        status = wait_for(lambda: publisher.link.connected and _retained_status(broker), 10, interval=0.3,
                          what="status")
        assert status.online and status.degraded is None
    finally:
        publisher.close()
