"""Zones in the real loop (synthetic source, tiny real model): the stage, its gauges, outlines in the video."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_seg.config import parse_config
from edge_seg.errors import EdgeSegError
from edge_seg.loop.runner import build
from edge_seg.postprocess.zones import ZoneConfig
from edge_seg.view.zone_layer import COLOUR, ZoneLayer

SQUARE = [[40, 40], [200, 40], [200, 140], [40, 140]]


def test_the_loop_measures_zones_exports_gauges_and_draws_outlines(tiny_models, tmp_path):
    watched = ["class_0", "class_1"]  # the tiny model without a manifest: its classes are class_0 .. class_3
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": "synthetic://?seed=3&width=320&height=180"},
                           "pipeline": {"max_frames": 8}, "output": {"video": str(tmp_path / "o.avi")},
                           "preview": {"enabled": True, "port": 0},
                           "zones": [{"name": "yard", "points": SQUARE, "classes": watched}]})
    built = build(config)
    stats = built.pipeline.run()
    built.segmenter.close()
    assert stats.segmented == 8
    names = [stage.name for stage in built.pipeline.stages]
    assert names.index("metrics") < names.index("zones")
    exposition = built.metrics.exposition().decode()
    for cls in watched:
        assert f'edge_seg_zone_occupied{{class="{cls}",zone="yard"}}' in exposition
        assert f'edge_seg_zone_area_fraction{{class="{cls}",zone="yard"}}' in exposition
    cap = cv2.VideoCapture(str(tmp_path / "o.avi"))
    ok, image = cap.read()
    cap.release()
    assert ok
    preview = next(stage for stage in built.pipeline.stages if stage.name == "preview")
    listed = preview.stats_fn()["zones"]  # what the preview's /stats.json carries
    assert [z["name"] for z in listed] == ["yard"] and set(listed[0]["classes"]) == set(watched)
    assert all(0 <= c["area"] <= 1 and c["count"] is None for c in listed[0]["classes"].values())
    overlay = next(stage for stage in built.pipeline.stages if stage.name == "overlay")
    assert isinstance(overlay.zones, ZoneLayer)
    b, g, r = image[40, 60:180].astype(int).mean(axis=0)  # the zone's top edge: amber, smeared by MJPG's chroma
    assert g > 170 and r > 170 and b < 140, (b, g, r)


def test_a_zone_watching_a_class_the_model_lacks_fails_at_build(tiny_models):
    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "zones": [{"name": "yard", "points": SQUARE, "classes": ["unicorn"]}]})
    with pytest.raises(EdgeSegError, match="zone 'yard' watches 'unicorn'"):
        build(config)


def test_the_zone_layer_draws_outline_and_name_once_per_frame_size():
    layer = ZoneLayer([ZoneConfig(name="gate", points=[[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]],
                                  units="fractions", classes=["x"])])
    small = layer.draw(np.zeros((180, 320, 3), np.uint8))
    big = layer.draw(np.zeros((360, 640, 3), np.uint8))
    again = layer.draw(np.zeros((180, 320, 3), np.uint8))
    assert np.array_equal(small, again) and len(layer._cache) == 2
    assert tuple(small[135, 160]) == COLOUR and tuple(big[270, 320]) == COLOUR  # bottom edges (75 % of the height)
    assert tuple(small[90, 240]) == COLOUR and tuple(big[180, 480]) == COLOUR  # right edges
    assert not small[90, 160].any() and not small[10, 10].any()  # inside and outside the zone: untouched
    label = small[48:62, 80:110].astype(int)  # the name, in the zone colour on black, below the top-left corner
    assert (np.abs(label - np.array(COLOUR)).max(axis=2) < 40).sum() >= 5
