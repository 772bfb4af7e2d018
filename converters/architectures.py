"""Small QAT-friendly segmentation networks, selected by ``ArchConfig.arch``.

* ``unet``: MobileNetV2-style inverted-residual encoder (output stride 16) + U-Net decoder
  (bilinear up, skip concatenation, depthwise-separable convolutions) at /2, then 2x up.
* ``lraspp``: the same encoder with its last stage atrous (stride 1, dilation 2: output stride
  8) and an LR-ASPP head (MobileNetV3 paper): a 1x1 conv branch gated by a sigmoid of the
  globally pooled features, 2x up, plus a 1x1 class projection of the /4 features; 4x up.

Only layers tfmot quantises and the TFLite int8 kernels (and the EdgeTPU) support:
Conv2D, DepthwiseConv2D (also dilated), BatchNormalization (folded), ReLU(6), Add,
Concatenate, GlobalAveragePooling2D, sigmoid, UpSampling2D and a final Softmax. ``Multiply``
(the LR-ASPP gate) needs the custom ``qat.OutputQuantizeConfig``. Inputs are RGB in [0, 1]
(``pixel / 255``); the output is per-class probabilities at input resolution. Fusing the argmax
(uint8 class map out) happens at export (``tflite.export``'s ``fuse_argmax``), not here, so the
network trains and quantises with its softmax.
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
    arch: str = "unet"  # one of ARCHITECTURES
    bn_momentum: float = 0.99  # BatchNorm moving-average momentum; ~0.9 for very short (test) runs
    batchnorm: bool = True  # False: the same network with every BatchNorm folded into its conv (bias on)


# (channels, blocks, first stride) per encoder stage; the stem already halves the size
_STAGES = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (64, 3, 2))
_DECODER = (32, 24, 16)  # channels after each up step (/8, /4, /2)
ARCHITECTURES = ("unet", "lraspp")


def _ch(c: float, alpha: float) -> int:
    return max(8, int(c * alpha + 4) // 8 * 8)


_BN = {"momentum": 0.99, "on": True}  # set by build_model for the layers it creates


def _bn(x, name: str):
    """BatchNorm named ``<conv name>_bn`` (``fold_batchnorm`` relies on it), or nothing in a folded model."""
    return layers.BatchNormalization(momentum=_BN["momentum"], name=f"{name}_bn")(x) if _BN["on"] else x


def _bn_relu(x, name: str):
    return layers.ReLU(6.0, name=f"{name}_relu")(_bn(x, name))


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=not _BN["on"], name=name)(x)
    return _bn_relu(x, name)


def _dw_bn_relu(x, stride: int, name: str, dilation: int = 1):
    x = layers.DepthwiseConv2D(3, strides=stride, dilation_rate=dilation, padding="same", use_bias=not _BN["on"],
                               name=name)(x)
    return _bn_relu(x, name)


def _inverted_residual(x, filters: int, stride: int, expansion: int, name: str, dilation: int = 1):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project, residual if shapes match."""
    in_ch = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn_relu(y, in_ch * expansion, 1, 1, f"{name}_expand")
    y = _dw_bn_relu(y, stride, f"{name}_dw", dilation)
    y = layers.Conv2D(filters, 1, use_bias=not _BN["on"], name=f"{name}_project")(y)
    y = _bn(y, f"{name}_project")
    if stride == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _up_block(x, skip, filters: int, name: str):
    """Bilinear 2x up, concatenate the skip, depthwise-separable conv."""
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _dw_bn_relu(x, 1, f"{name}_dw")
    return _conv_bn_relu(x, filters, 1, 1, f"{name}_pw")


def _check(config: ArchConfig) -> None:
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if config.width % 16 or config.height % 16:
        raise ValueError(f"input size must be a multiple of 16, got {config.width}x{config.height}")
    if config.num_classes < 2:
        raise ValueError(f"a segmentation network needs at least 2 classes, got {config.num_classes}")


def _encoder(inputs, config: ArchConfig, atrous_last: bool):
    """Stem + inverted-residual stages; returns (features, [skips at /2, /4, /8])."""
    a = config.alpha
    x = _conv_bn_relu(inputs, _ch(16, a), 3, 2, "stem")  # /2
    skips = []
    for s, (channels, blocks, stride) in enumerate(_STAGES):
        dilation = 1
        if stride == 2:
            skips.append(x)
            if atrous_last and s == len(_STAGES) - 1:
                stride, dilation = 1, 2  # keep /8, widen the receptive field instead
        for b in range(blocks):
            expansion = 1 if s == 0 else config.expansion
            x = _inverted_residual(x, _ch(channels, a), stride if b == 0 else 1, expansion, f"enc{s}_{b}",
                                   dilation)
    return x, skips


def _unet(inputs, config: ArchConfig):
    x, skips = _encoder(inputs, config, atrous_last=False)  # x is /16; skips are /2, /4, /8
    for i, (skip, channels) in enumerate(zip(reversed(skips), _DECODER)):
        x = _up_block(x, skip, _ch(channels, config.alpha), f"dec{i}")
    x = layers.Conv2D(config.num_classes, 1, name="logits")(x)  # /2
    return layers.UpSampling2D(2, interpolation="bilinear", name="logits_up")(x)


def _lraspp(inputs, config: ArchConfig):
    x, skips = _encoder(inputs, config, atrous_last=True)  # x is /8 (atrous); skips /2, /4, /8
    ch = _ch(64, config.alpha)
    branch = _conv_bn_relu(x, ch, 1, 1, "aspp_conv")
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    gate = layers.Conv2D(ch, 1, name="aspp_gate")(gate)
    gate = layers.Activation("sigmoid", name="aspp_sigmoid")(gate)
    gate = layers.UpSampling2D((x.shape[1], x.shape[2]), interpolation="nearest", name="aspp_gate_up")(gate)
    y = layers.Multiply(name="aspp_mul")([branch, gate])
    y = layers.UpSampling2D(2, interpolation="bilinear", name="aspp_up")(y)  # /4
    y = layers.Conv2D(config.num_classes, 1, name="aspp_logits")(y)
    low = layers.Conv2D(config.num_classes, 1, name="low_logits")(skips[1])  # /4
    y = layers.Add(name="logits")([y, low])
    return layers.UpSampling2D(4, interpolation="bilinear", name="logits_up")(y)


def build_model(config: ArchConfig = ArchConfig()) -> keras.Model:
    """The float Keras model: (1, H, W, 3) RGB in [0, 1] -> (1, H, W, C) probabilities.

    H and W must be multiples of 16 (four stride-2 steps); ``config.arch`` picks the network.
    """
    _check(config)
    _BN["momentum"], _BN["on"] = config.bn_momentum, config.batchnorm
    inputs = keras.Input((config.height, config.width, 3), name="image")
    x = _unet(inputs, config) if config.arch == "unet" else _lraspp(inputs, config)
    outputs = layers.Softmax(name=OUTPUT_NAME)(x)
    name = "edge_seg_unet" if config.arch == "unet" else "edge_seg_lraspp"
    return keras.Model(inputs, outputs, name=name)


def fold_batchnorm(model: keras.Model, config: ArchConfig) -> keras.Model:
    """The same network without BatchNorm: each ``<conv>_bn`` folded into ``<conv>`` (inference statistics).

    For quantisation-aware training with one weight scale per tensor: tfmot quantises the conv
    kernel *before* BatchNorm, and the converter folds BatchNorm afterwards, multiplying each
    output channel by its own factor, which moves the weights off a per-tensor grid (a per-channel
    grid survives). Folding first makes the trained grid the exported one.
    """
    from dataclasses import replace

    import numpy as np

    folded = build_model(replace(config, batchnorm=False))
    names = {layer.name for layer in model.layers}
    for layer in folded.layers:
        if layer.name not in names or not layer.weights:
            continue
        source = model.get_layer(layer.name)
        weights = source.get_weights()
        if f"{layer.name}_bn" not in names:
            layer.set_weights(weights)
            continue
        bn = model.get_layer(f"{layer.name}_bn")
        gamma, beta, mean, var = bn.get_weights()
        scale = gamma / np.sqrt(var + bn.epsilon)
        kernel = weights[0]
        if isinstance(layer, layers.DepthwiseConv2D):  # (kh, kw, channels, 1)
            kernel = kernel * scale.reshape(1, 1, -1, 1)
        else:
            kernel = kernel * scale
        bias = beta - mean * scale + (weights[1] * scale if len(weights) > 1 else 0.0)
        layer.set_weights([kernel, bias])
    return folded
