"""The SQLite outbox: durable before send, deleted on ack, ordered replay, TTL and byte cap."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from outbox_builders import msgs

from edge_seg.publish.outbox import Outbox
from edge_seg.publish.outbox_bench import measure


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_put_is_committed_before_it_returns(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite")
    box.put(msgs(0, 3))
    # another connection (as paho's side of a crash would see the file) sees the rows at once
    other = sqlite3.connect(tmp_path / "outbox.sqlite")
    assert [r[0] for r in other.execute("SELECT msg_id FROM outbox ORDER BY id")] == ["id-0", "id-1", "id-2"]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    box.close()


def test_rows_survive_sigkill_of_the_writer(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from edge_seg.publish.outbox import Outbox
        from dataclasses import dataclass
        @dataclass
        class M:
            topic: str; payload: bytes; content_type: str; msg_id: str; seq: int
        box = Outbox({str(tmp_path / 'o.sqlite')!r})
        box.put([M("mask", b"x" * 50, None, f"k{{i}}", i) for i in range(5)])
        box.put([M("crop", b"y", None, "k5", 5)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True)
    assert proc.returncode == -9
    with Outbox(tmp_path / "o.sqlite") as box:
        rows = box.fetch(0, 100)
        assert [r.msg_id for r in rows] == [f"k{i}" for i in range(6)]
        assert box.stats().depth == 6 and box.stats().bytes == 251


def test_ack_deletes_and_fetch_pages_in_order(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        ids = box.put(msgs(0, 10))
        assert ids == sorted(ids)
        first = box.fetch(0, 4)
        assert [r.seq for r in first] == [0, 1, 2, 3]
        assert [r.seq for r in box.fetch(first[-1].id, 4)] == [4, 5, 6, 7]
        assert box.ack([first[0].id, first[2].id]) == 2
        assert box.ack([first[0].id]) == 0  # a second PUBACK for the same row is harmless
        assert [r.seq for r in box.fetch(0, 100)] == [1, 3, 4, 5, 6, 7, 8, 9]
        stats = box.stats()
        assert (stats.depth, stats.bytes, stats.written, stats.acked) == (8, 800, 10, 2)


def test_replay_after_reopen_is_in_order_and_ids_never_repeat(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        ids = box.put(msgs(0, 5))
        box.ack(ids)  # table now empty
        later = box.put(msgs(5, 3))
        assert min(later) > max(ids)  # AUTOINCREMENT: a cursor past old ids still sees new rows
    with Outbox(path) as box:
        rows = box.fetch(0, 100)
        assert [r.msg_id for r in rows] == ["id-5", "id-6", "id-7"]
        assert rows[0].payload == bytes([5]) * 100 and rows[0].content_type == "application/json"
        more = box.put(msgs(8, 1))
        assert more[0] > rows[-1].id


def test_ttl_drops_old_rows_but_not_inflight_ones(tmp_path):
    clock = Clock()  # monotonic: the TTL never looks at the wall clock (test_outbox_hardening.py)
    with Outbox(tmp_path / "o.sqlite", ttl_s=60, monotonic=clock, boot_id=lambda: "boot", audit=True) as box:
        old = box.put(msgs(0, 4))
        clock.now += 30
        box.put(msgs(4, 2))
        clock.now += 40  # the first four are 70 s old, the last two 40 s
        assert box.expire(inflight={old[1]}) == 3
        assert [r.seq for r in box.fetch(0, 100)] == [1, 4, 5]
        stats = box.stats()
        assert (stats.dropped_ttl, stats.depth, stats.bytes) == (3, 3, 300)
        outcomes = {p["seq"]: p["outcome"] for p in box.produced()}
        assert outcomes == {0: "dropped_ttl", 1: None, 2: "dropped_ttl", 3: "dropped_ttl", 4: None, 5: None}


def test_bad_sync_level_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="normal, full"):
        Outbox(tmp_path / "o.sqlite", sync="off")  # type: ignore[arg-type]


def test_measure_reports_costs_for_both_sync_levels(tmp_path):
    for sync in ("normal", "full"):
        result = measure(tmp_path, sync, batch=5, count=20, payload=100)
        assert result["put_us"] > 0 and result["ack_us"] > 0
    assert not list(tmp_path.glob("bench-*"))
