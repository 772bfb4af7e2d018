"""Frame slots and the camera scheduler of the inference thread.

Each camera's capture thread overwrites its own ``LatestSlot`` (inference always works on the newest
frame, Coral examples-camera style). With several cameras the slots share one condition, and
``RoundRobin.take`` gives the inference thread the newest frame of the next *ready* camera after the
one it served last: every camera with a frame waiting is served once per round, so a fast camera
cannot starve a slow one (a slow camera's frame waits at most one invoke per other camera), and a
camera holds at most one frame in its slot (its capture overwrites it, counting a drop).
"""

from __future__ import annotations

import threading


class LatestSlot:
    """One frame slot: ``put`` overwrites (returns True when an untaken frame was dropped).

    ``cond``: a condition shared with other slots (the scheduler waits on it for any of them).
    """

    def __init__(self, cond: threading.Condition | None = None) -> None:
        self._cond = cond or threading.Condition()
        self._frame = None
        self._closed = False

    def put(self, frame) -> bool:
        with self._cond:
            dropped = self._frame is not None
            self._frame = frame
            self._cond.notify_all()
            return dropped

    def wait_empty(self, timeout: float) -> bool:
        """Wait until the slot's frame was taken (or the slot closed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._frame is None or self._closed, timeout)

    def take(self, timeout: float):
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            return self._pop()

    def _pop(self):
        """The frame, removed (the caller holds the condition)."""
        frame, self._frame = self._frame, None
        if frame is not None:
            self._cond.notify_all()
        return frame

    @property
    def ready(self) -> bool:
        return self._frame is not None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class RoundRobin:
    """Takes the newest frame of each ready slot in turn (see the module docstring); thread-safe.

    ``take`` returns ``(index, frame)`` or None when no slot had a frame within ``timeout``; ``closed``
    is True once every slot is closed and empty. One slot: exactly ``LatestSlot.take``.
    """

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("a scheduler needs at least one slot")
        self.cond = threading.Condition()
        self.slots = [LatestSlot(self.cond if count > 1 else None) for _ in range(count)]
        self._next = 0
        self.served = [0] * count  # frames taken per slot

    def _ready(self) -> int | None:
        n = len(self.slots)
        for k in range(n):
            i = (self._next + k) % n
            if self.slots[i].ready:
                return i
        return None

    def take(self, timeout: float):
        if len(self.slots) == 1:
            frame = self.slots[0].take(timeout)
            if frame is None:
                return None
            self.served[0] += 1
            return 0, frame
        with self.cond:
            pick = self._ready()
            if pick is None and not self.closed:
                self.cond.wait(timeout)
                pick = self._ready()
            if pick is None:
                return None
            self._next = (pick + 1) % len(self.slots)
            self.served[pick] += 1
            return pick, self.slots[pick]._pop()

    def take_many(self, n: int, timeout: float) -> list[tuple[int, object]]:
        """Up to ``n`` (index, frame): the newest frame of each ready slot, in turn from the one after the slot
        served last (batching; one frame per camera); empty when none had a frame within ``timeout``."""
        first = self.take(timeout)
        if first is None:
            return []
        picks = [first]
        with self.cond:
            while len(picks) < n:
                pick = self._ready()
                if pick is None or any(pick == index for index, _ in picks):  # refilled since: next batch
                    break
                self._next = (pick + 1) % len(self.slots)
                self.served[pick] += 1
                picks.append((pick, self.slots[pick]._pop()))
        return picks

    @property
    def closed(self) -> bool:
        return all(slot.closed and not slot.ready for slot in self.slots)


__all__ = ["LatestSlot", "RoundRobin"]
