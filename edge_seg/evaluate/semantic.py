"""Segmentation metrics: confusion matrix, IoU/Dice/accuracy, a heat-map, dataset evaluation.

Pure NumPy (plus OpenCV to read images and draw the heat-map). ``converters`` use this module
too, so it imports nothing device-specific.

Undefined values: a class that is absent from both ground truth and prediction has no IoU or
Dice (``None`` in the result, NaN in arrays) and is left out of the means; precision is ``None``
for a class never predicted, recall for a class absent from the ground truth. A class present
in either one counts in the means (a class predicted but absent from the ground truth scores 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_seg.errors import InputError
from edge_seg.maskio import is_palette_png, read_palette_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_index: int | None = 255) -> np.ndarray:
    """(C, C) int64 counts: rows are ground-truth classes, columns predicted classes.

    Pixels whose ground truth is ``ignore_index`` are skipped. Any other id outside
    ``0..num_classes-1`` in either map raises ``InputError``.
    """
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} does not match ground truth {gt.shape}")
    gt = gt.ravel()
    pred = pred.ravel()
    if ignore_index is not None:
        keep = gt != ignore_index
        if not keep.all():
            gt, pred = gt[keep], pred[keep]
    for name, values in (("ground truth", gt), ("prediction", pred)):
        if values.size and (int(values.max()) >= num_classes or int(values.min()) < 0):
            bad = int(values.max()) if int(values.max()) >= num_classes else int(values.min())
            raise InputError(f"{name} contains class id {bad}, outside 0..{num_classes - 1}")
    index = gt.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _json(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class IoU, Dice, precision, recall; mIoU, mean Dice, pixel accuracy (JSON-ready).

    See the module docstring for how absent classes are handled (``None``, left out of means).
    """
    cm = np.asarray(cm, np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise InputError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    tp = np.diag(cm).astype(np.float64)
    gt_pixels, pred_pixels = cm.sum(axis=1), cm.sum(axis=0)
    fp, fn = pred_pixels - tp, gt_pixels - tp
    iou, dice = _ratio(tp, tp + fp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    total = int(cm.sum())
    evaluated = ~np.isnan(iou)
    per_class = {
        name: {"iou": _json(iou[i]), "dice": _json(dice[i]), "precision": _json(precision[i]),
               "recall": _json(recall[i]), "gt_pixels": int(gt_pixels[i]),
               "pred_pixels": int(pred_pixels[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "mean_iou": float(iou[evaluated].mean()) if evaluated.any() else None,
        "mean_dice": float(dice[evaluated].mean()) if evaluated.any() else None,
        "classes_evaluated": [n for n, e in zip(class_names, evaluated, strict=True) if e],
        "num_pixels": total,
        "per_class": per_class,
    }


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path,
                   cell: int | None = None) -> Path:
    """Write a row-normalised confusion heat-map PNG (OpenCV only); returns the path.

    Each cell shows the fraction of the row's ground-truth pixels predicted as the column's
    class ("-" for a class absent from the ground truth). ``cell`` is the cell size in pixels
    (default: 64, smaller for many classes; values are written only in cells of 36 px or more).
    """
    cm = np.asarray(cm, np.float64)
    n = cm.shape[0]
    if cm.shape != (n, n) or n != len(class_names):
        raise InputError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    cell = cell or min(64, max(16, 1200 // max(n, 1)))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    label_w = max(cv2.getTextSize(str(c), font, 0.45, 1)[0][0] for c in class_names) + 12
    left, top, bottom = label_w + 30, 40, label_w + 36
    canvas = np.full((top + n * cell + bottom, left + n * cell + 20, 3), 255, np.uint8)
    heat = cv2.applyColorMap(np.round(norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    canvas[top:top + n * cell, left:left + n * cell] = cv2.resize(
        heat, (n * cell, n * cell), interpolation=cv2.INTER_NEAREST)
    for r, c in np.ndindex(n, n) if cell >= 36 else ():
        text = f"{norm[r, c]:.2f}" if rows[r, 0] else "-"
        (tw, th), _ = cv2.getTextSize(text, font, 0.4, 1)
        ink = (0, 0, 0) if norm[r, c] > 0.6 else (255, 255, 255)
        org = (left + c * cell + (cell - tw) // 2, top + r * cell + (cell + th) // 2)
        cv2.putText(canvas, text, org, font, 0.4, ink, 1, cv2.LINE_AA)
    for i, name in enumerate(class_names):  # row labels, left of the grid
        (tw, th), _ = cv2.getTextSize(str(name), font, 0.45, 1)
        cv2.putText(canvas, str(name), (left - tw - 6, top + i * cell + (cell + th) // 2), font, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    # Column labels: right-aligned on a strip, rotated to read bottom-to-top under each column.
    strip = np.full((n * cell, label_w, 3), 255, np.uint8)
    for i, name in enumerate(class_names):
        (tw, th), _ = cv2.getTextSize(str(name), font, 0.45, 1)
        cv2.putText(strip, str(name), (label_w - tw - 4, i * cell + (cell + th) // 2), font, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    y0 = top + n * cell + 4
    canvas[y0:y0 + label_w, left:left + n * cell] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cv2.putText(canvas, "confusion (rows sum to 1)", (left, 26), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "predicted", (left, canvas.shape[0] - 8), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    title = np.full((22, 140, 3), 255, np.uint8)
    cv2.putText(title, "ground truth", (2, 16), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    title = cv2.rotate(title, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y = max(top, top + (n * cell - title.shape[0]) // 2)
    h = min(title.shape[0], canvas.shape[0] - y)
    canvas[y:y + h, 2:2 + title.shape[1]] = title[:h]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise InputError(f"cannot write {path}")
    return path


def _read_mask(path: Path) -> np.ndarray:
    """Class ids of a mask PNG: indexed PNGs give their indices, others must be 1-channel uint8."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read mask {path}: {err.strerror}") from None
    if is_palette_png(data):
        return read_palette_png(data)  # cv2 would return the palette colours, not the ids
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise InputError(f"cannot read mask {path}: not a readable image")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise InputError(f"mask {path} must be a 1-channel 8-bit PNG of class ids, got "
                         f"{mask.shape[2] if mask.ndim == 3 else 1} channel(s) of {mask.dtype}")
    return mask


def _pairs(data_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a dataset folder, checked before any inference runs."""
    if not data_dir.is_dir():
        raise InputError(f"dataset folder {data_dir} does not exist")
    for sub in ("images", "masks"):
        if not (data_dir / sub).is_dir():
            raise InputError(f"{data_dir} has no {sub}/ folder: a dataset needs images/ and masks/ "
                             "(PNG class ids named like the image, 255 = ignore)")
    images = sorted(p for p in (data_dir / "images").iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{data_dir / 'images'} has no images ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            other = stems[image.stem].name
            raise InputError(f"two images share the name {image.stem!r}: {other}, {image.name}")
        stems[image.stem] = image
    pairs = [(image, data_dir / "masks" / f"{image.stem}.png") for image in images]
    for image, mask in pairs:
        if not mask.is_file():
            raise InputError(f"image {image.name} has no mask: expected masks/{mask.name}")
    return pairs


def evaluate_dataset(segment_fn: Callable[[np.ndarray], np.ndarray], data_dir: str | Path,
                     num_classes: int, class_names: Sequence[str], progress: bool = True,
                     ignore_index: int | None = 255) -> dict:
    """Run ``segment_fn(image_bgr) -> class_map (H, W)`` over ``data_dir`` and score it.

    ``data_dir`` holds ``images/*`` and ``masks/<image stem>.png`` (class ids, ``ignore_index``
    = not scored; indexed PNGs are read as their indices). Returns ``metrics_from_confusion``
    plus ``confusion_matrix`` (nested lists, rows = ground truth), ``class_names`` and
    ``num_images``. Raises ``InputError`` on a wrong layout, unreadable file or size mismatch.
    """
    if len(class_names) != num_classes:
        raise InputError(f"{len(class_names)} class names given for {num_classes} classes")
    pairs = _pairs(Path(data_dir))
    cm = np.zeros((num_classes, num_classes), np.int64)
    for image_path, mask_path in tqdm(pairs, desc="evaluate", unit="img", disable=not progress):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read image {image_path}")
        mask = _read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise InputError(f"{image_path.name} is {image.shape[1]}x{image.shape[0]} but its mask is "
                             f"{mask.shape[1]}x{mask.shape[0]}")
        pred = np.asarray(segment_fn(image))
        if pred.shape != mask.shape:
            raise InputError(f"segmentation of {image_path.name} has shape {pred.shape}, its mask "
                             f"{mask.shape}: segment_fn must return a class map at image size")
        try:
            cm += confusion_matrix(pred, mask, num_classes, ignore_index)
        except InputError as err:
            raise InputError(f"{image_path.name}: {err}") from None
    result = metrics_from_confusion(cm, class_names)
    result.update(confusion_matrix=cm.tolist(), class_names=list(class_names), num_images=len(pairs))
    return result


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json`` and ``confusion.png`` for an ``evaluate_dataset`` result."""
    if "confusion_matrix" not in result or "class_names" not in result:
        raise InputError("result has no confusion_matrix/class_names: pass what evaluate_dataset returns")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.json"
    metrics.write_text(json.dumps(result, indent=2) + "\n")
    confusion = plot_confusion(np.asarray(result["confusion_matrix"]), result["class_names"],
                               out / "confusion.png")
    return {"metrics": metrics, "confusion": confusion}


__all__ = ["confusion_matrix", "evaluate_dataset", "metrics_from_confusion", "plot_confusion",
           "write_report"]
