"""The consumer counts gaps in ``seq`` per device and topic, through a real Mosquitto.

A gap is a message that never arrived: a jump in ``seq`` (the device's numbers go on across its
restarts, so a restart is no gap); a duplicate (at-least-once redelivery) is none; a missing
message that arrives late takes its gap back.
"""

from __future__ import annotations

import json
import time

import pytest
from broker import Broker, requires_mosquitto
from consumer_helpers import Device, Running
from message_builders import MODEL, make_seg

from edge_seg.cloud.consumer import Consumer, iter_masks
from edge_seg.publish import messages as m

pytestmark = requires_mosquitto


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def metrics(device: str, seq: int) -> m.Encoded:
    return m.encode_metrics(device=device, seq=seq, summary={"fps": 15})


def send_all(dev: Device, run: Running, items: list[tuple[str, m.Encoded]]) -> None:
    before = run.consumer.stats["received"]
    for device, enc in items:
        dev.send(device, enc)
    run.wait_received(before + len(items))


def gaps_of(consumer: Consumer, device: str) -> dict:
    return consumer.stats["devices"][device]["gaps"]


def test_gaps_per_device_and_topic_not_restarts_duplicates_or_late_arrivals(broker, tmp_path):
    run = Running(Consumer(broker.url, tmp_path / "out"))
    dev = Device(broker)
    seg = make_seg(0)
    masks = {s: m.encode_mask(seg, device="cam-1", seq=s, ts=1.0 + s, frame_seq=s % 3) for s in range(1, 12)}
    sent = {s: metrics("cam-1", s) for s in range(1, 12)}
    send_all(dev, run, [("cam-1", masks[s]) for s in (1, 2, 3, 7)] + [("cam-1", sent[s]) for s in (1, 2, 3)])
    c = run.consumer
    assert c.stats["gaps"] == 3 and gaps_of(c, "cam-1") == {"mask": 3}  # 4, 5, 6 never came; metrics none
    # the device restarts: its numbers go on (and the frame numbers start again): no gap
    send_all(dev, run, [("cam-1", masks[8]), ("cam-1", masks[9]), ("cam-1", sent[4])])
    assert c.stats["gaps"] == 3
    # at-least-once: the same messages again are duplicates, neither gaps nor counted twice
    send_all(dev, run, [("cam-1", masks[7]), ("cam-1", masks[9]), ("cam-1", sent[4])])
    assert c.stats["gaps"] == 3 and c.stats["duplicates"] == 3 and c.stats["late"] == 0
    # a missing one arrives late: its gap is taken back, once
    send_all(dev, run, [("cam-1", masks[5]), ("cam-1", masks[5])])
    assert c.stats["gaps"] == 2 and c.stats["late"] == 1 and gaps_of(c, "cam-1") == {"mask": 2}
    # another device and another topic count on their own
    send_all(dev, run, [("cam-2", metrics("cam-2", 10)), ("cam-2", metrics("cam-2", 12)), ("cam-1", sent[6])])
    assert gaps_of(c, "cam-2") == {"metrics": 1} and gaps_of(c, "cam-1") == {"mask": 2, "metrics": 1}
    assert c.stats["gaps"] == 4
    # the LWT (seq 0, sent by the broker) and a status stream: no gap
    status = [m.encode_status(device="cam-1", seq=s, online=s != 0, model=MODEL) for s in (1, 2, 0, 3)]
    send_all(dev, run, [("cam-1", e) for e in status])
    assert c.stats["gaps"] == 4
    assert "gaps 4" in c.summary_line()
    stats = run.stop()
    assert stats["gaps"] == 4
    devices = json.loads((tmp_path / "out" / "devices.json").read_text())
    assert devices["cam-1"]["gaps"] == {"mask": 2, "metrics": 1} and devices["cam-2"]["gaps"] == {"metrics": 1}
    assert [s.frame_seq for s in iter_masks(tmp_path / "out", "cam-1")] == [1, 2, 0, 2, 1, 2, 0]  # seq 1,2,3,5,7,8,9
    dev.close()


def test_a_consumer_restart_goes_on_from_what_it_stored(broker, tmp_path):
    out = tmp_path / "out"
    dev = Device(broker)
    run = Running(Consumer(broker.url, out))
    send_all(dev, run, [("cam-1", metrics("cam-1", s)) for s in (100, 101, 102)])
    run.stop()
    run = Running(Consumer(broker.url, out))
    send_all(dev, run, [("cam-1", metrics("cam-1", 103))])
    assert run.consumer.stats["gaps"] == 0  # 102 was the highest: 103 follows it
    send_all(dev, run, [("cam-1", metrics("cam-1", 106))])
    assert run.consumer.stats["gaps"] == 2
    run.stop()
    devices = json.loads((out / "devices.json").read_text())
    assert devices["cam-1"]["gaps"] == {"metrics": 2}
    dev.close()


def test_a_counter_reset_is_counted_as_a_reset_not_as_a_billion_gaps(broker, tmp_path):
    run = Running(Consumer(broker.url, tmp_path / "out"))
    dev = Device(broker)
    wall = time.time_ns() // 1_000_000  # a device that lost its counter file goes on from the wall clock in ms
    send_all(dev, run, [("cam-1", metrics("cam-1", s)) for s in (5, 6, wall, wall + 1)])
    send_all(dev, run, [("cam-1", metrics("cam-1", s)) for s in (1, 2)])  # a wiped state dir starts again at 1
    stats = run.stop()
    assert stats["gaps"] == 0 and stats["seq_resets"] == 2
    dev.close()
