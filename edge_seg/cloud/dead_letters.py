"""Messages the consumer could not store, kept so nothing is silently lost and nothing is redelivered forever.

A message that does not decode, passes a decode limit, arrives on the wrong topic or raises anything
while being stored is acknowledged and parked here instead: one row of the ``dead_letters`` table
in the consumer's ``consumer.sqlite`` with the topic, the reason (one line: the error's type and
text), the time, the content type, the payload's size and SHA-256, and the payload itself up to
``KEEP_BYTES`` (``truncated`` says when it was cut). The table keeps the newest ``MAX_ROWS``;
``consumer_counters`` holds the total ever parked (``dead_letters``), which survives restarts and
pruning. ``iter_dead_letters(out_dir)`` reads them back (e.g. to replay after a fix).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_seg.errors import InputError

KEEP_BYTES = 256 * 1024  # payload bytes kept per dead letter (a device's messages are 128 KB by default)
MAX_ROWS = 5000  # newest dead letters kept; older ones are deleted (the counter still counts them)
MAX_TOPIC = 1024  # topic characters kept
MAX_REASON = 500  # reason characters kept
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, received REAL NOT NULL,
    topic TEXT NOT NULL, reason TEXT NOT NULL, content_type TEXT, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    truncated INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS consumer_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class DeadLetter:
    """One parked message; ``payload`` is its first ``KEEP_BYTES`` (all of it unless ``truncated``)."""

    id: int
    received: float
    topic: str
    reason: str
    content_type: str | None
    size: int
    sha256: str
    truncated: bool
    payload: bytes


def reason_of(err: BaseException) -> str:
    """``Type: text`` on one line, at most ``MAX_REASON`` characters."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:MAX_REASON] if text else type(err).__name__


class DeadLetters:
    """The dead-letter table of one consumer database (shares the store's connection, autocommit)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.db.executescript(_SCHEMA_SQL)

    def add(self, topic: str, payload: bytes, reason: str, content_type: str | None = None) -> int:
        """Park one message; the total parked so far. Raises ``sqlite3.Error`` if it cannot be written."""
        data = bytes(payload)
        kept = data[:KEEP_BYTES]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute(
                "INSERT INTO dead_letters (received, topic, reason, content_type, size, sha256, truncated, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), _text(topic, MAX_TOPIC), _text(" ".join(reason.split()), MAX_REASON),
                 None if content_type is None else _text(content_type, 256), len(data),
                 hashlib.sha256(data).hexdigest(), int(len(kept) < len(data)), kept))
            self.db.execute("DELETE FROM dead_letters WHERE id <= ?", (cur.lastrowid - MAX_ROWS,))
            self.db.execute("INSERT INTO consumer_counters VALUES ('dead_letters', 1) "
                            "ON CONFLICT(name) DO UPDATE SET value = value + 1")
            total = self.db.execute("SELECT value FROM consumer_counters WHERE name = 'dead_letters'").fetchone()[0]
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return int(total)

    def total(self) -> int:
        """Messages ever parked in this database (pruned rows included)."""
        row = self.db.execute("SELECT value FROM consumer_counters WHERE name = 'dead_letters'").fetchone()
        return 0 if row is None else int(row[0])


def _text(value: str, limit: int) -> str:
    """At most ``limit`` characters that SQLite can store (lone surrogates replaced)."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def iter_dead_letters(out_dir: str | os.PathLike) -> Iterator[DeadLetter]:
    """The dead letters of a consumer's ``out_dir``, oldest first."""
    path = Path(out_dir) / "consumer.sqlite"
    if not path.is_file():
        raise InputError(f"{out_dir} holds no consumer.sqlite: not a consumer's output directory")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            rows = db.execute("SELECT id, received, topic, reason, content_type, size, sha256, truncated, payload "
                              "FROM dead_letters ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # a database from before dead letters
            rows = []
    finally:
        db.close()
    for row in rows:
        yield DeadLetter(*row[:7], bool(row[7]), bytes(row[8]))


__all__ = ["DeadLetter", "DeadLetters", "KEEP_BYTES", "MAX_ROWS", "iter_dead_letters", "reason_of"]
