"""Ultralytics metadata embedded in single-file exports, read without a manifest (FIELD-NOTES, "Models users bring").

* ``.onnx``: the ``metadata_props`` string map (onnxruntime's ``custom_metadata_map`` gives it, so the
  ``onnx`` package is not needed); each value is ``str()`` of a Python value (``names`` is a dict
  literal ``{0: 'person', ...}``), parsed with ``ast.literal_eval`` only;
* ``.tflite``: a zip archive appended to the flatbuffer, holding ``metadata.json``;
* ``.engine``: a 4-byte little-endian length and that much JSON before the serialized engine
  (``split_engine_header`` strips it before the engine is deserialised).

Kept: class names, ``imgsz`` (as width, height), ``task``, ``stride``, ``end2end``, ``dynamic``.
Metadata that does not read as Ultralytics' (bad literal, wrong types, a zip without the file,
a header that lies about its length) is ignored with a notice line, never an error.
"""

from __future__ import annotations

import ast
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_TEXT = 1 << 20  # a metadata value or file longer than this is not metadata
MAX_SIDE = 16384
KEYS = ("names", "imgsz", "task", "stride", "end2end", "args")


class MalformedMetadata(ValueError):
    """Metadata present but not readable as Ultralytics'; the message says what is wrong."""


@dataclass(frozen=True)
class ModelMetadata:
    """What an Ultralytics export says about itself."""

    source: str  # where it was read, for notices: "onnx metadata_props", "tflite metadata.json", "engine header"
    names: list[str] | None = None
    imgsz: tuple[int, int] | None = None  # (width, height)
    task: str | None = None
    stride: int | None = None
    end2end: bool | None = None
    dynamic: bool | None = None

    def describe(self) -> str:
        parts = [f"{len(self.names)} class names" if self.names else "",
                 f"imgsz {self.imgsz[0]}x{self.imgsz[1]}" if self.imgsz else "",
                 f"task {self.task}" if self.task else "", "end-to-end" if self.end2end else ""]
        return f"Ultralytics metadata ({self.source}: {', '.join(p for p in parts if p) or 'nothing used'})"


def _literal(value):
    """A ``str()``-ed Python value back (strings that are not literals stay strings)."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_TEXT:
        raise MalformedMetadata(f"a value of {len(value)} characters")
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _names(value) -> list[str]:
    if isinstance(value, dict):
        try:
            keyed = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            raise MalformedMetadata("names has a key that is not a class index") from None
        if sorted(keyed) != list(range(len(keyed))):
            raise MalformedMetadata("names keys are not 0..n-1")
        value = [keyed[i] for i in range(len(keyed))]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise MalformedMetadata("names is not a list or {index: name} dict of strings")
    return [v[:200] for v in value]


def _imgsz(value) -> tuple[int, int]:
    """Ultralytics ``imgsz`` (an int, or [height, width]) as (width, height)."""
    sides = [value] if isinstance(value, int) else value
    if (not isinstance(sides, (list, tuple)) or len(sides) not in (1, 2)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE for s in sides)):
        raise MalformedMetadata(f"imgsz {str(value)[:40]} is not an int or [height, width]")
    height, width = (sides[0], sides[0]) if len(sides) == 1 else sides
    return width, height


def _typed(value, kind, key: str):
    if value is None:
        return None
    if kind is bool and isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedMetadata(f"{key} is {str(value)[:40]!r}, not {kind.__name__}")
    return value


def parse(props: dict, source: str) -> ModelMetadata | None:
    """``ModelMetadata`` of an Ultralytics key/value map, None when it has none of their keys.

    Raises ``MalformedMetadata`` when the keys are there but the values do not read.
    """
    if not isinstance(props, dict) or not any(k in props for k in KEYS):
        return None
    values = {k: _literal(props.get(k)) for k in KEYS}
    args = values["args"] if isinstance(values["args"], dict) else {}
    return ModelMetadata(
        source=source,
        names=_names(values["names"]) if values["names"] is not None else None,
        imgsz=_imgsz(values["imgsz"]) if values["imgsz"] is not None else None,
        task=_typed(values["task"], str, "task"),
        stride=_typed(values["stride"], int, "stride"),
        end2end=_typed(values["end2end"], bool, "end2end"),
        dynamic=_typed(args.get("dynamic"), bool, "args.dynamic"))


def split_engine_header(data: bytes) -> tuple[dict | None, bytes]:
    """(the JSON header of an Ultralytics ``.engine``, the serialized engine after it); (None, data) without one."""
    if len(data) < 6 or data[4:5] != b"{":
        return None, data
    (length,) = struct.unpack("<I", data[:4])
    if length > min(MAX_TEXT, len(data) - 4):
        return None, data
    try:
        header = json.loads(data[4:4 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, data
    return (header if isinstance(header, dict) else None), data[4 + length:]


def _tflite_props(path: Path) -> dict | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo("metadata.json")
        except KeyError:
            return None
        if info.file_size > MAX_TEXT:
            raise MalformedMetadata(f"metadata.json of {info.file_size} bytes")
        try:
            data = json.loads(archive.read(info).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, zipfile.BadZipFile) as err:
            raise MalformedMetadata(f"metadata.json does not read as JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise MalformedMetadata("metadata.json is not a JSON object")
    return data


def _engine_props(path: Path) -> dict | None:
    with open(path, "rb") as f:
        head = f.read(4 + MAX_TEXT)
    header, _ = split_engine_header(head)
    return header


def read_metadata(model_file: Path, props: dict | None = None) -> tuple[ModelMetadata | None, str | None]:
    """(the Ultralytics metadata of ``model_file`` or None, a notice line when some was there but ignored).

    ``props``: the string map the backend already read (onnxruntime's ``custom_metadata_map``).
    """
    model_file = Path(model_file)
    suffix = model_file.suffix
    source = {".onnx": "onnx metadata_props", ".tflite": "tflite metadata.json"}.get(suffix, "engine header")
    try:
        if props is None and suffix == ".tflite":
            props = _tflite_props(model_file)
        elif props is None and suffix in (".engine", ".plan"):
            props = _engine_props(model_file)
        return parse(props or {}, source), None
    except (MalformedMetadata, OSError, zipfile.BadZipFile) as err:
        return None, f"notice: {model_file.name}: its Ultralytics metadata ({source}) is ignored: {err}"
