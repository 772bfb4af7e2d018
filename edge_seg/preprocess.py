"""Frame → input tensor: resize (stretch or letterbox), colour order, layout, normalise, quantise.

Normalisation and input quantisation fold into one 256-entry lookup table per channel
(``real = (pixel - mean) / std``, then ``q = round(real / scale + zero_point)``), applied with
one ``cv2.LUT`` at model resolution; a table that is the identity is skipped. An NCHW input
(PyTorch exports) is written in the same pass: each uint8 plane of the resized image goes through
its channel's table straight into its plane of a preallocated [1, 3, H, W] buffer (the colour
order is the choice of source plane), so there is no interleaved float image and no transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_seg.errors import InputError, ModelError
from edge_seg.manifest import InputSpec
from edge_seg.tensors import TensorSpec


@dataclass(frozen=True)
class Transform:
    """Where the frame lies inside the model input, so postprocessing can undo a letterbox.

    ``content`` is (x, y, width, height) of the frame's pixels in model-input coordinates.
    """

    frame_size: tuple[int, int]  # (width, height)
    input_size: tuple[int, int]  # (width, height)
    content: tuple[int, int, int, int]

    def crop(self, model_map: np.ndarray) -> np.ndarray:
        """The part of a model-resolution map (any resolution, same aspect) that shows the frame."""
        x, y, w, h = self.content
        in_w, in_h = self.input_size
        if (x, y, w, h) == (0, 0, in_w, in_h):
            return model_map
        map_h, map_w = model_map.shape[:2]
        sx, sy = map_w / in_w, map_h / in_h
        x0, y0 = int(round(x * sx)), int(round(y * sy))
        x1, y1 = max(x0 + 1, int(round((x + w) * sx))), max(y0 + 1, int(round((y + h) * sy)))
        return model_map[y0:y1, x0:x1]


def letterbox_geometry(frame_size: tuple[int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a frame scaled to fit ``input_size`` with its aspect kept, centred."""
    fw, fh = frame_size
    iw, ih = input_size
    scale = min(iw / fw, ih / fh)
    w, h = max(1, int(round(fw * scale))), max(1, int(round(fh * scale)))
    return (iw - w) // 2, (ih - h) // 2, w, h


def _channel_values(values: list[float]) -> np.ndarray:
    return np.array(values * 3 if len(values) == 1 else values, dtype=np.float64)


def build_lut(spec: InputSpec, tensor: TensorSpec) -> np.ndarray | None:
    """A (256, 1, 3) table mapping a pixel to the tensor's value, or None for the identity."""
    pixels = np.arange(256, dtype=np.float64)[:, None]
    real = (pixels - _channel_values(spec.mean)) / _channel_values(spec.std)
    dtype = np.dtype(tensor.dtype)
    if dtype == np.float32:
        return real.astype(np.float32).reshape(256, 1, 3)
    if tensor.quantized:
        values = np.round(real / tensor.scale + tensor.zero_point)
    else:
        values = np.round(real)
    info = np.iinfo(dtype)
    table = np.clip(values, info.min, info.max)
    if dtype == np.uint8 and np.array_equal(table, np.repeat(pixels, 3, axis=1)):
        return None
    # cv2.LUT needs an 8-bit table; int8 values are stored as their uint8 bit pattern.
    return table.astype(dtype).view(np.uint8).reshape(256, 1, 3) if dtype == np.int8 else \
        table.astype(dtype).reshape(256, 1, 3)


class Preprocessor:
    """Turns BGR frames into input tensors for one model; reuses its buffers."""

    def __init__(self, spec: InputSpec, tensor: TensorSpec):
        self.nchw = spec.layout == "NCHW"
        shape = tuple(tensor.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1 if self.nchw else 3] != 3:
            want = "[1, 3, height, width] (NCHW)" if self.nchw else "[1, height, width, 3] (NHWC)"
            raise ModelError(f"model input shape {list(shape)} is not {want}")
        self.spec = spec
        self.tensor = tensor
        self.input_size = (shape[3], shape[2]) if self.nchw else (shape[2], shape[1])
        self._lut = build_lut(spec, tensor)
        self._dtype = np.dtype(tensor.dtype)
        # NCHW: per output channel, (source plane of the BGR image, its table as (256, 1) or None)
        order = (2, 1, 0) if spec.color_order == "rgb" else (0, 1, 2)
        self._planes = [(src, None if self._lut is None else np.ascontiguousarray(self._lut[:, :, c]))
                        for c, src in enumerate(order)]

    def __call__(self, frame: np.ndarray, lores: np.ndarray | None = None) -> tuple[np.ndarray, Transform]:
        """BGR uint8 frame (H, W, 3) → (batch of one in the tensor's dtype, Transform).

        ``lores``: the same view already scaled down by the camera (picamera2's lores stream at the
        model input size); it is used instead of resizing ``frame`` (resized again only if its size
        differs from what the model needs), while the Transform still describes ``frame``.
        """
        _check_bgr(frame)
        frame_size = (frame.shape[1], frame.shape[0])
        source = frame
        if lores is not None:
            _check_bgr(lores)
            source = lores
        iw, ih = self.input_size
        if self.spec.resize == "letterbox":
            x, y, w, h = letterbox_geometry(frame_size, self.input_size)
            scaled = _resized(source, (w, h))
            image = cv2.copyMakeBorder(scaled, y, ih - h - y, x, iw - w - x, cv2.BORDER_CONSTANT, value=0)
            content = (x, y, w, h)
        else:
            image = _resized(source, self.input_size)
            content = (0, 0, iw, ih)
        transform = Transform(frame_size, self.input_size, content)
        if self.nchw:
            return self._nchw(image), transform
        if self.spec.color_order == "rgb":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self._lut is not None:
            image = cv2.LUT(image, self._lut)
            if self._dtype == np.int8:
                image = image.view(np.int8)
        return image[None, ...], transform

    def _nchw(self, image: np.ndarray) -> np.ndarray:
        """The BGR uint8 image at input size → a new [1, 3, H, W] batch, one table pass per plane.

        A new array each frame, as the NHWC path's: frames are prepared on capture threads while earlier
        ones wait or run in inference, so no buffer is reused under them."""
        out = np.empty(self.tensor.shape, self._dtype)
        planes = cv2.split(image)
        for c, (src, table) in enumerate(self._planes):
            dst = out[0, c].view(np.uint8) if self._dtype == np.int8 else out[0, c]
            if table is None:
                np.copyto(dst, planes[src])
            else:
                cv2.LUT(planes[src], table, dst=dst)
        return out


def _check_bgr(image: np.ndarray | None) -> None:
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = None if image is None else (image.shape, image.dtype)
        raise InputError(f"expected a BGR uint8 image of shape (H, W, 3), got {shape}")


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (width, height): itself when it already is, else a bilinear resize."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
