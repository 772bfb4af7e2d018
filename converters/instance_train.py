"""Train, quantise and export the own instance segmentation model (YOLO-seg output format).

    python -m converters.instance_train [--out edge_seg/models/instance] [--quick]

Steps: render touching-object scenes (``edge_seg.demo.scenes.render_touching_scene``: 3-6 objects of
one class pressed together, 0-2 others behind) for training, build per-cell targets, train the
float network (``converters.instance_model``), fine-tune it quantisation-aware (tfmot default
8-bit scheme, ``quantize_model``: every layer of the network is covered, no custom config), export
TFLite with int8 kernels (uint8 RGB input), write the manifest (task ``instance``, output kind
``yolo_seg``), and score float and int8 TFLite on held-out scenes through ``edge_seg.Segmenter``
with COCO mask AP (pycocotools).

Export note: the box/score/coefficient decoding after the network (sigmoid, grid, stride, concat,
transpose) stays in float. With everything int8, the converter gives the detection tensor one
scale for box pixels (0..size), scores (0..1) and coefficients, and the scores lose nearly all
their resolution. The three parts are cast float32 → float16 → float32 before the final
concatenation: the quantiser leaves CAST in float, so the concatenation and transpose run in
float on ~N·(4+nc+nm) values (negligible), while every convolution runs in int8. Both outputs are
float32 tensors; the device decoder reads them as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

import edge_seg  # noqa: E402
from converters.instance_model import (  # noqa: E402
    STRIDE,
    InstanceArch,
    InstanceLoss,
    build_instance_model,
    decode_boxes,
)
from edge_seg.demo import scenes  # noqa: E402
from edge_seg.manifest import MANIFEST_NAME, FileEntry, InputSpec, Manifest, OutputSpec, sha256_file  # noqa: E402

log = logging.getLogger("converters.instance_train")

MODEL_NAME = "edge-seg-instance"
MODEL_VERSION = "1.0.0"
CLASSES = list(scenes.CLASSES[1:])  # disc, box, triangle: no background class in a detector
PALETTE = list(scenes.PALETTE[1:])
INT8_NAME = "model_int8.tflite"
FLOAT_NAME = "model_float.tflite"
TRAIN_SEED, HELDOUT_SEED = 10_000_000, 12_000_000
BUNDLED = Path(edge_seg.__file__).parent / "models" / "instance"
QUICK_OUT = Path("out") / "instance-quick"
MAX_INSTANCES = 10  # 6 touching + 2 others fit
MAX_POSITIVES = 64  # positive cells kept per image


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the bundled instance model; the defaults are what ships."""

    size: int = 160
    width: float = 1.0
    num_masks: int = 16
    render: int = 160  # rendered scenes are render x render, stretched to size x size
    train_images: int = 4000
    heldout_images: int = 200
    batch: int = 16
    epochs: int = 18
    qat_epochs: int = 1
    lr: float = 3e-3
    qat_lr: float = 1e-4
    score_threshold: float = 0.25
    iou_threshold: float = 0.6
    seed: int = 0


QUICK = Recipe(size=64, width=0.5, num_masks=8, render=64, train_images=64, heldout_images=8, batch=16,
               epochs=1, qat_epochs=1)


# ---------------------------------------------------------------- data and targets

def _render(seed: int, render: int) -> scenes.Scene:
    return scenes.render_touching_scene(seed, (render, render))


def scene_targets(scene: scenes.Scene, arch: InstanceArch) -> dict:
    """Image at model size (RGB uint8) and the per-cell training targets of one scene (see ``InstanceLoss``)."""
    size, g, ph = arch.size, arch.grid, arch.proto
    h, w = scene.mask.shape
    image = cv2.cvtColor(cv2.resize(scene.image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    anns = scenes.instance_annotations(scene)[:MAX_INSTANCES]
    boxes = np.zeros((MAX_INSTANCES, 4), np.float32)
    masks = np.zeros((MAX_INSTANCES, ph * ph), np.uint8)
    classes = np.zeros(MAX_INSTANCES, np.int64)
    sx, sy = size / w, size / h
    for k, ann in enumerate(anns):
        ys, xs = np.nonzero(ann["mask"])
        boxes[k] = (xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy)
        small = cv2.resize(ann["mask"].astype(np.float32), (ph, ph), interpolation=cv2.INTER_AREA)
        masks[k] = np.round(small * 255).astype(np.uint8).ravel()
        classes[k] = ann["class_id"] - 1
    cost = np.full((MAX_INSTANCES, g * g), np.inf, np.float32)
    gy, gx = np.mgrid[0:g, 0:g]
    ccx, ccy = ((gx + 0.5) * STRIDE).ravel(), ((gy + 0.5) * STRIDE).ravel()
    for k in range(len(anns)):
        x0, y0, x1, y1 = boxes[k]
        bx, by = (x0 + x1) / 2, (y0 + y1) / 2
        cgx, cgy = min(int(bx // STRIDE), g - 1), min(int(by // STRIDE), g - 1)
        near = (np.abs(gx.ravel() - cgx) <= 1) & (np.abs(gy.ravel() - cgy) <= 1)
        inside = (ccx > x0) & (ccx < x1) & (ccy > y0) & (ccy < y1)
        cand = near & inside
        cand[cgy * g + cgx] = True
        dist = np.hypot(ccx - bx, ccy - by) / STRIDE
        cost[k, cand] = dist[cand]
    owner = cost.argmin(axis=0)
    best = cost.min(axis=0)
    positive = np.flatnonzero(np.isfinite(best))
    positive = positive[np.argsort(best[positive], kind="stable")][:MAX_POSITIVES]
    cls = np.full(g * g, -1, np.int64)
    cls[positive] = classes[owner[positive]]
    pos_cell = np.zeros(MAX_POSITIVES, np.int64)
    pos_inst = np.zeros(MAX_POSITIVES, np.int64)
    pos_valid = np.zeros(MAX_POSITIVES, np.float32)
    pos_cell[: len(positive)] = positive
    pos_inst[: len(positive)] = owner[positive]
    pos_valid[: len(positive)] = 1.0
    return {"image": image, "cls": cls, "pos_cell": pos_cell, "pos_inst": pos_inst, "pos_valid": pos_valid,
            "boxes": boxes, "masks": masks}


def build_arrays(n: int, seed: int, recipe: Recipe, arch: InstanceArch) -> dict[str, np.ndarray]:
    """Render ``n`` touching scenes (seeds ``seed``..) and stack their images and targets."""
    items = [scene_targets(_render(seed + i, recipe.render), arch) for i in range(n)]
    return {key: np.stack([it[key] for it in items]) for key in items[0]}


def dataset(arrays: dict[str, np.ndarray], batch: int, seed: int) -> tf.data.Dataset:
    n = len(arrays["image"])
    ds = tf.data.Dataset.from_tensor_slices(arrays).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch, drop_remainder=True).prefetch(2)


# ---------------------------------------------------------------- training

def fit(model: keras.Model, ds: tf.data.Dataset, arch: InstanceArch, epochs: int, lr, verbose: bool = True) -> None:
    """Custom loop: Adam on ``InstanceLoss`` (hflip augmentation is not used: targets are per cell)."""
    loss_fn = InstanceLoss(arch)
    opt = keras.optimizers.Adam(learning_rate=lr, clipnorm=10.0)

    @tf.function
    def step(batch):
        x = tf.cast(batch["image"], tf.float32) / 255.0
        with tf.GradientTape() as tape:
            total, parts = loss_fn(model(x, training=True), batch)
        grads = tape.gradient(total, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return total, parts

    for epoch in range(epochs):
        t = time.perf_counter()
        sums, count = {}, 0
        for batch in ds:
            total, parts = step(batch)
            for key, value in {"loss": total, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
        if verbose:
            log.info("epoch %d/%d %.0f s: %s", epoch + 1, epochs, time.perf_counter() - t,
                     " ".join(f"{k} {v / max(count, 1):.4f}" for k, v in sums.items()))


def cosine(lr: float, steps: int):
    return keras.optimizers.schedules.CosineDecay(lr * 0.1, max(1, steps - steps // 20), alpha=0.02,
                                                  warmup_target=lr, warmup_steps=max(1, steps // 20))


# ---------------------------------------------------------------- export

def _float_cast(x: tf.Tensor) -> tf.Tensor:
    """float32 → float16 → float32: a float op the int8 quantiser leaves alone (see the module docstring)."""
    return tf.cast(tf.cast(x, tf.float16), tf.float32)


def export(model: keras.Model, arch: InstanceArch, quantized: bool) -> bytes:
    """TFLite flatbuffer with outputs detections [1, 4+nc+nm, N] and prototypes [1, mh, mw, nm] (float32).

    ``quantized``: ``model`` is a QAT model; the convolutions become int8 with the learned ranges,
    the input uint8 (scale 1/255). Otherwise a float32 model with a float32 input in [0, 1].
    """
    g = arch.grid
    spec = tf.TensorSpec([1, arch.size, arch.size, 3], tf.float32, name="image")
    module = tf.Module()
    module.weights = list(model.variables)

    def serve(image):
        box, cls, coef, protos = model(image, training=False)
        boxes = decode_boxes(box, g)
        scores = tf.sigmoid(tf.reshape(cls, [-1, g * g, arch.num_classes]))
        coefs = tf.reshape(coef, [-1, g * g, arch.num_masks])
        det = tf.concat([_float_cast(boxes), _float_cast(scores), _float_cast(coefs)], axis=-1)
        return {"output0": tf.transpose(det, [0, 2, 1]), "output1": protos}

    module.serve = tf.function(serve, input_signature=[spec], autograph=False)
    with tempfile.TemporaryDirectory(prefix="edge_seg_instance_export_") as tmp:
        tf.saved_model.save(module, tmp, signatures=module.serve.get_concrete_function())
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantized:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.inference_input_type = tf.uint8
        return converter.convert()


def pin_input(qat_model: keras.Model) -> None:
    """Input fake-quant range exactly [0, 1] (uint8 input = pixel value, scale 1/255)."""
    layer = next(lyr for lyr in qat_model.layers if type(lyr).__name__ == "QuantizeLayer")
    for var in layer.weights:
        short = var.name.split("/")[-1]
        if short.startswith(f"{layer.name}_min"):
            var.assign(tf.zeros_like(var))
        elif short.startswith(f"{layer.name}_max"):
            var.assign(tf.ones_like(var))


def _tensor_names(path: Path) -> tuple[str, str, tuple[int, int], str]:
    """(detection tensor name, prototype tensor name, input (w, h), input dtype) of a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    outs = interp.get_output_details()
    det = next(o["name"] for o in outs if len(o["shape"]) == 3)
    proto = next(o["name"] for o in outs if len(o["shape"]) == 4)
    inp = interp.get_input_details()[0]
    return det, proto, (int(inp["shape"][2]), int(inp["shape"][1])), np.dtype(inp["dtype"]).name


def write_manifest(out_dir: Path, model_file: str, recipe: Recipe, metrics: dict | None = None) -> Path:
    path = out_dir / model_file
    det, proto, (w, h), dtype = _tensor_names(path)
    manifest = Manifest(
        name=MODEL_NAME, version=MODEL_VERSION, task="instance", classes=CLASSES, palette=PALETTE,
        input=InputSpec(width=w, height=h, color_order="rgb", dtype=dtype, resize="stretch",
                        mean=[0.0] * 3, std=[255.0] * 3),
        output=OutputSpec(kind="yolo_seg", tensors=[det, proto], threshold=0.5,
                          score_threshold=recipe.score_threshold, iou_threshold=recipe.iou_threshold,
                          max_detections=100),
        files={"tflite": FileEntry(path=model_file, sha256=sha256_file(path))},
        metrics={k: float(v) for k, v in (metrics or {}).items()})
    target = out_dir / MANIFEST_NAME
    target.write_text(manifest.dump())
    return target


def evaluate(model_dir: Path, data_dir: Path, progress: bool = False) -> dict:
    """COCO mask AP of the model in ``model_dir`` (manifest + tflite) through ``edge_seg.Segmenter``."""
    from edge_seg import Segmenter
    from edge_seg.evaluate.instances import evaluate_instance_dataset

    with Segmenter.create(model=model_dir) as seg:
        return evaluate_instance_dataset(lambda frame: seg.segment(frame).instances or (), data_dir, CLASSES,
                                         progress=progress)


# ---------------------------------------------------------------- the recipe

def build(out_dir: Path, work: Path, recipe: Recipe, verbose: bool = True) -> dict:
    """Run the whole recipe; write the int8 model and its manifest to ``out_dir``. Returns the summary."""
    from edge_seg.evaluate.instances import write_instance_dataset

    start = time.perf_counter()
    keras.utils.set_random_seed(recipe.seed)
    arch = InstanceArch(size=recipe.size, num_classes=len(CLASSES), num_masks=recipe.num_masks, width=recipe.width,
                        bn_momentum=0.99 if recipe.train_images >= 1000 else 0.9)
    t = time.perf_counter()
    arrays = build_arrays(recipe.train_images, TRAIN_SEED + recipe.seed, recipe, arch)
    heldout = write_instance_dataset(work / "heldout", recipe.heldout_images, seed=HELDOUT_SEED + recipe.seed,
                                     size=(recipe.render, recipe.render),
                                     render=lambda s, sz: scenes.render_touching_scene(s, sz))
    log.info("rendered %d training + %d held-out scenes in %.0f s", recipe.train_images, recipe.heldout_images,
             time.perf_counter() - t)
    ds = dataset(arrays, recipe.batch, recipe.seed)
    steps = recipe.train_images // recipe.batch

    model = build_instance_model(arch)
    log.info("model: %d parameters, input %dx%d, %d candidates", model.count_params(), arch.size, arch.size,
             arch.grid ** 2)
    t = time.perf_counter()
    fit(model, ds, arch, recipe.epochs, cosine(recipe.lr, steps * recipe.epochs), verbose)
    float_s = time.perf_counter() - t

    float_dir = work / "float"
    float_dir.mkdir(parents=True, exist_ok=True)
    (float_dir / FLOAT_NAME).write_bytes(export(model, arch, quantized=False))
    write_manifest(float_dir, FLOAT_NAME, recipe)

    t = time.perf_counter()
    qat_model = tfmot.quantization.keras.quantize_model(model)
    if recipe.qat_epochs > 0:
        fit(qat_model, ds, arch, recipe.qat_epochs, recipe.qat_lr, verbose)
    pin_input(qat_model)
    qat_s = time.perf_counter() - t

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INT8_NAME).write_bytes(export(qat_model, arch, quantized=True))
    write_manifest(out_dir, INT8_NAME, recipe)

    results = {kind: evaluate(path, heldout, progress=verbose) for kind, path in (("float", float_dir),
                                                                                  ("int8", out_dir))}
    metrics = {"heldout_frames": recipe.heldout_images}
    for kind, res in results.items():
        for key in ("ap", "ap50", "ap75"):
            metrics[f"{kind}_mask_{key}"] = round(res[key] or 0.0, 4)
    write_manifest(out_dir, INT8_NAME, recipe, metrics)
    return {"out": str(out_dir), "recipe": asdict(recipe), **metrics,
            "int8_bytes": (out_dir / INT8_NAME).stat().st_size, "params": model.count_params(),
            "per_class_int8": results["int8"]["per_class"], "train_float_s": round(float_s),
            "train_qat_s": round(qat_s), "total_s": round(time.perf_counter() - start)}


def _summary(s: dict) -> str:
    return "\n".join([
        f"wrote {s['out']}/{INT8_NAME} ({s['int8_bytes'] / 1024:.0f} KiB, {s['params']} parameters) + manifest",
        f"held-out COCO mask ({s['heldout_frames']} touching-object frames): "
        f"float AP {s['float_mask_ap']:.4f} AP50 {s['float_mask_ap50']:.4f} AP75 {s['float_mask_ap75']:.4f}; "
        f"int8 AP {s['int8_mask_ap']:.4f} AP50 {s['int8_mask_ap50']:.4f} AP75 {s['int8_mask_ap75']:.4f}",
        f"time: float training {s['train_float_s']} s, QAT {s['train_qat_s']} s, total {s['total_s']} s",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.instance_train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for model_int8.tflite + manifest.json (default: the bundled "
                             "edge_seg/models/instance; with --quick: out/instance-quick)")
    parser.add_argument("--work", type=Path, default=None, help="keep held-out data and the float model here")
    parser.add_argument("--quick", action="store_true", help="tiny configuration for tests (well under a minute)")
    parser.add_argument("--epochs", type=int, help="override the float epochs")
    parser.add_argument("--qat-epochs", type=int, help="override the QAT epochs")
    parser.add_argument("--train-images", type=int, help="override the number of training scenes")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    recipe = QUICK if args.quick else Recipe()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("qat_epochs", args.qat_epochs),
                                   ("train_images", args.train_images)) if v is not None}
    recipe = replace(recipe, **overrides)
    out = args.out or (QUICK_OUT if args.quick else BUNDLED)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        summary = build(out, args.work, recipe, not args.quiet)
    else:
        with tempfile.TemporaryDirectory(prefix="edge_seg_instance_") as tmp:
            summary = build(out, Path(tmp), recipe, not args.quiet)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(_summary(summary))
    return 0 if math.isfinite(summary["int8_mask_ap"]) else 1


if __name__ == "__main__":
    sys.exit(main())
