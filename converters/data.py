"""Training data: the ``images/`` + ``masks/`` folder layout as NumPy arrays or a ``tf.data`` pipeline.

A dataset folder holds ``images/<stem>.png`` (colour) and ``masks/<stem>.png`` (8-bit class ids,
255 = ignore), the layout ``edge_seg.scenes.write_dataset`` writes and ``edge_seg evaluate``
reads. Images go to the model as RGB float32 in [0, 1] (``pixel / 255``), resized (stretch,
bilinear) to the model size; masks are resized nearest-neighbour and batched as int32 (B, H, W, 1).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edge_seg.errors import InputError  # noqa: E402

IGNORE_LABEL = 255


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


def load_arrays(root: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read a dataset folder into memory: RGB uint8 (N, H, W, 3) and class ids uint8 (N, H, W).

    ``size`` is the model's (width, height); images are resized like the device does it
    (``cv2.INTER_LINEAR``, stretch), masks with ``cv2.INTER_NEAREST``.
    """
    pairs = list_pairs(root)
    width, height = size
    images = np.empty((len(pairs), height, width, 3), np.uint8)
    masks = np.empty((len(pairs), height, width), np.uint8)
    for i, (image_path, mask_path) in enumerate(pairs):
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if image is None or mask is None or mask.ndim != 2:
            raise InputError(f"cannot read {image_path.name} or its 1-channel mask")
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        images[i] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        masks[i] = mask
    return images, masks


def _flip(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Random horizontal and vertical flips, the same for image and mask."""
    both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    both = tf.image.random_flip_left_right(both)
    both = tf.image.random_flip_up_down(both)
    return both[..., :3], tf.cast(both[..., 3:], tf.int32)


def _finish(ds: tf.data.Dataset, n: int, batch_size: int, shuffle: bool, augment: bool,
            seed: int) -> tf.data.Dataset:
    if shuffle:
        ds = ds.shuffle(min(n, 4096), seed=seed, reshuffle_each_iteration=True)
    if augment:
        ds = ds.map(_flip, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _to_model(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.int32)[..., None]


def dataset_from_arrays(images: np.ndarray, masks: np.ndarray, batch_size: int = 16,
                        shuffle: bool = True, augment: bool = True, seed: int = 0) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` of (float32 [0, 1] RGB, int32 (H, W, 1) ids) from ``load_arrays``."""
    if len(images) != len(masks) or images.shape[:3] != masks.shape:
        raise InputError(f"{images.shape} images do not match {masks.shape} masks")
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).map(_to_model)
    return _finish(ds, len(images), batch_size, shuffle, augment, seed)


def dataset_from_dir(root: str | Path, size: tuple[int, int], batch_size: int = 16,
                     shuffle: bool = True, augment: bool = True, seed: int = 0,
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
