"""The backend contract: one runtime behind one small Protocol (DESIGN §3).

A backend owns its interpreter; only one thread calls ``infer``. ``infer`` returns the raw
output tensors in the model's own dtype (quantised outputs stay quantised) so postprocessing
can work on raw values and dequantise only what it needs, with each tensor's own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from edge_seg.manifest import Manifest


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape, dtype and (if quantised) affine parameters of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype in (np.uint8, np.int8, np.int16)

    @property
    def dtype_name(self) -> str:
        return np.dtype(self.dtype).name

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """Real values of a raw tensor (float32)."""
        if not self.quantized:
            return raw.astype(np.float32, copy=False)
        return (raw.astype(np.float32) - self.zero_point) * np.float32(self.scale)


@dataclass(frozen=True)
class BackendOptions:
    """Options every backend understands; backend-specific ones go in ``extra``."""

    num_threads: int | None = None
    extra: dict = field(default_factory=dict)


class LoadedSpecs:
    """``input_spec`` / ``output_specs`` for backends whose ``load()`` sets ``_in`` and ``_outs``."""

    _in: TensorSpec | None = None
    _outs: list[TensorSpec] = []

    @property
    def input_spec(self) -> TensorSpec:
        if self._in is None:
            from edge_seg.errors import ModelError

            raise ModelError("backend used before load()")
        return self._in

    @property
    def output_specs(self) -> list[TensorSpec]:
        return list(self._outs)


@runtime_checkable
class Backend(Protocol):
    """What the segmenter needs from a runtime."""

    name: str

    def load(self, path: Path, manifest: "Manifest | None", options: BackendOptions) -> None: ...

    @property
    def input_spec(self) -> TensorSpec: ...

    @property
    def output_specs(self) -> list[TensorSpec]: ...

    def infer(self, batch: np.ndarray) -> list[np.ndarray]: ...

    def close(self) -> None: ...
