"""One stored model of the on-device store: its id, its origin record, its integrity check, its listing row.

These work on a model directory and know nothing of ``current``/``previous`` or the lock: that is
``ota.store``'s job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edge_seg.errors import EdgeSegError
from edge_seg.manifest import MANIFEST_NAME, Manifest, check_file_hash, read_manifest
from edge_seg.ota.bundle import SIG_NAME, IntegrityError, OtaError, verify_signature_file

ORIGIN_NAME = "origin.json"
_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def entry_id(manifest: Manifest, digest: str) -> str:
    """``<name>-<version>-<sha8>`` of a model (the directory it is stored in)."""
    for label, value in (("name", manifest.name), ("version", manifest.version)):
        if not _ID_PART.match(value):
            raise OtaError(f"manifest {label} '{value}' cannot name a model directory: use letters, digits, "
                           "'.', '_', '-' and '+' (at most 64)")
    return f"{manifest.name}-{manifest.version}-{digest[:8]}"


@dataclass
class Entry:
    """One stored model."""

    id: str
    path: Path
    manifest: Manifest | None
    origin: dict
    current: bool = False
    previous: bool = False
    bad: str | None = None
    pending: bool = False

    def as_dict(self) -> dict:
        m = self.manifest
        return {"id": self.id, "name": m.name if m else None, "version": m.version if m else None,
                "task": m.task if m else None, "current": self.current, "previous": self.previous,
                "pending": self.pending, "bad": self.bad, "signed_by": self.origin.get("key_id"),
                "installed": self.origin.get("installed"), "source": self.origin.get("source"),
                "bytes": dir_size(self.path)}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def read_origin(model_dir: Path) -> dict:
    """Where a stored model came from (``origin.json``: installed time, source, signing key); {} if unknown."""
    try:
        return json.loads((Path(model_dir) / ORIGIN_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def verify_model_dir(path: Path, model_id: str, keys: dict | None = None) -> Manifest:
    """Check a stored model: manifest readable, every listed file present with its sha256, and (with
    ``keys``, when it was installed from a signed bundle) the signature."""
    try:
        manifest = read_manifest(path / MANIFEST_NAME)
    except EdgeSegError as err:
        raise IntegrityError(f"stored model {model_id}: {err}") from None
    for entry in manifest.files.values():
        file = path / entry.path
        if not file.is_file():
            raise IntegrityError(f"stored model {model_id}: {entry.path} is missing")
        try:
            check_file_hash(file, entry.sha256)
        except EdgeSegError as err:
            raise IntegrityError(f"stored model {model_id}: {err}") from None
    if keys is not None and (path / SIG_NAME).is_file():
        verify_signature_file(path, keys)
    return manifest


__all__ = ["ORIGIN_NAME", "Entry", "dir_size", "entry_id", "read_origin", "verify_model_dir"]
