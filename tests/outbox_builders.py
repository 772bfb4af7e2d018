"""Outbox rows for tests: the fields the outbox reads from an encoded message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    content_type: str | None
    msg_id: str
    seq: int


def msgs(start: int, count: int, size: int = 100, content_type: str | None = "application/json") -> list[Msg]:
    """``count`` mask messages with ids ``id-{start}``…, each ``size`` bytes of one repeated byte."""
    return [Msg("mask", bytes([i % 256]) * size, content_type, f"id-{i}", i) for i in range(start, start + count)]
