"""A simulated fleet larger than one process can hold (``fleet_simulator.MAX_PER_PROCESS``): the same
``edge-seg fleet simulate`` command run in several processes, each with a slice of the device ids
(``--devices K --first J``), their final statistics added up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections import Counter

from edge_seg.cloud.fleet_simulator import MAX_PER_PROCESS
from edge_seg.errors import EdgeSegError


def run_split(argv: list[str], devices: int, stop: threading.Event, per_process: int = MAX_PER_PROCESS) -> dict:
    """Run ``edge-seg`` ``argv`` (a ``fleet simulate`` command line) once per slice of ``devices`` until they
    end (``--duration``) or ``stop`` is set (then SIGTERM); the summed statistics."""
    procs = []
    for first in range(0, devices, per_process):
        count = min(per_process, devices - first)
        procs.append(subprocess.Popen([sys.executable, "-m", "edge_seg.cli", *argv, "--devices", str(count),
                                       "--first", str(first)], stdout=subprocess.PIPE, text=True))
    while any(p.poll() is None for p in procs) and not stop.wait(0.5):
        pass
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    failed = [i for i, proc in enumerate(procs) if proc.returncode != 0]
    if failed:
        raise EdgeSegError(f"{len(failed)} of {len(procs)} simulator processes failed (see their errors above)")
    return merge([json.loads(out.strip().splitlines()[-1]) for out in outputs])


def merge(parts: list[dict]) -> dict:
    """One statistics dict from the processes' (sums; CPU per frame over all frames; the longest elapsed)."""
    frames = sum(p.get("frames", 0) for p in parts)
    cpu_ms = sum(p["cpu_ms_per_frame"] * max(p.get("frames", 0), 1) for p in parts)
    elapsed = max(p["elapsed_s"] for p in parts)
    sent, runs, counts = Counter(), Counter(), Counter()
    for p in parts:
        sent.update(p["sent"])
        runs.update(p["commands_run"])
        counts.update({k: p[k] for k in ("late", "errors", "statuses") if k in p})
    return {"devices": sum(p["devices"] for p in parts), "processes": len(parts), "elapsed_s": elapsed,
            "frames": frames, **counts, "frames_per_s": round(frames / elapsed, 1) if elapsed else 0.0,
            "cpu_ms_per_frame": round(cpu_ms / max(frames, 1), 3), "cpu_cores": round(cpu_ms / 1e3 / elapsed, 3),
            "sent": dict(sent), "commands_run": dict(runs)}


__all__ = ["merge", "run_split"]
