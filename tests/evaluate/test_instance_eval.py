"""Instance ids in synthetic scenes, COCO export, COCO mask AP, and ``edge-seg eval`` on an instance model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge_seg.cli.main import main
from edge_seg.demo import scenes
from edge_seg.evaluate.instances import ANNOTATIONS, evaluate_instance_dataset, write_instance_dataset
from edge_seg.segmentation import Instance


def test_instance_ids_do_not_change_the_scene():
    for seed in (0, 7, 123):
        plain = scenes.render_scene(seed, (96, 64))
        with_ids = scenes.render_scene(seed, (96, 64), instances=True)
        assert plain.instances is None
        assert np.array_equal(plain.image, with_ids.image) and np.array_equal(plain.mask, with_ids.mask)
        ids = with_ids.instances
        assert ids.dtype == np.uint16 and np.array_equal(ids > 0, with_ids.mask > 0)
        anns = scenes.instance_annotations(with_ids)
        assert anns and all((with_ids.mask[a["mask"]] == a["class_id"]).all() for a in anns)
        rebuilt = np.zeros_like(with_ids.mask)
        for a in anns:
            rebuilt[a["mask"]] = a["class_id"]
        assert np.array_equal(rebuilt, with_ids.mask)


def _truth_instances(data_dir):
    gt = json.loads((data_dir / ANNOTATIONS).read_text())
    from pycocotools import mask as coco_mask

    per_image = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        mask = coco_mask.decode(ann["segmentation"]).astype(bool)
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append(Instance(ann["category_id"] - 1, 0.9, (x, y, w, h), mask, (0, 0)))
    return gt, [per_image[img["id"]] for img in gt["images"]]


def test_coco_ap_of_perfect_and_degraded_predictions(tmp_path):
    data = write_instance_dataset(tmp_path / "ds", 6, seed=5, size=(96, 72))
    gt, truth = _truth_instances(data)
    assert len(gt["annotations"]) >= 6 and [c["name"] for c in gt["categories"]] == ["disc", "box", "triangle"]
    names = ["disc", "box", "triangle"]
    frames = iter(truth)
    perfect = evaluate_instance_dataset(lambda img: next(frames), data, names, progress=False)
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    assert all(m["recall50"] in (None, 1.0) for m in perfect["per_class"].values())
    # drop every disc and shift every other mask by a few pixels
    frames = iter(truth)

    def degraded(img):
        out = []
        for inst in next(frames):
            if inst.class_id == 0:
                continue
            out.append(Instance(inst.class_id, inst.score, inst.bbox, np.roll(inst.mask, 3, axis=1), (0, 0)))
        return out

    worse = evaluate_instance_dataset(degraded, data, names, progress=False)
    assert worse["ap"] < perfect["ap"] and worse["ap75"] <= worse["ap50"]
    if worse["per_class"]["disc"]["recall50"] is not None:
        assert worse["per_class"]["disc"]["recall50"] == 0.0


def test_cli_eval_picks_instance_metrics(instance_model_dir, tmp_path, capsys):
    data = write_instance_dataset(tmp_path / "ds", 2, seed=1, size=(64, 64))
    img = cv2.imread(str(data / "images" / "00000.png"))
    assert img.shape == (64, 64, 3)
    code = main(["eval", "--model", str(instance_model_dir), "--data", str(data), "--out", str(tmp_path / "rep"),
                 "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mask AP" in out and "AP50" in out and "recall@0.5" in out
    report = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert {"ap", "ap50", "ap75", "per_class"} <= set(report)


def test_touching_scenes_have_touching_same_class_instances(tmp_path):
    touching = 0
    for seed in range(6):
        scene = scenes.render_touching_scene(seed, (128, 96))
        again = scenes.render_touching_scene(seed, (128, 96))
        assert np.array_equal(scene.image, again.image) and np.array_equal(scene.instances, again.instances)
        anns = scenes.instance_annotations(scene)
        by_class = {}
        for a in anns:
            by_class.setdefault(a["class_id"], []).append(a["mask"])
        biggest = max(by_class.values(), key=len)
        assert len(biggest) >= 3
        grown = [cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) for m in biggest]
        pairs = [(i, j) for i in range(len(biggest)) for j in range(len(biggest)) if i != j]
        touching += any((grown[i] & biggest[j]).any() for i, j in pairs)
    assert touching >= 5
    data = write_instance_dataset(tmp_path / "touching", 2, seed=3, size=(64, 64), render=scenes.render_touching_scene)
    assert len(json.loads((data / ANNOTATIONS).read_text())["annotations"]) >= 6
