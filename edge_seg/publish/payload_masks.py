"""Decoded messages → arrays: the class maps and instance masks that mask, instances and crop messages carry.

``class_map_from_mask`` gives exactly the device's ``Segmentation.nearest_class_map`` when the mask
travelled at scale 1 (same RLE at model resolution, same nearest ``cv2.resize``): its ``class_map``
too when the device runs ``overlay.upsample: nearest``; the default smooth one differs near edges.

A message is small but may describe a lot of pixels: a dozen bytes of RLE say "a 16384x16384 mask,
all ones". Decoding is therefore bounded before any pixel is written (``check_limits``, also
called by each decoder here): a frame or mask of at most ``MAX_FRAME_PIXELS`` and, per message,
at most ``MAX_DECODE_PIXELS`` written (instances × frame pixels for frame-size instance masks; the
sum of the instances' boxes for ``instance_boxes``, which decodes each instance at its own tight
box from the RLE runs, never at frame size). Over a limit: ``OverLimitError`` (a ``MessageError``).
"""

from __future__ import annotations

from base64 import b64decode
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge_seg.publish import rle
from edge_seg.publish.envelope import MessageError
from edge_seg.publish.schemas import CropMessage, InstancesMessage, MaskMessage
from edge_seg.segmentation import resize_to_frame

MAX_FRAME_PIXELS = 4096 * 4096  # frame_size / mask_resolution decoded (4K UHD and 12 MP sensors fit)
MAX_DECODE_PIXELS = 4 * MAX_FRAME_PIXELS  # pixels one message may make a decoder write, all its masks together
MAX_STORED_INSTANCES = 255  # an instance id PNG holds ids 1..255: later instances are never decoded


class OverLimitError(MessageError):
    """A well-formed message that would cost more to decode than one message may."""


@dataclass(frozen=True)
class BoxMask:
    """One instance's mask at its tight box: ``mask`` (h, w) bool, its top-left pixel at ``origin`` (x, y)."""

    origin: tuple[int, int]
    mask: np.ndarray


def _pixels(size) -> int:
    return int(size[0]) * int(size[1])


def _check_frame(what: str, name: str, size) -> None:
    if _pixels(size) > MAX_FRAME_PIXELS:
        raise OverLimitError(f"{what} message over the decode limit: {name} {size[0]}x{size[1]} is more than "
                             f"{MAX_FRAME_PIXELS} pixels")


def _ones(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, column-major pixel index) of each non-empty run of ones."""
    ends = np.cumsum(runs)
    ones = (np.arange(len(runs)) % 2 == 1) & (runs > 0)
    return ends[ones] - runs[ones], ends[ones]


def _tight_box(starts: np.ndarray, ends: np.ndarray, height: int) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the ones, from the runs alone (a run that crosses a column spans every row)."""
    if not len(starts):
        return None
    first, last = starts // height, (ends - 1) // height
    crosses = bool(np.any(last > first))
    top = 0 if crosses else int((starts % height).min())
    bottom = height - 1 if crosses else int(((ends - 1) % height).max())
    x = int(first[0])
    return x, top, int(last[-1]) - x + 1, bottom - top + 1


def _decode_box(starts: np.ndarray, ends: np.ndarray, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The bool (h, w) mask inside ``box``: the runs cut into column pieces, painted by a difference array."""
    x, y, w, h = box
    first, last = starts // height, (ends - 1) // height
    pieces = last - first + 1
    run = np.repeat(np.arange(len(starts)), pieces)
    column = first[run] + np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    top = np.maximum(starts[run], column * height) - column * height
    bottom = np.minimum(ends[run], (column + 1) * height) - column * height
    base = (column - x) * h - y
    diff = np.zeros(w * h + 1, np.int8)
    np.add.at(diff, base + top, 1)
    np.add.at(diff, base + bottom, -1)
    return np.cumsum(diff[:-1], dtype=np.int8).astype(bool).reshape(w, h).T.copy()


def _instance_runs(msg: InstancesMessage) -> list[tuple[np.ndarray, np.ndarray, tuple | None]]:
    """(starts, ends, tight box) of the instances a store keeps, after the frame and pixel limits."""
    width, height = msg.frame_size
    _check_frame("instances", "frame_size", msg.frame_size)
    out, total = [], 0
    try:
        for item in msg.instances[:MAX_STORED_INSTANCES]:
            starts, ends = _ones(rle.check_counts(item.counts, height, width))
            box = _tight_box(starts, ends, height)
            total += 0 if box is None else box[2] * box[3]
            out.append((starts, ends, box))
    except rle.RLEError as err:
        raise MessageError(f"bad instances message: {err}") from None
    if total > MAX_DECODE_PIXELS:
        raise OverLimitError(f"instances message over the decode limit: its {len(out)} instance boxes cover "
                             f"{total} pixels, at most {MAX_DECODE_PIXELS} are decoded per message")
    return out


def check_limits(msg) -> None:
    """``OverLimitError`` if decoding ``msg`` would pass a limit (see the module docstring); cheap, decodes nothing."""
    if isinstance(msg, MaskMessage):
        _check_frame("mask", "frame_size", msg.frame_size)
        _check_frame("mask", "mask_resolution", msg.mask_resolution)
    elif isinstance(msg, InstancesMessage):
        _instance_runs(msg)
    # crops: the store decodes no crop pixels; ``crop_class_map`` / ``rle_masks`` check their own sizes


def instance_boxes(msg: InstancesMessage) -> Iterator[BoxMask | None]:
    """Each instance's mask at its tight box (None for an empty mask), in message order, the first 255 only.

    Work and memory follow the boxes, not the frame; the limits are checked before the first decode.
    """
    _, height = msg.frame_size
    for starts, ends, box in _instance_runs(msg):
        yield None if box is None else BoxMask(box[:2], _decode_box(starts, ends, height, box))


def rle_masks(items, size: tuple[int, int], what: str) -> list[np.ndarray]:
    """The bool (h, w) mask of each item's ``counts`` (COCO RLE at ``size`` = (w, h)); ``MessageError`` if bad."""
    width, height = size
    _check_frame(what, "mask size", size)
    if len(items) * width * height > MAX_DECODE_PIXELS:
        raise OverLimitError(f"{what} message over the decode limit: {len(items)} masks of {width}x{height} are "
                             f"more than {MAX_DECODE_PIXELS} pixels")
    try:
        return [rle.decode_binary(item.counts, height, width) for item in items]
    except rle.RLEError as err:
        raise MessageError(f"bad {what} message: {err}") from None


def instance_masks(msg: InstancesMessage) -> list[np.ndarray]:
    """The bool (h, w) frame-size mask of each instance of an instances message, in message order.

    Instances × frame pixels are bounded (``OverLimitError``); ``instance_boxes`` costs only the boxes.
    """
    return rle_masks(msg.instances, msg.frame_size, "instances")


def label_map_from_mask(msg: MaskMessage) -> np.ndarray:
    """The uint8 (h, w) class map at ``mask_resolution`` (model resolution when ``scale`` is 1)."""
    width, height = msg.mask_resolution
    _check_frame("mask", "mask_resolution", msg.mask_resolution)
    try:
        if msg.mask_format == "rle":
            return rle.decode_classes([item.model_dump() for item in msg.rle or []], height, width)
        return rle.decode_png(b64decode(msg.png or ""), width, height)
    except (rle.RLEError, ValueError) as err:
        raise MessageError(f"bad mask message: {err}") from None


def class_map_from_mask(msg: MaskMessage) -> np.ndarray:
    """The uint8 frame-size class map: exactly the device's ``Segmentation.nearest_class_map`` when ``scale`` is 1."""
    _check_frame("mask", "frame_size", msg.frame_size)
    return resize_to_frame(label_map_from_mask(msg), tuple(msg.frame_size), cv2.INTER_NEAREST)


def crop_class_map(msg: CropMessage) -> np.ndarray:
    """The uint8 (h, w) class map inside the crop's bbox."""
    width, height = msg.mask_resolution
    _check_frame("crop", "mask_resolution", msg.mask_resolution)
    try:
        return rle.decode_classes([item.model_dump() for item in msg.rle], height, width)
    except rle.RLEError as err:
        raise MessageError(f"bad crop message: {err}") from None


__all__ = ["BoxMask", "MAX_DECODE_PIXELS", "MAX_FRAME_PIXELS", "MAX_STORED_INSTANCES", "OverLimitError",
           "check_limits", "class_map_from_mask", "crop_class_map", "instance_boxes", "instance_masks",
           "label_map_from_mask", "rle_masks"]
