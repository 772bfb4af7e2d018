"""How old an outbox row is, on a clock that no wall-clock step can move.

A Raspberry Pi has no RTC: it boots with a stale wall clock, and NTP steps it (days, either way)
once the network is up. A TTL measured on ``time.time()`` then expires a whole backlog at once
(step forward) or keeps rows forever (step back). The outbox measures age on its own timeline
instead:

    outbox time = offset + monotonic()        (monotonic = CLOCK_BOOTTIME: runs during suspend)

Each row stores the outbox time at insert (column ``born``); its age is ``now - born``. The
database keeps one ``outbox_clock`` row: the boot id (``/proc/sys/kernel/random/boot_id``)
the offset belongs to, and ``reached``, the outbox time last checkpointed (at every
``expire()``, i.e. every few seconds, and at close). At open:

* same boot (the process restarted): the offset is kept, so the time the process was down counts;
* another boot: the monotonic clock restarted, so the offset becomes ``reached - monotonic()``:
  the timeline resumes where the last checkpoint left it. Time the device was powered off does
  not count (nothing trustworthy measured it), nor do the few seconds after the last checkpoint.

So a row expires after ``ttl_s`` seconds of the device running, whatever the wall clock did.
The wall clock is still stamped on each row (``created``) for people and the audit log, never
compared. The time sources are plain functions so tests can step one and advance the other.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
_PROCESS_BOOT = f"process-{uuid.uuid4()}"  # where there is no boot id, each process is its own "boot"

SCHEMA = ("CREATE TABLE IF NOT EXISTS outbox_clock (one INTEGER PRIMARY KEY CHECK (one = 1), boot TEXT NOT NULL, "
          "offset REAL NOT NULL, reached REAL NOT NULL)")


def boot_id() -> str:
    """This boot's id (Linux), or an id for this process where the kernel does not give one."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or _PROCESS_BOOT
    except OSError:
        return _PROCESS_BOOT


def boottime() -> float:
    """Seconds since boot, suspend included (CLOCK_BOOTTIME); ``time.monotonic()`` where that is missing."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.monotonic() if clock is None else time.clock_gettime(clock)


class Timeline:
    """The outbox's clock: ``offset + monotonic()``, its offset kept in the database (see the module doc)."""

    def __init__(self, monotonic: Callable[[], float] = boottime, boot: Callable[[], str] = boot_id):
        self._monotonic, self._boot = monotonic, boot
        self._offset = 0.0
        self._floor = 0.0

    def attach(self, db: sqlite3.Connection) -> float:
        """Inside the opening transaction: create or resume the timeline stored in ``db``; the outbox time now."""
        db.execute(SCHEMA)
        boot, mono = self._boot(), float(self._monotonic())
        row = db.execute("SELECT boot, offset, reached FROM outbox_clock WHERE one = 1").fetchone()
        if row is None:
            self._offset, self._floor = -mono, 0.0
            db.execute("INSERT INTO outbox_clock (one, boot, offset, reached) VALUES (1, ?, ?, 0)",
                       (boot, self._offset))
            return self.now()
        stored_boot, offset, reached = str(row[0]), float(row[1]), float(row[2])
        self._floor = reached
        if stored_boot == boot and offset + mono >= reached:
            self._offset = offset  # the same boot: time the process was down counts
        else:
            self._offset = reached - mono  # a new boot: resume where the last checkpoint left off
        db.execute("UPDATE outbox_clock SET boot = ?, offset = ? WHERE one = 1", (boot, self._offset))
        return self.now()

    def now(self) -> float:
        """Outbox seconds now (never less than the last checkpoint)."""
        return max(self._offset + float(self._monotonic()), self._floor)

    def checkpoint(self, db: sqlite3.Connection) -> float:
        """Inside a transaction: record how far the timeline got (what a reboot resumes from); that time."""
        now = self.now()
        db.execute("UPDATE outbox_clock SET reached = ? WHERE one = 1", (now,))
        self._floor = now
        return now


__all__ = ["BOOT_ID_PATH", "SCHEMA", "Timeline", "boot_id", "boottime"]
