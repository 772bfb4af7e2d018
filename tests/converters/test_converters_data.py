"""converters data formats (folder, VOC, Cityscapes, COCO), augmentation, class weights and losses."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import converters  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

pytest.importorskip("tensorflow")
pytest.importorskip("pycocotools")

from pycocotools import mask as coco_mask  # noqa: E402

from converters import data, formats, losses  # noqa: E402
from edge_seg.errors import InputError  # noqa: E402
from edge_seg.maskio import palette_png  # noqa: E402


def _write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def voc_root(tmp_path):
    """A two-image VOC layout: palette masks with a person (15), a car (7) and 255 object borders."""
    root = tmp_path / "VOC"
    for stem, cls in (("2007_000001", 15), ("2007_000002", 7)):
        _write_rgb(root / "JPEGImages" / f"{stem}.jpg", np.full((40, 60, 3), 90, np.uint8))
        ids = np.zeros((40, 60), np.uint8)
        ids[10:30, 20:40] = cls
        ids[9, 19:41] = ids[30, 19:41] = 255  # the VOC border around the object
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        palette = [(0, 0, 0)] + [(i * 12 % 256, i * 40 % 256, i * 90 % 256) for i in range(1, 256)]
        (root / "SegmentationClass" / f"{stem}.png").write_bytes(palette_png(ids, palette))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")
    return root


def test_voc_layout_loads_palette_indices_as_ids_and_keeps_the_ignore_border(voc_root):
    train = formats.open_dataset(voc_root)
    assert train.format == "voc" and len(train) == 1
    assert train.classes == formats.VOC_CLASSES and len(train.classes) == 21
    rgb, mask = train.read(0)
    assert rgb.shape == (40, 60, 3) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 15, 255}
    assert mask[20, 30] == 15 and mask[9, 30] == formats.IGNORE_LABEL
    val = formats.read_voc(voc_root, "val")
    assert set(np.unique(val.read(0)[1]).tolist()) == {0, 7, 255}


def test_voc_layout_without_the_split_file_says_which_file_is_missing(voc_root):
    with pytest.raises(InputError, match="ImageSets/Segmentation/test.txt"):
        formats.read_voc(voc_root, "test")


@pytest.fixture
def coco_files(tmp_path):
    """Two images; categories 3 'car' and 7 'dog' (not contiguous); a dog on a car; a crowd region."""
    images = tmp_path / "images"
    for name in ("a.jpg", "b.jpg"):
        _write_rgb(images / name, np.full((50, 80, 3), 120, np.uint8))
    crowd = np.zeros((50, 80), np.uint8, order="F")
    crowd[40:48, 0:10] = 1
    rle = coco_mask.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode("ascii")
    spec = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 50},
                   {"id": 2, "file_name": "b.jpg", "width": 80, "height": 50}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 1200.0, "bbox": [10, 10, 60, 20],
             "segmentation": [[10, 10, 70, 10, 70, 30, 10, 30]]},
            {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": 100.0, "bbox": [30, 15, 10, 10],
             "segmentation": [[30, 15, 40, 15, 40, 25, 30, 25]]},
            {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": 80.0, "bbox": [0, 40, 10, 8],
             "segmentation": rle},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(spec))
    return path


def test_coco_instances_become_semantic_ids_with_small_objects_on_top_and_crowd_ignored(coco_files):
    ds = formats.open_dataset(coco_files)  # images/ beside the JSON by default
    assert ds.format == "coco" and len(ds) == 2
    assert ds.classes == ("background", "car", "dog")  # category ids 3, 7 -> 1, 2
    _, mask = ds.read(0)
    assert mask.shape == (50, 80)
    assert mask[12, 15] == 1  # car
    assert mask[20, 35] == 2  # the smaller dog is painted over the car
    assert mask[44, 5] == formats.IGNORE_LABEL  # crowd
    assert mask[2, 2] == 0
    assert set(np.unique(ds.read(1)[1]).tolist()) == {0}  # an image without annotations is background


def test_coco_missing_image_is_named(coco_files):
    (coco_files.parent / "images" / "b.jpg").unlink()
    with pytest.raises(InputError, match="b.jpg"):
        formats.read_coco(coco_files, coco_files.parent / "images")


def test_cityscapes_label_ids_are_mapped_and_unmapped_ids_ignored(tmp_path):
    root = tmp_path / "cs"
    stem = "aachen_000000_000019"
    _write_rgb(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", np.zeros((32, 64, 3), np.uint8))
    ids = np.zeros((32, 64), np.uint8)
    ids[:, :20] = 7  # road
    ids[:, 20:40] = 26  # car
    label = root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"
    label.parent.mkdir(parents=True)
    cv2.imwrite(str(label), ids)
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"classes": ["road", "car"], "label_ids": {"7": 0, "26": 1}}))
    ds = formats.open_dataset(root, mapping=mapping)
    assert ds.format == "cityscapes" and ds.classes == ("road", "car")
    _, mask = ds.read(0)
    assert mask[0, 0] == 0 and mask[0, 30] == 1 and mask[0, 50] == formats.IGNORE_LABEL
    with pytest.raises(InputError, match="mapping"):
        formats.open_dataset(root, fmt="cityscapes")


def test_folder_layout_reads_class_names_and_splits_reproducibly(tmp_path):
    root = tmp_path / "ds"
    (root / "masks").mkdir(parents=True)
    for i in range(10):
        _write_rgb(root / "images" / f"{i:02d}.png", np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i:02d}.png"), np.full((8, 8), i % 3, np.uint8))
    ds = formats.read_folder(root)
    assert ds.classes == ("class_0", "class_1", "class_2")  # from the largest id found
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    ds = formats.read_folder(root)
    assert ds.classes == ("sky", "road", "car")
    train, val = ds.split(0.2, seed=3)
    again_train, again_val = ds.split(0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert [s.image for s in val.samples] == [s.image for s in again_val.samples]
    assert not {s.image for s in train.samples} & {s.image for s in val.samples}


def test_scale_crop_pads_with_the_ignore_label_and_flips_keep_image_and_mask_aligned():
    import tensorflow as tf

    tf.random.set_seed(0)
    mask = np.tile(np.arange(16, dtype=np.int32) % 4, (16, 1))[..., None]
    image = np.repeat(mask.astype(np.float32) / 4.0, 3, axis=-1)  # the image encodes the mask
    shrink = data.augment_fn(data.Augment(hflip=False, vflip=False, scale=(0.5, 0.5)))
    img, msk = shrink(tf.constant(image), tf.constant(mask))
    assert img.shape == (16, 16, 3) and msk.shape == (16, 16, 1)
    padded = msk.numpy()[..., 0] == formats.IGNORE_LABEL
    assert padded.sum() == 16 * 16 - 8 * 8  # the 8x8 scaled pair sits inside ignore padding
    assert np.all(img.numpy()[padded] == 0.0)
    zoom = data.augment_fn(data.Augment(hflip=False, vflip=False, scale=(2.0, 2.0)))
    _, msk = zoom(tf.constant(image), tf.constant(mask))
    assert formats.IGNORE_LABEL not in np.unique(msk.numpy())
    flip = data.augment_fn(data.Augment(hflip=True, vflip=True))
    for _ in range(4):
        img, msk = flip(tf.constant(image), tf.constant(mask))
        assert np.array_equal(np.round(img.numpy()[..., 0] * 4).astype(np.int32), msk.numpy()[..., 0])
    jitter = data.augment_fn(data.Augment(hflip=False, vflip=False, jitter=1.0))
    img, msk = jitter(tf.constant(image), tf.constant(mask))
    assert 0.0 <= float(tf.reduce_min(img)) and float(tf.reduce_max(img)) <= 1.0
    assert np.array_equal(msk.numpy(), mask)


def test_class_weights_balance_rare_classes_and_skip_the_ignore_label():
    masks = np.array([0] * 80 + [1] * 15 + [2] * 5 + [255] * 50, np.uint8)
    w = losses.class_weights(masks, 3, "median")
    assert w[0] < w[1] < w[2]
    assert w[1] == pytest.approx(1.0)  # the median class
    assert np.allclose(losses.class_weights(masks, 3, "none"), 1.0)
    inv = losses.class_weights(masks, 3, "inverse")
    assert inv.mean() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(InputError, match="ignore"):
        losses.class_weights(np.full(10, 255, np.uint8), 3)


def test_losses_ignore_label_255_and_behave_at_the_extremes():
    labels = np.array([[[[0], [1]], [[255], [255]]]], np.int32)
    perfect = np.zeros((1, 2, 2, 2), np.float32)
    perfect[0, 0, 0, 0] = perfect[0, 0, 1, 1] = 1.0
    perfect[0, 1, :, 0] = 0.5  # ignored pixels: whatever the model says
    perfect[0, 1, :, 1] = 0.5
    for name in losses.LOSSES:
        assert float(losses.make_loss(name)(labels, perfect)) == pytest.approx(0.0, abs=1e-4), name
    unsure = np.full((1, 2, 2, 2), 0.5, np.float32)
    ce = float(losses.make_loss("ce")(labels, unsure))
    assert ce == pytest.approx(np.log(2), rel=1e-4)
    assert float(losses.make_loss("focal")(labels, unsure)) == pytest.approx(0.25 * np.log(2), rel=1e-4)
    weighted = float(losses.make_loss("ce", weights=[1.0, 3.0])(labels, unsure))
    assert weighted == pytest.approx(np.log(2), rel=1e-4)  # same per-pixel loss, weighted mean unchanged
    assert 0.0 < float(losses.make_loss("dice")(labels, unsure)) < 1.0
    with pytest.raises(InputError, match="unknown loss"):
        losses.make_loss("hinge")
