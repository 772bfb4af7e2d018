"""Tiling with the tiny real colour model: stitched probabilities, smoothed over time like untiled ones."""

from __future__ import annotations

import numpy as np
import pytest
import tflite_builders

from edge_seg import Segmenter
from edge_seg.config import SmoothingConfig
from edge_seg.loop.tiling import Tiler


def _tiled(tiler: Tiler, frame: np.ndarray):
    raw, transform, _ = tiler.run(frame)
    return tiler.decode(raw, transform, frame=frame)


@pytest.fixture
def bands():
    """A 256x192 frame of four colour bands: 4x3 tiles of 64x64 for the 32x32 model."""
    frame, truth = tflite_builders.colour_frame(256, 192)
    return frame, truth


def test_tiles_cover_the_frame_and_find_the_bands(tiny_models, bands):
    frame, truth = bands
    with Segmenter.create(model=tiny_models["colour_logits_float"]) as seg:
        tiler = Tiler(seg)
        assert len(tiler.tiles((256, 192))) > 4
        result = _tiled(tiler, frame)
    assert result.class_map.shape == truth.shape
    assert (result.class_map == truth).mean() > 0.95


def test_tiled_segmentation_is_smoothed_over_time(tiny_models, bands):
    stable, _ = bands
    flicker = stable.copy()
    flicker[:, :64] = tflite_builders.BGR["green"]  # the red band turns green for one frame
    model = tiny_models["colour_logits_float"]
    with Segmenter.create(model=model) as plain, \
            Segmenter.create(model=model, smoothing=SmoothingConfig(alpha=0.3, scene_cut=0.12)) as smooth:
        plain_tiler, smooth_tiler = Tiler(plain), Tiler(smooth)
        for _ in range(5):
            _tiled(smooth_tiler, stable)
        assert (_tiled(plain_tiler, flicker).class_map[:, 8:56] == 1).all()  # unsmoothed: green
        held = _tiled(smooth_tiler, flicker)
        assert (held.class_map[:, 8:56] == 0).all()  # smoothed: still red
        assert held.confidence_map[:, 2:14].max() < 0.8  # the average of red and green frames
        # the flicker changed the grey thumbnail by 0.07, an all-blue frame changes it by 0.17: a cut,
        # found from the frame the tiler passes on, shows at once
        cut = np.empty_like(stable)
        cut[:] = tflite_builders.BGR["blue"]
        assert (_tiled(smooth_tiler, cut).class_map == 2).mean() > 0.95
        assert smooth._smoother.ema.last_reset == "scene"


def test_tiled_segmentation_keeps_entropy_and_margin_maps(tiny_models, bands):
    frame, _ = bands
    frame[60:100, 100:140] = (0, 255, 255)  # yellow: red and green tie
    with Segmenter.create(model=tiny_models["colour_logits_float"], entropy=True, margin=True) as seg:
        tiler = Tiler(seg)
        raw, transform, _ = tiler.run(frame)
        result = tiler.decode(raw, transform)
    probs = transform.crop(raw[0])
    ordered = np.sort(probs, axis=-1)
    np.testing.assert_allclose(result.margin_map, ordered[..., -1] - ordered[..., -2], atol=1e-5)
    expected_entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(axis=-1) / np.log(4)
    np.testing.assert_allclose(result.entropy_map, expected_entropy, atol=1e-5)
    assert result.margin_map.shape == (96, 128)  # the mosaic: half the frame size
    assert result.margin_map[35:45, 55:65].max() < 0.01  # inside the yellow square
    assert result.margin_map[:, 2:28].min() > 0.7  # the red band: p1 - p2 = 0.74


def test_tiled_binary_model_keeps_hysteresis(tiny_models):
    def frame(red):
        image = np.zeros((160, 160, 3), np.uint8)
        image[:, :, 2] = red
        return image

    smoothing = SmoothingConfig(alpha=1.0, hysteresis_high=0.7, hysteresis_low=0.3)
    with Segmenter.create(model=tiny_models["binary_sigmoid_float"], smoothing=smoothing) as seg:
        tiler = Tiler(seg)
        assert len(tiler.tiles((160, 160))) > 1
        # sigmoid(8 * (r - 0.5)): r=230 -> 0.96 (on), r=128 -> 0.5 (between: keeps state), r=40 -> 0.03 (off)
        assert _tiled(tiler, frame(230)).class_map.min() == 1
        assert _tiled(tiler, frame(128)).class_map.min() == 1
        assert _tiled(tiler, frame(40)).class_map.max() == 0
        assert _tiled(tiler, frame(128)).class_map.max() == 0
