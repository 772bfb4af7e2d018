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
    created: float  # wall clock at put (for people; never compared)


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # rows waiting (not yet acknowledged)
    bytes: int  # their payload bytes
    written: int  # rows put since open
    acked: int  # rows deleted on PUBACK since open
    dropped_ttl: int  # rows dropped for age since open
    dropped_cap: int  # rows dropped (oldest first) to stay under max_bytes since open
    rejected: int  # rows the broker refused (error PUBACK) since open
    dropped_full: int = 0  # rows lost to a full disk (oldest dropped for room, or new ones not stored)
    recovered_corrupt: int = 0  # corrupt files moved aside and replaced since open
    file_bytes: int = 0  # database + WAL on disk


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


__all__ = ["Message", "OutboxRow", "OutboxStats", "one_line"]
