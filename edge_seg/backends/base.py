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

from edge_seg.tensors import TensorSpec

if TYPE_CHECKING:
    from edge_seg.manifest import Manifest


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
