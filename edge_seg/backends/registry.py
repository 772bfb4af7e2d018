"""Pick a backend by name or by model file suffix (longest suffix first), importing lazily."""

from __future__ import annotations

import importlib
from pathlib import Path

from edge_seg.backends.base import Backend
from edge_seg.errors import BackendUnavailable, ModelError

# name -> "module:Class"; modules are imported only when the backend is used.
_BACKENDS: dict[str, str] = {
    "litert": "edge_seg.backends.litert:LiteRTBackend",
    "edgetpu": "edge_seg.backends.edgetpu:EdgeTPUBackend",
    "onnxruntime": "edge_seg.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "edge_seg.backends.tensorrt:TensorRTBackend",
}
# suffix -> backend name, checked longest first so "_edgetpu.tflite" wins over ".tflite".
_SUFFIXES: dict[str, str] = {
    "_edgetpu.tflite": "edgetpu",
    ".tflite": "litert",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".onnx": "onnxruntime",
}


def available() -> list[str]:
    """Names of the backends this version ships."""
    return sorted(_BACKENDS)


def backend_for_path(path: Path) -> str:
    """The backend name for a model file, by its suffix."""
    name = Path(path).name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    valid = ", ".join(sorted(_SUFFIXES, key=len, reverse=True))
    raise ModelError(f"unknown model file type '{Path(path).name}': expected one of {valid}")


def require(name: str) -> str:
    """The ``module:Class`` of backend ``name``; ``BackendUnavailable`` when this version has no such backend
    (nothing is imported)."""
    target = _BACKENDS.get(name)
    if target is None:
        raise BackendUnavailable(
            f"backend '{name}' is not available in this version (available: {', '.join(available())})")
    return target


def probe(name: str) -> str:
    """One line on what backend ``name`` would run on here; raises ``BackendUnavailable`` (naming the package
    to install) when its runtime is missing. Imports the runtime, so it is for diagnostics, not start-up."""
    return importlib.import_module(require(name).split(":")[0]).probe()


def create(name: str) -> Backend:
    """A new, unloaded backend instance by name."""
    module_name, cls_name = require(name).split(":")
    return getattr(importlib.import_module(module_name), cls_name)()
