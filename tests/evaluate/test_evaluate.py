"""Metrics checked against independent per-class loops; dataset evaluation on real files."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from edge_seg.errors import InputError
from edge_seg.evaluate.semantic import (
    confusion_matrix,
    evaluate_dataset,
    metrics_from_confusion,
    plot_confusion,
    write_report,
)
from edge_seg.maskio import palette_png

NAMES = ["background", "person", "car", "road", "sky"]


def random_pair(seed: int = 0, shape=(60, 80), classes: int = 5):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, classes, shape).astype(np.uint8)
    pred = gt.copy()
    noisy = rng.random(shape) < 0.35
    pred[noisy] = rng.integers(0, classes, int(noisy.sum()))
    gt[rng.random(shape) < 0.1] = 255
    return pred, gt


def loop_metrics(pred: np.ndarray, gt: np.ndarray, classes: int) -> dict:
    """The textbook definitions, one class at a time."""
    valid = gt != 255
    out = {}
    for c in range(classes):
        p, g = (pred == c) & valid, (gt == c) & valid
        tp, union = int((p & g).sum()), int((p | g).sum())
        out[c] = {"iou": tp / union if union else None,
                  "dice": 2 * tp / (p.sum() + g.sum()) if union else None,
                  "precision": tp / p.sum() if p.sum() else None,
                  "recall": tp / g.sum() if g.sum() else None}
    out["accuracy"] = float(((pred == gt) & valid).sum() / valid.sum())
    return out


def test_confusion_matrix_matches_a_per_pixel_count():
    pred, gt = random_pair()
    cm = confusion_matrix(pred, gt, 5)
    assert cm.dtype == np.int64 and cm.shape == (5, 5)
    expected = np.zeros((5, 5), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g != 255:
            expected[g, p] += 1
    assert np.array_equal(cm, expected)
    assert cm.sum() == (gt != 255).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_per_class_loop(seed):
    pred, gt = random_pair(seed)
    result = metrics_from_confusion(confusion_matrix(pred, gt, 5), NAMES)
    expected = loop_metrics(pred, gt, 5)
    for c, name in enumerate(NAMES):
        for key in ("iou", "dice", "precision", "recall"):
            assert result["per_class"][name][key] == pytest.approx(expected[c][key])
    assert result["mean_iou"] == pytest.approx(np.mean([expected[c]["iou"] for c in range(5)]))
    assert result["mean_dice"] == pytest.approx(np.mean([expected[c]["dice"] for c in range(5)]))
    assert result["pixel_accuracy"] == pytest.approx(expected["accuracy"])


def test_absent_classes_are_none_and_left_out_of_the_means():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 0, 1, 3], [0, 1, 1, 2]], np.uint8)  # 3 predicted, absent from gt; 4 absent
    result = metrics_from_confusion(confusion_matrix(pred, gt, 5), NAMES)
    sky, road = result["per_class"]["sky"], result["per_class"]["road"]
    assert sky == {"iou": None, "dice": None, "precision": None, "recall": None,
                   "gt_pixels": 0, "pred_pixels": 0}
    assert road["iou"] == 0.0 and road["recall"] is None and road["precision"] == 0.0
    assert result["classes_evaluated"] == ["background", "person", "road"]
    ious = [result["per_class"][n]["iou"] for n in ("background", "person", "road")]
    assert result["mean_iou"] == pytest.approx(sum(ious) / 3)
    json.dumps(result)  # JSON-ready: no NaN


def test_empty_confusion_gives_no_means():
    result = metrics_from_confusion(np.zeros((2, 2), np.int64), ["a", "b"])
    assert result["mean_iou"] is None and result["pixel_accuracy"] is None


def test_confusion_matrix_rejects_bad_inputs():
    pred, gt = random_pair()
    with pytest.raises(InputError, match="does not match"):
        confusion_matrix(pred[:10], gt, 5)
    with pytest.raises(InputError, match="ground truth contains class id 4"):
        confusion_matrix(np.minimum(pred, 3), gt, 4)
    with pytest.raises(InputError, match="prediction contains class id 7"):
        confusion_matrix(np.full_like(gt, 7), gt, 5)
    with pytest.raises(InputError, match="3 class names"):
        metrics_from_confusion(np.zeros((5, 5)), NAMES[:3])


def test_plot_confusion_writes_a_readable_png(tmp_path):
    cm = confusion_matrix(*random_pair(), 5)
    cm[4] = 0  # a row without pixels stays empty
    path = plot_confusion(cm, NAMES, tmp_path / "sub" / "cm.png")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 5 * 64 and image.shape[1] > 5 * 64
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # heat colours and text


# ---- datasets on disk: image grey level encodes the class (class * 50), read back by segment_fn


def write_dataset(root, n: int = 3, shape=(24, 32), palette_mask: bool = True):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(5)
    masks = []
    for i in range(n):
        mask = rng.integers(0, 4, shape).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"img{i}.png"), np.dstack([mask * 50] * 3).astype(np.uint8))
        mask[0, :4] = 255
        if palette_mask and i == 0:  # VOC style indexed PNG
            (root / "masks" / f"img{i}.png").write_bytes(palette_png(mask, [(0, 0, 0)] * 4))
        else:
            cv2.imwrite(str(root / "masks" / f"img{i}.png"), mask)
        masks.append(mask)
    return masks


def segment(image: np.ndarray) -> np.ndarray:
    pred = (image[..., 0] // 50).astype(np.uint8)
    pred[-1] = 0  # make some mistakes
    return pred


def test_evaluate_dataset_accumulates_the_confusion_of_every_image(tmp_path):
    masks = write_dataset(tmp_path)
    result = evaluate_dataset(segment, tmp_path, 4, NAMES[:4], progress=False)
    expected = sum(confusion_matrix(segment(np.dstack([np.where(m == 255, 0, m) * 50] * 3)), m, 4)
                   for m in masks)
    assert result["confusion_matrix"] == expected.tolist()
    assert result["num_images"] == 3 and result["class_names"] == NAMES[:4]
    assert result["mean_iou"] == pytest.approx(metrics_from_confusion(expected, NAMES[:4])["mean_iou"])
    assert 0.5 < result["pixel_accuracy"] < 1.0


def test_write_report_writes_metrics_json_and_confusion_png(tmp_path):
    write_dataset(tmp_path / "data")
    result = evaluate_dataset(segment, tmp_path / "data", 4, NAMES[:4], progress=False)
    paths = write_report(result, tmp_path / "report")
    loaded = json.loads(paths["metrics"].read_text())
    assert math.isclose(loaded["mean_iou"], result["mean_iou"])
    assert cv2.imread(str(tmp_path / "report" / "confusion.png")) is not None


def test_evaluate_dataset_shows_a_progress_bar(tmp_path, capsys):
    write_dataset(tmp_path)
    evaluate_dataset(segment, tmp_path, 4, NAMES[:4], progress=True)
    assert "evaluate" in capsys.readouterr().err


def run(root, fn=segment, **kwargs):
    return evaluate_dataset(fn, root, 4, NAMES[:4], progress=False, **kwargs)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path / "nope")


@pytest.mark.parametrize("sub", ["images", "masks"])
def test_missing_images_or_masks_folder(tmp_path, sub):
    write_dataset(tmp_path)
    for f in (tmp_path / sub).iterdir():
        f.unlink()
    (tmp_path / sub).rmdir()
    with pytest.raises(InputError, match=f"no {sub}/ folder"):
        run(tmp_path)


def test_no_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="has no images"):
        run(tmp_path)


def test_image_without_mask(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "masks" / "img1.png").unlink()
    with pytest.raises(InputError, match="img1.png has no mask: expected masks/img1.png"):
        run(tmp_path)


def test_two_images_with_one_name(tmp_path):
    write_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "images" / "img1.bmp"), np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(InputError, match="share the name 'img1'"):
        run(tmp_path)


def test_unreadable_image(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "images" / "img2.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image .*img2.png"):
        run(tmp_path)


def test_unreadable_mask(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "masks" / "img2.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read mask .*img2.png"):
        run(tmp_path)


def test_colour_mask_is_rejected(tmp_path):
    write_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "masks" / "img1.png"), np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(InputError, match="1-channel 8-bit PNG of class ids, got 3 channel"):
        run(tmp_path)


def test_image_and_mask_sizes_differ(tmp_path):
    write_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "masks" / "img1.png"), np.zeros((20, 32), np.uint8))
    with pytest.raises(InputError, match="img1.png is 32x24 but its mask is 32x20"):
        run(tmp_path)


def test_segment_fn_returns_wrong_size(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(InputError, match="segment_fn must return a class map at image size"):
        run(tmp_path, fn=lambda image: np.zeros((8, 8), np.uint8))


def test_mask_with_unknown_class_id_names_the_file(tmp_path):
    write_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "masks" / "img2.png"), np.full((24, 32), 9, np.uint8))
    with pytest.raises(InputError, match="img2.png: ground truth contains class id 9"):
        run(tmp_path)


def test_class_names_must_match_num_classes(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(InputError, match="2 class names given for 4 classes"):
        evaluate_dataset(segment, tmp_path, 4, NAMES[:2], progress=False)
