"""Train, quantise and export the bundled default model (``edge_seg/models/default``).

    python -m converters.default_model [--out edge_seg/models/default] [--quick]

Steps: render train / validation / held-out scene sets with ``edge_seg.demo.scenes`` (disjoint seeds),
train the float network, fold its BatchNorm and fine-tune it quantisation-aware with one weight
scale per tensor, export full-int8 TFLite (and, kept in the work folder for measurement only,
float TFLite and per-tensor PTQ int8 of the float network), measure them on the held-out frames
with LiteRT the way the device runs them, and write ``model_int8.tflite`` + ``manifest.json``.
``--quick`` is a tiny configuration for tests and smoke runs (well under a minute of training).

Per-tensor weights (``Recipe.per_channel=False``, ``--per-channel`` for the other): the
per-channel int8 file carried 5,389 scales and int64 zero points (65 KB of 217,752 B, 0.44 x the
float file). Per-tensor with stripped tensor names: 141,024 B, 0.29 x the float32 file (482,568 B,
also stripped); held-out mIoU float 0.8578, QAT int8 0.8576, PTQ int8 0.8560; invoke time
unchanged. The manifest's ``metrics`` record these (``float_tflite_bytes``, ``int8_tflite_bytes``,
``int8_float_size_ratio``, ``ptq_miou``, ``per_channel``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import edge_seg  # noqa: E402
from converters import data, qat, tflite  # noqa: E402
from converters.architectures import ArchConfig, build_model, fold_batchnorm  # noqa: E402
from edge_seg.demo.scenes import CLASSES, PALETTE, write_dataset  # noqa: E402
from edge_seg.evaluate.semantic import evaluate_dataset  # noqa: E402

log = logging.getLogger("converters.default_model")

MODEL_NAME = "edge-seg-default"
MODEL_VERSION = "1.0.0"
TRAIN_SEED, VAL_SEED, HELDOUT_SEED = 0, 1_000_000, 2_000_000
BUNDLED = Path(edge_seg.__file__).parent / "models" / "default"
QUICK_OUT = Path("out") / "default-quick"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the bundled model; the defaults are what ships."""

    size: int = 192  # model input is size x size
    alpha: float = 1.0
    render: int = 256  # short side of the rendered scenes; they are resized (stretched) like on the device
    aspects: tuple[float, ...] = (1.0, 16 / 9, 4 / 3, 9 / 16)  # width / height of the scenes, used in turn
    train_images: int = 4000
    val_images: int = 200
    heldout_images: int = 200
    batch: int = 16
    epochs: int = 8
    qat_epochs: int = 1
    lr: float = 3e-3
    qat_lr: float = 5e-5
    calibration_images: int = 100
    per_channel: bool = False  # int8 weight scales per output channel (True) or one per tensor
    seed: int = 0


QUICK = Recipe(size=64, alpha=0.25, render=96, train_images=48, val_images=16, heldout_images=16,
               batch=16, epochs=1, qat_epochs=1, calibration_images=8)


def render_sizes(recipe: Recipe) -> list[tuple[int, int]]:
    """(width, height) of the rendered scenes: ``render`` is the short side, one size per aspect ratio.

    Cameras deliver 16:9 or 4:3 frames that the device stretches to the square input, so the model
    trains on stretched scenes of every common aspect ratio, not only square ones.
    """
    short = recipe.render
    return [(round(short * a), short) if a >= 1 else (short, round(short / a)) for a in recipe.aspects]


def render_sets(work: Path, recipe: Recipe) -> dict[str, Path]:
    """Write the three scene sets under ``work`` (train / val / heldout); returns their folders."""
    size = render_sizes(recipe)
    sets = {"train": (recipe.train_images, TRAIN_SEED), "val": (recipe.val_images, VAL_SEED),
            "heldout": (recipe.heldout_images, HELDOUT_SEED)}
    out = {}
    for name, (n, seed) in sets.items():
        t = time.perf_counter()
        out[name] = write_dataset(work / name, n, seed=seed + recipe.seed, size=size)
        log.info("rendered %d %s scenes at %s in %.1f s", n, name, " / ".join(f"{w}x{h}" for w, h in size),
                 time.perf_counter() - t)
    return out


def class_fractions(masks: np.ndarray) -> dict[str, float]:
    """Fraction of pixels per class over a stack of masks (the manifest's drift baseline)."""
    counts = np.bincount(masks.ravel(), minlength=len(CLASSES))[: len(CLASSES)].astype(np.float64)
    return {name: round(float(c / counts.sum()), 5) for name, c in zip(CLASSES, counts)}


def invoke_ms(model: Path, repeats: int = 50, threads: int = 2) -> float:
    """Median LiteRT invoke time of ``model`` in milliseconds (XNNPACK, ``threads`` threads)."""
    runner = tflite.TFLiteRunner(model, num_threads=threads)
    runner.raw(np.zeros((*runner.size[::-1], 3), np.uint8))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.invoke()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def build(out_dir: Path, work: Path, recipe: Recipe, verbose: int = 2) -> dict:
    """Run the whole recipe; write the int8 model and manifest to ``out_dir``. Returns the summary."""
    start = time.perf_counter()
    keras.utils.set_random_seed(recipe.seed)
    # deterministic kernels too: the same recipe gives the same model on every run (the seed alone
    # does not: a 1-epoch smoke model once came out with 90 % int8 agreement instead of the usual 99.5 %)
    tf.config.experimental.enable_op_determinism()
    sets = render_sets(work, recipe)
    size = (recipe.size, recipe.size)
    train_x, train_y = data.load_arrays(sets["train"], size)
    val_x, val_y = data.load_arrays(sets["val"], size)
    train = data.dataset_from_arrays(train_x, train_y, recipe.batch, seed=recipe.seed)
    val = data.dataset_from_arrays(val_x, val_y, recipe.batch, shuffle=False, augment=False)

    arch = ArchConfig(width=recipe.size, height=recipe.size, num_classes=len(CLASSES), alpha=recipe.alpha)
    model = build_model(arch)
    log.info("model: %d parameters, input %dx%d", model.count_params(), *size)
    config = qat.TrainConfig(epochs=recipe.epochs, qat_epochs=recipe.qat_epochs, lr=recipe.lr,
                             qat_lr=recipe.qat_lr, verbose=verbose)
    t = time.perf_counter()
    qat.train_float(model, train, val, config)
    float_s = time.perf_counter() - t
    t = time.perf_counter()
    # per-tensor QAT needs BatchNorm folded first (see qat.quantize); the float network is unchanged
    qat_source = model if recipe.per_channel else fold_batchnorm(model, arch)
    qat_model = qat.train_qat(qat.quantize(qat_source, per_channel=recipe.per_channel), train, val, config)
    qat_s = time.perf_counter() - t

    representative = data.representative_images(train_x, recipe.calibration_images, recipe.seed)
    identity = {"name": MODEL_NAME, "version": MODEL_VERSION, "classes": CLASSES, "palette": PALETTE}
    _, agreement = tflite.convert(qat_model, out_dir, representative, val_x[:20], per_channel=recipe.per_channel,
                                  strip_names=True, **identity)
    int8_path = out_dir / tflite.INT8_NAME
    int8_runner = tflite.TFLiteRunner(int8_path)
    float_path = work / tflite.FLOAT_NAME  # for measurement only; not shipped
    float_path.write_bytes(tflite.strip_tensor_names(tflite.export_float(model)))
    ptq_path = work / "model_ptq_int8.tflite"  # post-training quantisation of the float network, for comparison
    ptq_path.write_bytes(tflite.strip_tensor_names(
        tflite.export(model, "int8", representative, per_channel=recipe.per_channel)))

    results = {}
    for kind, path in (("float", float_path), ("int8", int8_path), ("ptq", ptq_path)):
        runner = tflite.TFLiteRunner(path)
        results[kind] = evaluate_dataset(runner.segment, sets["heldout"], len(CLASSES), CLASSES,
                                         progress=verbose > 0)
    _, heldout_y = data.load_arrays(sets["heldout"], (recipe.render, recipe.render))
    metrics = {"float_miou": round(results["float"]["mean_iou"], 4),
               "int8_miou": round(results["int8"]["mean_iou"], 4),
               "ptq_miou": round(results["ptq"]["mean_iou"], 4),
               "heldout_frames": recipe.heldout_images,
               "per_channel": float(recipe.per_channel),
               "float_tflite_bytes": float_path.stat().st_size,
               "int8_tflite_bytes": int8_path.stat().st_size,
               "int8_float_size_ratio": round(int8_path.stat().st_size / float_path.stat().st_size, 4)}
    for name in CLASSES:
        metrics[f"int8_iou_{name}"] = round(results["int8"]["per_class"][name]["iou"] or 0.0, 4)
    manifest = tflite.write_manifest(out_dir, tflite.INT8_NAME, baseline=class_fractions(heldout_y),
                                     metrics=metrics, **identity)
    return {
        "out": str(out_dir), "manifest": str(manifest), "recipe": asdict(recipe), **metrics,
        "int8_bytes": int8_path.stat().st_size, "float_bytes": float_path.stat().st_size,
        "input_quant": [int8_runner.input.scale, int8_runner.input.zero_point],
        "output_quant": [int8_runner.output.scale, int8_runner.output.zero_point],
        "int8_keras_argmax_agreement": round(agreement, 4),
        "invoke_ms_int8": round(invoke_ms(int8_path), 2), "invoke_ms_float": round(invoke_ms(float_path), 2),
        "train_float_s": round(float_s), "train_qat_s": round(qat_s),
        "total_s": round(time.perf_counter() - start),
    }


def _summary(s: dict) -> str:
    return "\n".join([
        f"wrote {s['out']}/{tflite.INT8_NAME} ({s['int8_bytes'] / 1024:.0f} KiB) and {s['manifest']}",
        f"size: int8 {s['int8_bytes']} B, float {s['float_bytes']} B, ratio {s['int8_float_size_ratio']:.3f} "
        f"(weights per {'channel' if s['per_channel'] else 'tensor'}, tensor names stripped)",
        f"held-out mIoU ({s['heldout_frames']} frames): float {s['float_miou']:.4f}, int8 QAT {s['int8_miou']:.4f}, "
        f"int8 PTQ {s['ptq_miou']:.4f} "
        f"(per class int8: " + ", ".join(f"{c} {s[f'int8_iou_{c}']:.3f}" for c in CLASSES) + ")",
        f"int8 vs QAT Keras argmax agreement {s['int8_keras_argmax_agreement']:.4f}; "
        f"uint8 input scale {s['input_quant'][0]:.8f} zp {s['input_quant'][1]}, "
        f"output scale {s['output_quant'][0]:.8f} zp {s['output_quant'][1]}",
        f"invoke (LiteRT XNNPACK, 2 threads): int8 {s['invoke_ms_int8']} ms, float {s['invoke_ms_float']} ms",
        f"time: float training {s['train_float_s']} s, QAT {s['train_qat_s']} s, total {s['total_s']} s",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.default_model", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for model_int8.tflite + manifest.json (default: the bundled "
                             "edge_seg/models/default; with --quick: out/default-quick, never the bundled one)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the rendered data sets and the float model here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="tiny configuration for tests (under a minute)")
    parser.add_argument("--epochs", type=int, help="override the float epochs")
    parser.add_argument("--qat-epochs", type=int, help="override the QAT epochs")
    parser.add_argument("--train-images", type=int, help="override the number of training scenes")
    parser.add_argument("--size", type=int, help="override the model input size (multiple of 16)")
    parser.add_argument("--alpha", type=float, help="override the width multiplier")
    parser.add_argument("--per-channel", action="store_true",
                        help="int8 weight scales per output channel (default: one per tensor)")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras fit verbosity")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    recipe = QUICK if args.quick else Recipe()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("qat_epochs", args.qat_epochs),
                                   ("train_images", args.train_images), ("size", args.size),
                                   ("alpha", args.alpha),
                                   ("per_channel", args.per_channel or None)) if v is not None}
    recipe = replace(recipe, **overrides)
    out = args.out or (QUICK_OUT if args.quick else BUNDLED)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        summary = build(out, args.work, recipe, args.verbose)
    else:
        with tempfile.TemporaryDirectory(prefix="edge_seg_default_") as tmp:
            summary = build(out, Path(tmp), recipe, args.verbose)
    print(_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
