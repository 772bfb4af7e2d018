"""Where the consumer puts what it receives: one output directory, SQLite as the source of truth.

Layout of ``out_dir``::

    consumer.sqlite                 msg_id (dedupe), device, seq, frame_seq of every stored message, COCO rows,
                                    categories
    messages.jsonl                  one JSON line per stored message (pixel data left out)
    masks/{device}/{seq:09d}_{msg_id}.png      frame-size class map, palette PNG (pixels = class ids)
    labelling/images/{device}/{seq:09d}_{msg_id}.jpg   uncertain crops, the labelling queue (one folder per
                                    device: names of two devices never collide)
    events/{device}/{seq:09d}_{msg_id}.jpg     a zone event's snapshot, when it carries one (the
                                    ``messages`` row's ``path``)
    labelling/annotations.json      COCO: the crops + pre-annotations as RLE: per class (semantic crops) or
                                    per instance (instance crops: score, reasons, runner-up in attributes)
    devices.json                    per device: last status, counts, last seen, gaps per topic (messages that
                                    never arrived, ``edge_seg.cloud.gaps``)
    consumer.sqlite: dead_letters   what could not be stored, with the reason (``edge_seg.cloud.dead_letters``)

A message is stored in this order: files (each written to a temporary name and renamed) → one
SQLite transaction (``INSERT`` of the msg_id, plus the crop's COCO rows) → the JSON line. A
msg_id already in SQLite is a duplicate and is skipped. A crash after the files but before the
commit leaves files that the redelivered message overwrites; a crash between the commit and the
JSON line loses that line only (SQLite stays authoritative: ``iter_masks`` reads it).
``annotations.json`` and ``devices.json`` are regenerated from state (at most once a second and
on close), written to a temporary file and ``os.replace``-d, so readers never see half a file.
One output directory belongs to one consumer process.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_seg.cloud.dead_letters import DeadLetters
from edge_seg.cloud.events import EVENTS_SQL, insert_event
from edge_seg.cloud.gaps import GapCounter
from edge_seg.cloud.records import (
    coco_dataset,
    coco_rows,
    crop_file_name,
    instance_id_map,  # noqa: F401 - re-exported (tests, other programs)
    kind_of,
    mask_png,
    message_record,
    split_stream,
    stream_of,
    track_device,
    track_rows,
    write_atomic,
)
from edge_seg.errors import InputError
from edge_seg.maskio import read_palette_png
from edge_seg.publish.messages import (
    CropMessage,
    EventMessage,
    InstanceCropMessage,
    InstancesMessage,
    MaskMessage,
    Message,
)
from edge_seg.publish.payload_masks import check_limits

FLUSH_INTERVAL_S = 1.0
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS messages (msg_id TEXT PRIMARY KEY, kind TEXT NOT NULL, device TEXT NOT NULL,
    seq INTEGER NOT NULL, ts REAL NOT NULL, received REAL NOT NULL, path TEXT, frame_seq INTEGER);
CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS coco_images (id INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL, annotations TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instance_tracks (msg_id TEXT NOT NULL, device TEXT NOT NULL, frame_seq INTEGER,
    ts REAL NOT NULL, track_id INTEGER NOT NULL, class_id INTEGER NOT NULL, score REAL NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instance_tracks_track ON instance_tracks (device, track_id, ts);
"""


@dataclass(frozen=True)
class StoredMask:
    """One stored mask message; ``class_map()`` reads its PNG."""

    device: str
    seq: int
    msg_id: str
    ts: float
    path: Path
    frame_seq: int | None = None  # the device's frame number (``seq`` numbers the device's mask messages)

    def class_map(self) -> np.ndarray:
        return read_palette_png(self.path)


class Store:
    """The output directory of one consumer (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.out / "consumer.sqlite", timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA_SQL)
        self.db.executescript(EVENTS_SQL)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(messages)")}
        if "frame_seq" not in columns:
            self.db.execute("ALTER TABLE messages ADD COLUMN frame_seq INTEGER")  # an out_dir from before
        if "camera" not in columns:  # the camera of a device with several (NULL: the only one)
            self.db.execute("ALTER TABLE messages ADD COLUMN camera TEXT")
        self.db.execute("CREATE INDEX IF NOT EXISTS messages_stream ON messages (device, kind)")
        self.gaps = GapCounter(self._highest)
        self.dead_letters = DeadLetters(self.db)
        self._jsonl = open(self.out / "messages.jsonl", "a", encoding="utf-8")
        self.devices: dict[str, dict] = self._load_devices()
        self._dirty_coco = not (self.out / "labelling" / "annotations.json").exists()
        self._dirty_devices = False
        self._last_flush = 0.0
        self._closed = False

    def _load_devices(self) -> dict[str, dict]:
        try:
            data = json.loads((self.out / "devices.json").read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _highest(self, device: str, stream: str, msg_id: str) -> int | None:
        """The highest ``seq`` among the last 100 messages stored of a stream, but ``msg_id`` (gap counting)."""
        camera, kind = split_stream(stream)
        row = self.db.execute("SELECT MAX(seq) FROM (SELECT seq FROM messages WHERE device = ? AND kind = ? AND "
                              "camera IS ? AND msg_id != ? AND seq > 0 ORDER BY rowid DESC LIMIT 100)",
                              (device, kind, camera, msg_id)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def describe(self) -> str:
        return str(self.out)

    def seen(self, msg_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM messages WHERE msg_id = ?", (msg_id,)).fetchone() is not None

    def store(self, msg: Message) -> bool:
        """Store one decoded message; False if its msg_id was already stored (a duplicate)."""
        if self.seen(msg.msg_id):
            return False
        check_limits(msg)  # OverLimitError before any pixel is decoded or any file written
        kind = kind_of(msg)
        now = time.time()
        path: Path | None = None
        coco: tuple[dict, list[dict]] | None = None
        if isinstance(msg, (MaskMessage, InstancesMessage)):
            suffix = "_instances" if isinstance(msg, InstancesMessage) else ""
            path = self.out / "masks" / msg.device / f"{msg.seq:09d}_{msg.msg_id}{suffix}.png"
            write_atomic(path, mask_png(msg))
        elif isinstance(msg, (CropMessage, InstanceCropMessage)):
            name = crop_file_name(msg.device, msg.seq, msg.msg_id)
            path = self.out / "labelling" / name
            write_atomic(path, msg.jpeg)
            coco = coco_rows(msg, name)
        elif isinstance(msg, EventMessage) and msg.snapshot_jpeg is not None:
            path = self.out / "events" / msg.device / f"{msg.seq:09d}_{msg.msg_id}.jpg"
            write_atomic(path, base64.b64decode(msg.snapshot_jpeg))
        rel = None if path is None else path.relative_to(self.out).as_posix()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute("INSERT OR IGNORE INTO messages (msg_id, kind, device, seq, ts, received, path, "
                                  "frame_seq, camera) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                  (msg.msg_id, kind, msg.device, msg.seq, msg.ts, now, rel,
                                   getattr(msg, "frame_seq", None), getattr(msg, "camera", None)))
            if cur.rowcount == 0:
                self.db.execute("ROLLBACK")
                return False
            if isinstance(msg, InstancesMessage):  # tracked instances: one row each (dwell time, counting)
                self.db.executemany("INSERT INTO instance_tracks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    track_rows(msg))
            if isinstance(msg, EventMessage):
                insert_event(self.db, msg)
            if coco is not None:
                image, anns = coco
                names = [ann.pop("category_name") for ann in anns]
                for name in names:
                    self.db.execute("INSERT OR IGNORE INTO categories (name) VALUES (?)", (name,))
                ids = dict(self.db.execute(f"SELECT name, id FROM categories WHERE name IN "
                                           f"({','.join('?' * len(names))})", names).fetchall())
                for ann, name in zip(anns, names):
                    ann["category_id"] = ids[name]
                self.db.execute("INSERT INTO coco_images (msg_id, image, annotations) VALUES (?, ?, ?)",
                                (msg.msg_id, json.dumps(image), json.dumps(anns)))
                self._dirty_coco = True
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a failed COMMIT may have rolled back already
                self.db.execute("ROLLBACK")
            raise
        record = {"kind": kind, "received": round(now, 6), "path": rel, **message_record(msg)}
        self._jsonl.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._jsonl.flush()
        self._track(msg, stream_of(msg, kind), now)  # a camera's topics count on their own
        return True

    def _track(self, msg: Message, stream: str, now: float) -> None:
        delta = self.gaps.observe(msg.device, stream, msg.seq, msg.msg_id)
        track_device(self.devices.setdefault(msg.device, {"counts": {}}), msg, stream, now, delta)
        self._dirty_devices = True

    def coco(self) -> dict:
        """The COCO dataset of the labelling queue (ids: images and categories from SQLite)."""
        return coco_dataset(self.db.execute("SELECT id, name FROM categories ORDER BY id").fetchall(),
                            self.db.execute("SELECT id, image, annotations FROM coco_images ORDER BY id"))

    def flush(self, force: bool = False) -> None:
        """Rewrite annotations.json / devices.json if they changed (at most once a second unless forced)."""
        now = time.monotonic()
        if self._closed or not force and now - self._last_flush < FLUSH_INTERVAL_S:
            return
        self._last_flush = now
        if self._dirty_coco:
            self._dirty_coco = False
            write_atomic(self.out / "labelling" / "annotations.json", json.dumps(self.coco()).encode())
        if self._dirty_devices:
            self._dirty_devices = False
            write_atomic(self.out / "devices.json", json.dumps(self.devices, indent=1, sort_keys=True).encode())

    def close(self) -> None:
        """Write the state files and close (idempotent)."""
        if self._closed:
            return
        self.flush(force=True)
        self._closed = True
        self._jsonl.close()
        self.db.close()


def iter_masks(out_dir: str | os.PathLike, device: str | None = None) -> Iterator[StoredMask]:
    """The stored mask messages of a consumer's ``out_dir`` (each once), by device and seq."""
    out = Path(out_dir)
    if not (out / "consumer.sqlite").is_file():
        raise InputError(f"{out} holds no consumer.sqlite: not a consumer's output directory")
    db = sqlite3.connect(f"file:{out / 'consumer.sqlite'}?mode=ro", uri=True)
    try:
        sql = "SELECT device, seq, msg_id, ts, path, frame_seq FROM messages WHERE kind = 'mask'"
        args: tuple = ()
        if device is not None:
            sql, args = sql + " AND device = ?", (device,)
        rows = db.execute(sql + " ORDER BY device, seq, msg_id", args).fetchall()
    finally:
        db.close()
    for dev, seq, msg_id, ts, path, frame_seq in rows:
        yield StoredMask(dev, seq, msg_id, ts, out / path, frame_seq)


__all__ = ["Store", "StoredMask", "crop_file_name", "instance_id_map", "iter_masks", "kind_of"]
