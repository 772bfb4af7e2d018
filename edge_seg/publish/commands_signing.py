"""Command signatures: the canonical JSON a signature covers, ``sign_command`` and the device's ``Verifier``.

See ``edge_seg.publish.commands`` for the contract (HMAC-SHA256 or Ed25519 over the canonical JSON of the
command without ``sig``; ``ts`` within ``MAX_SKEW_S`` of the device clock).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

from edge_seg.errors import EdgeSegError
from edge_seg.publish.messages import MessageError
from edge_seg.publish.mqtt_config import CommandsConfig

MAX_SKEW_S = 300.0


def canonical_json(command: dict) -> bytes:
    """The bytes a signature covers: the command without ``sig``, sorted keys, no spaces, UTF-8."""
    body = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_command(command: dict, *, hmac_key: bytes | None = None, ed25519_private_key=None) -> dict:
    """A copy of ``command`` with ``sig`` (and ``ts`` if it had none) for a device that requires signatures."""
    signed = {k: v for k, v in command.items() if k != "sig"}
    signed.setdefault("ts", time.time())
    body = canonical_json(signed)
    if hmac_key is not None:
        raw = hmac.new(hmac_key, body, hashlib.sha256).digest()
    elif ed25519_private_key is not None:
        raw = ed25519_private_key.sign(body)
    else:
        raise ValueError("sign_command needs hmac_key or ed25519_private_key")
    signed["sig"] = base64.b64encode(raw).decode("ascii")
    return signed


class Verifier:
    """Checks ``sig`` of a raw command object (``MessageError`` when it is missing or wrong)."""

    def __init__(self, kind: str, key: bytes):
        self.kind = kind
        if kind == "hmac":
            if not key:
                raise EdgeSegError("commands: the HMAC key is empty")
            self._key = key
        elif kind == "ed25519":
            self._public = _ed25519_public_key(key)
        else:
            raise EdgeSegError(f"commands.require_signature must be hmac or ed25519, got {kind!r}")

    @classmethod
    def from_config(cls, config: CommandsConfig) -> Verifier | None:
        if not config.require_signature:
            return None
        if config.key_file is not None:
            try:
                key = config.key_file.read_bytes().rstrip(b"\r\n")
            except OSError as err:
                raise EdgeSegError(f"cannot read commands.key_file {config.key_file}: {err.strerror}") from None
        else:
            key = (config.key or "").encode("utf-8")
        return cls(config.require_signature, key)

    def verify(self, obj: dict, command_id: str | None, now: float) -> None:
        sig = obj.get("sig")
        if not isinstance(sig, str) or not sig:
            raise MessageError(f"signature required ({self.kind}): add 'sig'", command_id)
        ts = obj.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise MessageError("signed commands need 'ts' (Unix seconds)", command_id)
        if abs(now - float(ts)) > MAX_SKEW_S:
            raise MessageError(f"command ts is more than {MAX_SKEW_S:.0f} s from the device clock", command_id)
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError("bad signature: 'sig' is not base64", command_id) from None
        try:
            body = canonical_json(obj)
        except (TypeError, ValueError):
            raise MessageError("bad signature: the command cannot be put in canonical form", command_id) from None
        if self.kind == "hmac":
            good = hmac.compare_digest(raw, hmac.new(self._key, body, hashlib.sha256).digest())
        else:
            from cryptography.exceptions import InvalidSignature

            try:
                self._public.verify(raw, body)
                good = True
            except InvalidSignature:
                good = False
        if not good:
            raise MessageError(f"bad signature ({self.kind})", command_id)


def _ed25519_public_key(key: bytes):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        if key.lstrip().startswith(b"-----BEGIN"):
            public = load_pem_public_key(key)
        else:
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.strip(), validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise EdgeSegError("commands key: not an Ed25519 public key (PEM, or base64 of 32 raw bytes)") from None
    if not isinstance(public, Ed25519PublicKey):
        raise EdgeSegError("commands key: the PEM key is not an Ed25519 public key")
    return public


__all__ = ["MAX_SKEW_S", "Verifier", "canonical_json", "sign_command"]
