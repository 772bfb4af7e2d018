"""``ZoneStage``: the loop stage that runs a source's ``ZoneTracker`` on each segmented frame.

It leaves for the later stages, in ``result.extras``: ``zone_events`` (the frame's ``ZoneEvent``
list, when there are any) and ``zone_states`` (zone name → copies of its ``ZoneState`` per
class, only for zones whose state changed: occupied, count, track ids, or the area by a step of
``AREA_STEP``, so a semantic zone's retained state is not republished on every frame). It sets
the Prometheus zone gauges on every frame. Runs after the metrics stage and before the publisher.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from edge_seg.postprocess.zones import ZoneTracker

log = logging.getLogger(__name__)
AREA_STEP = 0.05  # a zone's area share must move by this much (in steps) to republish its state


class ZoneStage:
    """Measures the zones of one source; ``metrics``: an ``edge_seg.loop.metrics.Metrics`` (or None)."""

    name = "zones"

    def __init__(self, tracker: ZoneTracker, metrics=None):
        self.tracker = tracker
        self.metrics = metrics
        self._last: dict[str, tuple] = {}
        self.events = 0

    def __call__(self, result) -> None:
        frame = result.frame
        height, width = frame.image.shape[:2]
        events = self.tracker.update(result.segmentation, ts=frame.ts, frame_seq=frame.seq, roi=result.roi,
                                     frame_size=(width, height))
        if events:
            result.extras["zone_events"] = events
            self.events += len(events)
        by_zone: dict[str, list] = {}
        for state in self.tracker.states():
            by_zone.setdefault(state.zone, []).append(state)
            if self.metrics is not None:
                self.metrics.set_zone(state.zone, state.class_name, state.occupied, state.count, state.area)
        changed = {}
        for zone, states in by_zone.items():
            key = tuple((s.occupied, s.count, s.track_ids, None if s.area is None else int(s.area / AREA_STEP))
                        for s in states)
            if self._last.get(zone) != key:
                self._last[zone] = key
                changed[zone] = [replace(s) for s in states]  # copies: the publisher thread reads them later
        if changed:
            result.extras["zone_states"] = changed

    def summary(self) -> list[dict]:
        """The zones and their current state, JSON-ready (the preview's ``/stats.json``)."""
        out: dict[str, dict] = {}
        for zone in self.tracker.zones:
            out[zone.name] = {"name": zone.name, "units": zone.units, "points": [list(p) for p in zone.points],
                              "classes": {}}
        for s in self.tracker.states():
            out[s.zone]["classes"][s.class_name] = {"occupied": s.occupied, "count": s.count,
                                                    "area": None if s.area is None else round(s.area, 4),
                                                    "track_ids": list(s.track_ids)}
        return list(out.values())


__all__ = ["AREA_STEP", "ZoneStage"]
