"""``edge-seg convert``: train | qat | export | report | lint (registered via the ``edge_seg.commands`` entry point).

``register`` only declares arguments: TensorFlow is imported by the handlers, when they run.

    edge-seg convert train  --data DS --out work/ [--arch lraspp --size 256 --epochs 20 --loss focal]
    edge-seg convert qat    --model work/float.keras --data DS --out work/
    edge-seg convert export --from work/ --data DS --out bundle/ [--fuse-argmax --edgetpu]
    edge-seg convert report --export bundle/ --data DS
    edge-seg convert lint   bundle/model_int8.tflite [--edgetpu]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

EXPORTS = ("float32", "float16", "dynamic", "int8_ptq", "int8_qat")
STRATEGIES = ("default", "mirrored", "multiworker")


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, e.g. 0.75,1.5, got '{text}'") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"need 0 < LOW <= HIGH, got '{text}'")
    return low, high


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in EXPORTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(bad)}: choose from {', '.join(EXPORTS)}")
    return names


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"need at least 2 comma-separated class names, got '{text}'")
    return names


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", "-d", type=Path, required=required,
                   help="dataset: images/+masks/ folder, VOC root, Cityscapes root, or a COCO instances .json")
    g.add_argument("--format", default="auto", choices=("auto", "folder", "voc", "cityscapes", "coco"),
                   help="dataset layout (default: guessed)")
    g.add_argument("--mapping", type=Path, default=None, help="Cityscapes label-id mapping JSON")
    g.add_argument("--images", type=Path, default=None, help="COCO image folder (default: images/ beside the JSON)")
    g.add_argument("--split", default="train", help="VOC/Cityscapes training split (default train)")
    g.add_argument("--val-data", type=Path, default=None, help="separate validation set (same layout)")
    g.add_argument("--val-split", default="val", help="VOC/Cityscapes validation split (default val)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="otherwise hold out this fraction of --data for validation (default 0.1)")
    g.add_argument("--classes", type=_names, default=None,
                   help="comma-separated class names for an images/+masks/ folder without classes.txt")
    g.add_argument("--seed", type=int, default=0, help="random seed (split, shuffling, init)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", type=Path, default=Path("out/convert"), help="work folder (default out/convert)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--loss", default="ce", choices=("ce", "focal", "dice", "ce+dice"), help="loss (default ce)")
    p.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute: default (one device), mirrored (all GPUs of this host), multiworker "
                        "(hosts listed in TF_CONFIG)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    """Add ``convert`` and its actions to the ``edge-seg`` parser (cheap: no TensorFlow import)."""
    p = subparsers.add_parser("convert", help="workstation: train, quantise (QAT/PTQ), export TFLite/ONNX/EdgeTPU, "
                                              "parity report (extra 'convert')")
    sub = p.add_subparsers(dest="convert_command", metavar="ACTION", required=True)

    q = sub.add_parser("train", help="train the float model")
    _data_args(q)
    _train_args(q)
    q.add_argument("--arch", default="unet", choices=("unet", "lraspp"), help="network (default unet)")
    q.add_argument("--size", type=int, default=256, help="square input size, multiple of 16 (default 256)")
    q.add_argument("--width", type=int, default=None, help="input width (overrides --size)")
    q.add_argument("--height", type=int, default=None, help="input height (overrides --size)")
    q.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    q.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    q.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    q.add_argument("--class-weights", default="none", choices=("none", "median", "inverse"),
                   help="per-class loss weights from label frequencies (default none)")
    q.add_argument("--no-hflip", action="store_true", help="no random horizontal flips")
    q.add_argument("--vflip", action="store_true", help="also random vertical flips")
    q.add_argument("--scale", type=_pair, default=None, metavar="LOW,HIGH", help="random scale-crop, e.g. 0.75,1.5")
    q.add_argument("--jitter", type=float, default=0.0, help="colour jitter strength 0..1 (default 0)")
    q.add_argument("--bn-momentum", type=float, default=0.99, help="BatchNorm momentum (default 0.99)")
    q.set_defaults(func=_cmd_train)

    q = sub.add_parser("qat", help="quantisation-aware fine-tuning of a float Keras model (ours or yours)")
    q.add_argument("--model", "-m", type=Path, default=None,
                   help="float model: .keras/.h5 file or Keras SavedModel folder (default: OUT/float.keras)")
    _data_args(q)
    _train_args(q)
    q.add_argument("--epochs", type=int, default=1, help="QAT epochs (default 1)")
    q.add_argument("--lr", type=float, default=5e-5, help="QAT learning rate (default 5e-5)")
    q.add_argument("--per-tensor", action="store_true",
                   help="one weight scale per tensor instead of per output channel (smaller int8 file); "
                        "BatchNorm is folded into the convolutions first")
    q.set_defaults(func=_cmd_qat)

    q = sub.add_parser("export", help="export float32/float16/dynamic/PTQ int8/QAT int8 TFLite, ONNX; "
                                      "manifests; report")
    q.add_argument("--from", dest="source", type=Path, default=None,
                   help="work folder of train/qat: uses its float.keras and qat.h5")
    q.add_argument("--float", dest="float_model", type=Path, default=None, help="float Keras model")
    q.add_argument("--qat", dest="qat_model", type=Path, default=None, help="QAT Keras model")
    _data_args(q)
    q.add_argument("--out", "-o", type=Path, default=Path("out/bundle"), help="bundle folder (default out/bundle)")
    q.add_argument("--name", default="edge-seg-model", help="model name in the manifest")
    q.add_argument("--version", default="0.1.0", help="model version in the manifest")
    q.add_argument("--variants", type=_variants, default=EXPORTS,
                   help=f"comma-separated subset of {','.join(EXPORTS)} (default all)")
    q.add_argument("--calibration", type=int, default=100, help="representative images for int8 (default 100)")
    q.add_argument("--fuse-argmax", action="store_true", help="end the models in argmax: uint8 class-map output")
    q.add_argument("--no-onnx", action="store_true", help="skip the ONNX exports")
    q.add_argument("--edgetpu", action="store_true", help="also run edgetpu_compiler when it is on PATH")
    q.add_argument("--per-tensor", action="store_true", default=None,
                   help="int8 weights with one scale per tensor (default: as the QAT model was trained)")
    q.add_argument("--keep-names", action="store_true", help="keep intermediate tensor names in the .tflite files")
    q.add_argument("--no-report", action="store_true", help="skip the parity report")
    _report_args(q)
    q.set_defaults(func=_cmd_export)

    q = sub.add_parser("report", help="parity report: per-class IoU, sizes, latency of every exported model")
    q.add_argument("--export", "-e", type=Path, required=True, help="bundle folder written by export")
    _data_args(q)
    q.add_argument("--out", "-o", type=Path, default=None, help="report folder (default EXPORT/report)")
    _report_args(q)
    q.set_defaults(func=_cmd_report)

    q = sub.add_parser("lint", help="check an int8 .tflite against the Edge TPU rules")
    q.add_argument("model", type=Path, metavar="MODEL", help="the int8 .tflite file to check")
    q.add_argument("--edgetpu", action="store_true", help="also run edgetpu_compiler when it is on PATH")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=_cmd_lint)


def _report_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("report")
    g.add_argument("--latency-repeats", type=int, default=50, help="invokes per model for latency (default 50)")
    g.add_argument("--threads", type=int, default=2, help="inference threads for latency (default 2)")
    g.add_argument("--debugger", action="store_true", help="add the TFLite QuantizationDebugger per-layer summary")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _spec(args):
    from converters.workflow import DataSpec

    return DataSpec(path=args.data, format=args.format, mapping=args.mapping, images=args.images, split=args.split,
                    val_path=args.val_data, val_split=args.val_split, val_fraction=args.val_fraction, seed=args.seed,
                    classes=args.classes)


def _quiet_tf() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cmd_train(args) -> int:
    _quiet_tf()
    from converters import data, workflow

    options = workflow.TrainOptions(
        arch=args.arch, width=args.width or args.size, height=args.height or args.size, alpha=args.alpha,
        bn_momentum=args.bn_momentum, epochs=args.epochs, batch=args.batch, lr=args.lr, loss=args.loss,
        class_weights=args.class_weights, strategy=args.strategy, seed=args.seed, verbose=0 if args.quiet else 1,
        augment=data.Augment(hflip=not args.no_hflip, vflip=args.vflip, scale=args.scale, jitter=args.jitter))
    path = workflow.train(_spec(args), args.out, options)
    print(f"wrote {path} and {path.parent / workflow.TRAIN_INFO}")
    return 0


def _cmd_qat(args) -> int:
    _quiet_tf()
    from converters import workflow

    model = args.model or args.out / workflow.FLOAT_MODEL
    path = workflow.finetune_qat(model, _spec(args), args.out, epochs=args.epochs, lr=args.lr, batch=args.batch,
                                 loss=args.loss, strategy=args.strategy, seed=args.seed,
                                 verbose=0 if args.quiet else 1, per_channel=not args.per_tensor)
    print(f"wrote {path}")
    return 0


def _cmd_export(args) -> int:
    _quiet_tf()
    from converters import workflow

    float_model, qat_model = args.float_model, args.qat_model
    if args.source is not None:
        float_model = float_model or _existing(args.source / workflow.FLOAT_MODEL)
        qat_model = qat_model or _existing(args.source / workflow.QAT_MODEL)
    options = workflow.ExportOptions(name=args.name, version=args.version, variants=args.variants,
                                     calibration=args.calibration, fuse_argmax=args.fuse_argmax,
                                     onnx=not args.no_onnx, edgetpu=args.edgetpu, seed=args.seed,
                                     per_channel=None if args.per_tensor is None else not args.per_tensor,
                                     strip_names=not args.keep_names)
    spec = _spec(args)
    summary = workflow.export_bundle(float_model, qat_model, spec, args.out, options)
    for name, path in summary["files"].items():
        print(f"{name:<10} {path}  {summary['sizes'][name] / 1024:8.1f} KiB  agrees with its source on "
              f"{100 * summary['agreement'][name]:.2f} % of pixels")
    if "edgetpu" in summary:
        _print_lint(summary["edgetpu"])
    if not args.no_report:
        _print_report(workflow.report(args.out, spec, latency_repeats=args.latency_repeats, threads=args.threads,
                                      debugger=args.debugger, calibration=args.calibration,
                                      progress=not args.quiet), args.out / "report")
    return 0


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _cmd_report(args) -> int:
    _quiet_tf()
    from converters import workflow

    result = workflow.report(args.export, _spec(args), args.out, latency_repeats=args.latency_repeats,
                             threads=args.threads, debugger=args.debugger, progress=not args.quiet)
    _print_report(result, args.out or args.export / "report")
    return 0


def _print_report(result: dict, out: Path) -> None:
    ref = result["reference"]
    print(f"parity on {result['num_images']} images (report: {out}/report.md, report.json):")
    for name, row in result["models"].items():
        miou = "n/a" if row["mean_iou"] is None else f"{100 * row['mean_iou']:.2f}"
        print(f"  {name:<14} mIoU {miou:>6} %  agrees with {ref} {100 * row[f'agreement_with_{ref}']:6.2f} %  "
              f"{row['bytes'] / 1024:8.1f} KiB  {row['latency']['median_ms']:.2f} ms")


def _print_lint(report: dict) -> None:
    state = "clean" if report["clean"] else f"{len(report['errors'])} problem(s)"
    print(f"Edge TPU lint: {report['ops_on_tpu']}/{report['num_ops']} ops on the TPU ({state})")
    for f in report["errors"][:20]:
        print(f"  op {f['index']} {f['op']}: {f['message']}")
    compiler = report.get("compiler") or {}
    if compiler:
        print(f"  edgetpu_compiler: {compiler.get('summary') if compiler.get('available') else compiler['message']}")


def _cmd_lint(args) -> int:
    from converters import edgetpu

    report = edgetpu.lint(args.model)
    if args.edgetpu:
        report.compiler = edgetpu.compile_model(args.model)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.clean else 1
