"""Tracking against ground-truth ids: the bundled instance model on the crossing/touching clip."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_seg.cli.main import main
from edge_seg.demo.instance_clips import render_instance_clip
from edge_seg.evaluate.tracking import run_tracking_eval
from edge_seg.segmenter import DEFAULT_MODEL, Segmenter

INSTANCE_MODEL = DEFAULT_MODEL.parent / "instance"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pandas/motmetrics internals


def test_clip_objects_keep_their_ids_and_the_crossing_hides_one():
    frames = list(render_instance_clip(1, 60))
    ids = [set(np.unique(f.instances)) - {0} for f in frames]
    assert all(s == {1, 2, 3, 4, 5} for s in ids[:20])
    areas = [int((f.instances == 1).sum()) for f in frames]
    assert min(areas) < 0.5 * max(areas)  # object 1 is half hidden or more at the crossing
    near = 0
    for f in frames:  # the pair (ids 3 and 4, one class) touches: 3 grown by 2 px reaches 4
        grown = cv2.dilate((f.instances == 3).astype(np.uint8),
                           np.ones((5, 5), np.uint8)).astype(bool)
        near += bool((f.instances[grown] == 4).any())
        assert f.mask[f.instances == 3][0] == f.mask[f.instances == 4][0]
    assert near >= 0.3 * len(frames)  # measured: 26 of 60 frames (triangles touch at some angles only)


SEEDS = range(1, 7)


def test_bundled_instance_model_meets_idf1_and_id_switch_targets_over_six_clips(tmp_path):
    results = {}
    with Segmenter.create(model=INSTANCE_MODEL) as seg:
        for seed in SEEDS:
            results[seed], path = run_tracking_eval(seg, tmp_path / str(seed), seed=seed, frames=150)
            assert json.loads(Path(path).read_text())["idf1"] == results[seed]["idf1"]
    for seed, r in results.items():
        print(f"\nseed {seed}: IDF1 {r['idf1']:.3f} MOTA {r['mota']:.3f} HOTA {r['hota']:.3f} "
              f"switches {r['num_switches']} ({r['switches_per_100']:.2f}/100) "
              f"track {r['track_ms_p50']:.3f} ms p50", end="")
    idf1 = [r["idf1"] for r in results.values()]
    assert all(r["num_unique_objects"] == 5 and r["num_objects"] >= 600 for r in results.values())
    # measured (mask IoU, recovery by box IoU): 0.984 0.952 0.976 0.823 0.974 0.771, mean 0.913; the two low
    # clips lose the touching same-class pair to detector flicker and merges (seed 4: recall 0.88)
    assert np.mean(idf1) >= 0.85 and sum(v >= 0.85 for v in idf1) >= 4
    assert min(idf1) >= 0.72
    assert all(r["switches_per_100"] <= 2.0 for r in results.values())
    assert np.mean([r["mota"] for r in results.values()]) >= 0.8
    assert np.mean([r["hota"] for r in results.values()]) >= 0.75  # measured 0.804 (DetA 0.78, AssA 0.84)
    assert all(0 < r["deta"] <= 1 and 0 < r["assa"] <= 1 for r in results.values())


def test_eval_tracking_command_prints_the_scores(tmp_path, capsys):
    assert main(["eval", "--tracking", "--frames", "40", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "IDF1" in out and "MOTA" in out and "HOTA" in out and "ID switches" in out
    assert (tmp_path / "tracking.json").is_file()


def test_eval_tracking_refuses_a_semantic_model(tmp_path, capsys):
    assert main(["eval", "--tracking", "--model", str(DEFAULT_MODEL.parent / "default" / "manifest.json"),
                 "--out", str(tmp_path)]) == 2
    assert "needs an instance model" in capsys.readouterr().err
