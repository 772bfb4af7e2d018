"""Bench output: the table, CSV rows, and a side-by-side PNG plot for ``--compare``."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from edge_seg.bench.invoke import BUSY_KINDS
from edge_seg.bench.run import FRAME_STAGES, BenchReport


def table(report: BenchReport, target_ms: float = 3.0, tracking_target_ms: float = 0.5) -> list[str]:
    """Human-readable lines for one report."""
    w, h = report.frame_size
    lines = [f"== {report.label}: frame path at {w}x{h} (ms) ==", f"{'stage':<14}{'p50':>9}{'p95':>9}{'p99':>9}"]
    for stage in FRAME_STAGES:
        p = report.frame_path[stage]
        lines.append(f"{stage:<14}{p['p50']:9.3f}{p['p95']:9.3f}{p['p99']:9.3f}")
    outside, invoke = report.outside_invoke_ms, report.frame_path["invoke"]["p50"]
    verdict = "OK" if outside <= target_ms else "OVER"
    lines.append(f"outside invoke: {outside:.3f} ms (target <= {target_ms:g}: {verdict}); "
                 f"outside / invoke = {outside / invoke:.2f}")
    tr = report.tracking
    if tr:
        verdict = "OK" if tr["p50_ms"] <= tracking_target_ms else "OVER"
        lines.append(f"tracking at {tr['instances']} instances: p50 {tr['p50_ms']:.3f}  p95 {tr['p95_ms']:.3f} "
                     f"ms/frame (target p50 <= {tracking_target_ms:g}: {verdict})")
    inv = report.invoke
    lines.append(f"== bare invoke: p50 {inv['p50']:.3f}  p95 {inv['p95']:.3f}  p99 {inv['p99']:.3f} ms  "
                 f"({report.bare_fps:.1f} FPS) ==")
    loop = report.loop
    if loop:
        lines.append(f"== loop on {loop['source']} ==")
        lines.append(f"{'stage':<14}{'p50':>9}{'p95':>9}{'p99':>9}{'cpu/frame':>11}")
        for stage, p in loop["wall_ms"].items():
            cpu = loop["cpu_ms_per_frame"].get(stage)
            cpu_text = f"{cpu:11.3f}" if cpu is not None else f"{'':>11}"
            lines.append(f"{stage:<14}{p['p50']:9.3f}{p['p95']:9.3f}{p['p99']:9.3f}{cpu_text}")
        clip = loop.get("clip")
        if clip:
            alone = clip["decode_alone"]
            lines.append(f"clip: {clip['codec']} ({clip['emulates']}); reading + decoding it alone costs "
                         f"{alone['cpu_ms']:.3f} ms CPU per frame (all threads)")
        before, after = loop.get("bare_invoke_p50_before_after_ms", (inv["p50"], inv["p50"]))
        lines.append(f"bare invoke p50 just before / after the loop: {before:.3f} / {after:.3f} ms")
        lines.append(f"loop FPS {loop['fps']:.1f} / bare invoke FPS {report.bare_fps:.1f} = "
                     f"{loop['fps_ratio_to_bare_invoke_before_after']:.2f};  frames {loop['frames']}, "
                     f"captured {loop['captured']}, dropped {loop['dropped']}, sink-dropped {loop['sink_dropped']}")
        if loop.get("streams", 1) > 1:
            fps = ", ".join(f"{v:.1f}" for v in loop["per_stream_fps"])
            lines.append(f"{loop['streams']} streams, one model, batch {loop.get('batch', 1)}: per-stream FPS {fps} "
                         f"(spread "
                         f"{100 * loop['per_stream_fps_spread']:.1f} %); peak RSS {loop['peak_rss_mb']:.0f} MB vs "
                         f"{loop['peak_rss_mb_one_stream']:.0f} MB for one stream "
                         f"({loop['peak_rss_mb'] / loop['peak_rss_mb_one_stream']:.2f} x)")
        pairs = loop.get("paired")
        if pairs:
            lines.append(f"loop FPS / bare-invoke FPS, paired in {pairs['windows']} windows of {pairs['every']} frames "
                         f"(bare invoke timed on the inference thread after each): median "
                         f"{pairs['ratio_median']:.2f} (min {pairs['ratio_min']:.2f}, max {pairs['ratio_max']:.2f})")
            pairs_text = ", ".join(f"{bare:.2f}->{ratio:.2f}" for bare, ratio in zip(pairs["bare_invoke_p50_ms"],
                                                                                  pairs["ratios"]))
            lines.append(f"  per window, bare invoke p50 ms -> ratio: {pairs_text}")
        by_thread = loop.get("cpu_ms_per_frame_by_thread")
        if by_thread:
            where = "inference thread pinned to one CPU, the rest to the others" if loop.get("pinned") else "unpinned"
            lines.append(f"CPU ms per frame: inference thread {by_thread['inference']:.3f}, every other thread "
                         f"{by_thread['all_others']:.3f} ({where})")
        infer_p50 = loop["wall_ms"].get("infer", {}).get("p50", float("nan"))
        lines.append(f"invoke occupancy {loop['invoke_occupancy']:.2f} (share of the loop's time spent in invoke: "
                     f"what an accelerator would be kept busy); invoke in the loop p50 {infer_p50:.3f} ms = "
                     f"{infer_p50 / inv['p50']:.2f} x bare")
        ratios = loop.get("fps_ratio_to_invoke_with_other_cpus_busy", {})
        for kind, busy in report.contended_invoke.items():
            lines.append(f"bare invoke with {BUSY_KINDS[kind]} running on the other CPUs: "
                         f"p50 {busy['p50']:.3f} ms = {busy['p50'] / inv['p50']:.2f} x idle; "
                         f"loop FPS / this invoke's FPS = {ratios[kind]:.2f}")
        if report.contended_invoke:
            lines.append("  (> 1 x idle: the CPUs share execution units or clocks (an integer loop) or memory "
                         "bandwidth (copying), so a busy second CPU slows invoke and no loop can reach bare FPS)")
        lines.append(f"peak RSS of the process up to the loop's end {loop['peak_rss_mb']:.0f} MB (10^6 bytes);  "
                     f"CPU {loop['cpu_percent']:.0f} %")
        if loop.get("sampled_peak_anonymous_mb"):
            lines.append(f"  of which, sampled in the loop: the process's own (anonymous) memory peaked at "
                         f"{loop['sampled_peak_anonymous_mb']:.0f} MB, beside "
                         f"{loop['sampled_file_backed_at_that_peak_mb']:.0f} MB of mapped library pages "
                         "(clean, shared; more resident right after an install, when the page cache holds "
                         "every page of the freshly written libraries)")
    th = report.system.get("thermals", {})
    lines.append(f"thermals: {th.get('zones_c', 'n/a')}; throttled: {th.get('pi_throttled', 'n/a')}; "
                 f"jetson: {th.get('jetson', 'n/a')}")
    return lines


def rows(report: BenchReport) -> list[dict]:
    """Flat rows (section, stage, p50, p95, p99, cpu_ms) for CSV."""
    out = [{"label": report.label, "section": "frame_path", "stage": s, **report.frame_path[s], "cpu_ms": ""}
           for s in FRAME_STAGES]
    out.append({"label": report.label, "section": "bare_invoke", "stage": "invoke", **report.invoke, "cpu_ms": ""})
    for stage, p in report.loop.get("wall_ms", {}).items():
        out.append({"label": report.label, "section": "loop", "stage": stage, **p,
                    "cpu_ms": report.loop["cpu_ms_per_frame"].get(stage, "")})
    return out


def write_csv(reports: list[BenchReport], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "section", "stage", "p50", "p95", "p99", "cpu_ms"])
        writer.writeheader()
        for report in reports:
            writer.writerows(rows(report))
    return path


def plot_compare(reports: list[BenchReport], path: Path, width: int = 900) -> Path:
    """Horizontal bars of p50 ms per loop stage (and bare invoke, loop FPS) for each report."""
    colours = [(200, 120, 40), (40, 160, 230), (90, 200, 90), (180, 80, 200)]
    stages = ["bare invoke"] + [s for s in reports[0].loop.get("wall_ms", {}) if s != "end_to_end"]

    def value(report: BenchReport, stage: str) -> float:
        if stage == "bare invoke":
            return report.invoke["p50"]
        return report.loop.get("wall_ms", {}).get(stage, {}).get("p50", 0.0)

    vmax = max(max(value(r, s) for s in stages) for r in reports) or 1.0
    bar, gap, left = 18, 14, 150
    height = 60 + len(stages) * (len(reports) * bar + gap) + 30 * len(reports)
    image = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, "p50 ms per stage (loop) and bare invoke", (10, 28), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    y = 50
    for stage in stages:
        cv2.putText(image, stage, (10, y + bar), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for i, report in enumerate(reports):
            v = value(report, stage)
            length = int((width - left - 90) * v / vmax)
            cv2.rectangle(image, (left, y), (left + max(length, 1), y + bar - 3), colours[i % 4], -1)
            cv2.putText(image, f"{v:.2f}", (left + length + 5, y + bar - 6), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            y += bar
        y += gap
    for i, report in enumerate(reports):
        fps = report.loop.get("fps", float("nan"))
        text = f"{report.label}: loop {fps:.1f} FPS, bare {report.bare_fps:.1f} FPS"
        cv2.rectangle(image, (10, y + 4), (26, y + 18), colours[i % 4], -1)
        cv2.putText(image, text, (34, y + 17), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        y += 30
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path
