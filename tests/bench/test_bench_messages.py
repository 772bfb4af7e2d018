"""``edge-seg bench-messages``: one JSON line per model resolution and format, from real encodes."""

from __future__ import annotations

import json
import subprocess
import sys

from edge_seg.bench.messages import SIZES
from edge_seg.cli.main import main


def test_bench_messages_prints_a_line_per_size_and_format(capsys):
    assert main(["bench-messages", "--n", "8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(tuple(r["model_size"]), r["fmt"]) for r in rows] == [(s, f) for s in SIZES for f in ("rle", "png")]
    for row in rows:
        assert 0 < row["payload_bytes_mean"] <= row["payload_bytes_max"] < 128_000
        assert 0 < row["fraction_of_raw_max"] < 1 and row["encode_ms_median"] > 0
    small = {r["fmt"]: r["payload_bytes_mean"] for r in rows if tuple(r["model_size"]) == SIZES[0]}
    big = {r["fmt"]: r["payload_bytes_mean"] for r in rows if tuple(r["model_size"]) == SIZES[-1]}
    assert big["rle"] > small["rle"]  # a finer class map costs more bytes


def test_bench_messages_refuses_a_count_below_one(capsys):
    assert main(["bench-messages", "--n", "0"]) == 2
    assert capsys.readouterr().err.strip() == "edge-seg: error: --n must be at least 1, got 0"


def test_a_reader_that_leaves_early_is_not_an_error():
    proc = subprocess.run(f"{sys.executable} -m edge_seg.cli bench-messages --n 8 | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr
