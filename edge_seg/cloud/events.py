"""Zone events in the consumer's database: the ``events`` table and ``iter_events`` to query it.

One row per ``edge_seg.event/v1`` message, written in the same transaction as its ``messages``
row, so a redelivered event (same ``msg_id``) is stored once. Query with SQL on
``consumer.sqlite`` (``SELECT * FROM events WHERE zone = 'driveway' ORDER BY ts``) or with
``iter_events(out_dir, device=..., zone=...)``. An event's JPEG snapshot (zones with
``snapshot: true``) is stored as ``events/{device}/{seq:09d}_{msg_id}.jpg`` (``StoredEvent.snapshot``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_seg.errors import InputError

EVENTS_SQL = """
CREATE TABLE IF NOT EXISTS events (msg_id TEXT PRIMARY KEY, device TEXT NOT NULL, zone TEXT NOT NULL,
    class TEXT NOT NULL, kind TEXT NOT NULL, track_ids TEXT NOT NULL, value REAL NOT NULL, frame_seq INTEGER,
    seq INTEGER NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_zone ON events (device, zone, ts);
"""


@dataclass(frozen=True)
class StoredEvent:
    device: str
    zone: str
    class_name: str
    kind: str
    track_ids: tuple[int, ...]
    value: float
    frame_seq: int | None
    seq: int
    ts: float
    msg_id: str
    snapshot: Path | None = None  # the event's JPEG snapshot, when it carried one
    camera: str | None = None  # the camera of a device with several (its messages row says which)


def insert_event(db: sqlite3.Connection, msg) -> None:
    """The events row of an ``EventMessage`` (inside the caller's transaction)."""
    db.execute("INSERT OR IGNORE INTO events (msg_id, device, zone, class, kind, track_ids, value, frame_seq, seq, ts)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (msg.msg_id, msg.device, msg.zone, msg.class_, msg.kind, json.dumps(list(msg.track_ids)), msg.value,
                msg.frame_seq, msg.seq, msg.ts))


def iter_events(out_dir: str | os.PathLike, device: str | None = None, zone: str | None = None
                ) -> Iterator[StoredEvent]:
    """The stored zone events of a consumer's ``out_dir`` (each once), by device, capture time and seq."""
    out = Path(out_dir)
    if not (out / "consumer.sqlite").is_file():
        raise InputError(f"{out} holds no consumer.sqlite: not a consumer's output directory")
    db = sqlite3.connect(f"file:{out / 'consumer.sqlite'}?mode=ro", uri=True)
    try:
        sql, args = ("SELECT e.device, e.zone, e.class, e.kind, e.track_ids, e.value, e.frame_seq, e.seq, e.ts, "
                     "e.msg_id, m.path, m.camera FROM events e LEFT JOIN messages m ON m.msg_id = e.msg_id"), []
        where = [(c, v) for c, v in (("e.device", device), ("e.zone", zone)) if v is not None]
        if where:
            sql += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
            args = [v for _, v in where]
        rows = db.execute(sql + " ORDER BY e.device, e.ts, e.seq", args).fetchall()
    except sqlite3.OperationalError:  # an out_dir from before events were stored
        rows = []
    finally:
        db.close()
    for dev, zone_name, cls, kind, ids, value, frame_seq, seq, ts, msg_id, path, camera in rows:
        yield StoredEvent(dev, zone_name, cls, kind, tuple(json.loads(ids)), value, frame_seq, seq, ts, msg_id,
                          None if path is None else out / path, camera)


__all__ = ["EVENTS_SQL", "StoredEvent", "insert_event", "iter_events"]
