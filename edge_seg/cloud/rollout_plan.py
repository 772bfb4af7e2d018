"""The plan of a fleet rollout: waves, device selection, durations, health thresholds, the signing key.

* ``--waves 1,10,50,100%``: cumulative sizes, each a device count (``10``) or a share of the selected
  devices (``50%``, rounded up): 1 device, then up to 10, then up to 50, then all. Sizes that add no
  device are dropped; a last wave below 100 % leaves the rest untouched.
* ``--select label=value`` (repeatable, all must match): ``device`` (``fnmatch`` pattern),
  ``model`` (name), ``version``, or a key of the device's ``extra.labels`` in its status.
* Durations: ``10m``, ``30s``, ``1h``, ``250ms`` or plain seconds.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_seg.errors import InputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float) -> float:
    """Seconds of ``10m`` / ``30s`` / ``1h`` / ``250ms`` / ``12``."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise InputError(f"duration {text!r}: use e.g. 30s, 10m, 1h or a number of seconds")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_waves(text: str) -> list[tuple[float, bool]]:
    """``1,10,50,100%`` → [(size, is_percent)] in order; sizes must grow."""
    waves = []
    for item in (p.strip() for p in str(text).split(",")):
        percent = item.endswith("%")
        try:
            value = float(item[:-1] if percent else item)
        except ValueError:
            raise InputError(f"--waves {text!r}: each wave is a count (10) or a percentage (50%)") from None
        if value <= 0 or (percent and value > 100) or (not percent and value != int(value)):
            raise InputError(f"--waves {text!r}: {item!r} must be a whole count ≥ 1 or a percentage in (0, 100]")
        waves.append((value, percent))
    if not waves:
        raise InputError("--waves needs at least one wave, e.g. 1,10,50,100%")
    return waves


def split_waves(devices: list[str], waves: list[tuple[float, bool]]) -> list[list[str]]:
    """The devices of each wave (cumulative sizes; waves adding nobody are dropped)."""
    out, done = [], 0
    for value, percent in waves:
        upto = min(len(devices), math.ceil(len(devices) * value / 100) if percent else int(value))
        if upto > done:
            out.append(devices[done:upto])
            done = upto
    return out


def parse_select(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--select {item!r}: use label=value, e.g. site=north or device=cam-*")
        out[key.strip()] = value.strip()
    return out


def selected(status: dict, select: dict[str, str]) -> bool:
    """Does a device's status match every ``label=value`` of ``select``?"""
    model = status.get("model") or {}
    labels = (status.get("extra") or {}).get("labels") or {}
    for key, want in select.items():
        if key == "device":
            if not fnmatch.fnmatchcase(str(status.get("device")), want):
                return False
        elif key in ("model", "version"):
            if str(model.get("name" if key == "model" else "version")) != want:
                return False
        elif str(labels.get(key)) != want:
            return False
    return True


@dataclass
class Plan:
    """Everything a rollout needs besides the bundle (persisted with it: a resumed rollout keeps its plan)."""

    waves: str = "1,10,50,100%"
    select: dict = field(default_factory=dict)
    max_fps_drop: float = 0.1  # fraction of the device's baseline FPS
    max_confidence_drop: float = 0.1  # fraction of its baseline mean confidence
    soak_s: float = 600.0
    baseline_s: float = 30.0  # samples taken before a wave's commands
    command_timeout_s: float = 300.0  # cmd/result and the new model in the status
    discover_s: float = 3.0  # retained statuses are read for this long before the devices are chosen
    wait_s: float = 120.0  # update_model's own wait for the hot swap (sent to the device)
    allow_downgrade: bool = False

    def __post_init__(self) -> None:
        parse_waves(self.waves)
        for name in ("max_fps_drop", "max_confidence_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"--{name.replace('_', '-')} is a fraction of the baseline in [0, 1]")

    def as_dict(self) -> dict:
        return asdict(self)


class Signer:
    """Signs commands with an HMAC key file (its bytes, trailing newline dropped) or an Ed25519 private key (PEM)."""

    def __init__(self, path: str | Path):
        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise InputError(f"cannot read the signing key {path}: {err.strerror}") from None
        self.hmac_key, self.private = None, None
        if raw.lstrip().startswith(b"-----BEGIN") and b"PRIVATE KEY" in raw:
            from edge_seg.ota.sign import load_private_key

            self.private = load_private_key(Path(path))  # an OtaError (one line) unless an Ed25519 key
        else:
            self.hmac_key = raw.rstrip(b"\r\n")
            if not self.hmac_key:
                raise InputError(f"{path}: the HMAC key file is empty")

    def sign(self, command: dict) -> dict:
        from edge_seg.publish.commands_signing import sign_command

        return sign_command(command, hmac_key=self.hmac_key, ed25519_private_key=self.private)


__all__ = ["Plan", "Signer", "parse_duration", "parse_select", "parse_waves", "selected", "split_waves"]
