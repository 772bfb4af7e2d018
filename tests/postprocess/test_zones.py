"""Zones: config checks, instance counting by track with inertia, area fractions with hysteresis and duration."""

from __future__ import annotations

import numpy as np
import pytest
from zone_clips import CLASSES, EXPECTED, LENGTH, MODEL, PALETTE, ZONES, segmentation_at

from edge_seg.config import ConfigError, parse_config
from edge_seg.errors import EdgeSegError
from edge_seg.postprocess.zones import ZoneConfig, ZoneTracker
from edge_seg.segmentation import Segmentation

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]


def _events(tracker: ZoneTracker, seqs) -> list[tuple]:
    out = []
    for seq in seqs:
        for e in tracker.update(segmentation_at(seq), ts=seq / 10, frame_seq=seq):
            out.append((e.frame_seq, e.zone, e.class_name, e.kind, list(e.track_ids)))
    return out


def test_the_scripted_clip_gives_exactly_the_expected_events():
    tracker = ZoneTracker(ZONES)
    assert _events(tracker, range(LENGTH)) == EXPECTED
    assert not any(s.occupied for s in tracker.states()) and all(s.count == 0 for s in tracker.states())


def test_counts_and_track_ids_while_the_person_and_the_car_are_in_the_right_zone():
    tracker = ZoneTracker(ZONES)
    _events(tracker, range(17))
    states = {(s.zone, s.class_name): s for s in tracker.states()}
    assert states[("right", "person")].count == 1 and states[("right", "person")].track_ids == (1,)
    assert states[("right", "car")].occupied and states[("right", "car")].track_ids == (2,)
    assert states[("left", "person")].count == 0 and not states[("left", "person")].occupied


def test_without_track_ids_the_count_is_per_frame_and_there_are_no_enter_or_leave_events():
    from edge_seg.segmentation import Instance

    tracker = ZoneTracker([ZoneConfig(name="z", points=SQUARE, classes=["person"])])
    kinds = []
    for seq, inside in enumerate([0, 2, 2, 0]):
        insts = tuple(Instance(0, 0.9, (40, 10, 10, 40), np.ones((40, 10), bool), (40, 10)) for _ in range(inside))
        seg = Segmentation(np.full((10, 10), 255, np.uint8), np.ones((10, 10), np.float32), (100, 100), CLASSES,
                           PALETTE, MODEL, instances=insts)
        kinds += [e.kind for e in tracker.update(seg, ts=float(seq))]
        assert tracker.states()[0].count == inside
    assert kinds == ["occupied", "cleared"]


def _semantic(share: float, cls: int = 1) -> Segmentation:
    """A 100x100 frame (50x50 map) whose left ``share`` of columns is class ``cls``."""
    labels = np.zeros((50, 50), np.uint8)
    labels[:, : int(round(50 * share))] = cls
    return Segmentation(labels, np.ones((50, 50), np.float32), (100, 100), ("background", "water", "sand"),
                        PALETTE + ((1, 2, 3),), MODEL)


def test_area_fraction_with_hysteresis_and_a_minimum_duration():
    zone = ZoneConfig(name="pool", points=[[0, 0], [50, 0], [50, 100], [0, 100]], classes=["water"], area_on=0.5,
                      area_off=0.2, min_duration_s=1.0)
    tracker = ZoneTracker([zone])
    script = [(0.0, 0.0), (1.0, 0.3), (2.0, 0.3), (3.0, 0.3), (4.0, 0.04), (4.5, 0.08), (5.0, 0.4), (6.0, 0.04),
              (6.5, 0.04), (7.0, 0.04)]  # (ts, share of the frame): the zone is the left half, so share x 2
    got = []
    for ts, share in script:
        got += [(ts, e.kind, e.value) for e in tracker.update(_semantic(share), ts=ts)]
        assert tracker.states()[0].area == pytest.approx(min(share * 2, 1.0), abs=1e-6)
    # 0.6 from ts 1, held 1 s at ts 2; below 0.2 at 4 and 4.5 (not 1 s), 0.8 at 5 resets it; below from 6, held at 7
    assert got == [(2.0, "occupied", 0.6), (7.0, "cleared", 0.08)]


def test_zones_in_fractions_follow_the_frame_size_and_a_roi_offsets_the_map():
    zone = ZoneConfig(name="top", points=[[0, 0], [1, 0], [1, 0.5], [0, 0.5]], units="fractions", classes=["water"])
    tracker = ZoneTracker([zone])
    labels = np.zeros((50, 50), np.uint8)
    labels[:25] = 1  # the map's top half is water
    seg = Segmentation(labels, np.ones((50, 50), np.float32), (100, 100), ("background", "water"), PALETTE, MODEL)
    tracker.update(seg, ts=0.0, roi=(0, 0, 100, 100), frame_size=(100, 200))  # the ROI is the frame's top half
    assert tracker.states()[0].area == pytest.approx(0.5, abs=0.03)  # the zone covers the whole ROI


def test_a_zone_watching_a_class_the_model_lacks_names_it():
    tracker = ZoneTracker([ZoneConfig(name="z", points=SQUARE, classes=["boat"])])
    with pytest.raises(EdgeSegError, match="zone 'z' watches 'boat'.*its classes: background, water"):
        tracker.update(_semantic(0.5), ts=0.0)


@pytest.mark.parametrize("zone, message", [
    ({"name": "a b", "points": SQUARE, "classes": ["x"]}, "zones.0.name: string should match pattern"),
    ({"name": "a", "points": SQUARE[:2], "classes": ["x"]}, "zones.0.points: list should have at least 3"),
    ({"name": "a", "points": [[0, 0], [2, 0], [1, 1]], "units": "fractions", "classes": ["x"]},
     "zones.0.points: with units: fractions every coordinate is in [0, 1] (or set units: pixels), got [2.0, 0.0]"),
    ({"name": "a", "points": SQUARE, "classes": ["x"], "area_on": 0.1, "area_off": 0.3},
     "zones.0.area_off: must not exceed area_on (0.1), got 0.3"),
    ({"name": "a", "points": SQUARE, "classes": ["x"], "colour": "red"}, "zones.0.colour: unknown field"),
    ({"name": "a", "points": SQUARE, "classes": ["x"], "min_duration_s": float("inf")}, "zones.0.min_duration_s: "
     "input should be a finite number"),
])
def test_zone_config_errors_are_one_line_naming_the_field(zone, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"zones": [zone]})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_zone_names_are_unique():
    zone = {"name": "a", "points": SQUARE, "classes": ["x"]}
    with pytest.raises(ConfigError, match="zone name 'a' is used twice"):
        parse_config({"zones": [zone, zone]})
    assert parse_config({"zones": [zone]}).zones[0].units == "pixels"
