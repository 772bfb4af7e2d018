"""The outbox under bad luck: a corrupt file, a stepped wall clock, a byte cap on the file, a full disk.

Each test reproduces a failure of the outbox before it was hardened (issue 14): a corrupt file
stopped the service, a forward NTP step expired the whole backlog, the file grew to 1.7x
``max_bytes`` (plus its WAL), and a full disk raised "cannot rollback" on every frame.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import outbox_builders
import pytest
from mqtt_helpers import Collector, fake_result, publisher_factory, run_broker, wait_for
from outbox_builders import Msg

from edge_seg.errors import EdgeSegError
from edge_seg.publish.messages import decode
from edge_seg.publish.mqtt_config import OutboxConfig
from edge_seg.publish.outbox import Outbox
from edge_seg.publish.outbox_file import KEEP_CORRUPT

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
broker = pytest.fixture(run_broker, name="broker")
make_publisher = pytest.fixture(publisher_factory, name="make_publisher")
DAY = 86_400.0


def msgs(start: int, count: int, size: int = 100) -> list[Msg]:
    return outbox_builders.msgs(start, count, size, content_type=None)


class Clock:
    """A settable time source (wall or monotonic)."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def on_disk(path: Path) -> int:
    """Bytes the outbox occupies: the database file plus its WAL."""
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


def small_rows(box: Outbox) -> list[int]:
    return [r.seq for r in box.fetch(0, 10_000)]


# --- 1. a corrupt file is moved aside, a new one is created, the run goes on ---------------------------------
def _valid_file(path: Path, rows: int = 200) -> None:
    with Outbox(path) as box:
        box.put(msgs(0, rows, size=2_000))


def _overwrite_pages(path: Path, first: int = 2, count: int = 40) -> None:
    page = 4096
    with open(path, "r+b") as f:
        f.seek((first - 1) * page)
        f.write(os.urandom(count * page))


def _aside(directory: Path) -> list[Path]:
    return sorted(directory.glob("outbox.corrupt-*.sqlite"))


@pytest.mark.parametrize("kind", ["random_bytes", "overwritten_pages"])
def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_opens(tmp_path, caplog, kind):
    path = tmp_path / "outbox.sqlite"
    if kind == "random_bytes":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        _valid_file(path)
        _overwrite_pages(path)
        Path(f"{path}-wal").write_bytes(os.urandom(5_000))  # a stray WAL goes aside with its database
    original = path.read_bytes()
    caplog.set_level(logging.INFO, logger="edge_seg.publish")
    with Outbox(path) as box:
        assert box.stats().recovered_corrupt == 1
        assert box.stats().depth == 0
        ids = box.put(msgs(0, 3))
        assert [r.msg_id for r in box.fetch(0, 10)] == ["id-0", "id-1", "id-2"] and len(ids) == 3
    aside = _aside(tmp_path)
    assert len(aside) == 1
    assert aside[0].read_bytes()[100:] == original[100:]  # kept for a person (SQLite may touch the 100-byte header)
    if kind == "overwritten_pages":
        assert Path(f"{aside[0]}-wal").exists()
    warnings = [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert str(aside[0].name) in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    with Outbox(path) as again:  # the fresh file is healthy: nothing more is moved aside
        assert again.stats().recovered_corrupt == 0 and small_rows(again) == [0, 1, 2]
    assert len(_aside(tmp_path)) == 1


def test_a_file_corrupted_while_running_is_replaced_and_ids_go_on(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        for i in range(0, 2_000, 50):  # 8 MB: more than SQLite's page cache, so the damage is read from disk
            box.put(msgs(i, 50, size=2_000))
        last = box.fetch(1_999, 1)[0].id
        _overwrite_pages(path, first=1_000, count=200)
        assert box.fetch(0, 5_000) == []  # the damage is found: the file is set aside, nothing to send
        ids = box.put(msgs(9_000, 2))
        assert min(ids) > last  # a publisher's cursor past the old ids still sees the new rows
        assert small_rows(box) == [9_000, 9_001] and box.stats().recovered_corrupt == 1
    assert len(_aside(tmp_path)) == 1
    assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1


def test_only_the_newest_corrupt_copies_are_kept(tmp_path):
    path = tmp_path / "outbox.sqlite"
    for _ in range(KEEP_CORRUPT + 2):
        path.write_bytes(os.urandom(8_192))
        Outbox(path).close()
    assert len(_aside(tmp_path)) == KEEP_CORRUPT  # a card that keeps failing cannot fill the state disk


def test_a_file_that_cannot_be_opened_is_not_mistaken_for_corruption(tmp_path):
    path = tmp_path / "outbox.sqlite"
    path.mkdir()  # not a file at all (as root, permissions would not stop SQLite): not moved aside, one line
    with pytest.raises(EdgeSegError, match=r"^cannot open the MQTT outbox .*unable to open database file; .*state_dir"):
        Outbox(path)
    assert path.is_dir() and not _aside(tmp_path)


def test_a_publisher_on_a_corrupt_outbox_starts_and_delivers(broker, make_publisher, tmp_path):
    state = tmp_path / "state-dev1"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(os.urandom(32 * 1024))
    collector = Collector(broker.host, broker.port, "edge_seg/dev1/mask")
    publisher = make_publisher(broker.url, policy={"every_n": 1, "max_rate": 1e6}, metrics_interval_s=None)
    for i in range(5):
        publisher.publish(fake_result(i, frame_size=(320, 180), model_size=(64, 36)))
    wait_for(lambda: len(collector.on("mask")) >= 5, 15, what="five masks after recovery")
    assert sorted({decode(m.payload).frame_seq for m in collector.on("mask")}) == [0, 1, 2, 3, 4]
    assert publisher.summary()["outbox"]["recovered_corrupt"] == 1
    assert len(_aside(state)) == 1
    collector.close()


# --- 2. the TTL counts monotonic time, across reboots, never a wall-clock step -----------------------------
def test_a_forward_wall_clock_step_expires_nothing(tmp_path):
    wall = Clock(1_700_000_000.0)
    with Outbox(tmp_path / "o.sqlite", ttl_s=3_600, clock=wall) as box:
        box.put(msgs(0, 60))
        wall.now += 2 * DAY  # NTP steps the clock of a Pi without an RTC that booted offline
        assert box.expire() == 0
        assert box.stats().depth == 60 and box.stats().dropped_ttl == 0


def test_ttl_follows_monotonic_time_whatever_the_wall_clock_does(tmp_path):
    wall, mono = Clock(1_700_000_000.0), Clock(500.0)
    with Outbox(tmp_path / "o.sqlite", ttl_s=3_600, clock=wall, monotonic=mono, boot_id=lambda: "boot-a") as box:
        box.put(msgs(0, 10))
        wall.now += 2 * DAY
        mono.now += 3_000
        box.put(msgs(10, 5))
        assert box.expire() == 0  # 3000 s old in monotonic terms: younger than the TTL
        wall.now -= 3 * DAY  # now a day behind the start: must not make anything live forever
        mono.now += 601
        assert box.expire() == 10  # the first ten are 3601 s old
        assert small_rows(box) == list(range(10, 15))
        mono.now += 3_000
        assert box.expire() == 5 and box.stats().depth == 0


def test_age_survives_a_reboot_and_a_process_restart(tmp_path):
    path = tmp_path / "o.sqlite"
    wall, mono = Clock(1_700_000_000.0), Clock(100.0)
    with Outbox(path, ttl_s=3_600, clock=wall, monotonic=mono, boot_id=lambda: "boot-a") as box:
        box.put(msgs(0, 4))
        mono.now += 2_000
        box.expire()  # checkpoints the age reached so far
    mono.now += 500  # the process is down 500 s, same boot: that time counts
    with Outbox(path, ttl_s=3_600, clock=wall, monotonic=mono, boot_id=lambda: "boot-a") as box:
        assert box.expire() == 0
        mono.now += 1_000  # 3500 s old
        assert box.expire() == 0
        box.close()
    mono.now = 7.0  # reboot: the monotonic clock restarts, the wall clock is wrong (no RTC)
    wall.now = 0.0
    with Outbox(path, ttl_s=3_600, clock=wall, monotonic=mono, boot_id=lambda: "boot-b") as box:
        assert box.expire() == 0 and box.stats().depth == 4  # 3500 s carried over
        box.put(msgs(4, 2))
        mono.now += 101
        assert box.expire() == 4  # 3601 s in total
        assert small_rows(box) == [4, 5]


def test_an_outbox_of_the_old_schema_opens_and_keeps_its_rows(tmp_path):
    path = tmp_path / "o.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
            content_type TEXT, msg_id TEXT NOT NULL, seq INTEGER NOT NULL, created REAL NOT NULL,
            size INTEGER NOT NULL);
        CREATE INDEX outbox_created ON outbox (created);
        CREATE TABLE produced (id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, topic TEXT NOT NULL,
            seq INTEGER NOT NULL, created REAL NOT NULL, outcome TEXT);
    """)
    old = 1_700_000_000.0
    db.executemany("INSERT INTO outbox (topic, payload, content_type, msg_id, seq, created, size) "
                   "VALUES ('mask', ?, NULL, ?, ?, ?, 3)", [(b"abc", f"old-{i}", i, old + i) for i in range(3)])
    db.commit()
    db.close()
    wall, mono = Clock(old + 30 * DAY), Clock(50.0)  # the wall clock says a month later: not trusted
    with Outbox(path, ttl_s=3_600, clock=wall, monotonic=mono, boot_id=lambda: "b") as box:
        assert box.expire() == 0 and small_rows(box) == [0, 1, 2]
        later = box.put(msgs(3, 1))
        assert later[0] > box.fetch(0, 3)[-1].id
        mono.now += 3_601  # the migrated rows got one TTL from the migration, not forever
        assert box.expire() == 4


# --- 3. max_bytes bounds the file, not the payload --------------------------------------------------------
def test_max_bytes_bounds_the_file_and_its_wal(tmp_path):
    path, cap = tmp_path / "o.sqlite", 256 * 1024
    margin = 16 * 1024  # stated: four pages of estimate slack
    with Outbox(path, max_bytes=cap) as box:
        seq = 0
        for _ in range(300):  # 2.4 MB of payload through a 256 KB outbox
            box.put(msgs(seq, 4, size=2_000))
            seq += 4
            assert on_disk(path) <= cap + margin, f"outbox is {on_disk(path)} bytes on disk after {seq} rows"
        stats = box.stats()
        assert stats.dropped_cap > 0 and stats.file_bytes <= cap + margin
        kept = small_rows(box)
        assert kept == list(range(seq - len(kept), seq))  # the oldest went first
        assert stats.bytes >= cap // 3  # and the cap is not wasted: a fair share of it holds messages


def test_the_outbox_config_refuses_a_cap_below_its_overhead_and_an_infinite_ttl():
    with pytest.raises(ValueError, match="max_bytes"):
        OutboxConfig(max_bytes=4_096)  # the schema and the WAL share alone take more
    with pytest.raises(ValueError, match="ttl_s"):
        OutboxConfig(ttl_s=float("inf"))  # "never expire" is ttl_s: null
    assert OutboxConfig(max_bytes=64 * 1024, ttl_s=None).max_bytes == 65_536


def test_the_byte_cap_keeps_in_flight_rows_and_an_oversized_message(tmp_path):
    path, cap = tmp_path / "o.sqlite", 128 * 1024
    with Outbox(path, max_bytes=cap, audit=True) as box:
        first = box.put(msgs(0, 10, size=2_000))
        for i in range(10, 200, 5):
            box.put(msgs(i, 5, size=2_000), inflight={first[0]})
        kept = small_rows(box)
        assert kept[0] == 0 and kept[1] > 1  # row 0 was in flight: never dropped
        dropped = [p["seq"] for p in box.produced() if p["outcome"] == "dropped_cap"]
        assert dropped == list(range(1, kept[1]))
        box.put([Msg("crop", b"z" * (200 * 1024), None, "big", 999)])  # larger than the cap: kept alone
        assert [r.msg_id for r in box.fetch(0, 1000)] == ["big"]


# --- 4. a full disk: the real error, once; frames keep flowing; publishing resumes ----------------------------
def _max_pages(box: Outbox, pages: int | None = None) -> int:
    """Cap the outbox's connection at ``pages`` (SQLITE_FULL beyond, as on a full disk); the current page count."""
    with box._lock:
        if pages is not None:
            box._db.execute(f"PRAGMA max_page_count={int(pages)}")
        return int(box._db.execute("PRAGMA page_count").fetchone()[0])


def test_disk_full_logs_the_real_error_once_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_seg.publish")
    mono = Clock(10.0)
    with Outbox(tmp_path / "o.sqlite", monotonic=mono) as box:
        ids = box.put(msgs(0, 20, size=2_000))
        _max_pages(box, _max_pages(box))  # no page more: as if the disk were full
        for i in range(20):  # every row is in flight: nothing can be dropped to make room
            assert box.put(msgs(100 + i, 3, size=2_000), inflight=set(ids)) == []
        stats = box.stats()
        assert stats.dropped_full == 60 and stats.depth == 20
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "cannot rollback" in m]
        full = [r for r in caplog.records if "database or disk is full" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.ERROR
        _max_pages(box, 1_000_000)  # space returns
        stored = box.put(msgs(500, 2))
        assert len(stored) == 2 and small_rows(box)[-2:] == [500, 501]
        mono.now += 60  # said once the writes have kept succeeding for a while (no flapping on a full disk)
        assert len(box.put(msgs(502, 1))) == 1
        assert len([m for m in (r.getMessage() for r in caplog.records) if "writable again" in m]) == 1
        assert box.ack(ids) == 20 and small_rows(box) == [500, 501, 502]


def test_disk_full_drops_the_oldest_unsent_rows_to_keep_the_newest(tmp_path):
    with Outbox(tmp_path / "o.sqlite", audit=True) as box:
        box.put(msgs(0, 20, size=2_000))
        _max_pages(box, _max_pages(box))
        for i in range(20, 60, 2):
            assert len(box.put(msgs(i, 2, size=2_000))) == 2
        kept = small_rows(box)
        assert kept[-2:] == [58, 59] and kept == list(range(kept[0], 60))
        assert box.stats().dropped_full > 0 and box.stats().dropped_full == kept[0]


def test_acks_that_cannot_be_written_are_retried_later(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_seg.publish")
    with Outbox(tmp_path / "o.sqlite") as box:
        ids = box.put(msgs(0, 6))
        with box._lock:
            box._db.execute("PRAGMA query_only=1")  # every write now fails, as SQLite reports it
        assert box.ack(ids[:2]) == 0 and box.put(msgs(6, 1)) == [] and box.expire() == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "attempt to write a readonly database" in errors[0]
        with box._lock:
            box._db.execute("PRAGMA query_only=0")
        assert box.ack(ids[2:3]) == 3  # the two acknowledged earlier go too
        assert small_rows(box) == [3, 4, 5] and box.stats().acked == 3 and box.stats().depth == 3


def test_a_publisher_on_a_full_disk_keeps_going_and_delivers_when_space_returns(broker, make_publisher, caplog):
    caplog.set_level(logging.INFO, logger="edge_seg.publish")
    collector = Collector(broker.host, broker.port, "edge_seg/dev1/mask", client_id="full-disk")
    publisher = make_publisher(broker.url, policy={"every_n": 1, "max_rate": 1e6}, metrics_interval_s=None)
    wait_for(lambda: publisher.link.connected, 10, what="connect")
    broker.stop()
    wait_for(lambda: not publisher.link.connected, 10, what="disconnect")
    big = (1280, 720)
    for i in range(10):
        publisher.publish(fake_result(i, frame_size=big, model_size=(256, 144)))
        time.sleep(0.01)  # the publisher's queue holds 8 frames
    wait_for(lambda: publisher.outbox.stats().written == 10, 10, what="ten rows")
    _max_pages(publisher.outbox, _max_pages(publisher.outbox))
    for i in range(10, 60):
        publisher.publish(fake_result(i, frame_size=big, model_size=(256, 144)))
        time.sleep(0.01)
    wait_for(lambda: publisher.counts["frames"] == 60 and publisher.outbox.stats().dropped_full > 0, 10,
             what="the full outbox handled")
    full = [r for r in caplog.records if "database or disk is full" in r.getMessage()]
    assert len(full) == 1
    assert not [r for r in caplog.records if "publisher step failed" in r.getMessage()]
    _max_pages(publisher.outbox, 1_000_000)
    broker.start()
    wait_for(lambda: publisher.link.connected and collector.connected.is_set(), 15, what="reconnect")
    time.sleep(0.3)  # the collector's subscription is in place
    for i in range(100, 105):
        publisher.publish(fake_result(i, frame_size=big, model_size=(256, 144)))
        time.sleep(0.02)
    wait_for(lambda: {100, 101, 102, 103, 104} <= {decode(m.payload).frame_seq for m in collector.on("mask")},
             20, what="delivery after space returned")
    assert publisher.flush(10)
    collector.close()
