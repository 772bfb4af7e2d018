"""ONNX Runtime backend: CPU here; the CUDA and TensorRT execution providers when the installed build has them.

Providers: ``options.extra["providers"]`` (a list, e.g. ``["CUDAExecutionProvider",
"CPUExecutionProvider"]``) or, by default, the best ones available in the order TensorRT, CUDA,
CPU. A uint8 input whose graph divides by 255 inside carries its quantisation in the model's
metadata (``edge_seg.input_scale`` / ``edge_seg.input_zero_point``, written by
``converters.onnx``); the input ``TensorSpec`` reports it so preprocessing feeds raw pixels.
``metadata`` keeps the whole string map (Ultralytics writes its class names and image size there).
A symbolic input dim (``batch``, ``height``, ``width``) reads as 1 in the specs until
``fix_input_shape`` sets the size; ``input_dims`` keeps which dims were symbolic (None).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_seg.backends.base import BackendOptions, LoadedSpecs
from edge_seg.errors import BackendUnavailable, ModelError
from edge_seg.tensors import TensorSpec

if TYPE_CHECKING:
    from edge_seg.manifest import Manifest

META_SCALE = "edge_seg.input_scale"
META_ZERO_POINT = "edge_seg.input_zero_point"
PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
           "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("the onnxruntime backend needs ONNX Runtime: pip install onnxruntime "
                                 "(onnxruntime-gpu for CUDA/TensorRT)") from None
    return onnxruntime


def probe() -> str:
    """What this backend would run on here; raises ``BackendUnavailable`` when ONNX Runtime is missing."""
    ort = _ort()
    return f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}"


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    """The providers to ask for: ``requested`` (each must be available) or the preferred available ones."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(f"ONNX Runtime provider(s) {', '.join(missing)} not in this build "
                                     f"(available: {', '.join(available)})")
        return list(requested)
    chosen = [p for p in PREFERRED if p in available]
    return chosen or list(available)


def _shape(dims) -> tuple[int, ...]:
    return tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in dims)


class OnnxRuntimeBackend(LoadedSpecs):
    """Runs a ``.onnx`` model with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self) -> None:
        self._session = None
        self._in: TensorSpec | None = None
        self._outs: list[TensorSpec] = []
        self.providers: list[str] = []
        self.metadata: dict[str, str] = {}
        self.input_dims: tuple[int | None, ...] = ()

    def load(self, path: Path, manifest: "Manifest | None" = None, options: BackendOptions | None = None) -> None:
        ort = _ort()
        options = options or BackendOptions()
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if options.num_threads:
            session_options.intra_op_num_threads = options.num_threads
        providers = choose_providers(ort.get_available_providers(), options.extra.get("providers"))
        try:
            session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types, all one message
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"ONNX Runtime cannot load {Path(path).name}: {first}") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{Path(path).name} has {len(inputs)} inputs; edge_seg models take one image")
        meta = session.get_modelmeta().custom_metadata_map
        scale = float(meta.get(META_SCALE, 0.0))
        zero_point = int(meta.get(META_ZERO_POINT, 0))
        tin = inputs[0]
        self.metadata = dict(meta)
        self.input_dims = tuple(int(d) if isinstance(d, int) and d > 0 else None for d in tin.shape)
        self._in = TensorSpec(tin.name, _shape(tin.shape), np.dtype(_DTYPES.get(tin.type, np.float32)),
                              scale=scale, zero_point=zero_point)
        self._outs = [TensorSpec(o.name, _shape(o.shape), np.dtype(_DTYPES.get(o.type, np.float32)))
                      for o in session.get_outputs()]
        self._session = session
        self.providers = session.get_providers()

    def fix_input_shape(self, shape: tuple[int, ...]) -> None:
        """Run at ``shape`` (an input with symbolic dims): the specs take it, and the output shapes of one run."""
        self._in = TensorSpec(self._in.name, tuple(shape), self._in.dtype, self._in.scale, self._in.zero_point)
        outputs = self.infer(np.zeros(shape, self._in.dtype))
        self._outs = [TensorSpec(o.name, tuple(v.shape), o.dtype) for o, v in zip(self._outs, outputs, strict=True)]

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._in.name: batch})

    def close(self) -> None:
        self._session = None
