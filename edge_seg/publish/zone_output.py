"""The publisher's zone part: events into the outbox, retained zone state sent directly and again on connect.

``ZoneStage`` (``edge_seg.loop.zone_stage``) leaves ``result.extras["zone_events"]`` (a list of
``ZoneEvent``) and ``result.extras["zone_states"]`` (zone name → its ``ZoneState`` copies, for the
zones whose state changed). On the publisher thread, ``encode(result)`` turns the events into
``event`` messages (returned: the publisher commits them to the outbox, QoS 1, nothing lost offline;
with a JPEG of the frame's overlay when the zone has ``snapshot: true``, made here on the publisher
thread, once per frame) and sends each changed zone state **retained** at once when connected. The
newest state per zone is kept in memory and sent again on every (re)connect (``resend``, paho's
thread), so the broker's retained copy is right even if a change happened while it was away
(Mosquitto keeps retained messages across its own restarts only with ``persistence true``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edge_seg.publish.envelope import Encoded
from edge_seg.publish.schemas import MAX_SNAPSHOT_B64
from edge_seg.publish.snapshot import EVENT_SIDE, overlay_jpeg_b64
from edge_seg.publish.zone_messages import encode_event, encode_zone_state


class ZoneOutput:
    """See the module docstring; ``send(encoded, retain)`` sends directly, ``connected()`` says if it can."""

    def __init__(self, device: str, seqs, send: Callable[[Encoded, bool], None], connected: Callable[[], bool]):
        self.device, self.seqs, self._send, self._connected = device, seqs, send, connected
        self._latest: dict[str, Encoded] = {}
        self._lock = threading.Lock()  # a resend never overtakes a newer state
        self.counts = {"events": 0, "states": 0}

    @staticmethod
    def wants(result) -> bool:
        """Whether a frame result carries anything for the zone topics."""
        return bool(result.extras.get("zone_events") or result.extras.get("zone_states"))

    def encode(self, result) -> list[Encoded]:
        """The event messages of ``result`` (for the outbox); its changed zone states are sent retained now."""
        found = result.extras.get("zone_events") or ()
        snapshot = None
        if any(e.snapshot for e in found):  # one JPEG per frame, for every event that asks
            snapshot = overlay_jpeg_b64(result, result.overlay, MAX_SNAPSHOT_B64, max_side=EVENT_SIDE)
        events = [encode_event(e, device=self.device, seq=self.seqs.next("event"),
                               snapshot=snapshot if e.snapshot else None) for e in found]
        self.counts["events"] += len(events)
        frame = result.frame
        for zone, states in (result.extras.get("zone_states") or {}).items():
            state = encode_zone_state(zone, states, device=self.device, seq=self.seqs.next("zone_state"),
                                      ts=frame.ts, frame_seq=frame.seq)
            with self._lock:
                self._latest[zone] = state
                if self._connected():
                    self._send(state, True)
            self.counts["states"] += 1
        return events

    def resend(self) -> None:
        """Send the newest state of every zone again, retained (on connect)."""
        with self._lock:
            for state in self._latest.values():
                self._send(state, True)


__all__ = ["ZoneOutput"]
