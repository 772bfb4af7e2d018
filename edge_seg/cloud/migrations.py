"""The PostgreSQL schema of the fleet store, as numbered migrations applied in order.

``schema_migrations`` records each applied version. ``migrate(con)`` applies the missing ones in
one transaction under an advisory lock (N consumers started together with ``--migrate`` apply each
once); ``check(con)`` raises a one-line error when the database is behind (run with ``--migrate``)
or ahead (upgrade edge-seg). A migration is never edited once released: add the next one.

Tables: ``devices`` (last seen, last status and metrics), ``messages`` (one row per stored message,
``msg_id`` unique: the dedupe of at-least-once delivery, with the message's fields as JSON),
``streams`` (per device and topic: lowest/highest ``seq`` and count since the last counter reset,
so gaps = highest - lowest + 1 - stored, right with N consumers), ``masks`` (the mask as received:
RLE or PNG in ``body``; ``png_key`` once rendered to object storage), ``categories`` +
``labelling`` (the COCO rows of the labelling queue, crops in object storage), ``events``,
``instance_tracks``, ``dead_letters`` + ``consumer_counters``.
"""

from __future__ import annotations

import time

from edge_seg.errors import StoreError

LOCK_ID = 0x6564676573656701  # pg_advisory_xact_lock key of edge-seg's migrations

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "fleet store", """
CREATE TABLE devices (device TEXT PRIMARY KEY, first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL, status JSONB, status_received DOUBLE PRECISION, metrics JSONB,
    metrics_received DOUBLE PRECISION);
CREATE TABLE messages (id BIGSERIAL PRIMARY KEY, msg_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    device TEXT NOT NULL, seq BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL,
    frame_seq BIGINT, object_key TEXT, record JSON NOT NULL);
CREATE INDEX messages_stream ON messages (device, kind, id);
CREATE TABLE streams (device TEXT NOT NULL, kind TEXT NOT NULL, lowest BIGINT NOT NULL, highest BIGINT NOT NULL,
    stored BIGINT NOT NULL, resets INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, kind));
CREATE TABLE masks (msg_id TEXT PRIMARY KEY, device TEXT NOT NULL, seq BIGINT NOT NULL, frame_seq BIGINT,
    ts DOUBLE PRECISION NOT NULL, instances BOOLEAN NOT NULL, body JSON NOT NULL, png_key TEXT);
CREATE INDEX masks_device ON masks (device, seq);
CREATE TABLE categories (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE labelling (id BIGSERIAL PRIMARY KEY, msg_id TEXT NOT NULL UNIQUE, device TEXT NOT NULL,
    object_key TEXT NOT NULL, image JSONB NOT NULL, annotations JSONB NOT NULL);
CREATE TABLE events (msg_id TEXT PRIMARY KEY, device TEXT NOT NULL, zone TEXT NOT NULL, class TEXT NOT NULL,
    kind TEXT NOT NULL, track_ids JSONB NOT NULL, value DOUBLE PRECISION NOT NULL, frame_seq BIGINT,
    seq BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL);
CREATE INDEX events_zone ON events (device, zone, ts);
CREATE TABLE instance_tracks (msg_id TEXT NOT NULL, device TEXT NOT NULL, frame_seq BIGINT,
    ts DOUBLE PRECISION NOT NULL, track_id BIGINT NOT NULL, class_id INTEGER NOT NULL, score DOUBLE PRECISION NOT NULL,
    x DOUBLE PRECISION NOT NULL, y DOUBLE PRECISION NOT NULL, w DOUBLE PRECISION NOT NULL,
    h DOUBLE PRECISION NOT NULL);
CREATE INDEX instance_tracks_track ON instance_tracks (device, track_id, ts);
CREATE TABLE dead_letters (id BIGSERIAL PRIMARY KEY, received DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, content_type TEXT, size INTEGER NOT NULL, sha256 TEXT NOT NULL, truncated BOOLEAN NOT NULL,
    payload BYTEA NOT NULL);
CREATE TABLE consumer_counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
"""),
    (2, "renders pending and recent devices", """
CREATE INDEX masks_unrendered ON masks (msg_id) WHERE png_key IS NULL;
CREATE INDEX devices_last_seen ON devices (last_seen);
"""),
]
LATEST = MIGRATIONS[-1][0]


def current_version(con) -> int | None:
    """The highest applied version, None when the database has no ``schema_migrations`` (never migrated)."""
    exists = con.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return None if row[0] is None else int(row[0])


def migrate(con, migrations: list[tuple[int, str, str]] = MIGRATIONS) -> list[int]:
    """Apply the missing migrations (one transaction, advisory lock); the versions applied now."""
    applied: list[int] = []
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                    "applied DOUBLE PRECISION NOT NULL)")
        done = {row[0] for row in con.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations:
            if version not in done:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)", (version, name, time.time()))
                applied.append(version)
    return applied


def check(con, where: str, latest: int = LATEST) -> None:
    """Raise a one-line ``StoreError`` unless the database is at ``latest``."""
    version = current_version(con)
    con.rollback()
    if version is None:
        raise StoreError(f"{where} has no edge-seg schema yet: run once with --migrate to create it")
    if version < latest:
        raise StoreError(f"{where} is at schema version {version}, this edge-seg needs {latest}: "
                         "run with --migrate to upgrade it")
    if version > latest:
        raise StoreError(f"{where} is at schema version {version}, newer than this edge-seg knows ({latest}): "
                         "upgrade edge-seg")


__all__ = ["LATEST", "MIGRATIONS", "check", "current_version", "migrate"]
