"""What several ``edge-seg`` subcommands share: model options, the segmenter they describe, and the
action subparsers that plugins extend (``edge-seg model ...``)."""

from __future__ import annotations

import argparse
from pathlib import Path

# the bundled model (``segmenter.DEFAULT_MODEL``), named here so building the parser imports no numpy or cv2
BUNDLED_MODEL = Path(__file__).parent.parent / "models" / "default"


def floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got '{text}'") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got '{text}'")
    return values


def model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", "-m", type=Path, required=required,
                   default=None if required else BUNDLED_MODEL,
                   help="model directory, manifest.json or model file (default: the bundled model)")
    p.add_argument("--backend", "-b", default=None, help="runtime to use (default: by model file suffix)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: runtime's choice)")
    p.add_argument("--mean", type=floats, default=None, help="override input mean, e.g. 127.5 or 123.7,116.3,103.5")
    p.add_argument("--std", type=floats, default=None, help="override input std, e.g. 127.5")
    norm_arg(p)
    input_size_arg(p)


def size(text: str) -> tuple[int, int]:
    """``WxH`` → (width, height)."""
    width, sep, height = text.lower().partition("x")
    try:
        value = (int(width), int(height))
    except ValueError:
        value = (0, 0)
    if not sep or min(value) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x640, got '{text}'")
    return value


def input_size_arg(p: argparse.ArgumentParser) -> None:
    """``--input-size WxH``: the size of a model input with symbolic (dynamic) dims."""
    p.add_argument("--input-size", type=size, default=None, metavar="WxH",
                   help="input size of a model with dynamic height/width (default: its manifest or Ultralytics imgsz)")


NORMS = ("imagenet", "unit", "minus1to1", "raw")  # manifest.NORM_PRESETS, named here so the parser loads no pydantic


def norm_arg(p: argparse.ArgumentParser) -> None:
    """``--norm PRESET``: the input normalisation by name (PyTorch models usually want imagenet)."""
    p.add_argument("--norm", choices=NORMS, default=None,
                   help="input normalisation preset: imagenet (PyTorch/torchvision), unit ([0,1]: TF, Ultralytics, "
                        "MediaPipe), minus1to1, raw (0..255); --mean/--std given with it override its values")


def segmenter_from_args(args: argparse.Namespace):
    from edge_seg.segmenter import Segmenter

    return Segmenter.create(model=args.model, backend=args.backend, num_threads=args.threads,
                            mean=args.mean, std=args.std, norm=args.norm, input_size=args.input_size)


def command_actions(sub, name: str, help: str):
    """The action subparsers of command ``name``, created if no plugin added it yet (several plugins
    extend ``model``: the OTA commands and ``build-engine``)."""
    command = sub.choices.get(name)
    if command is None:
        command = sub.add_parser(name, help=help)
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return command.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


# top-level module -> the extra of edge-seg that installs it (setup.cfg [options.extras_require])
EXTRA_OF = {"tensorflow": "convert", "tf_keras": "convert", "tensorflow_model_optimization": "convert",
            "tf2onnx": "convert", "onnx": "convert", "onnxruntime": "convert", "paho": "device",
            "pycocotools": "device", "prometheus_client": "device", "cryptography": "device",
            "ai_edge_litert": "device", "picamera2": "pi", "tensorrt": "jetson", "scipy": "device",
            "motmetrics": "dev", "psycopg": "cloud", "boto3": "cloud", "botocore": "cloud"}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """One line naming what to install for a module of one of edge-seg's extras, else None (a real bug)."""
    module = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    if extra == "jetson":
        return f"module '{module}' is not installed: it comes with JetPack on the Jetson (extra 'jetson')"
    return f"module '{module}' is not installed: pip install 'edge-seg[{extra}]'"
