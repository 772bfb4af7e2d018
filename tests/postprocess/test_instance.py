"""YOLO-seg decoding checked against an independent, loop-by-loop computation.

Tiny TFLite models (float and int8) output known tensors in the YOLO-seg layout
(``instance_builders``); the reference there decodes the model's dequantised outputs with plain
Python loops, a per-class greedy NMS and a resize-the-whole-map mask path, and the decoder must
agree on classes, scores, boxes and masks.
"""

from __future__ import annotations

import instance_builders as ib
import numpy as np
import pytest
from instance_builders import FRAME, reference

from edge_seg.backends import registry
from edge_seg.backends.base import BackendOptions
from edge_seg.errors import ModelError
from edge_seg.postprocess.instance import InstanceDecoder, label_map, nms
from edge_seg.preprocess import Transform, letterbox_geometry
from edge_seg.tensors import TensorSpec, resolve_layout


@pytest.fixture(scope="session")
def yolo_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo_seg")
    return {io: ib.build(root / f"yolo_seg_{io}.tflite", io) for io in ("float32", "int8")}


def _run(path):
    backend = registry.create("litert")
    backend.load(path, None, BackendOptions())
    try:
        outs = backend.infer(np.zeros(backend.input_spec.shape, backend.input_spec.dtype))
        return outs, backend.output_specs
    finally:
        backend.close()


@pytest.mark.parametrize("io", ["float32", "int8"])
def test_decode_matches_reference(yolo_models, io):
    outs, specs = _run(yolo_models[io])
    transform = Transform(FRAME, (64, 64), letterbox_geometry(FRAME, (64, 64)))
    decoder = InstanceDecoder(specs, num_classes=ib.NC, score_threshold=ib.SCORE_THRESHOLD)
    got = decoder(outs, transform)
    lay = decoder.layout
    det = specs[lay.detections].dequantize(outs[lay.detections])[0]
    protos = specs[lay.prototypes].dequantize(outs[lay.prototypes])[0]
    want = reference(det, protos, transform, ib.NC, ib.SCORE_THRESHOLD)
    assert len(got) == len(want) >= 3
    for inst, (cls, score, bbox, mask) in zip(got, want, strict=True):
        assert inst.class_id == cls and inst.score == pytest.approx(score, abs=1e-6)
        np.testing.assert_allclose(inst.bbox, bbox, atol=1e-3)
        full = inst.frame_mask(FRAME)
        assert full.shape == mask.shape == (FRAME[1], FRAME[0])
        assert mask.sum() > 20
        # Same sampling maths, different route (one warp vs two resizes): at most a sliver differs.
        assert (full != mask).sum() <= 0.03 * mask.sum() + 2, (full != mask).sum()
    if io == "float32":
        order = [ib.CANDIDATES[i] for i in ib.EXPECTED_ORDER]
        assert [(i.class_id, round(i.score, 4)) for i in got] == [(c[4], c[5]) for c in order]
        # candidate 0: box (8, 8)-(32, 32) input px → frame (16, 0)-(64, 48); mask = left columns x < 24 input px
        first = got[0]
        np.testing.assert_allclose(first.bbox, (16.0, 0.0, 48.0, 48.0), atol=1e-3)
        m = first.frame_mask(FRAME)
        assert m[:48, 16:44].all() and not m[:, 52:].any() and not m[48:].any()


def test_transposed_and_nchw_layouts_decode_the_same():
    det, protos = ib.detections()[None], ib.prototypes()[None]
    transform = Transform((64, 64), (64, 64), (0, 0, 64, 64))
    specs = [TensorSpec("det", det.shape, np.dtype(np.float32)),
             TensorSpec("proto", protos.shape, np.dtype(np.float32))]
    base = InstanceDecoder(specs, num_classes=2)([det, protos], transform)
    det_t, protos_t = det.transpose(0, 2, 1), protos.transpose(0, 3, 1, 2)
    specs_t = [TensorSpec("proto", protos_t.shape, np.dtype(np.float32)),
               TensorSpec("det", det_t.shape, np.dtype(np.float32))]
    for num_classes in (2, None):  # manifest-given or inferred from shapes
        decoder = InstanceDecoder(specs_t, num_classes=num_classes)
        assert decoder.layout.transposed and decoder.layout.protos_nchw
        other = decoder([protos_t, det_t], transform)
        assert [(i.class_id, i.score, i.bbox) for i in other] == [(i.class_id, i.score, i.bbox) for i in base]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(other, base, strict=True))
    # shapes only: nc = 10 - 4 - 4, NCHW prototypes found by their short axis
    lay = resolve_layout(specs_t)
    assert (lay.num_classes, lay.num_masks, lay.protos_nchw, lay.detections, lay.prototypes) == (2, 4, True, 1, 0)


def test_nms_is_class_aware_and_caps_detections():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.5, 100).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, 0.5, 2).tolist() == [0, 2]
    assert nms(boxes, scores, np.zeros(4, int), 0.95, 100).tolist() == [0, 1, 3]  # #2 duplicates #1
    assert nms(boxes[:0], scores[:0], classes[:0], 0.5, 10).tolist() == []


def test_max_detections_and_threshold():
    det, protos = ib.detections()[None], ib.prototypes()[None]
    specs = [TensorSpec("det", det.shape, np.dtype(np.float32)),
             TensorSpec("proto", protos.shape, np.dtype(np.float32))]
    transform = Transform((64, 64), (64, 64), (0, 0, 64, 64))
    assert len(InstanceDecoder(specs, 2, max_detections=2)([det, protos], transform)) == 2
    assert len(InstanceDecoder(specs, 2, score_threshold=0.95)([det, protos], transform)) == 0
    got = InstanceDecoder(specs, 2)([det, protos], transform)
    labels, conf = label_map(got, (64, 64))
    assert labels[20, 12] == 0 and conf[20, 12] == pytest.approx(0.9)  # candidate 0 outranks candidate 2 there
    assert labels[44, 44] == 1 and labels[2, 60] == 255


def test_bad_shapes_are_reported():
    specs = [TensorSpec("a", (1, 10, 8), np.dtype(np.float32)), TensorSpec("b", (1, 16, 16, 4), np.dtype(np.float32))]
    with pytest.raises(ModelError, match="4 \\+ 5 classes"):
        resolve_layout(specs, 5)
    with pytest.raises(ModelError, match="one detection tensor"):
        resolve_layout(specs[:1])
