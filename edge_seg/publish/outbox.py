"""The on-disk outbox: every QoS 1 data message is committed here before paho sees it.

paho-mqtt keeps unacknowledged messages only in memory, so a process crash or a restart would
lose them. The publisher therefore writes each message to this SQLite table first, hands it to
paho, and deletes the row when the broker's PUBACK arrives (paho ``mid`` → row id). After a
reconnect, paho itself retransmits the few messages it holds (the publisher's bounded window);
after a restart, the publisher starts again from the oldest row: replay is in id order, which
is the order of ``put``. Ids come from ``AUTOINCREMENT`` so they never repeat, even when the
table empties (or the file is replaced after corruption: the next id is seeded past the last).

Bounds: rows older than ``ttl_s`` are dropped, age measured on a monotonic timeline that
survives reboots and ignores wall-clock steps (``edge_seg.publish.outbox_clock``). ``max_bytes``
bounds the file on disk, database and WAL (``edge_seg.publish.outbox_file``): when a commit
would leave more pages in use than the budget, the oldest rows go first. Rows handed to paho and
not yet acknowledged are never dropped (paho would send them anyway); a single message larger
than the cap is kept alone. Drops are counted (``stats()``) for the metrics.

Bad luck never stops the device: a corrupt file is moved aside and a new one created
(``recovered_corrupt``); a full disk (or any write error) is logged once per change of state
with SQLite's own error, ``put`` then drops the oldest unsent rows to make room, or the new
messages when nothing can go (``dropped_full``), and never raises; when a write succeeds again,
that is logged once and the outbox carries on.

Durability (``sync``): the database is in WAL mode.

* ``"normal"`` (default): a commit appends to the WAL without fsync; the WAL is fsynced at each
  checkpoint. A committed row survives a crash or SIGKILL of the process (the OS has the
  pages); a power cut can lose the transactions since the last checkpoint, never corrupt the
  file.
* ``"full"``: one fsync per commit: also survives a power cut, at the cost of the fsync (several
  ms on SD cards and eMMC, see ``python -m edge_seg.publish.outbox_bench``). The publisher
  commits all messages waiting in its queue in one transaction, so the fsync is paid per batch.

We choose ``normal``: the failure the outbox exists for is the process or the link dying, and a
power cut also takes the camera and the in-memory queue with it; ``full`` is one config word
away for deployments that must also survive power loss.

``audit=True`` (debug/tests) keeps an append-only ``produced`` table, written in the same
transaction as each message (and marked on a drop), so a test can compare what the device
durably produced with what a consumer received.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Literal, TypeVar

from edge_seg.errors import EdgeSegError
from edge_seg.publish import outbox_file
from edge_seg.publish.outbox_clock import Timeline, boot_id, boottime
from edge_seg.publish.outbox_types import Message, OutboxRow, OutboxStats, one_line

log = logging.getLogger(__name__)
Sync = Literal["normal", "full"]
_SYNC_PRAGMA = {"normal": "NORMAL", "full": "FULL"}
_ROW_OVERHEAD = 64  # bytes a row costs beyond its payload (header, topic, msg_id, index entry)
_HINT = "the outbox lives in the state directory: set device.state_dir (--state-dir) to a writable one"
T = TypeVar("T")


class Outbox:
    """A thread-safe (one connection behind a lock) SQLite outbox in WAL mode.

    ``clock`` is the wall clock (stamped on rows); ``monotonic`` and ``boot_id`` drive the TTL.
    """

    def __init__(self, path: str | Path, *, ttl_s: float | None = 86_400.0, max_bytes: int = 256 * 1024 * 1024,
                 sync: Sync = "normal", audit: bool = False, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = boottime, boot_id: Callable[[], str] = boot_id):
        if sync not in _SYNC_PRAGMA:
            raise ValueError(f"outbox sync must be one of {', '.join(_SYNC_PRAGMA)}, got {sync!r}")
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgeSegError(f"cannot create the MQTT outbox directory {self.path.parent}: "
                               f"{err.strerror or err}; {_HINT}") from None
        self.ttl_s, self.max_bytes, self.sync, self.audit, self._clock = ttl_s, max_bytes, sync, audit, clock
        self._timeline = Timeline(monotonic, boot_id)
        self._lock = threading.Lock()
        self._written = self._acked = self._rejected = self._dropped_ttl = self._dropped_cap = 0
        self._dropped_full = self._recovered = self._depth = self._bytes = self._last_id = 0
        self._trouble = outbox_file.Trouble(self.path)
        self._unacked: set[int] = set()  # acknowledged rows whose delete failed (disk full): retried at the next ack
        self._trimmed = 0  # rows the current put dropped for the cap
        self._db = self._open()

    # --- opening and recovering ---------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Connect and prepare; a corrupt file is set aside once and a new one made; other errors are one line."""
        for attempt in range(2):
            db = None
            try:
                db = outbox_file.connect(self.path)
                self._prepare(db)
                return db
            except BaseException as err:
                if isinstance(err, sqlite3.Error) and attempt == 0 and db is not None and outbox_file.is_corrupt(err):
                    self._set_aside(err, db)  # moved while open: closing cannot delete its WAL
                    continue
                if db is not None:
                    db.close()
                if not isinstance(err, sqlite3.Error):
                    raise
                what = "the" if attempt == 0 else "a new"
                raise EdgeSegError(f"cannot open {what} MQTT outbox {self.path}: {one_line(err)}; {_HINT}") from None
        raise AssertionError("unreachable")

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Check ``db``, create or migrate its tables, resume the timeline, read the counters."""
        outbox_file.check(db, _SYNC_PRAGMA[self.sync])
        outbox_file.enable_incremental_vacuum(db, self.path)
        self._size = outbox_file.budget(self.max_bytes, int(db.execute("PRAGMA page_size").fetchone()[0]))
        outbox_file.configure(db, self._size)
        db.execute("BEGIN IMMEDIATE")
        try:
            migrated = outbox_file.create_or_migrate(db, self._timeline.attach(db))
            if self._last_id:  # a replaced file: ids go on past those the publisher has seen
                if not db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'",
                                  (self._last_id,)).rowcount:
                    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (self._last_id,))
            last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            depth, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if migrated:
            log.info("outbox %s: %d message(s) of an older format get one TTL from now", self.path, migrated)
        self._last_id = max(self._last_id, int(last[0]) if last else 0)
        self._depth, self._bytes = int(depth), int(size)

    def _set_aside(self, err: BaseException, db: sqlite3.Connection) -> None:
        """Move the corrupt file (and its WAL, SHM) aside while ``db`` still holds it open, then close ``db``."""
        try:
            aside = outbox_file.move_aside(self.path, self._clock())
        except OSError as move_err:
            raise EdgeSegError(f"the MQTT outbox {self.path} is corrupt ({one_line(err)}) and cannot be moved "
                               f"aside: {move_err.strerror or move_err}; {_HINT}") from None
        finally:
            try:
                db.close()
            except sqlite3.Error:
                pass
        self._recovered += 1
        log.warning("the MQTT outbox %s is corrupt (%s): moved aside as %s, a new one is started; its unsent "
                    "messages are lost", self.path, one_line(err), aside.name)

    def _recover(self, err: BaseException) -> None:
        """Lock held: the file went bad while running: set it aside and carry on with a new one."""
        self._set_aside(err, self._db)
        self._unacked.clear()
        self._db = self._open()

    # --- transactions and trouble -------------------------------------------------------
    def _transaction(self, body: Callable[[], T]) -> T:
        """Lock held: ``body`` in one IMMEDIATE transaction; on failure rolls back (if SQLite has not) and re-raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            self._db.execute("COMMIT")
            return result
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back by itself on some errors (SQLITE_FULL): not twice
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._recount()
            raise

    def _recount(self) -> None:
        try:
            depth, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
            self._depth, self._bytes = int(depth), int(size)
        except sqlite3.Error:
            pass

    def _failed(self, err: sqlite3.Error) -> None:
        """Lock held: a corrupt file is replaced; any other error is reported once per change (the real one)."""
        if outbox_file.is_corrupt(err):
            self._recover(err)
            return
        self._trouble.failed(one_line(err), self._timeline.now())

    # --- writing -----------------------------------------------------------------------
    def put(self, messages: Iterable[Message], inflight: Collection[int] = ()) -> list[int]:
        """Store ``messages`` in one transaction (one commit, one fsync with ``sync="full"``); their row ids.

        Never raises on a write error: the messages are then dropped (``dropped_full``) and ``[]`` returned.
        """
        wall = self._clock()
        rows = [(m.topic, bytes(m.payload), m.content_type, m.msg_id, int(m.seq), wall, len(m.payload))
                for m in messages]
        if not rows:
            return []
        with self._lock:
            try:
                ids = self._transaction(lambda: self._insert(rows, inflight))
                self._trouble.succeeded(self._timeline.now(), self._dropped_full)
            except sqlite3.Error as err:
                self._failed(err)
                ids = self._put_short_of_space(rows, inflight, retry=outbox_file.is_corrupt(err))
            if ids:
                self._dropped_cap += self._trimmed  # counted once committed
            self._written += len(ids)
            self._shrink_wal()
            return ids

    def _insert(self, rows: list[tuple], inflight: Collection[int]) -> list[int]:
        """Inside a transaction: insert, then drop the oldest rows until the file is back within its page budget."""
        born, self._trimmed = self._timeline.now(), 0
        ids = [int(self._db.execute("INSERT INTO outbox (topic, payload, content_type, msg_id, seq, created, size, "
                                    "born) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row, born)).lastrowid)
               for row in rows]
        if self.audit:
            self._db.executemany("INSERT INTO produced (id, msg_id, topic, seq, created) VALUES (?,?,?,?,?)",
                                 [(i, r[3], r[0], r[4], r[5]) for i, r in zip(ids, rows)])
        self._depth += len(rows)
        self._bytes += sum(r[-1] for r in rows)
        self._last_id = max(self._last_id, *ids)
        self._trim(set(inflight) | set(ids))
        return ids

    def _trim(self, keep: set[int]) -> None:
        """Inside a transaction: oldest rows (not in ``keep``) out until the pages in use fit the budget."""
        pages, used = outbox_file.used_pages(self._db)
        if pages <= self._size.pages:
            return
        while used > self._size.pages:
            victims = self._oldest((used - self._size.pages) * self._size.page_size, keep)
            if not victims:
                break  # only kept rows left (in flight, or just put): over the cap until they go
            self._trimmed += self._delete(victims, "dropped_cap")
            pages, used = outbox_file.used_pages(self._db)
        for _ in range(min(pages - self._size.pages, pages - used)):  # give free pages beyond the budget back
            self._db.execute("PRAGMA incremental_vacuum(1)")  # one page per step (Python steps a pragma once)

    def _oldest(self, excess: int, keep: Collection[int]) -> list[int]:
        """The oldest row ids not in ``keep`` whose rows free at least ``excess`` bytes."""
        victims, freed = [], 0
        for row_id, size in self._db.execute("SELECT id, size FROM outbox ORDER BY id"):
            if row_id in keep:
                continue
            victims.append(row_id)
            freed += size + _ROW_OVERHEAD
            if freed >= excess:
                break
        return victims

    def _put_short_of_space(self, rows: list[tuple], inflight: Collection[int], retry: bool) -> list[int]:
        """Lock held, a write failed: drop the oldest unsent rows (more each try) to store ``rows``; else lose them.

        ``retry``: try once as is first (the file was just replaced after corruption).
        """
        need = sum(r[-1] + _ROW_OVERHEAD for r in rows) + self._size.page_size
        for attempt in range(0 if retry else 1, 4):
            try:
                if attempt:
                    victims = self._oldest(need << (attempt - 1), set(inflight))
                    if not victims:
                        break
                    self._dropped_full += self._transaction(lambda v=victims: self._delete(v, "dropped_full"))
                return self._transaction(lambda: self._insert(rows, inflight))
            except sqlite3.Error as err:
                if outbox_file.is_corrupt(err):
                    self._failed(err)
                    break
        self._dropped_full += len(rows)
        return []

    def _shrink_wal(self) -> None:
        """Lock held: a transaction that left the WAL beyond its share of ``max_bytes`` is checkpointed away."""
        if outbox_file.wal_bytes(self.path) > self._size.wal_bytes:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as err:
                log.debug("outbox WAL checkpoint failed: %s", err)

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
        When the delete fails (disk full), 0 is returned and the rows are deleted with a later ack.
        """
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            if not rejected:
                ids += [i for i in self._unacked if i not in ids]
            try:
                done = self._transaction(lambda: self._delete(ids, "rejected" if rejected else None))
            except sqlite3.Error as err:
                if not rejected:
                    self._unacked.update(ids)
                self._failed(err)
                return 0
            if rejected:
                self._rejected += done
            else:
                self._acked += done
                self._unacked.clear()
            return done

    def expire(self, inflight: Collection[int] = ()) -> int:
        """Drop rows older than ``ttl_s`` of outbox time (not in ``inflight``); how many. Checkpoints the timeline."""
        def body() -> tuple[int, int]:
            now = self._timeline.checkpoint(self._db)
            acked = self._delete(sorted(self._unacked), None) if self._unacked else 0  # acked while the disk was full
            if self.ttl_s is None:
                return acked, 0
            old = [r for (r,) in self._db.execute("SELECT id FROM outbox WHERE born < ? ORDER BY id",
                                                  (now - self.ttl_s,)) if r not in inflight]
            return acked, self._delete(old, "dropped_ttl") if old else 0

        with self._lock:
            try:
                acked, gone = self._transaction(body)
            except sqlite3.Error as err:
                self._failed(err)
                return 0
            self._unacked.clear()
            self._acked += acked
            self._dropped_ttl += gone
            return gone

    # --- reading -----------------------------------------------------------------------
    def fetch(self, after: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``id > after``, oldest first (the replay order)."""
        with self._lock:
            try:
                cur = self._db.execute("SELECT id, topic, payload, content_type, msg_id, seq, created FROM outbox "
                                       "WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
                return [OutboxRow(int(i), t, bytes(p), ct, m, int(s), float(c)) for i, t, p, ct, m, s, c in cur]
            except sqlite3.Error as err:
                self._failed(err)
                return []

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(self._depth, self._bytes, self._written, self._acked, self._dropped_ttl,
                               self._dropped_cap, self._rejected, self._dropped_full, self._recovered,
                               outbox_file.on_disk(self.path))

    def produced(self) -> list[dict]:
        """The audit log (``audit=True``): every message ever stored, in order, with its drop outcome if any."""
        with self._lock:
            cur = self._db.execute("SELECT id, msg_id, topic, seq, created, outcome FROM produced ORDER BY id")
            return [dict(zip(("id", "msg_id", "topic", "seq", "created", "outcome"), row)) for row in cur]

    def close(self) -> None:
        with self._lock:
            try:
                self._transaction(lambda: self._timeline.checkpoint(self._db))
            except sqlite3.Error:
                pass
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Message", "Outbox", "OutboxRow", "OutboxStats", "Sync"]
