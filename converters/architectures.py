"""A small QAT-friendly segmentation network: MobileNetV2-style encoder + U-Net decoder.

Only layers tfmot's default 8-bit scheme quantises and the TFLite int8 kernels support:
Conv2D, DepthwiseConv2D, BatchNormalization (folded), ReLU(6), Add, Concatenate,
UpSampling2D(bilinear) and a final Softmax. Inputs are RGB in [0, 1] (``pixel / 255``);
the output is per-class probabilities at input resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class ArchConfig:
    """Network shape: input size, width multiplier, number of classes."""

    width: int = 256
    height: int = 256
    num_classes: int = 4
    alpha: float = 1.0  # width multiplier on every layer's channels
    expansion: int = 4  # inverted-residual expansion factor


# (channels, blocks, first stride) per encoder stage; the stem already halves the size
_STAGES = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (64, 3, 2))
_DECODER = (32, 24, 16)  # channels after each up step (/8, /4, /2)


def _ch(c: float, alpha: float) -> int:
    return max(8, int(c * alpha + 4) // 8 * 8)


def _bn_relu(x, name: str):
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    return _bn_relu(x, name)


def _dw_bn_relu(x, stride: int, name: str):
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=name)(x)
    return _bn_relu(x, name)


def _inverted_residual(x, filters: int, stride: int, expansion: int, name: str):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project, residual if shapes match."""
    in_ch = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn_relu(y, in_ch * expansion, 1, 1, f"{name}_expand")
    y = _dw_bn_relu(y, stride, f"{name}_dw")
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = layers.BatchNormalization(name=f"{name}_project_bn")(y)
    if stride == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _up_block(x, skip, filters: int, name: str):
    """Bilinear 2x up, concatenate the skip, depthwise-separable conv."""
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _dw_bn_relu(x, 1, f"{name}_dw")
    return _conv_bn_relu(x, filters, 1, 1, f"{name}_pw")


def build_model(config: ArchConfig = ArchConfig()) -> keras.Model:
    """The float Keras model: (1, H, W, 3) RGB in [0, 1] -> (1, H, W, C) probabilities.

    H and W must be multiples of 16 (four stride-2 steps).
    """
    if config.width % 16 or config.height % 16:
        raise ValueError(f"input size must be a multiple of 16, got {config.width}x{config.height}")
    a = config.alpha
    inputs = keras.Input((config.height, config.width, 3), name="image")
    x = _conv_bn_relu(inputs, _ch(16, a), 3, 2, "stem")  # /2
    skips = []
    for s, (channels, blocks, stride) in enumerate(_STAGES):
        if stride == 2:
            skips.append(x)
        for b in range(blocks):
            expansion = 1 if s == 0 else config.expansion
            x = _inverted_residual(x, _ch(channels, a), stride if b == 0 else 1, expansion, f"enc{s}_{b}")
    # x is /16; skips are /2, /4, /8
    for i, (skip, channels) in enumerate(zip(reversed(skips), _DECODER)):
        x = _up_block(x, skip, _ch(channels, a), f"dec{i}")
    x = layers.Conv2D(config.num_classes, 1, name="logits")(x)  # /2
    x = layers.UpSampling2D(2, interpolation="bilinear", name="logits_up")(x)
    outputs = layers.Softmax(name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="edge_seg_unet")
