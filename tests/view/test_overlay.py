"""Overlay, Redactor and colorize on real arrays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_seg.errors import InputError
from edge_seg.segmentation import ModelIdentity, Segmentation
from edge_seg.view.overlay import Overlay, Redactor, colorize

CLASSES = ("background", "person", "car", "road")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))  # RGB
BGR = np.array(PALETTE, np.uint8)[:, ::-1]


def make_seg(labels: np.ndarray, frame_size: tuple[int, int] = (320, 240)) -> Segmentation:
    return Segmentation(label_map=labels, confidence_map=np.ones(labels.shape, np.float32),
                        frame_size=frame_size, classes=CLASSES, palette=PALETTE,
                        model=ModelIdentity("test", "1.0.0", "0" * 64))


def blocks(size: int = 64) -> np.ndarray:
    labels = np.zeros((size, size), np.uint8)
    labels[8:30, 5:40] = 1
    labels[35:60, 20:50] = 2
    labels[2:12, 45:62] = 3
    return labels


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def expected_blend(frame: np.ndarray, class_map: np.ndarray, alpha: float) -> np.ndarray:
    colour = BGR[class_map].astype(np.float64)
    return np.rint(frame * (1 - alpha) + colour * alpha)


def test_overlay_tints_classes_and_keeps_background_pixels(frame):
    seg = make_seg(blocks())
    out = Overlay(alpha=0.5).annotate(frame, seg)
    background = seg.class_map == 0
    assert np.array_equal(out[background], frame[background])
    diff = np.abs(out.astype(int) - expected_blend(frame, seg.class_map, 0.5))
    assert diff[~background].max() <= 1


@pytest.mark.parametrize("frame_size", [(320, 240), (1280, 720), (333, 197)])
def test_box_by_box_blend_gives_the_same_pixels_as_the_full_frame_blend(frame_size):
    """Small objects scattered over several row bands take the box path; big ones the full-frame path.

    Both must equal the numpy blend of the frame-size class map, and class 0 must keep the frame's
    exact values, at frame sizes that are and are not multiples of the model's.
    """
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (frame_size[1], frame_size[0], 3), dtype=np.uint8)
    sparse = np.zeros((96, 96), np.uint8)
    for i, (y, x) in enumerate([(0, 0), (20, 70), (41, 3), (60, 50), (90, 93), (95, 0)]):
        sparse[y:y + 3, x:x + 2] = 1 + i % 3  # tiny objects, one at each corner of the map too
    dense = sparse.copy()
    dense[10:90, 5:90] = 2
    for labels in (sparse, dense):
        seg = make_seg(labels, frame_size)
        out = Overlay(alpha=0.4).annotate(frame, seg)
        background = seg.class_map == 0
        assert np.array_equal(out[background], frame[background])
        diff = np.abs(out.astype(int) - expected_blend(frame, seg.class_map, 0.4))
        assert diff[~background].max() <= 1
        assert (~background).sum() > 0


def test_overlay_blend_math_matches_numpy_everywhere_when_background_opaque(frame):
    seg = make_seg(blocks())
    out = Overlay(alpha=0.3, background_transparent=False).annotate(frame, seg)
    assert np.abs(out.astype(int) - expected_blend(frame, seg.class_map, 0.3)).max() <= 1


def test_overlay_leaves_input_frame_unchanged_and_returns_new_array(frame):
    before = frame.copy()
    out = Overlay().annotate(frame, make_seg(blocks()))
    assert np.array_equal(frame, before)
    assert out is not frame and not np.shares_memory(out, frame)


def test_overlay_of_all_background_is_a_copy_of_the_frame(frame):
    out = Overlay().annotate(frame, make_seg(np.zeros((64, 64), np.uint8)))
    assert np.array_equal(out, frame) and out is not frame


def test_overlay_resizes_to_the_frame_it_is_given(frame):
    seg = make_seg(blocks(), frame_size=(1280, 960))  # preview frame smaller than the source
    out = Overlay(alpha=1.0).annotate(frame, seg)
    class_map = cv2.resize(seg.label_map, (320, 240), interpolation=cv2.INTER_NEAREST)
    fg = class_map > 0
    assert np.array_equal(out[fg], BGR[class_map][fg])


def test_overlay_palette_overrides_segmentation_palette(frame):
    labels = np.ones((16, 16), np.uint8)
    out = Overlay(alpha=1.0, palette=[(0, 0, 0), (1, 2, 3)]).annotate(frame, make_seg(labels))
    assert (out == (3, 2, 1)).all()


def test_overlay_reuses_buffers_across_frame_sizes(frame):
    overlay = Overlay(alpha=1.0)
    small = overlay.annotate(frame[:120, :160].copy(), make_seg(blocks()))
    big = overlay.annotate(frame, make_seg(blocks()))
    assert small.shape == (120, 160, 3) and big.shape == frame.shape


def test_contours_are_drawn_in_class_colour_near_class_boundaries(frame):
    seg = make_seg(blocks())
    plain = Overlay().annotate(frame, seg)
    drawn = Overlay(contours=True).annotate(frame, seg)
    changed = (plain != drawn).any(axis=2)
    assert changed.sum() > 100
    edges = cv2.morphologyEx(seg.class_map, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    near_edges = cv2.dilate(edges.view(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert not (changed & ~near_edges).any()
    colours = {tuple(c) for c in drawn[changed].tolist()}
    assert colours <= {tuple(c) for c in BGR[1:].tolist()}


def legend_box(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    seg = make_seg(labels)
    changed = (Overlay().annotate(frame, seg) != Overlay(legend=True).annotate(frame, seg)).any(axis=2)
    return changed


def test_legend_is_drawn_top_left_with_class_swatches(frame):
    changed = legend_box(frame, blocks())
    ys, xs = np.nonzero(changed)
    assert ys.min() == 0 and xs.min() == 0
    assert ys.max() < 120 and xs.max() < 200
    out = Overlay(legend=True).annotate(frame, make_seg(blocks()))
    box = out[: ys.max() + 1, : xs.max() + 1].reshape(-1, 3)
    for colour in BGR[1:]:
        assert (box == colour).all(axis=1).sum() > 20  # a solid swatch per class present


def test_legend_lists_only_classes_present(frame):
    one = np.zeros((64, 64), np.uint8)
    one[10:20, 10:20] = 2
    rows_one = np.nonzero(legend_box(frame, one))[0].max()
    rows_three = np.nonzero(legend_box(frame, blocks()))[0].max()
    assert rows_three > rows_one * 2


def test_redactor_fill_sets_exactly_the_class_pixels(frame):
    seg = make_seg(blocks())
    out = Redactor(["person", 3], color=(1, 2, 3)).annotate(frame, seg)
    hidden = np.isin(seg.class_map, (1, 3))
    assert (out[hidden] == (1, 2, 3)).all()
    assert np.array_equal(out[~hidden], frame[~hidden])


def test_redactor_blur_changes_only_the_class_region(frame):
    seg = make_seg(blocks())
    out = Redactor([2], mode="blur", blur_kernel=15).annotate(frame, seg)
    region = seg.class_map == 2
    assert np.array_equal(out[~region], frame[~region])
    changed = (out != frame).any(axis=2)
    assert changed[region].mean() > 0.9
    assert out[region].astype(float).std() < frame[region].astype(float).std() / 3


def test_redactor_with_absent_class_returns_the_frame(frame):
    labels = np.zeros((64, 64), np.uint8)
    assert np.array_equal(Redactor(["car"], mode="blur").annotate(frame, make_seg(labels)), frame)


def test_redactor_rejects_unknown_class_name(frame):
    with pytest.raises(InputError, match="class 'cat' to redact is not a class of the model.*person"):
        Redactor(["cat"]).annotate(frame, make_seg(blocks()))


@pytest.mark.parametrize("kwargs", [{"mode": "pixelate"}, {"mode": "blur", "blur_kernel": 4},
                                    {"color": (1, 2)}])
def test_redactor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Redactor([1], **kwargs)


def test_overlay_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        Overlay(alpha=1.5)


@pytest.mark.parametrize("bad", [np.zeros((240, 320), np.uint8), np.zeros((240, 320, 3), np.float32)])
def test_annotators_reject_non_bgr_frames(bad):
    for annotator in (Overlay(), Redactor([1])):
        with pytest.raises(InputError, match="BGR"):
            annotator.annotate(bad, make_seg(blocks()))


def test_colorize_maps_ids_to_bgr_palette_colours():
    labels = blocks()
    out = colorize(labels, PALETTE)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, BGR[labels])


def test_annotators_accept_a_cropped_label_map_view(frame):
    padded = np.full((64, 80), 3, np.uint8)  # letterbox columns around the real map
    padded[:, 8:72] = blocks()
    seg = make_seg(padded[:, 8:72])
    assert not seg.label_map.flags.c_contiguous
    reference = make_seg(blocks())
    for annotator in (Overlay(contours=True, legend=True), Redactor([1], mode="blur")):
        assert np.array_equal(annotator.annotate(frame, seg), annotator.annotate(frame, reference))


@pytest.mark.parametrize("frame_size", [(1280, 720), (333, 197)])
def test_smooth_segmentation_is_drawn_from_its_smooth_class_map(frame_size):
    """With ``prob_map`` (bilinear upsampling) the overlay blends the smooth frame-size class map,
    on the box path (sparse), the full-frame path (dense) and with an opaque background."""
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (frame_size[1], frame_size[0], 3), dtype=np.uint8)
    sparse = np.zeros((96, 96), np.uint8)
    for i, (y, x) in enumerate([(0, 0), (20, 70), (41, 3), (60, 50), (90, 92)]):
        sparse[y:y + 4, x:x + 4] = 1 + i % 3
    dense = sparse.copy()
    dense[10:90, 5:90] = 2
    for labels in (sparse, dense):
        # one-hot with a weak background: bilinear edges lie past the nearest map's, outside its boxes
        probs = (np.eye(4, dtype=np.uint8)[labels] * np.array([120, 255, 255, 255], np.uint8)).astype(np.uint8)
        seg = Segmentation(label_map=labels, confidence_map=np.ones(labels.shape, np.float32), frame_size=frame_size,
                           classes=CLASSES, palette=PALETTE, model=ModelIdentity("test", "1.0.0", "0" * 64),
                           prob_map=probs)
        assert not np.array_equal(seg.class_map, seg.nearest_class_map)
        for transparent in (True, False):
            out = Overlay(alpha=0.4, background_transparent=transparent).annotate(frame, seg)
            diff = np.abs(out.astype(int) - expected_blend(frame, seg.class_map, 0.4))
            background = seg.class_map == 0
            if transparent:
                assert np.array_equal(out[background], frame[background])
                assert diff[~background].max() <= 1
            else:
                assert diff.max() <= 1
