"""Parity report: what quantisation and conversion cost, measured on one validation set.

For every exported model (float32 / float16 / dynamic-range / PTQ int8 / QAT int8 TFLite, float
and Q/DQ ONNX) on the same images: per-class IoU, mIoU, pixel accuracy, the confusion matrix (as
a PNG), the file size, the invoke latency here (median and p90 over repeats) and the share of
pixels whose class agrees with the float32 TFLite model. Written as ``report.json`` and
``report.md`` with ``confusion_<name>.png`` beside them. Optionally the TFLite
``QuantizationDebugger``'s per-layer error summary for PTQ of the float model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from converters.formats import IGNORE_LABEL, SegDataset
from edge_seg.evaluate.semantic import confusion_matrix, metrics_from_confusion, plot_confusion

REFERENCE = "float32"


@dataclass(frozen=True)
class ModelFile:
    """One model to compare: a display name and its ``.tflite`` or ``.onnx`` path."""

    name: str
    path: Path


def runner_for(path: Path, num_threads: int = 2):
    """A runner (``labels``, ``segment``, ``size``) for a ``.tflite`` or ``.onnx`` file."""
    if Path(path).suffix == ".onnx":
        from converters.onnx import OnnxRunner

        return OnnxRunner(path, num_threads=num_threads)
    from converters.tflite import TFLiteRunner

    return TFLiteRunner(path, num_threads=num_threads)


def latency_ms(runner, repeats: int = 50) -> dict[str, float]:
    """Median and p90 of one inference at model size (input prepared once), in milliseconds."""
    rgb = np.random.default_rng(0).integers(0, 256, (*runner.size[::-1], 3), dtype=np.uint8)
    runner.raw(rgb)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        runner.raw(rgb)
        times.append(1000.0 * (time.perf_counter() - t))
    return {"median_ms": round(float(np.median(times)), 3), "p90_ms": round(float(np.percentile(times, 90)), 3)}


def _evaluate(runners: Mapping[str, object], dataset: SegDataset, num_classes: int, progress: bool):
    """Confusion matrices (frame resolution) and agreement with the reference (model resolution)."""
    cms = {name: np.zeros((num_classes, num_classes), np.int64) for name in runners}
    agree = {name: 0 for name in runners}
    total = 0
    reference = REFERENCE if REFERENCE in runners else next(iter(runners))
    for i in tqdm(range(len(dataset)), desc="parity", unit="img", disable=not progress):
        rgb, mask = dataset.read(i)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        labels = {}
        for name, runner in runners.items():
            small = cv2.resize(rgb, runner.size, interpolation=cv2.INTER_LINEAR)
            labels[name] = runner.labels(small)
            full = cv2.resize(labels[name], (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
            cms[name] += confusion_matrix(full, mask, num_classes, IGNORE_LABEL)
        ref = labels[reference]
        total += ref.size
        for name, lab in labels.items():
            if lab.shape == ref.shape:
                agree[name] += int((lab == ref).sum())
    return cms, {name: agree[name] / max(total, 1) for name in runners}, reference


def build_report(models: Sequence[ModelFile], dataset: SegDataset, out_dir: str | Path, *,
                 latency_repeats: int = 50, num_threads: int = 2, progress: bool = True,
                 extra: dict | None = None) -> dict:
    """Evaluate ``models`` on ``dataset``; write report.json, report.md and confusion PNGs to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(dataset.classes)
    runners = {m.name: runner_for(m.path, num_threads) for m in models}
    cms, agreement, reference = _evaluate(runners, dataset, len(classes), progress)
    rows = {}
    for m in models:
        metrics = metrics_from_confusion(cms[m.name], classes)
        png = plot_confusion(cms[m.name], classes, out / f"confusion_{m.name}.png")
        rows[m.name] = {
            "file": str(m.path), "bytes": Path(m.path).stat().st_size,
            "mean_iou": metrics["mean_iou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class_iou": {c: metrics["per_class"][c]["iou"] for c in classes},
            f"agreement_with_{reference}": round(agreement[m.name], 5),
            "latency": latency_ms(runners[m.name], latency_repeats), "confusion_png": png.name,
            "confusion_matrix": cms[m.name].tolist(),
        }
    report = {"classes": classes, "num_images": len(dataset), "reference": reference, "models": rows,
              "latency_threads": num_threads, **(extra or {})}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return report


def _fmt(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" if pct else f"{value:.3f}"


def markdown(report: dict) -> str:
    """The report as a Markdown page: the summary table, per-class IoU, then notes."""
    classes, models = report["classes"], report["models"]
    ref = report["reference"]
    lines = [f"# Parity report ({report['num_images']} validation images)", "",
             f"| model | mIoU % | pixel acc % | agrees with {ref} % | size KiB | invoke median ms | p90 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in models.items():
        lines.append(f"| {name} | {_fmt(row['mean_iou'])} | {_fmt(row['pixel_accuracy'])} | "
                     f"{_fmt(row[f'agreement_with_{ref}'])} | {row['bytes'] / 1024:.1f} | "
                     f"{row['latency']['median_ms']:.2f} | {row['latency']['p90_ms']:.2f} |")
    lines += ["", "## Per-class IoU %", "", "| model | " + " | ".join(classes) + " |",
              "|---|" + "---:|" * len(classes)]
    for name, row in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row["per_class_iou"][c]) for c in classes) + " |")
    lines += ["", "Confusion matrices: " + ", ".join(f"[{n}]({r['confusion_png']})" for n, r in models.items()),
              "", f"Latency: LiteRT (XNNPACK) / ONNX Runtime CPU, {report['latency_threads']} threads, on the "
              "machine that wrote this report."]
    if report.get("quantization_debugger"):
        lines += ["", "## Per-layer PTQ error (QuantizationDebugger, worst layers first)", "",
                  "| op | tensor | rmse / scale |", "|---|---|---:|"]
        for row in report["quantization_debugger"]["worst"]:
            lines.append(f"| {row['op_name']} | {row['tensor_name']} | {row['rmse_over_scale']:.3f} |")
    return "\n".join(lines) + "\n"


def quantization_debug(model, representative, top: int = 10) -> dict:
    """Per-layer error of full-int8 PTQ of a float Keras model (TFLite ``QuantizationDebugger``).

    Returns the ``top`` layers by RMSE divided by the output scale (>~0.3 is a layer worth a look).
    """
    import csv
    import io
    import tempfile

    import tensorflow as tf

    from converters.tflite import _converter

    with tempfile.TemporaryDirectory(prefix="edge_seg_qdebug_") as tmp:
        converter = _converter(model, tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative)
        debugger.run()
        buffer = io.StringIO()
        debugger.layer_statistics_dump(buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    out = []
    for row in rows:
        try:
            ratio = float(row["mean_squared_error"]) ** 0.5 / float(row["scale"])
        except (KeyError, ValueError, ZeroDivisionError):
            continue
        out.append({"op_name": row.get("op_name", ""), "tensor_name": row.get("tensor_name", ""),
                    "rmse_over_scale": round(ratio, 4)})
    out.sort(key=lambda r: -r["rmse_over_scale"])
    return {"layers": len(out), "worst": out[:top]}
