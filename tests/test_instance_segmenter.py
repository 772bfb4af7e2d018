"""Instance models through the Segmenter, the manifest, the overlay, and the summary."""

from __future__ import annotations

import json

import instance_builders as ib
import numpy as np
import pytest
from instance_builders import FRAME, reference

from edge_seg import Segmenter
from edge_seg.errors import ManifestError
from edge_seg.manifest import Manifest, OutputSpec, validate
from edge_seg.preprocess import Transform, letterbox_geometry
from edge_seg.view.overlay import InstanceOverlay, Overlay, instance_colour


def test_segmenter_returns_instances(instance_model_dir):
    frame = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    with Segmenter.create(model=instance_model_dir) as seg:
        result = seg.segment(frame)
    assert result.instances is not None and len(result.instances) == 4
    transform = Transform(FRAME, (64, 64), letterbox_geometry(FRAME, (64, 64)))
    want = reference(ib.detections(), ib.prototypes(), transform, ib.NC)
    for inst, (cls, score, bbox, mask) in zip(result.instances, want, strict=True):
        assert inst.class_id == cls and inst.score == pytest.approx(score, abs=1e-5)
        np.testing.assert_allclose(inst.bbox, bbox, atol=1e-2)
        assert (inst.frame_mask(FRAME) != mask).sum() <= 0.03 * mask.sum() + 2
    assert result.class_map.shape == (FRAME[1], FRAME[0])
    assert set(np.unique(result.class_map)) <= {0, 1, 255}
    summary = result.summary()
    assert [i["class"] for i in summary["instances"]] == ["box", "bag", "bag", "box"]
    json.dumps(summary)


def test_inferred_instance_manifest_says_so(tmp_path, caplog):
    model = ib.build(tmp_path / "bare.tflite", "int8")
    with Segmenter.create(model=model) as seg:
        assert seg.manifest.task == "instance" and seg.manifest.output.kind == "yolo_seg"
        assert seg.manifest.classes == ["class_0", "class_1"]
        notice = seg.loaded.inferred
        result = seg.segment(np.zeros((64, 64, 3), np.uint8))
    assert "inferred from output shapes" in notice and "nc=2 nm=4" in notice
    assert len(result.instances) >= 3


def test_manifest_validation_of_instance_models(instance_model_dir):
    from edge_seg.tensors import TensorSpec

    manifest = Manifest.model_validate_json((instance_model_dir / "manifest.json").read_text())
    inp = TensorSpec("x", (1, 64, 64, 3), np.dtype(np.float32))
    outs = [TensorSpec("Identity", (1, 10, 8), np.dtype(np.float32)),
            TensorSpec("Identity_1", (1, 16, 16, 4), np.dtype(np.float32))]
    validate(manifest, inp, outs)
    with pytest.raises(ManifestError, match="3 classes"):
        validate(manifest.model_copy(update={"classes": ["a", "b", "c"], "palette": [(0, 0, 0)] * 3}), inp, outs)
    with pytest.raises(ManifestError, match="names output tensor 'Identity_1'"):
        validate(manifest, inp, outs[:1])
    semantic_kind = manifest.model_copy(update={"output": OutputSpec(kind="logits")})
    with pytest.raises(ManifestError, match="instance models use kind 'yolo_seg'"):
        validate(semantic_kind, inp, outs)


def test_instance_overlay(instance_model_dir):
    frame = np.full((FRAME[1], FRAME[0], 3), 40, np.uint8)
    with Segmenter.create(model=instance_model_dir) as seg:
        result = seg.segment(frame)
    out = Overlay(alpha=0.5).annotate(frame, result)
    assert out.shape == frame.shape and not np.array_equal(out, frame)
    # without labels, outside every box the frame is untouched
    plain = InstanceOverlay(alpha=0.5, labels=False).annotate(frame, result)
    covered = np.zeros(frame.shape[:2], bool)
    for inst in result.instances:
        x, y, w, h = inst.bbox
        covered[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = True
    assert np.array_equal(plain[~covered], frame[~covered]) and not np.array_equal(plain[covered], frame[covered])
    assert not np.array_equal(out, plain)  # the labels
    # where only the top instance is, the frame is tinted with its own colour
    only = result.instances[0].frame_mask(FRAME)
    for inst in result.instances[1:]:
        only &= ~inst.frame_mask(FRAME)
    only[:, :20] = False  # away from its contour
    ys, xs = np.nonzero(only)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    expected = (np.array(frame[y, x], float) * 0.5 + np.array(instance_colour(0)) * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(plain[y, x], expected)
    small = InstanceOverlay(labels=False).annotate(np.zeros((48, 64, 3), np.uint8), result)  # smaller preview
    assert small.shape == (48, 64, 3) and small.any()
    assert len({instance_colour(k) for k in range(8)}) == 8


def test_smoothing_an_instance_model_warns_once_and_segments_unsmoothed(instance_model_dir, caplog):
    from edge_seg.config import SmoothingConfig

    frame = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    with Segmenter.create(model=instance_model_dir) as plain:
        want = plain.segment(frame)
    with caplog.at_level("WARNING", logger="edge_seg.segmenter"):
        with Segmenter.create(model=instance_model_dir, smoothing=SmoothingConfig(alpha=0.3)) as seg:
            assert not seg.smoothing
            results = [seg.segment(frame) for _ in range(3)]
    warnings = [r for r in caplog.records if r.name == "edge_seg.segmenter"]
    assert len(warnings) == 1 and "not smoothed" in warnings[0].getMessage()
    assert "instance" in warnings[0].getMessage()
    for result in results:
        assert [(i.class_id, i.score) for i in result.instances] == [(i.class_id, i.score) for i in want.instances]
        np.testing.assert_array_equal(result.label_map, want.label_map)
