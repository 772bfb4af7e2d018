"""The one small interface every consumer store has, and ``open_store`` that picks one from the options.

Two stores implement it:

* ``edge_seg.cloud.store.Store``: SQLite + a folder (``edge-seg consume --out DIR``), the embedded
  default for one host.
* ``edge_seg.cloud.store_postgres.PgStore``: PostgreSQL + S3-compatible object storage
  (``edge-seg consume --db postgresql://… --objects s3://bucket/prefix``), for N consumers of a
  fleet sharing one stream (MQTT 5 shared subscription) and one store.

Both dedupe by ``msg_id`` (at-least-once delivery in, exactly-once rows out), count gaps per
device and topic, park what they cannot store in ``dead_letters``, and keep the labelling queue
as COCO rows. The consumer only uses the members of ``MessageStore``.
"""

from __future__ import annotations

import os
from typing import Protocol

from edge_seg.errors import StoreError
from edge_seg.publish.messages import Message

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class DeadLetterSink(Protocol):
    def add(self, topic: str, payload: bytes, reason: str, content_type: str | None = None) -> int:
        """Park one message; the total ever parked."""

    def total(self) -> int:
        """Messages ever parked in this store."""


class GapCounts(Protocol):
    counts: dict[str, int]  # gaps, late, out_of_order, seq_resets


class MessageStore(Protocol):
    """What the consumer needs of a store."""

    gaps: GapCounts
    dead_letters: DeadLetterSink
    devices: dict[str, dict]  # per device: counts, last_seen, gaps by topic, status, metrics (summary line)

    def store(self, msg: Message) -> bool:
        """Store one decoded message; False if its ``msg_id`` was already stored (a duplicate)."""

    def coco(self) -> dict:
        """The labelling queue as a COCO dataset."""

    def flush(self, force: bool = False) -> None:
        """Bring derived state up to date (at most once a second unless forced)."""

    def describe(self) -> str:
        """Where it stores, for log lines (no secrets)."""

    def close(self) -> None:
        """Flush and close (idempotent)."""


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.startswith(POSTGRES_SCHEMES)


def open_store(out_dir: str | os.PathLike | None = None, *, db: str | None = None, objects: str | None = None,
               migrate: bool = False) -> MessageStore:
    """SQLite + folder for ``out_dir`` (the default), PostgreSQL + S3 for ``db`` + ``objects``."""
    if db is None:
        if objects is not None:
            raise StoreError("--objects s3://… goes with --db postgresql://… (with --out DIR masks and crops "
                             "are files in DIR)")
        if out_dir is None:
            raise StoreError("say where to store: --out DIR (SQLite + folder) or --db postgresql://… "
                             "--objects s3://bucket/prefix")
        from edge_seg.cloud.store import Store

        return Store(out_dir)
    if out_dir is not None:
        raise StoreError("give either --out DIR (SQLite + folder) or --db postgresql://… --objects s3://…, not both")
    if not is_postgres(db):
        raise StoreError("--db must be a PostgreSQL URL: postgresql://user@host:5432/dbname "
                         "(password: PGPASSWORD or ~/.pgpass)")
    if objects is None:
        raise StoreError("--db postgresql://… needs --objects s3://bucket/prefix for the masks and crops")
    from edge_seg.cloud.store_postgres import PgStore

    return PgStore(db, objects, migrate=migrate)


__all__ = ["DeadLetterSink", "MessageStore", "is_postgres", "open_store"]
