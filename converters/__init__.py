"""Workstation side: train, quantise and export models for edge_seg (extra ``convert``).

tfmot does not support Keras 3, so every module here runs TensorFlow with the legacy
``tf_keras`` (``TF_USE_LEGACY_KERAS=1``, set before TensorFlow is imported).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
