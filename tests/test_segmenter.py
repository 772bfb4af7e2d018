"""Segmenter end to end on tiny real TFLite models with known outputs."""

from __future__ import annotations

import numpy as np
import pytest
import tflite_builders
from conftest import write_manifest

from edge_seg import Segmenter
from edge_seg.errors import InputError


@pytest.mark.parametrize("name", ["colour_probs_uint8", "colour_logits_float", "colour_logits_int8"])
def test_segment_classifies_colour_bands(tiny_models, name):
    frame, truth = tflite_builders.colour_frame(64, 48)
    with Segmenter.create(model=tiny_models[name]) as seg:
        result = seg.segment(frame)
    assert result.class_map.shape == (48, 64) and result.class_map.dtype == np.uint8
    # band borders may blur by one model pixel after the resize; interiors must be exact
    agree = (result.class_map == truth).mean()
    assert agree > 0.9, agree
    for cls in range(4):
        cols = np.where(truth[0] == cls)[0]
        core = result.class_map[:, cols[2]:cols[-2]]
        assert (core == cls).all(), (cls, np.unique(core))
    assert result.confidence.shape == (48, 64)
    assert 0.0 <= result.confidence.min() and result.confidence.max() <= 1.0
    fractions = result.area_fractions
    assert list(fractions) == [f"class_{i}" for i in range(4)]  # no manifest: inferred names
    assert abs(sum(fractions.values()) - 1.0) < 1e-6
    assert all(abs(v - 0.25) < 0.1 for v in fractions.values())
    assert set(result.timings) == {"preprocess", "infer", "postprocess"}


def test_confidence_matches_softmax_of_known_logits(tiny_models):
    frame = np.full((32, 32, 3), (0, 0, 255), np.uint8)  # pure red: logits (4, 0, 0, 2)
    with Segmenter.create(model=tiny_models["colour_logits_float"], entropy=True) as seg:
        result = seg.segment(frame)
    logits = np.array([4.0, 0.0, 0.0, 2.0])
    probs = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(result.confidence, probs.max(), atol=1e-4)
    expected_entropy = -(probs * np.log(probs)).sum() / np.log(4)
    assert np.allclose(result.entropy_map, expected_entropy, atol=1e-4)


@pytest.mark.parametrize("name", ["binary_sigmoid_float", "binary_logits_uint8"])
def test_binary_output_thresholds_to_zero_one(tiny_models, name):
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, :40] = (0, 0, 230)  # red left half: foreground
    frame[:, 40:] = (200, 200, 10)  # little red: background
    with Segmenter.create(model=tiny_models[name]) as seg:
        assert seg.manifest.task == "binary"
        result = seg.segment(frame)
    assert set(np.unique(result.class_map)) == {0, 1}
    assert (result.class_map[:, :38] == 1).all() and (result.class_map[:, 42:] == 0).all()
    # sigmoid(8 * (230/255 - 0.5)) for the foreground
    expected = 1 / (1 + np.exp(-8 * (230 / 255 - 0.5)))
    assert abs(float(result.confidence_map[5, 2]) - expected) < 0.02


def test_letterbox_crops_padding_from_the_result(tiny_models, tmp_path):
    manifest = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "lb", **{"input.resize": "letterbox"})
    frame, truth = tflite_builders.colour_frame(128, 32)  # 4:1, so model rows 12..20 hold the frame
    with Segmenter.create(model=manifest.parent) as seg:
        result = seg.segment(frame)
    assert result.label_map.shape == (8, 32)
    assert (result.class_map == truth).mean() > 0.9
    # padding is black = class "dark"; it must not be counted
    assert result.area_fractions["dark"] < 0.35


def test_segment_rejects_a_non_image(tiny_models):
    with Segmenter.create(model=tiny_models["colour_probs_uint8"]) as seg:
        with pytest.raises(InputError):
            seg.segment(np.zeros((10, 10), np.uint8))


def test_temporal_smoothing_holds_a_one_frame_flicker(tiny_models):
    from edge_seg.config import SmoothingConfig

    stable, _ = tflite_builders.colour_frame(64, 48)
    flicker = stable.copy()
    flicker[:, :16] = tflite_builders.BGR["green"]  # the red band turns green for one frame
    plain = Segmenter.create(model=tiny_models["colour_logits_float"])
    smooth = Segmenter.create(model=tiny_models["colour_logits_float"], smoothing=SmoothingConfig(alpha=0.3))
    for _ in range(5):
        smooth.segment(stable)
    assert (plain.segment(flicker).class_map[:, 2:14] == 1).all()  # unsmoothed: green
    held = smooth.segment(flicker).class_map[:, 2:14]
    assert (held == 0).all()  # smoothed: still red
    cut = np.full_like(stable, 255)
    cut[:] = tflite_builders.BGR["blue"]  # a scene cut resets: the new scene shows at once
    assert (smooth.segment(cut).class_map == 2).mean() > 0.95
    plain.close()
    smooth.close()


def test_binary_smoothing_uses_hysteresis(tiny_models):
    from edge_seg.config import SmoothingConfig

    def frame(red):
        image = np.zeros((32, 32, 3), np.uint8)
        image[:, :, 2] = red
        return image

    seg = Segmenter.create(model=tiny_models["binary_sigmoid_float"],
                           smoothing=SmoothingConfig(alpha=1.0, hysteresis_high=0.7, hysteresis_low=0.3))
    # sigmoid(8 * (r - 0.5)): r=230 -> 0.96 (on), r=128 -> 0.5 (between: keeps state), r=40 -> 0.03 (off)
    assert seg.segment(frame(230)).class_map.min() == 1
    assert seg.segment(frame(128)).class_map.min() == 1
    assert seg.segment(frame(40)).class_map.max() == 0
    assert seg.segment(frame(128)).class_map.max() == 0
    seg.close()
