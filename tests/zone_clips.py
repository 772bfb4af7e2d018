"""A scripted clip for the zone tests: two zones, a person walking from one into the other, a car, a bystander.

Frames are 640x360, ``ts`` = ``seq`` / 10. Zones (pixels): ``left`` x 0..300 and ``right`` x 340..640, both
y 150..360. Instances carry ``track_id`` (what the tracker gives them); ``EXPECTED`` is the event
sequence ``ZoneTracker`` must produce with ``inertia: 2`` (see ``edge_seg.postprocess.zones``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from edge_seg.postprocess.zones import ZoneConfig
from edge_seg.segmentation import Instance, ModelIdentity, Segmentation

FRAME = (640, 360)
CLASSES = ("person", "car")
PALETTE = ((220, 20, 60), (0, 0, 142))
MODEL = ModelIdentity("zones-test", "1.0.0", "cd" * 32)
ZONES = [ZoneConfig(name="left", points=[[0, 150], [300, 150], [300, 360], [0, 360]], classes=["person", "car"],
                    inertia=2),
         ZoneConfig(name="right", points=[[340 / 640, 150 / 360], [1, 150 / 360], [1, 1], [340 / 640, 1]],
                    units="fractions", classes=["person", "car"], inertia=2)]
LENGTH = 28

if "track_id" in {f.name for f in fields(Instance)}:  # the tracker's field, once it is there
    Tracked = Instance
else:
    @dataclass(frozen=True, eq=False)
    class Tracked(Instance):  # type: ignore[no-redef]
        track_id: int | None = None


def _box(anchor_x: float, anchor_y: float, w: float, h: float, class_id: int, track_id: int) -> Instance:
    """An instance whose box's bottom centre is (anchor_x, anchor_y)."""
    x, y = anchor_x - w / 2, anchor_y - h
    return Tracked(class_id=class_id, score=0.9, bbox=(x, y, w, h), mask=np.ones((int(h), int(w)), bool),
                   origin=(int(x), int(y)), track_id=track_id)


def instances_at(seq: int) -> list[Instance]:
    """The instances of frame ``seq`` (see the module docstring for the script)."""
    out = []
    if seq in (0, 1):
        out.append(_box(150, 100, 40, 90, 0, 1))  # the person, above both zones
    elif 2 <= seq <= 9 and seq != 6:  # frame 6: a missed detection, shorter than the inertia: no leave
        out.append(_box(150, 300, 40, 90, 0, 1))
    elif seq in (10, 11):
        out.append(_box(320, 300, 40, 90, 0, 1))  # in the gap between the zones
    elif 12 <= seq <= 19:
        out.append(_box(500, 300, 40, 90, 0, 1))
    if 14 <= seq <= 23:
        out.append(_box(450, 340, 120, 60, 1, 2))  # the car, in the right zone
    out.append(_box(60, 140, 40, 120, 0, 3))  # a bystander: box overlaps 'left', feet (anchor) outside it
    return out


def segmentation_at(seq: int) -> Segmentation:
    labels = np.full((36, 64), 255, np.uint8)
    return Segmentation(labels, np.ones((36, 64), np.float32), FRAME, CLASSES, PALETTE, MODEL,
                        instances=tuple(instances_at(seq)))


# (frame_seq, zone, class, kind, track_ids)
EXPECTED = [
    (3, "left", "person", "enter", [1]), (3, "left", "person", "occupied", [1]),
    (11, "left", "person", "leave", [1]), (11, "left", "person", "cleared", []),
    (13, "right", "person", "enter", [1]), (13, "right", "person", "occupied", [1]),
    (15, "right", "car", "enter", [2]), (15, "right", "car", "occupied", [2]),
    (21, "right", "person", "leave", [1]), (21, "right", "person", "cleared", []),
    (25, "right", "car", "leave", [2]), (25, "right", "car", "cleared", []),
]
