"""Workstation side: train, quantise and export models for edge_seg (extra ``convert``).

tfmot does not support Keras 3, so every module here runs TensorFlow with the legacy
``tf_keras`` (``TF_USE_LEGACY_KERAS=1``, set before TensorFlow is imported).

Modules (one per stage or target; ``edge-seg convert`` in ``cli`` drives them through ``workflow``):

* ``formats``: datasets users bring (images/+masks/, Pascal VOC, Cityscapes labelIds + mapping, COCO)
* ``data``: in-memory arrays -> ``tf.data`` with augmentation (flip, scale-crop, colour jitter)
* ``losses``: class weights, weighted cross-entropy, focal, Dice
* ``architectures``: ``unet`` and ``lraspp`` (atrous encoder + LR-ASPP head), width multiplier
* ``qat``: float training, tfmot QAT (custom ``QuantizeConfig`` for ``Multiply``), ``tf.distribute``
* ``tflite``: float32 / float16 / dynamic-range / full-int8 (PTQ or QAT) export, optional fused argmax
* ``onnx``: tf2onnx export (float, and QAT as Q/DQ); ``tensorrt``: Q/DQ rewrite + TensorRT rule check
* ``edgetpu``: Edge TPU linter and ``edgetpu_compiler`` wrapper
* ``parity``: the parity report (per-class IoU, sizes, latency, confusion PNGs, QuantizationDebugger)
* ``default_model``: the recipe of the bundled default model
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
