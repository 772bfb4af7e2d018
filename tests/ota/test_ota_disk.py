"""The state disk: downloads cannot pile up (one slot, refused ones removed), and a start on a full disk
reclaims what can go before it writes anything (a real tmpfs, mounted by the test, is the full disk)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from ota_helpers import RangeServer, bundle, colour_model_dir, keypair

from edge_seg.config import parse_config
from edge_seg.ota.bundle import load_public_keys
from edge_seg.ota.fetch import DownloadError, download
from edge_seg.ota.install import InstallOptions, install_bundle
from edge_seg.ota.store import ModelStore

LIMIT = 64 * 1024


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()} if folder.is_dir() else {}


def test_a_download_over_the_limit_leaves_nothing(tmp_path):
    with RangeServer(os.urandom(LIMIT * 2), cut="always", cut_bytes=LIMIT + 8192) as server:
        with pytest.raises(DownloadError, match="limit"):
            download(server.url, tmp_path / "downloads", LIMIT, attempts=1)
    assert _files(tmp_path / "downloads") == {}  # today: a .part of the limit's size stays behind


def test_failed_downloads_from_a_remote_sender_never_pile_up(tmp_path):
    """Each refused or broken download of another URL used to leave its own .part (only 'model gc' removed them)."""
    folder = tmp_path / "downloads"
    with RangeServer(os.urandom(LIMIT // 2), cut="always", cut_bytes=4096) as server:  # never completes
        for i in range(6):
            with pytest.raises(DownloadError, match="incomplete"):
                download(f"{server.url}?n={i}", folder, LIMIT, attempts=1)
            files = _files(folder)
            assert len(files) == 1 and sum(files.values()) <= LIMIT, files


def test_an_interrupted_download_resumes_only_for_the_same_url_and_sha(tmp_path):
    folder, data = tmp_path / "downloads", os.urandom(LIMIT // 2)
    with RangeServer(data, cut="first") as server:
        with pytest.raises(DownloadError, match="incomplete"):
            download(server.url, folder, LIMIT, attempts=1, expected_sha256="ab" * 32)
        assert server.ranges == [None]
        done = download(server.url, folder, LIMIT, attempts=1, expected_sha256="ab" * 32)
        assert server.ranges[-1] == f"bytes={len(data) // 2}-" and done.read_bytes() == data  # resumed
        done.unlink()
    with RangeServer(data) as server:
        other = download(server.url, folder, LIMIT, attempts=1, expected_sha256="cd" * 32)  # another sha: fresh
        assert server.ranges == [None] and other.read_bytes() == data and list(_files(folder)) == [other.name]


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int):
    path.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", f"edge-seg-{uuid.uuid4().hex[:6]}",
                           str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()


@pytest.mark.parametrize("filler", ["a download", "an old model"])
def test_a_start_on_a_full_state_disk_reclaims_space_first(tiny_models, tmp_path, filler):
    """Today: OSError 'No space left on device' writing state.json, and the service never starts."""
    from edge_seg.service.daemon import Service

    key, pub = keypair(tmp_path / "keys")
    keys = load_public_keys([pub])
    with small_disk(tmp_path / "disk", 4) as disk:
        store = ModelStore(disk / "models")
        installed = []
        for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"):
            source = colour_model_dir(tiny_models["colour_probs_uint8"], tmp_path / version, version)
            installed.append(install_bundle(bundle(source, key, tmp_path / f"{version}.tar"), store, keys,
                                            InstallOptions(smoke=False)))
        store.set_pending(installed[-1].id)  # unconfirmed: the start is counted in state.json (a write)
        _fill(disk / "downloads" / "0123456789abcdef.part" if filler == "a download"
              else installed[0].path / "filler.bin")
        with pytest.raises(OSError):  # the disk is full indeed
            (disk / "probe").write_bytes(b"x" * 65536)
        config = parse_config({"device": {"state_dir": str(disk)}, "model": {"path": str(store.current_link)},
                               "ota": {"trusted_keys": [str(pub)], "keep": 3, "min_free_mb": 1}})
        prepared = Service.prepare(config)
        assert prepared.model.path == installed[-1].path
        assert store.read_state()["pending"]["starts"] == 1
        assert _files(disk / "downloads") == {}
        ids = store.ids()
        if filler == "a download":  # removing it was enough: every model stays
            assert ids == [r.id for r in installed]
        else:  # models beyond keep go, never current or previous
            assert installed[-1].id in ids and installed[-2].id in ids and installed[0].id not in ids
            assert len(ids) == 3
