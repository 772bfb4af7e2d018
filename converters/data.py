"""Training data: the ``images/`` + ``masks/`` folder layout as NumPy arrays or a ``tf.data`` pipeline.

A dataset folder holds ``images/<stem>.png`` (colour) and ``masks/<stem>.png`` (8-bit class ids,
255 = ignore), the layout ``edge_seg.demo.scenes.write_dataset`` writes and ``edge_seg evaluate``
reads. Images go to the model as RGB float32 in [0, 1] (``pixel / 255``), resized (stretch,
bilinear) to the model size; masks are resized nearest-neighbour and batched as int32 (B, H, W, 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from converters import formats  # noqa: E402
from edge_seg.errors import InputError  # noqa: E402

IGNORE_LABEL = formats.IGNORE_LABEL


def list_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a dataset folder, sorted by name; raises ``InputError`` on a bad layout."""
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise InputError(f"{root} has no {sub}/ folder: a dataset needs images/ and masks/")
    images = sorted((root / "images").glob("*.png"))
    if not images:
        raise InputError(f"{root / 'images'} has no .png images")
    pairs = [(p, root / "masks" / p.name) for p in images]
    missing = [m.name for _, m in pairs if not m.is_file()]
    if missing:
        raise InputError(f"{len(missing)} image(s) have no mask, e.g. masks/{missing[0]}")
    return pairs


def load_arrays(root: "str | Path | formats.SegDataset", size: tuple[int, int],
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a dataset into memory: RGB uint8 (N, H, W, 3) and class ids uint8 (N, H, W).

    ``root`` is an ``images/`` + ``masks/`` folder or any ``formats.SegDataset`` (VOC,
    Cityscapes, COCO, ...). ``size`` is the model's (width, height); images are resized like the
    device does it (``cv2.INTER_LINEAR``, stretch), masks with ``cv2.INTER_NEAREST``.
    """
    dataset = root if isinstance(root, formats.SegDataset) else formats.read_folder(root, classes=("unnamed",))
    return formats.load_arrays(dataset, size, progress=progress)


@dataclass(frozen=True)
class Augment:
    """Training augmentation, applied the same way to image and mask (colour only to the image).

    ``scale`` is the (min, max) zoom of a random scale-crop: the pair is resized by a factor in
    the range and a window of the original size is cut at random; below 1 the border is padded
    (image black, mask ``IGNORE_LABEL``). ``jitter`` is the strength of a random brightness,
    contrast, saturation and hue change (0 = off).
    """

    hflip: bool = True
    vflip: bool = True
    scale: tuple[float, float] | None = None
    jitter: float = 0.0


def _flip(image: tf.Tensor, mask: tf.Tensor, hflip: bool = True, vflip: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """Random horizontal and/or vertical flips, the same for image and mask."""
    both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    if hflip:
        both = tf.image.random_flip_left_right(both)
    if vflip:
        both = tf.image.random_flip_up_down(both)
    return both[..., :3], tf.cast(both[..., 3:], tf.int32)


def _scale_crop(image: tf.Tensor, mask: tf.Tensor, low: float, high: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize by a random factor in [low, high], then pad (ignore) / crop back to the input size at random."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    factor = tf.random.uniform([], low, high)
    nh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float32) * factor), tf.int32))
    nw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float32) * factor), tf.int32))
    image = tf.image.resize(image, tf.stack([nh, nw]), method="bilinear")
    # the mask is shifted by -IGNORE_LABEL so that zero padding becomes IGNORE_LABEL after the shift back
    mask = tf.cast(tf.image.resize(mask, tf.stack([nh, nw]), method="nearest"), tf.float32) - IGNORE_LABEL
    ph, pw = tf.maximum(h, nh), tf.maximum(w, nw)
    oy = tf.random.uniform([], 0, ph - nh + 1, tf.int32)
    ox = tf.random.uniform([], 0, pw - nw + 1, tf.int32)
    both = tf.image.pad_to_bounding_box(tf.concat([image, mask], -1), oy, ox, ph, pw)
    both = tf.image.random_crop(both, tf.stack([h, w, 4]))
    return both[..., :3], tf.cast(tf.round(both[..., 3:]) + IGNORE_LABEL, tf.int32)


def _jitter(image: tf.Tensor, strength: float) -> tf.Tensor:
    image = tf.image.random_brightness(image, 0.25 * strength)
    image = tf.image.random_contrast(image, 1.0 - 0.5 * strength, 1.0 + 0.5 * strength)
    image = tf.image.random_saturation(image, 1.0 - 0.5 * strength, 1.0 + 0.5 * strength)
    image = tf.image.random_hue(image, min(0.5, 0.08 * strength))
    return tf.clip_by_value(image, 0.0, 1.0)


def augment_fn(config: Augment):
    """The per-example ``(image, mask) -> (image, mask)`` map for ``config`` (images float [0, 1])."""

    def apply(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if config.scale is not None:
            image, mask = _scale_crop(image, mask, *config.scale)
        if config.hflip or config.vflip:
            image, mask = _flip(image, mask, config.hflip, config.vflip)
        if config.jitter > 0:
            image = _jitter(image, config.jitter)
        return image, mask

    return apply


def _finish(ds: tf.data.Dataset, n: int, batch_size: int, shuffle: bool, augment: bool | Augment,
            seed: int) -> tf.data.Dataset:
    if shuffle:
        ds = ds.shuffle(min(n, 4096), seed=seed, reshuffle_each_iteration=True)
    if augment:
        config = augment if isinstance(augment, Augment) else Augment()
        ds = ds.map(augment_fn(config), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _to_model(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.int32)[..., None]


def dataset_from_arrays(images: np.ndarray, masks: np.ndarray, batch_size: int = 16,
                        shuffle: bool = True, augment: bool | Augment = True, seed: int = 0) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of (float32 [0, 1] RGB, int32 (H, W, 1) ids) from ``load_arrays``."""
    if len(images) != len(masks) or images.shape[:3] != masks.shape:
        raise InputError(f"{images.shape} images do not match {masks.shape} masks")
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).map(_to_model)
    return _finish(ds, len(images), batch_size, shuffle, augment, seed)


def dataset_from_dir(root: str | Path, size: tuple[int, int], batch_size: int = 16,
                     shuffle: bool = True, augment: bool | Augment = True, seed: int = 0,
                     cache: bool = True) -> tf.data.Dataset:
    """Stream a dataset folder with ``tf.io``: decode PNGs, resize to ``size`` (width, height), batch.

    Decoded, resized examples are cached in memory after the first pass when ``cache`` is set.
    """
    pairs = list_pairs(root)
    width, height = size

    def load(image_path: tf.Tensor, mask_path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)  # RGB
        mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
        image = tf.image.resize(image, (height, width), method="bilinear")
        mask = tf.image.resize(mask, (height, width), method="nearest")
        return tf.clip_by_value(image, 0.0, 255.0) / 255.0, tf.cast(mask, tf.int32)

    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p, _ in pairs], [str(m) for _, m in pairs]))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    return _finish(ds, len(pairs), batch_size, shuffle, augment, seed)


def representative_images(images: np.ndarray, count: int = 100, seed: int = 0):
    """A TFLite representative-dataset callable: ``count`` random images as float32 (1, H, W, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=min(count, len(images)), replace=False)

    def gen():
        for i in picks:
            yield [images[i][None].astype(np.float32) / 255.0]

    return gen
