"""Palette PNG class maps: exact round trip, OpenCV view, broken files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_seg.errors import InputError
from edge_seg.maskio import palette_png, read_palette_png

PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))  # RGB
BGR = np.array(PALETTE, np.uint8)[:, ::-1]


def random_labels(seed: int = 0, shape: tuple[int, int] = (37, 53)) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, 4, shape).astype(np.uint8)
    labels[:3, :5] = 255  # ignore pixels past the palette
    return labels


def test_palette_png_round_trips_exactly(tmp_path):
    labels = random_labels()
    data = palette_png(labels, PALETTE)
    assert np.array_equal(read_palette_png(data), labels)
    path = tmp_path / "mask.png"
    path.write_bytes(data)
    decoded = read_palette_png(path)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, labels)


def test_palette_png_reads_in_opencv_as_palette_colours(tmp_path):
    labels = random_labels()
    path = tmp_path / "mask.png"
    path.write_bytes(palette_png(labels, PALETTE))
    lut = np.zeros((256, 3), np.uint8)
    lut[:4] = BGR
    for flag in (cv2.IMREAD_COLOR, cv2.IMREAD_UNCHANGED):  # UNCHANGED expands the palette too
        image = cv2.imread(str(path), flag)
        assert image.shape == (*labels.shape, 3)
        assert np.array_equal(image, lut[labels])


@pytest.mark.skipif(not hasattr(cv2, "IMWRITE_PNG_FILTER"), reason="OpenCV < 4.10 cannot pick PNG filters")
@pytest.mark.parametrize("name", ["NONE", "SUB", "UP", "AVG", "PAETH"])
def test_read_palette_png_undoes_every_row_filter(name):
    gray = (np.add.outer(np.arange(40), np.arange(70)) * 7 % 256).astype(np.uint8)
    gray[::3] = np.random.default_rng(2).integers(0, 256, (14, 70))
    flag = getattr(cv2, f"IMWRITE_PNG_FILTER_{name}")
    ok, data = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_FILTER, flag])
    assert ok
    assert np.array_equal(read_palette_png(data.tobytes()), gray)


def test_read_palette_png_rejects_broken_files(tmp_path):
    data = palette_png(random_labels(), PALETTE)
    with pytest.raises(InputError, match="cannot read"):
        read_palette_png(b"GIF89a" + data[6:])
    with pytest.raises(InputError, match="cannot read"):
        read_palette_png(data[:-30])
    damaged = bytearray(data)
    damaged[40] ^= 0xFF
    with pytest.raises(InputError, match="cannot read"):
        read_palette_png(bytes(damaged))
    with pytest.raises(InputError, match="cannot read"):
        read_palette_png(tmp_path / "missing.png")
    ok, rgb = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="mode RGB"):
        read_palette_png(rgb.tobytes())
