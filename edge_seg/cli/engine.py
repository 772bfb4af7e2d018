"""``edge-seg model build-engine``: build (or find) this device's TensorRT engine for a model's ONNX file.

Registered through the ``edge_seg.commands`` entry point; ``register`` imports nothing heavy and
the handler imports TensorRT only when it runs (``edge_seg.backends.tensorrt``).
"""

from __future__ import annotations

import time
from pathlib import Path

from edge_seg.errors import InputError

PRECISIONS = ("auto", "fp16", "int8", "fp32")


def register(subparsers) -> None:
    """Add ``model build-engine`` to the ``edge-seg`` parser."""
    from edge_seg.cli.common import command_actions

    actions = command_actions(subparsers, "model", "model tools (TensorRT engines)")
    p = actions.add_parser("build-engine", help="build this device's TensorRT engine from the model's ONNX (cached)")
    p.add_argument("model", type=Path, metavar="MODEL", help="model directory / manifest.json with an onnx entry, "
                   "or a .onnx file")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): int8 for an explicit-quantisation (Q/DQ) export, else fp16")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB", help="builder workspace (default 1024 MB)")
    p.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson Xavier/Orin), "
                   "falling back to the GPU for unsupported layers")
    p.add_argument("--engine-dir", type=Path, default=None,
                   help="engine cache (default: engines/ beside the model, else ~/.cache/edge_seg/engines)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching engine is cached")
    p.set_defaults(func=_cmd_build_engine)


def onnx_of(model: Path) -> Path:
    """The ONNX file of a model directory, manifest or file; checks the manifest's sha256."""
    from edge_seg.manifest import MANIFEST_NAME, check_file_hash, read_manifest

    model = Path(model)
    if model.suffix == ".onnx":
        if not model.is_file():
            raise InputError(f"model not found: {model}")
        return model
    manifest_path = model / MANIFEST_NAME if model.is_dir() else model
    manifest = read_manifest(manifest_path)
    entry = manifest.files.get("onnx")
    if entry is None:
        raise InputError(f"{manifest_path} lists no onnx file (listed: {', '.join(manifest.files)}): export the "
                         "model with ONNX (edge-seg convert export) to run it on TensorRT")
    path = manifest_path.parent / entry.path
    if not path.is_file():
        raise InputError(f"manifest lists onnx file '{entry.path}' but it is missing from {manifest_path.parent}")
    check_file_hash(path, entry.sha256)
    return path


def _cmd_build_engine(args) -> int:
    from edge_seg.backends import tensorrt

    onnx_path = onnx_of(args.model)
    tensorrt.require()
    precision = args.precision
    if precision == "auto":
        precision = "int8" if tensorrt.onnx_input_quantisation(onnx_path)[0] > 0 else "fp16"
    start = time.perf_counter()
    engine, built = tensorrt.ensure_engine(onnx_path, args.engine_dir, precision, args.workspace, args.dla_core,
                                           force=args.force)
    verb = f"built in {time.perf_counter() - start:.0f} s" if built else "cached (matching key)"
    print(f"{engine} ({precision}): {verb}")
    return 0
