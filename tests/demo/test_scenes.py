"""edge_seg.demo.scenes: deterministic synthetic scenes and clips with ground truth."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from edge_seg.demo.clips import render_clip
from edge_seg.demo.scenes import CLASSES, PALETTE, Scene, render_scene, write_dataset


def test_classes_and_palette_describe_background_plus_three_objects():
    assert len(CLASSES) == 4 and CLASSES[0] == "background"
    assert len(PALETTE) == len(CLASSES) and PALETTE[0] == (0, 0, 0)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)


def test_scene_has_bgr_uint8_image_and_class_id_mask_of_the_requested_size():
    scene = render_scene(3, size=(200, 120))
    assert isinstance(scene, Scene)
    assert scene.image.shape == (120, 200, 3) and scene.image.dtype == np.uint8
    assert scene.mask.shape == (120, 200) and scene.mask.dtype == np.uint8
    assert int(scene.mask.max()) < len(CLASSES)


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    a, b, c = render_scene(42), render_scene(42), render_scene(43)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_every_class_appears_over_a_small_set_with_background_dominant():
    masks = np.stack([render_scene(seed).mask for seed in range(40)])
    counts = np.bincount(masks.ravel(), minlength=len(CLASSES))
    assert (counts > 0).all()
    fractions = counts / counts.sum()
    assert fractions[0] > 0.5
    assert all(f > 0.01 for f in fractions[1:])


def test_objects_have_learnable_sizes_and_counts():
    for seed in range(30):
        mask = render_scene(seed).mask
        objects = mask > 0
        assert objects.mean() < 0.6
        n, _ = cv2.connectedComponents(objects.astype(np.uint8))
        assert n - 1 <= 8  # 1-5 objects; overlap can split one into a few pieces


def test_image_is_not_trivially_separable_by_colour():
    """Objects and background draw colours from the same range: the class must come from shape/texture."""
    scenes = [render_scene(seed) for seed in range(20)]
    for cls in range(1, len(CLASSES)):
        means = [s.image[s.mask == cls].mean(axis=0) for s in scenes if (s.mask == cls).sum() > 50]
        assert np.ptp(np.array(means), axis=0).min() > 40


def test_render_scene_rejects_a_tiny_size():
    with pytest.raises(ValueError, match="at least 16x16"):
        render_scene(0, size=(8, 8))


def test_write_dataset_layout_is_readable_by_opencv(tmp_path):
    out = write_dataset(tmp_path / "ds", 3, seed=7, size=(64, 48))
    assert out == tmp_path / "ds"
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == names
    for i, name in enumerate(names):
        image = cv2.imread(str(out / "images" / name), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(out / "masks" / name), cv2.IMREAD_UNCHANGED)
        expected = render_scene(7 + i, size=(64, 48))
        assert np.array_equal(image, expected.image)
        assert mask.dtype == np.uint8 and mask.ndim == 2
        assert np.array_equal(mask, expected.mask)


def test_clip_is_deterministic_and_has_the_requested_length_and_size():
    a = list(render_clip(5, 6, size=(160, 90)))
    b = list(render_clip(5, 6, size=(160, 90)))
    assert len(a) == 6
    assert all(f.image.shape == (90, 160, 3) and f.mask.shape == (90, 160) for f in a)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) for x, y in zip(a, b))


def test_clip_frames_differ_but_stay_similar():
    frames = list(render_clip(11, 30, size=(320, 180)))
    for prev, cur in itertools.pairwise(frames):
        diff = np.abs(cur.image.astype(np.int16) - prev.image.astype(np.int16)).mean()
        assert 0 < diff < 20
        changed = (cur.mask != prev.mask).mean()
        assert changed < 0.05
    assert any((f.mask != frames[0].mask).any() for f in frames[1:])  # objects actually move


def test_clip_objects_move_smoothly():
    frames = list(render_clip(2, 40, size=(320, 180)))
    centroids = []
    for frame in frames:
        ys, xs = np.nonzero(frame.mask)
        centroids.append((xs.mean(), ys.mean()) if xs.size else (np.nan, np.nan))
    steps = np.linalg.norm(np.diff(np.array(centroids), axis=0), axis=1)
    assert np.nanmax(steps) < 15  # pixels per frame: no jumps
    assert np.nansum(steps) > 5  # but it does move
