"""Model manifest: schema, reading, inference from tensors, and validation (DESIGN §3).

A manifest (``manifest.json`` beside the model files) says what a model is: its task, classes,
palette, how to feed its input and how to read its output. ``validate`` checks it against the
tensors the backend actually loaded and raises one ``ManifestError`` per problem, each a single
line that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_seg.errors import ManifestError, field_path

SCHEMA = "edge_seg.manifest/v1"
Channel = Annotated[int, Field(ge=0, le=255)]  # one 8-bit colour channel of the palette
MANIFEST_NAME = "manifest.json"
OUTPUT_KINDS = ("logits", "probabilities", "sigmoid", "class_map", "yolo_seg")

Dtype = Literal["float32", "uint8", "int8"]


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """A distinct RGB colour per class; class 0 (background) is black."""
    base = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190),
            (0, 128, 128), (170, 110, 40), (128, 0, 0), (128, 128, 0), (0, 0, 128)]
    rng = np.random.default_rng(0)
    extra = [tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(max(0, n - len(base)))]
    return (base + extra)[:n]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no NaN mean, no inf scale


class InputSpec(_Strict):
    """How a frame becomes the model's input tensor: ``real = (pixel - mean) / std``."""

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    layout: Literal["NHWC"] = "NHWC"
    color_order: Literal["rgb", "bgr"] = "rgb"
    dtype: Dtype = "float32"
    resize: Literal["stretch", "letterbox"] = "stretch"
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [255.0, 255.0, 255.0])

    @model_validator(mode="after")
    def _three_channels(self) -> "InputSpec":
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, 3):
                raise ValueError(f"{key} needs 1 or 3 values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class OutputSpec(_Strict):
    """How to read the model's output tensor(s)."""

    kind: Literal["logits", "probabilities", "sigmoid", "class_map", "yolo_seg"]
    tensors: list[str] = Field(default_factory=list)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # yolo_seg only (``threshold`` is then the mask threshold); None: 0.25, 0.5, 100
    score_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)
    iou_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    max_detections: int | None = Field(default=None, gt=0)


class FileEntry(_Strict):
    path: str
    sha256: str | None = None


class Manifest(_Strict):
    """The model manifest (DESIGN §3)."""

    schema_: str = Field(default=SCHEMA, alias="schema")
    name: str
    version: str = "0.0.0"
    task: Literal["semantic", "binary", "instance"]
    classes: list[str] = Field(min_length=1)
    palette: list[tuple[Channel, Channel, Channel]] = Field(default_factory=list)
    input: InputSpec
    output: OutputSpec
    files: dict[str, FileEntry] = Field(default_factory=dict)
    baseline: dict[str, float] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if not self.schema_.startswith("edge_seg.manifest/"):
            raise ValueError(f"schema '{self.schema_}' is not an edge_seg manifest")
        if not self.palette:
            self.palette = default_palette(len(self.classes))
        if len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if self.task == "binary" and len(self.classes) != 2:
            raise ValueError("a binary model has exactly 2 classes (background, foreground)")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dump(self) -> str:
        """The manifest as indented JSON text."""
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True) + "\n"


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = field_path(first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "literal_error":
        msg = f"got {first['input']!r}; {msg[0].lower()}{msg[1:]}"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: field '{where}': {msg}{more}"


def parse_manifest(data: dict, source: str = "manifest") -> Manifest:
    """Validate a manifest dict; a bad field raises ``ManifestError`` naming the field."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(_one_line(err, source)) from None


def read_manifest(path: Path) -> Manifest:
    """Read and validate ``manifest.json``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not readable JSON ({err})") from None
    except RecursionError:
        raise ManifestError(f"{path}: nested too deeply to be a manifest") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest is a JSON object")
    return parse_manifest(data, str(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file_hash(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise if the manifest names another one."""
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise ManifestError(
            f"sha256 mismatch for {path.name}: manifest says {expected[:12]}…, file is {actual[:12]}… "
            "(the file changed after export: re-export it or fix the manifest)")
    return actual


# --- validation against the loaded tensors -------------------------------------------------

def validate(manifest: Manifest, input_tensor, output_tensors: list) -> None:
    """Check the manifest against the model's real tensors (``TensorSpec`` values).

    Raises ``ManifestError`` with one line for the first disagreement found.
    """
    shape = tuple(input_tensor.shape)
    if len(shape) != 4 or shape[3] != 3:
        raise ManifestError(f"model input shape {list(shape)} is not [1, height, width, 3] (NHWC)")
    spec = manifest.input
    if (shape[2], shape[1]) != (spec.width, spec.height):
        raise ManifestError(f"manifest input is {spec.width}x{spec.height}, model input is {shape[2]}x{shape[1]}")
    if input_tensor.dtype_name != spec.dtype:
        raise ManifestError(f"manifest input dtype is {spec.dtype}, model input is {input_tensor.dtype_name}")
    out = manifest.output
    if (out.kind == "yolo_seg") != (manifest.task == "instance"):
        raise ManifestError(f"task '{manifest.task}' with output kind '{out.kind}': instance models use kind "
                            "'yolo_seg' and only they do")
    names = [t.name for t in output_tensors]
    for wanted in out.tensors:
        if wanted not in names:
            raise ManifestError(f"manifest names output tensor '{wanted}'; the model outputs {', '.join(names)}")
    if out.kind == "yolo_seg":
        _validate_yolo_seg(manifest, output_tensors)
        return
    tensor = output_tensor(manifest, output_tensors)
    oshape = tuple(tensor.shape)
    if out.kind == "class_map":
        if len(oshape) not in (3, 4) or (len(oshape) == 4 and oshape[3] != 1):
            raise ManifestError(f"a class_map output has shape [1, h, w] or [1, h, w, 1], got {list(oshape)}")
        return
    if len(oshape) != 4:
        raise ManifestError(f"a {out.kind} output has shape [1, h, w, channels], got {list(oshape)}")
    channels = oshape[3]
    if manifest.task == "binary":
        if channels != 1:
            raise ManifestError(f"manifest says binary (1 output channel), model outputs {channels} channels")
    elif channels != manifest.num_classes:
        raise ManifestError(f"manifest says {manifest.num_classes} classes, model outputs {channels} channels")


def yolo_seg_tensors(manifest: Manifest, output_tensors: list) -> list:
    """The tensors of a yolo_seg model: the ones ``output.tensors`` names (in any order), else all."""
    if manifest.output.tensors:
        by_name = {t.name: t for t in output_tensors}
        return [by_name[n] for n in manifest.output.tensors]
    return list(output_tensors)


def _validate_yolo_seg(manifest: Manifest, output_tensors: list) -> None:
    """Roles by rank: one detection tensor [1, 4+nc+nm, N] (or [1, N, 4+nc+nm]), one prototype tensor."""
    from edge_seg.errors import ModelError
    from edge_seg.tensors import resolve_layout

    tensors = yolo_seg_tensors(manifest, output_tensors)
    if manifest.output.tensors and len(tensors) != 2:
        raise ManifestError(f"a yolo_seg manifest names 2 output tensors (detections, prototypes), "
                            f"got {len(tensors)}")
    try:
        resolve_layout(tensors, manifest.num_classes)
    except ModelError as err:
        raise ManifestError(f"manifest says {manifest.num_classes} classes (yolo_seg): {err}") from None


def output_tensor(manifest: Manifest, output_tensors: list):
    """The output tensor the manifest describes (named, or the first)."""
    if manifest.output.tensors:
        by_name = {t.name: t for t in output_tensors}
        return by_name[manifest.output.tensors[0]]
    return output_tensors[0]


# --- a manifest inferred from the tensors, for a model that comes without one --------------

def _quantised_pixel_mapping(tensor) -> tuple[list[float], list[float]]:
    """mean/std that send pixels 0..255 onto the full quantised range of the input tensor."""
    qmin = int(np.iinfo(tensor.dtype).min)
    std = 1.0 / tensor.scale
    mean = (tensor.zero_point - qmin) * 1.0
    return [mean] * 3, [std] * 3


def _probe_kind(backend, input_tensor, out_tensor) -> str:
    """'probabilities'/'sigmoid' if a probe frame gives values in [0, 1] (summing to 1), else 'logits'."""
    rng = np.random.default_rng(0)
    info = np.iinfo(input_tensor.dtype) if input_tensor.dtype != np.float32 else None
    if info is None:
        probe = rng.random(input_tensor.shape, dtype=np.float32)
    else:
        probe = rng.integers(info.min, info.max, input_tensor.shape, endpoint=True).astype(input_tensor.dtype)
    outputs = backend.infer(probe)
    values = out_tensor.dequantize(outputs[[t.name for t in backend.output_specs].index(out_tensor.name)])
    in_range = bool(values.min() >= -1e-3 and values.max() <= 1.0 + 1e-3)
    if values.shape[-1] == 1:
        return "sigmoid" if in_range else "logits"
    sums_to_one = bool(np.allclose(values.sum(axis=-1), 1.0, atol=0.05))
    return "probabilities" if in_range and sums_to_one else "logits"


def infer_manifest(model_file: Path, backend) -> tuple[Manifest, str]:
    """A manifest guessed from a loaded backend's tensors, and the notice line that lists the guesses."""
    tin = backend.input_spec
    if len(tin.shape) != 4 or tin.shape[3] != 3:
        raise ManifestError(f"{model_file.name}: input shape {list(tin.shape)} is not [1, height, width, 3] "
                            "and it has no manifest")
    if sorted(len(t.shape) for t in backend.output_specs) == [3, 4]:
        return _infer_instance_manifest(model_file, backend)
    tout = backend.output_specs[0]
    if tout.dtype in (np.uint8, np.int8) and not tout.quantized or len(tout.shape) == 3:
        kind, channels = "class_map", 0
    else:
        if len(tout.shape) != 4:
            raise ManifestError(f"{model_file.name}: output shape {list(tout.shape)} is not [1, h, w, C] "
                                "and it has no manifest")
        channels = tout.shape[3]
        kind = _probe_kind(backend, tin, tout)
    if channels == 1:
        task, classes = "binary", ["background", "foreground"]
    else:
        task = "semantic"
        n = channels or 256
        classes = [f"class_{i}" for i in range(n)]
    if tin.quantized:
        mean, std = _quantised_pixel_mapping(tin)
    elif tin.dtype == np.float32:
        mean, std = [0.0] * 3, [255.0] * 3
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    manifest = Manifest(
        name=model_file.stem, task=task, classes=classes,
        input=InputSpec(width=tin.shape[2], height=tin.shape[1], dtype=np.dtype(tin.dtype).name,
                        mean=mean, std=std),
        output=OutputSpec(kind=kind, tensors=[tout.name]),
        files={"tflite" if model_file.suffix == ".tflite" else model_file.suffix.lstrip("."):
               FileEntry(path=model_file.name)})
    scale = "[0,1]" if tin.dtype == np.float32 else f"mean={mean[0]:g} std={std[0]:g}"
    notice = (f"notice: {model_file.name} has no manifest; inferred: input {tin.shape[2]}x{tin.shape[1]} "
              f"{np.dtype(tin.dtype).name} rgb stretch {scale}; output {kind} "
              f"{'1 channel -> binary' if task == 'binary' else f'{len(classes)} classes -> semantic'}; "
              f"names class_0..; run 'edge-seg manifest init {model_file.name}' to write and edit it")
    return manifest, notice


def _input_mapping(tin) -> tuple[list[float], list[float]]:
    if tin.quantized:
        return _quantised_pixel_mapping(tin)
    if tin.dtype == np.float32:
        return [0.0] * 3, [255.0] * 3
    return [0.0] * 3, [1.0] * 3


def _infer_instance_manifest(model_file: Path, backend) -> tuple[Manifest, str]:
    """An instance (yolo_seg) manifest for a model with a 3-D and a 4-D output, roles from shapes."""
    from edge_seg.errors import ModelError
    from edge_seg.tensors import resolve_layout

    tin = backend.input_spec
    try:
        layout = resolve_layout(backend.output_specs)
    except ModelError as err:
        raise ManifestError(f"{model_file.name}: {err} (and it has no manifest)") from None
    mean, std = _input_mapping(tin)
    det, proto = backend.output_specs[layout.detections], backend.output_specs[layout.prototypes]
    manifest = Manifest(
        name=model_file.stem, task="instance", classes=[f"class_{i}" for i in range(layout.num_classes)],
        input=InputSpec(width=tin.shape[2], height=tin.shape[1], dtype=np.dtype(tin.dtype).name,
                        resize="letterbox", mean=mean, std=std),
        output=OutputSpec(kind="yolo_seg", tensors=[det.name, proto.name]),
        files={"tflite" if model_file.suffix == ".tflite" else model_file.suffix.lstrip("."):
               FileEntry(path=model_file.name)})
    notice = (f"notice: {model_file.name} has no manifest; inferred from output shapes: instance model "
              f"(yolo_seg), {det.name} = {layout.describe()}, {proto.name} = prototypes; input "
              f"{tin.shape[2]}x{tin.shape[1]} {np.dtype(tin.dtype).name} rgb letterbox; names class_0..; "
              f"run 'edge-seg manifest init {model_file.name}' to write and edit it")
    return manifest, notice
