"""YOLO-seg outputs → instances (class, score, box, mask) in frame pixels.

The format (YOLOv8/YOLO11-seg exports) has two tensors:

* **detections** ``[1, 4 + nc + nm, N]`` (or transposed ``[1, N, 4 + nc + nm]``): per candidate a
  box (cx, cy, w, h in model-input pixels), ``nc`` class scores in [0, 1] and ``nm`` mask
  coefficients;
* **prototypes** ``[1, mh, mw, nm]`` (NHWC) or ``[1, nm, mh, mw]`` (NCHW).

End-to-end heads (Ultralytics ``end2end`` exports: NMS inside the graph) give detections
``[1, max_det, 6 + nm]`` = x1, y1, x2, y2, score, class, coefficients instead: rows are only
thresholded by score, no NMS runs on the device.

Each tensor is dequantised with its own parameters. Candidates below the score threshold are
dropped, class-aware NMS (IoU matrix in numpy, greedy pass over the kept rows) keeps at most
``max_detections``, and each mask is ``sigmoid(coefficients · prototypes)`` sampled straight into
the frame pixels of its box (one affine warp per instance that undoes the letterbox/stretch of
the preprocess ``Transform``), thresholded and cropped to the box.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_seg.segmentation import Instance
from edge_seg.tensors import TensorSpec, resolve_layout


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes (x0, y0, x1, y1): (len(a), len(b))."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_detections: int) -> np.ndarray:
    """Class-aware greedy NMS: indices kept, highest score first.

    Boxes of different classes are shifted apart so one IoU matrix serves all classes.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    shift = (float(np.abs(boxes).max()) + 1.0) * 2.0
    shifted = boxes[order] + (classes[order].astype(np.float64) * shift)[:, None]
    iou = box_iou(shifted, shifted)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_detections:
            break
        suppressed |= iou[i] > iou_threshold
    return order[np.array(keep, np.int64)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(np.float32)


class InstanceDecoder:
    """Decodes the raw outputs of a YOLO-seg model into ``Instance`` values at frame size."""

    def __init__(self, tensors: list[TensorSpec], num_classes: int | None = None, score_threshold: float = 0.25,
                 iou_threshold: float = 0.5, mask_threshold: float = 0.5, max_detections: int = 100,
                 max_candidates: int = 1024, end2end: bool = False):
        self.layout = resolve_layout(tensors, num_classes, end2end=end2end)
        self.det_spec = tensors[self.layout.detections]
        self.proto_spec = tensors[self.layout.prototypes]
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.mask_threshold = float(mask_threshold)
        self.max_detections = int(max_detections)
        self.max_candidates = int(max_candidates)

    def candidates(self, outputs: list[np.ndarray]):
        """(boxes x0,y0,x1,y1 in input px, scores, class ids, mask coefficients, runner-up class ids and
        scores) after the score threshold; the runner-up arrays are None for a one-class model."""
        lay = self.layout
        if lay.end2end:
            return self._end2end_candidates(outputs)
        raw = outputs[lay.detections][0]
        det = raw if lay.transposed else raw.T  # (N, C), raw dtype
        nc = lay.num_classes
        raw_scores = det[:, 4:4 + nc]
        # Dequantisation is monotonic (scale > 0): pick the best class on raw values.
        cls = raw_scores.argmax(axis=1)
        top = self.det_spec.dequantize(np.take_along_axis(raw_scores, cls[:, None], axis=1)[:, 0])
        sel = np.flatnonzero(top >= self.score_threshold)
        if len(sel) > self.max_candidates:
            sel = sel[np.argsort(-top[sel], kind="stable")[: self.max_candidates]]
        rows = self.det_spec.dequantize(det[sel])
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float64)
        second = second_cls = None
        if nc > 1:
            others = rows[:, 4:4 + nc].astype(np.float32)  # a copy: the top class is masked out
            others[np.arange(len(sel)), cls[sel]] = -np.inf
            second_cls = others.argmax(axis=1)
            second = others[np.arange(len(sel)), second_cls]
        return boxes, top[sel].astype(np.float32), cls[sel].astype(np.int64), rows[:, 4 + nc:], (second_cls, second)

    def _end2end_candidates(self, outputs: list[np.ndarray]):
        """``candidates`` of an end-to-end head: rows x1, y1, x2, y2, score, class, coefficients, NMS done."""
        rows = self.det_spec.dequantize(outputs[self.layout.detections][0])
        rows = rows[rows[:, 4] >= self.score_threshold]
        classes = np.rint(rows[:, 5]).astype(np.int64)
        if self.layout.num_classes:
            rows, classes = rows[classes < self.layout.num_classes], classes[classes < self.layout.num_classes]
        boxes = rows[:, :4].astype(np.float64)
        return boxes, rows[:, 4].astype(np.float32), classes, rows[:, 6:], (None, None)

    def prototypes(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Dequantised prototypes as (mh, mw, nm) float32."""
        protos = self.proto_spec.dequantize(outputs[self.layout.prototypes][0])
        return np.ascontiguousarray(protos.transpose(1, 2, 0) if self.layout.protos_nchw else protos)

    def __call__(self, outputs: list[np.ndarray], transform) -> tuple[Instance, ...]:
        """Raw outputs (all model outputs, in backend order) + preprocess ``Transform`` → instances."""
        boxes, scores, classes, coeffs, (second_cls, second) = self.candidates(outputs)
        if self.layout.end2end:
            keep = np.argsort(-scores, kind="stable")[: self.max_detections]
        else:
            keep = nms(boxes, scores, classes, self.iou_threshold, self.max_detections)
        if len(keep) == 0:
            return ()
        protos = self.prototypes(outputs)
        mh, mw, nm = protos.shape
        logits = coeffs[keep] @ protos.reshape(-1, nm).T  # (k, mh*mw)
        probs = _sigmoid(logits).reshape(len(keep), mh, mw)
        return tuple(self._instance(probs[i], boxes[j], float(scores[j]), int(classes[j]), transform,
                                    None if second is None else (int(second_cls[j]), float(second[j])))
                     for i, j in enumerate(keep))

    def _instance(self, prob: np.ndarray, box: np.ndarray, score: float, cls: int, transform,
                  runner_up: tuple[int, float] | None = None) -> Instance:
        fw, fh = transform.frame_size
        iw, ih = transform.input_size
        cx0, cy0, cw, ch = transform.content
        mh, mw = prob.shape
        # input px → frame px
        sx, sy = fw / cw, fh / ch
        x0, y0 = (box[0] - cx0) * sx, (box[1] - cy0) * sy
        x1, y1 = (box[2] - cx0) * sx, (box[3] - cy0) * sy
        x0, y0 = min(max(x0, 0.0), fw), min(max(y0, 0.0), fh)
        x1, y1 = min(max(x1, 0.0), fw), min(max(y1, 0.0), fh)
        bbox = (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
        # Frame pixels whose centres lie inside the box.
        px0, py0 = int(np.ceil(x0 - 0.5)), int(np.ceil(y0 - 0.5))
        px1, py1 = int(np.ceil(x1 - 0.5)), int(np.ceil(y1 - 0.5))
        if px1 <= px0 or py1 <= py0:
            return Instance(cls, score, bbox, np.zeros((0, 0), bool), (px0, py0), runner_up)
        # frame pixel centre f + 0.5 → input px c + (f + 0.5) / s → prototype px (·m/i) - 0.5
        ax, ay = mw / iw / sx, mh / ih / sy
        bx = (cx0 + (px0 + 0.5) / sx) * mw / iw - 0.5
        by = (cy0 + (py0 + 0.5) / sy) * mh / ih - 0.5
        matrix = np.array([[ax, 0.0, bx], [0.0, ay, by]], np.float64)
        roi = cv2.warpAffine(prob, matrix, (px1 - px0, py1 - py0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        return Instance(cls, score, bbox, roi > self.mask_threshold, (px0, py0), runner_up)


def label_map(instances, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Semantic view at frame size: (class of the top-scoring instance per pixel, 255 = none; its score)."""
    labels = np.full((frame_size[1], frame_size[0]), 255, np.uint8)
    conf = np.zeros(labels.shape, np.float32)
    for inst in sorted(instances, key=lambda i: i.score):  # highest score painted last
        x, y = inst.origin
        h, w = inst.mask.shape
        region = (slice(y, y + h), slice(x, x + w))
        m = inst.mask[: labels[region].shape[0], : labels[region].shape[1]]
        labels[region][m] = inst.class_id
        conf[region][m] = inst.score
    return labels, conf


__all__ = ["InstanceDecoder", "box_iou", "label_map", "nms"]
