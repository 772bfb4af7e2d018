"""Durable file steps for the OTA store: fsync'd atomic JSON replace, directory fsync, and the checkpoints
every multi-step operation passes (where tests inject a SIGKILL).

``EDGE_SEG_OTA_FAULT_AT=k`` SIGKILLs the process at its k-th checkpoint; ``EDGE_SEG_OTA_TRACE=FILE``
appends one line per checkpoint (``k name``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

FAULT_ENV = "EDGE_SEG_OTA_FAULT_AT"
TRACE_ENV = "EDGE_SEG_OTA_TRACE"

Checkpoint = Callable[[str], None]


class Checkpoints:
    """Named points of a multi-step operation; the fault-injection and trace hooks live here."""

    def __init__(self, kill_at: int | None = None, trace: str | None = None):
        self.count = 0
        self.kill_at = kill_at
        self.trace = trace

    @classmethod
    def from_env(cls) -> "Checkpoints":
        value = os.environ.get(FAULT_ENV, "").strip()
        return cls(int(value) if value.isdigit() else None, os.environ.get(TRACE_ENV) or None)

    def __call__(self, name: str) -> None:
        self.count += 1
        if self.trace:
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(f"{self.count} {name}\n")
        if self.kill_at == self.count:
            os.kill(os.getpid(), signal.SIGKILL)


def no_checkpoint(_name: str) -> None:
    """The default: checkpoints do nothing."""
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: dict, checkpoint: Checkpoint = no_checkpoint) -> None:
    """Replace ``path`` with ``obj`` as JSON: temp file, fsync, rename, fsync the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        checkpoint(f"wrote {path.name} (temp)")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    checkpoint(f"replaced {path.name}")


__all__ = ["Checkpoint", "Checkpoints", "FAULT_ENV", "TRACE_ENV", "fsync_dir", "no_checkpoint", "write_json_atomic"]
