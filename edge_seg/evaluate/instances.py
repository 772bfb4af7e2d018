"""Instance segmentation metrics: COCO mask AP / AP50 / AP75 (pycocotools) plus per-class recall.

A dataset is ``images/*`` plus ``annotations.json`` in COCO format (``images`` with ``file_name``,
``width``, ``height``; ``annotations`` with ``segmentation`` as compressed RLE, ``category_id``,
``bbox``, ``area``, ``iscrowd``; ``categories``). ``write_instance_dataset`` exports synthetic
scenes (``edge_seg.demo.scenes``) with their exact per-object ground truth in that format.

Predicted classes map onto categories by name when the model's class names are category names,
else by position (model class ``i`` → the ``i``-th category).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask
from tqdm import tqdm

from edge_seg.errors import InputError

ANNOTATIONS = "annotations.json"


def _rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    return [float(x), float(y), float(w), float(h)]


def write_instance_dataset(out_dir: str | Path, n: int, seed: int = 0, size: tuple[int, int] = (256, 256),
                           render: Callable | None = None) -> Path:
    """Write ``n`` synthetic scenes as ``images/00000.png`` + COCO ``annotations.json`` (one entry per object).

    Scene ``i`` is ``render(seed + i, size)`` (default ``scenes.render_scene(..., instances=True)``);
    categories are the scene classes without background.
    """
    from edge_seg.demo import scenes

    render = render or (lambda s, sz: scenes.render_scene(s, sz, instances=True))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(int(n)):
        scene = render(seed + i, size)
        name = f"{i:05d}.png"
        if not cv2.imwrite(str(out / "images" / name), scene.image):
            raise OSError(f"cannot write {out / 'images' / name}")
        height, width = scene.mask.shape
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for ann in scenes.instance_annotations(scene):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": ann["class_id"],
                                "segmentation": _rle(ann["mask"]), "area": float(ann["mask"].sum()),
                                "bbox": _bbox(ann["mask"]), "iscrowd": 0})
    categories = [{"id": k, "name": name} for k, name in enumerate(scenes.CLASSES) if k > 0]
    (out / ANNOTATIONS).write_text(json.dumps({"images": images, "annotations": annotations,
                                               "categories": categories}))
    return out


def _category_map(class_names: Sequence[str], categories: list[dict]) -> dict[int, int]:
    by_name = {c["name"]: c["id"] for c in categories}
    if all(name in by_name for name in class_names):
        return {i: by_name[name] for i, name in enumerate(class_names)}
    ordered = sorted(c["id"] for c in categories)
    return {i: cid for i, cid in enumerate(ordered)}


def coco_mask_metrics(gt: dict, detections: list[dict]) -> dict:
    """COCOeval (iouType segm) of ``detections`` against a COCO ground-truth dict.

    Returns AP (0.50:0.95), AP50, AP75, AR100 and per category: AP, AP50 and recall at IoU 0.5
    (up to 100 detections per image), ``None`` for a category with no ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        if not detections:
            per_class = {c["name"]: {"ap": 0.0, "ap50": 0.0, "recall50": 0.0} for c in gt["categories"]}
            return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ar100": 0.0, "num_detections": 0, "per_class": per_class}
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(detections)))
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    precision, recall = ev.eval["precision"], ev.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]

    def mean_valid(values) -> float | None:
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        name = next(c["name"] for c in gt["categories"] if c["id"] == cid)
        per_class[name] = {"ap": mean_valid(precision[:, :, k, 0, -1]), "ap50": mean_valid(precision[0, :, k, 0, -1]),
                           "recall50": mean_valid(recall[0:1, k, 0, -1])}

    def clean(v: float) -> float | None:
        return None if v < 0 else float(v)

    return {"ap": clean(stats[0]), "ap50": clean(stats[1]), "ap75": clean(stats[2]), "ar100": clean(stats[8]),
            "num_detections": len(detections), "per_class": per_class}


def evaluate_instance_dataset(segment_fn: Callable[[np.ndarray], Sequence], data_dir: str | Path,
                              class_names: Sequence[str], progress: bool = True) -> dict:
    """Run ``segment_fn(image_bgr) -> instances`` (``Instance`` values) over a COCO dataset folder and score it."""
    data = Path(data_dir)
    ann_path = data / ANNOTATIONS
    if not ann_path.is_file():
        raise InputError(f"{data} has no {ANNOTATIONS}: an instance dataset needs images/ and COCO annotations "
                         "(edge_seg.evaluate.instances.write_instance_dataset writes one)")
    try:
        gt = json.loads(ann_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {ann_path}: {err}") from None
    cat_of = _category_map(class_names, gt.get("categories", []))
    detections = []
    for image in tqdm(gt["images"], desc="evaluate", unit="img", disable=not progress):
        frame = cv2.imread(str(data / "images" / image["file_name"]), cv2.IMREAD_COLOR)
        if frame is None:
            raise InputError(f"cannot read image {data / 'images' / image['file_name']}")
        size = (frame.shape[1], frame.shape[0])
        for inst in segment_fn(frame):
            if inst.class_id not in cat_of:
                continue
            detections.append({"image_id": image["id"], "category_id": cat_of[inst.class_id],
                               "segmentation": _rle(inst.frame_mask(size)), "score": float(inst.score),
                               "bbox": [float(v) for v in inst.bbox]})
    result = coco_mask_metrics(gt, detections)
    result.update(num_images=len(gt["images"]), num_instances=len(gt.get("annotations", [])),
                  class_names=list(class_names))
    return result


def write_instance_report(result: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


__all__ = ["coco_mask_metrics", "evaluate_instance_dataset", "write_instance_dataset", "write_instance_report"]
