"""`edge-seg bench` runs every measurement and reports them in all its formats (numbers not judged here)."""

from __future__ import annotations

import csv
import json
import os
import re

import cv2
import numpy as np

from edge_seg.bench.system import current_memory_mb
from edge_seg.cli.main import main


def test_memory_split_puts_a_new_array_on_the_anonymous_side():
    rss0, file0 = current_memory_mb()
    block = np.ones(50_000_000, np.uint8)  # 50 MB, every page touched
    rss1, file1 = current_memory_mb()
    assert block[-1] == 1
    assert (rss1 - file1) - (rss0 - file0) > 45 and abs(file1 - file0) < 5


def test_bench_json_csv_and_compare_plot(tmp_path, capsys):
    plot, table = tmp_path / "cmp.png", tmp_path / "rows.csv"
    assert main(["bench", "--frames", "20", "--loop-frames", "60", "--width", "320", "--height", "180",
                 "--threads", "1", "--json", "--csv", str(table), "--compare", "@litert", "--plot", str(plot)]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert len(reports) == 2
    for report in reports:
        assert report["frame_size"] == [320, 180]
        assert set(report["frame_path_ms"]) == {"preprocess", "invoke", "postprocess", "upsample", "confidence",
                                                 "overlay"}
        assert report["bare_invoke_ms"]["p50"] > 0 and report["bare_invoke_fps"] > 0
        tracking = report["tracking_ms_per_frame"]
        assert tracking["instances"] == 20 and 0 < tracking["p50_ms"] <= tracking["p95_ms"]
        loop = report["loop"]
        assert loop["frames"] > 0 and 0 < loop["fps_ratio_to_bare_invoke"]
        assert {"infer", "overlay", "crops", "decode"} <= set(loop["wall_ms"]) and loop["peak_rss_mb"] > 0
        # the sampled peak splits into the process's own memory and mapped library pages (cv2, numpy, LiteRT)
        assert 0 < loop["sampled_peak_anonymous_mb"] < loop["sampled_rss_mb"] <= loop["peak_rss_mb"] + 1
        assert loop["sampled_file_backed_at_that_peak_mb"] > 10
        assert report["system"]["thermals"]["pi_throttled"] == "n/a"  # not a Raspberry Pi
        assert loop["clip"]["codec"] == "i420" and loop["clip"]["decode_alone"]["cpu_ms"] > 0
        assert 0 < loop["invoke_occupancy"] <= 1.05  # a share of the loop's wall time (timer granularity aside)
        by_thread = loop["cpu_ms_per_frame_by_thread"]
        assert by_thread["inference"] > 0 and by_thread["all_others"] > 0
        assert loop["pinned"] is (len(os.sched_getaffinity(0)) > 1)
        if loop["pinned"]:  # bare invoke measured again with the other CPUs busy, under each kind of load
            busy = report["bare_invoke_other_cpus_busy_ms"]
            assert set(busy) == set(loop["fps_ratio_to_invoke_with_other_cpus_busy"]) == {"integer", "copy"}
            assert all(b["p50"] > 0 for b in busy.values())
            assert all(r > 0 for r in loop["fps_ratio_to_invoke_with_other_cpus_busy"].values())
        # bare invoke timed after each window of 10 frames (the first window, start-up, not counted)
        pairs = loop["paired"]
        assert pairs["every"] == 10 and pairs["windows"] == 4 == len(pairs["ratios"]) == len(pairs["loop_fps"])
        assert min(pairs["bare_invoke_p50_ms"]) > 0
        assert pairs["ratio_min"] <= pairs["ratio_median"] <= pairs["ratio_max"]
        assert loop["fps_ratio_to_bare_invoke"] == pairs["ratio_median"]
        before_after = loop["bare_invoke_p50_before_after_ms"]
        assert len(before_after) == 2 and min(before_after) > 0
    rows = list(csv.DictReader(table.open()))
    assert {r["section"] for r in rows} == {"frame_path", "bare_invoke", "loop"}
    assert cv2.imread(str(plot)).shape[1] == 900


def test_bench_table_names_the_target(capsys):
    assert main(["bench", "--frames", "10", "--loop-frames", "40", "--width", "320", "--height", "180",
                 "--clip-codec", "mp4v"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tracking at 20 instances: p50 \d+\.\d{3}  p95 \d+\.\d{3} ms/frame \(target p50 <= 0\.5: "
                     r"(OK|OVER)\)", out)
    assert "outside invoke:" in out and "target <= 3" in out and "loop FPS" in out and "peak RSS" in out
    if len(os.sched_getaffinity(0)) > 1:
        assert "an integer loop (no memory traffic) running on the other CPUs" in out
    assert "per window, bare invoke p50 ms -> ratio:" in out
    assert "clip: mp4v" in out and "invoke occupancy" in out and "CPU ms per frame: inference thread" in out
    # affinity is restored after the pinned loop
    assert len(os.sched_getaffinity(0)) == os.cpu_count()


def test_paired_windows_leave_the_frames_that_waited_out_of_end_to_end():
    from edge_seg.bench.invoke import PairedWindows

    paired = object.__new__(PairedWindows)  # only the pause bookkeeping is used here
    paired.after_pause = [3, 7]
    samples = np.arange(10, dtype=float)
    assert paired.steady_end_to_end(samples).tolist() == [0, 1, 2, 5, 6, 9]
