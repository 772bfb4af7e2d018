"""Zone messages: events (``{prefix}/{device}/event``) and retained zone state (``zone/{zone}/state``).

* **event** (schema ``edge_seg.event/v1``, ``application/json``): ``zone``, ``class``, ``kind``
  (``enter`` | ``leave`` | ``occupied`` | ``cleared``, defined in ``edge_seg.postprocess.zones``),
  ``track_ids`` (the track entering or leaving; the tracks in the zone for occupied/cleared; empty
  without tracking or for semantic models), ``value`` (area fraction or count when it happened),
  ``frame_seq``, and ``ts`` = the frame's capture time. QoS 1 through the outbox like masks. A zone
  with ``snapshot: true`` adds ``snapshot_jpeg`` (base64 JPEG of the frame's overlay, redacted like
  the frame, long side at most 320 px) and ``snapshot_size`` ([width, height]); optional fields of
  v1, which consumers that predate them ignore.
* **zone state** (schema ``edge_seg.zone_state/v1``, published **retained**, not through the
  outbox: only the newest state matters and it is sent again on every connect): ``zone``,
  ``occupied`` (by any watched class) and ``classes``: per class ``occupied``, ``count``
  (instance models) or ``area`` (semantic), ``track_ids``, ``since`` (capture time of the last
  change). ``ts`` is the capture time of the frame that produced it.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_seg.publish.envelope import Encoded, encoded_message, envelope, finite, json_bytes
from edge_seg.publish.schemas import EVENT_SCHEMA, ZONE_STATE_SCHEMA


def state_topic(zone: str) -> str:
    """The topic suffix of a zone's retained state."""
    return f"zone/{zone}/state"


def encode_event(event, *, device: str, seq: int, snapshot: tuple[str, tuple[int, int]] | None = None) -> Encoded:
    """An event message for one ``edge_seg.postprocess.zones.ZoneEvent``; ``snapshot``: (base64 JPEG, its
    (width, height)) to attach."""
    head = envelope(EVENT_SCHEMA, device, seq, event.ts)
    head.update({"zone": event.zone, "class": event.class_name, "kind": event.kind,
                 "track_ids": [int(t) for t in event.track_ids], "value": finite(max(event.value, 0.0), 6) or 0.0})
    if event.frame_seq is not None:
        head["frame_seq"] = int(event.frame_seq)
    if snapshot is not None:
        head["snapshot_jpeg"], head["snapshot_size"] = snapshot[0], [int(v) for v in snapshot[1]]
    return encoded_message("event", head, json_bytes(head))


def encode_zone_state(zone: str, states: Iterable, *, device: str, seq: int, ts: float | None = None,
                      frame_seq: int | None = None) -> Encoded:
    """The retained state of ``zone`` from its ``ZoneState`` values (one per watched class)."""
    head = envelope(ZONE_STATE_SCHEMA, device, seq, ts)
    classes = {}
    for state in states:
        item = {"occupied": bool(state.occupied), "track_ids": [int(t) for t in state.track_ids]}
        if state.count is not None:
            item["count"] = int(state.count)
        if state.area is not None:
            item["area"] = min(finite(state.area, 6) or 0.0, 1.0)
        if state.since is not None:
            item["since"] = round(float(state.since), 6)
        classes[state.class_name] = item
    head.update(zone=zone, occupied=any(v["occupied"] for v in classes.values()), classes=classes)
    if frame_seq is not None:
        head["frame_seq"] = int(frame_seq)
    return encoded_message(state_topic(zone), head, json_bytes(head))


__all__ = ["encode_event", "encode_zone_state", "state_topic"]
