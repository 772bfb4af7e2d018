"""edge_seg.loop.metrics: values read back from the text exposition, JS distance against SciPy, drift."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from scipy.spatial.distance import jensenshannon

from edge_seg.loop.metrics import Metrics, js_distance

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
    m.frames_dropped(2, where="sink")
    m.frame_skipped()
    m.frame_skipped(2)
    m.source_reconnect()
    m.set_source_up(True)
    m.set_fps(12.5)
    m.set_outbox(7)
    m.set_model("roadseg", "1.2.0", "ab" * 32)
    assert value(m, "edge_seg_frames_processed_total") == 3
    assert value(m, "edge_seg_frames_dropped_total", where="capture") == 5
    assert value(m, "edge_seg_frames_dropped_total", where="sink") == 2
    assert value(m, "edge_seg_frames_skipped_total") == 3
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
    snap = m.snapshot()
    assert snap["frames_dropped"] == 7 and snap["frames_dropped_by"] == {"capture": 5, "sink": 2}
    with pytest.raises(ValueError, match="drop point"):
        m.frames_dropped(1, where="slot")


def test_both_drop_series_exist_before_any_drop():
    m = Metrics()
    assert value(m, "edge_seg_frames_dropped_total", where="capture") == 0
    assert value(m, "edge_seg_frames_dropped_total", where="sink") == 0


def test_outbox_depth_is_read_at_scrape_time():
    m = Metrics()
    depth = [3]
    m.watch_outbox(lambda: depth[0])
    assert value(m, "edge_seg_outbox_messages") == 3
    depth[0] = 11
    assert value(m, "edge_seg_outbox_messages") == 11


def test_stage_histogram_buckets_and_end_to_end_total():
    m = Metrics()
    m.observe_stages({"capture_age": 40.0, "preprocess": 0.8, "infer": 150.0, "postprocess": 3.0}, 195.0)
    m.observe_stages({"capture_age": 5.0, "preprocess": 0.9, "infer": 250.0, "postprocess": 3.0}, 262.0)
    m.observe_stages({"capture": 4.0})  # a capture sample: no frame completed, no total
    assert value(m, "edge_seg_stage_seconds_count", stage="infer") == 2
    assert value(m, "edge_seg_stage_seconds_sum", stage="infer") == pytest.approx(0.4)
    assert value(m, "edge_seg_stage_seconds_bucket", stage="infer", le="0.2") == 1
    assert value(m, "edge_seg_stage_seconds_bucket", stage="preprocess", le="0.001") == 2
    assert value(m, "edge_seg_stage_seconds_bucket", stage="preprocess", le="0.0005") == 0
    assert value(m, "edge_seg_stage_seconds_count", stage="capture_age") == 2
    assert value(m, "edge_seg_stage_seconds_count", stage="capture") == 1
    # total is the end-to-end figure as given, not a sum of the stages (which would count capture_age too)
    assert value(m, "edge_seg_stage_seconds_count", stage="total") == 2
    assert value(m, "edge_seg_stage_seconds_sum", stage="total") == pytest.approx(0.457)
    assert value(m, "edge_seg_stage_seconds_bucket", stage="total", le="0.2") == 1
    assert m.snapshot()["stages_p50_ms"]["infer"] == pytest.approx(200.0)
    assert m.snapshot()["stages_p50_ms"]["total"] == pytest.approx(228.5)


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
        m.observe_stages(timings, 25.0)
        m.frame_processed()
        m.observe_segmentation(areas, 0.1)
        m.set_fps(30.0)
    per_frame_us = (time.perf_counter() - t0) / n * 1e6
    assert per_frame_us < 200, f"{per_frame_us:.1f} us per frame"  # ~15 us measured; generous for slow CI


# --- the metrics of a real loop ----------------------------------------------------------------


class SlowSink:
    """A sink stage after all the others (like a slow publish): it must still get a histogram, and
    every frame's end to end must include it."""

    name = "slow_sink"

    def __call__(self, result) -> None:
        time.sleep(0.025)


def _stage_counts(m: Metrics) -> dict[str, float]:
    return {labels[0][1]: v for (name, labels), v in samples(m).items() if name == "edge_seg_stage_seconds_count"}


def test_real_loop_exports_every_timed_stage_and_an_end_to_end_total(tiny_models, tmp_path):
    from conftest import write_manifest, write_scene_clip

    from edge_seg.config import parse_config
    from edge_seg.loop.runner import _quality, build

    clip = write_scene_clip(tmp_path / "clip.mp4", seed=5, frames=40)
    baseline = {"red": 0.25, "green": 0.25, "blue": 0.25, "dark": 0.25}
    model = write_manifest(tiny_models["colour_probs_uint8"], tmp_path / "model", baseline=baseline).parent
    # paced at 100 FPS: a live-like (not lossless) file, so the 25 ms sink makes the sink queue drop
    config = parse_config({"model": {"path": str(model)},
                           "source": {"uri": f"file://{clip}", "loop": False, "fps": 100},
                           "uncertainty": {"enabled": True}, "preview": {"enabled": True, "port": 0},
                           "output": {"video": str(tmp_path / "o.mp4"), "jsonl": str(tmp_path / "f.jsonl")}})
    built = build(config)
    built.pipeline.stages.append(SlowSink())  # after the metrics stage, the preview, video and JSONL sinks
    try:
        stats = built.pipeline.run()
    finally:
        built.segmenter.close()
    m = built.metrics
    names = [getattr(stage, "name", "") for stage in built.pipeline.stages]
    assert names.index("metrics") < names.index("preview") < names.index("video") < names.index("jsonl")
    counts = _stage_counts(m)
    # a paced file overwrites a frame the capture thread was too busy to take (live-like): on a loaded machine one
    # of the 40 can go that way, so the test counts what was captured rather than expecting all 40
    assert stats.completed >= 5 and 30 <= stats.captured <= 40, stats.line()
    per_frame = ("capture_age", "preprocess", "infer", "postprocess", "overlay", "crops", "metrics", "preview",
                 "video", "jsonl", "slow_sink", "total")
    assert {stage: counts.get(stage) for stage in per_frame} == dict.fromkeys(per_frame, stats.completed)
    assert counts["capture"] == counts["decode"] == stats.captured  # the capture thread's samples
    # total: capture timestamp to the end of the last stage, so every frame is over the 25 ms sink
    assert value(m, "edge_seg_stage_seconds_bucket", stage="total", le="0.02") == 0
    assert value(m, "edge_seg_stage_seconds_bucket", stage="slow_sink", le="0.02") == 0
    total_s = value(m, "edge_seg_stage_seconds_sum", stage="total")
    assert total_s == pytest.approx(stats.samples("end_to_end").sum() / 1000, rel=1e-9)
    assert total_s >= value(m, "edge_seg_stage_seconds_sum", stage="slow_sink")
    # counters: sink drops counted apart from capture drops
    assert value(m, "edge_seg_frames_processed_total") == stats.completed
    assert stats.sink_dropped > 0, stats.line()
    assert value(m, "edge_seg_frames_dropped_total", where="sink") == stats.sink_dropped
    assert value(m, "edge_seg_frames_dropped_total", where="capture") <= stats.dropped
    # the segmentation gauges: class areas of the last frame, its uncertainty, drift to the baseline
    areas = {c: value(m, "edge_seg_class_area_fraction", **{"class": c}) for c in baseline}
    assert sum(areas.values()) == pytest.approx(1.0)
    assert 0.0 <= value(m, "edge_seg_mean_uncertainty") <= 1.0
    drift = value(m, "edge_seg_drift_js_distance")
    want = js_distance([m.rolling_distribution()[c] for c in baseline], list(baseline.values()))
    assert drift == pytest.approx(want, abs=1e-9) and drift > 0
    # the MQTT metrics message carries the same drift (``edge-seg fleet status`` shows it)
    assert _quality(m) == {"drift_js": pytest.approx(drift), "mean_uncertainty": value(m, "edge_seg_mean_uncertainty")}


def test_a_failing_timing_listener_does_not_stop_the_loop(tiny_models):
    from edge_seg.loop.pipeline import Pipeline
    from edge_seg.loop.sinks import MetricsStage
    from edge_seg.loop.stats import LoopStats
    from edge_seg.segmenter import Segmenter
    from edge_seg.sources import open_source

    def broken(timings, end_to_end):
        raise RuntimeError("listener bug")

    stats, m = LoopStats(), Metrics()
    stats.listeners.append(broken)
    with Segmenter.create(model=tiny_models["colour_probs_uint8"]) as seg:
        stage = MetricsStage(m, stats)  # listens after the broken one: still told
        Pipeline(open_source("synthetic://?width=96&height=64&frames=12"), seg, stages=[stage], stats=stats).run()
    assert stats.completed == 12 and stats.captured == 12
    assert value(m, "edge_seg_stage_seconds_count", stage="total") == 12
    assert value(m, "edge_seg_stage_seconds_count", stage="capture") == 12


def test_the_outbox_gauge_follows_a_running_publisher_while_the_broker_is_down(tiny_models, tmp_path):
    from edge_seg.config import parse_config
    from edge_seg.demo.broker import free_port
    from edge_seg.loop.runner import build

    config = parse_config({"model": {"path": str(tiny_models["colour_probs_uint8"])},
                           "source": {"uri": "synthetic://?width=96&height=64"}, "pipeline": {"max_frames": 6},
                           "device": {"name": "cam", "state_dir": str(tmp_path / "state")},
                           "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"}})  # nothing listens there
    built = build(config)
    try:
        stats = built.pipeline.run()
        depth = built.publisher.outbox.stats().depth
        assert stats.completed == 6 and depth >= 1  # what the publish policy sent is kept for later
        assert value(built.metrics, "edge_seg_outbox_messages") == depth
    finally:
        built.segmenter.close()
        built.publisher.close()
