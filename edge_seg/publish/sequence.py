"""Message ``seq`` per topic, monotonic across restarts, kept in ``{state_dir}/seq.json``.

A consumer tells a lost message from a restart by ``seq``: numbers go on where the last run
stopped, so a jump means messages that never arrived. ``Sequences.next(topic)`` is called for
every message (mask, crop, metrics, status, cmd/result); it costs a lock and an addition.

Crash safety by reservation: the file holds, per topic, a number ``next`` with every number ever
handed out below it. When a topic's reserved block (``block`` numbers) runs out, the next block
is reserved first: one write of the whole file (temporary file, fsync, ``os.replace``, fsync of
the directory) per ``block`` messages. A SIGKILL or power cut therefore skips at most ``block``
numbers of a topic (the unused rest of its block; a consumer counts them as a gap) and never
repeats one. ``close()`` writes the exact next numbers, so a clean restart skips nothing.

Bad luck never stops the device:

* a missing file in a state dir that has an outbox, or a file that does not parse: numbering
  starts above anything that can have been sent: the larger of the wall clock in milliseconds
  (larger than any count started at 1 that grew by less than 1000 a second) and, per topic, the
  highest ``seq`` still in the outbox plus ``block`` (for a wall clock that is wrong, e.g. a board
  without RTC booting in 1970). Logged once, on one line. A fresh state dir (no file, no outbox)
  starts at 1 silently.
* a write that fails (disk full, read-only): numbering goes on from memory, the failure is logged
  once per change of state and the write retried at the next block; until one succeeds, a crash
  could repeat numbers of this run.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
FILE_NAME = "seq.json"
SCHEMA = "edge_seg.seq/1"
DEFAULT_BLOCK = 256
_MAX = 2**63 - 1  # the wire schema's bound
_MAX_FILE = 64 * 1024


class Sequences:
    """Per-topic counters in ``state_dir`` (thread-safe; see the module docstring)."""

    def __init__(self, state_dir: str | os.PathLike, *, block: int = DEFAULT_BLOCK, outbox: str = "outbox.sqlite"):
        if block < 1:
            raise ValueError(f"sequence block must be at least 1, got {block}")
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self.block = block
        self.writes = 0  # successful writes of the file (tests, metrics)
        self._lock = threading.Lock()
        self._failing = False
        self._next, self._floor = self._load(self.dir / outbox)
        self._limit = dict(self._next)  # numbers below the limit are reserved on disk

    # --- loading -------------------------------------------------------------------------------------
    def _load(self, outbox: Path) -> tuple[dict[str, int], int | None]:
        """(next number per topic, the start for a topic not in the file: None means 1)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(_MAX_FILE)  # a sane file is well under a kilobyte
        except FileNotFoundError:
            if not outbox.exists():
                return {}, None  # a fresh state dir
            problem = "is missing but the state dir has an outbox"
        except OSError as err:
            problem = f"cannot be read ({err.strerror})"
        else:
            counters = _parse(raw)
            if counters is not None:
                return counters, None
            problem = "is damaged"
        floor = max(time.time_ns() // 1_000_000, 1)
        counters = {topic: max(floor, top + 1 + self.block) for topic, top in _outbox_highest(outbox).items()}
        log.warning("%s %s: numbering starts above anything sent (from %d; a consumer sees one jump)",
                    self.path, problem, floor)
        return counters, floor

    # --- numbering -----------------------------------------------------------------------------------
    def next(self, topic: str) -> int:
        """The next ``seq`` of ``topic``; reserves (writes) a new block when the current one is used up."""
        with self._lock:
            value = self._next.get(topic) or self._floor or 1
            if value >= self._limit.get(topic, 0):
                self._limit[topic] = min(value + self.block, _MAX)
                self._write(self._limit)
            self._next[topic] = value + 1
            return value

    def close(self) -> None:
        """Write the exact next numbers: a clean restart skips nothing. A number taken after this reserves a
        block again (never a repeat)."""
        with self._lock:
            exact = {**self._limit, **self._next}
            self._write(exact)
            self._limit = exact

    def _write(self, counters: dict[str, int]) -> None:
        body = json.dumps({"schema": SCHEMA, "next": dict(sorted(counters.items()))}, separators=(",", ":"))
        tmp = self.dir / f".{FILE_NAME}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(body.encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.dir)
        except OSError as err:
            if not self._failing:
                log.warning("cannot save message sequence numbers to %s: %s; numbering goes on, retried at the "
                            "next block", self.path, err.strerror or err)
            self._failing = True
            return
        if self._failing:
            log.info("message sequence numbers saved to %s again", self.path)
        self._failing = False
        self.writes += 1


def _parse(raw: bytes) -> dict[str, int] | None:
    """The counters of a file, or None if it is not a well-formed one."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("next"), dict):
        return None
    counters = data["next"]
    if not all(isinstance(k, str) and type(v) is int and 1 <= v <= _MAX for k, v in counters.items()):
        return None
    return dict(counters)


def _outbox_highest(outbox: Path) -> dict[str, int]:
    """Highest ``seq`` per topic still in the outbox (read-only; {} when it cannot be read)."""
    if not outbox.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=1)
        try:
            rows = db.execute("SELECT topic, MAX(seq) FROM outbox GROUP BY topic").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    return {topic: int(top) for topic, top in rows if isinstance(topic, str) and isinstance(top, int)}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["DEFAULT_BLOCK", "FILE_NAME", "Sequences"]
