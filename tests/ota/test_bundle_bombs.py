"""Hostile bundles are refused before they cost anything: a member bomb (a small .tar.gz with a million
entries) is refused in well under a second and a few MB, and never while the model store is locked."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from ota_helpers import keypair

from edge_seg.ota.bundle import BundleError, OtaError, load_public_keys, verify_bundle
from edge_seg.ota.install import install_bundle
from edge_seg.ota.store import ModelStore


def _header(name: str, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755
    return info.tobuf(tarfile.USTAR_FORMAT)


def member_bomb(path: Path, count: int, kind: bytes = tarfile.DIRTYPE) -> Path:
    """A gzip tar of ``count`` header-only entries (directories by default: they count as members too)."""
    block = _header("d/" if kind == tarfile.DIRTYPE else "f", kind) * 10_000
    with gzip.open(path, "wb", compresslevel=1) as out:
        for _ in range(count // 10_000):
            out.write(block)
        out.write(b"\0" * 1024)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return member_bomb(tmp_path_factory.mktemp("bomb") / "bomb.tar.gz", 1_000_000)


def test_a_million_member_bundle_is_refused_at_once_in_little_memory(bomb, tmp_path):
    keys_dir = tmp_path / "keys"
    _key, pub = keypair(keys_dir)
    code = f"""
import json, resource, time
from pathlib import Path
from edge_seg.ota.bundle import BundleError, OtaError, load_public_keys, verify_bundle
keys = load_public_keys([Path({str(pub)!r})])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    verify_bundle(Path({str(bomb)!r}), keys)
    error = None
except BundleError as err:
    error = str(err)
print(json.dumps({{"s": time.perf_counter() - t0, "error": error,
                  "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=300).stdout)
    assert out["error"] is not None and "entries" in out["error"], out
    assert out["s"] < 1.0, out  # today's code: getmembers() of all 1,000,000 headers first (48 s, 495 MB)
    assert out["grew_kb"] < 50 * 1024, out


def test_directories_count_toward_the_entry_cap(tmp_path):
    """Directory entries are not files, but each is a header to read: they count (today they are skipped)."""
    path = member_bomb(tmp_path / "b.tar.gz", 10_000)
    with pytest.raises(BundleError, match=r"more than \d+ entries"):
        verify_bundle(path, {})


def test_files_past_the_file_cap_are_refused_by_their_own_count(tmp_path):
    path = tmp_path / "files.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(100):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    with pytest.raises(BundleError, match=r"more than 64 files"):
        verify_bundle(path, {})


def test_a_bomb_is_refused_without_taking_the_store_lock(bomb, tmp_path):
    """The store lock is for the install's writes: a bundle is verified before, so a hostile one never blocks
    a rollback or a gc (the lock is held by this test: today the install waits for it, then refuses)."""
    _key, pub = keypair(tmp_path / "keys")
    store = ModelStore(tmp_path / "models")
    store.ensure()
    with store.lock():
        with pytest.raises(BundleError, match="entries"):
            install_bundle(bomb, store, load_public_keys([pub]))


def _hand_bundle(path: Path, manifest: bytes, sig: bytes) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in (("manifest.json", manifest), ("manifest.sig", sig)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("manifest", "sig", "expected"), [
    (b'{"name": "m", "version": "1", "baseline": {"a": NaN}}', None, "NaN is not a number a manifest may hold"),
    (b'{"name": "m", "scale": Infinity}', None, "Infinity is not a number a manifest may hold"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, None, "nested too deeply"),
    (b'{"name": "m"}', b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "manifest.sig is malformed"),
])
def test_hostile_manifest_json_is_refused_in_one_line(tmp_path, manifest, sig, expected):
    """A signature is checked over the canonical manifest, which has no NaN: a manifest holding one, or nested
    past the parser's depth, is a refusal, not a traceback (today: ValueError / RecursionError)."""
    _key, pub = keypair(tmp_path / "keys")
    keys = load_public_keys([pub])
    kid = next(iter(keys))
    sig = sig or json.dumps({"schema": "x", "alg": "ed25519", "key_id": kid, "sig": "AAAA"}).encode()
    path = _hand_bundle(tmp_path / "b.tar", manifest, sig)
    with pytest.raises(OtaError) as err:
        verify_bundle(path, keys)
    assert expected in str(err.value) and "\n" not in str(err.value)
