"""Smooth edges at frame size: bilinear upsampling of uint8 probabilities, then argmax/threshold.

The acceptance check (issue 16, "Boundary quality"): at 1280x720, boundary IoU (d = 3 px) against
a float reference (the model's probabilities as float32, upsampled bilinearly by OpenCV's float
path, then argmax/threshold) is >= 0.95 for the bundled semantic model on held-out synthetic frames
and for a real (uint8-quantised, 256x256) binary TFLite model; the nearest path is reported beside
it (run with ``-s`` to see the numbers).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tflite_builders
from boundary_metrics import boundary_iou, boundary_region, mean_boundary_iou

from edge_seg.config import parse_config
from edge_seg.demo.scenes import render_scene
from edge_seg.errors import InputError
from edge_seg.postprocess import upsample
from edge_seg.postprocess.upsample import bilinear, binary_threshold, binary_uint8, upsample_labels
from edge_seg.segmenter import Segmenter

FRAME = (1280, 720)
HELD_OUT = range(10**6, 10**6 + 10)  # scene seeds far from any used in training


# ------------------------------------------------------------------------------------ the metric itself
def _square(top_left: tuple[int, int], side: int, shape=(60, 60)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    y, x = top_left
    mask[y:y + side, x:x + side] = True
    return mask


def test_boundary_region_is_the_band_inside_the_contour():
    region = boundary_region(_square((10, 10), 20), d=3)
    assert region.sum() == 20 * 20 - 14 * 14  # the 3-px ring
    assert not region[13:27, 13:27].any() and region[10, 10] and region[29, 29]
    # the image border counts as contour (the authors' padding)
    assert boundary_region(np.ones((10, 10), bool), d=3).sum() == 100 - 4 * 4


def test_boundary_iou_on_known_cases():
    a = _square((10, 10), 20)
    assert boundary_iou(a, a) == 1.0
    assert boundary_iou(a, _square((40, 40), 15)) == 0.0
    # shifted by one column: rings meet in 380 - 210 = 170 px of 204 + 204 - 170 = 238
    shifted = np.roll(a, 1, axis=1)
    assert boundary_iou(a, shifted, d=3) == pytest.approx(170 / 238)
    # 6x6 squares are boundary all through at d = 3: boundary IoU is the mask IoU (24 / 48)
    assert boundary_iou(_square((10, 10), 6), _square((10, 12), 6), d=3) == pytest.approx(0.5)
    mean, per_class = mean_boundary_iou([(a.astype(np.uint8), shifted.astype(np.uint8))], 2, classes=[1])
    assert per_class == {1: pytest.approx(170 / 238)} and mean == pytest.approx(170 / 238)


# ------------------------------------------------------------------------------------ the upsampling
@pytest.mark.parametrize("channels", [2, 3, 4, 6])
def test_upsample_labels_is_the_first_argmax_of_the_bilinear_planes(channels):
    rng = np.random.default_rng(channels)
    probs = rng.integers(0, 256, (24, 32, channels), dtype=np.uint8)
    probs[3, 4] = 200  # ties: the first class wins, as in np.argmax
    got = upsample_labels(probs, (100, 75))
    planes = np.stack([bilinear(probs[..., c], (100, 75)) for c in range(channels)], axis=-1)
    assert got.dtype == np.uint8 and got.shape == (75, 100)
    assert np.array_equal(got, planes.argmax(axis=-1))
    assert got is not upsample_labels(probs, (100, 75))  # each call returns its own array (no shared buffer)


def _blobs(shape: tuple[int, int], channels: int, seed: int) -> np.ndarray:
    """uint8 probabilities (h, w, C) of a few smooth regions: most model pixels are far from an edge."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 5, channels)).astype(np.float32)
    smooth = cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC).reshape(*shape, channels)
    smooth = np.exp(12.0 * smooth)
    return np.clip(255.0 * smooth / smooth.sum(axis=-1, keepdims=True) + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("channels", "size"), [(2, (1280, 720)), (4, (1280, 720)), (4, (333, 197)), (6, (641, 479))])
def test_edge_only_interpolation_matches_every_pixel_interpolated(channels, size):
    """Only the frame blocks of model pixels next to another label are interpolated; elsewhere the
    nearest label is kept, which is what the bilinear argmax gives there."""
    probs = _blobs((96, 120), channels, seed=channels)
    labels = probs.argmax(axis=-1).astype(np.uint8)
    share = np.count_nonzero(upsample._edge_pixels(labels)) / labels.size
    assert 0.0 < share <= upsample.EDGE_SHARE_UP_TO  # the edge-only path is the one taken
    got = upsample_labels(probs, size)
    full = upsample._full(probs, size)
    nearest = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    assert (got == full).mean() >= 0.9999
    assert not np.array_equal(got, nearest)  # the edges were interpolated
    mean, _ = mean_boundary_iou([(full, got)], channels, d=3)
    assert mean >= 0.999


def test_edge_only_interpolation_without_edges_is_the_nearest_resize():
    probs = np.zeros((40, 50, 3), np.uint8)
    probs[..., 2] = 200
    got = upsample_labels(probs, (640, 360))
    assert got.shape == (360, 640) and (got == 2).all()
    probs[5:20, 7:31, 1] = 255  # one rectangle of class 1: its border rows and columns are the edge pixels
    labels = probs.argmax(axis=-1).astype(np.uint8)
    for size in [(640, 360), (1280, 720), (333, 197), (50, 40)]:
        got = upsample_labels(probs, size)
        assert np.array_equal(got, upsample._full(probs, size))
        nearest = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        rows = np.minimum(np.floor(np.arange(size[1]) * (40 / size[1])), 39).astype(int)
        cols = np.minimum(np.floor(np.arange(size[0]) * (50 / size[0])), 49).astype(int)
        far = ~upsample._edge_pixels(labels).astype(bool)[rows][:, cols]
        assert np.array_equal(got[far], nearest[far])


def test_many_edges_interpolate_the_whole_frame():
    probs = np.random.default_rng(3).integers(0, 256, (24, 32, 4), dtype=np.uint8)  # noise: edges everywhere
    labels = probs.argmax(axis=-1).astype(np.uint8)
    assert np.count_nonzero(upsample._edge_pixels(labels)) > upsample.EDGE_SHARE_UP_TO * labels.size
    assert np.array_equal(upsample_labels(probs, (100, 75)), upsample._full(probs, (100, 75)))
    # a frame smaller than the model: nearest may skip model pixels, so every pixel is interpolated
    assert np.array_equal(upsample_labels(probs, (20, 15)), upsample._full(probs, (20, 15)))


@pytest.mark.parametrize("size", [(1280, 720), (333, 197), (32, 24)])
def test_bilinear_is_within_one_step_of_cv2_resize(size):
    """The warpAffine upsampling has cv2.resize(INTER_LINEAR)'s geometry, borders included."""
    probs = np.random.default_rng(7).integers(0, 256, (48, 64, 4), dtype=np.uint8)
    got = bilinear(probs, size).astype(int)
    want = cv2.resize(probs, size, interpolation=cv2.INTER_LINEAR).astype(int)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1 and np.abs(got - want).mean() < 0.5
    moved = cv2.resize(probs[:, 1:], size, interpolation=cv2.INTER_LINEAR).astype(int)  # off by one model pixel
    assert np.abs(moved - want).mean() > 5 * np.abs(got - want).mean()


def test_binary_planes_keep_the_model_labels_at_the_model_pixels():
    prob = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    labels = (prob >= 0.3).astype(np.uint8)  # e.g. hysteresis: not the 0.5 threshold
    threshold = binary_threshold(0.5)
    u8 = binary_uint8(prob, labels, threshold)
    assert threshold == 128 and u8.shape == (8, 8, 1)
    assert np.array_equal(upsample_labels(u8, (8, 8), threshold), labels)
    big = upsample_labels(u8, (24, 24), threshold)  # 3x: frame pixels 1, 4, 7, ... sit on model pixel centres
    assert np.array_equal(big[1::3, 1::3], labels)
    assert not np.array_equal(big, cv2.resize(labels, (24, 24), interpolation=cv2.INTER_NEAREST))  # edges moved


# ------------------------------------------------------------------------------------ options
def test_nearest_upsample_keeps_the_label_map_resize():
    frame = render_scene(10**6, FRAME).image
    with Segmenter.create(upsample="nearest") as seg:
        result = seg.segment(frame)
    assert result.prob_map is None
    assert np.array_equal(result.class_map, cv2.resize(result.label_map, FRAME, interpolation=cv2.INTER_NEAREST))
    with Segmenter.create() as seg:
        smooth = seg.segment(frame)
    assert smooth.prob_map is not None and smooth.prob_map.dtype == np.uint8
    assert np.array_equal(smooth.nearest_class_map, result.class_map)
    assert not np.array_equal(smooth.class_map, result.class_map)


def test_unknown_upsample_mode_is_refused():
    with pytest.raises(InputError, match="upsample must be one of bilinear, nearest, got 'cubic'"):
        Segmenter.create(upsample="cubic")
    assert parse_config({"overlay": {"upsample": "nearest"}}).overlay.upsample == "nearest"
    assert parse_config({}).overlay.upsample == "bilinear"
    with pytest.raises(Exception, match="overlay.upsample"):
        parse_config({"overlay": {"upsample": "cubic"}})


# ------------------------------------------------------------------------------------ acceptance
def _float_probs(seg: Segmenter, frame: np.ndarray) -> np.ndarray:
    """The model's probabilities for ``frame`` as float32 (h, w, C), cropped to the frame's part."""
    batch, transform = seg.prepare(frame)
    raw = seg.invoke(batch)
    return np.ascontiguousarray(transform.crop(seg.output_tensor.dequantize(raw[0])))


def _reference(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    big = cv2.resize(probs, FRAME, interpolation=cv2.INTER_LINEAR)  # float32: OpenCV's full-precision path
    if threshold is not None:
        return (big >= threshold).astype(np.uint8)
    return big.argmax(axis=-1).astype(np.uint8)


def _score(pairs_smooth, pairs_nearest, num_classes, classes=None):
    smooth, per_class = mean_boundary_iou(pairs_smooth, num_classes, d=3, classes=classes)
    nearest, _ = mean_boundary_iou(pairs_nearest, num_classes, d=3, classes=classes)
    return smooth, nearest, per_class


def test_bundled_semantic_model_boundaries_match_the_float_reference():
    smooth_pairs, nearest_pairs = [], []
    with Segmenter.create() as seg:
        for seed in HELD_OUT:
            frame = render_scene(seed, FRAME).image
            result = seg.segment(frame)
            reference = _reference(_float_probs(seg, frame))
            smooth_pairs.append((reference, result.class_map))
            nearest_pairs.append((reference, result.nearest_class_map))
        classes = range(len(seg.manifest.classes))
    smooth, nearest, per_class = _score(smooth_pairs, nearest_pairs, len(classes))
    fg_smooth, fg_nearest, _ = _score(smooth_pairs, nearest_pairs, len(classes), classes=range(1, len(classes)))
    print(f"\nbundled semantic, 1280x720, boundary IoU d=3: uint8 bilinear {smooth:.4f} "
          f"(foreground {fg_smooth:.4f}, per class {({c: round(v, 4) for c, v in per_class.items()})}), "
          f"nearest {nearest:.4f} (foreground {fg_nearest:.4f})")
    assert smooth >= 0.95 and fg_smooth >= 0.95
    assert nearest < smooth - 0.1  # the staircase is what this fixes


def test_bundled_model_edge_only_interpolation_equals_the_full_one():
    """On held-out frames the edge-only path (the one taken: few edge pixels) gives the class map of
    interpolating every pixel, to >= 99.9 % of the pixels, with the same boundaries."""
    pairs = []
    with Segmenter.create() as seg:
        for seed in HELD_OUT:
            result = seg.segment(render_scene(seed, FRAME).image)
            edges = np.count_nonzero(upsample._edge_pixels(result.label_map))
            assert 0 < edges <= upsample.EDGE_SHARE_UP_TO * result.label_map.size
            full = upsample._full(np.ascontiguousarray(result.prob_map), FRAME)
            assert (result.class_map == full).mean() >= 0.999
            pairs.append((full, result.class_map))
        classes = len(seg.manifest.classes)
    mean, _ = mean_boundary_iou(pairs, classes, d=3)
    assert mean >= 0.999


@pytest.fixture(scope="module")
def binary_256(tmp_path_factory):
    """A real full-integer (uint8 I/O) 256x256 binary TFLite model: sigmoid(8 (r - 0.5)), red = foreground."""
    path = tmp_path_factory.mktemp("binary") / "binary_256.tflite"
    return tflite_builders.build("binary_sigmoid", path, size=256, io="uint8")


def _red_discs(seed: int) -> np.ndarray:
    """A 720p frame: a held-out synthetic scene with anti-aliased red discs and ellipses drawn on it."""
    rng = np.random.default_rng(seed)
    frame = render_scene(seed, FRAME).image
    frame[..., 2] //= 3  # the scene's own reds stay background
    for _ in range(6):
        centre = (int(rng.integers(100, 1180)), int(rng.integers(80, 640)))
        axes = (int(rng.integers(30, 160)), int(rng.integers(30, 160)))
        cv2.ellipse(frame, centre, axes, float(rng.uniform(0, 180)), 0, 360, (20, 30, 235), -1, cv2.LINE_AA)
    return frame


def test_binary_model_boundaries_match_the_float_reference(binary_256):
    smooth_pairs, nearest_pairs = [], []
    with Segmenter.create(model=binary_256) as seg:
        assert seg.manifest.task == "binary" and seg.output_tensor.dtype == np.uint8
        threshold = seg.manifest.output.threshold
        for seed in HELD_OUT:
            frame = _red_discs(seed)
            result = seg.segment(frame)
            reference = _reference(_float_probs(seg, frame)[..., 0], threshold)
            assert 0.02 < reference.mean() < 0.6  # there is foreground and background to score
            smooth_pairs.append((reference, result.class_map))
            nearest_pairs.append((reference, result.nearest_class_map))
    smooth, nearest, _ = _score(smooth_pairs, nearest_pairs, 2, classes=[1])
    print(f"\nbinary 256x256 uint8, 1280x720, boundary IoU d=3 (foreground): uint8 bilinear {smooth:.4f}, "
          f"nearest {nearest:.4f}")
    assert smooth >= 0.95
    assert nearest < smooth - 0.1


@pytest.mark.parametrize("channels", [2, 3, 4, 6])
def test_edge_samples_are_those_of_one_remap_per_plane(channels):
    rng = np.random.default_rng(channels)
    probs = rng.integers(0, 256, (96, 120, channels), dtype=np.uint8)
    map_x = rng.uniform(-1, 120, (8, 1024)).astype(np.float32)
    map_y = rng.uniform(-1, 96, (8, 1024)).astype(np.float32)
    got = upsample._remap_planes(probs, map_x, map_y)
    for plane, samples in zip(cv2.split(probs), got, strict=True):
        one = cv2.remap(plane, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert np.array_equal(samples, one)
