"""MediaPipe's selfie segmenter (square and landscape, from the ``mediapipe==0.10.14`` wheel), run by
edge_seg without a manifest, agrees with the model run raw by LiteRT with MediaPipe's documented
pre/post-processing (tests/conformance_reference.py) on scikit-image's photos: mask IoU >= 0.98 at
the photo's size.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conformance_assets import asset
from conformance_reference import SelfieReference, frame_mask, mask_iou

from edge_seg.segmenter import Segmenter

MODELS = ["selfie_segmentation.tflite", "selfie_segmentation_landscape.tflite"]


@pytest.fixture(scope="module", params=MODELS)
def selfie(request):
    """(Segmenter, SelfieReference) of one selfie model."""
    path = asset(request.param)
    with Segmenter.create(model=path) as seg:
        yield seg, SelfieReference(path)


def _photo(name: str) -> np.ndarray:
    image = cv2.imread(str(asset(name)), cv2.IMREAD_COLOR)  # camera.png is grey: three equal channels
    assert image is not None and image.ndim == 3
    return image


def test_selfie_model_is_inferred_as_a_float_binary_model(selfie):
    seg, ref = selfie
    manifest = seg.manifest
    assert manifest.task == "binary" and manifest.input.dtype == "float32"
    assert seg.input_size == (ref.width, ref.height)
    assert manifest.input.color_order == "rgb" and manifest.input.std == [255.0] * 3


@pytest.mark.parametrize("photo", ["astronaut.png", "camera.png", "coffee.png"])
def test_selfie_mask_matches_the_raw_model_on_a_photo(selfie, photo):
    seg, ref = selfie
    image = _photo(photo)
    height, width = image.shape[:2]
    result = seg.segment(image)
    reference = frame_mask(ref.probability(image), (width, height))
    assert result.class_map.shape == (height, width)
    if photo != "coffee.png":  # photos of a person: it is found, and not everywhere
        assert 0.1 < reference.mean() < 0.8
    iou = mask_iou(result.class_map == 1, reference)
    print(f"\n{seg.manifest.name} on {photo}: foreground {reference.mean():.3f}, "
          f"mask IoU vs raw LiteRT reference {iou:.4f}")
    assert iou >= 0.98


def test_selfie_custom_op_without_default_delegates_is_one_line_naming_it():
    """LiteRT's own failure on the real model (default delegates off) becomes edge_seg's one line."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edge_seg.backends.litert import load_error

    path = asset("selfie_segmentation.tflite")
    with pytest.raises((RuntimeError, ValueError)) as caught:
        interp = Interpreter(model_path=str(path),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
    line = load_error(path, caught.value)
    assert "\n" not in line and "'Convolution2DTransposeBias'" in line
    assert "needs the XNNPACK delegate; do not disable default delegates" in line
