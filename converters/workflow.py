"""The steps behind ``edge-seg convert``: train float, fine-tune QAT, export every variant, report.

Each step reads and writes plain files so it can run alone (a user may bring their own float
Keras model to ``finetune_qat`` or ``export_bundle``):

* ``train`` -> ``<out>/float.keras`` + ``<out>/train.json`` (classes, size, config, history)
* ``finetune_qat`` -> ``<out>/qat.h5`` (+ ``train.json`` updated)
* ``export_bundle`` -> the deployable bundle in ``<out>/`` (``model_int8.tflite`` = QAT int8, or PTQ
  without a QAT model; ``model_qdq.onnx``; ``manifest.json``) and every other variant in
  ``<out>/variants/<name>/`` with its own manifest; each file is checked against its source.
* ``report`` -> ``report.json``, ``report.md``, ``confusion_*.png`` (``converters.parity``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

from converters import data, formats, losses, qat, tflite  # noqa: E402
from converters.architectures import ArchConfig, build_model  # noqa: E402
from edge_seg.errors import InputError  # noqa: E402
from edge_seg.manifest import FileEntry, default_palette, read_manifest, sha256_file  # noqa: E402

log = logging.getLogger(__name__)

FLOAT_MODEL = "float.keras"
QAT_MODEL = "qat.h5"
TRAIN_INFO = "train.json"
VARIANT_DIR = "variants"
EXPORTS = ("float32", "float16", "dynamic", "int8_ptq", "int8_qat")


@dataclass
class DataSpec:
    """Where the labelled data is and how to split it (see ``formats.open_dataset``)."""

    path: Path
    format: str = "auto"
    mapping: Path | None = None
    images: Path | None = None
    split: str = "train"
    val_path: Path | None = None  # a separate validation set (same format), else a split of ``path``
    val_split: str = "val"
    val_fraction: float = 0.1
    seed: int = 0
    classes: tuple[str, ...] | None = None  # names for a folder dataset without classes.txt

    def open(self) -> tuple[formats.SegDataset, formats.SegDataset]:
        """(train, val) datasets."""
        fmt = dict(fmt=self.format, mapping=self.mapping, images=self.images, classes=self.classes)
        train = formats.open_dataset(self.path, split=self.split, **fmt)
        if self.val_path is not None:
            return train, formats.open_dataset(self.val_path, split=self.val_split, **fmt)
        if train.format in ("voc", "cityscapes"):
            try:
                return train, formats.open_dataset(self.path, split=self.val_split, **fmt)
            except InputError:
                pass
        return train.split(self.val_fraction, self.seed)


@dataclass
class TrainOptions:
    arch: str = "unet"
    width: int = 256
    height: int = 256
    alpha: float = 1.0
    bn_momentum: float = 0.99
    epochs: int = 10
    batch: int = 16
    lr: float = 3e-3
    loss: str = "ce"
    class_weights: str = "none"  # none | median | inverse
    augment: data.Augment = field(default_factory=data.Augment)
    strategy: str = "default"
    seed: int = 0
    verbose: int = 1


def _palette(classes: tuple[str, ...]) -> list[tuple[int, int, int]]:
    from edge_seg.demo.scenes import CLASSES, PALETTE

    return [tuple(c) for c in PALETTE] if tuple(classes) == tuple(CLASSES) else default_palette(len(classes))


def _datasets(spec: DataSpec, size: tuple[int, int], batch: int, augment, seed: int, verbose: int):
    train_set, val_set = spec.open()
    train_x, train_y = data.load_arrays(train_set, size, progress=verbose > 0)
    val_x, val_y = data.load_arrays(val_set, size, progress=verbose > 0)
    train = data.dataset_from_arrays(train_x, train_y, batch, augment=augment, seed=seed)
    val = data.dataset_from_arrays(val_x, val_y, batch, shuffle=False, augment=False)
    return train_set, (train_x, train_y), (val_x, val_y), train, val


def _write_info(out: Path, info: dict) -> None:
    path = out / TRAIN_INFO
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(info)
    path.write_text(json.dumps(old, indent=2, default=str) + "\n")


def read_info(model_path: Path) -> dict:
    """The ``train.json`` beside a saved model, or {}."""
    path = Path(model_path).parent / TRAIN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def train(spec: DataSpec, out_dir: str | Path, options: TrainOptions) -> Path:
    """Train the float network; returns the saved model path (``float.keras``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(options.seed)
    size = (options.width, options.height)
    train_set, (_, train_y), _, train_ds, val_ds = _datasets(spec, size, options.batch, options.augment,
                                                             options.seed, options.verbose)
    n = len(train_set.classes)
    weights = losses.class_weights(train_y, n, options.class_weights)
    config = qat.TrainConfig(epochs=options.epochs, lr=options.lr, verbose=options.verbose, loss=options.loss,
                             class_weights=tuple(float(w) for w in weights) if options.class_weights != "none"
                             else None)
    strategy = qat.make_strategy(options.strategy)
    with strategy.scope():
        model = build_model(ArchConfig(width=options.width, height=options.height, num_classes=n,
                                       alpha=options.alpha, arch=options.arch, bn_momentum=options.bn_momentum))
        qat.train_float(model, train_ds, val_ds, config)
    path = out / FLOAT_MODEL
    model.save(path)
    history = {k: [round(float(v), 5) for v in vals] for k, vals in model.history.history.items()}
    _write_info(out, {"classes": list(train_set.classes), "width": options.width, "height": options.height,
                      "float": {"options": asdict(options), "class_weights": weights.tolist(), "history": history,
                                "replicas": strategy.num_replicas_in_sync}})
    return path


def load_model(path: str | Path) -> keras.Model:
    return qat.load_keras_model(path)


def finetune_qat(float_path: str | Path, spec: DataSpec, out_dir: str | Path, *, epochs: int = 1, lr: float = 5e-5,
                 batch: int = 16, loss: str = "ce", strategy: str = "default", augment: data.Augment | None = None,
                 seed: int = 0, verbose: int = 1, per_channel: bool = True) -> Path:
    """Quantisation-aware fine-tuning of a float Keras model (ours or the user's); returns ``qat.h5``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    dist = qat.make_strategy(strategy)
    with dist.scope():
        model = load_model(float_path)
        if not per_channel:
            model = _fold_for_per_tensor(model, float_path)
        size = (int(model.input_shape[2]), int(model.input_shape[1]))
        train_set, _, _, train_ds, val_ds = _datasets(spec, size, batch, augment or data.Augment(), seed, verbose)
        if model.output_shape[-1] != len(train_set.classes):
            raise InputError(f"the model outputs {model.output_shape[-1]} classes, the dataset has "
                             f"{len(train_set.classes)}")
        qat_model = qat.train_qat(qat.quantize(model, per_channel=per_channel), train_ds, val_ds,
                                  qat.TrainConfig(qat_epochs=epochs, qat_lr=lr, verbose=verbose, loss=loss))
    path = out / QAT_MODEL
    qat_model.save(path)
    info = {"classes": list(train_set.classes), "width": size[0], "height": size[1],
            "qat": {"from": str(float_path), "epochs": epochs, "lr": lr, "loss": loss,
                    "replicas": dist.num_replicas_in_sync, "per_channel": per_channel}}
    _write_info(out, info)
    return path


def _fold_for_per_tensor(model: keras.Model, float_path: str | Path) -> keras.Model:
    """Fold BatchNorm into the convs before per-tensor QAT (see ``architectures.fold_batchnorm``)."""
    from converters.architectures import ArchConfig, fold_batchnorm

    if not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers):
        return model
    options = read_info(Path(float_path)).get("float", {}).get("options")
    if not options:
        log.warning("per-tensor QAT of %s with unfolded BatchNorm: the converter's folding moves the weights off "
                    "the trained grid (check the parity report); models trained by 'convert train' are folded first",
                    Path(float_path).name)
        return model
    config = ArchConfig(width=options["width"], height=options["height"], num_classes=int(model.output_shape[-1]),
                        alpha=options["alpha"], arch=options["arch"], bn_momentum=options["bn_momentum"])
    log.info("folded BatchNorm into the convolutions for per-tensor QAT")
    return fold_batchnorm(model, config)


@dataclass
class ExportOptions:
    name: str = "edge-seg-model"
    version: str = "0.1.0"
    variants: tuple[str, ...] = EXPORTS
    calibration: int = 100  # representative images for full-int8 PTQ (and QAT export)
    check_images: int = 32
    fuse_argmax: bool = False
    onnx: bool = True
    edgetpu: bool = False  # run edgetpu_compiler when present
    per_channel: bool | None = None  # int8 weight scales per channel; None: as the QAT model was trained
    strip_names: bool = True  # drop intermediate tensor names from the .tflite files (inputs/outputs keep theirs)
    seed: int = 0


def _variant_manifest(out: Path, model_file: str, identity: dict, onnx_file: str | None = None) -> Path:
    extra = {"onnx": FileEntry(path=onnx_file, sha256=sha256_file(out / onnx_file))} if onnx_file else None
    return tflite.write_manifest(out, model_file, extra_files=extra, **identity)


@dataclass
class _ExportJob:
    """What every export step shares: output folder, identity, calibration and check images, the summary."""

    out: Path
    options: ExportOptions
    identity: dict
    representative: object
    check_x: object
    per_channel: bool
    summary: dict

    def record(self, name: str, path: Path, agreement: float) -> None:
        self.summary["files"][name] = str(path)
        self.summary["agreement"][name] = round(agreement, 5)
        log.info("%-10s %s (%.1f KiB), agrees with its source on %.2f %% of pixels", name, path.name,
                 path.stat().st_size / 1024, 100 * agreement)

    def tflite(self, model, folder: Path, variant: str, file_name: str, min_agreement: float) -> tuple[Path, float]:
        _, agreed = tflite.convert(model, folder, self.representative, self.check_x, variant=variant,
                                   file_name=file_name, min_agreement=min_agreement, per_channel=self.per_channel,
                                   fuse_argmax=self.options.fuse_argmax, strip_names=self.options.strip_names,
                                   **self.identity)
        return folder / file_name, agreed

    def onnx(self, model, folder: Path, reference: Path, qdq: bool, min_agreement: float | None = None):
        from converters import onnx as onnx_export

        return onnx_export.convert(model, folder, self.check_x, reference=tflite.TFLiteRunner(reference), qdq=qdq,
                                   fuse_argmax=self.options.fuse_argmax, min_agreement=min_agreement)


def _float_variants(job: _ExportJob, model, wanted: set[str]) -> None:
    """float32 (+ float ONNX), float16, dynamic-range and PTQ int8, each in ``variants/<name>/``."""
    for variant in ("float32", "float16", "dynamic", "int8_ptq"):
        if variant not in wanted:
            continue
        vdir = job.out / VARIANT_DIR / variant
        path, agreed = job.tflite(model, vdir, "int8" if variant == "int8_ptq" else variant,
                                  f"model_{variant}.tflite", 0.9 if variant == "int8_ptq" else 0.98)
        job.record(variant, path, agreed)
        if variant == "float32" and job.options.onnx:
            onnx_path, agreed = job.onnx(model, vdir, path, qdq=False)
            _variant_manifest(vdir, path.name, job.identity, onnx_path.name)
            job.record("onnx_float", onnx_path, agreed)


def _main_bundle(job: _ExportJob, model, is_qat: bool) -> None:
    """The deployable bundle: ``model_int8.tflite`` (+ the Q/DQ ONNX of a QAT model), manifest, Edge TPU lint."""
    from converters import edgetpu

    path, agreed = job.tflite(model, job.out, "int8", tflite.INT8_NAME, 0.9)
    job.record("int8_qat" if is_qat else "int8_ptq", path, agreed)
    onnx_file = None
    if job.options.onnx and is_qat:
        # a per-tensor int8 TFLite rounds further from the QAT graph than the Q/DQ ONNX does: a looser bound
        onnx_path, agreed = job.onnx(model, job.out, path, qdq=True, min_agreement=0.99 if job.per_channel else 0.98)
        onnx_file = onnx_path.name
        job.record("onnx_qdq", onnx_path, agreed)
    _variant_manifest(job.out, tflite.INT8_NAME, job.identity, onnx_file)
    job.summary["edgetpu"] = edgetpu.convert(path, job.out, compile_=job.options.edgetpu).as_dict()


def export_bundle(float_path: str | Path | None, qat_path: str | Path | None, spec: DataSpec, out_dir: str | Path,
                  options: ExportOptions) -> dict:
    """Export every requested variant, each checked against its source; returns a summary dict.

    The bundle's int8 model is the QAT one when there is a QAT model, else PTQ of the float model.
    """
    if float_path is None and qat_path is None:
        raise InputError("export needs a float model (--float), a QAT model (--qat) or both")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    float_model = load_model(float_path) if float_path else None
    qat_model = load_model(qat_path) if qat_path else None
    if qat_model is not None and not qat.is_quantized(qat_model):
        raise InputError(f"{qat_path} is not a quantisation-aware model (run 'edge-seg convert qat' first)")
    source = float_model or qat_model
    size = (int(source.input_shape[2]), int(source.input_shape[1]))
    train_set, val_set = spec.open()
    calib_x, _ = data.load_arrays(train_set.subset(range(min(len(train_set), options.calibration))), size)
    check_x, _ = data.load_arrays(val_set.subset(range(min(len(val_set), options.check_images))), size)
    per_channel = options.per_channel
    if per_channel is None:
        per_channel = read_info(Path(qat_path)).get("qat", {}).get("per_channel", True) if qat_path else True
    summary: dict = {"out": str(out), "files": {}, "agreement": {}, "per_channel": per_channel,
                     "sources": {"float": str(float_path) if float_path else None,
                                 "qat": str(qat_path) if qat_path else None}}
    job = _ExportJob(out, options, {"name": options.name, "version": options.version,
                                    "classes": list(train_set.classes), "palette": _palette(train_set.classes)},
                     data.representative_images(calib_x, options.calibration, options.seed), check_x, per_channel,
                     summary)
    wanted = set(options.variants)
    use_qat = qat_model is not None and "int8_qat" in wanted
    if float_model is not None:
        # without QAT the bundle's int8 model is the PTQ one: no second copy under variants/
        _float_variants(job, float_model, wanted - ({"int8_qat"} if use_qat else {"int8_qat", "int8_ptq"}))
    if use_qat or (float_model is not None and "int8_ptq" in wanted):
        _main_bundle(job, qat_model if use_qat else float_model, use_qat)
    summary["sizes"] = {name: Path(p).stat().st_size for name, p in summary["files"].items()}
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def report_models(export_dir: Path) -> list:
    """The model files of an export folder, in report order (name, path)."""
    from converters.parity import ModelFile

    export_dir = Path(export_dir)
    candidates = [("float32", VARIANT_DIR + "/float32/model_float32.tflite"),
                  ("float16", VARIANT_DIR + "/float16/model_float16.tflite"),
                  ("dynamic", VARIANT_DIR + "/dynamic/model_dynamic.tflite"),
                  ("int8_ptq", VARIANT_DIR + "/int8_ptq/model_int8_ptq.tflite"),
                  ("onnx_float", VARIANT_DIR + "/float32/model_float.onnx")]
    exported = json.loads((export_dir / "export.json").read_text()) if (export_dir / "export.json").is_file() else {}
    main = "int8_qat" if "int8_qat" in exported.get("files", {}) else "int8_ptq"
    candidates += [(main, tflite.INT8_NAME), ("onnx_qdq", "model_qdq.onnx")]
    return [ModelFile(name, export_dir / rel) for name, rel in candidates if (export_dir / rel).is_file()]


def report(export_dir: str | Path, spec: DataSpec, out_dir: str | Path | None = None, *, latency_repeats: int = 50,
           threads: int = 2, debugger: bool = False, calibration: int = 100, progress: bool = True) -> dict:
    """The parity report of an export folder on the validation split of ``spec``; updates the manifests' metrics."""
    from converters import parity

    export_dir = Path(export_dir)
    out = Path(out_dir or export_dir / "report")
    models = report_models(export_dir)
    if not models:
        raise InputError(f"{export_dir} holds no exported models (run 'edge-seg convert export' first)")
    _, val_set = spec.open()
    extra = {}
    if debugger:
        exported = json.loads((export_dir / "export.json").read_text()) if (export_dir / "export.json").is_file() \
            else {}
        float_path = (exported.get("sources") or {}).get("float")
        extra["quantization_debugger"] = _debug(Path(float_path), spec, calibration) \
            if float_path and Path(float_path).exists() else {"error": "no float model recorded for this export"}
    result = parity.build_report(models, val_set, out, latency_repeats=latency_repeats, num_threads=threads,
                                 progress=progress, extra=extra)
    _store_metrics(export_dir, result)
    return result


def _debug(float_path: Path, spec: DataSpec, calibration: int) -> dict:
    from converters import parity

    model = load_model(float_path)
    size = (int(model.input_shape[2]), int(model.input_shape[1]))
    train_set, _ = spec.open()
    x, _ = data.load_arrays(train_set.subset(range(min(len(train_set), calibration))), size)
    return parity.quantization_debug(model, data.representative_images(x, min(calibration, 32)))


def _store_metrics(export_dir: Path, result: dict) -> None:
    """Write the measured mIoUs into the bundle's manifest (``float_miou``, ``int8_miou``, ...)."""
    from edge_seg.manifest import MANIFEST_NAME

    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        return
    manifest = read_manifest(path)
    names = {"float32": "float_miou", "int8_ptq": "int8_ptq_miou", "int8_qat": "int8_miou",
             "onnx_qdq": "onnx_qdq_miou"}
    for name, key in names.items():
        row = result["models"].get(name)
        if row and row["mean_iou"] is not None:
            manifest.metrics[key] = round(float(row["mean_iou"]), 4)
    if "int8_qat" not in result["models"] and "int8_ptq_miou" in manifest.metrics:
        manifest.metrics["int8_miou"] = manifest.metrics["int8_ptq_miou"]  # the bundle's int8 model is the PTQ one
    manifest.metrics["parity_images"] = float(result["num_images"])
    path.write_text(manifest.dump())
