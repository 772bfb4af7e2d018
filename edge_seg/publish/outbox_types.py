"""The values the outbox takes and gives: a message to store, a stored row, its counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Message(Protocol):
    """What ``put`` stores: ``edge_seg.publish.messages.Encoded`` has these fields."""

    topic: str
    payload: bytes
    content_type: str | None
    msg_id: str
    seq: int


@dataclass(frozen=True)
class OutboxRow:
    """One stored message; ``id`` orders the replay."""

    id: int
    topic: str
    payload: bytes
    content_type: str | None
    msg_id: str
    seq: int
    created: float


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # rows waiting (not yet acknowledged)
    bytes: int  # their payload bytes
    written: int  # rows put since open
    acked: int  # rows deleted on PUBACK since open
    dropped_ttl: int  # rows dropped for age since open
    dropped_cap: int  # rows dropped (oldest first) to stay under max_bytes since open
    rejected: int  # rows the broker refused (error PUBACK) since open


__all__ = ["Message", "OutboxRow", "OutboxStats"]
