"""The ``mqtt`` section of the device config, the broker URL parser, and the password lookup.

``url`` is ``mqtt://[user@]host[:port]`` (default port 1883) or ``mqtts://[user@]host[:port]``
(TLS, default 8883). A password is never part of the URL: it comes from ``password_file`` (a
file readable only by the service; a trailing newline is ignored) or, when no file is set, from
the ``EDGE_SEG_MQTT_PASSWORD`` environment variable. It is never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from edge_seg.errors import EdgeSegError, FieldValueError

PASSWORD_ENV = "EDGE_SEG_MQTT_PASSWORD"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerURLError(EdgeSegError, ValueError):
    """The broker URL is not ``mqtt[s]://[user@]host[:port]``."""


def parse_broker_url(url: str) -> tuple[str, str | None, str, int]:
    """``mqtt[s]://[user@]host[:port]`` → (scheme, user or None, host, port); one-line errors."""
    if not isinstance(url, str) or "://" not in url:
        raise BrokerURLError(f"broker URL must look like mqtt://host:1883 or mqtts://user@host:8883, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BrokerURLError("broker URL has a bad port (use 1-65535), e.g. mqtt://host:1883") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerURLError(f"broker URL scheme must be mqtt or mqtts, got '{parts.scheme}'")
    if parts.password is not None:
        raise BrokerURLError(f"do not put the password in the broker URL: use {PASSWORD_ENV} or mqtt.password_file")
    if not parts.hostname:
        raise BrokerURLError("broker URL has no host, e.g. mqtt://broker.local:1883")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerURLError("broker URL takes no path or query: mqtt[s]://[user@]host[:port]")
    if port == 0:
        raise BrokerURLError("broker URL has a bad port (use 1-65535), e.g. mqtt://host:1883")
    user = unquote(parts.username) if parts.username else None
    return scheme, user, parts.hostname, port or DEFAULT_PORTS[scheme]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TLSConfig(_Section):
    ca: Path | None = Field(default=None, description="CA bundle that signed the broker certificate (None: system CAs)")
    cert: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key: Path | None = Field(default=None, description="client private key (mutual TLS)")
    insecure: bool = Field(default=False, description="skip the broker hostname check (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> "TLSConfig":
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together (mutual TLS needs both)")
        return self


class OutboxConfig(_Section):
    ttl_s: float | None = Field(default=86_400.0, gt=0, allow_inf_nan=False,
                                description="drop unsent messages older than this many seconds of device running "
                                            "time (monotonic; wall-clock steps do not count; None: never)")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, description="the outbox file (database + WAL) "
                           "stays within this many bytes on disk: the oldest unsent messages are dropped first")
    sync: Literal["normal", "full"] = Field(default="normal", description="normal: survives a crash; full: also "
                                                                          "power loss, one fsync per batch")
    audit: bool = Field(default=False, description="debug: keep a log of every produced msg_id in the outbox")


class PolicyConfig(_Section):
    every_n: int = Field(default=30, ge=0, description="publish a mask at least every Nth frame (0: off)")
    area_delta: float | None = Field(default=0.05, ge=0, le=2, description="publish when the L1 distance of class "
                                     "area fractions to the last published mask exceeds this (None: off)")
    uncertainty: float | None = Field(default=None, ge=0, le=1, description="publish when the mean uncertainty "
                                      "(1 - mean confidence) exceeds this (None: off)")
    max_rate: float = Field(default=5.0, gt=0, description="at most this many masks per second")


class CommandsConfig(_Section):
    enabled: bool = True
    require_signature: Literal["hmac", "ed25519"] | None = Field(
        default=None, description="reject commands without a valid signature (see edge_seg.publish.commands)")
    key: str | None = Field(default=None, description="HMAC shared secret, or Ed25519 public key (PEM or base64)")
    key_file: Path | None = Field(default=None, description="file holding the key instead of 'key'")
    insecure: StrictBool = Field(default=False, description="run update_model, set_policy, reload and snapshot "
                                 "without a signature (anyone who can publish on /cmd can); warned at every start")

    @model_validator(mode="after")
    def _key(self) -> "CommandsConfig":
        if self.key is not None and self.key_file is not None:
            raise ValueError("set commands.key or commands.key_file, not both")
        if self.insecure and self.require_signature:
            raise ValueError("commands.insecure: true turns signatures off: remove it, or remove "
                             "commands.require_signature")
        if self.require_signature and self.key is None and self.key_file is None:
            raise ValueError(f"commands.require_signature={self.require_signature} needs commands.key or key_file")
        return self


class MqttConfig(_Section):
    """Where and how results are published (None/absent url: publishing is off)."""

    url: str | None = Field(default=None, description="mqtt[s]://[user@]host[:port]; None: do not publish")
    client_id: str | None = Field(default=None, description="default edge-seg-{device}; stable for the session")
    topic_prefix: str = Field(default="edge_seg", pattern=r"^[^#+\x00]+$")
    protocol: Literal["5", "3.1.1"] = "5"
    tls: TLSConfig = TLSConfig()
    password_file: Path | None = Field(default=None, description=f"else the {PASSWORD_ENV} environment variable")
    keepalive: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 86_400, ge=0, description="MQTT 5: broker keeps the session this long")
    qos: Literal[0, 1] = Field(default=1, description="1: through the outbox, at least once; 0: best effort")
    inflight: int = Field(default=20, ge=1, le=65_535, description="unacknowledged messages on the wire")
    queue: int = Field(default=8, ge=1, description="frames waiting for the publisher thread; beyond: drop oldest")
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=60, ge=1)
    outbox: OutboxConfig = OutboxConfig()
    policy: PolicyConfig = PolicyConfig()
    mask_format: Literal["rle", "png"] = "rle"
    max_payload: int = Field(default=128_000, ge=4096, description="bytes; larger masks fall back (PNG, downscale)")
    status_interval_s: float = Field(default=30.0, gt=0, description="retained status (fps, uptime, outbox depth)")
    metrics_interval_s: float | None = Field(default=60.0, gt=0, description="metrics summary message (None: off)")
    ha_discovery: bool = Field(default=False, description="publish Home Assistant MQTT discovery configs")
    ha_prefix: str = "homeassistant"
    commands: CommandsConfig = CommandsConfig()

    @model_validator(mode="after")
    def _check(self) -> "MqttConfig":
        # checked here, not in a field validator, so a bad URL is never echoed back (it may hold a password)
        if self.url is not None:
            try:
                parse_broker_url(self.url)
            except BrokerURLError as err:
                raise FieldValueError("url", str(err)) from None
        if self.reconnect_min_s > self.reconnect_max_s:
            raise FieldValueError("reconnect_min_s", f"must not exceed reconnect_max_s ({self.reconnect_max_s}), "
                                                     f"got {self.reconnect_min_s}")
        return self


def resolve_password(config: MqttConfig) -> str | None:
    """The broker password from ``password_file`` (if set) or ``EDGE_SEG_MQTT_PASSWORD``; None if neither."""
    if config.password_file is not None:
        try:
            return config.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise EdgeSegError(f"cannot read mqtt.password_file {config.password_file}: {err.strerror}") from None
    return os.environ.get(PASSWORD_ENV) or None


__all__ = ["BrokerURLError", "CommandsConfig", "MqttConfig", "OutboxConfig", "PASSWORD_ENV", "PolicyConfig",
           "TLSConfig", "parse_broker_url", "resolve_password"]
