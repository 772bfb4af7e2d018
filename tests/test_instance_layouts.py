"""YOLO-seg as PyTorch/Ultralytics ONNX exports give it: NCHW input and prototypes, and end-to-end heads
[1, max_det, 6+nm] (NMS in the graph), checked against the loop-by-loop reference decoder."""

from __future__ import annotations

import instance_builders as ib
import numpy as np
import pytest
from instance_builders import FRAME, reference

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx_builders  # noqa: E402

from edge_seg.errors import ManifestError  # noqa: E402
from edge_seg.model import load_model  # noqa: E402
from edge_seg.preprocess import Transform, letterbox_geometry  # noqa: E402
from edge_seg.segmenter import Segmenter  # noqa: E402

NAMES = {0: "box", 1: "bag"}


def _assert_matches_reference(instances) -> None:
    transform = Transform(FRAME, (64, 64), letterbox_geometry(FRAME, (64, 64)))
    want = reference(ib.detections(), ib.prototypes(), transform, ib.NC)
    assert len(instances) == len(want) == 4
    for inst, (cls, score, bbox, mask) in zip(instances, want, strict=True):
        assert inst.class_id == cls and inst.score == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(inst.bbox, bbox, atol=1e-2)
        assert (inst.frame_mask(FRAME) != mask).sum() <= 0.03 * mask.sum() + 2


def test_nchw_yolo_seg_onnx_export_runs_without_manifest_like_the_reference(tmp_path):
    model = onnx_builders.build_yolo_seg(tmp_path / "yolo11n-seg.onnx")
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.output.kind == "yolo_seg" and seg.manifest.input.layout == "NCHW"
        assert "prototypes NCHW" in seg.loaded.inferred and "input NCHW 64x64" in seg.loaded.inferred
        result = seg.segment(np.zeros((FRAME[1], FRAME[0], 3), np.uint8))
    _assert_matches_reference(result.instances)


def test_end2end_head_is_read_without_nms_and_takes_names_from_metadata(tmp_path):
    props = onnx_builders.ultralytics_props(NAMES, [64, 64], end2end=True)
    model = onnx_builders.build_yolo_seg_end2end(tmp_path / "yolo26n-seg.onnx", metadata=props)
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.output.kind == "yolo_seg_end2end" and seg.manifest.classes == ["box", "bag"]
        assert "end-to-end detections [1, 10, 6+nm]" in seg.loaded.inferred
        result = seg.segment(np.zeros((FRAME[1], FRAME[0], 3), np.uint8))
    _assert_matches_reference(result.instances)
    assert [i["class"] for i in result.summary()["instances"]] == ["box", "bag", "bag", "box"]


def test_end2end_rows_below_the_score_threshold_are_dropped_and_none_suppressed(tmp_path):
    """Two overlapping rows of one class both stay (the graph did NMS); a 0.1 row goes."""
    rows = onnx_builders.end2end_rows(4)
    rows[1] = rows[0]
    rows[1, 0] += 1.0  # IoU ~0.95 with row 0, same class: classic NMS would drop it
    rows[1, 4] = 0.6
    rows[2, 4] = 0.1
    props = onnx_builders.ultralytics_props(NAMES, [64, 64], end2end=True)
    path = tmp_path / "e2e.onnx"
    onnx_builders.constant_outputs({"output0": rows[None], "output1": ib.prototypes().transpose(2, 0, 1)[None]},
                                    ib.SIZE, "e2e", path, props)
    with Segmenter.create(model=path) as seg:
        result = seg.segment(np.zeros((FRAME[1], FRAME[0], 3), np.uint8))
    assert [round(i.score, 2) for i in result.instances] == [0.9, 0.6, 0.3]


def test_end2end_head_without_class_names_asks_for_classes(tmp_path):
    model = onnx_builders.build_yolo_seg_end2end(tmp_path / "e2e.onnx")
    with pytest.raises(ManifestError, match=r"output tensor 'output0' \[1, 10, 10\] is an end-to-end head .* "
                                            r"set classes in a manifest"):
        load_model(model)
