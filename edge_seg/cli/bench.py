"""``edge-seg bench`` (per-stage latency, bare invoke vs the loop, memory, thermals) and ``edge-seg
bench-messages`` (mask-message size and encode time)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_seg.cli.common import model_args


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_seg.bench.report import plot_compare, table, write_csv
    from edge_seg.bench.run import run_bench
    from edge_seg.cli.checks import bench_specs
    from edge_seg.segmenter import Segmenter

    reports = []
    for model, backend, mean, std, norm in bench_specs(args):  # checks every argument before the first bench
        with Segmenter.create(model=model, backend=backend, num_threads=args.threads, mean=mean, std=std,
                              norm=norm, input_size=args.input_size, upsample=args.upsample) as seg:
            label = (f"{seg.manifest.name} {seg.manifest.version} ({seg.loaded.backend.name}, threads {args.threads}, "
                     f"upsample {args.upsample})")
            reports.append(run_bench(seg, frames=args.frames, frame_size=(args.width, args.height),
                                     source=args.source, loop_frames=args.loop_frames, progress=not args.json,
                                     label=label, clip_codec=args.clip_codec))
    if args.json:
        print(json.dumps([r.as_dict() for r in reports] if len(reports) > 1 else reports[0].as_dict(), indent=2))
    else:
        for report in reports:
            print("\n".join(table(report)))
    if args.csv:
        write_csv(reports, args.csv)
    if len(reports) > 1:
        path = plot_compare(reports, args.plot)
        if not args.json:
            print(f"comparison plot: {path}")
    return 0


def cmd_bench_messages(args: argparse.Namespace) -> int:
    from edge_seg.bench.messages import SIZES, measure
    from edge_seg.errors import InputError

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    for size in SIZES:
        for fmt in ("rle", "png"):
            print(json.dumps(measure(size, fmt, args.n)), flush=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="per-stage latency percentiles, bare invoke vs loop FPS, memory, thermals")
    model_args(p)
    p.add_argument("--frames", type=int, default=300, help="frames per measurement (default 300)")
    p.add_argument("--loop-frames", type=int, default=None, help="frames for the loop (default: --frames)")
    p.add_argument("--width", type=int, default=1280, help="frame width (default 1280)")
    p.add_argument("--height", type=int, default=720, help="frame height (default 720)")
    p.add_argument("--source", default=None, help="loop source URI (default: a generated WxH file:// clip)")
    p.add_argument("--clip-codec", choices=("i420", "mjpg", "mp4v"), default="i420",
                   help="how the generated clip is stored: i420 = raw YUV frames, what a camera delivers "
                        "(default); mp4v / mjpg add a software video / JPEG decode to the loop")
    p.add_argument("--upsample", choices=("bilinear", "nearest"), default="bilinear",
                   help="how the class map reaches frame size (config overlay.upsample; default bilinear)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--csv", type=Path, default=None, help="also write the per-stage rows as CSV")
    p.add_argument("--compare", default=None, metavar="MODEL[@BACKEND]",
                   help="bench a second model and/or backend side by side, e.g. other_model/ or @litert")
    p.add_argument("--plot", type=Path, default=None, help="with --compare: the comparison plot "
                   "(default out/bench_compare.png)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-messages", help="mask-message size and encode time at several model resolutions "
                                              "(RLE vs PNG, one JSON line each)")
    p.add_argument("--n", type=int, default=200, help="encodes per configuration (default 200)")
    p.set_defaults(func=cmd_bench_messages)
