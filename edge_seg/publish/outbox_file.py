"""The outbox's SQLite file: open and check it, move a corrupt one aside, create or migrate the schema, size it.

Corruption (an SD card that lost power mid-write, a bad sector, a stray ``dd``): at open, the
file must pass ``PRAGMA quick_check`` (every page read once and its b-tree structure checked,
without the index cross-check of ``integrity_check``). A file that fails it, or that SQLite
calls "not a database" or "malformed" at open or later, is renamed
``outbox.corrupt-<UTC timestamp>.sqlite`` (with its ``-wal`` and ``-shm``) for a person to look
at, and a new outbox is created: its unsent messages are lost, the device is not. The newest
``KEEP_CORRUPT`` copies are kept, older ones deleted, so a card that keeps failing cannot fill the
state disk. Errors that are not corruption (permissions, a missing directory) are not "fixed"
this way: they stay one-line errors naming the state directory.

Size: ``max_bytes`` bounds what the outbox occupies on disk, the database file plus its WAL.
The WAL gets an eighth of it, at most 1000 pages (checkpointed after that many pages, and
truncated after a commit that left it larger); the database file gets the rest as a page budget
(``Budget.pages``). While a transaction runs, the WAL may briefly hold more (its own pages).
New files use ``auto_vacuum=INCREMENTAL`` so pages freed by dropping rows can be given back to
the disk; an older file is rebuilt with it once (``VACUUM``, best effort: it needs free space).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edge_seg.publish.outbox")

KEEP_CORRUPT = 3
MIN_PAGES = 16  # the schema takes ~8 pages; below this the cap would hold nothing
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
    "payload BLOB NOT NULL, content_type TEXT, msg_id TEXT NOT NULL, seq INTEGER NOT NULL, created REAL NOT NULL, "
    "size INTEGER NOT NULL, born REAL NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS produced (id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL, topic TEXT NOT NULL, "
    "seq INTEGER NOT NULL, created REAL NOT NULL, outcome TEXT)",
)


class CorruptError(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def _code(err: BaseException) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
    return None if code is None else int(code) & 0xFF


def is_corrupt(err: BaseException) -> bool:
    """The file is damaged or not a database (as opposed to unreadable, locked or full)."""
    if isinstance(err, CorruptError):
        return True
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    code = _code(err)
    if code is not None:
        return code in _CORRUPT_CODES
    text = str(err)
    return "malformed" in text or "not a database" in text


@dataclass(frozen=True)
class Budget:
    """How ``max_bytes`` is shared between the database file and its WAL."""

    page_size: int
    pages: int  # the most pages the database file may hold
    wal_pages: int  # WAL auto-checkpoint threshold
    wal_bytes: int  # the most bytes the WAL may keep between transactions


def budget(max_bytes: int, page_size: int) -> Budget:
    frame = page_size + 24  # a WAL frame: its page and a header
    wal_pages = max(4, min(1000, max_bytes // page_size // 8))
    wal_bytes = 32 + wal_pages * frame
    pages = max(MIN_PAGES, (max_bytes - wal_bytes) // page_size)
    return Budget(page_size, pages, wal_pages, wal_bytes)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` (SQLite opens lazily: nothing is read yet)."""
    return sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)


def check(db: sqlite3.Connection, synchronous: str) -> None:
    """WAL mode and ``PRAGMA quick_check``; raises ``sqlite3.Error`` (``is_corrupt`` tells damage apart)."""
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only (before any table)
    db.execute("PRAGMA journal_mode=WAL")
    row = db.execute("PRAGMA quick_check(1)").fetchone()
    if row is None or row[0] != "ok":
        raise CorruptError(f"quick_check: {row[0] if row else 'no answer'}")
    db.execute(f"PRAGMA synchronous={synchronous}")


def create_or_migrate(db: sqlite3.Connection, born_now: float) -> int:
    """Inside a transaction: the tables, with the columns of older files added; how many rows were migrated.

    Rows of a file from before ``born`` existed get ``born_now``: their wall-clock age cannot be
    trusted, so they get one full TTL from the migration (bounded, never forever).
    """
    for statement in SCHEMA:
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    migrated = 0
    if "born" not in columns:
        db.execute("ALTER TABLE outbox ADD COLUMN born REAL NOT NULL DEFAULT 0")
        migrated = db.execute("UPDATE outbox SET born = ?", (born_now,)).rowcount
    db.execute("DROP INDEX IF EXISTS outbox_created")  # the wall-clock index of older files: never queried now
    db.execute("CREATE INDEX IF NOT EXISTS outbox_born ON outbox (born)")
    return max(0, migrated)


def enable_incremental_vacuum(db: sqlite3.Connection, path: Path) -> None:
    """An older file without auto_vacuum is rebuilt once with it, so freed pages can be returned; best effort."""
    if int(db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        return
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
        log.info("outbox %s rebuilt with incremental vacuum", path)
    except sqlite3.Error as err:
        log.warning("outbox %s keeps its size: rebuilding it failed: %s", path, err)


def configure(db: sqlite3.Connection, size: Budget) -> None:
    """WAL bounds for ``size``."""
    db.execute(f"PRAGMA wal_autocheckpoint={size.wal_pages}")
    db.execute(f"PRAGMA journal_size_limit={size.wal_bytes}")


def used_pages(db: sqlite3.Connection) -> tuple[int, int]:
    """(pages in the file, pages holding data) as the current transaction sees them."""
    count = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return count, count - free


def on_disk(path: Path) -> int:
    """Bytes the database file and its WAL occupy."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            pass
    return total


def wal_bytes(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except OSError:
        return 0


class Trouble:
    """A write error, logged once when it starts or changes and once when it is over.

    It is over when writes have succeeded for ``quiet_s`` since its last occurrence: on a full disk,
    dropping old rows lets some writes through, which must not log "writable again" each time.
    """

    def __init__(self, path: Path, quiet_s: float = 30.0):
        self.path, self.quiet_s = path, quiet_s
        self.error: str | None = None
        self._at = 0.0

    def failed(self, error: str, now: float) -> None:
        self._at = now
        if self.error != error:
            self.error = error
            log.error("the MQTT outbox %s cannot store messages: %s; the oldest unsent are dropped to make room, "
                      "new ones when none can go (free space in %s)", self.path, error, self.path.parent)

    def succeeded(self, now: float, lost: int) -> None:
        if self.error is not None and now - self._at >= self.quiet_s:
            self.error = None
            log.info("the MQTT outbox %s is writable again (%d message(s) lost to write errors since open)",
                     self.path, lost)


def move_aside(path: Path, wall: float) -> Path:
    """Rename ``path`` (and its -wal, -shm) to ``<stem>.corrupt-<UTC time><suffix>``; prune old copies."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    target = path.with_name(f"{path.stem}.corrupt-{stamp}{path.suffix}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}{path.suffix}")
        n += 1
    for extra in ("-wal", "-shm", ""):
        source = Path(f"{path}{extra}")
        if source.exists():
            os.replace(source, f"{target}{extra}")
    copies = sorted(path.parent.glob(f"{path.stem}.corrupt-*{path.suffix}"),
                    key=lambda p: (p.stat().st_ctime, p.name))  # ctime: when it was moved here
    for old in copies[:-KEEP_CORRUPT] if len(copies) > KEEP_CORRUPT else []:
        for extra in ("", "-wal", "-shm"):
            Path(f"{old}{extra}").unlink(missing_ok=True)
    return target


__all__ = ["Budget", "CorruptError", "KEEP_CORRUPT", "Trouble", "budget", "check", "configure", "connect",
           "create_or_migrate", "enable_incremental_vacuum", "is_corrupt", "move_aside", "on_disk",
           "used_pages", "wal_bytes"]
