"""``edge-seg model update --url``: a resumable HTTP(S) download of a bundle, then the install.

The download goes to ``<state_dir>/downloads/<hash of URL and sha256>.part``: one slot. Starting
a download removes what any other left there, so however many downloads a remote sender starts,
the folder never holds more than one partial bundle (at most the size limit). An interrupted
transfer resumes with a ``Range`` request (a server answering 200 instead of 206 restarts it),
within one call (``attempts``) and across calls of the same URL and sha256; a refused one (over the
size limit, an HTTP error) is removed. The size limit is checked against ``Content-Length`` /
``Content-Range`` before anything is written and while bytes arrive. Nothing is trusted until the
install verifies the signature and hashes.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edge_seg.ota.bundle import OtaError

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


class DownloadError(OtaError):
    """The bundle could not be downloaded completely (or is over the size limit); ``resumable``: the partial
    file is kept for the next try of the same URL."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


def _total_from(resp, have: int) -> int | None:
    if resp.status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != have:
            return -1  # a range we did not ask for: restart
        return int(match.group(3)) if match.group(3) != "*" else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def clear_slot(dest_dir: Path, keep: str | None = None) -> list[str]:
    """Remove every download in ``dest_dir`` but the one named ``keep`` (a stem); the names removed."""
    removed = []
    if Path(dest_dir).is_dir():
        for path in Path(dest_dir).iterdir():
            if keep is None or not path.name.startswith(keep + "."):
                try:
                    path.unlink()
                    removed.append(path.name)
                except (IsADirectoryError, FileNotFoundError):
                    pass
    return removed


def download(url: str, dest_dir: Path, max_bytes: int, attempts: int = 4, timeout: float = 30.0,
             progress: Callable[[int, int | None], None] | None = None, expected_sha256: str | None = None) -> Path:
    """Download ``url`` into ``dest_dir``, resuming a partial file of the same URL and sha256; the complete
    file's path. Any other download in ``dest_dir`` is removed first (one slot)."""
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"unsupported URL '{url}': use http:// or https://")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(f"{url}\n{(expected_sha256 or '').lower()}".encode()).hexdigest()[:16]
    for name in clear_slot(dest_dir, keep=stem):
        log.info("removed the earlier download %s: one download at a time", name)
    part, done = dest_dir / f"{stem}.part", dest_dir / f"{stem}.bundle"
    try:
        return _fetch(url, part, done, max_bytes, attempts, timeout, progress)
    except DownloadError as err:
        if not err.resumable:
            part.unlink(missing_ok=True)
        raise


def _fetch(url: str, part: Path, done: Path, max_bytes: int, attempts: int, timeout: float,
           progress: Callable[[int, int | None], None] | None) -> Path:
    total: int | None = None
    last_error = "no attempt"
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "edge-seg-ota", "Range": f"bytes={have}-"} if have else {"User-Agent": "edge-seg-ota"}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if resp.status == 200 and have:
                    have = 0  # the server ignores Range: start again
                expected = _total_from(resp, have)
                if expected == -1:
                    part.unlink(missing_ok=True)
                    last_error = "the server answered a different range"
                    continue
                total = expected if expected is not None else total
                if total is not None and total > max_bytes:
                    raise DownloadError(f"the bundle at {url} is {total} bytes, over the limit of {max_bytes} bytes "
                                        "(ota.max_bundle_mb): refusing")
                with open(part, "r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        have += len(chunk)
                        if have > max_bytes:
                            raise DownloadError(f"the bundle at {url} exceeds the limit of {max_bytes} bytes "
                                                "(ota.max_bundle_mb): refusing")
                        out.write(chunk)
                        if progress is not None:
                            progress(have, total)
                    out.flush()
                    os.fsync(out.fileno())
            if total is None or have == total:
                os.replace(part, done)
                return done
            last_error = f"connection closed at {have} of {total} bytes"
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # our range starts at or past the end: start again
                part.unlink(missing_ok=True)
                last_error = "HTTP 416"
                continue
            raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
        except (http.client.IncompleteRead, http.client.HTTPException, urllib.error.URLError, TimeoutError,
                ConnectionError, OSError) as err:
            if isinstance(err, urllib.error.URLError) and not part.exists() and attempt == attempts:
                raise DownloadError(f"download of {url} failed: {err.reason}") from None
            last_error = f"{type(err).__name__}: {err}"
        log.warning("download attempt %d/%d of %s: %s; resuming", attempt, attempts, url, last_error)
        time.sleep(min(0.1 * attempt, 2.0))
    have = part.stat().st_size if part.exists() else 0
    of = f" of {total}" if total is not None else ""
    raise DownloadError(f"download of {url} is incomplete: {have}{of} bytes after {attempts} attempts "
                        f"({last_error}); nothing was installed, run the same command again to resume",
                        resumable=True)


__all__ = ["DownloadError", "clear_slot", "download"]
