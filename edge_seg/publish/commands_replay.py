"""Seen signed command ids, persisted in the state dir until their replay window ends.

A signed command is accepted only while its ``ts`` is within ``MAX_SKEW_S`` of the device clock, so
its id must be remembered until ``max(ts, received) + MAX_SKEW_S``. Keeping the ids in memory only let
a sniffed signed ``reload`` run again after a restart; ``SeenIds`` writes them to
``<state_dir>/commands_seen.json`` (atomically: a temporary file, fsync, rename) *before* the command
runs. Expired ids are dropped at every claim; at most ``cap`` live ids are kept: beyond that a new
command is refused (forgetting a live id would re-open its replay), which only signed senders can
cause. An unreadable file is logged and replaced, and commands signed before that start are refused
(they might be replays of ids it held).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_seg.errors import EdgeSegError
from edge_seg.publish.commands_signing import MAX_SKEW_S

log = logging.getLogger(__name__)
SEEN_FILE = "commands_seen.json"
SCHEMA = "edge_seg.cmd_seen/v1"
CAP = 4096
MAX_FILE_BYTES = 4 << 20


class ReplayError(EdgeSegError):
    """A command that must not run: its id was seen within its window, or it cannot be recorded."""


class SeenIds:
    """Command id -> the time (device wall clock) its replay window ends; thread-safe."""

    def __init__(self, state_dir: str | Path, *, window_s: float = MAX_SKEW_S, cap: int = CAP,
                 clock: Callable[[], float] = time.time):
        self.path = Path(state_dir) / SEEN_FILE
        self.window_s, self.cap, self._clock = window_s, cap, clock
        self._lock = threading.Lock()
        self._ids: dict[str, float] = {}
        self._floor: float | None = None  # after an unreadable file: commands signed before this are refused
        self._load()

    def _load(self) -> None:
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("too large")
            data = json.loads(self.path.read_bytes())
            ids = data["ids"] if isinstance(data, dict) and data.get("schema") == SCHEMA else None
            if not isinstance(ids, dict) or not all(
                    isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for k, v in ids.items()):
                raise ValueError("not a seen-ids file")
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as err:
            self._floor = self._clock()
            log.warning("seen command ids %s unreadable (%s): refusing signed commands older than this start "
                        "(they could be replays); the file is replaced", self.path, getattr(err, "strerror", None)
                        or str(err)[:80] or type(err).__name__)
            return
        now = self._clock()
        self._ids = {k: float(v) for k, v in ids.items() if v > now}

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def claim(self, command_id: str, ts: float) -> None:
        """Record ``command_id`` (signed at ``ts``) before it runs; ``ReplayError`` if it must not run."""
        with self._lock:
            now = self._clock()
            if self._floor is not None and ts < self._floor:
                raise ReplayError(f"replayed command id {command_id!r}? refused: it was signed before this start "
                                  "and the seen-ids file was unreadable; send it again with a new id")
            self._ids = {k: v for k, v in self._ids.items() if v > now}
            if command_id in self._ids:
                raise ReplayError(f"replayed command id {command_id!r} refused: it already ran (ids are kept "
                                  f"{self.window_s:.0f} s, across restarts)")
            if len(self._ids) >= self.cap:
                raise ReplayError(f"too many recent commands ({self.cap} within {self.window_s:.0f} s): "
                                  "try again later")
            self._ids[command_id] = max(ts, now) + self.window_s
            try:
                self._write()
            except OSError as err:
                del self._ids[command_id]
                raise ReplayError(f"cannot record the command id in {self.path.parent} "
                                  f"({err.strerror or err}): not run") from None

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = json.dumps({"schema": SCHEMA, "ids": self._ids}, separators=(",", ":")).encode()
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems cannot fsync a directory; the rename is still atomic
        finally:
            os.close(fd)


__all__ = ["CAP", "ReplayError", "SEEN_FILE", "SeenIds"]
