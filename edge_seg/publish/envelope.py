"""What every message shares: the error type, the encoded payload, message ids and the envelope fields.

``messages`` (mask, crop, status, …) and ``instance_crop`` both build on this module; neither
imports the other's internals, so the publish package has no import cycle.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_seg.errors import EdgeSegError
from edge_seg.publish.schemas import DEVICE_PATTERN, JSON_CONTENT_TYPE, ModelInfo

__all__ = ["Encoded", "MessageError", "encoded_message", "envelope", "finite", "json_bytes", "model_dict",
           "new_msg_id"]

_DEVICE_RE = re.compile(DEVICE_PATTERN)


class MessageError(EdgeSegError):
    """A payload that is not a valid message; ``command_id`` is the command's id when it could be read."""

    def __init__(self, message: str, command_id: str | None = None):
        super().__init__(message)
        self.command_id = command_id


@dataclass(frozen=True)
class Encoded:
    """A payload ready to publish on ``{prefix}/{device}/{topic}``."""

    topic: str  # "mask" (class or instance masks) | "crop" | "status" | "metrics" | "cmd/result"; "CAMERA/mask" …
    payload: bytes
    content_type: str
    msg_id: str
    seq: int


_last_ms = 0


def new_msg_id() -> str:
    """32 hex characters: 12 of milliseconds since the epoch (sortable by time) + 80 random bits."""
    global _last_ms
    ms = max(int(time.time() * 1000), _last_ms)
    _last_ms = ms
    return f"{ms:012x}{os.urandom(10).hex()}"


def json_bytes(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def envelope(schema: str, device: str, seq: int, ts: float | None = None, camera: str | None = None) -> dict:
    """The fields every message starts with; ``camera`` (several cameras on the device) also picks the topic
    (``{camera}/mask``, see ``encoded_message``)."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise MessageError(f"device id {device!r} is not valid: 1-64 of A-Z a-z 0-9 _ . - starting with a letter "
                           "or digit")
    if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or seq < 0:
        raise MessageError(f"seq must be a non-negative integer, got {seq!r}")
    head = {"schema": schema, "device": device, "msg_id": new_msg_id(), "seq": int(seq),
            "ts": round(float(time.time() if ts is None else ts), 6)}
    if camera is not None:
        if not isinstance(camera, str) or not _DEVICE_RE.match(camera):
            raise MessageError(f"camera name {camera!r} is not valid: 1-64 of A-Z a-z 0-9 _ . - starting with a "
                               "letter or digit")
        head["camera"] = camera
    return head


def model_dict(model: Any) -> dict | None:
    info = ModelInfo.of(model)
    return None if info is None else info.model_dump()


def finite(value: float | None, digits: int) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def encoded_message(topic: str, head: dict, payload: bytes, content_type: str = JSON_CONTENT_TYPE) -> Encoded:
    """The encoded message; a camera's data goes to ``{camera}/{topic}`` (DESIGN §3: one camera keeps the short
    form)."""
    camera = head.get("camera")
    return Encoded(topic if camera is None else f"{camera}/{topic}", payload, content_type, head["msg_id"],
                   head["seq"])
