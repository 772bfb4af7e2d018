"""A fleet rollout's state, persisted so a crashed ``edge-seg fleet rollout`` resumes where it stopped.

Two tables in the consumer's store, SQLite (``consumer.sqlite`` of ``--out DIR``) or PostgreSQL (``--db``),
in SQL both understand (created if missing; ``?`` placeholders become ``%s`` for psycopg):

* ``rollouts``: one row per rollout: bundle URL and sha256, the plan (waves, selection,
  thresholds, soak, timeouts) and the selected devices in wave order (JSON), ``state`` (running,
  halting: rollbacks being sent, halted, done), the wave being rolled out, and a one-line ``message``.
* ``rollout_devices``: one row per (rollout, device): wave, ``state`` (see ``DEVICE_STATES``), the
  signed ``update_model`` command exactly as sent (``cmd_id``, ``cmd``), its result, the model id the
  device installed, its pre-rollout ``baseline`` and soak ``health`` (JSON), the ``rollback``
  command as sent, and why the device failed.

Idempotence: a command is written (state ``sending``, with its id and signed payload) *before* it is
published. After a crash the same payload, with the same id, is published again: a device that
got it answers with its first result instead of running it twice (``CommandHandler`` remembers ids).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_seg.errors import InputError

DEVICE_STATES = ("pending", "sending", "sent", "applied", "healthy", "failed", "rolling_back", "rolled_back")
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rollouts (id TEXT PRIMARY KEY, created DOUBLE PRECISION, updated DOUBLE PRECISION,
       url TEXT NOT NULL, sha256 TEXT NOT NULL, plan TEXT NOT NULL, devices TEXT NOT NULL, state TEXT NOT NULL,
       wave INTEGER NOT NULL, message TEXT)""",
    """CREATE TABLE IF NOT EXISTS rollout_devices (rollout_id TEXT NOT NULL, device TEXT NOT NULL,
       wave INTEGER NOT NULL, state TEXT NOT NULL, cmd_id TEXT, cmd TEXT, sent DOUBLE PRECISION, result TEXT,
       installed TEXT, baseline TEXT, health TEXT, rollback_id TEXT, rollback_cmd TEXT, rollback_result TEXT,
       reason TEXT, updated DOUBLE PRECISION, PRIMARY KEY (rollout_id, device))""",
)
DEVICE_COLUMNS = ("wave", "state", "cmd_id", "cmd", "sent", "result", "installed", "baseline", "health", "rollback_id",
                  "rollback_cmd", "rollback_result", "reason")
JSON_COLUMNS = ("result", "baseline", "health", "rollback_result")


@dataclass
class Rollout:
    id: str
    url: str
    sha256: str
    plan: dict
    devices: list[list[str]]  # device ids per wave
    state: str
    wave: int
    message: str | None
    created: float
    updated: float


class RolloutState:
    """The two tables over a DB-API connection (``sqlite3`` or ``psycopg``); ``open_state`` makes one."""

    def __init__(self, connection, placeholder: str = "?"):
        self.db, self._ph = connection, placeholder
        for ddl in SCHEMA:
            self._run(ddl)
        self.db.commit()

    def _run(self, sql: str, args: tuple = ()):
        cur = self.db.cursor()
        cur.execute(sql.replace("?", self._ph) if self._ph != "?" else sql, args)
        return cur

    # --- rollouts ----------------------------------------------------------------------------
    def create(self, url: str, sha256: str, plan: dict, waves: list[list[str]]) -> Rollout:
        now = time.time()
        rid = f"r{int(now * 1000):x}{os.urandom(3).hex()}"
        self._run("INSERT INTO rollouts (id, created, updated, url, sha256, plan, devices, state, wave, message) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', 0, NULL)",
                  (rid, now, now, url, sha256, json.dumps(plan, sort_keys=True), json.dumps(waves)))
        for k, devices in enumerate(waves):
            for device in devices:
                self._run("INSERT INTO rollout_devices (rollout_id, device, wave, state, updated) "
                          "VALUES (?, ?, ?, 'pending', ?)", (rid, device, k, now))
        self.db.commit()
        return self.get(rid)

    def get(self, rid: str) -> Rollout:
        row = self._run("SELECT id, url, sha256, plan, devices, state, wave, message, created, updated FROM rollouts "
                        "WHERE id = ?", (rid,)).fetchone()
        if row is None:
            raise InputError(f"no rollout {rid!r} (edge-seg fleet rollout status lists them)")
        return Rollout(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), row[5], int(row[6]), row[7],
                       float(row[8]), float(row[9]))

    def unfinished(self, url: str, sha256: str) -> Rollout | None:
        """The running rollout of this bundle, if one was interrupted (it resumes)."""
        row = self._run("SELECT id FROM rollouts WHERE url = ? AND sha256 = ? AND state IN ('running', 'halting') "
                        "ORDER BY created DESC", (url, sha256)).fetchone()
        return None if row is None else self.get(row[0])

    def latest(self, limit: int = 20) -> list[Rollout]:
        rows = self._run("SELECT id FROM rollouts ORDER BY created DESC").fetchall()[:limit]
        return [self.get(r[0]) for r in rows]

    def set_rollout(self, rid: str, *, state: str | None = None, wave: int | None = None,
                    message: str | None = None) -> None:
        current = self.get(rid)
        self._run("UPDATE rollouts SET state = ?, wave = ?, message = ?, updated = ? WHERE id = ?",
                  (state or current.state, current.wave if wave is None else wave,
                   message if message is not None else current.message, time.time(), rid))
        self.db.commit()

    # --- devices -----------------------------------------------------------------------------
    def devices(self, rid: str, wave: int | None = None) -> dict[str, dict]:
        """device -> its row (JSON columns decoded), in wave order."""
        sql = f"SELECT device, {', '.join(DEVICE_COLUMNS)} FROM rollout_devices WHERE rollout_id = ?"
        args: tuple = (rid,)
        if wave is not None:
            sql, args = sql + " AND wave = ?", (rid, wave)
        out = {}
        for row in self._run(sql + " ORDER BY wave, device", args).fetchall():
            item = dict(zip(DEVICE_COLUMNS, row[1:]))
            for key in JSON_COLUMNS:
                if item[key] is not None:
                    item[key] = json.loads(item[key])
            out[row[0]] = item
        return out

    def update_device(self, rid: str, device: str, **fields) -> None:
        """Set some columns of one device's row (dicts are stored as JSON) and commit."""
        unknown = set(fields) - set(DEVICE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown rollout device columns {sorted(unknown)}")
        if fields.get("state") is not None and fields["state"] not in DEVICE_STATES:
            raise ValueError(f"unknown device state {fields['state']!r}")
        values = [json.dumps(v, sort_keys=True) if k in JSON_COLUMNS and v is not None else v
                  for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._run(f"UPDATE rollout_devices SET {sets}, updated = ? WHERE rollout_id = ? AND device = ?",
                  (*values, time.time(), rid, device))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def open_state(out_dir: str | os.PathLike | None = None, *, db: str | None = None) -> RolloutState:
    """The rollout tables beside a consumer's messages: in ``out_dir``'s ``consumer.sqlite`` (SQLite + folder
    store; created if missing) or in the ``db`` PostgreSQL database (the fleet store, already migrated)."""
    if db is not None:
        from edge_seg.cloud.pg import connect
        from edge_seg.cloud.store_base import is_postgres

        if not is_postgres(db):
            raise InputError("--db must be a PostgreSQL URL: postgresql://user@host:5432/dbname")
        return RolloutState(connect(db, application="edge-seg fleet rollout"), placeholder="%s")
    if out_dir is None:
        raise InputError("say where the rollout state lives: --out DIR (the consumer's) or --db postgresql://…")
    path = Path(out_dir) / "consumer.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    return RolloutState(con)


__all__ = ["DEVICE_STATES", "Rollout", "RolloutState", "open_state"]
