"""Issue 16 acceptance, "Boundary quality", on a real binary model and real photos: MediaPipe's
selfie segmenter (256x256, and the 256x144 landscape one; float) on scikit-image's astronaut (and
camera man), as 1280x720 frames.

The reference is the raw model's float probabilities (LiteRT, tests/conformance_reference.py)
upsampled bilinearly at full precision to 1280x720 and thresholded at 0.5. edge_seg's default
``class_map`` (uint8 probabilities upsampled bilinearly, then thresholded) must reach boundary IoU
(Cheng et al. 2021, d = 3 px) >= 0.95 against it; the nearest path (``nearest_class_map``) is
reported beside it (run with ``-s`` to see the numbers).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from boundary_metrics import boundary_iou
from conformance_assets import asset
from conformance_reference import SelfieReference, frame_mask

from edge_seg.segmenter import Segmenter

FRAME = (1280, 720)


def _frame(photo: str) -> np.ndarray:
    """A 1280x720 frame of ``photo``: its top 16:9 band, upscaled."""
    image = cv2.imread(str(asset(photo)), cv2.IMREAD_COLOR)
    width = image.shape[1]
    band = image[: width * 9 // 16]
    return cv2.resize(band, FRAME, interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("model", ["selfie_segmentation.tflite", "selfie_segmentation_landscape.tflite"])
@pytest.mark.parametrize("photo", ["astronaut.png", "camera.png"])
def test_selfie_boundaries_at_720p_match_the_float_reference(photo, model):
    path = asset(model)
    frame = _frame(photo)
    reference = frame_mask(SelfieReference(path).probability(frame), FRAME)
    assert 0.1 < reference.mean() < 0.8  # a person to draw a boundary around
    with Segmenter.create(model=path) as seg:
        assert seg.upsample == "bilinear" and seg.input_size in ((256, 256), (256, 144))
        result = seg.segment(frame)
    smooth = boundary_iou(reference, result.class_map == 1, d=3)
    nearest = boundary_iou(reference, result.nearest_class_map == 1, d=3)
    print(f"\n{path.stem} {seg.input_size} float on {photo} at 1280x720, boundary IoU d=3: "
          f"uint8 bilinear {smooth:.4f}, nearest {nearest:.4f}")
    assert smooth >= 0.95
    assert nearest < smooth - 0.1  # the staircase the bilinear path removes
