"""Redactor.redact: the one redaction the loop does per frame (no copy when nothing is hidden, ROI, instances)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_seg.errors import InputError
from edge_seg.segmentation import Instance, ModelIdentity, Segmentation
from edge_seg.view.redact import Redactor, class_ids

CLASSES = ("background", "person", "car")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75))
MODEL = ModelIdentity("test", "1.0.0", "0" * 64)


def seg(labels: np.ndarray, frame_size=(320, 240), instances=None) -> Segmentation:
    return Segmentation(label_map=labels, confidence_map=np.ones(labels.shape, np.float32), frame_size=frame_size,
                        classes=CLASSES, palette=PALETTE, model=MODEL, instances=instances)


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(1).integers(1, 256, (240, 320, 3), dtype=np.uint8)


def test_a_frame_without_the_classes_is_returned_itself_not_copied(frame):
    labels = np.zeros((60, 80), np.uint8)
    labels[10:20, 10:20] = 2  # a car; only persons are hidden
    redactor = Redactor(["person"])
    assert redactor.redact(frame, seg(labels)) is frame
    labels[30:40, 30:40] = 1
    out = redactor.redact(frame, seg(labels))
    assert out is not frame and (out[120:160, 120:160] == 0).all()
    assert np.array_equal(out[:120], frame[:120])  # the car and the background keep their pixels


def test_redact_never_changes_the_frame_it_is_given(frame):
    before = frame.copy()
    labels = np.ones((60, 80), np.uint8)
    for mode in ("fill", "blur"):
        out = Redactor([1], mode=mode, blur_kernel=9).redact(frame, seg(labels))
        assert np.array_equal(frame, before) and not np.array_equal(out, frame)


def test_with_a_roi_only_the_segmented_part_is_redacted(frame):
    labels = np.ones((30, 40), np.uint8)  # the whole ROI is a person
    out = Redactor(["person"]).redact(frame, seg(labels, frame_size=(160, 120)), roi=(100, 50, 160, 120))
    assert (out[50:170, 100:260] == 0).all()
    outside = np.ones(frame.shape[:2], bool)
    outside[50:170, 100:260] = False
    assert np.array_equal(out[outside], frame[outside])


def test_an_instance_of_a_redacted_class_is_hidden_even_under_another_instance(frame):
    person = np.ones((40, 30), bool)
    car = np.ones((40, 30), bool)
    # the car scores higher and covers the person's box, so the label map says "car" there
    instances = (Instance(2, 0.9, (100.0, 100.0, 30.0, 40.0), car, (100, 100)),
                 Instance(1, 0.6, (100.0, 100.0, 30.0, 40.0), person, (100, 100)))
    labels = np.full((240, 320), 255, np.uint8)
    labels[100:140, 100:130] = 2
    out = Redactor(["person"]).redact(frame, seg(labels, instances=instances))
    assert (out[100:140, 100:130] == 0).all()
    assert np.array_equal(out[:100], frame[:100]) and np.array_equal(out[140:], frame[140:])


def test_the_mask_follows_the_frame_size_class_map_that_crops_publish(frame):
    labels = np.zeros((7, 9), np.uint8)  # model pixels do not divide the frame evenly
    labels[2:5, 3:7] = 1
    s = seg(labels)
    out = Redactor(["person"], color=(9, 8, 7)).redact(frame, s)
    hidden = s.class_map == 1
    assert (out[hidden] == (9, 8, 7)).all() and np.array_equal(out[~hidden], frame[~hidden])


@pytest.mark.parametrize(("classes", "said"), [(["cat"], "class 'cat' to redact is not a class of the model"),
                                               ([3], "class id 3 to redact is outside the model's 3 classes"),
                                               ([-1], "class id -1")])
def test_classes_the_model_does_not_have_are_one_line_errors(classes, said):
    with pytest.raises(InputError) as err:
        class_ids(classes, CLASSES)
    assert said in str(err.value) and "background, person, car" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match=said):
        Redactor(classes).check(CLASSES)
