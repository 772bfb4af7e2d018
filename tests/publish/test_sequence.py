"""Message ``seq`` per device and topic, monotonic across restarts (clean close and SIGKILL), kept in the state dir.

The counter (``edge_seg.publish.sequence``) alone, then the publisher against a real Mosquitto.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import time
from collections import defaultdict

import pytest
from mqtt_helpers import Collector, device_model, fake_result, publisher_factory, run_broker, start_device, wait_for

from edge_seg.cloud.consumer import Consumer
from edge_seg.publish.messages import StatusMessage, decode
from edge_seg.publish.outbox import Outbox
from edge_seg.publish.sequence import DEFAULT_BLOCK, FILE_NAME, Sequences

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
broker = pytest.fixture(run_broker, name="broker")
make_publisher = pytest.fixture(publisher_factory, name="make_publisher")
TOPICS = ("mask", "crop", "metrics", "status", "cmd/result")


# --- the counter alone ------------------------------------------------------------------------------------------
def test_numbers_start_at_one_per_topic_and_continue_exactly_after_a_clean_close(tmp_path):
    seqs = Sequences(tmp_path, block=10)
    assert [seqs.next("mask") for _ in range(3)] == [1, 2, 3] and seqs.next("status") == 1
    seqs.close()
    again = Sequences(tmp_path, block=10)
    assert again.next("mask") == 4 and again.next("status") == 2 and again.next("crop") == 1
    again.close()


def test_a_crash_skips_at_most_one_block_and_never_repeats_a_number(tmp_path):
    seen = []
    for run in range(5):  # never closed: each run ends as a SIGKILL would leave the file
        seqs = Sequences(tmp_path, block=8)
        seen += [seqs.next("mask") for _ in range(run * 7 + 3)]  # less, as many and more than a block
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    jumps = [b - a for a, b in zip(seen, seen[1:])]
    assert max(jumps) <= 8 and jumps.count(1) >= len(seen) - 5


def test_one_write_per_block_not_per_message(tmp_path):
    seqs = Sequences(tmp_path, block=100)
    for _ in range(1000):
        seqs.next("mask")
    assert seqs.writes == 10
    seqs.close()


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong types", "negative", "missing"])
def test_a_damaged_or_missing_file_starts_above_anything_sent_and_logs_once(tmp_path, caplog, damage):
    first = Sequences(tmp_path, block=10)
    sent = [first.next("mask") for _ in range(25)]
    first.close()
    with Outbox(tmp_path / "outbox.sqlite") as box:  # what the outbox still holds bounds what was sent
        box.put([_Row("mask", 25)])
    path = tmp_path / FILE_NAME
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes({"garbage": b"\x00\xff{not json", "empty": b"",
                          "wrong types": json.dumps({"next": {"mask": "x"}}).encode(),
                          "negative": json.dumps({"schema": "edge_seg.seq/1", "next": {"mask": -5}}).encode()}[damage])
    caplog.set_level(logging.WARNING, logger="edge_seg.publish.sequence")
    again = Sequences(tmp_path, block=10)
    after = [again.next("mask") for _ in range(30)]  # crosses blocks: still one line in the log
    assert min(after) > max(sent) and after == sorted(set(after))
    assert again.next("crop") > 10**12  # no outbox row for it: the wall clock in ms bounds anything earlier
    lines = [r for r in caplog.records if r.name == "edge_seg.publish.sequence"]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage() and FILE_NAME in lines[0].getMessage()
    again.close()
    assert json.loads(path.read_text())["next"]["mask"] == after[-1] + 1  # healed


def test_a_fresh_state_dir_starts_at_one_silently(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_seg.publish.sequence")
    seqs = Sequences(tmp_path / "new", block=10)
    assert seqs.next("mask") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    seqs.close()


def test_a_failing_write_never_stops_numbering_and_is_logged_once(tmp_path, caplog):
    seqs = Sequences(tmp_path, block=4)
    seqs.next("mask")
    (tmp_path / f".{FILE_NAME}.tmp").mkdir()  # the temporary file cannot be written
    caplog.set_level(logging.WARNING, logger="edge_seg.publish.sequence")
    got = [seqs.next("mask") for _ in range(20)]
    assert got == list(range(2, 22))
    assert len([r for r in caplog.records if "cannot" in r.getMessage()]) == 1
    (tmp_path / f".{FILE_NAME}.tmp").rmdir()
    assert seqs.next("mask") == 22
    seqs.close()
    assert Sequences(tmp_path, block=4).next("mask") == 23


class _Row:
    def __init__(self, topic: str, seq: int):
        self.topic, self.seq, self.payload, self.content_type, self.msg_id = topic, seq, b"{}", None, f"row-{seq}"


# --- the publisher against a real broker ----------------------------------------------------------------------------
def by_topic(collector: Collector) -> dict[str, list[tuple[str, int, int | None]]]:
    """topic → (msg_id, seq, frame_seq) in arrival order, first delivery of each msg_id only; LWTs (seq 0) left out."""
    out: dict[str, list] = defaultdict(list)
    seen = set()
    for m in collector.messages:
        topic = m.topic.split("/", 2)[2]
        if topic not in TOPICS:
            continue
        msg = decode(m.payload, m.content_type)
        if msg.msg_id in seen or (isinstance(msg, StatusMessage) and msg.seq == 0 and not msg.online):
            continue
        seen.add(msg.msg_id)
        out[topic].append((msg.msg_id, msg.seq, getattr(msg, "frame_seq", None)))
    return out


def strictly_increasing(items) -> bool:
    seqs = [seq for _, seq, _ in items]
    return all(a < b for a, b in zip(seqs, seqs[1:]))


def test_seq_continues_across_a_clean_restart_on_every_topic(broker, tmp_path, make_publisher):
    collector = Collector(broker.host, broker.port, "edge_seg/dev1/#")
    consumer = Consumer(broker.url, tmp_path / "consumer").start()
    assert consumer.ready.wait(10)
    for run in range(2):
        publisher = make_publisher(broker.url, policy={"every_n": 1, "max_rate": 1e6}, metrics_interval_s=0.2,
                                   status_interval_s=0.2)
        wait_for(lambda p=publisher: p.link.connected, 10, what="connect")
        for i in range(5):
            publisher.publish(fake_result(i, frame_size=(320, 180), model_size=(64, 36)))
        collector.publish("edge_seg/dev1/cmd", json.dumps({"id": f"ping-{run}", "cmd": "ping"}).encode())
        time.sleep(0.5)  # a few status and metrics messages
        assert publisher.flush(20)
        publisher.close()
    wait_for(lambda: len(by_topic(collector)["mask"]) == 10 and len(by_topic(collector)["cmd/result"]) == 2, 10,
             what="both runs' masks and command results")
    got = by_topic(collector)
    for topic in ("mask", "metrics", "status", "cmd/result"):
        assert len(got[topic]) >= 2 and strictly_increasing(got[topic]), (topic, [s for _, s, _ in got[topic]])
    masks = got["mask"]
    assert [s for _, s, _ in masks] == list(range(1, 11))  # a clean restart: no number skipped
    assert [f for _, _, f in masks] == [0, 1, 2, 3, 4] * 2  # frame_seq stays the frame's number
    wait_for(lambda: consumer.stats["by_kind"]["mask"] == 10, 10, what="the consumer's masks")
    stats = consumer.stats
    consumer.close()
    assert stats["gaps"] == 0 and stats["devices"]["dev1"]["gaps"] == {}  # a restart is no gap
    collector.close()


def test_seq_never_repeats_across_a_sigkill(broker, tmp_path, request):
    collector = Collector(broker.host, broker.port, "edge_seg/dev1/#")
    consumer = Consumer(broker.url, tmp_path / "consumer").start()
    assert consumer.ready.wait(10)
    state, model, log = tmp_path / "state", device_model(request), tmp_path / "device.log"
    device = start_device(broker.url, state, model, fps=10, log=log)
    try:
        wait_for(lambda: len(collector.on("mask")) >= 15 and collector.on("metrics"), 60, what="first run's masks")
        device.send_signal(signal.SIGKILL)
        assert device.wait(10) == -signal.SIGKILL
        before = len(by_topic(collector)["mask"])
        device = start_device(broker.url, state, model, fps=10, log=log)
        wait_for(lambda: len(by_topic(collector)["mask"]) >= before + 15 and len(by_topic(collector)["metrics"]) >= 2,
                 60, what="second run's masks")
        device.send_signal(signal.SIGTERM)
        device.wait(20)
    finally:
        if device.poll() is None:
            device.kill()
            device.wait()
    got = by_topic(collector)
    frames = [f for _, _, f in got["mask"]]
    assert 0 in frames[1:], "the second run's frames start again at 0"
    for topic in ("mask", "metrics", "status"):
        seqs = [s for _, s, _ in got[topic]]
        assert strictly_increasing(got[topic]), (topic, seqs)
    db = sqlite3.connect(state / "outbox.sqlite")  # the first run's replayed rows kept their number
    try:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        db.close()
    wait_for(lambda: consumer.stats["by_kind"]["mask"] >= len(got["mask"]), 10, what="the consumer's masks")
    gaps = consumer.stats["devices"]["dev1"]["gaps"]
    consumer.close()
    assert all(0 <= n < DEFAULT_BLOCK for n in gaps.values()), gaps  # the kill skips the rest of a block at most
    collector.close()



@pytest.mark.parametrize("damage", ["garbage", "a directory"])
def test_a_publisher_on_a_damaged_counter_file_starts_and_numbers_above_the_last_run(broker, tmp_path, make_publisher,
                                                                                     caplog, damage):
    collector = Collector(broker.host, broker.port, "edge_seg/dev1/mask")
    state = tmp_path / "state-dev1"  # make_publisher's state dir

    def one_run() -> None:
        publisher = make_publisher(broker.url, policy={"every_n": 1, "max_rate": 1e6}, metrics_interval_s=None)
        wait_for(lambda: publisher.link.connected, 10, what="connect")
        for i in range(3):
            publisher.publish(fake_result(i, frame_size=(320, 180), model_size=(64, 36)))
        assert publisher.flush(20)
        publisher.close()

    one_run()
    (state / FILE_NAME).unlink()
    if damage == "garbage":
        (state / FILE_NAME).write_bytes(b"\xff" * 100_000)
    else:
        (state / FILE_NAME).mkdir()  # cannot be read, cannot be replaced: numbering still goes on
    caplog.set_level(logging.WARNING, logger="edge_seg.publish.sequence")
    one_run()
    wait_for(lambda: len(collector.on("mask")) == 6, 10, what="both runs' masks")
    seqs = [decode(m.payload).seq for m in collector.on("mask")]
    assert seqs[:3] == [1, 2, 3] and seqs == sorted(set(seqs)) and seqs[3] > 10**12
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_seg.publish.sequence"]
    assert "numbering starts above anything sent" in lines[0]
    assert len(lines) == (1 if damage == "garbage" else 2), lines  # a directory: and the write fails, once
    collector.close()
