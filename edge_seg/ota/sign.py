"""Ed25519 signatures of OTA bundles: keys, the canonical manifest bytes, signing and checking.

A bundle's ``manifest.sig`` is ``{"schema", "alg": "ed25519", "key_id", "sig"}``: ``sig`` is the
base64 Ed25519 signature over ``canonical_json(manifest)`` (sorted keys, no spaces, UTF-8, no NaN),
``key_id`` the first 16 hex digits of the sha256 of the raw public key. Devices trust the public
keys in ``ota.trusted_keys`` (files, or directories of ``*.pub`` / ``*.pem``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from edge_seg.errors import EdgeSegError

SIG_NAME = "manifest.sig"
SIG_SCHEMA = "edge_seg.signature/v1"


class OtaError(EdgeSegError):
    """An OTA step refused or failed; the message says which and what to do."""


class SignatureError(OtaError):
    """The bundle is unsigned, signed by an untrusted key, or its signature does not match."""


def canonical_json(obj: dict) -> bytes:
    """The bytes a bundle signature covers: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise OtaError("signed bundles need the 'cryptography' package: pip install cryptography") from None
    return serialization, ed25519, InvalidSignature


def key_id(public_key) -> str:
    """16 hex digits naming a public key (sha256 of its raw 32 bytes)."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out: Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``OUT.key`` (private, PEM PKCS8, mode 0600) and ``OUT.pub`` (public, PEM); return both paths."""
    serialization, ed25519, _ = _crypto()
    out = Path(out)
    private_path, public_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise OtaError(f"{path} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path):
    """An Ed25519 private key from a PEM file."""
    serialization, ed25519, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise OtaError(f"signing key not found: {path}") from None
    except (ValueError, TypeError) as err:
        raise OtaError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise OtaError(f"{path}: not an Ed25519 key (make one with 'edge-seg model keygen')")
    return key


def _load_public_key(path: Path):
    serialization, ed25519, _ = _crypto()
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip(), validate=True))
    except (ValueError, TypeError, binascii.Error) as err:
        raise OtaError(f"{path}: not a PEM or base64 Ed25519 public key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise OtaError(f"{path}: not an Ed25519 public key")
    return key


def load_public_keys(paths: Iterable[Path]) -> dict[str, object]:
    """key_id -> public key from files and directories (``*.pub`` / ``*.pem`` in them); missing paths are skipped."""
    keys: dict[str, object] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".pub", ".pem") and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            continue
        for file in files:
            key = _load_public_key(file)
            keys[key_id(key)] = key
    return keys


def sign_manifest(manifest_obj: dict, private_key) -> dict:
    """The ``manifest.sig`` object for a manifest dict."""
    signature = private_key.sign(canonical_json(manifest_obj))
    return {"schema": SIG_SCHEMA, "alg": "ed25519", "key_id": key_id(private_key.public_key()),
            "sig": base64.b64encode(signature).decode("ascii")}


def check_signature(sig_data: bytes | None, manifest_obj: dict, keys: dict, name: str) -> tuple[dict, str]:
    _, _, invalid_signature = _crypto()
    if sig_data is None:
        raise SignatureError(f"bundle {name} is unsigned (no {SIG_NAME}): refusing; sign it with "
                             "'edge-seg model pack --key KEY'")
    try:
        sig = json.loads(sig_data)
        raw = base64.b64decode(sig["sig"], validate=True)
        kid = str(sig["key_id"])
        if sig.get("alg") != "ed25519":
            raise ValueError(f"algorithm {sig.get('alg')!r}")
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as err:
        raise SignatureError(f"bundle {name}: {SIG_NAME} is malformed ({str(err)[:100]}): refusing") from None
    if not keys:
        raise SignatureError("no trusted OTA public key is configured: install one (ota.trusted_keys, "
                             "default /etc/edge-seg/keys/*.pub) or pass --pubkey")
    key = keys.get(kid)
    if key is None:
        raise SignatureError(f"bundle {name} is signed by key {kid}, which this device does not trust "
                             f"(trusted: {', '.join(sorted(keys))}): refusing; add its public key to ota.trusted_keys")
    try:
        key.verify(raw, canonical_json(manifest_obj))
    except invalid_signature:
        raise SignatureError(f"bundle {name}: the signature by key {kid} does not match the manifest "
                             "(tampered or corrupted): refusing") from None
    return sig, kid


__all__ = ["OtaError", "SIG_NAME", "SignatureError", "canonical_json", "check_signature", "generate_keypair",
           "key_id", "load_private_key", "load_public_keys", "sign_manifest"]
