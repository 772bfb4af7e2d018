"""The instance crop message (schema ``edge_seg.instance_crop/v1``, on the ``crop`` topic).

An instance model has no class for every pixel (255 = no instance), so its crops cannot be
``edge_seg.crop/v1`` messages, whose local class map covers every pixel: they get their own schema,
framed the same way (content type ``application/vnd.edge-seg.crop``: one line of UTF-8 JSON, a
``\\n``, the raw JPEG; ``messages.decode`` tells the two apart by the header's ``schema``).

The header has the envelope and ``model``, ``frame_size``, ``frame_seq``, ``classes``, ``bbox`` (the
crop, frame pixels), ``mask_resolution`` (= the bbox size), ``jpeg_bytes``, plus:

* ``score``: the crop's uncertainty in [0, 1] (the largest of its flagged instances');
* ``reasons``: why it was sent, the union of its instances' (``low_score``, ``overlap``,
  ``ambiguous_class``);
* ``instances``: every instance with pixels in the crop, highest score first, each ``{"class_id",
  "name", "score", "bbox" (the instance's own box, frame px), "counts", "reasons", "runner_up"}``:
  ``counts`` is pycocotools' compressed RLE of its mask **at the crop's size**
  (``pycocotools.mask.decode({"size": [h, w], "counts": counts})``), ``reasons`` is empty for an
  instance that is only context, ``runner_up`` is ``{"class_id", "score"}`` of its second-best class
  (absent for one-class models).
"""

from __future__ import annotations

import numpy as np

from edge_seg.publish import rle
from edge_seg.publish.envelope import Encoded, MessageError, encoded_message, envelope, finite, json_bytes, model_dict
from edge_seg.publish.payload_masks import rle_masks
from edge_seg.publish.schemas import CROP_CONTENT_TYPE, INSTANCE_CROP_SCHEMA, InstanceCropMessage


def encode_instance_crop(crop, *, device: str, seq: int, model, frame_size: tuple[int, int],
                         classes: tuple[str, ...] | list[str] | None = None, camera: str | None = None) -> Encoded:
    """An instance crop message for an ``InstanceCrop``: JSON header line + ``\\n`` + JPEG."""
    head = envelope(INSTANCE_CROP_SCHEMA, device, seq, crop.ts, camera)
    x, y, w, h = (int(v) for v in crop.bbox)
    names = list(classes) if classes is not None else None
    items = []
    for inst in crop.instances:
        mask = np.asarray(inst.mask, dtype=bool)
        if mask.shape != (h, w):
            raise MessageError(f"an instance mask of the crop is {mask.shape[1]}x{mask.shape[0]}, its bbox is {w}x{h}")
        item = {"class_id": int(inst.class_id),
                "name": names[inst.class_id] if names and inst.class_id < len(names) else None,
                "score": min(max(round(float(inst.score), 6), 0.0), 1.0),
                "bbox": [max(0.0, round(float(v), 2)) for v in inst.bbox],
                "counts": rle.encode_binary(mask), "reasons": list(inst.reasons)}
        if inst.runner_up is not None:
            item["runner_up"] = {"class_id": int(inst.runner_up[0]),
                                 "score": min(max(round(float(inst.runner_up[1]), 6), 0.0), 1.0)}
        items.append(item)
    head.update(model=model_dict(model), frame_size=[int(v) for v in frame_size], bbox=[x, y, w, h],
                score=min(max(finite(crop.score, 6) or 0.0, 0.0), 1.0), reasons=list(crop.reasons),
                mask_resolution=[w, h], instances=items, jpeg_bytes=len(crop.jpeg))
    if crop.seq is not None:
        head["frame_seq"] = int(crop.seq)
    if names is not None:
        head["classes"] = names
    return encoded_message("crop", head, json_bytes(head) + b"\n" + bytes(crop.jpeg), CROP_CONTENT_TYPE)


def instance_crop_masks(msg: InstanceCropMessage) -> list[np.ndarray]:
    """The bool (h, w) crop-size mask of each instance of an instance crop message, in message order."""
    return rle_masks(msg.instances, msg.mask_resolution, "instance crop")


__all__ = ["encode_instance_crop", "instance_crop_masks"]
