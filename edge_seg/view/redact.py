"""Privacy redaction: hide the pixels of chosen classes, once per frame, before anything sees the frame.

The loop (``Pipeline``) calls ``Redactor.redact`` on every frame right after its segmentation is
decoded and before the first sink stage, and hands the sinks the redacted frame: crops, the
``snapshot`` JPEG, the preview, the video and anything else downstream get redacted pixels only,
whatever stages are configured and in whatever order. The redaction is pixel-accurate at frame
size: a pixel is hidden when the frame-size class map (``Segmentation.class_map``, the one crops
publish) says it is one of the classes, or (instance models) when any instance of such a class
covers it, also under a higher-scoring instance of another class.

Cost: a frame with none of the classes costs one table lookup over the model-resolution label map
and returns the frame itself (no copy). Otherwise one lookup over the frame-size class map (into a
reused buffer), one copy of the frame and a masked fill (or blur) of the box around the hidden pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge_seg.errors import InputError
from edge_seg.segmentation import Segmentation

Roi = tuple[int, int, int, int]


def check_frame(frame: np.ndarray) -> None:
    """Raise ``InputError`` unless ``frame`` is a uint8 BGR image (H, W, 3)."""
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
            and frame.shape[2] == 3):
        shape = getattr(frame, "shape", None)
        raise InputError(f"frame must be a uint8 BGR image (H, W, 3), got shape {shape}")


def check_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` when it is a uint8 (H, W) label map, else ``InputError``."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise InputError(f"label map must be uint8 (H, W), got {labels.dtype} {labels.shape}")
    return labels


def class_ids(classes: Sequence[int | str], names: Sequence[str]) -> set[int]:
    """The ids of ``classes`` (ids or names) in a model with class ``names``; one-line ``InputError`` otherwise."""
    names = list(names)
    ids = set()
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise InputError(f"class {c!r} to redact is not a class of the model (it has: {', '.join(names)})")
            ids.add(names.index(c))
        elif 0 <= int(c) < len(names):
            ids.add(int(c))
        else:
            raise InputError(f"class id {c} to redact is outside the model's {len(names)} classes "
                             f"(0..{len(names) - 1}: {', '.join(names)})")
    return ids


class Redactor:
    """Hide the pixels of chosen classes (privacy redaction), pixel-accurate at frame size.

    ``classes`` are class ids or names. ``mode="fill"`` paints them with ``color`` (BGR);
    ``mode="blur"`` replaces them with a Gaussian blur (odd ``blur_kernel``) of the frame.
    Pixels of other classes keep the frame's exact values. Keeps scratch buffers per frame
    shape: use one per thread.
    """

    def __init__(self, classes: Sequence[int | str], mode: str = "fill",
                 color: tuple[int, int, int] = (0, 0, 0), blur_kernel: int = 31) -> None:
        if mode not in ("fill", "blur"):
            raise ValueError(f"mode must be 'fill' or 'blur', got {mode!r}")
        if blur_kernel < 3 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be an odd number >= 3, got {blur_kernel}")
        if len(color) != 3:
            raise ValueError(f"color must be 3 BGR values, got {color!r}")
        self.classes = tuple(classes)
        self.mode = mode
        self.color = tuple(int(v) for v in color)
        self.blur_kernel = int(blur_kernel)
        self._tables: dict[tuple[str, ...], tuple[np.ndarray, frozenset[int]]] = {}
        self._mask: np.ndarray | None = None  # frame-size scratch mask, reused while the shape stays
        self._small: np.ndarray | None = None  # model-resolution scratch mask
        self._solid: np.ndarray | None = None  # frame-size image of ``color``, for the fill

    def check(self, names: Sequence[str]) -> None:
        """Raise a one-line ``InputError`` when a class to redact is not one of the model's ``names``."""
        class_ids(self.classes, names)

    def mask(self, segmentation: Segmentation, size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 mask (255 = redact) at ``size`` (width, height), default the frame size (a new array)."""
        size = tuple(size or segmentation.frame_size)
        found = self._frame_mask(segmentation, size)
        return np.zeros((size[1], size[0]), np.uint8) if found is None else found.copy()

    def annotate(self, frame_bgr: np.ndarray, segmentation: Segmentation) -> np.ndarray:
        """Return a copy of ``frame_bgr`` with the chosen classes filled or blurred."""
        out = self.redact(frame_bgr, segmentation)
        return frame_bgr.copy() if out is frame_bgr else out

    def redact(self, frame_bgr: np.ndarray, segmentation: Segmentation, roi: Roi | None = None) -> np.ndarray:
        """``frame_bgr`` with the chosen classes hidden: the frame itself when none is in it, else a new image.

        With ``roi`` (x, y, w, h) the segmentation is of that part of the frame; only it can be redacted
        (the rest of the frame is returned as it is).
        """
        check_frame(frame_bgr)
        region = frame_bgr
        if roi is not None:
            x, y, w, h = roi
            region = frame_bgr[y:y + h, x:x + w]
        mask = self._frame_mask(segmentation, (region.shape[1], region.shape[0]))
        if mask is None:
            return frame_bgr
        out = frame_bgr.copy()
        self._hide(region, mask, out if roi is None else out[roi[1]:roi[1] + roi[3], roi[0]:roi[0] + roi[2]])
        return out

    # --- internals -------------------------------------------------------------------------
    def _table(self, names: Sequence[str]) -> tuple[np.ndarray, frozenset[int]]:
        """(256-entry uint8 LUT, 255 for a class to hide; those ids) for a model with class ``names``."""
        key = tuple(names)
        found = self._tables.get(key)
        if found is None:
            ids = frozenset(class_ids(self.classes, key))
            lut = np.zeros(256, np.uint8)
            lut[list(ids)] = 255
            found = self._tables[key] = (lut, ids)
        return found

    def _frame_mask(self, segmentation: Segmentation, size: tuple[int, int]) -> np.ndarray | None:
        """The scratch mask (255 = hide) at ``size`` (width, height), or None when nothing is to be hidden."""
        lut, ids = self._table(segmentation.classes)
        labels = check_labels(segmentation.label_map)
        if self._small is None or self._small.shape != labels.shape:
            self._small = np.empty_like(labels)
        cv2.LUT(labels, lut, dst=self._small)
        instances = [i for i in segmentation.instances or () if i.class_id in ids and i.mask.size]
        if not instances and not cv2.countNonZero(self._small):  # nearest upscaling adds no class: nothing to hide
            return None
        width, height = size
        if self._mask is None or self._mask.shape != (height, width):
            self._mask = np.empty((height, width), np.uint8)
        if (width, height) == tuple(segmentation.frame_size):
            cv2.LUT(check_labels(segmentation.class_map), lut, dst=self._mask)
        else:
            cv2.resize(self._small, (width, height), dst=self._mask, interpolation=cv2.INTER_NEAREST)
        if instances:
            _add_instances(self._mask, instances, segmentation.frame_size)
        return self._mask if cv2.countNonZero(self._mask) else None

    def _hide(self, source: np.ndarray, mask: np.ndarray, target: np.ndarray) -> None:
        """Fill or blur ``target`` (a copy of ``source``) where ``mask`` is set, inside the mask's bounding box."""
        x, y, w, h = cv2.boundingRect(mask)
        if self.mode == "fill":
            if self._solid is None or self._solid.shape[:2] != mask.shape:
                self._solid = np.empty((*mask.shape, 3), np.uint8)
                self._solid[:] = self.color
            cv2.copyTo(self._solid[y:y + h, x:x + w], mask[y:y + h, x:x + w], target[y:y + h, x:x + w])
            return
        # Blur only the masked box plus a kernel-wide margin of context, then copy under the mask.
        m = self.blur_kernel
        x0, y0 = max(x - m, 0), max(y - m, 0)
        x1, y1 = min(x + w + m, source.shape[1]), min(y + h + m, source.shape[0])
        blurred = cv2.GaussianBlur(source[y0:y1, x0:x1], (m, m), 0)
        cv2.copyTo(blurred, mask[y0:y1, x0:x1], target[y0:y1, x0:x1])


def _add_instances(mask: np.ndarray, instances: Sequence, frame_size: tuple[int, int]) -> None:
    """Set ``mask`` (at any size) under every pixel of ``instances`` (masks in ``frame_size`` pixels)."""
    height, width = mask.shape
    sx, sy = width / frame_size[0], height / frame_size[1]
    for inst in instances:
        (ox, oy), m = inst.origin, inst.mask.view(np.uint8)
        if (sx, sy) != (1.0, 1.0):
            x0, y0 = int(ox * sx), int(oy * sy)
            size = (max(1, round(m.shape[1] * sx)), max(1, round(m.shape[0] * sy)))
            m, ox, oy = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST), x0, y0
        if ox < 0 or oy < 0:  # a mask reaching past the top or left edge: keep the part inside
            m, ox, oy = m[max(0, -oy):, max(0, -ox):], max(ox, 0), max(oy, 0)
        roi = mask[oy:oy + m.shape[0], ox:ox + m.shape[1]]
        part = m[:roi.shape[0], :roi.shape[1]]
        roi[part > 0] = 255


__all__ = ["Redactor", "check_frame", "check_labels", "class_ids"]
