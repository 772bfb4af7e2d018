"""Tensor contracts shared by backends, preprocessing and postprocessing (DESIGN §2).

``TensorSpec`` describes one input or output tensor of a model (name, shape, dtype, affine
quantisation); ``resolve_layout`` finds the roles and axis order of a YOLO-seg model's output
tensors from their shapes. Postprocessing and the manifest depend on this module, never on
``backends``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_seg.errors import ModelError


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
class YoloSegLayout:
    """Where each role lives among the model's output tensors, and how it is laid out."""

    detections: int  # index into the output tensors
    prototypes: int
    num_classes: int
    num_masks: int
    num_candidates: int
    transposed: bool  # detections are [1, N, 4+nc+nm]
    protos_nchw: bool  # prototypes are [1, nm, mh, mw]
    proto_size: tuple[int, int] = (0, 0)  # (mw, mh)
    end2end: bool = False  # detections [1, max_det, 6+nm]: x1, y1, x2, y2, score, class, coefficients (NMS done)

    def describe(self) -> str:
        if self.end2end:
            return (f"end-to-end detections [1, {self.num_candidates}, 6+nm] with nm={self.num_masks}, "
                    f"prototypes {'NCHW' if self.protos_nchw else 'NHWC'}")
        det = "[1, N, 4+nc+nm]" if self.transposed else "[1, 4+nc+nm, N]"
        proto = "NCHW" if self.protos_nchw else "NHWC"
        return (f"detections {det} with nc={self.num_classes} nm={self.num_masks} N={self.num_candidates}, "
                f"prototypes {proto}")


def _proto_channels(shape: tuple[int, ...], num_masks: int | None) -> bool:
    """True if a 4-D prototype shape is NCHW."""
    if num_masks is not None:
        if shape[3] == num_masks:
            return False
        if shape[1] == num_masks:
            return True
        raise ModelError(f"prototype tensor {list(shape)} has no axis of {num_masks} mask channels")
    return shape[1] < shape[3]


def looks_end2end(tensors: list[TensorSpec]) -> bool:
    """True if a 3-D + 4-D pair reads as an end-to-end head: detections [1, K, 6+nm] with K <= 1000 rows."""
    ranks = [len(t.shape) for t in tensors]
    if sorted(ranks) != [3, 4]:
        return False
    det, proto = tensors[ranks.index(3)].shape, tensors[ranks.index(4)].shape
    nm = min(proto[1], proto[3])
    return det[2] == 6 + nm and det[1] <= 1000


def _resolve_end2end(tensors: list[TensorSpec], det_i: int, proto_i: int, num_classes: int | None) -> YoloSegLayout:
    det, proto = tuple(tensors[det_i].shape), tuple(tensors[proto_i].shape)
    nchw = _proto_channels(proto, det[2] - 6 if det[2] - 6 in (proto[1], proto[3]) else None)
    nm = proto[1] if nchw else proto[3]
    if det[2] != 6 + nm:
        raise ModelError(f"end-to-end detection tensor '{tensors[det_i].name}' {list(det)} is not "
                         f"[1, max_det, 6 + {nm}] (x1, y1, x2, y2, score, class, {nm} mask coefficients); "
                         "set output.kind to 'yolo_seg' if it is a classic head")
    proto_size = (proto[3], proto[2]) if nchw else (proto[2], proto[1])
    return YoloSegLayout(det_i, proto_i, num_classes or 0, nm, det[1], True, nchw, proto_size, end2end=True)


def resolve_layout(tensors: list[TensorSpec], num_classes: int | None = None,
                   end2end: bool = False) -> YoloSegLayout:
    """Find the detection (3-D) and prototype (4-D) tensors among ``tensors`` and their layouts.

    With ``num_classes`` (from a manifest) the channel axis of the detections is the one of
    size 4 + nc + nm; without it, the shorter axis (N is the number of candidates, usually
    thousands; the longer one if the shorter leaves no class channel) and nc = channels - 4 - nm.
    ``end2end``: the detections are an end-to-end head's [1, max_det, 6 + nm] rows.
    """
    ranks = [len(t.shape) for t in tensors]
    if ranks.count(3) != 1 or ranks.count(4) != 1:
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in tensors)
        raise ModelError("a yolo_seg model has one detection tensor [1, 4+nc+nm, N] and one prototype tensor "
                         f"[1, mh, mw, nm]; got {shapes}")
    det_i, proto_i = ranks.index(3), ranks.index(4)
    det, proto = tuple(tensors[det_i].shape), tuple(tensors[proto_i].shape)
    if det[0] != 1 or proto[0] != 1:
        raise ModelError(f"yolo_seg tensors must have batch 1, got {list(det)} and {list(proto)}")
    if end2end:
        return _resolve_end2end(tensors, det_i, proto_i, num_classes)
    if num_classes is not None:
        candidates = []
        for nchw in (False, True):
            nm = proto[1] if nchw else proto[3]
            for transposed in (False, True):
                channels = det[2] if transposed else det[1]
                if channels == 4 + num_classes + nm:
                    candidates.append((transposed, nchw, nm))
        if not candidates:
            raise ModelError(f"detection tensor {list(det)} has no axis of 4 + {num_classes} classes + "
                             f"mask channels of prototypes {list(proto)}")
        # Prefer [1, C, N] and NHWC (TFLite) when a shape is ambiguous.
        transposed, nchw, nm = sorted(candidates, key=lambda c: (c[1], c[0]))[0]
    else:
        nchw = _proto_channels(proto, None)
        nm = proto[1] if nchw else proto[3]
        # The channel axis is the shorter one (N is usually thousands) unless that leaves no class.
        transposed = det[2] < det[1] if min(det[1], det[2]) > 4 + nm else det[2] > det[1]
    channels, count = (det[2], det[1]) if transposed else (det[1], det[2])
    nc = channels - 4 - nm
    if nc < 1:
        raise ModelError(f"detection tensor {list(det)} leaves {nc} class channels after 4 box + {nm} mask channels")
    proto_size = (proto[3], proto[2]) if nchw else (proto[2], proto[1])
    return YoloSegLayout(det_i, proto_i, nc, nm, count, transposed, nchw, proto_size)
