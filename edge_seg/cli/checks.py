"""Up-front checks of what a user asked for, so a mistake is a one-line ``InputError`` before any work starts
(not a traceback, and not a failure noticed only after minutes of benchmarking or frames of a run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_seg.errors import InputError

MIN_BENCH_SIZE = 16  # the smallest scene the generated bench clip can render
DEFAULT_PLOT = Path("out/bench_compare.png")


def bench_specs(args: argparse.Namespace) -> list[tuple[Path, str | None, list | None, list | None, str | None]]:
    """Check ``edge-seg bench``'s arguments; the (model, backend, mean, std, norm) of each model to bench.

    A ``--compare`` model is resolved (path, manifest, backend name) without loading it, so a mistake in
    it is reported before the first bench runs, and its memory does not count in the first one's peak RSS.
    ``--mean``/``--std``/``--norm`` apply to ``--model``, and to ``--compare`` when that only names another backend.
    Sets ``args.plot`` to its default when comparing without one.
    """
    from edge_seg.loop.sinks import writable_file
    from edge_seg.model import check_model

    for flag, value in (("--frames", args.frames), ("--loop-frames", args.loop_frames)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if args.width < MIN_BENCH_SIZE or args.height < MIN_BENCH_SIZE:
        raise InputError(f"--width and --height must be at least {MIN_BENCH_SIZE} (the generated clip's smallest "
                         f"frame), got {args.width}x{args.height}")
    if args.plot is not None and not args.compare:
        raise InputError("--plot draws the --compare comparison: add --compare MODEL[@BACKEND], or drop --plot")
    if args.csv is not None:
        writable_file(args.csv, "--csv")
    specs = [(args.model, args.backend, args.mean, args.std, args.norm)]
    if args.compare:
        other_model, _, other_backend = args.compare.partition("@")
        model = Path(other_model) if other_model else args.model
        backend = other_backend or args.backend
        check_model(model, backend)
        args.plot = writable_file(args.plot or DEFAULT_PLOT, "--plot")
        same = not other_model
        specs.append((model, backend, *((args.mean, args.std, args.norm) if same else (None, None, None))))
    return specs
