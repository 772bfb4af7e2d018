"""Labelled data in the layouts users bring: a folder pair, Pascal VOC, Cityscapes, COCO instances.

Every reader returns a ``SegDataset``: class names and a list of samples, each an image path and
a function that gives its mask as uint8 class ids (``IGNORE_LABEL`` = 255 is not scored and not
trained on). Masks are read lazily, one at a time, so listing a large dataset is cheap.

Layouts:

* **folder**: ``images/<stem>.(png|jpg)`` + ``masks/<stem>.png`` (8-bit class ids or an indexed
  PNG whose indices are the ids); class names from ``classes.txt`` (one per line) if present.
* **voc**: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs: the index is the
  class, 255 marks object borders = ignore), ``ImageSets/Segmentation/<split>.txt``.
* **cityscapes**: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/*_gtFine_labelIds.png``; a JSON mapping file
  ``{"classes": [...], "label_ids": {"7": 0, "8": 1, ...}}`` sends label ids to training ids;
  every unmapped id becomes 255.
* **coco**: an instances JSON + its image folder; each image's instance polygons/RLEs are
  painted largest first (small objects stay on top), crowd regions become 255; class 0 is
  ``background`` and categories follow in id order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_seg.errors import InputError
from edge_seg.maskio import is_palette_png, read_palette_png

IGNORE_LABEL = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMATS = ("folder", "voc", "cityscapes", "coco")

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path and a function that reads its mask (uint8 ids, H x W)."""

    image: Path
    read_mask: Callable[[], np.ndarray]


@dataclass(frozen=True)
class SegDataset:
    """Class names and samples of one dataset (or one split of it)."""

    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    format: str = "folder"

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 image, uint8 mask) of one sample at its native size; checks they match."""
        sample = self.samples[index]
        bgr = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"cannot read image {sample.image}")
        mask = sample.read_mask()
        if mask.shape != bgr.shape[:2]:
            raise InputError(f"{sample.image.name} is {bgr.shape[1]}x{bgr.shape[0]} but its mask is "
                             f"{mask.shape[1]}x{mask.shape[0]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), mask

    def subset(self, indices: Sequence[int]) -> "SegDataset":
        return SegDataset(self.classes, tuple(self.samples[i] for i in indices), self.format)

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["SegDataset", "SegDataset"]:
        """A reproducible random (train, val) split; at least one sample in each when possible."""
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"validation fraction must be between 0 and 1, got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = min(max(1, round(len(self) * val_fraction)), max(len(self) - 1, 0))
        return self.subset(sorted(order[n_val:].tolist())), self.subset(sorted(order[:n_val].tolist()))


def read_id_mask(path: Path) -> np.ndarray:
    """Class ids of a mask PNG: an indexed PNG gives its indices, else it must be 1-channel 8-bit."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read mask {path}: {err.strerror}") from None
    if is_palette_png(data):
        return read_palette_png(data)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
        raise InputError(f"mask {path} must be an 8-bit 1-channel or indexed PNG of class ids")
    return mask


def _mask_reader(path: Path, lut: np.ndarray | None = None) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        mask = read_id_mask(path)
        return lut[mask] if lut is not None else mask
    return read


def _class_names(root: Path, given: Sequence[str] | None) -> tuple[str, ...] | None:
    if given:
        return tuple(given)
    listing = root / "classes.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if names:
            return tuple(names)
    return None


def read_folder(root: str | Path, classes: Sequence[str] | None = None) -> SegDataset:
    """The ``images/`` + ``masks/`` layout. Without ``classes`` or ``classes.txt`` the names are
    ``class_0..class_N`` where N is the largest id found in the masks (255 excluded)."""
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise InputError(f"{root} has no {sub}/ folder: a dataset needs images/ and masks/ "
                             "(PNG class ids named like the image, 255 = ignore)")
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{root / 'images'} has no images ({', '.join(IMAGE_SUFFIXES)})")
    samples = []
    for image in images:
        mask = root / "masks" / f"{image.stem}.png"
        if not mask.is_file():
            raise InputError(f"image {image.name} has no mask: expected masks/{mask.name}")
        samples.append(Sample(image, _mask_reader(mask)))
    names = _class_names(root, classes)
    if names is None:
        top = 0
        for sample in samples:
            ids = np.unique(sample.read_mask())
            ids = ids[ids != IGNORE_LABEL]
            top = max(top, int(ids.max()) if ids.size else 0)
        names = tuple(f"class_{i}" for i in range(top + 1))
    return SegDataset(names, tuple(samples), "folder")


def read_voc(root: str | Path, split: str = "train") -> SegDataset:
    """Pascal VOC segmentation: ids are the palette indices; 255 (the object borders) is ignored."""
    root = Path(root)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise InputError(f"{root} is not a VOC layout: {listing.relative_to(root)} is missing")
    stems = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    samples = []
    for stem in stems:
        image = root / "JPEGImages" / f"{stem}.jpg"
        mask = root / "SegmentationClass" / f"{stem}.png"
        if not image.is_file() or not mask.is_file():
            raise InputError(f"VOC sample {stem!r} listed in {listing.name} lacks JPEGImages/{stem}.jpg "
                             f"or SegmentationClass/{stem}.png")
        samples.append(Sample(image, _mask_reader(mask)))
    if not samples:
        raise InputError(f"{listing} lists no samples")
    return SegDataset(_class_names(root, None) or VOC_CLASSES, tuple(samples), "voc")


def read_label_mapping(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """(class names, 256-entry lookup table label id -> training id, 255 where unmapped)."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read label mapping {path}: {err}") from None
    classes, ids = spec.get("classes"), spec.get("label_ids")
    if not isinstance(classes, list) or not isinstance(ids, dict) or not classes:
        raise InputError(f"{path}: a mapping file is {{\"classes\": [names], \"label_ids\": {{\"id\": train_id}}}}")
    lut = np.full(256, IGNORE_LABEL, np.uint8)
    for label, train in ids.items():
        if not (0 <= int(label) <= 255) or not (0 <= int(train) < len(classes) or int(train) == IGNORE_LABEL):
            raise InputError(f"{path}: label id {label} -> {train} is outside 0..255 / 0..{len(classes) - 1}")
        lut[int(label)] = int(train)
    return tuple(str(c) for c in classes), lut


def read_cityscapes(root: str | Path, mapping: str | Path, split: str = "train") -> SegDataset:
    """Cityscapes-style ``leftImg8bit`` + ``gtFine`` labelIds, mapped to training ids by ``mapping``."""
    root = Path(root)
    classes, lut = read_label_mapping(mapping)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise InputError(f"{root} is not a Cityscapes layout: leftImg8bit/{split}/ is missing")
    samples = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise InputError(f"{image.name} has no gtFine/{split}/{image.parent.name}/{mask.name}")
        samples.append(Sample(image, _mask_reader(mask, lut)))
    if not samples:
        raise InputError(f"{image_dir} has no <city>/*_leftImg8bit.png images")
    return SegDataset(classes, tuple(samples), "cityscapes")


def read_coco(annotations: str | Path, image_dir: str | Path) -> SegDataset:
    """COCO instances -> semantic masks (pycocotools). Images without annotations are kept (all background)."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise InputError("COCO datasets need pycocotools: pip install pycocotools") from None
    import contextlib
    import io

    if not Path(annotations).is_file():
        raise InputError(f"COCO annotation file not found: {annotations}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO(str(annotations))
    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise InputError(f"{annotations} defines no categories")
    to_train = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    classes = ("background", *(coco.loadCats(cid)[0]["name"] for cid in cat_ids))
    image_dir = Path(image_dir)

    def reader(image_id: int, height: int, width: int) -> Callable[[], np.ndarray]:
        def read() -> np.ndarray:
            mask = np.zeros((height, width), np.uint8)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
            for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
                region = coco.annToMask(ann).astype(bool)
                mask[region] = IGNORE_LABEL if ann.get("iscrowd") else to_train[ann["category_id"]]
            return mask
        return read

    samples = []
    for info in coco.loadImgs(sorted(coco.getImgIds())):
        image = image_dir / info["file_name"]
        if not image.is_file():
            raise InputError(f"{annotations} lists {info['file_name']}, missing from {image_dir}")
        samples.append(Sample(image, reader(info["id"], int(info["height"]), int(info["width"]))))
    if not samples:
        raise InputError(f"{annotations} lists no images")
    return SegDataset(classes, tuple(samples), "coco")


def open_dataset(path: str | Path, fmt: str = "auto", *, split: str = "train", mapping: str | Path | None = None,
                 images: str | Path | None = None, classes: Sequence[str] | None = None) -> SegDataset:
    """Open a dataset by format name, or guess it (``auto``) from the layout under ``path``.

    ``coco``: ``path`` is the instances JSON and ``images`` its image folder (default: an
    ``images/`` folder beside the JSON). ``cityscapes`` needs ``mapping``.
    """
    path = Path(path)
    if fmt == "auto":
        if path.suffix == ".json":
            fmt = "coco"
        elif (path / "SegmentationClass").is_dir():
            fmt = "voc"
        elif (path / "leftImg8bit").is_dir():
            fmt = "cityscapes"
        else:
            fmt = "folder"
    if fmt == "folder":
        return read_folder(path, classes)
    if fmt == "voc":
        return read_voc(path, split)
    if fmt == "cityscapes":
        if mapping is None:
            raise InputError("a Cityscapes-style dataset needs a label mapping file (--mapping)")
        return read_cityscapes(path, mapping, split)
    if fmt == "coco":
        return read_coco(path, images or path.parent / "images")
    raise InputError(f"unknown dataset format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")


def load_arrays(dataset: SegDataset, size: tuple[int, int], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All samples resized (stretch) to ``size`` = (width, height): RGB uint8 (N, H, W, 3), ids uint8 (N, H, W)."""
    from tqdm import tqdm

    width, height = size
    images = np.empty((len(dataset), height, width, 3), np.uint8)
    masks = np.empty((len(dataset), height, width), np.uint8)
    for i in tqdm(range(len(dataset)), desc="load", unit="img", disable=not progress):
        rgb, mask = dataset.read(i)
        if rgb.shape[:2] != (height, width):
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        images[i], masks[i] = rgb, mask
    return images, masks
