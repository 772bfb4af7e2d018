"""Temporal smoothing: EMA against a NumPy reference, scene-cut resets, hysteresis states."""

from __future__ import annotations

import numpy as np
import pytest

from edge_seg.postprocess.smoothing import BinaryHysteresis, ProbabilityEMA, scene_thumbnail


def _probs(rng: np.random.Generator, shape=(24, 32, 5)) -> np.ndarray:
    """Random probabilities around a fixed class layout, so the class mass barely moves."""
    base = np.linspace(0.5, 1.5, shape[-1], dtype=np.float32)
    raw = base + 0.2 * rng.random(shape, dtype=np.float32)
    return (raw / raw.sum(axis=-1, keepdims=True)).astype(np.float32)


def test_ema_matches_the_numpy_recurrence():
    rng = np.random.default_rng(1)
    ema = ProbabilityEMA(alpha=0.3)
    thumb = np.full((32, 32), 100, np.uint8)
    expected = None
    for _ in range(8):
        probs = _probs(rng)
        out = ema.update(probs, thumb)
        expected = probs if expected is None else 0.3 * probs + 0.7 * expected
        np.testing.assert_allclose(out, expected, atol=1e-6)
        assert out.dtype == np.float32 and out.shape == probs.shape
    assert ema.resets == 1 and ema.last_reset == "start"


def test_ema_reuses_its_buffer_and_returns_it_read_only():
    rng = np.random.default_rng(2)
    ema = ProbabilityEMA(alpha=0.5)
    first = ema.update(_probs(rng))
    second = ema.update(_probs(rng))
    assert np.shares_memory(first, second)
    with pytest.raises(ValueError):
        second[0, 0, 0] = 1.0


def test_ema_accepts_raw_uint8_probabilities():
    ema = ProbabilityEMA(alpha=0.25)
    a = np.full((4, 4, 3), (200, 40, 15), np.uint8)
    b = np.full((4, 4, 3), (180, 60, 15), np.uint8)
    ema.update(a)
    out = ema.update(b)
    np.testing.assert_allclose(out[0, 0], 0.25 * b[0, 0] + 0.75 * a[0, 0].astype(np.float32), atol=1e-4)


def test_ema_resets_on_a_scene_cut_in_the_thumbnail():
    rng = np.random.default_rng(3)
    ema = ProbabilityEMA(alpha=0.5, scene_cut=0.35)
    dark, bright = np.full((32, 32), 20, np.uint8), np.full((32, 32), 220, np.uint8)
    ema.update(_probs(rng), dark)
    ema.update(_probs(rng), dark + 30)  # small change: smoothing goes on
    assert ema.resets == 1
    probs = _probs(rng)
    out = ema.update(probs, bright)  # mean difference ~0.67 > 0.35
    np.testing.assert_array_equal(out, probs)
    assert ema.resets == 2 and ema.last_reset == "scene"


def test_ema_resets_when_the_class_distribution_jumps():
    ema = ProbabilityEMA(alpha=0.5, scene_cut=None, distribution_cut=0.5)
    mostly_a = np.zeros((16, 16, 3), np.float32)
    mostly_a[..., 0] = 0.9
    mostly_a[..., 1:] = 0.05
    mostly_c = mostly_a[..., ::-1].copy()
    ema.update(mostly_a)
    out = ema.update(mostly_c)  # total variation 0.85
    np.testing.assert_array_equal(out, mostly_c)
    assert ema.last_reset == "distribution"
    ema_off = ProbabilityEMA(alpha=0.5, scene_cut=None, distribution_cut=None)
    ema_off.update(mostly_a)
    np.testing.assert_allclose(ema_off.update(mostly_c), 0.5 * mostly_a + 0.5 * mostly_c, atol=1e-6)


def test_ema_resets_when_the_shape_changes():
    rng = np.random.default_rng(4)
    ema = ProbabilityEMA(alpha=0.5)
    ema.update(_probs(rng, (8, 8, 4)))
    probs = _probs(rng, (16, 8, 4))
    np.testing.assert_array_equal(ema.update(probs), probs)
    assert ema.last_reset == "shape"
    ema.reset()
    other = _probs(rng, (16, 8, 4))
    np.testing.assert_array_equal(ema.update(other), other)


def test_ema_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ProbabilityEMA(alpha=0.0)
    with pytest.raises(ValueError):
        ProbabilityEMA(scene_cut=1.5)
    with pytest.raises(ValueError):
        ProbabilityEMA().update(np.zeros((4, 4), np.float32))


def test_scene_thumbnail_is_small_grey_and_follows_brightness():
    frame = np.full((720, 1280, 3), (10, 200, 30), np.uint8)
    thumb = scene_thumbnail(frame)
    assert thumb.shape == (32, 32) and thumb.dtype == np.uint8
    grey = int(round(0.114 * 10 + 0.587 * 200 + 0.299 * 30))
    assert abs(int(thumb.mean()) - grey) <= 1
    assert scene_thumbnail(np.zeros((20, 30), np.uint8)).shape == (32, 32)


def test_hysteresis_keeps_state_between_thresholds():
    hyst = BinaryHysteresis(high=0.6, low=0.4)
    seq = [0.3, 0.5, 0.65, 0.5, 0.45, 0.39, 0.5, 0.61]
    expected = [0, 0, 1, 1, 1, 0, 0, 1]
    got = [int(hyst.update(np.full((2, 3), p, np.float32))[0, 0]) for p in seq]
    assert got == expected


def test_hysteresis_first_frame_uses_the_midpoint_and_pixels_are_independent():
    hyst = BinaryHysteresis(high=0.7, low=0.3)
    first = hyst.update(np.array([[0.2, 0.45, 0.55, 0.9]], np.float32))
    np.testing.assert_array_equal(first, [[0, 0, 1, 1]])
    assert first.dtype == np.uint8
    second = hyst.update(np.array([[0.5, 0.5, 0.5, 0.1]], np.float32))
    np.testing.assert_array_equal(second, [[0, 0, 1, 0]])


def test_hysteresis_resets_on_shape_change():
    hyst = BinaryHysteresis()
    hyst.update(np.full((2, 2), 0.9, np.float32))
    out = hyst.update(np.full((3, 2), 0.45, np.float32))  # in between, but no history for this shape
    np.testing.assert_array_equal(out, np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError):
        BinaryHysteresis(high=0.3, low=0.6)
