"""``edge-seg infer``: segment image files and write overlay, palette-PNG class map and JSON summary."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2

from edge_seg.errors import InputError
from edge_seg.maskio import palette_png
from edge_seg.segmenter import Segmenter
from edge_seg.view.overlay import Overlay

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class InferReport:
    written: list[Path]
    failed: list[tuple[Path, str]]


def image_paths(target: Path) -> list[Path]:
    """The image files of ``target`` (a file, or the images directly inside a directory)."""
    if not target.exists():
        raise InputError(f"no such file or directory: {target}")
    if target.is_file():
        return [target]
    paths = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {target}")
    return paths


def _outputs(segmenter: Segmenter, paths: list[Path], overlay: Overlay) -> Iterator[tuple[Path, object]]:
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            yield path, "not a readable image"
            continue
        result = segmenter.segment(frame)
        yield path, (result, overlay.annotate(frame, result))


def infer_files(segmenter: Segmenter, paths: list[Path], out_dir: Path, alpha: float = 0.5,
                contours: bool = False, legend: bool = True) -> InferReport:
    """Segment the images ``paths`` into ``out_dir``; unreadable images are reported and skipped.

    For ``name.ext`` it writes ``name_overlay.jpg`` (or .png for PNG input), ``name_mask.png``
    (palette PNG of class ids) and ``name.json`` (model, classes, area fractions, timings).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = Overlay(alpha=alpha, contours=contours, legend=legend)
    report = InferReport([], [])
    for path, outcome in _outputs(segmenter, paths, overlay):
        if isinstance(outcome, str):
            log.error("%s: %s, skipped", path, outcome)
            report.failed.append((path, outcome))
            continue
        result, drawn = outcome
        suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
        overlay_path = out_dir / f"{path.stem}_overlay{suffix}"
        cv2.imwrite(str(overlay_path), drawn)
        mask_path = out_dir / f"{path.stem}_mask.png"
        mask_path.write_bytes(palette_png(result.class_map, result.palette))
        summary = {"image": path.name, **result.summary(),
                   "outputs": {"overlay": overlay_path.name, "mask": mask_path.name}}
        json_path = out_dir / f"{path.stem}.json"
        json_path.write_text(json.dumps(summary, indent=2) + "\n")
        report.written.append(json_path)
    return report
