"""Uncertainty maps and crops: crops only where the model cannot decide, within the budget."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tflite_builders
from pydantic import ValidationError

from edge_seg import Segmenter
from edge_seg.errors import EdgeSegError, InputError
from edge_seg.manifest import OutputSpec
from edge_seg.postprocess.semantic import SemanticDecoder, argmax_top2, float_spec
from edge_seg.postprocess.uncertainty import CropConfig, CropExtractor, _max_uncertainty, uncertainty_map
from edge_seg.segmentation import ModelIdentity, Segmentation

# A 320x320 frame for the 32x32 colour model (10 frame pixels per model pixel, region edges on
# the model grid): red left half, blue right half, and two regions the model cannot decide.
MIXED = (40, 40, 120, 120)  # (x0, y0, x1, y1): BGR (0, 128, 128), red = green = 0.5
CHECKER = (200, 200, 280, 280)  # 1-pixel red/green checkerboard: averages to red = green = 0.5
UNCERTAIN = (MIXED, CHECKER)


def _uncertain_frame() -> np.ndarray:
    frame = np.zeros((320, 320, 3), np.uint8)
    frame[:, :160] = tflite_builders.BGR["red"]
    frame[:, 160:] = tflite_builders.BGR["blue"]
    x0, y0, x1, y1 = MIXED
    frame[y0:y1, x0:x1] = (0, 128, 128)
    x0, y0, x1, y1 = CHECKER
    yy, xx = np.mgrid[y0:y1, x0:x1]
    red, green = np.array(tflite_builders.BGR["red"], np.uint8), np.array(tflite_builders.BGR["green"], np.uint8)
    frame[y0:y1, x0:x1] = np.where(((yy + xx) % 2 == 0)[..., None], red, green)
    return frame


@pytest.fixture(scope="module")
def segmenter(tiny_models):
    with Segmenter.create(model=tiny_models["colour_logits_float"], entropy=True, margin=True) as seg:
        yield seg


@pytest.fixture(scope="module")
def uncertain(segmenter):
    frame = _uncertain_frame()
    return frame, segmenter.segment(frame)


def _overlap(bbox, region) -> int:
    x, y, w, h = bbox
    x0, y0, x1, y1 = region
    return max(0, min(x + w, x1) - max(x, x0)) * max(0, min(y + h, y1) - max(y, y0))


def _synthetic(confidence: np.ndarray, frame_size=(640, 480), entropy=None, margin=None) -> Segmentation:
    return Segmentation(label_map=(confidence > 0.7).astype(np.uint8), confidence_map=confidence.astype(np.float32),
                        frame_size=frame_size, classes=("a", "b"), palette=((0, 0, 0), (255, 255, 255)),
                        model=ModelIdentity("test", "1", "0" * 64), entropy_map=entropy, margin_map=margin)


def test_uncertainty_map_methods():
    conf = np.array([[1.0, 0.9, 0.6, 0.25]], np.float32)
    seg = _synthetic(conf)
    np.testing.assert_allclose(uncertainty_map(seg, "confidence"), [[0.0, 0.1, 0.4, 0.75]], atol=1e-6)
    for method in ("margin", "entropy"):  # no map kept: a clear error, not an approximation
        with pytest.raises(EdgeSegError, match=f"{method}=True"):
            uncertainty_map(seg, method)
        with pytest.raises(EdgeSegError, match=f"{method}=True"):
            _max_uncertainty(seg, method)
    margin = np.array([[1.0, 0.8, 0.2, 0.05]], np.float32)
    np.testing.assert_allclose(uncertainty_map(_synthetic(conf, margin=margin), "margin"), [[0.0, 0.2, 0.8, 0.95]],
                               atol=1e-6)
    entropy = np.array([[0.0, 0.3, 0.7, 1.0]], np.float32)
    np.testing.assert_array_equal(uncertainty_map(_synthetic(conf, entropy=entropy), "entropy"), entropy)
    assert uncertainty_map(seg).dtype == np.float32


@pytest.mark.parametrize("method", ["confidence", "margin", "entropy"])
def test_crops_appear_only_where_the_model_is_uncertain(uncertain, method):
    frame, seg = uncertain
    extractor = CropExtractor(CropConfig(method=method))
    crops = extractor.extract(frame, seg, now=12.5, seq=7)
    assert len(crops) == 2
    for crop in crops:
        assert any(_overlap(crop.bbox, region) > 0 for region in UNCERTAIN), crop.bbox
        assert crop.score > 0.5 and crop.ts == 12.5 and crop.seq == 7
    for region in UNCERTAIN:  # each undecidable region is inside one crop
        x0, y0, x1, y1 = region
        assert any(_overlap(c.bbox, region) == (x1 - x0) * (y1 - y0) for c in crops), region
    assert extractor.stats == {"frames": 1, "skipped_budget": 0, "candidates": 2, "extracted": 2,
                               "dropped_budget": 0, "bytes": sum(len(c.jpeg) for c in crops)}


def test_crop_jpeg_and_class_map_match_the_bbox(uncertain):
    frame, seg = uncertain
    for crop in CropExtractor().extract(frame, seg, now=0.0):
        x, y, w, h = crop.bbox
        image = cv2.imdecode(np.frombuffer(crop.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (h, w, 3)
        # JPEG smears the 1-pixel checkerboard's chroma; the mean colour survives
        assert np.abs(image.mean(axis=(0, 1)) - frame[y:y + h, x:x + w].mean(axis=(0, 1))).max() < 16
        assert crop.class_map.shape == (h, w) and crop.class_map.dtype == np.uint8
        np.testing.assert_array_equal(crop.class_map, seg.class_map[y:y + h, x:x + w])


def test_a_confident_frame_gives_no_crops(segmenter):
    frame, _ = tflite_builders.colour_frame(320, 320)  # pure colour bands on the model grid
    seg = segmenter.segment(frame)
    extractor = CropExtractor()
    assert extractor.extract(frame, seg, now=0.0) == []
    assert extractor.stats["candidates"] == 0 and extractor.stats["bytes"] == 0


def _windows(sent: list[tuple[float, int]]) -> list[tuple[int, int]]:
    """(count, bytes) in the 60 s window ending at each send."""
    return [(sum(1 for s, _ in sent if t - 60 < s <= t), sum(b for s, b in sent if t - 60 < s <= t)) for t, _ in sent]


def test_crop_count_budget_is_never_exceeded_over_a_rolling_minute(uncertain):
    frame, seg = uncertain
    extractor = CropExtractor(CropConfig(crops_per_minute=4))
    sent = []
    for i in range(150 * 5):  # 150 simulated seconds at 5 fps, two candidates a frame
        now = 1000.0 + i / 5
        sent += [(now, len(c.jpeg)) for c in extractor.extract(frame, seg, now=now, seq=i)]
    assert max(count for count, _ in _windows(sent)) == 4
    assert len(sent) == 12  # the budget is used, not starved: 4 at t=0, t=60 and t=120
    stats = extractor.stats
    assert stats["extracted"] == len(sent) and stats["extracted"] + stats["dropped_budget"] == stats["candidates"]
    assert stats["skipped_budget"] > 700  # a full window costs no analysis


def test_crop_byte_budget_is_never_exceeded(uncertain):
    frame, seg = uncertain
    extractor = CropExtractor(CropConfig(crops_per_minute=100, bytes_per_minute=6000))
    sent = []
    for i in range(90 * 2):
        now = i / 2
        sent += [(now, len(c.jpeg)) for c in extractor.extract(frame, seg, now=now)]
    assert sent and max(size for _, size in _windows(sent)) <= 6000
    assert extractor.stats["dropped_budget"] > 0


def _blobs(shape=(48, 64), boxes=(), value=0.2) -> np.ndarray:
    conf = np.full(shape, 0.95, np.float32)
    for x0, y0, x1, y1, *v in boxes:
        conf[y0:y1, x0:x1] = v[0] if v else value
    return conf


def test_nearby_regions_merge_into_one_crop():
    seg = _synthetic(_blobs(boxes=[(10, 10, 16, 16), (18, 10, 24, 16)]))  # a 2-pixel gap (20 frame pixels)
    merged = CropExtractor(CropConfig(padding=0.25, join=0)).regions(seg)  # boxes overlap after padding
    assert len(merged) == 1 and merged[0][0] == (85, 85, 255, 175)
    joined = CropExtractor(CropConfig(padding=0.0, merge=False, join=1)).regions(seg)  # joined at model resolution
    assert len(joined) == 1 and joined[0][0] == (100, 100, 240, 160)
    apart = CropExtractor(CropConfig(padding=0.0, merge=False, join=0)).regions(seg)
    assert sorted(box for box, _ in apart) == [(100, 100, 160, 160), (180, 100, 240, 160)]


def test_small_regions_are_dropped_and_the_best_k_kept():
    boxes = [(2 + 12 * i, 20, 8 + 12 * i, 26, 0.1 + 0.05 * i) for i in range(5)] + [(30, 40, 31, 41, 0.0)]
    seg = _synthetic(_blobs(boxes=boxes))
    found = CropExtractor(CropConfig(max_crops=3, padding=0.0)).regions(seg)
    scores = [score for _, score in found]
    np.testing.assert_allclose(scores, [0.9, 0.85, 0.8], atol=1e-5)  # least confident first; 1-pixel blob gone
    tiny = CropExtractor(CropConfig(max_crops=10, min_area=0.0)).regions(seg)
    assert len(tiny) == 6 and tiny[0][1] == pytest.approx(1.0)


def test_speckle_is_joined_into_one_region():
    conf = np.full((48, 64), 0.95, np.float32)
    conf[10:30:2, 10:40:2] = 0.1  # isolated uncertain pixels, one apart
    seg = _synthetic(conf)
    assert len(CropExtractor(CropConfig(join=1)).regions(seg)) == 1
    assert CropExtractor(CropConfig(join=0)).regions(seg) == []  # each pixel alone is below min_area


def test_crop_config_rejects_unknown_fields_and_bad_values():
    with pytest.raises(ValidationError):
        CropConfig(treshold=0.5)
    with pytest.raises(ValidationError):
        CropConfig(method="variance")
    with pytest.raises(ValidationError):
        CropConfig(threshold=1.5)


def test_extract_rejects_a_frame_of_another_size(uncertain):
    frame, seg = uncertain
    with pytest.raises(InputError, match="320x320"):
        CropExtractor().extract(frame[:100], seg, now=0.0)


def test_a_map_at_the_threshold_gives_no_crops():
    conf = np.full((48, 64), 0.5, np.float32)  # uncertainty exactly 0.5: not above the threshold
    assert CropExtractor().regions(_synthetic(conf)) == []
    conf[5:10, 5:10] = 0.49
    assert len(CropExtractor().regions(_synthetic(conf))) == 1


@pytest.mark.parametrize("name", ["colour_probs_uint8", "colour_logits_int8"])
def test_quantised_models_find_the_same_uncertain_regions(tiny_models, name):
    frame = _uncertain_frame()
    with Segmenter.create(model=tiny_models[name]) as seg:
        result = seg.segment(frame)
    crops = CropExtractor().extract(frame, result, now=0.0)
    assert len(crops) == 2
    for region in UNCERTAIN:
        assert sum(_overlap(c.bbox, region) > 0 for c in crops) == 1, region


# Three-class probability vectors with known top-2 gaps: (p, 1 - (p1 - p2)). The old bound
# min(1, 2 (1 - p1)) gave 1.0, 1.0, 0.8 and 1.0 for them.
KNOWN_MARGINS = [((0.4, 0.35, 0.25), 0.95), ((0.25, 0.5, 0.25), 0.75), ((0.1, 0.3, 0.6), 0.7),
                 ((0.34, 0.33, 0.33), 0.99)]


@pytest.mark.parametrize("kind", ["probabilities", "logits"])
def test_margin_is_top1_minus_top2_for_more_than_two_classes(kind):
    probs = np.array([p for p, _ in KNOWN_MARGINS], np.float32).reshape(1, 2, 2, 3)
    raw = probs if kind == "probabilities" else np.log(probs) + 1.5  # softmax is shift-invariant
    decoded = SemanticDecoder(OutputSpec(kind=kind), float_spec(), 3, margin=True)(raw)
    expected = np.array([u for _, u in KNOWN_MARGINS], np.float32).reshape(2, 2)
    np.testing.assert_allclose(1.0 - decoded.margin, expected, atol=1e-5)
    np.testing.assert_array_equal(decoded.label_map, [[0, 1], [2, 0]])
    seg = _synthetic(decoded.confidence, margin=decoded.margin)
    np.testing.assert_allclose(uncertainty_map(seg, "margin"), expected, atol=1e-5)
    assert _max_uncertainty(seg, "margin") == pytest.approx(0.99, abs=1e-5)
    assert SemanticDecoder(OutputSpec(kind=kind), float_spec(), 3)(raw).margin is None  # off unless asked for


def test_binary_margin_is_the_gap_between_foreground_and_background():
    prob = np.array([[0.5, 0.7, 0.1, 1.0]], np.float32)[None, ..., None]
    decoded = SemanticDecoder(OutputSpec(kind="sigmoid"), float_spec(), 2, margin=True)(prob)
    np.testing.assert_allclose(decoded.margin, [[0.0, 0.4, 0.8, 1.0]], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32, np.int16])
@pytest.mark.parametrize("channels", [2, 5, 40])
def test_argmax_top2_matches_a_sort(dtype, channels):
    rng = np.random.default_rng(channels)
    info = np.iinfo(dtype) if np.dtype(dtype).kind == "i" or dtype == np.uint8 else None
    raw = (rng.integers(info.min, info.max, (17, 23, channels), endpoint=True).astype(dtype) if info
           else rng.standard_normal((17, 23, channels)).astype(dtype))
    raw[0, :, :2] = raw[0, :, 2:3] if channels > 2 else raw[0, :, :1]  # ties: top-2 equal, first wins
    idx, top, second = argmax_top2(raw)
    ordered = np.sort(raw, axis=-1)
    np.testing.assert_array_equal(top, ordered[..., -1])
    np.testing.assert_array_equal(second, ordered[..., -2])
    np.testing.assert_array_equal(idx, raw.argmax(axis=-1))


def test_real_model_margin_map_matches_its_probabilities(segmenter):
    """The 4-class colour model: the map is p1 - p2 of the model's own softmax, not a bound from p1."""
    frame = _uncertain_frame()
    batch, transform = segmenter.prepare(frame)
    logits = segmenter.invoke(batch)[0].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    ordered = np.sort(probs, axis=-1)
    seg = segmenter.segment(frame)
    assert seg.margin_map.shape == seg.label_map.shape and seg.margin_map.dtype == np.float32
    np.testing.assert_allclose(seg.margin_map, transform.crop(ordered[..., -1] - ordered[..., -2]), atol=1e-5)
    red = seg.margin_map[20, 2]  # pure red: logits (4, 0, 0, 2), p1 = 0.853, p2 = 0.116
    assert red == pytest.approx((np.exp(4) - np.exp(2)) / (np.exp(4) + 2 + np.exp(2)), abs=1e-4)
    assert 1.0 - red < 0.27 < min(1.0, 2.0 * (1.0 - seg.confidence_map[20, 2]))  # the old bound was 0.294


def test_margin_crops_appear_where_two_classes_tie(segmenter):
    """Yellow is red and green at once: p1 = p2 = 0.465. Its confidence uncertainty (0.535) stays below a
    0.6 threshold, its margin uncertainty (1.0) does not; pure red (margin uncertainty 0.26) gives nothing."""
    frame = np.zeros((320, 320, 3), np.uint8)
    frame[:] = tflite_builders.BGR["red"]
    tie = (200, 40, 280, 120)
    frame[tie[1]:tie[3], tie[0]:tie[2]] = (0, 255, 255)
    seg = segmenter.segment(frame)
    x0, y0, x1, y1 = (v // 10 for v in tie)
    assert (np.abs(seg.margin_map[y0:y1, x0:x1]) < 1e-3).all()
    assert CropExtractor(CropConfig(method="confidence", threshold=0.6)).extract(frame, seg, now=0.0) == []
    crops = CropExtractor(CropConfig(method="margin", threshold=0.6)).extract(frame, seg, now=0.0)
    assert len(crops) == 1 and crops[0].score > 0.99
    assert _overlap(crops[0].bbox, tie) == (tie[2] - tie[0]) * (tie[3] - tie[1])
    x, y, w, h = crops[0].bbox
    assert x >= 150 and y + h <= 170  # around the square only, not the red background


@pytest.mark.parametrize("method", ["confidence", "margin", "entropy"])
def test_the_runner_and_the_service_keep_the_map_the_crop_method_needs(tiny_models, method):
    from edge_seg.config import parse_config
    from edge_seg.loop.runner import build
    from edge_seg.service.daemon import segmenter_factory

    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "uncertainty": {"enabled": True, "crops": {"method": method}}})
    frame = _uncertain_frame()
    built = build(config)
    try:
        first = built.segmenter.segment(frame)
    finally:
        built.pipeline.source.close()
        built.segmenter.close()
    with segmenter_factory(config)(tiny_models["colour_probs_uint8"]) as reloaded:  # the OTA hot-reload path
        second = reloaded.segment(frame)
    for seg in (first, second):
        assert (seg.margin_map is not None) == (method == "margin")  # the default path pays for neither map
        assert (seg.entropy_map is not None) == (method == "entropy")
        assert len(CropExtractor(CropConfig(method=method)).extract(frame, seg, now=0.0)) == 2
