"""edge_seg.metrics: values read back from the text exposition, JS distance against SciPy, drift."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from scipy.spatial.distance import jensenshannon

from edge_seg.metrics import Metrics, js_distance

CLASSES = ["background", "road", "person", "car"]
BASELINE = {"background": 0.5, "road": 0.3, "person": 0.1, "car": 0.1}


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed from the exposition."""
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, sample: str, **labels) -> float | None:
    return samples(metrics).get((sample, tuple(sorted(labels.items()))))


def test_counters_and_gauges_read_back_from_exposition():
    m = Metrics(classes=CLASSES)
    for _ in range(3):
        m.frame_processed()
    m.frames_dropped(5)
    m.frames_dropped(0)
    m.frame_skipped()
    m.source_reconnect()
    m.set_source_up(True)
    m.set_fps(12.5)
    m.set_outbox(7)
    m.set_model("roadseg", "1.2.0", "ab" * 32)
    assert value(m, "edge_seg_frames_processed_total") == 3
    assert value(m, "edge_seg_frames_dropped_total") == 5
    assert value(m, "edge_seg_frames_skipped_total") == 1
    assert value(m, "edge_seg_source_reconnects_total") == 1
    assert value(m, "edge_seg_source_up") == 1
    assert value(m, "edge_seg_fps") == 12.5
    assert value(m, "edge_seg_outbox_messages") == 7
    assert value(m, "edge_seg_model_info", name="roadseg", version="1.2.0", sha256="ab" * 32) == 1
    m.set_source_up(False)
    m.set_model("roadseg", "1.3.0", "cd" * 32)
    assert value(m, "edge_seg_source_up") == 0
    assert value(m, "edge_seg_model_info", name="roadseg", version="1.2.0", sha256="ab" * 32) is None
    assert value(m, "edge_seg_model_info", name="roadseg", version="1.3.0", sha256="cd" * 32) == 1


def test_stage_histogram_buckets_and_total():
    m = Metrics()
    m.observe_stages({"preprocess": 0.8, "infer": 150.0, "postprocess": 3.0})
    m.observe_stages({"preprocess": 0.9, "infer": 250.0, "postprocess": 3.0, "total": 260.0})
    assert value(m, "edge_seg_stage_seconds_count", stage="infer") == 2
    assert value(m, "edge_seg_stage_seconds_sum", stage="infer") == pytest.approx(0.4)
    assert value(m, "edge_seg_stage_seconds_bucket", stage="infer", le="0.2") == 1
    assert value(m, "edge_seg_stage_seconds_bucket", stage="preprocess", le="0.001") == 2
    assert value(m, "edge_seg_stage_seconds_bucket", stage="preprocess", le="0.0005") == 0
    # total: summed when absent (153.8 ms), taken as given when present (260 ms)
    assert value(m, "edge_seg_stage_seconds_count", stage="total") == 2
    assert value(m, "edge_seg_stage_seconds_sum", stage="total") == pytest.approx(0.4138)
    assert value(m, "edge_seg_stage_seconds_bucket", stage="total", le="0.2") == 1
    assert m.snapshot()["stages_p50_ms"]["infer"] == pytest.approx(200.0)


def test_each_metrics_object_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.frame_processed()
    assert value(a, "edge_seg_frames_processed_total") == 1
    assert value(b, "edge_seg_frames_processed_total") == 0
    shared = CollectorRegistry()
    Counter("other_total", "x", registry=shared)
    c = Metrics(registry=shared)
    assert c.registry is shared
    assert b"other_total" in c.exposition()


def test_area_and_uncertainty_gauges():
    m = Metrics(classes=CLASSES)
    assert value(m, "edge_seg_class_area_fraction", **{"class": "car"}) == 0
    m.observe_segmentation({"background": 0.6, "road": 0.25, "person": 0.05, "car": 0.1}, 0.125)
    assert value(m, "edge_seg_class_area_fraction", **{"class": "road"}) == 0.25
    assert value(m, "edge_seg_mean_uncertainty") == 0.125
    m.observe_segmentation({"background": 0.9, "bicycle": 0.1}, 0.2)  # a class not announced up front
    assert value(m, "edge_seg_class_area_fraction", **{"class": "bicycle"}) == 0.1


@pytest.mark.parametrize("seed", range(5))
def test_js_distance_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    p, q = rng.random(6), rng.random(6)
    p[seed % 6] = 0.0  # zeros must be handled like SciPy does
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)


def test_js_distance_bounds_and_errors():
    assert js_distance([1, 0], [1, 0]) == 0
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([2, 2], [1, 1]) == pytest.approx(0.0)  # normalised
    with pytest.raises(ValueError, match="length"):
        js_distance([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        js_distance([0, 0], [1, 1])


def test_no_baseline_exports_no_drift():
    m = Metrics(classes=CLASSES)
    m.observe_segmentation(BASELINE, 0.1)
    assert b"edge_seg_drift_js_distance" not in m.exposition()
    assert m.snapshot()["drift_js"] is None


def test_drift_rises_as_the_scene_departs_from_the_baseline():
    m = Metrics(classes=CLASSES, baseline=BASELINE, drift_window=50)
    for _ in range(50):
        m.observe_segmentation(BASELINE, 0.1)
    assert value(m, "edge_seg_drift_js_distance") == pytest.approx(0.0, abs=1e-6)
    shifted = {"background": 0.05, "road": 0.05, "person": 0.1, "car": 0.8}  # e.g. a car parked in front
    readings = []
    for _ in range(50):
        m.observe_segmentation(shifted, 0.1)
        readings.append(value(m, "edge_seg_drift_js_distance"))
    assert all(b >= a - 1e-12 for a, b in zip(readings, readings[1:])), "drift grows while the window fills"
    expected = jensenshannon(list(shifted.values()), list(BASELINE.values()), base=2)
    assert readings[-1] == pytest.approx(expected, abs=1e-9)  # window now holds only the shifted scene
    assert m.rolling_distribution() == pytest.approx(shifted)
    assert m.snapshot()["drift_js"] == pytest.approx(expected, abs=1e-9)


def test_window_running_sums_stay_exact_over_many_frames():
    m = Metrics(classes=CLASSES, baseline=BASELINE, drift_window=7)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(1000):
        w = rng.random(4)
        row = dict(zip(CLASSES, (w / w.sum()).tolist()))
        rows.append(row)
        m.observe_segmentation(row, 0.0)
    want = {c: np.mean([r[c] for r in rows[-7:]]) for c in CLASSES}
    assert m.rolling_distribution() == pytest.approx(want, abs=1e-12)


def test_set_baseline_resets_window_and_can_remove_drift():
    m = Metrics(classes=CLASSES, baseline=BASELINE)
    m.observe_segmentation({"car": 1.0}, 0.1)
    assert value(m, "edge_seg_drift_js_distance") > 0.5
    m.set_baseline({"car": 1.0})
    assert m.rolling_distribution() == {}
    m.observe_segmentation({"car": 1.0}, 0.1)
    assert value(m, "edge_seg_drift_js_distance") == pytest.approx(0.0)
    m.set_baseline(None)
    assert b"edge_seg_drift_js_distance" not in m.exposition()
    with pytest.raises(ValueError, match="baseline"):
        m.set_baseline({"car": -1.0})


def test_per_frame_cost_is_microseconds():
    m = Metrics(classes=CLASSES, baseline=BASELINE)
    timings = {"capture_age": 2.0, "preprocess": 1.0, "infer": 20.0, "postprocess": 2.0}
    areas = {"background": 0.6, "road": 0.25, "person": 0.05, "car": 0.1}
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        m.observe_stages(timings)
        m.frame_processed()
        m.observe_segmentation(areas, 0.1)
        m.set_fps(30.0)
    per_frame_us = (time.perf_counter() - t0) / n * 1e6
    assert per_frame_us < 200, f"{per_frame_us:.1f} us per frame"  # ~15 us measured; generous for slow CI
