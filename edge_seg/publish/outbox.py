"""The on-disk outbox: every QoS 1 data message is committed here before paho sees it.

paho-mqtt keeps unacknowledged messages only in memory, so a process crash or a restart would
lose them. The publisher therefore writes each message to this SQLite table first, hands it to
paho, and deletes the row when the broker's PUBACK arrives (paho ``mid`` → row id). After a
reconnect, paho itself retransmits the few messages it holds (the publisher's bounded window);
after a restart, the publisher starts again from the oldest row: replay is in id order, which
is the order of ``put``. Ids come from ``AUTOINCREMENT`` so they never repeat, even when the
table empties.

Bounds: rows older than ``ttl_s`` are dropped, and when the rows exceed ``max_bytes`` of
payload the oldest are dropped first. Rows handed to paho and not yet acknowledged are never
dropped (paho would send them anyway). Drops are counted (``stats()``: dropped_ttl,
dropped_cap, depth, bytes) for the metrics.

Durability (``sync``): the database is in WAL mode.

* ``"normal"`` (default): a commit appends to the WAL without fsync; the WAL is fsynced at each
  checkpoint. A committed row survives a crash or SIGKILL of the process (the OS has the
  pages); a power cut can lose the transactions since the last checkpoint, never corrupt the
  file.
* ``"full"``: one fsync per commit: also survives a power cut, at the cost of the fsync (several
  ms on SD cards and eMMC, see ``python -m edge_seg.publish.outbox_bench``). The publisher commits all
  messages waiting in its queue in one transaction, so the fsync is paid per batch.

We choose ``normal``: the failure the outbox exists for is the process or the link dying, and a
power cut also takes the camera and the in-memory queue with it; ``full`` is one config word
away for deployments that must also survive power loss.

``audit=True`` (debug/tests) keeps an append-only ``produced`` table, written in the same
transaction as each message (and marked on a drop), so a test can compare what the device
durably produced with what a consumer received.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Literal

from edge_seg.errors import EdgeSegError
from edge_seg.publish.outbox_types import Message, OutboxRow, OutboxStats

Sync = Literal["normal", "full"]
_SYNC_PRAGMA = {"normal": "NORMAL", "full": "FULL"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT,
    msg_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
CREATE TABLE IF NOT EXISTS produced (
    id INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    outcome TEXT
);
"""


class Outbox:
    """A thread-safe (one connection behind a lock) SQLite outbox in WAL mode."""

    def __init__(self, path: str | Path, *, ttl_s: float | None = 86_400.0, max_bytes: int = 256 * 1024 * 1024,
                 sync: Sync = "normal", audit: bool = False, clock=time.time):
        if sync not in _SYNC_PRAGMA:
            raise ValueError(f"outbox sync must be one of {', '.join(_SYNC_PRAGMA)}, got {sync!r}")
        self.path = Path(path)
        hint = "the outbox lives in the state directory: set device.state_dir (--state-dir) to a writable one"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgeSegError(f"cannot create the MQTT outbox directory {self.path.parent}: "
                               f"{err.strerror or err}; {hint}") from None
        self.ttl_s, self.max_bytes, self.audit, self._clock = ttl_s, max_bytes, audit, clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as err:
            raise EdgeSegError(f"cannot open the MQTT outbox {self.path}: {err}; {hint}") from None
        self._db.execute(f"PRAGMA synchronous={_SYNC_PRAGMA[sync]}")
        self._db.execute("PRAGMA journal_size_limit=8388608")  # keep the WAL file small after a backlog
        self._db.executescript(_SCHEMA)
        depth, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._depth, self._bytes = int(depth), int(size)
        self._written = self._acked = self._rejected = self._dropped_ttl = self._dropped_cap = 0

    # --- writing -----------------------------------------------------------------------
    def put(self, messages: Iterable[Message], inflight: Collection[int] = ()) -> list[int]:
        """Store ``messages`` in one transaction (one commit, one fsync with ``sync="full"``); their row ids.

        Oldest rows not in ``inflight`` are dropped first when the byte cap would be exceeded.
        A single message larger than the cap is still stored (the cap then holds only it).
        """
        now = self._clock()
        rows = [(m.topic, bytes(m.payload), m.content_type, m.msg_id, int(m.seq), now, len(m.payload))
                for m in messages]
        if not rows:
            return []
        incoming = sum(r[-1] for r in rows)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._bytes + incoming > self.max_bytes:
                    self._drop_oldest(self._bytes + incoming - self.max_bytes, inflight)
                ids = []
                for row in rows:
                    cur = self._db.execute("INSERT INTO outbox (topic, payload, content_type, msg_id, seq, created, "
                                           "size) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                    ids.append(int(cur.lastrowid))
                if self.audit:
                    audit = [(i, r[3], r[0], r[4], r[5]) for i, r in zip(ids, rows)]
                    self._db.executemany("INSERT INTO produced (id, msg_id, topic, seq, created) VALUES (?,?,?,?,?)",
                                         audit)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += len(rows)
            self._bytes += incoming
            self._written += len(rows)
            return ids

    def _drop_oldest(self, excess: int, inflight: Collection[int]) -> None:
        """Inside a transaction: delete the oldest rows not in ``inflight`` until ``excess`` bytes are freed."""
        victims, freed = [], 0
        for row_id, size in self._db.execute("SELECT id, size FROM outbox ORDER BY id"):
            if row_id in inflight:
                continue
            victims.append(row_id)
            freed += size
            if freed >= excess:
                break
        self._delete(victims, "dropped_cap")
        self._dropped_cap += len(victims)

    def _delete(self, ids: list[int], outcome: str | None) -> int:
        """Inside a transaction: delete rows by id, updating depth/bytes; marks the audit log."""
        freed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            size = self._db.execute(f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox WHERE id IN ({marks})",
                                    chunk).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
            if self.audit and outcome:
                self._db.execute(f"UPDATE produced SET outcome = ? WHERE id IN ({marks})", [outcome, *chunk])
            self._bytes -= int(size[0])
            self._depth -= int(size[1])
            freed += int(size[1])
        return freed

    def ack(self, ids: Iterable[int], rejected: bool = False) -> int:
        """Delete acknowledged rows (one transaction); how many existed.

        ``rejected``: the broker answered with an error reason code (MQTT 5, e.g. not authorized):
        the rows are deleted too (resending cannot succeed), counted apart and marked in the audit.
        """
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                done = self._delete(ids, "rejected" if rejected else None)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if rejected:
                self._rejected += done
            else:
                self._acked += done
            return done

    def expire(self, inflight: Collection[int] = ()) -> int:
        """Drop rows older than ``ttl_s`` (not in ``inflight``); how many."""
        if self.ttl_s is None:
            return 0
        cutoff = self._clock() - self.ttl_s
        with self._lock:
            old = [r for (r,) in self._db.execute("SELECT id FROM outbox WHERE created < ? ORDER BY id", (cutoff,))
                   if r not in inflight]
            if not old:
                return 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._delete(old, "dropped_ttl")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._dropped_ttl += gone
            return gone

    # --- reading -----------------------------------------------------------------------
    def fetch(self, after: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``id > after``, oldest first (the replay order)."""
        with self._lock:
            cur = self._db.execute("SELECT id, topic, payload, content_type, msg_id, seq, created FROM outbox "
                                   "WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
            return [OutboxRow(int(i), t, bytes(p), ct, m, int(s), float(c)) for i, t, p, ct, m, s, c in cur]

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(self._depth, self._bytes, self._written, self._acked, self._dropped_ttl,
                               self._dropped_cap, self._rejected)

    def produced(self) -> list[dict]:
        """The audit log (``audit=True``): every message ever stored, in order, with its drop outcome if any."""
        with self._lock:
            cur = self._db.execute("SELECT id, msg_id, topic, seq, created, outcome FROM produced ORDER BY id")
            return [dict(zip(("id", "msg_id", "topic", "seq", "created", "outcome"), row)) for row in cur]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Message", "Outbox", "OutboxRow", "OutboxStats", "Sync"]
