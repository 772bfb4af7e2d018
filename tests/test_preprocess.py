"""Preprocessing: the LUT path equals the direct normalise-and-quantise formula."""

from __future__ import annotations

import numpy as np
import pytest

from edge_seg.manifest import InputSpec
from edge_seg.preprocess import Preprocessor, letterbox_geometry
from edge_seg.tensors import TensorSpec


def _frame(seed=0, w=50, h=30):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mean, std", [([0], [255]), ([127.5], [127.5]), ([123.7, 116.3, 103.5], [58.4, 57.1, 57.4])])
def test_float_input_is_normalised_per_channel(mean, std):
    spec = InputSpec(width=50, height=30, mean=mean, std=std, color_order="rgb")
    pre = Preprocessor(spec, TensorSpec("in", (1, 30, 50, 3), np.dtype(np.float32)))
    frame = _frame()
    batch, transform = pre(frame)
    expected = (frame[..., ::-1].astype(np.float64) - np.array(mean)) / np.array(std)
    assert batch.dtype == np.float32 and batch.shape == (1, 30, 50, 3)
    assert np.allclose(batch[0], expected, atol=1e-5)
    assert transform.content == (0, 0, 50, 30)


@pytest.mark.parametrize("dtype, scale, zp", [(np.uint8, 1 / 255, 0), (np.int8, 1 / 255, -128),
                                              (np.int8, 2 / 255, 0), (np.uint8, 0.02, 10)])
def test_quantised_input_matches_formula(dtype, scale, zp):
    spec = InputSpec(width=50, height=30, dtype=np.dtype(dtype).name, color_order="bgr")
    pre = Preprocessor(spec, TensorSpec("in", (1, 30, 50, 3), np.dtype(dtype), scale, zp))
    frame = _frame(1)
    batch, _ = pre(frame)
    info = np.iinfo(dtype)
    expected = np.clip(np.round(frame / 255.0 / scale + zp), info.min, info.max).astype(dtype)
    assert batch.dtype == dtype
    assert np.array_equal(batch[0], expected)


def test_letterbox_keeps_aspect_and_pads():
    assert letterbox_geometry((1280, 720), (256, 256)) == (0, 56, 256, 144)
    spec = InputSpec(width=64, height=64, resize="letterbox", dtype="uint8")
    pre = Preprocessor(spec, TensorSpec("in", (1, 64, 64, 3), np.dtype(np.uint8), 1 / 255, 0))
    batch, transform = pre(np.full((32, 128, 3), 200, np.uint8))
    assert transform.content == (0, 24, 64, 16)
    assert (batch[0, :24] == 0).all() and (batch[0, 24:40] == 200).all() and (batch[0, 40:] == 0).all()
    assert transform.crop(np.zeros((64, 64))).shape == (16, 64)
    assert transform.crop(np.zeros((32, 32))).shape == (8, 32)  # output at half resolution
