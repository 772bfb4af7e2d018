"""Signed model bundles: ``pack``, ``verify`` and safe extraction (DESIGN §3, issue 6; keys: ``ota.sign``).

A bundle is a tar archive (plain or gzip) holding, in this order:

* ``manifest.json``: the model manifest; its ``files`` list every model file with its sha256;
* ``manifest.sig``: ``{"schema", "alg": "ed25519", "key_id", "sig"}``, ``sig`` the base64 Ed25519
  signature over the *canonical* manifest (``canonical_json``: sorted keys, no spaces, UTF-8);
* the model files, at the paths the manifest lists.

Verification never writes anything: every member is checked to be a regular file at a safe
relative path (no absolute path, no ``..``, no symlink, hard link or device file), the signature is
checked against the trusted keys, then every listed file is hashed and compared with the signed
manifest; anything not listed is refused. Extraction runs only on a verified bundle and hashes
again while writing, so a bundle changed between the two passes is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_seg.manifest import MANIFEST_NAME, Manifest, parse_manifest, sha256_file
from edge_seg.ota.durable import fsync_dir
from edge_seg.ota.sign import (
    SIG_NAME,
    OtaError,
    SignatureError,
    canonical_json,
    check_signature,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_keys,
    sign_manifest,
)

CHUNK = 16 * 1024
MAX_MEMBERS = 64  # files
MAX_ENTRIES = 4 * MAX_MEMBERS  # every header: files, directories, links, devices
MAX_MANIFEST_BYTES = 1 << 20


class BundleError(OtaError):
    """The bundle is malformed, truncated or holds an unsafe member."""


class IntegrityError(OtaError):
    """A file's bytes do not match the sha256 the signed manifest lists."""


# --- pack ----------------------------------------------------------------------------------

def safe_member_path(name: str) -> bool:
    """True for a normalised relative POSIX path without ``..`` (what a bundle member may be called)."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    if posixpath.normpath(name) != name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _manifest_files(manifest: Manifest, source: str) -> dict[str, str]:
    """path -> sha256 of every file the manifest lists (each must have a safe path and a sha256)."""
    files: dict[str, str] = {}
    for key, entry in manifest.files.items():
        if not safe_member_path(entry.path) or entry.path in (MANIFEST_NAME, SIG_NAME):
            raise BundleError(f"{source}: file '{key}' has an unsafe path '{entry.path}': refusing")
        if not entry.sha256 or len(entry.sha256) != 64:
            raise BundleError(f"{source}: file '{key}' ({entry.path}) has no sha256 in the manifest: refusing")
        files[entry.path] = entry.sha256.lower()
    if not files:
        raise BundleError(f"{source}: the manifest lists no model file")
    return files


@dataclass
class PackResult:
    path: Path
    manifest: Manifest
    digest: str  # sha256 of the canonical manifest
    key_id: str
    files: dict[str, str] = field(default_factory=dict)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def pack(model_dir: Path, key_path: Path, out: Path) -> PackResult:
    """Bundle ``model_dir`` (manifest.json + the files it lists) signed with the key at ``key_path``.

    Missing sha256 entries are filled in; a sha256 that disagrees with its file is an error.
    ``out`` ending in ``.gz``/``.tgz`` is gzip-compressed.
    """
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise OtaError(f"{model_dir}: no {MANIFEST_NAME} (write one with 'edge-seg manifest init')")
    data = json.loads(manifest_path.read_text())
    manifest = parse_manifest(data, str(manifest_path))
    for key, entry in manifest.files.items():
        path = model_dir / entry.path
        if not safe_member_path(entry.path) or not path.is_file():
            raise OtaError(f"{manifest_path}: file '{key}' ({entry.path}) is missing or not inside {model_dir}")
        actual = sha256_file(path)
        if entry.sha256 and entry.sha256.lower() != actual:
            raise OtaError(f"{manifest_path}: sha256 of {entry.path} is {actual[:12]}…, the manifest says "
                           f"{entry.sha256[:12]}… (re-export the model or fix the manifest)")
        data["files"][key]["sha256"] = actual
    manifest = parse_manifest(data, str(manifest_path))
    files = _manifest_files(manifest, str(manifest_path))
    signature = sign_manifest(data, load_private_key(key_path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST_NAME, json.dumps(data, indent=2, ensure_ascii=False).encode() + b"\n")
        _add_bytes(tar, SIG_NAME, json.dumps(signature, indent=2).encode() + b"\n")
        for rel in files:
            info = tar.gettarinfo(str(model_dir / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(model_dir / rel, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)
    return PackResult(out, manifest, hashlib.sha256(canonical_json(data)).hexdigest(), signature["key_id"], files)


# --- verify --------------------------------------------------------------------------------

@dataclass
class VerifiedBundle:
    """A bundle whose signature and file hashes checked out."""

    path: Path
    manifest: Manifest
    manifest_obj: dict
    signature: dict
    key_id: str
    digest: str  # sha256 of the canonical manifest: names this exact model
    files: dict[str, str]  # path -> sha256
    size: int  # total bytes of the model files


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise OtaError(f"bundle not found: {path}") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BundleError(f"bundle {path.name} is truncated or not a tar archive ({err})") from None


def _scan_members(tar: tarfile.TarFile, name: str, max_bytes: int) -> dict[str, tarfile.TarInfo]:
    """All members by name, after refusing unsafe ones (type, path, duplicates, count, size).

    Headers are read one at a time and every entry counts, directories included, so a bundle with a
    million entries is refused after ``MAX_ENTRIES`` headers, not after reading (and keeping) them all.
    """
    members: dict[str, tarfile.TarInfo] = {}
    total = entries = 0
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError) as err:
            raise BundleError(f"bundle {name} is truncated or corrupt ({err})") from None
        if info is None:
            return members
        entries += 1
        if entries > MAX_ENTRIES:
            raise BundleError(f"bundle {name} holds more than {MAX_ENTRIES} entries: refusing")
        if info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hard link"
            raise BundleError(f"bundle {name}: member '{info.name}' is a {kind} (to '{info.linkname}'): refusing; "
                              "bundles hold regular files only")
        if info.isdev():
            raise BundleError(f"bundle {name}: member '{info.name}' is a device file: refusing")
        if not safe_member_path(info.name):
            raise BundleError(f"bundle {name}: member '{info.name}' has an unsafe path (absolute, '..' or "
                              "not normalised): refusing (path traversal)")
        if info.isdir():
            continue
        if not info.isreg():
            raise BundleError(f"bundle {name}: member '{info.name}' is not a regular file: refusing")
        if info.name in members:
            raise BundleError(f"bundle {name}: member '{info.name}' appears twice: refusing")
        members[info.name] = info
        total += info.size
        if len(members) > MAX_MEMBERS or total > max_bytes:
            raise BundleError(f"bundle {name} holds more than {MAX_MEMBERS} files or {max_bytes} bytes: refusing")


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> bytes:
    if info.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {name}: {info.name} is {info.size} bytes, more than a manifest can be")
    try:
        data = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BundleError(f"bundle {name} is truncated ({info.name}: {err})") from None
    if len(data) != info.size:
        raise BundleError(f"bundle {name} is truncated ({info.name}: {len(data)} of {info.size} bytes)")
    return data


def hash_member(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str,
                sink: Callable[[bytes], None] | None = None, checkpoint: Callable[[str], None] | None = None,
                label: str = "hash chunk") -> str:
    """sha256 of one member's bytes (streamed, optionally also to ``sink``); a short member is truncation."""
    h = hashlib.sha256()
    got = 0
    try:
        f = tar.extractfile(info)
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
            if sink is not None:
                sink(chunk)
            if checkpoint is not None:
                checkpoint(f"{label} {info.name}")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BundleError(f"bundle {name} is truncated ({info.name}: {err})") from None
    if got != info.size:
        raise BundleError(f"bundle {name} is truncated ({info.name}: {got} of {info.size} bytes)")
    return h.hexdigest()


def _no_constant(name: str):
    """``json.loads`` hook: NaN and Infinity are not JSON (and cannot be signed canonically)."""
    raise ValueError(f"{name} is not a number a manifest may hold")


def verify_bundle(path: Path, keys: dict, max_bytes: int = 1 << 30,
                  checkpoint: Callable[[str], None] | None = None) -> VerifiedBundle:
    """Check members, signature and every file hash of a bundle; nothing is written."""
    path = Path(path)
    name = path.name
    with _open_tar(path) as tar:
        members = _scan_members(tar, name, max_bytes)
        if MANIFEST_NAME not in members:
            raise BundleError(f"bundle {name} has no {MANIFEST_NAME}: not an edge-seg bundle")
        raw_manifest = _read_small(tar, members[MANIFEST_NAME], name)
        try:
            manifest_obj = json.loads(raw_manifest, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise BundleError(f"bundle {name}: {MANIFEST_NAME} is not JSON ({err})") from None
        except RecursionError:
            raise BundleError(f"bundle {name}: {MANIFEST_NAME} is nested too deeply to be a manifest") from None
        if not isinstance(manifest_obj, dict):
            raise BundleError(f"bundle {name}: {MANIFEST_NAME} is not a JSON object")
        sig_data = _read_small(tar, members[SIG_NAME], name) if SIG_NAME in members else None
        sig, kid = check_signature(sig_data, manifest_obj, keys, name)
        if checkpoint is not None:
            checkpoint("signature verified")
        manifest = parse_manifest(manifest_obj, f"bundle {name}: {MANIFEST_NAME}")
        files = _manifest_files(manifest, f"bundle {name}")
        extra = sorted(set(members) - set(files) - {MANIFEST_NAME, SIG_NAME})
        if extra:
            raise BundleError(f"bundle {name}: member '{extra[0]}' is not listed in the signed manifest: refusing")
        for rel, expected in files.items():
            if rel not in members:
                raise BundleError(f"bundle {name}: '{rel}', listed in the manifest, is missing (truncated?)")
            actual = hash_member(tar, members[rel], name, checkpoint=checkpoint)
            if actual != expected:
                raise IntegrityError(f"bundle {name}: sha256 of {rel} is {actual[:12]}…, the signed manifest says "
                                     f"{expected[:12]}… (tampered or corrupted): refusing")
        size = sum(members[rel].size for rel in files)
    digest = hashlib.sha256(canonical_json(manifest_obj)).hexdigest()
    return VerifiedBundle(path, manifest, manifest_obj, sig, kid, digest, files, size)


def extract(bundle: VerifiedBundle, dest: Path, checkpoint: Callable[[str], None] | None = None) -> None:
    """Write a verified bundle's files, manifest and signature into the empty directory ``dest`` (fsynced).

    Every file is hashed again while it is written (the bundle may have changed since ``verify``).
    """
    dest = Path(dest)
    name = bundle.path.name
    with _open_tar(bundle.path) as tar:
        members = _scan_members(tar, name, max(bundle.size * 2, 1 << 20))
        for rel, expected in bundle.files.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                actual = hash_member(tar, members[rel], name, sink=out.write, checkpoint=checkpoint,
                                     label="write chunk")
                out.flush()
                os.fsync(out.fileno())
            if actual != expected:
                raise IntegrityError(f"bundle {name}: {rel} changed after verification (sha256 {actual[:12]}…): "
                                     "refusing")
            if checkpoint is not None:
                checkpoint(f"wrote {rel}")
    for file_name, obj in ((MANIFEST_NAME, bundle.manifest_obj), (SIG_NAME, bundle.signature)):
        with open(dest / file_name, "xb") as out:
            out.write(json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
    fsync_dir(dest)


def verify_signature_file(model_dir: Path, keys: dict) -> str:
    """Check ``manifest.sig`` of an installed model directory against its manifest; the key id."""
    model_dir = Path(model_dir)
    sig_path = model_dir / SIG_NAME
    manifest_obj = json.loads((model_dir / MANIFEST_NAME).read_text())
    _, kid = check_signature(sig_path.read_bytes() if sig_path.is_file() else None, manifest_obj, keys,
                              model_dir.name)
    return kid


__all__ = ["BundleError", "IntegrityError", "OtaError", "PackResult", "SignatureError", "VerifiedBundle",
           "canonical_json", "extract", "generate_keypair", "key_id", "load_private_key", "load_public_keys", "pack",
           "safe_member_path", "sign_manifest", "verify_bundle", "verify_signature_file"]
