"""``load_model``: find the model file and its manifest, open a backend, validate one against the other.

``path`` may be a model directory (with ``manifest.json``), a ``manifest.json``, or a model
file. A model file with no manifest that lists it still runs: the manifest is inferred from its
tensors (``manifest_guess.infer_manifest``) and one notice line says what was inferred.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_seg import backends
from edge_seg.backends.base import Backend, BackendOptions
from edge_seg.errors import InputError, ManifestError, ModelError
from edge_seg.manifest import (
    MANIFEST_NAME,
    NORM_PRESETS,
    Manifest,
    check_file_hash,
    read_manifest,
    validate,
)
from edge_seg.manifest_guess import infer_manifest
from edge_seg.model_metadata import ModelMetadata, read_metadata

log = logging.getLogger(__name__)

# which manifest `files` entry each backend runs
FILE_KEYS = {"litert": "tflite", "edgetpu": "edgetpu", "onnxruntime": "onnx", "tensorrt": "onnx"}


@dataclass
class LoadedModel:
    """A backend with its model loaded, and the manifest that describes it."""

    manifest: Manifest
    backend: Backend
    path: Path
    sha256: str
    inferred: str | None = None  # the notice line when the manifest was inferred

    def close(self) -> None:
        self.backend.close()


def _manifest_listing(model_file: Path) -> tuple[Manifest, str] | None:
    """The manifest beside ``model_file`` that lists it, with its files key."""
    candidate = model_file.parent / MANIFEST_NAME
    if not candidate.is_file():
        return None
    manifest = read_manifest(candidate)
    for key, entry in manifest.files.items():
        if Path(entry.path).name == model_file.name:
            return manifest, key
    return None


def _pick_file(manifest: Manifest, root: Path, backend: str | None, source: Path) -> tuple[Path, str]:
    if not manifest.files:
        raise ManifestError(f"{source}: field 'files' lists no model file")
    key = FILE_KEYS.get(backend or "", None) if backend else None
    if key is None:
        key = "tflite" if "tflite" in manifest.files else next(iter(manifest.files))
    entry = manifest.files.get(key)
    if entry is None:
        raise ManifestError(f"{source}: no '{key}' file listed for backend '{backend}' "
                            f"(listed: {', '.join(manifest.files)})")
    path = root / entry.path
    if not path.is_file():
        raise ManifestError(f"manifest lists {key} file '{entry.path}' but it is missing from {root}")
    return path, key


def _resolve(path: Path, backend: str | None) -> tuple[Path, Manifest | None, str | None]:
    """(model file, manifest or None, files key)."""
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        if manifest_path.is_file():
            manifest = read_manifest(manifest_path)
            model_file, key = _pick_file(manifest, path, backend, manifest_path)
            return model_file, manifest, key
        models = sorted(p for p in path.iterdir() if p.suffix in (".tflite", ".onnx", ".engine", ".plan"))
        if len(models) != 1:
            raise ModelError(f"{path} has no {MANIFEST_NAME} and {len(models)} model files; "
                             "pass the model file itself")
        path = models[0]
    if path.suffix == ".json":
        manifest = read_manifest(path)
        model_file, key = _pick_file(manifest, path.parent, backend, path)
        return model_file, manifest, key
    listing = _manifest_listing(path)
    if listing is not None:
        return path, listing[0], listing[1]
    return path, None, None


def check_model(path: str | Path, backend: str | None = None) -> Path:
    """The model file ``load_model`` would open, checked without loading it (path, manifest, backend name)."""
    model_file, _, _ = _resolve(Path(path), backend)
    if not model_file.is_file():
        raise ModelError(f"model not found: {model_file}")
    backends.require(backend or backends.backend_for_path(model_file))
    return model_file


def _normalisation(manifest: Manifest, mean: list[float] | None, std: list[float] | None,
                   norm: str | None) -> Manifest:
    """``manifest`` with its input normalisation overridden by ``--norm`` and/or ``--mean``/``--std``."""
    overrides = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    if not overrides and norm is None:
        return manifest
    data = manifest.input.model_dump()
    if norm is not None:
        data["mean"], data["std"] = NORM_PRESETS[norm]
    data["norm"] = norm if not overrides else None  # --mean/--std given with --norm override its values
    data.update(overrides)
    try:
        checked = type(manifest.input).model_validate(data)
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        given = ", ".join(f"--{key} {','.join(f'{v:g}' for v in value)}" for key, value in overrides.items())
        given = ", ".join(filter(None, [f"--norm {norm}" if norm else "", given]))
        raise InputError(f"input normalisation: {problems}, got {given}") from None
    return manifest.model_copy(update={"input": checked})


def _given(norm: str | None, mean: list[float] | None, std: list[float] | None) -> str:
    """The notice part for a normalisation given on the command line (it replaces the inferred one)."""
    flags = [f"--norm {norm}" if norm else "", "--mean/--std" if mean or std else ""]
    given = " with ".join(f for f in flags if f)
    return f"normalisation {given} used instead" if given else ""


def _fix_dynamic_input(runtime, manifest: Manifest | None, metadata: ModelMetadata | None,
                       input_size: tuple[int, int] | None) -> str:
    """Give an input with symbolic dims (batch, height, width) its size: ``input_size`` (``--input-size``),
    else the manifest's, else the metadata's ``imgsz``. Returns a notice part saying where it came from."""
    dims = tuple(getattr(runtime, "input_dims", ()) or ())
    if not dims or all(d is not None for d in dims):
        return ""
    name = runtime.input_spec.name
    shown = [d if d is not None else "?" for d in dims]
    if manifest is not None:
        layout = manifest.input.layout
    elif len(dims) == 4 and (dims[1] == 3) != (dims[3] == 3):
        layout = "NCHW" if dims[1] == 3 else "NHWC"
    else:
        raise ModelError(f"input tensor '{name}' {shown} has symbolic dims and no axis of 3 channels: set "
                         "input.layout, input.width and input.height in a manifest")
    static = (dims[2], dims[3]) if layout == "NCHW" and len(dims) == 4 else tuple(dims[1:3])
    if input_size is not None:
        (width, height), where = input_size, "--input-size"
    elif None not in static:  # only the batch is symbolic
        (height, width), where = static, "its static height and width (batch 1)"
    elif manifest is not None:
        (width, height), where = (manifest.input.width, manifest.input.height), "the manifest"
    elif metadata is not None and metadata.imgsz is not None:
        (width, height), where = metadata.imgsz, f"imgsz of its {metadata.source}"
    else:
        raise ModelError(f"input tensor '{name}' {shown} has symbolic dims: pass --input-size WxH or set "
                         "input.width and input.height in a manifest")
    shape = (1, 3, height, width) if layout == "NCHW" else (1, height, width, 3)
    clash = [i for i, (d, s) in enumerate(zip(dims, shape, strict=False)) if d is not None and d != s]
    if len(dims) != 4 or clash:
        raise ModelError(f"input tensor '{name}' {shown} cannot take {list(shape)} ({layout} {width}x{height} from "
                         f"{where}): set input.layout and the size to the model's")
    runtime.fix_input_shape(shape)
    return f"symbolic input dims sized {width}x{height} from {where}"


def load_model(path: str | Path, backend: str | None = None, options: BackendOptions | None = None,
               mean: list[float] | None = None, std: list[float] | None = None,
               norm: str | None = None, input_size: tuple[int, int] | None = None) -> LoadedModel:
    """Load a model for inference and validate its manifest against its tensors.

    ``backend`` overrides the choice by file suffix; ``norm`` (a ``manifest.NORM_PRESETS`` name)
    and ``mean``/``std`` override the input normalisation (of the manifest, or of the inferred one);
    ``input_size`` (width, height) sizes an input with symbolic dims. Ultralytics metadata in the
    model file gives class names, image size and head type to a model without a manifest.
    """
    model_file, manifest, key = _resolve(Path(path), backend)
    if not model_file.is_file():
        raise ModelError(f"model not found: {model_file}")
    expected = manifest.files[key].sha256 if manifest is not None else None
    sha256 = check_file_hash(model_file, expected)
    name = backend or backends.backend_for_path(model_file)
    runtime = backends.create(name)
    runtime.load(model_file, manifest, options or BackendOptions())
    notice = None
    try:
        metadata, ignored = read_metadata(model_file, getattr(runtime, "metadata", None)) if manifest is None \
            else (None, None)
        if ignored:
            log.warning(ignored)
        sized = _fix_dynamic_input(runtime, manifest, metadata, input_size)
        if manifest is None:
            manifest, notice = infer_manifest(model_file, runtime, metadata)
            extra = [metadata.describe() if metadata is not None else "", sized,
                     _given(norm, mean, std)]
            notice = "; ".join([notice] + [e for e in extra if e])
            log.warning(notice)
        manifest = _normalisation(manifest, mean, std, norm)
        validate(manifest, runtime.input_spec, runtime.output_specs)
    except Exception:
        runtime.close()
        raise
    return LoadedModel(manifest=manifest, backend=runtime, path=model_file, sha256=sha256, inferred=notice)
