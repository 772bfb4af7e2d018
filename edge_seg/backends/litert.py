"""LiteRT (TFLite) backend: ai_edge_litert, else tflite_runtime, else tensorflow.lite.

XNNPACK is on (the default delegate of the builtin resolver, which also registers the custom
ops LiteRT ships with, e.g. TFLite_Detection_PostProcess). Inputs and outputs keep their own
dtype and quantisation parameters; quantising the input is preprocessing's job.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_seg.backends.base import BackendOptions, LoadedSpecs
from edge_seg.errors import BackendUnavailable, ModelError
from edge_seg.tensors import TensorSpec

if TYPE_CHECKING:
    from edge_seg.manifest import Manifest

_CANDIDATES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
_MEDIAPIPE = ("a MediaPipe op: it needs the XNNPACK delegate; do not disable default delegates "
              "(LiteRT's default op resolver; pip install ai-edge-litert if this runtime has none)")
# custom ops met in models users bring → what provides them
CUSTOM_OPS = {"Convolution2DTransposeBias": _MEDIAPIPE, "MaxPoolingWithArgmax2D": _MEDIAPIPE,
              "MaxUnpooling2D": _MEDIAPIPE, "TransformTensorBilinear": _MEDIAPIPE, "TransformLandmarks": _MEDIAPIPE,
              "TFLite_Detection_PostProcess": "one of LiteRT's own custom ops: needs its default op resolver "
                                              "(pip install ai-edge-litert)"}


def custom_op_hint(op: str) -> str:
    """What provides custom op ``op``, as the end of an error line."""
    if op in CUSTOM_OPS:
        return CUSTOM_OPS[op]
    if op.startswith("Flex"):
        return "a TensorFlow op (Select TF ops) that only full TensorFlow runs: re-export with builtin ops only"
    return "no runtime here registers it: re-export the model without custom ops, or use the runtime of its exporter"


def load_error(path: Path, err: Exception) -> str:
    """One line for a LiteRT load failure; an unresolved custom op is named with what provides it."""
    text = str(err).strip()
    found = re.search(r"unresolved custom op: ([A-Za-z0-9_]+)", text)
    if found:
        op = found.group(1)
        return f"LiteRT cannot load {Path(path).name}: custom op '{op}' is not resolved: {custom_op_hint(op)}"
    first = text.splitlines()[0] if text else type(err).__name__
    return f"LiteRT cannot load {Path(path).name}: {first}"


def interpreter_module():
    """The first LiteRT interpreter module that imports, in order of preference."""
    for name in _CANDIDATES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable("no LiteRT runtime found: pip install ai-edge-litert")


def probe() -> str:
    """What this backend would run on here; raises ``BackendUnavailable`` when no LiteRT runtime imports."""
    return f"runtime {interpreter_module().__name__}"


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(name=detail["name"], shape=tuple(int(d) for d in detail["shape"]),
                      dtype=np.dtype(detail["dtype"]), scale=float(scale), zero_point=int(zero_point))


class LiteRTBackend(LoadedSpecs):
    """Runs a ``.tflite`` model on the CPU with XNNPACK."""

    name = "litert"

    def __init__(self) -> None:
        self._interp = None
        self._in: TensorSpec | None = None
        self._outs: list[TensorSpec] = []
        self._in_index = 0
        self._out_indices: list[int] = []
        self.input_dims: tuple[int | None, ...] = ()
        self._path = Path()

    def load(self, path: Path, manifest: "Manifest | None" = None,
             options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        module = interpreter_module()
        resolver = getattr(module, "OpResolverType", None)
        kwargs = {"num_threads": options.num_threads}
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver.AUTO
        try:
            interp = module.Interpreter(model_path=str(path), **kwargs)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(load_error(path, err)) from None
        self._adopt(interp, path)

    def _adopt(self, interp, path: Path) -> None:
        """Take over an allocated interpreter: one image input, every output, their specs and indices."""
        inputs = interp.get_input_details()
        if len(inputs) != 1:
            raise ModelError(f"{Path(path).name} has {len(inputs)} inputs; edge_seg models take one image")
        self._interp = interp
        self._path = Path(path)
        self._in = _spec(inputs[0])
        self._in_index = inputs[0]["index"]
        signature = inputs[0].get("shape_signature", inputs[0]["shape"])
        self.input_dims = tuple(int(d) if d > 0 else None for d in signature)
        outputs = interp.get_output_details()
        self._outs = [_spec(d) for d in outputs]
        self._out_indices = [d["index"] for d in outputs]

    def fix_input_shape(self, shape: tuple[int, ...]) -> None:
        """Resize a dynamic input (shape signature with -1) to ``shape`` and reallocate."""
        self._interp.resize_tensor_input(self._in_index, list(shape), strict=True)
        self._interp.allocate_tensors()
        self._adopt(self._interp, self._path)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one invoke; ``batch`` must already have the input tensor's shape and dtype."""
        self._interp.set_tensor(self._in_index, batch)
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._out_indices]

    def close(self) -> None:
        self._interp = None
