"""Load acceptance: 200 simulated devices at 1 mask/s (+ crops) into 3 consumers of one share group, with the
broker and one consumer (kill -9) restarted during the run: every message stored exactly once, no gap.

Store: the three consumers share one SQLite out dir (its ``messages`` table dedupes by msg_id across processes;
the files beside it, devices.json and annotations.json, are last-writer-wins). Separate out dirs cannot be exactly
once: messages published while every member of a share group is away (a device's will when the broker restarts)
are queued for each member, and each stores its copy. Checked: every (device, topic) stream holds seq 1..n, each
msg_id once; the gap count is taken from the table (each consumer's own counter sees a third of each stream).
The masks describe 640x360 frames: the SQLite store renders a frame-size PNG per mask (~3 ms at 640x360, ~6 ms
at 1280x720), and three consumers must drain 200 masks/s on two shared cores within the test's time."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter

import pytest
from fleet_helpers import spawn_cli, start_fleet
from mqtt_helpers import run_broker, wait_for

broker = pytest.fixture(run_broker, name="broker")
KINDS = ("mask", "crop", "status")


def stored_rows(out) -> list[tuple]:
    """(msg_id, device, kind, seq) of the data messages stored (not the wills: seq 0)."""
    try:
        con = sqlite3.connect(f"file:{out / 'consumer.sqlite'}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []  # not created yet
    try:
        return con.execute("SELECT msg_id, device, kind, seq FROM messages WHERE seq > 0").fetchall()
    except sqlite3.Error:
        return []
    finally:
        con.close()


def consumer(broker, tmp_path, k: int):
    return spawn_cli(["-m", "edge_seg.cli", "consume", "--broker", broker.url, "--out", str(tmp_path / "store"),
                      "--share", "fleet", "--client-id", f"consumer-{k}", "--quiet"], tmp_path / f"c{k}.log",
                     python=True)


@pytest.mark.slow
def test_200_devices_into_3_shared_consumers_survive_broker_and_consumer_restarts_exactly_once(broker, tmp_path):
    consumers = {k: consumer(broker, tmp_path, k) for k in range(3)}
    out = tmp_path / "store"
    wait_for(lambda: (out / "consumer.sqlite").exists(), 30, what="consumers up")
    time.sleep(1.5)  # subscriptions acknowledged
    sim = start_fleet(broker, 200, rate=1.0, status_interval=5.0, crop_every=5, frame=(640, 360))
    try:
        time.sleep(3)
        broker.stop()  # the broker goes away for 2 s: devices and consumers reconnect
        time.sleep(2)
        broker.start()
        time.sleep(3)
        consumers[1].send_signal(signal.SIGKILL)  # one consumer dies without acknowledging what it holds
        consumers[1].wait(10)
        time.sleep(1)
        consumers[1] = consumer(broker, tmp_path, 1)  # same client id: its session's messages come back
        time.sleep(3)
    finally:
        stats = sim.stop()
    sent = Counter({kind: stats["sent"].get(kind, 0) for kind in KINDS})
    assert sent["mask"] >= 200 * 10 and sent["crop"] > 0, stats
    wait_for(lambda: len(stored_rows(out)) >= sum(sent.values()), 90, interval=0.5, what="every message stored")
    for proc in consumers.values():
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    rows = stored_rows(out)
    ids = Counter(row[0] for row in rows)
    assert max(ids.values()) == 1, "a message was stored twice"
    assert Counter(row[2] for row in rows) == sent
    streams: dict[tuple, list[int]] = {}
    for _, device, kind, seq in rows:
        streams.setdefault((device, kind), []).append(seq)
    gaps = sum(max(seqs) - len(seqs) for seqs in streams.values())  # numbers 1..max never stored
    assert gaps == 0 and len({d for d, _ in streams}) == 200
