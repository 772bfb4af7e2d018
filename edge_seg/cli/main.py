"""``edge-seg`` command line. Subcommands parse arguments and delegate; the work is in the modules.

A user mistake (``EdgeSegError``) prints one line and exits 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from edge_seg import __version__
from edge_seg.cli import bench
from edge_seg.cli.common import floats, input_size_arg, missing_extra, model_args, norm_arg, segmenter_from_args
from edge_seg.errors import EdgeSegError, InputError

log = logging.getLogger("edge_seg")


def cmd_infer(args: argparse.Namespace) -> int:
    from edge_seg.loop.infer_files import image_paths, infer_files

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    paths = image_paths(args.target)
    with segmenter_from_args(args) as seg:
        report = infer_files(seg, paths, args.out, alpha=args.alpha, contours=args.contours)
    print(f"segmented {len(report.written)} image(s) into {args.out}; {len(report.failed)} failed")
    return 1 if report.failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edge_seg.evaluate.semantic import evaluate_dataset, write_report

    if args.tracking:
        return _eval_tracking(args)
    if args.data is None:
        raise InputError("edge-seg eval needs --data DIR (or --tracking for the synthetic tracking clip)")
    if not args.data.is_dir():
        raise InputError(f"dataset directory not found: {args.data}")
    with segmenter_from_args(args) as seg:
        if seg.manifest.task == "instance":
            return _eval_instances(seg, args)
        classes = list(seg.manifest.classes)
        result = evaluate_dataset(lambda img: seg.segment(img).class_map, args.data, len(classes), classes,
                                  progress=not args.quiet)
    write_report(result, args.out)
    miou = result["mean_iou"]
    print(f"mIoU {miou:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}  "
          f"({result['num_images']} images)  report: {args.out}/metrics.json, {args.out}/confusion.png")
    for name, m in result["per_class"].items():
        iou = "n/a" if m["iou"] is None else f"{m['iou']:.4f}"
        print(f"  {name:<16} IoU {iou}")
    return 0


def _eval_instances(seg, args: argparse.Namespace) -> int:
    """``edge-seg eval`` for an instance model: COCO mask AP on images/ + annotations.json."""
    from edge_seg.evaluate.instances import evaluate_instance_dataset, write_instance_report

    result = evaluate_instance_dataset(lambda img: seg.segment(img).instances, args.data, list(seg.manifest.classes),
                                       progress=not args.quiet)
    path = write_instance_report(result, args.out)

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"mask AP {fmt(result['ap'])}  AP50 {fmt(result['ap50'])}  AP75 {fmt(result['ap75'])}  "
          f"({result['num_images']} images, {result['num_instances']} instances)  report: {path}")
    for name, m in result["per_class"].items():
        print(f"  {name:<16} AP {fmt(m['ap'])}  AP50 {fmt(m['ap50'])}  recall@0.5 {fmt(m['recall50'])}")
    return 0


def _eval_tracking(args: argparse.Namespace) -> int:
    """``edge-seg eval --tracking``: IDF1, MOTA, ID switches of the tracker on a synthetic clip with true ids."""
    from edge_seg.evaluate.tracking import run_tracking_eval
    from edge_seg.segmenter import DEFAULT_MODEL

    if args.model == DEFAULT_MODEL:  # the bundled semantic model has no instances: take the bundled instance model
        args.model = DEFAULT_MODEL.parent / "instance"
    with segmenter_from_args(args) as seg:
        if seg.manifest.task != "instance":
            raise InputError(f"--tracking needs an instance model, and {args.model} is a {seg.manifest.task} model")
        result, path = run_tracking_eval(seg, args.out, seed=args.seed, frames=args.frames, progress=not args.quiet)
    print(f"IDF1 {result['idf1']:.4f}  MOTA {result['mota']:.4f}  HOTA {result['hota']:.4f}  "
          f"ID switches {result['num_switches']} "
          f"({result['switches_per_100']:.2f} per 100 track-frames)  "
          f"tracking {result['track_ms_p50']:.3f} ms/frame p50  "
          f"({result['frames']} frames, {result['num_unique_objects']} objects)  report: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from edge_seg.demo.mqtt import DemoLink
    from edge_seg.demo.run import run_demo

    with segmenter_from_args(args) as seg:
        with (nullcontext() if args.no_mqtt else DemoLink(args.out, seg)) as link:
            summary = run_demo(seg, args.out, frames=args.frames, seed=args.seed, progress=not args.quiet,
                               link=link)
    print("\n".join(summary.lines() + (link.lines() if link is not None else [])))
    return 0


def cmd_manifest_init(args: argparse.Namespace) -> int:
    from edge_seg.model import load_model

    out = args.output or args.model.with_name("manifest.json")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    loaded = load_model(args.model, backend=args.backend, mean=args.mean, std=args.std, norm=args.norm,
                        input_size=args.input_size)
    manifest = loaded.manifest
    loaded.close()
    entry_key = next(iter(manifest.files))
    manifest.files[entry_key].sha256 = loaded.sha256
    out.write_text(manifest.dump())
    print(f"wrote {out}: edit 'classes', 'palette', 'name' and 'version' to describe your model")
    return 0


def _preview_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [HOST]:PORT, e.g. :8080 or 0.0.0.0:8080, got '{text}'") from None
    if host.startswith("[") and host.endswith("]"):  # [::1]:8080, the URL form of an IPv6 address
        host = host[1:-1]
    return host or "127.0.0.1", number


_NAMED_SOURCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$")
_NAMED_URI = re.compile(r"^([^=:/][^=:]*)=([a-z][a-z0-9+.-]*://.*)$")  # a bad name before a URI: say so


def _source_flags(data: dict, flags: list[str]) -> None:
    """``--source URI`` (one camera) or ``--source NAME=URI`` repeated (several): replaces the config's sources."""
    if not flags:
        return
    named = [_NAMED_SOURCE.match(flag) or _NAMED_URI.match(flag) for flag in flags]
    if len(flags) == 1 and named[0] is None:
        data["source"]["uri"] = flags[0]
        data["sources"] = []
        return
    cameras = [{"name": m.group(1), "uri": m.group(2)} if m else {"name": f"cam{i}", "uri": flag}
               for i, (m, flag) in enumerate(zip(named, flags))]
    data["sources"] = cameras
    data.pop("source", None)


def _run_config(args: argparse.Namespace):
    from edge_seg.config import Config, load_config, parse_config

    config = load_config(args.config) if args.config else Config()
    data = config.model_dump(mode="json")
    _source_flags(data, args.source or [])
    flags = {("model", "path"): args.model and str(args.model),
             ("model", "backend"): args.backend, ("model", "num_threads"): args.threads,
             ("output", "video"): args.out and str(args.out), ("output", "jsonl"): args.jsonl and str(args.jsonl),
             ("pipeline", "max_frames"): args.max_frames, ("pipeline", "every_n"): args.every_n,
             ("device", "name"): args.device, ("mqtt", "url"): args.broker,
             ("device", "state_dir"): args.state_dir and str(args.state_dir), ("model", "norm"): args.norm,
             ("model", "input_size"): args.input_size and list(args.input_size)}
    for (section, key), value in flags.items():
        if value is not None:
            data[section][key] = value
    if args.preview:
        data["preview"].update(enabled=True, host=args.preview[0], port=args.preview[1])
    return parse_config(data, "command line" if not args.config else f"{args.config} + flags")


def cmd_run(args: argparse.Namespace) -> int:
    from edge_seg.loop.runner import run

    stats = run(_run_config(args))
    return 1 if stats.completed == 0 and stats.captured == 0 else 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from edge_seg.config import load_config

    config = load_config(args.file)
    sources = ", ".join(f"{c.name} {c.uri}" for c in config.sources) if config.sources else config.source.uri
    print(f"{args.file}: OK (device {config.device.name}, source {sources})")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from edge_seg.config import json_schema

    sys.stdout.write(json_schema())
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from edge_seg.cloud.consumer import run_consumer

    options = {k: v for k, v in (("topic_prefix", args.prefix), ("client_id", args.client_id),
                                 ("password_file", args.password_file), ("tls_ca", args.ca),
                                 ("tls_cert", args.cert), ("tls_key", args.key), ("db", args.db),
                                 ("objects", args.objects)) if v is not None}
    if args.migrate:
        options["migrate"] = True
    stats = run_consumer(args.broker, args.out, share=args.share, duration=args.duration,
                         progress=not args.quiet, **options)
    print("consumer: " + ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, (int, float))))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(json.dumps({"edge_seg": __version__, "python": sys.version.split()[0]}))
    return 0


PLUGIN_GROUP = "edge_seg.commands"


def _add_plugins(sub) -> None:
    """Subcommands other packages register under the ``edge_seg.commands`` entry-point group.

    ``converters`` (the workstation side, extra ``convert``) adds ``edge-seg convert`` this way, so
    the device runtime never imports it. A plugin's ``register(subparsers)`` must be cheap: it
    only declares arguments; its handler imports the heavy things when it runs.
    """
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
        except ImportError as err:
            missing = sub.add_parser(ep.name, help=f"(unavailable: {err.name or err} is not installed)")
            missing.set_defaults(func=lambda args, e=err, name=ep.name: _unavailable(name, e))
            continue
        register(sub)


def _unavailable(name: str, err: ImportError) -> int:
    raise EdgeSegError(f"'edge-seg {name}' needs packages that are not installed ({err}); "
                       "pip install 'edge-seg[convert]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-seg", description="Edge segmentation runtime.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"edge-seg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("infer", help="segment an image or a directory of images")
    p.add_argument("target", type=Path, metavar="IMAGE|DIR", help="an image, or a directory of images")
    model_args(p)
    p.add_argument("--out", "-o", type=Path, default=Path("out/infer"), help="output directory (default out/infer)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    p.add_argument("--contours", action="store_true", help="draw class contours on the overlay")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("eval", help="per-class IoU, mIoU, Dice, accuracy on an images/ + masks/ dataset "
                                    "(instance models: COCO mask AP on images/ + annotations.json)")
    model_args(p)
    p.add_argument("--data", "-d", type=Path, default=None, help="directory with images/ and masks/")
    p.add_argument("--out", "-o", type=Path, default=Path("out/eval"), help="report directory (default out/eval)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--tracking", action="store_true", help="score the tracker (IDF1, MOTA, ID switches) on a "
                   "synthetic clip with crossing and touching objects (default model: the bundled instance model)")
    p.add_argument("--frames", type=int, default=150, help="--tracking: clip length (default 150)")
    p.add_argument("--seed", type=int, default=1, help="--tracking: clip seed (default 1)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="segment a synthetic clip with the bundled model, write an overlay video")
    model_args(p)
    p.add_argument("--out", "-o", type=Path, default=Path("out"), help="output directory (default out)")
    p.add_argument("--frames", type=int, default=150, help="clip length (default 150)")
    p.add_argument("--seed", type=int, default=7, help="clip seed (default 7)")
    p.add_argument("--no-mqtt", action="store_true",
                   help="skip the MQTT leg (local Mosquitto + consumer, or the outbox when none is installed)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    bench.register(sub)

    p = sub.add_parser("manifest", help="model manifest tools")
    msub = p.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    q = msub.add_parser("init", help="write the manifest inferred from a model's tensors, to edit")
    q.add_argument("model", type=Path, metavar="MODEL", help="model file (.tflite, .onnx, .engine)")
    q.add_argument("--output", "-o", type=Path, default=None,
                   help="where to write (default: manifest.json beside MODEL)")
    q.add_argument("--force", action="store_true", help="overwrite an existing file")
    q.add_argument("--backend", "-b", default=None, help="runtime that reads the tensors (default: by file suffix)")
    q.add_argument("--mean", type=floats, default=None, help="input mean to write, e.g. 127.5 or 123.7,116.3,103.5 "
                   "(default: inferred from the input tensor)")
    q.add_argument("--std", type=floats, default=None, help="input std to write, e.g. 127.5 (default: inferred)")
    norm_arg(q)
    input_size_arg(q)
    q.set_defaults(func=cmd_manifest_init)

    p = sub.add_parser("run", help="run the on-device loop (source -> model -> overlay/preview/outputs)")
    p.add_argument("--config", "-c", type=Path, default=None, help="device YAML config (default: built-in defaults)")
    p.add_argument("--source", "-s", action="append", default=None, metavar="[NAME=]URI",
                   help="source URI, e.g. file://clip.mp4, rtsp://..., v4l2:///dev/video0, csi://0, picam://0, "
                   "images://DIR, synthetic:// (default); repeat as NAME=URI for several cameras")
    p.add_argument("--model", "-m", type=Path, default=None, help="model (default: the bundled model)")
    p.add_argument("--backend", "-b", default=None, help="runtime to use: litert, edgetpu, onnxruntime, tensorrt "
                   "(default: by model file suffix)")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    norm_arg(p)
    input_size_arg(p)
    p.add_argument("--preview", type=_preview_address, default=None, metavar="[HOST]:PORT",
                   help="serve the live preview page, e.g. :8080 (binds 127.0.0.1 unless HOST is given; "
                        "another HOST needs preview.token in the config)")
    p.add_argument("--out", "-o", type=Path, default=None, help="write the overlay video here (.mp4)")
    p.add_argument("--jsonl", type=Path, default=None, help="append one JSON summary per frame here")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N segmented frames")
    p.add_argument("--every-n", type=int, default=None, help="segment every Nth frame")
    p.add_argument("--device", default=None, help="device name")
    p.add_argument("--broker", default=None, metavar="URL",
                   help="publish masks and crops to mqtt[s]://[user@]host:port "
                   "(password: EDGE_SEG_MQTT_PASSWORD or mqtt.password_file)")
    p.add_argument("--state-dir", type=Path, default=None, help="outbox and model store (default /var/lib/edge-seg)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("consume", help="cloud side: receive, dedupe and store masks, crops and status from MQTT")
    p.add_argument("--broker", required=True, help="mqtt[s]://[user@]host:port (password: EDGE_SEG_MQTT_PASSWORD)")
    p.add_argument("--out", "-o", type=Path, default=None, help="store into SQLite + this folder (one host)")
    p.add_argument("--db", default=None, metavar="URL", help="store rows into PostgreSQL instead: "
                   "postgresql://user@host:5432/dbname (password: PGPASSWORD or ~/.pgpass); needs --objects")
    p.add_argument("--objects", default=None, metavar="s3://BUCKET/PREFIX", help="with --db: masks and crops "
                   "into S3-compatible object storage (endpoint and keys: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                   "AWS_SECRET_ACCESS_KEY or the AWS config files)")
    p.add_argument("--migrate", action="store_true", help="with --db: create or upgrade the database schema first")
    p.add_argument("--share", default=None, metavar="GROUP", help="MQTT 5 shared subscription group: N consumers "
                   "with the same GROUP split the stream")
    p.add_argument("--prefix", default=None, help="topic prefix (default edge_seg)")
    p.add_argument("--client-id", default=None, help="stable id: a persistent session keeps messages while away")
    p.add_argument("--password-file", type=Path, default=None,
                   help="file holding the broker password (default: $EDGE_SEG_MQTT_PASSWORD)")
    p.add_argument("--ca", type=Path, default=None, help="CA certificate for mqtts://")
    p.add_argument("--cert", type=Path, default=None, help="client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, default=None, help="client key (mutual TLS)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--quiet", "-q", action="store_true", help="no live summary line")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("config", help="device config tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    q = csub.add_parser("check", help="validate a device config file")
    q.add_argument("file", type=Path, metavar="FILE", help="the device YAML config to check")
    q.set_defaults(func=cmd_config_check)
    q = csub.add_parser("schema", help="print the config's JSON Schema")
    q.set_defaults(func=cmd_config_schema)

    _add_plugins(sub)

    p = sub.add_parser("version", help="print versions")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except EdgeSegError as err:
        if args.debug:
            raise
        print(f"edge-seg: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional extra that is not installed (e.g. convert on a device)
        line = missing_extra(err)
        if line is None or args.debug:
            raise
        print(f"edge-seg: error: 'edge-seg {args.command}' needs a package that is missing: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-seg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `edge-seg bench-messages | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
