"""Gaps in a device's ``seq``: messages that never arrived, per device and topic.

Devices number each topic's messages 1, 2, 3, … and go on across restarts
(``edge_seg.publish.sequence``), so for a stream (device, topic) a jump from the highest ``seq``
seen to ``seq`` means ``seq - highest - 1`` messages that never arrived (dropped by the outbox's
TTL or size cap, lost at QoS 0, numbers a SIGKILL left unused: at most one block). The store calls
``observe`` for every message it stores (never for a duplicate ``msg_id``, so at-least-once
redelivery counts nothing), which returns the change of the gap count:

* ``seq > highest``: ``+ (seq - highest - 1)``; the missing numbers are remembered (the last
  ``MAX_RANGES`` ranges within ``LATE_WINDOW`` of the highest).
* ``seq < highest`` and remembered as missing: a late arrival (reordering, a replay): ``- 1``,
  counted in ``late``. We count when the jump is seen and take it back when the message comes,
  so the count is right at every moment, not only at the end.
* ``seq < highest``, not remembered (it came before this process started remembering, or the
  device repeated a number): ``out_of_order``, no change.
* A jump of more than ``RESET_JUMP`` forward, or more than ``LATE_WINDOW`` backward to a number
  not remembered as missing, is a counter reset (a device that lost its counter file goes on
  from the wall clock in ms; a wiped state dir starts again at 1): ``seq_resets``, no gap; the
  stream goes on from there.
* ``seq`` 0 is outside the numbering (the will a broker sends for a vanished device): ignored.

The highest ``seq`` of a stream the process has not seen yet comes from ``lookup`` (the store's
SQLite: the highest of the last 100 messages stored), so a consumer restart goes on where it stopped.
Remembered missing numbers are in memory only: after a consumer restart a late arrival of one of
them is ``out_of_order`` and its gap stays counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

RESET_JUMP = 10**9  # > 20 months of 15 messages a second; the wall clock in ms is ~1.8e12
LATE_WINDOW = 10_000  # how far below the highest a late message may still arrive
MAX_RANGES = 1_000  # missing ranges remembered per stream


@dataclass
class _Stream:
    highest: int | None
    missing: list[list[int]] = field(default_factory=list)  # [first, last] ranges, oldest first


class GapCounter:
    """Per (device, topic) highest ``seq`` and missing ranges (thread-safe; see the module docstring)."""

    def __init__(self, lookup: Callable[[str, str, str], int | None]):
        self._lookup = lookup
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._lock = threading.Lock()
        self.counts = {"gaps": 0, "late": 0, "out_of_order": 0, "seq_resets": 0}

    def observe(self, device: str, topic: str, seq: int, msg_id: str = "") -> int:
        """Record one stored (not duplicate) message; the change of this stream's gap count.

        ``lookup(device, topic, msg_id)`` gives a stream's highest ``seq`` stored before, without this message.
        """
        if seq <= 0:
            return 0
        with self._lock:
            key = (device, topic)
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = _Stream(self._lookup(device, topic, msg_id))
            delta = self._step(stream, seq)
            self.counts["gaps"] += delta
            return delta

    def _step(self, stream: _Stream, seq: int) -> int:
        top = stream.highest
        if top is None or seq - top > RESET_JUMP:
            if top is not None:
                self.counts["seq_resets"] += 1
                stream.missing.clear()
            stream.highest = seq
            return 0
        if seq > top:
            stream.highest = seq
            if seq > top + 1:
                stream.missing.append([top + 1, seq - 1])
                floor = seq - LATE_WINDOW
                stream.missing = [r for r in stream.missing[-MAX_RANGES:] if r[1] >= floor]
            return seq - top - 1
        if seq == top:
            self.counts["out_of_order"] += 1  # the same number under another msg_id
            return 0
        for i, (first, last) in enumerate(stream.missing):
            if first <= seq <= last:
                pieces = [r for r in ([first, seq - 1], [seq + 1, last]) if r[0] <= r[1]]
                stream.missing[i:i + 1] = pieces
                self.counts["late"] += 1
                return -1
        if top - seq > LATE_WINDOW:
            self.counts["seq_resets"] += 1
            stream.highest, stream.missing = seq, []
            return 0
        self.counts["out_of_order"] += 1
        return 0


__all__ = ["LATE_WINDOW", "RESET_JUMP", "GapCounter"]
