"""Float training, then quantisation-aware fine-tuning (tfmot, default 8-bit scheme).

The recipe follows the TF Model Garden one for segmentation: train a float model to
convergence, wrap it with ``tfmot.quantization.keras.quantize_model`` and fine-tune at a low
learning rate. The loss is sparse categorical cross-entropy on probabilities with the ignore
label (255) masked out, or any loss from ``converters.losses`` (focal, Dice, class weights).

Custom quantisation: tfmot's default scheme has no ``QuantizeConfig`` for ``Multiply`` (the
LR-ASPP attention gate). ``OutputQuantizeConfig`` quantises only its output (8-bit, asymmetric,
moving-average range: the scheme tfmot uses for ``Add``), which is what the TFLite int8 ``MUL``
kernel needs; ``quantize`` annotates ``Multiply`` layers with it and everything else with the
default, and applies tfmot's scheme with one transform fixed (Conv + ReLU kept its weights in
float; see ``quantize``).

Weight scales: per tensor or per output channel (``quantize(per_channel=...)``). The bundled
model is per-tensor: on the synthetic set its QAT int8 mIoU stays within 0.02 points of float
(0.8576 vs 0.8578), as the per-channel build did, and its int8 file drops the per-channel scales
and int64 zero points, 217,752 -> 141,024 bytes (0.29 x float; see ``converters.default_model``).
LiteRT/XNNPACK and TensorRT's Q/DQ path (``converters.tensorrt.weight_scale``) take either
granularity, so the choice is about file size, not compatibility.

Distribution (``make_strategy``): ``default`` (one device), ``mirrored`` (all GPUs of one host,
synchronous; on a host without GPUs, all logical CPU devices), ``multiworker``
(``MultiWorkerMirroredStrategy`` across hosts; each host sets ``TF_CONFIG``). Build and compile
the model inside ``strategy.scope()``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

from converters import losses  # noqa: E402
from converters.data import IGNORE_LABEL  # noqa: E402
from edge_seg.errors import InputError, ModelError  # noqa: E402

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    qat_epochs: int = 2
    lr: float = 3e-3
    qat_lr: float = 5e-5
    weight_decay: float = 1e-5
    verbose: int = 1  # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch
    loss: str = "ce"  # one of losses.LOSSES
    class_weights: tuple[float, ...] | None = None  # per-class weights for ce / focal
    focal_gamma: float = 2.0


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


def _loss(config: "TrainConfig | None"):
    if config is None:
        return masked_crossentropy()
    return losses.make_loss(config.loss, config.class_weights, config.focal_gamma)


def _compile(model: keras.Model, lr, num_classes: int, weight_decay: float,
             config: "TrainConfig | None" = None) -> None:
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    model.compile(optimizer=opt, loss=_loss(config), metrics=[MaskedMeanIoU(num_classes)])


def train_float(model: keras.Model, train: tf.data.Dataset, val: tf.data.Dataset | None,
                config: TrainConfig, steps_per_epoch: int | None = None) -> keras.Model:
    """Train the float model in place with AdamW and a cosine learning-rate decay; returns it."""
    steps = steps_per_epoch or int(train.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.lr * 0.1, decay_steps=max(1, steps * config.epochs - steps // 2),
        warmup_target=config.lr, warmup_steps=max(1, steps // 2), alpha=0.02)
    _compile(model, schedule, model.output_shape[-1], config.weight_decay, config)
    model.fit(train, validation_data=val, epochs=config.epochs, verbose=config.verbose)
    return model


class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantise a layer's output only (8-bit asymmetric, moving-average range); no weights.

    Used for ``Multiply``, which tfmot's default registry does not cover.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


def _scheme(per_channel: bool):
    """tfmot's default 8-bit scheme with its Conv/Dense + ReLU transform fixed (see ``quantize``)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation
    from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_layout_transform as layout,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_scheme,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_transforms as transforms,
    )

    def fixed(base):
        class Fixed(base):
            """``Conv2D|DepthwiseConv2D|Dense`` + ReLU: keep the weight quantisation, drop only the output one."""

            def replacement(self, match_layer):
                producer = match_layer.input_layers[0]
                if producer.layer["class_name"] == "Add":
                    return super().replacement(match_layer)
                if transforms._has_custom_quantize_config(producer):
                    return match_layer
                producer.layer["config"]["activation"] = quantize_utils.serialize_activation(
                    quantize_aware_activation.NoOpActivation(), use_legacy_format=True)
                return match_layer

            def custom_objects(self):
                return {**super().custom_objects(), "NoOpActivation": quantize_aware_activation.NoOpActivation}

        Fixed.__name__ = base.__name__
        return Fixed

    fixes = {transforms.LayerReLUQuantize: fixed(transforms.LayerReLUQuantize),
             transforms.LayerReluActivationQuantize: fixed(transforms.LayerReluActivationQuantize)}

    class LayoutTransform(layout.Default8BitQuantizeLayoutTransform):
        def apply(self, model, layer_quantize_map):
            from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
                model_transformer,
            )

            # tfmot 0.8.1's Default8BitQuantizeLayoutTransform.apply list, in its order
            stock = [transforms.InputLayerQuantize(), transforms.SeparableConv1DQuantize(),
                     transforms.SeparableConvQuantize(), transforms.Conv2DReshapeBatchNormReLUQuantize(),
                     transforms.Conv2DReshapeBatchNormActivationQuantize(), transforms.Conv2DBatchNormReLUQuantize(),
                     transforms.Conv2DBatchNormActivationQuantize(), transforms.Conv2DReshapeBatchNormQuantize(),
                     transforms.Conv2DBatchNormQuantize(), transforms.ConcatTransform6Inputs(),
                     transforms.ConcatTransform5Inputs(), transforms.ConcatTransform4Inputs(),
                     transforms.ConcatTransform3Inputs(), transforms.ConcatTransform(),
                     transforms.DenseBatchNormQuantize(), transforms.DenseBatchNormReLUQuantize(),
                     transforms.DenseBatchNormActivationQuantize(), transforms.LayerReLUQuantize(),
                     transforms.LayerReluActivationQuantize()]
            steps = [fixes.get(type(t), type(t))() for t in stock]
            return model_transformer.ModelTransformer(
                model, steps, set(layer_quantize_map.keys()), layer_quantize_map).transform()

    class Scheme(default_8bit_quantize_scheme.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return LayoutTransform()

    return Scheme(disable_per_axis=not per_channel)


def quantize(model: keras.Model, per_channel: bool = True) -> keras.Model:
    """Wrap a trained float model for quantisation-aware training (fake-quant on weights and activations).

    ``Multiply`` layers get ``OutputQuantizeConfig``; the rest tfmot's default 8-bit scheme, with
    one fix: its ``LayerReLUQuantize`` transform gives a ``Conv2D``/``DepthwiseConv2D``/``Dense``
    followed directly by a ``ReLU`` layer a ``NoOpQuantizeConfig`` (meant to keep a fake-quant off
    the conv output), which also drops the *weight* fake-quant (tensorflow/model-optimization#523).
    Those convs then train in float and the TFLite converter quantises their weights itself, per
    channel whatever ``_experimental_disable_per_channel`` says. Only networks without BatchNorm
    between conv and ReLU hit it, i.e. the BatchNorm-folded ones that per-tensor QAT uses
    (``architectures.fold_batchnorm``); the fixed transform only swaps the conv's activation for
    ``NoOpActivation``, as tfmot's own Conv + BatchNorm + ReLU transform does.

    ``per_channel=False`` quantises each weight tensor with one scale instead of one per output
    channel: the int8 file loses the per-channel scales and int64 zero points (for the bundled
    MobileNet-style network about 65 KB, 30 % of the file). Fold BatchNorm first
    (``architectures.fold_batchnorm``): tfmot fake-quantises the kernel *before* BatchNorm and the
    converter's folding rescales each channel, moving the weights off the per-tensor grid. The
    bundled model is per-tensor (see ``converters.default_model``).
    """
    q = tfmot.quantization.keras

    def annotate(layer):
        config = OutputQuantizeConfig() if isinstance(layer, keras.layers.Multiply) else None
        return q.quantize_annotate_layer(layer, quantize_config=config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with q.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig}):
        return q.quantize_apply(annotated, scheme=_scheme(per_channel))


def custom_objects() -> dict:
    """What ``keras.models.load_model`` needs to read back a saved QAT model."""
    return {"OutputQuantizeConfig": OutputQuantizeConfig}


def make_strategy(kind: str = "default") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy by name: ``default``, ``mirrored`` or ``multiworker``."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":  # every GPU of this host; without GPUs every logical CPU device
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise InputError("--strategy multiworker needs TF_CONFIG on every host, e.g. "
                             '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}}')
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise InputError(f"TF_CONFIG is not valid JSON: {err}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise InputError(f"unknown strategy {kind!r}: expected default, mirrored or multiworker")


def load_keras_model(path: str | Path) -> keras.Model:
    """A float or QAT Keras model the user brings: ``.keras`` / ``.h5`` file or a Keras SavedModel folder.

    The model must be a tf_keras functional or sequential model with one image input and
    per-class probabilities (softmax) out. A SavedModel written without Keras (a bare
    ``tf.Module``) has no layers to quantise and is refused with that reason.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model not found: {path}")
    if path.is_dir() and not (path / "keras_metadata.pb").is_file() and not (path / "saved_model.pb").is_file():
        raise InputError(f"{path} is not a SavedModel folder (no saved_model.pb)")
    if path.is_dir() and not (path / "keras_metadata.pb").is_file():
        raise InputError(f"{path} is a SavedModel without Keras metadata: QAT needs the Keras layers; "
                         "save it with tf_keras (model.save(path)) or pass a .keras/.h5 file")
    try:
        with tfmot.quantization.keras.quantize_scope(custom_objects()):
            model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as err:
        raise ModelError(f"cannot load Keras model {path.name}: {str(err).splitlines()[0]}") from None
    if len(model.inputs) != 1 or len(model.input_shape) != 4 or model.input_shape[-1] != 3:
        raise ModelError(f"{path.name}: expected one (batch, height, width, 3) image input, got {model.input_shape}")
    return model


def is_quantized(model: keras.Model) -> bool:
    """True for a model already wrapped by ``quantize`` (it starts with a ``QuantizeLayer``)."""
    return any(type(layer).__name__ == "QuantizeLayer" for layer in model.layers)


def train_qat(qat_model: keras.Model, train: tf.data.Dataset, val: tf.data.Dataset | None,
              config: TrainConfig) -> keras.Model:
    """Fine-tune a ``quantize``d model at a low constant learning rate; returns it."""
    _compile(qat_model, config.qat_lr, qat_model.output_shape[-1], 0.0, config)
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
