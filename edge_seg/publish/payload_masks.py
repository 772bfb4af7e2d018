"""Decoded messages → arrays: the class maps and instance masks that mask, instances and crop messages carry.

``class_map_from_mask`` gives exactly the device's ``Segmentation.class_map`` when the mask
travelled at scale 1 (same RLE at model resolution, same nearest ``cv2.resize``).
"""

from __future__ import annotations

from base64 import b64decode

import cv2
import numpy as np

from edge_seg.publish import rle
from edge_seg.publish.envelope import MessageError
from edge_seg.publish.schemas import CropMessage, InstancesMessage, MaskMessage
from edge_seg.segmentation import resize_to_frame


def rle_masks(items, size: tuple[int, int], what: str) -> list[np.ndarray]:
    """The bool (h, w) mask of each item's ``counts`` (COCO RLE at ``size`` = (w, h)); ``MessageError`` if bad."""
    width, height = size
    try:
        return [rle.decode_binary(item.counts, height, width) for item in items]
    except rle.RLEError as err:
        raise MessageError(f"bad {what} message: {err}") from None


def instance_masks(msg: InstancesMessage) -> list[np.ndarray]:
    """The bool (h, w) frame-size mask of each instance of an instances message, in message order."""
    return rle_masks(msg.instances, msg.frame_size, "instances")


def label_map_from_mask(msg: MaskMessage) -> np.ndarray:
    """The uint8 (h, w) class map at ``mask_resolution`` (model resolution when ``scale`` is 1)."""
    width, height = msg.mask_resolution
    try:
        if msg.mask_format == "rle":
            return rle.decode_classes([item.model_dump() for item in msg.rle or []], height, width)
        return rle.decode_png(b64decode(msg.png or ""), width, height)
    except (rle.RLEError, ValueError) as err:
        raise MessageError(f"bad mask message: {err}") from None


def class_map_from_mask(msg: MaskMessage) -> np.ndarray:
    """The uint8 frame-size class map: exactly the device's ``Segmentation.class_map`` when ``scale`` is 1."""
    return resize_to_frame(label_map_from_mask(msg), tuple(msg.frame_size), cv2.INTER_NEAREST)


def crop_class_map(msg: CropMessage) -> np.ndarray:
    """The uint8 (h, w) class map inside the crop's bbox."""
    width, height = msg.mask_resolution
    try:
        return rle.decode_classes([item.model_dump() for item in msg.rle], height, width)
    except rle.RLEError as err:
        raise MessageError(f"bad crop message: {err}") from None
