"""The fleet store: rows in PostgreSQL, masks and crops in S3-compatible object storage.

``edge-seg consume --db postgresql://… --objects s3://bucket/prefix`` (schema:
``edge_seg.cloud.migrations``; objects: ``edge_seg.cloud.objects``). Any number of consumers may
store into one database and bucket (one MQTT 5 share group): a message is stored by ONE SQL
statement, ``INSERT INTO messages … ON CONFLICT (msg_id) DO NOTHING`` with the rest of its rows
(masks / labelling / events / instance_tracks, the ``streams`` counts and the ``devices`` row) in
data-modifying CTEs that only write when that insert did: one atomic transaction and one round trip
per message, and a redelivered or twice-delivered ``msg_id`` writes nothing.

Crops' JPEGs (and zone events' snapshots) are written to object storage BEFORE their row
(content-addressed keys: a retry writes the same key again), so a committed row always names a
stored object. Masks are kept as received (the RLE or the device's PNG, in ``masks.body``):
decoding and PNG encoding are what cost CPU, so frame-size PNGs are rendered on demand
(``mask_png``) or in batches (``render_masks``, ``edge-seg fleet render-masks``: a thread pool
writes them to object storage and sets ``masks.png_key``).

Gaps are counted by the database (``streams``: highest - lowest + 1 - stored since the last counter
reset), right whichever consumer stored which message; ``gaps.counts`` is read at ``flush``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

from edge_seg.cloud import pg
from edge_seg.cloud.dead_letters import KEEP_BYTES, MAX_REASON, MAX_ROWS, MAX_TOPIC
from edge_seg.cloud.gaps import LATE_WINDOW, RESET_JUMP
from edge_seg.cloud.objects import ObjectStore
from edge_seg.cloud.records import (
    coco_dataset,
    coco_rows,
    crop_file_name,
    kind_of,
    mask_png,
    message_record,
    stream_of,
    track_device,
    track_rows,
)
from edge_seg.errors import StoreUnavailableError
from edge_seg.publish.messages import (
    CropMessage,
    EventMessage,
    InstanceCropMessage,
    InstancesMessage,
    MaskMessage,
    Message,
    MetricsMessage,
    StatusMessage,
)
from edge_seg.publish.messages import decode as decode_message
from edge_seg.publish.payload_masks import check_limits

FLUSH_INTERVAL_S = 1.0
_RESET = f"(excluded.highest > s.highest + {RESET_JUMP} OR excluded.highest < s.highest - {LATE_WINDOW})"
_BASE = f"""WITH m AS (INSERT INTO messages (msg_id, kind, device, seq, ts, received, frame_seq, object_key, record,
    camera) VALUES (%(msg_id)s, %(kind)s, %(device)s, %(seq)s, %(ts)s, %(now)s, %(frame_seq)s, %(key)s, %(record)s,
    %(camera)s)
    ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id),
s AS (INSERT INTO streams AS s (device, kind, lowest, highest, stored)
    SELECT %(device)s, %(stream)s, %(seq)s, %(seq)s, 1 FROM m WHERE %(seq)s > 0
    ON CONFLICT (device, kind) DO UPDATE SET
    lowest = CASE WHEN {_RESET} THEN excluded.lowest ELSE least(s.lowest, excluded.lowest) END,
    highest = CASE WHEN {_RESET} THEN excluded.highest ELSE greatest(s.highest, excluded.highest) END,
    stored = CASE WHEN {_RESET} THEN 1 ELSE s.stored + 1 END,
    resets = s.resets + CASE WHEN {_RESET} THEN 1 ELSE 0 END RETURNING 1),
d AS (INSERT INTO devices AS d (device, first_seen, last_seen, status, status_received, metrics, metrics_received)
    SELECT %(device)s, %(now)s, %(now)s, %(status)s, %(status_at)s, %(metrics)s, %(metrics_at)s FROM m
    ON CONFLICT (device) DO UPDATE SET last_seen = greatest(d.last_seen, excluded.last_seen),
    status = coalesce(excluded.status, d.status), status_received = coalesce(excluded.status_received,
    d.status_received), metrics = coalesce(excluded.metrics, d.metrics),
    metrics_received = coalesce(excluded.metrics_received, d.metrics_received) RETURNING 1)"""
_EXTRA = {
    "mask": """, x AS (INSERT INTO masks (msg_id, device, seq, frame_seq, ts, instances, body, camera)
    SELECT msg_id, %(device)s, %(seq)s, %(frame_seq)s, %(ts)s, %(instances)s, %(body)s, %(camera)s FROM m
    RETURNING 1)""",
    "tracks": """, t AS (INSERT INTO instance_tracks SELECT r.* FROM m, jsonb_to_recordset(%(tracks)s::jsonb) AS
    r(msg_id text, device text, frame_seq bigint, ts float8, track_id bigint, class_id int, score float8, x float8,
    y float8, w float8, h float8) RETURNING 1)""",
    "crop": """, x AS (INSERT INTO labelling (msg_id, device, object_key, image, annotations)
    SELECT msg_id, %(device)s, %(key)s, %(image)s, %(annotations)s FROM m RETURNING 1)""",
    "event": """, x AS (INSERT INTO events (msg_id, device, zone, class, kind, track_ids, value, frame_seq, seq, ts,
    camera) SELECT msg_id, %(device)s, %(zone)s, %(class)s, %(event_kind)s, %(track_ids)s, %(value)s, %(frame_seq)s,
    %(seq)s, %(ts)s, %(camera)s FROM m ON CONFLICT DO NOTHING RETURNING 1)""",
}
_TRACK_FIELDS = ("msg_id", "device", "frame_seq", "ts", "track_id", "class_id", "score", "x", "y", "w", "h")


class DbGaps:
    """Gap counts of the whole database (all consumers), as read at the last ``flush``."""

    def __init__(self):
        self.counts = {"gaps": 0, "late": 0, "out_of_order": 0, "seq_resets": 0}


class PgDeadLetters:
    """The ``dead_letters`` table (newest ``MAX_ROWS`` kept) and its ever-total in ``consumer_counters``."""

    def __init__(self, store: PgStore):
        self._store = store

    def add(self, topic: str, payload: bytes, reason: str, content_type: str | None = None) -> int:
        data = bytes(payload)
        kept = data[:KEEP_BYTES]
        row = self._store.execute(
            f"""WITH n AS (INSERT INTO dead_letters (received, topic, reason, content_type, size, sha256, truncated,
            payload) VALUES (%s, %s, %s, %s, %s, encode(sha256(%s), 'hex'), %s, %s) RETURNING id),
            p AS (DELETE FROM dead_letters WHERE id <= (SELECT id FROM n) - {MAX_ROWS})
            INSERT INTO consumer_counters AS c VALUES ('dead_letters', 1)
            ON CONFLICT (name) DO UPDATE SET value = c.value + 1 RETURNING value""",
            (time.time(), _text(topic, MAX_TOPIC), _text(" ".join(reason.split()), MAX_REASON),
             None if content_type is None else _text(content_type, 256), len(data), data, len(kept) < len(data),
             kept)).fetchone()
        return int(row[0])

    def total(self) -> int:
        row = self._store.execute("SELECT value FROM consumer_counters WHERE name = 'dead_letters'").fetchone()
        return 0 if row is None else int(row[0])


def _text(value: str, limit: int) -> str:
    """At most ``limit`` characters PostgreSQL can store (no NUL, lone surrogates replaced)."""
    return value[:limit].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class PgStore:
    """Rows in PostgreSQL, crops and rendered masks in object storage (see the module docstring)."""

    def __init__(self, db_url: str, objects_url: str, *, migrate: bool = False):
        self.place = pg.where(db_url)
        self.objects = ObjectStore(objects_url)  # a bad s3:// URL fails before any connection
        self.con = pg.connect(db_url, migrate=migrate, application="edge-seg consume")
        try:
            self.objects.check()
        except BaseException:
            self.con.close()
            raise
        self.gaps = DbGaps()
        self.dead_letters = PgDeadLetters(self)
        self.devices: dict[str, dict] = {}
        self._last_flush = 0.0
        self._closed = False

    def describe(self) -> str:
        return f"{self.place} + {self.objects.url}"

    def execute(self, sql: str, params=None):
        """One statement (its own transaction); ``StoreUnavailableError`` when the server is gone."""
        with pg.guard(self.con, self.place):
            return self.con.execute(sql, params)

    def store(self, msg: Message) -> bool:
        """Store one decoded message; False if its msg_id was already stored (a duplicate)."""
        check_limits(msg)  # OverLimitError before any pixel is decoded or any object written
        from psycopg.types.json import Json, Jsonb

        kind, now = kind_of(msg), time.time()
        record = message_record(msg)
        stream = stream_of(msg, kind)  # a camera's topics count their seq on their own
        params = {"msg_id": msg.msg_id, "kind": kind, "stream": stream, "camera": getattr(msg, "camera", None),
                  "device": msg.device, "seq": msg.seq, "ts": msg.ts,
                  "now": now, "frame_seq": getattr(msg, "frame_seq", None), "key": None, "record": Json(record),
                  "status": None, "status_at": None, "metrics": None, "metrics_at": None}
        extra = []
        if isinstance(msg, StatusMessage):
            params.update(status=Jsonb(msg.model_dump(mode="json", by_alias=True)), status_at=now)
        elif isinstance(msg, MetricsMessage):
            params.update(metrics=Jsonb(msg.summary), metrics_at=now)
        elif isinstance(msg, (MaskMessage, InstancesMessage)):
            extra.append("mask")
            params.update(instances=isinstance(msg, InstancesMessage),
                          body=Json(msg.model_dump(mode="json", by_alias=True)))
            if isinstance(msg, InstancesMessage):
                rows = [dict(zip(_TRACK_FIELDS, row)) for row in track_rows(msg)]
                if rows:
                    extra.append("tracks")
                    params["tracks"] = json.dumps(rows)
        elif isinstance(msg, (CropMessage, InstanceCropMessage)):
            stored = self.objects.put_later("crops", msg.jpeg, "jpg")  # the put waits on S3 while we work on
            image, anns = coco_rows(msg, crop_file_name(msg.device, msg.seq, msg.msg_id))
            ids = self._category_ids([ann.pop("category_name") for ann in anns])
            for ann, category_id in zip(anns, ids):
                ann["category_id"] = category_id
            extra.append("crop")
            params.update(image=Jsonb(image), annotations=Jsonb(anns))
            params["key"] = stored.result()  # the object is stored before its row
        elif isinstance(msg, EventMessage):
            if msg.snapshot_jpeg is not None:  # the zone's JPEG snapshot: an object, named by the messages row
                params["key"] = self.objects.put("events", base64.b64decode(msg.snapshot_jpeg), "jpg")
            extra.append("event")
            params.update(zone=msg.zone, track_ids=Jsonb(list(msg.track_ids)), value=msg.value,
                          **{"class": msg.class_, "event_kind": msg.kind})
        sql = _BASE + "".join(_EXTRA[e] for e in extra) + " SELECT count(*) FROM m"
        stored = self.execute(sql, params).fetchone()[0] == 1
        if stored:
            track_device(self.devices.setdefault(msg.device, {"counts": {}}), msg, stream, now, 0)
        return stored

    def _category_ids(self, names: list[str]) -> list[int]:
        """Category ids by name, created when new (idempotent, outside the message's statement)."""
        if not names:
            return []
        unique = list(dict.fromkeys(names))  # first appearance first, as the SQLite store numbers them
        self.execute("INSERT INTO categories (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING",
                     (unique,))
        ids = dict(self.execute("SELECT name, id FROM categories WHERE name = ANY(%s)", (unique,)).fetchall())
        return [ids[name] for name in names]

    def coco(self) -> dict:
        """The labelling queue as COCO (``file_name``: the crop's name; ``object_key``: where its JPEG is)."""
        categories = self.execute("SELECT id, name FROM categories ORDER BY id").fetchall()
        rows = self.execute("SELECT id, image || jsonb_build_object('object_key', object_key), annotations "
                            "FROM labelling ORDER BY id").fetchall()
        return coco_dataset(categories, rows)

    def iter_masks(self, device: str | None = None) -> Iterator[tuple[str, int, str, float, int | None]]:
        """(device, seq, msg_id, ts, frame_seq) of the stored masks, by device and seq."""
        sql = "SELECT device, seq, msg_id, ts, frame_seq FROM masks"
        rows = self.execute(sql + (" WHERE device = %s" if device else "") + " ORDER BY device, seq, msg_id",
                            (device,) if device else None).fetchall()
        yield from rows

    def mask_png(self, msg_id: str) -> bytes:
        """The frame-size PNG of a stored mask (class ids, or instance ids): rendered now unless it was before."""
        row = self.execute("SELECT body, png_key FROM masks WHERE msg_id = %s", (msg_id,)).fetchone()
        if row is None:
            raise KeyError(msg_id)
        body, key = row
        return self.objects.get(key) if key else mask_png(decode_message(json.dumps(body).encode()))

    def render_masks(self, limit: int = 256) -> int:
        """Render up to ``limit`` masks without a PNG to object storage (parallel puts); how many."""
        rows = self.execute("SELECT msg_id, body FROM masks WHERE png_key IS NULL LIMIT %s", (limit,)).fetchall()
        if not rows:
            return 0
        pngs = [mask_png(decode_message(json.dumps(body).encode())) for _, body in rows]
        keys = self.objects.put_many([("masks", data, "png") for data in pngs])
        with pg.guard(self.con, self.place), self.con.cursor() as cur:
            cur.executemany("UPDATE masks SET png_key = %s WHERE msg_id = %s",
                            [(key, msg_id) for key, (msg_id, _) in zip(keys, rows)])
        return len(rows)

    def flush(self, force: bool = False) -> None:
        """Read the database's gap counts and this consumer's devices' gaps (at most once a second)."""
        now = time.monotonic()
        if self._closed or not force and now - self._last_flush < FLUSH_INTERVAL_S:
            return
        self._last_flush = now
        rows = self.execute("SELECT device, kind, highest - lowest + 1 - stored, resets FROM streams").fetchall()
        self.gaps.counts["gaps"] = sum(max(0, int(gaps)) for _, _, gaps, _ in rows)
        self.gaps.counts["seq_resets"] = sum(int(resets) for *_, resets in rows)
        for device, kind, gaps, _ in rows:
            entry = self.devices.get(device)
            if entry is None:
                continue
            if gaps > 0:
                entry.setdefault("gaps", {})[kind] = int(gaps)
            else:  # filled by late messages since (or a counter reset)
                entry.get("gaps", {}).pop(kind, None)

    def close(self) -> None:
        """Read the last counts (unless the server is gone) and close (idempotent)."""
        if self._closed:
            return
        try:
            if not (self.con.closed or self.con.broken):
                self.flush(force=True)
        except StoreUnavailableError:
            pass  # gone while closing: nothing is lost, the counts are read at the next start
        finally:
            self._closed = True
            self.objects.close()
            self.con.close()


__all__ = ["PgStore"]
