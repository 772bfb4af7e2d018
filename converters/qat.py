"""Float training, then quantisation-aware fine-tuning (tfmot, default 8-bit scheme).

The recipe follows the TF Model Garden one for segmentation: train a float model to
convergence, wrap it with ``tfmot.quantization.keras.quantize_model`` and fine-tune at a low
learning rate. The loss is sparse categorical cross-entropy on probabilities with the ignore
label (255) masked out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

from converters.data import IGNORE_LABEL  # noqa: E402

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    qat_epochs: int = 2
    lr: float = 3e-3
    qat_lr: float = 5e-5
    weight_decay: float = 1e-5
    verbose: int = 1  # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch


def masked_crossentropy(ignore_label: int = IGNORE_LABEL):
    """Sparse categorical cross-entropy on probabilities, averaged over non-ignored pixels."""

    def loss(y_true, y_pred):
        labels = tf.reshape(tf.cast(y_true, tf.int32), tf.shape(y_pred)[:-1])
        valid = tf.not_equal(labels, ignore_label)
        labels = tf.where(valid, labels, tf.zeros_like(labels))
        ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        weights = tf.cast(valid, ce.dtype)
        return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

    loss.__name__ = "masked_crossentropy"
    return loss


class MaskedMeanIoU(keras.metrics.MeanIoU):
    """Mean IoU over argmax predictions, skipping ignore-label pixels."""

    def __init__(self, num_classes: int, name: str = "miou", **kwargs):
        super().__init__(num_classes=num_classes, name=name, ignore_class=IGNORE_LABEL,
                         sparse_y_true=True, sparse_y_pred=False, **kwargs)


def _compile(model: keras.Model, lr, num_classes: int, weight_decay: float) -> None:
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    model.compile(optimizer=opt, loss=masked_crossentropy(), metrics=[MaskedMeanIoU(num_classes)])


def train_float(model: keras.Model, train: tf.data.Dataset, val: tf.data.Dataset | None,
                config: TrainConfig, steps_per_epoch: int | None = None) -> keras.Model:
    """Train the float model in place with AdamW and a cosine learning-rate decay; returns it."""
    steps = steps_per_epoch or int(train.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.lr * 0.1, decay_steps=max(1, steps * config.epochs - steps // 2),
        warmup_target=config.lr, warmup_steps=max(1, steps // 2), alpha=0.02)
    _compile(model, schedule, model.output_shape[-1], config.weight_decay)
    model.fit(train, validation_data=val, epochs=config.epochs, verbose=config.verbose)
    return model


def quantize(model: keras.Model) -> keras.Model:
    """Wrap a trained float model for quantisation-aware training (fake-quant on weights and activations)."""
    return tfmot.quantization.keras.quantize_model(model)


def train_qat(qat_model: keras.Model, train: tf.data.Dataset, val: tf.data.Dataset | None,
              config: TrainConfig) -> keras.Model:
    """Fine-tune a ``quantize``d model at a low constant learning rate; returns it."""
    _compile(qat_model, config.qat_lr, qat_model.output_shape[-1], 0.0)
    if config.qat_epochs > 0:
        qat_model.fit(train, validation_data=val, epochs=config.qat_epochs, verbose=config.verbose)
    pin_input_range(qat_model)
    return qat_model


def pin_input_range(qat_model: keras.Model, low: float = 0.0, high: float = 1.0) -> None:
    """Set the input fake-quant range to exactly [low, high] (the real range of ``pixel / 255``).

    The input ``QuantizeLayer`` learns its range from the training batches: on data without
    fully dark and fully bright pixels it lands inside [0, 1], and before any QAT step it is
    [0, 0] (the converter then emits an input scale near 1e-9). Pinning it makes the exported
    uint8 input exactly the pixel value (scale 1/255, zero point 0) whatever the data.
    """
    layer = next((lyr for lyr in qat_model.layers if type(lyr).__name__ == "QuantizeLayer"), None)
    if layer is None:
        raise ValueError("not a quantisation-aware model: no QuantizeLayer at its input")
    learned = {}
    for var in layer.weights:
        short = var.name.split("/")[-1]
        learned[short.split(":")[0]] = float(tf.reduce_mean(var))
        if short.startswith(f"{layer.name}_min"):
            var.assign(tf.fill(tf.shape(var), low))
        elif short.startswith(f"{layer.name}_max"):
            var.assign(tf.fill(tf.shape(var), high))
    log.info("input fake-quant range learned [%.5f, %.5f]; pinned to [%g, %g]",
             learned.get(f"{layer.name}_min", float("nan")), learned.get(f"{layer.name}_max", float("nan")),
             low, high)
