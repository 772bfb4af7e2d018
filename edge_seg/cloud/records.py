"""What every store derives from a decoded message, whatever it stores into (SQLite + folder, Postgres + S3).

``kind_of`` (the topic suffix), ``crop_file_name`` (a crop's name in the labelling queue),
``instance_id_map`` / ``mask_png`` (the PNG a mask message is rendered to), ``coco_rows`` (a crop's
COCO image and pre-annotations), ``track_rows`` (tracked instances), ``track_device`` (the per-device
entry of the consumer's summary line and ``devices.json``) and ``coco_dataset`` (the COCO file of
the labelling queue from stored rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from edge_seg.maskio import palette_png
from edge_seg.publish.messages import (
    CommandResultMessage,
    CropMessage,
    EventMessage,
    InstanceCropMessage,
    InstancesMessage,
    MaskMessage,
    Message,
    MetricsMessage,
    StatusMessage,
    ZoneStateMessage,
)
from edge_seg.publish.payload_masks import check_limits, class_map_from_mask, instance_boxes

GREY = [(i, i, i) for i in range(256)]
# instance id k -> a distinct colour (0 = none, black)
INSTANCE_COLOURS = [(0, 0, 0)] + [tuple(int(v) for v in np.random.default_rng(k).integers(60, 256, 3))
                                  for k in range(1, 256)]
COCO_INFO = {"description": "edge_seg uncertain crops with model pre-annotations", "version": "1.0"}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def kind_of(msg: Message) -> str:
    """The topic suffix a message belongs on: mask, crop, status, metrics or cmd/result."""
    return {MaskMessage: "mask", InstancesMessage: "mask", CropMessage: "crop", InstanceCropMessage: "crop",
            StatusMessage: "status", MetricsMessage: "metrics", CommandResultMessage: "cmd/result",
            EventMessage: "event", ZoneStateMessage: "zone_state"}[type(msg)]


def split_stream(stream: str) -> tuple[str | None, str]:
    """(camera, kind) of a stream key: ``mask`` or ``CAMERA/mask`` (``cmd/result`` is a kind: ``cmd`` is
    never a camera name)."""
    head, sep, tail = stream.partition("/")
    return (head, tail) if sep and head != "cmd" else (None, stream)


def stream_of(msg: Message, kind: str) -> str:
    """The stream key sequence numbers count on: ``kind`` (``kind_of(msg)``), ``CAMERA/kind`` for a camera's own
    topics."""
    camera = getattr(msg, "camera", None)
    return kind if camera is None else f"{camera}/{kind}"


def crop_file_name(device: str, seq: int, msg_id: str) -> str:
    """``images/{device}/{seq:09d}_{msg_id}.jpg``: one folder per device, so two devices never share a name.

    A device name has no ``/`` and is never ``.`` or ``..`` (``DEVICE_PATTERN``); inside its folder the
    first ``_`` ends the digits of ``seq``, so (seq, msg_id) reads back from the name: no two
    messages map to one file. (Flat ``{device}_{seq}_{msg_id}`` did: ``cam`` seq 1 ``000000002_x``
    and ``cam_000000001`` seq 2 ``x``.)
    """
    return f"images/{device}/{seq:09d}_{msg_id}.jpg"


def instance_id_map(msg: InstancesMessage) -> np.ndarray:
    """uint8 (H, W): 0 where no instance, k + 1 for the k-th instance (highest score wins; at most 255).

    Each instance is decoded at its own box and pasted where no earlier (higher-score) one is: the
    work follows the boxes, and the limits of ``payload_masks`` are checked before the first decode.
    """
    check_limits(msg)  # before the frame-size map is allocated
    width, height = msg.frame_size
    ids = np.zeros((height, width), np.uint8)
    for k, box in enumerate(instance_boxes(msg)):
        if box is not None:
            (x, y), (h, w) = box.origin, box.mask.shape
            region = ids[y:y + h, x:x + w]
            region[box.mask & (region == 0)] = k + 1
    return ids


def mask_png(msg: MaskMessage | InstancesMessage) -> bytes:
    """The frame-size palette PNG of a mask message: class ids (mask) or instance ids (instances)."""
    if isinstance(msg, InstancesMessage):
        return palette_png(instance_id_map(msg), INSTANCE_COLOURS)
    return palette_png(class_map_from_mask(msg), [tuple(c) for c in msg.palette] or GREY)


def _class_name(name: str | None, classes, class_id: int) -> str:
    return name or (classes[class_id] if classes and class_id < len(classes) else f"class_{class_id}")


def _instance_annotations(msg: InstanceCropMessage) -> list[dict]:
    """One COCO annotation per instance of an instance crop (its mask at crop size, counts already checked)."""
    width, height = msg.mask_resolution
    rles = [{"size": [height, width], "counts": item.counts.encode("ascii")} for item in msg.instances]
    anns = []
    for item, area, box in zip(msg.instances, coco_mask.area(rles), coco_mask.toBbox(rles)):
        attributes = {"pre_annotation": True, "class_id": item.class_id, "score": item.score,
                      "reasons": list(item.reasons)}
        if item.runner_up is not None:
            attributes["runner_up"] = item.runner_up.model_dump()
        anns.append({"category_name": _class_name(item.name, msg.classes, item.class_id),
                     "segmentation": {"size": [height, width], "counts": item.counts},
                     "area": int(area), "bbox": [float(v) for v in box], "iscrowd": 0, "score": item.score,
                     "attributes": attributes})
    return anns


def coco_rows(msg: CropMessage | InstanceCropMessage, file_name: str) -> tuple[dict, list[dict]]:
    """A crop's COCO image (without id) and annotations (with ``category_name``, without ids)."""
    width, height = msg.mask_resolution
    image = {"file_name": file_name, "width": width, "height": height, "device": msg.device, "msg_id": msg.msg_id,
             "seq": msg.seq, "frame_seq": msg.frame_seq, "frame_bbox": list(msg.bbox),
             "frame_size": list(msg.frame_size), "score": msg.score, "ts": msg.ts, "model": msg.model.model_dump()}
    if isinstance(msg, InstanceCropMessage):
        image.update(kind="instance", reasons=list(msg.reasons))
        return image, _instance_annotations(msg)
    rles = [{"size": [height, width], "counts": item.counts.encode("ascii")} for item in msg.rle]
    anns = []
    for item, area, box in zip(msg.rle, coco_mask.area(rles), coco_mask.toBbox(rles)):
        anns.append({"category_name": _class_name(item.name, msg.classes, item.id),
                     "segmentation": {"size": [height, width], "counts": item.counts},
                     "area": int(area), "bbox": [float(v) for v in box], "iscrowd": 0,
                     "attributes": {"pre_annotation": True, "class_id": item.id}})
    return image, anns


def track_rows(msg: InstancesMessage) -> list[tuple]:
    """``instance_tracks`` rows of the tracked instances: (msg_id, device, frame_seq, ts, track_id, class_id,
    score, x, y, w, h)."""
    return [(msg.msg_id, msg.device, msg.frame_seq, msg.ts, item.track_id, item.class_id, item.score, *item.bbox)
            for item in msg.instances if item.track_id is not None]


def message_record(msg: Message) -> dict:
    """The message as JSON-ready fields without its pixel data (``messages.jsonl``, the Postgres ``body``)."""
    exclude = {"rle": True, "png": True, "jpeg": True, "snapshot_jpeg": True, "instances": {"__all__": {"counts"}}}
    return msg.model_dump(mode="json", by_alias=True, exclude=exclude)


def track_device(entry: dict, msg: Message, kind: str, now: float, gap_delta: int) -> None:
    """Update one device's entry: counts by kind, last seen, gaps by kind, last status and metrics summary."""
    entry.setdefault("counts", {})
    entry["counts"][kind] = entry["counts"].get(kind, 0) + 1
    entry["last_seen"] = round(now, 3)
    if gap_delta:
        gaps = entry.setdefault("gaps", {})
        gaps[kind] = gaps.get(kind, 0) + gap_delta
    if isinstance(msg, StatusMessage):
        entry["status"] = msg.model_dump(mode="json", by_alias=True)
        entry["status_received"] = round(now, 3)
    elif isinstance(msg, MetricsMessage):
        entry["metrics"] = msg.summary
        entry["metrics_received"] = round(now, 3)


def coco_dataset(categories: Iterable[tuple[int, str]], images: Iterable[tuple[int, dict | str, list | str]]
                 ) -> dict:
    """The COCO dataset of the labelling queue from (id, name) categories and (id, image, annotations) rows
    (JSON text or already decoded)."""
    cats = [{"id": int(i), "name": name, "supercategory": ""} for i, name in categories]
    out_images, annotations = [], []
    for image_id, image, anns in images:
        out_images.append({"id": int(image_id), **(json.loads(image) if isinstance(image, str) else image)})
        for ann in json.loads(anns) if isinstance(anns, str) else anns:
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id), **ann})
    return {"info": dict(COCO_INFO), "licenses": [], "images": out_images, "annotations": annotations,
            "categories": cats}


__all__ = ["coco_dataset", "coco_rows", "crop_file_name", "instance_id_map", "kind_of", "mask_png",
           "message_record", "split_stream", "stream_of", "track_device", "track_rows", "write_atomic"]
