"""Class maps as COCO RLE (one compressed-RLE string per class present) and as palette PNG.

The RLE strings are exactly what ``pycocotools.mask.encode`` returns for a Fortran-ordered uint8
binary mask (its compressed "LEB128-like" string, ASCII), so any pycocotools user decodes them
with ``pycocotools.mask.decode({"size": [h, w], "counts": counts})``.

Received strings are untrusted: pycocotools' C decoder does no bounds checking (a string whose
run lengths sum past ``h*w``, or that ends inside a multi-character count, writes or reads past its
buffers). ``check_counts`` therefore parses every string in Python first and rejects anything whose
runs are negative or do not sum to exactly ``h*w``, and decoding uses those checked runs in NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as coco_mask

from edge_seg.maskio import palette_png, read_palette_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_SIDE = 16384  # largest mask/frame side accepted from a message


class RLEError(ValueError):
    """A counts string or PNG that does not describe a mask of the stated size."""


def encode_classes(label_map: np.ndarray) -> list[dict]:
    """``[{"id": class_id, "counts": str}, ...]`` for every class id present, ascending.

    Equal to ``pycocotools.mask.encode`` of each class's Fortran-ordered binary mask, but one pass
    over the pixels: the label map's own runs (column-major) are found once, each class's runs
    come from them (work proportional to the number of runs, not pixels), and pycocotools'
    ``frPyObjects`` compresses the run lengths into its string.
    """
    labels = np.asarray(label_map, dtype=np.uint8)
    height, width = labels.shape
    flat = labels.ravel(order="F")
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    values = flat[starts]
    ids = np.unique(values)
    bounds = np.concatenate((starts, [flat.size]))
    objects = []
    for class_id in ids:
        inside = values == class_id
        flips = bounds[1:-1][inside[1:] != inside[:-1]]
        runs = np.diff(np.concatenate(([0], flips, [flat.size])))
        if inside[0]:
            runs = np.concatenate(([0], runs))  # RLE starts with a run of zeros
        objects.append({"size": [height, width], "counts": runs.tolist()})
    encoded = coco_mask.frPyObjects(objects, height, width)
    return [{"id": int(i), "counts": item["counts"].decode("ascii")} for i, item in zip(ids, encoded)]


def check_counts(counts: str, height: int, width: int) -> np.ndarray:
    """The run lengths of ``counts``; ``RLEError`` unless it is a well-formed compressed RLE of an (h, w) mask.

    Vectorised parse of pycocotools' format: 6 bits per character (offset 48), bit 5 = "more",
    bit 4 of a run's last character = sign, runs after the second stored as deltas to the run two
    back. A run has at most 6 characters (pycocotools shifts a C int).
    """
    try:
        data = counts.encode("ascii")
    except UnicodeEncodeError:
        raise RLEError("RLE counts must be ASCII") from None
    total = height * width
    if not data:
        raise RLEError("RLE counts are empty")
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise RLEError("RLE counts contain a character outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise RLEError("RLE counts end inside a run")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 6:
        raise RLEError("RLE counts contain a run that is too long")
    position = np.arange(len(c)) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * position), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = x.copy()
    runs[3::2] = np.cumsum(x[1::2])[1:]
    runs[4::2] = np.cumsum(x[2::2])[1:]
    if runs.min() < 0:
        raise RLEError("RLE counts contain a negative run")
    covered = int(runs.sum())
    if covered != total:
        raise RLEError(f"RLE runs cover {covered} pixels, the mask has {total}")
    return runs


def decode_classes(rles: Sequence[dict], height: int, width: int) -> np.ndarray:
    """The uint8 (h, w) label map from ``encode_classes`` output.

    Decoded from the runs ``check_counts`` parses (NumPy, no pycocotools call on untrusted
    data); pixel-for-pixel what ``pycocotools.mask.decode`` gives for each class. The classes'
    runs of ones are sorted once and must tile the mask exactly (no overlap, no gap), so the work
    is the runs plus one pass over the pixels, however many classes the message lists.
    """
    total = height * width
    starts, ends, ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.uint8)]
    for item in rles:
        runs = check_counts(item["counts"], height, width)
        stop = np.cumsum(runs)
        ones = (np.arange(len(runs)) % 2 == 1) & (runs > 0)
        starts.append(stop[ones] - runs[ones])
        ends.append(stop[ones])
        ids.append(np.full(int(ones.sum()), item["id"], np.uint8))
    start, end, owner = np.concatenate(starts), np.concatenate(ends), np.concatenate(ids)
    order = np.argsort(start, kind="stable")
    start, end, owner = start[order], end[order], owner[order]
    clash = np.flatnonzero(start[1:] < end[:-1])
    if len(clash):
        raise RLEError(f"RLE of class {owner[clash[0] + 1]} overlaps another class")
    if int((end - start).sum()) != total:  # no overlap: anything short of the total is a gap
        raise RLEError("the class RLEs leave pixels uncovered")
    return np.repeat(owner, end - start).reshape(width, height).T.copy()  # column-major, like the RLE


def encode_binary(mask: np.ndarray) -> str:
    """pycocotools' compressed RLE string of one binary (h, w) mask (e.g. one instance at frame size)."""
    return coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))["counts"].decode("ascii")


def decode_binary(counts: str, height: int, width: int) -> np.ndarray:
    """The bool (h, w) mask of a checked compressed RLE string (NumPy, no pycocotools on untrusted data)."""
    runs = check_counts(counts, height, width)
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(width, height).T.copy()


def encode_png(label_map: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """Palette PNG of the label map (colours from ``palette``, pixels are class ids)."""
    return palette_png(np.ascontiguousarray(label_map, dtype=np.uint8), palette)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, without decoding it."""
    if len(data) < 33 or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        raise RLEError("mask PNG is not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def decode_png(data: bytes, width: int, height: int) -> np.ndarray:
    """The uint8 (h, w) class ids of a palette PNG, refusing PNGs of any other size (no decompression bombs)."""
    if png_size(data) != (width, height):
        raise RLEError(f"mask PNG is {png_size(data)[0]}x{png_size(data)[1]}, the message says {width}x{height}")
    try:
        labels = read_palette_png(data)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad payload
        raise RLEError(f"mask PNG cannot be decoded: {err}") from None
    if labels.shape != (height, width):
        raise RLEError("mask PNG has the wrong size")
    return labels


__all__ = ["RLEError", "check_counts", "decode_classes", "decode_png", "encode_classes", "encode_png", "png_size"]
