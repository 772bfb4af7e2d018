"""The on-device model store (DESIGN §3): ``<state_dir>/models/``.

Layout::

    models/<name>-<version>-<sha8>/   one complete model: manifest.json, manifest.sig, files, origin.json
    models/current  -> <id>           what the loop runs (relative symlink)
    models/previous -> <id>           what a rollback returns to
    models/state.json                 pending (installed, not yet confirmed by probation), bad ids, history
    models/.lock                      flock held by every writer (install, rollback, gc, mark-good)
    models/.staging-*/                an install in progress (removed by the next writer)

Crash safety: a model directory gets its final name only after every file in it is written and
fsynced (``rename(2)`` of the staging directory); ``current``/``previous`` are switched by
renaming a new symlink over the old one (atomic), ``previous`` first, so at every instant both
resolve to complete models. ``state.json`` is replaced the same way.

Every step passes a checkpoint (``ota.durable.Checkpoints``: where tests inject a SIGKILL).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edge_seg.errors import EdgeSegError
from edge_seg.manifest import MANIFEST_NAME, Manifest, read_manifest
from edge_seg.ota.bundle import OtaError
from edge_seg.ota.durable import (  # noqa: F401 - FAULT_ENV, TRACE_ENV, Checkpoints re-exported
    FAULT_ENV,
    TRACE_ENV,
    Checkpoint,
    Checkpoints,
    fsync_dir,
    no_checkpoint,
    write_json_atomic,
)
from edge_seg.ota.entries import Entry, read_origin, verify_model_dir

STATE_NAME = "state.json"
HISTORY = 50

class ModelStore:
    """The model store under ``root`` (normally ``<state_dir>/models``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> "ModelStore":
        return cls(Path(state_dir) / "models")

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    @property
    def previous_link(self) -> Path:
        return self.root / "previous"

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise OtaError(f"cannot create {self.root}: permission denied (run as the service user or root)") from None

    # --- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 120.0) -> Iterator[None]:
        """Exclusive store lock (flock: released by the kernel when a holder dies)."""
        self.ensure()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                        raise OtaError(f"another model operation (pid {holder}) holds {self.root}/.lock; "
                                       "try again when it has finished") from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
            self.adopt_owner()
        finally:
            os.close(fd)

    def adopt_owner(self) -> int:
        """Run as root (``sudo edge-seg model install``): give what was written to the owner of the state
        directory (the service user), so the service can still roll back and confirm. Returns paths changed."""
        if os.geteuid() != 0 or not self.root.is_dir():
            return 0
        owner = self.root.parent.stat()
        if owner.st_uid == 0:
            return 0
        changed = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [None, *dirnames, *filenames]:
                path = dirpath if name is None else os.path.join(dirpath, name)
                st = os.lstat(path)
                if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                    os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
                    changed += 1
        return changed

    # --- links ---------------------------------------------------------------------------
    def _link_id(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return name if (self.root / name / MANIFEST_NAME).is_file() else None

    def current_id(self) -> str | None:
        """The id ``current`` points at (None when missing or dangling)."""
        return self._link_id(self.current_link)

    def previous_id(self) -> str | None:
        return self._link_id(self.previous_link)

    def path_of(self, model_id: str) -> Path:
        return self.root / model_id

    def current_path(self) -> Path | None:
        cid = self.current_id()
        return self.path_of(cid) if cid else None

    def _set_link(self, link: Path, model_id: str, checkpoint: Checkpoint) -> None:
        tmp = self.root / f".{link.name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(model_id, tmp)
        checkpoint(f"{link.name} link created")
        os.replace(tmp, link)
        checkpoint(f"{link.name} link renamed")
        fsync_dir(self.root)
        checkpoint(f"{link.name} synced")

    def switch(self, model_id: str, checkpoint: Checkpoint = no_checkpoint) -> str | None:
        """Make ``model_id`` current and the old current previous; returns the old current id."""
        if not (self.path_of(model_id) / MANIFEST_NAME).is_file():
            raise OtaError(f"model {model_id} is not in the store")
        old = self.current_id()
        if old == model_id:
            return old
        if old is not None:
            self._set_link(self.previous_link, old, checkpoint)
        self._set_link(self.current_link, model_id, checkpoint)
        return old

    # --- state ---------------------------------------------------------------------------
    def read_state(self) -> dict:
        try:
            data = json.loads((self.root / STATE_NAME).read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        data.setdefault("pending", None)
        data.setdefault("bad", {})
        data.setdefault("history", [])
        return data

    def _write_state(self, state: dict, checkpoint: Checkpoint = no_checkpoint) -> None:
        state["history"] = state["history"][-HISTORY:]
        write_json_atomic(self.root / STATE_NAME, state, checkpoint)

    def record(self, event: str, checkpoint: Checkpoint = no_checkpoint, **fields) -> dict:
        """Append an event to the history (caller holds the lock); returns the updated state."""
        state = self.read_state()
        state["history"].append({"ts": round(time.time(), 3), "event": event, **fields})
        self._write_state(state, checkpoint)
        return state

    def set_pending(self, model_id: str, checkpoint: Checkpoint = no_checkpoint) -> None:
        state = self.read_state()
        state["pending"] = {"id": model_id, "starts": 0, "since": round(time.time(), 3)}
        self._write_state(state, checkpoint)

    def mark_good(self, model_id: str) -> bool:
        """Confirm ``model_id`` (probation passed); True when it was pending."""
        with self.lock():
            state = self.read_state()
            pending = state.get("pending") or {}
            if pending.get("id") != model_id:
                return False
            state["pending"] = None
            state["bad"].pop(model_id, None)
            state["history"].append({"ts": round(time.time(), 3), "event": "confirmed", "id": model_id})
            self._write_state(state)
            return True

    def note_start(self, max_starts: int) -> str | None:
        """Count a service start on an unconfirmed ``current``; roll back after ``max_starts``. The reason, if so."""
        with self.lock():
            self.recover()
            state = self.read_state()
            pending, cid = state.get("pending") or {}, self.current_id()
            if not pending or pending.get("id") != cid:
                return None
            pending["starts"] = int(pending.get("starts", 0)) + 1
            if pending["starts"] <= max_starts:
                self._write_state(state)
                return None
            reason = f"model {cid} was not confirmed by probation in {max_starts} service starts"
        self.rollback(reason, mark_bad=True)
        return reason

    # --- rollback ------------------------------------------------------------------------
    def rollback(self, reason: str, mark_bad: bool = False, expect_current: str | None = None,
                 checkpoint: Checkpoint = no_checkpoint) -> tuple[str | None, str]:
        """Point ``current`` back at ``previous`` (and ``previous`` at the model left); (left id, now current id).

        ``expect_current``: only roll back if ``current`` is still that id (a newer install wins).
        """
        with self.lock():
            cur, prev = self.current_id(), self.previous_id()
            if expect_current is not None and cur != expect_current:
                raise OtaError(f"not rolling back: current is now {cur}, not {expect_current}")
            if prev is None or prev == cur:
                raise OtaError("no previous model to roll back to (model list shows what is stored)")
            self.verify_entry(prev)
            self._set_link(self.current_link, prev, checkpoint)
            if cur is not None:
                self._set_link(self.previous_link, cur, checkpoint)
            state = self.read_state()
            state["pending"] = None
            if mark_bad and cur is not None:
                state["bad"][cur] = reason
            state["history"].append({"ts": round(time.time(), 3), "event": "rollback", "from": cur, "to": prev,
                                     "reason": reason})
            self._write_state(state, checkpoint)
            return cur, prev

    # --- integrity -----------------------------------------------------------------------
    def verify_entry(self, model_id: str, keys: dict | None = None) -> Manifest:
        """Check a stored model (``entries.verify_model_dir``): files, hashes and, with ``keys``, the signature."""
        return verify_model_dir(self.path_of(model_id), model_id, keys)

    def origin(self, model_id: str) -> dict:
        return read_origin(self.path_of(model_id))

    # --- maintenance ---------------------------------------------------------------------
    def recover(self, checkpoint: Checkpoint = no_checkpoint) -> list[str]:
        """Remove what an interrupted writer left (staging dirs, temp links/files); caller holds the lock."""
        removed = []
        if not self.root.is_dir():
            return removed
        for path in self.root.iterdir():
            if path.name.startswith((".staging-", ".trash-")) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
            elif path.name.startswith((".current.tmp-", ".previous.tmp-", f".{STATE_NAME}.")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(path.name)
        if self.current_id() is None and self.previous_id() is not None and self.current_link.is_symlink():
            self._set_link(self.current_link, self.previous_id(), checkpoint)  # dangling current: back to previous
            removed.append("dangling current")
        if removed:
            checkpoint("recovered")
        return removed

    def new_staging(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        os.chmod(path, 0o755)
        return path

    def discard(self, path: Path) -> None:
        """Move a directory out of the way (atomic rename), then delete it."""
        trash = self.root / f".trash-{path.name}-{os.getpid()}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                      and (p / MANIFEST_NAME).is_file())

    def entries(self) -> list[Entry]:
        state = self.read_state()
        cur, prev = self.current_id(), self.previous_id()
        pending = (state.get("pending") or {}).get("id")
        out = []
        for model_id in self.ids():
            try:
                manifest = read_manifest(self.path_of(model_id) / MANIFEST_NAME)
            except EdgeSegError:
                manifest = None
            out.append(Entry(model_id, self.path_of(model_id), manifest, self.origin(model_id),
                             current=model_id == cur, previous=model_id == prev, bad=state["bad"].get(model_id),
                             pending=model_id == pending))
        out.sort(key=lambda e: e.origin.get("installed") or 0)
        return out

    def gc(self, keep: int = 3, dry_run: bool = False) -> list[str]:
        """Delete stored models beyond the ``keep`` newest; never ``current`` or ``previous``."""
        with self.lock():
            removed = self.recover() if not dry_run else []
            entries = self.entries()
            protected = {e.id for e in entries if e.current or e.previous or e.pending}
            others = [e for e in entries if e.id not in protected]
            budget = max(0, keep - len(protected))
            doomed = others[:max(0, len(others) - budget)]
            for entry in doomed:
                if not dry_run:
                    self.discard(entry.path)
                removed.append(entry.id)
            downloads = self.root.parent / "downloads"
            if downloads.is_dir() and not dry_run:
                for part in downloads.iterdir():
                    with contextlib.suppress(OSError):
                        part.unlink()
                        removed.append(f"downloads/{part.name}")
            return removed


def store_of(model_path: Path | str | None) -> ModelStore | None:
    """The store a configured model path belongs to (``.../models/current`` or a stored model dir), else None."""
    if model_path is None:
        return None
    path = Path(model_path)
    if path.name == "current" and path.is_symlink():
        return ModelStore(path.parent)
    if (path.parent / "current").is_symlink() and (path / MANIFEST_NAME).is_file():
        return ModelStore(path.parent)
    return None


__all__ = ["Checkpoints", "FAULT_ENV", "ModelStore", "TRACE_ENV", "store_of", "write_json_atomic"]
