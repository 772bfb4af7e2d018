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
OUTPUT_KINDS = ("logits", "probabilities", "sigmoid", "class_map", "yolo_seg", "yolo_seg_end2end")
INSTANCE_KINDS = ("yolo_seg", "yolo_seg_end2end")

Dtype = Literal["float32", "uint8", "int8"]
Layout = Literal["NHWC", "NCHW"]
# ``--norm`` presets as (mean, std) on 0..255 pixels: real = (pixel - mean) / std
NORM_PRESETS = {
    "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),  # torchvision / PyTorch models
    "unit": ([0.0, 0.0, 0.0], [255.0, 255.0, 255.0]),  # [0, 1]: TF/Keras, Ultralytics, MediaPipe
    "minus1to1": ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5]),  # [-1, 1]: MobileNet-style TF models
    "raw": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),  # 0..255 as they are
}
Norm = Literal["imagenet", "unit", "minus1to1", "raw"]


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
    layout: Layout = "NHWC"  # NCHW: [1, 3, height, width] (PyTorch exports)
    color_order: Literal["rgb", "bgr"] = "rgb"
    dtype: Dtype = "float32"
    resize: Literal["stretch", "letterbox"] = "stretch"
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [255.0, 255.0, 255.0])
    norm: Norm | None = None  # a preset that sets mean and std (NORM_PRESETS)

    @model_validator(mode="after")
    def _three_channels(self) -> "InputSpec":
        if self.norm is not None:
            mean, std = NORM_PRESETS[self.norm]
            given = {k for k in ("mean", "std") if k in self.model_fields_set}
            for key, preset in (("mean", mean), ("std", std)):
                value = getattr(self, key)
                if key in given and [float(v) for v in (value * 3 if len(value) == 1 else value)] != preset:
                    raise ValueError(f"norm '{self.norm}' sets {key} {preset}, but {key} is {value}: keep one")
            self.mean, self.std = list(mean), list(std)
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, 3):
                raise ValueError(f"{key} needs 1 or 3 values, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class OutputSpec(_Strict):
    """How to read the model's output tensor(s)."""

    kind: Literal["logits", "probabilities", "sigmoid", "class_map", "yolo_seg", "yolo_seg_end2end"]
    tensors: list[str] = Field(default_factory=list)
    # semantic kinds: which output is the mask when the model has several (name or index; None: ``tensors[0]``
    # or the first), and its layout ([1, h, w, C] or [1, C, h, w]; None: the input's layout)
    tensor: str | Annotated[int, Field(ge=0)] | None = None
    layout: Layout | None = None
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

def input_axes(layout: str) -> tuple[int, int, int]:
    """(height, width, channel) axes of a 4-D input tensor in ``layout``."""
    return (2, 3, 1) if layout == "NCHW" else (1, 2, 3)


def validate(manifest: Manifest, input_tensor, output_tensors: list) -> None:
    """Check the manifest against the model's real tensors (``TensorSpec`` values).

    Raises ``ManifestError`` with one line for the first disagreement found.
    """
    shape = tuple(input_tensor.shape)
    spec = manifest.input
    h_axis, w_axis, c_axis = input_axes(spec.layout)
    if len(shape) != 4 or shape[c_axis] != 3:
        want = "[1, 3, height, width] (NCHW)" if spec.layout == "NCHW" else "[1, height, width, 3] (NHWC)"
        raise ManifestError(f"input tensor '{input_tensor.name}' {list(shape)} is not {want}: set input.layout "
                            "to the model's (NHWC or NCHW)")
    if (shape[w_axis], shape[h_axis]) != (spec.width, spec.height):
        raise ManifestError(f"manifest input is {spec.width}x{spec.height}, model input is "
                            f"{shape[w_axis]}x{shape[h_axis]}")
    if input_tensor.dtype_name != spec.dtype:
        raise ManifestError(f"manifest input dtype is {spec.dtype}, model input is {input_tensor.dtype_name}")
    out = manifest.output
    if (out.kind in INSTANCE_KINDS) != (manifest.task == "instance"):
        raise ManifestError(f"task '{manifest.task}' with output kind '{out.kind}': instance models use kind "
                            "'yolo_seg' or 'yolo_seg_end2end' and only they do")
    names = [t.name for t in output_tensors]
    for wanted in out.tensors + ([out.tensor] if isinstance(out.tensor, str) else []):
        if wanted not in names:
            raise ManifestError(f"manifest names output tensor '{wanted}'; the model outputs {', '.join(names)}")
    if isinstance(out.tensor, int) and out.tensor >= len(names):
        raise ManifestError(f"output.tensor is {out.tensor}; the model has {len(names)} outputs "
                            f"({', '.join(names)})")
    if out.kind in INSTANCE_KINDS:
        _validate_yolo_seg(manifest, output_tensors)
        return
    _validate_semantic(manifest, output_tensor(manifest, output_tensors))


def output_layout(manifest: Manifest) -> str:
    """The layout of a semantic output: ``output.layout``, else the input's."""
    return manifest.output.layout or manifest.input.layout


def _validate_semantic(manifest: Manifest, tensor) -> None:
    out = manifest.output
    oshape = tuple(tensor.shape)
    nchw = output_layout(manifest) == "NCHW"
    where = f"output tensor '{tensor.name}' {list(oshape)}"
    if out.kind == "class_map":
        one = oshape[1] if nchw else oshape[-1]
        if len(oshape) not in (3, 4) or (len(oshape) == 4 and one != 1):
            want = "[1, 1, h, w]" if nchw else "[1, h, w, 1]"
            raise ManifestError(f"{where}: a class_map output has shape [1, h, w] or {want} "
                                "(set output.layout, or output.tensor to the class map)")
        return
    if len(oshape) != 4:
        want = "[1, channels, h, w]" if nchw else "[1, h, w, channels]"
        raise ManifestError(f"{where}: a {out.kind} output has shape {want}; set output.tensor to the mask output")
    channels = oshape[1] if nchw else oshape[3]
    hint = f" (output '{tensor.name}' {list(oshape)} read as NCHW: set output.layout if it is NHWC)" if nchw else ""
    if manifest.task == "binary":
        if channels != 1:
            raise ManifestError(f"manifest says binary (1 output channel), model outputs {channels} channels{hint}")
    elif channels != manifest.num_classes:
        raise ManifestError(f"manifest says {manifest.num_classes} classes, model outputs {channels} channels{hint}")


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
        resolve_layout(tensors, manifest.num_classes, end2end=manifest.output.kind == "yolo_seg_end2end")
    except ModelError as err:
        raise ManifestError(f"manifest says {manifest.num_classes} classes (yolo_seg): {err}") from None


def output_tensor(manifest: Manifest, output_tensors: list):
    """The output tensor the manifest describes: ``output.tensor`` (name or index), else named, else the first."""
    pick = manifest.output.tensor
    if isinstance(pick, int):
        return output_tensors[pick]
    if pick is not None:
        return next(t for t in output_tensors if t.name == pick)
    if manifest.output.tensors:
        by_name = {t.name: t for t in output_tensors}
        return by_name[manifest.output.tensors[0]]
    return output_tensors[0]
