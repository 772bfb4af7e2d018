"""A small anchor-free instance segmentation network with the YOLO-seg output format, and its loss.

Network (tf_keras, functional, only layers tfmot's default 8-bit scheme covers): a MobileNetV2-style
encoder (/2, /4, /8, /16), a neck that merges /16 into /8, and two branches:

* **head** on the stride-8 grid (``size/8`` squared cells): three 1x1 convolutions, one per role,
  so each role gets its own int8 scale: ``box`` (4 raw values), ``cls`` (nc logits), ``coef``
  (nm mask coefficients);
* **prototypes** at stride 2 (``size/2`` squared, ``nm`` channels) from the neck upsampled with the
  /4 and /2 skips.

``decode_outputs`` turns the four raw maps into the two YOLO-seg tensors the device decoder
(``edge_seg.postprocess.instance``) reads: detections ``[1, 4+nc+nm, N]`` (cx, cy, w, h in input
pixels, sigmoid class scores, coefficients) and prototypes ``[1, mh, mw, nm]``. Box decoding per
cell (gx, gy) of stride s: ``cx = (gx + 2 sigmoid(tx) - 0.5) s``, ``w = 16 s sigmoid(tw)``. It runs
after the Keras model, outside quantisation-aware training, so the exported TFLite model keeps it
in float (int8 convolutions, float decode and float outputs): one int8 scale shared by box
pixels, scores and coefficients would cost the scores most of their resolution.

Loss (``InstanceLoss``): quality focal loss on the class scores of every cell (the target of a
positive cell is the IoU of its predicted box with the ground truth, of every other cell 0); for the positive
cells (the cell holding a ground-truth box centre and its 3x3 neighbours whose centres lie in the
box, each cell to the nearest centre) GIoU + L1 on the box and a binary cross-entropy of
``sigmoid(coef · prototypes)`` against the instance mask at prototype resolution, counted inside
the ground-truth box only and averaged per positive cell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

STRIDE = 8  # detection grid
PROTO_STRIDE = 2
BOX_SCALE = 16.0  # w, h = BOX_SCALE * stride * sigmoid(t): up to 128 px at stride 8


@dataclass(frozen=True)
class InstanceArch:
    size: int = 128  # square input, multiple of 16
    num_classes: int = 3
    num_masks: int = 16
    width: float = 1.0  # channel multiplier
    bn_momentum: float = 0.99

    @property
    def grid(self) -> int:
        return self.size // STRIDE

    @property
    def proto(self) -> int:
        return self.size // PROTO_STRIDE


def _ch(c: int, width: float) -> int:
    return max(8, int(c * width + 4) // 8 * 8)


def _cbr(x, filters: int, kernel: int, stride: int, name: str, momentum: float):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _dws(x, filters: int, stride: int, name: str, momentum: float):
    """Depthwise 3x3 + BN + ReLU6, pointwise + BN + ReLU6."""
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    return _cbr(x, filters, 1, 1, f"{name}_pw", momentum)


def _ir(x, filters: int, stride: int, name: str, momentum: float, expansion: int = 4):
    """Inverted residual (1x1 expand, 3x3 depthwise, 1x1 linear project, residual if shapes match)."""
    in_ch = x.shape[-1]
    y = _cbr(x, in_ch * expansion, 1, 1, f"{name}_exp", momentum)
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(y)
    if stride == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def build_instance_model(arch: InstanceArch = InstanceArch()) -> keras.Model:
    """The Keras network: RGB in [0, 1] → [box (B,g,g,4), cls logits (B,g,g,nc), coef (B,g,g,nm), protos]."""
    if arch.size % 16:
        raise ValueError(f"input size must be a multiple of 16, got {arch.size}")
    w, m = arch.width, arch.bn_momentum
    inputs = keras.Input((arch.size, arch.size, 3), name="image")
    s2 = _cbr(inputs, _ch(16, w), 3, 2, "stem", m)  # /2
    s4 = _dws(s2, _ch(24, w), 2, "down4", m)  # /4
    s4 = _ir(s4, _ch(24, w), 1, "b4", m)
    s8 = _ir(s4, _ch(40, w), 2, "down8", m)  # /8
    s8 = _ir(s8, _ch(40, w), 1, "b8a", m)
    s8 = _ir(s8, _ch(40, w), 1, "b8b", m)
    s16 = _ir(s8, _ch(80, w), 2, "down16", m)  # /16
    s16 = _ir(s16, _ch(80, w), 1, "b16a", m)
    s16 = _ir(s16, _ch(80, w), 1, "b16b", m)
    up = layers.UpSampling2D(2, interpolation="bilinear", name="neck_up")(s16)
    p8 = layers.Concatenate(name="neck_cat")([up, s8])
    p8 = _cbr(p8, _ch(64, w), 1, 1, "neck_pw", m)
    p8 = _dws(p8, _ch(64, w), 1, "neck_a", m)
    p8 = _dws(p8, _ch(64, w), 1, "neck_b", m)

    head = _dws(p8, _ch(64, w), 1, "head", m)
    box = layers.Conv2D(4, 1, name="box")(head)
    cls = layers.Conv2D(arch.num_classes, 1, name="cls",
                        bias_initializer=keras.initializers.Constant(-4.6))(head)  # prior 0.01
    coef = layers.Conv2D(arch.num_masks, 1, name="coef")(head)

    p = layers.UpSampling2D(2, interpolation="bilinear", name="proto_up4")(p8)
    p = layers.Concatenate(name="proto_cat4")([p, s4])
    p = _dws(p, _ch(48, w), 1, "proto4", m)
    p = layers.UpSampling2D(2, interpolation="bilinear", name="proto_up2")(p)
    p = layers.Concatenate(name="proto_cat2")([p, s2])
    p = _dws(p, _ch(32, w), 1, "proto2", m)
    protos = layers.Conv2D(arch.num_masks, 1, name="protos")(p)
    return keras.Model(inputs, [box, cls, coef, protos], name="edge_seg_instance")


def _grid_xy(grid: int) -> tf.Tensor:
    """(g*g, 2) cell indices (gx, gy), row-major like a reshape of (g, g)."""
    gy, gx = np.mgrid[0:grid, 0:grid]
    return tf.constant(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))


def decode_boxes(box_raw: tf.Tensor, grid: int) -> tf.Tensor:
    """(B, g, g, 4) raw → (B, g*g, 4) cx, cy, w, h in input pixels."""
    t = tf.sigmoid(tf.reshape(box_raw, [-1, grid * grid, 4]))
    centre = (_grid_xy(grid)[None] + 2.0 * t[..., :2] - 0.5) * STRIDE
    size = BOX_SCALE * STRIDE * t[..., 2:]
    return tf.concat([centre, size], axis=-1)


def decode_outputs(outputs, arch: InstanceArch) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw model outputs → (detections [B, 4+nc+nm, N], prototypes [B, mh, mw, nm]) in the YOLO-seg format."""
    box, cls, coef, protos = outputs
    g = arch.grid
    boxes = decode_boxes(box, g)
    scores = tf.sigmoid(tf.reshape(cls, [-1, g * g, arch.num_classes]))
    coefs = tf.reshape(coef, [-1, g * g, arch.num_masks])
    det = tf.concat([boxes, scores, coefs], axis=-1)
    return tf.transpose(det, [0, 2, 1]), protos


def _xyxy(b: tf.Tensor) -> tf.Tensor:
    return tf.concat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)


def giou_loss(pred: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """1 - GIoU of boxes (x0, y0, x1, y1), elementwise over the leading axes."""
    lt = tf.maximum(pred[..., :2], target[..., :2])
    rb = tf.minimum(pred[..., 2:], target[..., 2:])
    inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), axis=-1)
    area_p = tf.reduce_prod(tf.maximum(pred[..., 2:] - pred[..., :2], 0.0), axis=-1)
    area_t = tf.reduce_prod(tf.maximum(target[..., 2:] - target[..., :2], 0.0), axis=-1)
    union = area_p + area_t - inter + 1e-6
    enc = tf.reduce_prod(tf.maximum(tf.maximum(pred[..., 2:], target[..., 2:])
                                    - tf.minimum(pred[..., :2], target[..., :2]), 0.0), axis=-1) + 1e-6
    return 1.0 - (inter / union - (enc - union) / enc)


def focal_bce(logits: tf.Tensor, target: tf.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> tf.Tensor:
    p = tf.sigmoid(logits)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    pt = target * p + (1 - target) * (1 - p)
    at = target * alpha + (1 - target) * (1 - alpha)
    return at * (1 - pt) ** gamma * ce


def box_iou_aligned(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """IoU of boxes (x0, y0, x1, y1) pairwise along the leading axes."""
    lt = tf.maximum(a[..., :2], b[..., :2])
    rb = tf.minimum(a[..., 2:], b[..., 2:])
    inter = tf.reduce_prod(tf.maximum(rb - lt, 0.0), axis=-1)
    area_a = tf.reduce_prod(tf.maximum(a[..., 2:] - a[..., :2], 0.0), axis=-1)
    area_b = tf.reduce_prod(tf.maximum(b[..., 2:] - b[..., :2], 0.0), axis=-1)
    return inter / (area_a + area_b - inter + 1e-6)


def quality_focal(logits: tf.Tensor, target: tf.Tensor, gamma: float = 2.0) -> tf.Tensor:
    """BCE against a soft target in [0, 1], weighted by |target - p|^gamma."""
    p = tf.sigmoid(logits)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
    return tf.abs(target - p) ** gamma * ce


class InstanceLoss:
    """The training loss on a batch (see the module docstring); returns (total, parts dict).

    Targets (from ``converters.instance_train.targets``): ``cls`` (B, N) class id or -1 per cell;
    ``pos_cell`` / ``pos_inst`` (B, P) positive cell and its instance, ``pos_valid`` (B, P) 0/1;
    ``boxes`` (B, K, 4) x0, y0, x1, y1 input px; ``masks`` (B, K, mh*mw) uint8 0..255.
    """

    def __init__(self, arch: InstanceArch, box_weight: float = 2.0, mask_weight: float = 2.0):
        self.arch = arch
        self.box_weight = box_weight
        self.mask_weight = mask_weight
        ph = arch.proto
        ys, xs = np.mgrid[0:ph, 0:ph].astype(np.float32)
        # prototype pixel centres in input pixels
        self._px = tf.constant(((xs.ravel() + 0.5) * PROTO_STRIDE)[None, None])
        self._py = tf.constant(((ys.ravel() + 0.5) * PROTO_STRIDE)[None, None])

    def __call__(self, outputs, t: dict) -> tuple[tf.Tensor, dict]:
        arch = self.arch
        box_raw, cls_raw, coef_raw, protos = outputs
        g, nc, nm = arch.grid, arch.num_classes, arch.num_masks
        cls_logits = tf.reshape(cls_raw, [-1, g * g, nc])
        valid = tf.cast(t["pos_valid"], tf.float32)  # (B, P)
        n_pos = tf.maximum(tf.reduce_sum(valid), 1.0)
        cell = tf.cast(t["pos_cell"], tf.int32)
        inst = tf.cast(t["pos_inst"], tf.int32)
        pred = _xyxy(tf.gather(decode_boxes(box_raw, g), cell, batch_dims=1))  # (B, P, 4)
        gt_box = tf.gather(tf.cast(t["boxes"], tf.float32), inst, batch_dims=1)
        l1 = tf.reduce_sum(tf.abs(pred - gt_box), axis=-1) / arch.size
        box_loss = tf.reduce_sum((giou_loss(pred, gt_box) + l1) * valid) / n_pos

        # IoU-aware class target (quality focal loss): a positive cell's score learns its box IoU,
        # so duplicates with loose boxes rank below the tight one.
        iou = tf.stop_gradient(box_iou_aligned(pred, gt_box)) * valid  # (B, P)
        quality = tf.einsum("bp,bpn->bn", iou, tf.one_hot(cell, g * g))  # padded rows carry 0
        onehot = tf.one_hot(tf.cast(t["cls"], tf.int32), nc)  # -1 → all zeros
        cls_loss = tf.reduce_sum(quality_focal(cls_logits, onehot * quality[..., None])) / n_pos

        coef = tf.gather(tf.reshape(coef_raw, [-1, g * g, nm]), cell, batch_dims=1)  # (B, P, nm)
        flat = tf.reshape(protos, [-1, arch.proto * arch.proto, nm])
        logits = tf.einsum("bpm,bhm->bph", coef, flat)
        target = tf.cast(tf.gather(t["masks"], inst, batch_dims=1), tf.float32) / 255.0
        inside = ((self._px >= gt_box[..., 0:1]) & (self._px <= gt_box[..., 2:3])
                  & (self._py >= gt_box[..., 1:2]) & (self._py <= gt_box[..., 3:4]))
        inside = tf.cast(inside, tf.float32)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)
        per_cell = tf.reduce_sum(bce * inside, axis=-1) / tf.maximum(tf.reduce_sum(inside, axis=-1), 1.0)
        mask_loss = tf.reduce_sum(per_cell * valid) / n_pos

        total = cls_loss + self.box_weight * box_loss + self.mask_weight * mask_loss
        return total, {"cls": cls_loss, "box": box_loss, "mask": mask_loss}


__all__ = ["BOX_SCALE", "PROTO_STRIDE", "STRIDE", "InstanceArch", "InstanceLoss", "build_instance_model",
           "box_iou_aligned", "decode_boxes", "decode_outputs", "focal_bce", "giou_loss", "quality_focal"]
