"""Driver for the power-loss test: one process imports everything once, then forks one child per kill point.

Each child copies nothing itself: the driver copies the template state directory to ``WORK/<k>``,
forks, and the child runs ``install_bundle`` with ``Checkpoints(kill_at=k)``, which SIGKILLs it at
its k-th checkpoint. ``--trace FILE`` runs one child without a kill and writes the checkpoint names.
Prints one JSON object: ``{"k": {"signal": 9 | null, "exit": int | null}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import cv2  # noqa: F401 - imported before forking, so children start fast
import numpy  # noqa: F401

from edge_seg.backends.litert import interpreter_module
from edge_seg.demo.clips import render_clip  # noqa: F401
from edge_seg.ota.bundle import load_public_keys
from edge_seg.ota.install import InstallOptions, install_bundle
from edge_seg.ota.store import Checkpoints, ModelStore
from edge_seg.segmenter import Segmenter  # noqa: F401


def run_child(template: Path, dest: Path, bundle: Path, keys: dict, checkpoints: Checkpoints) -> dict:
    shutil.copytree(template, dest, symlinks=True)
    pid = os.fork()
    if pid == 0:
        try:
            install_bundle(bundle, ModelStore(dest / "models"), keys, InstallOptions(), checkpoint=checkpoints)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the child reports by exit code
            traceback.print_exc()
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--template", type=Path, required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--pubkey", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--trace", type=Path, default=None)
    p.add_argument("--points", default="")
    args = p.parse_args()
    interpreter_module()
    keys = load_public_keys([args.pubkey])
    results = {}
    if args.trace is not None:
        results["trace"] = run_child(args.template, args.work / "trace", args.bundle, keys,
                                     Checkpoints(trace=str(args.trace)))
    for k in (int(v) for v in args.points.split(",") if v):
        results[str(k)] = run_child(args.template, args.work / str(k), args.bundle, keys, Checkpoints(kill_at=k))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
