"""Zones: named polygons of one source's frame, watched per class, turned into events.

Config (``zones:``, a list; see ``ZoneConfig``): ``name`` (letters, digits, ``_``, ``-``: it is a
topic level and a Home Assistant id), ``points`` (at least 3 ``[x, y]``), ``units`` (``pixels``:
frame pixels of the whole frame, the default, as Frigate; ``fractions``: 0..1 of the frame width
and height, so the zone survives a resolution change), ``classes`` (the class names to watch).

What is measured, per zone and class, once per segmented frame (``ZoneTracker.update``):

* **semantic / binary models**: the *area fraction*: the share of the zone's pixels the class
  covers (at model resolution: the zone is rasterised once per map size, then one ``bincount``).
* **instance models**: the *count*: instances of the class whose **anchor point** (``anchor``:
  ``bottom_center`` of the box, where a person or a car touches the ground, or ``center``) lies
  inside the zone. With stable ids (``instance.track_id``, from the tracker) a track is *in* the
  zone once its anchor was inside for ``inertia`` consecutive frames and *out* again once it was
  outside (or the track unseen) for ``inertia`` consecutive frames; the count is the number of
  tracks in. Without track ids the count is that frame's number of anchors inside.

Events (``ZoneEvent.kind``), each for one zone and one class (with ``snapshot: true`` the event message
also carries a small JPEG of the frame's overlay, see ``edge_seg.publish.zone_messages``):

* ``enter``: one track is now in the zone (instance models with track ids only);
  ``track_ids`` is that track.
* ``leave``: a track that entered is out again; ``track_ids`` is that track.
* ``occupied``: the zone as a whole becomes occupied by the class: the area fraction is at least
  ``area_on`` (semantic) or the count at least ``min_count`` (instance), and has stayed so for
  ``min_duration_s`` seconds of capture time (0: at once); ``track_ids`` lists the tracks in.
* ``cleared``: an occupied zone is free again: the area fraction stayed below ``area_off``
  (hysteresis: ``area_off`` <= ``area_on``, so an area hovering around one threshold does not
  flap) or the count below ``min_count`` for ``min_duration_s`` seconds.

Within one frame the events come in this order: ``leave``, ``cleared``, ``enter``, ``occupied``
(zones and classes in config order). One ``ZoneTracker`` holds the state of one source: with
several cameras, make one per camera.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_seg.errors import EdgeSegError, FieldValueError

log = logging.getLogger(__name__)
ZONE_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EventKind = Literal["enter", "leave", "occupied", "cleared"]


class ZoneConfig(BaseModel):
    """One zone of the ``zones:`` list (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=ZONE_NAME_PATTERN, description="letters, digits, _ and - (topic level, HA id)")
    points: list[tuple[float, float]] = Field(min_length=3, max_length=256,
                                              description="polygon corners [x, y], in 'units'")
    units: Literal["pixels", "fractions"] = Field(default="pixels", description="pixels: of the whole frame; "
                                                  "fractions: 0..1 of the frame width and height")
    classes: list[str] = Field(min_length=1, max_length=64, description="class names to watch in this zone")
    anchor: Literal["bottom_center", "center"] = Field(default="bottom_center",
                                                       description="instance point tested against the zone")
    inertia: int = Field(default=3, ge=1, le=1000, description="frames an instance's anchor must stay inside "
                                                               "(or outside) before it enters (or leaves)")
    min_count: int = Field(default=1, ge=1, description="instances in the zone that make it occupied")
    area_on: float = Field(default=0.05, gt=0, le=1, description="semantic: occupied at this class share of the zone")
    area_off: float = Field(default=0.02, ge=0, le=1, description="semantic: cleared below this share")
    min_duration_s: float = Field(default=0.0, ge=0, le=3600, description="occupied/cleared only after the "
                                                                          "condition held this long")
    snapshot: bool = Field(default=False, description="attach a small JPEG of the frame's overlay (at most "
                           "320 px on its long side) to this zone's events")

    @model_validator(mode="after")
    def _check(self) -> ZoneConfig:
        if self.area_off > self.area_on:
            raise FieldValueError("area_off", f"must not exceed area_on ({self.area_on}), got {self.area_off}")
        bad = [[x, y] for x, y in self.points if x < 0 or y < 0]
        if bad:
            raise FieldValueError("points", f"coordinates must be >= 0, got {bad[0]}")
        bad = [[x, y] for x, y in self.points if x > 1 or y > 1]
        if self.units == "fractions" and bad:
            raise FieldValueError("points", f"with units: fractions every coordinate is in [0, 1] (or set units: "
                                            f"pixels), got {bad[0]}")
        if len(set(self.classes)) != len(self.classes):
            raise FieldValueError("classes", f"lists a class twice, got {self.classes}")
        return self


def check_zones(zones: Sequence[ZoneConfig]) -> None:
    """Zone names must be unique (each is a topic and an entity); raises ``ValueError`` naming the duplicate."""
    seen: set[str] = set()
    for zone in zones:
        if zone.name in seen:
            raise ValueError(f"zone name {zone.name!r} is used twice")
        seen.add(zone.name)


def check_classes(zones: Sequence[ZoneConfig], classes: Sequence[str]) -> None:
    """Every watched class must be one of the model's: ``EdgeSegError`` naming the zone and the valid names."""
    for zone in zones:
        unknown = [c for c in zone.classes if c not in classes]
        if unknown:
            raise EdgeSegError(f"zones: zone {zone.name!r} watches {', '.join(map(repr, unknown))}, which the model "
                               f"does not have (its classes: {', '.join(classes)})")


@dataclass(frozen=True)
class ZoneEvent:
    """Something that happened in a zone (see the module docstring for the kinds)."""

    zone: str
    class_name: str
    kind: EventKind
    track_ids: tuple[int, ...]
    frame_seq: int | None
    ts: float
    value: float  # the area fraction or the count when it happened
    snapshot: bool = False  # the zone asks for a JPEG of the frame with the event (``ZoneConfig.snapshot``)


@dataclass
class ZoneState:
    """The current state of one zone for one class (what the retained state topic carries)."""

    zone: str
    class_name: str
    occupied: bool = False
    count: int | None = None  # instance models
    area: float | None = None  # semantic and binary models
    track_ids: tuple[int, ...] = ()
    since: float | None = None  # capture time of the last occupied/cleared


@dataclass
class _Track:
    inside_run: int = 0
    outside_run: int = 0
    inside: bool = False  # entered and not left


@dataclass
class _Watch:
    """Per (zone, class) state."""

    state: ZoneState
    pending_since: float | None = None  # when the condition for the other state started to hold
    tracks: dict[int, _Track] = field(default_factory=dict)


def polygon_pixels(zone: ZoneConfig, frame_size: tuple[int, int]) -> np.ndarray:
    """The zone's corners in whole-frame pixels, float32 (n, 2); ``frame_size`` is (width, height)."""
    pts = np.asarray(zone.points, np.float32)
    if zone.units == "fractions":
        pts = pts * np.asarray(frame_size, np.float32)
    return pts


def _anchor(bbox: Sequence[float], anchor: str) -> tuple[float, float]:
    x, y, w, h = (float(v) for v in bbox)
    return (x + w / 2, y + h) if anchor == "bottom_center" else (x + w / 2, y + h / 2)


class ZoneTracker:
    """The zone state of one source: ``update(segmentation, ...)`` → the events of that frame."""

    def __init__(self, zones: Sequence[ZoneConfig]):
        check_zones(zones)
        self.zones = tuple(zones)
        self._watch = {(z.name, c): _Watch(ZoneState(z.name, c)) for z in self.zones for c in z.classes}
        self._masks: dict[tuple, list[np.ndarray]] = {}  # per (map shape, frame size, roi): zone masks
        self._polys: dict[tuple, list[np.ndarray]] = {}  # per frame size: corners in pixels
        self._checked: tuple[str, ...] | None = None

    def states(self) -> list[ZoneState]:
        """The state of every (zone, class), in config order."""
        return [w.state for w in self._watch.values()]

    def update(self, segmentation, *, ts: float, frame_seq: int | None = None,
               roi: tuple[int, int, int, int] | None = None, frame_size: tuple[int, int] | None = None
               ) -> list[ZoneEvent]:
        """Measure every zone in one frame's ``segmentation`` and return the events it causes.

        ``roi`` (x, y, w, h) is where the segmentation sits in the whole frame (None: it is the whole
        frame) and ``frame_size`` (width, height) the whole frame's size (default: the segmentation's).
        """
        classes = tuple(segmentation.classes)
        if classes != self._checked:
            check_classes(self.zones, classes)
            self._checked = classes
        full = tuple(frame_size or segmentation.frame_size)
        offset = (0.0, 0.0) if roi is None else (float(roi[0]), float(roi[1]))
        polys = self._polys.get(full)
        if polys is None:
            polys = self._polys[full] = [polygon_pixels(z, full) for z in self.zones]
        early: list[ZoneEvent] = []
        late: list[ZoneEvent] = []
        if segmentation.instances is not None:
            measures = self._count(segmentation, polys, offset, classes, ts, frame_seq, early, late)
        else:
            measures = self._areas(segmentation, polys, offset)
        for zone in self.zones:
            for cls in zone.classes:
                self._debounce(zone, cls, measures[(zone.name, cls)], ts, frame_seq, early, late)
        return early + late

    # --- measuring ----------------------------------------------------------------------------------
    def _areas(self, seg, polys: list[np.ndarray], offset: tuple[float, float]) -> dict[tuple[str, str], float]:
        labels = seg.label_map
        key = (labels.shape, tuple(seg.frame_size), offset)
        masks = self._masks.get(key)
        if masks is None:
            masks = self._masks[key] = [self._rasterise(p, labels.shape, seg.frame_size, offset) for p in polys]
        index = {name: i for i, name in enumerate(seg.classes)}
        out = {}
        for zone, mask in zip(self.zones, masks):
            inside = labels[mask]
            counts = np.bincount(inside, minlength=256) if inside.size else np.zeros(256, np.int64)
            total = max(int(inside.size), 1)
            for cls in zone.classes:
                out[(zone.name, cls)] = float(counts[index[cls]]) / total
        return out

    @staticmethod
    def _rasterise(poly: np.ndarray, shape: tuple[int, int], seg_size: Sequence[int],
                   offset: tuple[float, float]) -> np.ndarray:
        """The zone as a bool mask over the model-resolution map (whose pixels cover ``seg_size`` frame px)."""
        h, w = shape
        sx, sy = w / float(seg_size[0]), h / float(seg_size[1])
        # a map pixel belongs to the zone when its centre does (even-odd rule, once per map size): the
        # centre of map pixel (j, i) is frame pixel ((j + 0.5) / sx, (i + 0.5) / sy)
        xs = ((np.arange(w) + 0.5) / sx + offset[0])[None, :]
        ys = ((np.arange(h) + 0.5) / sy + offset[1])[:, None]
        inside = np.zeros((h, w), bool)
        for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
            if y0 == y1:
                continue
            crosses = (ys >= min(y0, y1)) & (ys < max(y0, y1))
            x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
            inside ^= crosses & (xs < x_at)
        return inside

    def _count(self, seg, polys, offset, classes, ts, frame_seq, early, late) -> dict[tuple[str, str], float]:
        out = {}
        anchors_by_zone = []
        for zone, poly in zip(self.zones, polys):
            contour = poly.reshape(-1, 1, 2)
            found: dict[str, list[int | None]] = {c: [] for c in zone.classes}
            for inst in seg.instances:
                name = classes[inst.class_id] if inst.class_id < len(classes) else None
                if name not in found:
                    continue
                ax, ay = _anchor(inst.bbox, zone.anchor)
                if cv2.pointPolygonTest(contour, (ax + offset[0], ay + offset[1]), False) >= 0:
                    found[name].append(getattr(inst, "track_id", None))
            anchors_by_zone.append(found)
        for zone, found in zip(self.zones, anchors_by_zone):
            for cls in zone.classes:
                ids = found[cls]
                watch = self._watch[(zone.name, cls)]
                if any(t is not None for t in ids) or watch.tracks:
                    seen = {int(t) for t in ids if t is not None}
                    self._tracks(zone, cls, watch, seen, ts, frame_seq, early, late)
                    in_ids = tuple(sorted(t for t, tr in watch.tracks.items() if tr.inside))
                    watch.state.track_ids = in_ids
                    count = len(in_ids)
                else:
                    count = len(ids)
                    watch.state.track_ids = ()
                watch.state.count = count
                out[(zone.name, cls)] = float(count)
        return out

    def _tracks(self, zone: ZoneConfig, cls: str, watch: _Watch, seen: set[int], ts: float,
                frame_seq: int | None, early: list[ZoneEvent], late: list[ZoneEvent]) -> None:
        for tid in seen | set(watch.tracks):
            track = watch.tracks.setdefault(tid, _Track())
            if tid in seen:
                track.inside_run, track.outside_run = track.inside_run + 1, 0
                if not track.inside and track.inside_run >= zone.inertia:
                    track.inside = True
                    late.append(ZoneEvent(zone.name, cls, "enter", (tid,), frame_seq, ts, 1.0, zone.snapshot))
            else:
                track.inside_run, track.outside_run = 0, track.outside_run + 1
                if track.inside and track.outside_run >= zone.inertia:
                    track.inside = False
                    early.append(ZoneEvent(zone.name, cls, "leave", (tid,), frame_seq, ts, 0.0, zone.snapshot))
                if not track.inside and track.outside_run >= zone.inertia:
                    del watch.tracks[tid]  # forgotten: a later sighting starts afresh

    # --- zone-level state ---------------------------------------------------------------------------
    def _debounce(self, zone: ZoneConfig, cls: str, value: float, ts: float, frame_seq: int | None,
                  early: list[ZoneEvent], late: list[ZoneEvent]) -> None:
        watch = self._watch[(zone.name, cls)]
        state = watch.state
        counting = state.count is not None
        if not counting:
            state.area = value
        if state.occupied:
            flip = value < zone.min_count if counting else value < zone.area_off
        else:
            flip = value >= zone.min_count if counting else value >= zone.area_on
        if not flip:
            watch.pending_since = None
            return
        if watch.pending_since is None:
            watch.pending_since = ts
        if ts - watch.pending_since < zone.min_duration_s:
            return
        watch.pending_since = None
        state.occupied = not state.occupied
        state.since = ts
        kind: EventKind = "occupied" if state.occupied else "cleared"
        event = ZoneEvent(zone.name, cls, kind, state.track_ids, frame_seq, ts, round(value, 6), zone.snapshot)
        (late if state.occupied else early).append(event)
        log.info("zone %s: %s %s (%s)", zone.name, cls, kind, f"count {int(value)}" if counting
                 else f"area {value:.3f}")


__all__ = ["EventKind", "ZONE_NAME_PATTERN", "ZoneConfig", "ZoneEvent", "ZoneState", "ZoneTracker", "check_classes",
           "check_zones", "polygon_pixels"]
