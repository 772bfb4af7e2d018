"""Independent references for the conformance suite: each third-party model run by its own runtime
with the pre- and post-processing its authors document, written here without edge_seg.

* MediaPipe selfie segmenter (``ai_edge_litert`` with its default XNNPACK delegate, which resolves
  the custom op ``Convolution2DTransposeBias``): the uint8 RGB image warped bilinearly to the
  input size (256x256, or 144x256 landscape), then converted to float in [0, 1], as MediaPipe's
  CPU ImageToTensorCalculator does (``image_to_tensor_converter_opencv.cc``: ``warpPerspective``
  with ``INTER_LINEAR`` on the 8-bit image, then ``convertTo(CV_32FC3, 1/255)``); the output is one
  channel of person probability, upsampled to the image and thresholded at 0.5. (Resizing the
  float image instead moves inputs by under one grey level, and this model turns that into up to
  0.19 of probability at a few pixels: an input-rounding difference, not an upsampling one.)
* U²-Net-p (``onnxruntime``, NCHW, as rembg runs it): RGB resized to 320x320 (Lanczos), divided by
  its maximum, ImageNet mean/std; the first of the seven outputs is the fused mask, min-max
  normalised, upsampled to the image and thresholded at 0.5. rembg resizes with Lanczos, edge_seg
  bilinearly: on photos larger than the input (scikit-image's, 512 px) the masks agree to IoU
  0.99, but on a frame smaller than the input (the carphone clip, 176x144 up to 320x320) this
  model's mask moves with the interpolation (IoU 0.65-0.92 between the two on its first frames);
  ``interpolation=cv2.INTER_LINEAR`` gives the reference for that case.

Frame-size masks come from the float probabilities upsampled bilinearly at full precision
(OpenCV's float32 path), then thresholded: the float reference of issue 16.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class SelfieReference:
    """The raw MediaPipe selfie model in LiteRT; ``probability(bgr)`` at model resolution."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path))  # default op resolver: XNNPACK, custom op resolved
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]
        _, self.height, self.width, _ = (int(d) for d in self.input["shape"])

    def probability(self, bgr: np.ndarray) -> np.ndarray:
        """float32 (h, w) person probability at model resolution."""
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        small = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        tensor = small.astype(np.float32)[None] * np.float32(1.0 / 255.0)
        self.interp.set_tensor(self.input["index"], np.ascontiguousarray(tensor))
        self.interp.invoke()
        return self.interp.get_tensor(self.output["index"])[0, ..., 0].astype(np.float32)


class U2NetReference:
    """The raw U²-Net-p ONNX model in onnxruntime; ``probability(bgr)`` at model resolution."""

    size = 320

    def __init__(self, path: Path, interpolation: int = cv2.INTER_LANCZOS4):
        self.interpolation = interpolation
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def probability(self, bgr: np.ndarray) -> np.ndarray:
        """float32 (320, 320) min-max normalised fused mask (the first output)."""
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        small = cv2.resize(rgb, (self.size, self.size), interpolation=self.interpolation).astype(np.float32)
        small = (small / max(float(small.max()), 1e-6) - IMAGENET_MEAN) / IMAGENET_STD
        tensor = np.ascontiguousarray(small.transpose(2, 0, 1)[None])
        fused = self.session.run(None, {self.input_name: tensor})[0][0, 0].astype(np.float32)
        low, high = float(fused.min()), float(fused.max())
        return (fused - low) / max(high - low, 1e-12)


def frame_mask(probability: np.ndarray, size: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """bool (h, w) at frame ``size`` (w, h): float bilinear upsampling, then the threshold."""
    big = cv2.resize(probability.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return big >= threshold


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0
