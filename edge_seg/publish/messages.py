"""Versioned MQTT messages, shared by the device (encode) and the cloud consumer (decode).

Topics are ``{prefix}/{device}/{Encoded.topic}``. Every message carries ``schema`` (a versioned id:
a breaking change makes a new ``/v2``), ``device``, a unique ``msg_id`` (the idempotency key,
time-sortable), ``seq`` and ``ts`` (capture time for masks/crops, send time otherwise).

* **mask** (``application/json``, UTF-8): model identity, ``frame_size`` ``[w, h]``, ``classes``,
  ``palette``, ``area_fractions``, ``mean_confidence``, ``mean_uncertainty``, ``timings_ms``, and the
  class map. The class map travels at **model resolution** (``mask_resolution`` ``[w, h]``, the
  Segmentation's ``label_map``), at a fraction of the bytes of a frame-size map.
  ``payload_masks.class_map_from_mask`` (one nearest ``cv2.resize``) reproduces the device's
  ``Segmentation.nearest_class_map`` exactly. The device's default ``class_map`` has smooth edges
  (bilinear upsampling of its uint8 probabilities, which do not travel): it differs from the
  consumer's map only within about one model pixel of class edges, and equals it when the device
  runs ``overlay.upsample: nearest``. Crops carry the device's exact (smooth) local class map.
  ``mask_format`` ``rle``: ``rle`` lists ``{"id", "name", "counts"}`` for
  every class present, ``counts`` being pycocotools' compressed RLE string of the binary mask
  (``pycocotools.mask.decode({"size": [h, w], "counts": counts})``). ``png``: ``png`` is a base64
  palette PNG whose pixels are class ids.
* **Payload cap** (``max_bytes``, default 128 KB, AWS IoT's limit): RLE → PNG → PNG downscaled
  (nearest) by 2, 4, 8 … until it fits; ``scale`` records ``mask_resolution`` / model resolution
  (1.0 = exact). Nothing fits → ``MessageError``.
* **instances** (schema ``edge_seg.instances/v1``, on the ``mask`` topic, ``application/json``; instance
  models): model identity, ``frame_size``, ``classes``,
  ``palette``, ``timings_ms`` and ``instances``, highest score first, each ``{"class_id", "name",
  "score", "bbox": [x, y, w, h] (frame px), "counts"}`` with ``counts`` the pycocotools compressed
  RLE of that instance's frame-size mask. Over the payload cap the lowest-score instances are left
  out and ``dropped`` counts them.
* **crop** (``application/vnd.edge-seg.crop``): one line of UTF-8 JSON (the header: bbox in frame
  pixels, score, ``frame_seq``, RLE of the local class map at bbox size, ``jpeg_bytes``), a
  ``\\n``, then the raw JPEG. Binary framing saves base64's 33 %; ``mosquitto_sub`` still shows the
  header. Without a content type (MQTT 3.1.1) ``decode`` recognises the header line.
* **instance crop** (``edge_seg.instance_crop/v1``, framed like a crop): see ``edge_seg.publish.instance_crop``.
* **event** (``edge_seg.event/v1``) and retained **zone state** (``edge_seg.zone_state/v1``): see
  ``edge_seg.publish.zone_messages``.
* **status**, **metrics**, **cmd/result**, and **cmd** (device-bound): UTF-8 JSON.

Decoding is strict about types (no "5" for 5, no NaN/Infinity) and ignores unknown fields of
data messages (``extra="ignore"``: a newer device may add fields within a schema version; a
removed or retyped field needs a new version). Commands forbid unknown fields: a command that
says more than the device understands is refused, not half-executed. Every malformed payload
raises ``MessageError`` with one line saying what is wrong.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ValidationError

from edge_seg.errors import field_path
from edge_seg.publish import rle
from edge_seg.publish.envelope import (  # noqa: F401 - re-exported: messages is the public API
    Encoded,
    MessageError,
    encoded_message,
    envelope,
    finite,
    json_bytes,
    model_dict,
    new_msg_id,
)
from edge_seg.publish.instance_crop import encode_instance_crop
from edge_seg.publish.schemas import (  # noqa: F401 - re-exported: messages is the public API
    BY_SCHEMA,
    COMMAND_SCHEMA,
    COMMANDS,
    CROP_CONTENT_TYPE,
    CROP_SCHEMA,
    DEVICE_PATTERN,
    EVENT_SCHEMA,
    INSTANCE_CROP_SCHEMA,
    INSTANCES_SCHEMA,
    JPEG_MAGIC,
    JSON_CONTENT_TYPE,
    MASK_SCHEMA,
    MAX_COMMAND_PAYLOAD,
    MAX_DEPTH,
    MAX_PAYLOAD,
    METRICS_SCHEMA,
    MSG_ID_PATTERN,
    RESULT_SCHEMA,
    STATUS_SCHEMA,
    ZONE_STATE_SCHEMA,
    CommandMessage,
    CommandResultMessage,
    CropMessage,
    EventMessage,
    InstanceCropMessage,
    InstancesMessage,
    MaskMessage,
    Message,
    MetricsMessage,
    ModelInfo,
    StatusMessage,
    ZoneStateMessage,
    b64decode,
)
from edge_seg.publish.zone_messages import encode_event, encode_zone_state  # noqa: F401 - re-exported
from edge_seg.segmentation import ModelIdentity


# --------------------------------------------------------------------------------------------- helpers
def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _depth_ok(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def _load_json(payload: bytes, what: str) -> dict:
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise MessageError(f"bad {what}: not UTF-8") from None
    except RecursionError:
        raise MessageError(f"bad {what}: JSON nested too deeply") from None
    except ValueError as err:
        raise MessageError(f"bad {what}: not valid JSON ({str(err)[:80]})") from None
    if not isinstance(obj, dict):
        raise MessageError(f"bad {what}: a JSON object is expected, got {type(obj).__name__}")
    if not _depth_ok(obj, MAX_DEPTH):
        raise MessageError(f"bad {what}: JSON nested deeper than {MAX_DEPTH}")
    return obj


def _one_line(err: ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    loc = field_path(first["loc"]) or "message"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}"[:300] + more


def _validate(cls: type[BaseModel], obj: dict, what: str, command_id: str | None = None):
    try:
        return cls.model_validate(obj)
    except ValidationError as err:
        raise MessageError(f"bad {what}: {_one_line(err)}", command_id) from None
    except (ValueError, TypeError, RecursionError) as err:  # validators' own errors outside pydantic's wrapping
        raise MessageError(f"bad {what}: {str(err)[:200]}", command_id) from None


# --------------------------------------------------------------------------------------------- encoding
def encode_mask(segmentation, *, device: str, seq: int, ts: float, fmt: str = "rle", max_bytes: int = 128_000,
                timings: dict[str, float] | None = None, mean_uncertainty: float | None = None,
                frame_seq: int | None = None, camera: str | None = None) -> Encoded:
    """A mask message for one ``Segmentation`` (see the module docstring for the fallback chain)."""
    if fmt not in ("rle", "png"):
        raise MessageError(f"mask format must be 'rle' or 'png', got {fmt!r}")
    labels = np.asarray(segmentation.label_map, dtype=np.uint8)
    height, width = labels.shape
    head = envelope(MASK_SCHEMA, device, seq, ts, camera)
    classes = list(segmentation.classes)
    if mean_uncertainty is None:
        mean_uncertainty = 1.0 - segmentation.mean_confidence
    head.update(model=model_dict(segmentation.model), frame_size=[int(v) for v in segmentation.frame_size],
                classes=classes, palette=[[int(c) for c in colour] for colour in segmentation.palette])
    if frame_seq is not None:
        head["frame_seq"] = int(frame_seq)
    tail = {"area_fractions": {k: round(v, 6) for k, v in segmentation.area_fractions.items()},
            "mean_confidence": finite(segmentation.mean_confidence, 6),
            "mean_uncertainty": finite(mean_uncertainty, 6),
            "timings_ms": {str(k): round(float(v), 3) for k, v in (timings or segmentation.timings or {}).items()
                           if np.isfinite(v)}}
    if fmt == "rle":
        rles = [{"id": item["id"], "name": classes[item["id"]] if item["id"] < len(classes) else None,
                 "counts": item["counts"]} for item in rle.encode_classes(labels)]
        payload = json_bytes({**head, "mask_format": "rle", "mask_resolution": [width, height], "scale": 1.0,
                         "rle": rles, **tail})
        if len(payload) <= max_bytes:
            return encoded_message("mask", head, payload)
    factor = 1
    while True:
        w, h = max(1, width // factor), max(1, height // factor)
        small = labels if factor == 1 else cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        png = base64.b64encode(rle.encode_png(small, segmentation.palette)).decode("ascii")
        payload = json_bytes({**head, "mask_format": "png", "mask_resolution": [w, h], "scale": round(w / width, 6),
                         "png": png, **tail})
        if len(payload) <= max_bytes:
            return encoded_message("mask", head, payload)
        if w == 1 and h == 1:
            raise MessageError(f"a mask message cannot fit in {max_bytes} bytes even with a 1x1 mask; "
                               "raise max_bytes")
        factor *= 2


def encode_instances(segmentation, *, device: str, seq: int, ts: float, max_bytes: int = 128_000,
                     timings: dict[str, float] | None = None, frame_seq: int | None = None,
                     camera: str | None = None) -> Encoded:
    """An instances message: one COCO RLE per instance of an instance model's ``Segmentation``."""
    if segmentation.instances is None:
        raise MessageError("an instances message needs a Segmentation of an instance model")
    head = envelope(INSTANCES_SCHEMA, device, seq, ts, camera)
    classes = list(segmentation.classes)
    frame_size = tuple(int(v) for v in segmentation.frame_size)
    head.update(model=model_dict(segmentation.model), frame_size=list(frame_size), classes=classes,
                palette=[[int(c) for c in colour] for colour in segmentation.palette])
    if frame_seq is not None:
        head["frame_seq"] = int(frame_seq)
    items = []
    for inst in segmentation.instances:
        x, y, w, h = (max(0.0, round(float(v), 2)) for v in inst.bbox)
        items.append({"class_id": int(inst.class_id),
                      "name": classes[inst.class_id] if inst.class_id < len(classes) else None,
                      "score": min(max(round(float(inst.score), 6), 0.0), 1.0), "bbox": [x, y, w, h],
                      "counts": rle.encode_binary(inst.frame_mask(frame_size))})
        if getattr(inst, "track_id", None) is not None:  # only with tracking on: older consumers reject the key
            items[-1]["track_id"] = int(inst.track_id)
    tail = {"timings_ms": {str(k): round(float(v), 3) for k, v in (timings or segmentation.timings or {}).items()
                           if np.isfinite(v)}}
    keep = len(items)
    while True:
        payload = json_bytes({**head, "instances": items[:keep], "dropped": len(items) - keep, **tail})
        if len(payload) <= max_bytes:
            return encoded_message("mask", head, payload)
        if keep == 0:
            raise MessageError(f"an instances message cannot fit in {max_bytes} bytes even without instances; "
                               "raise max_bytes")
        keep -= 1


def encode_crop(crop, *, device: str, seq: int, model, frame_size: tuple[int, int],
                classes: tuple[str, ...] | list[str] | None = None, camera: str | None = None) -> Encoded:
    """A crop message: JSON header line + ``\\n`` + JPEG (content type ``CROP_CONTENT_TYPE``); an instance crop too."""
    if getattr(crop, "kind", "semantic") == "instance":
        return encode_instance_crop(crop, device=device, seq=seq, model=model, frame_size=frame_size, classes=classes,
                                    camera=camera)
    head = envelope(CROP_SCHEMA, device, seq, crop.ts, camera)
    local = np.asarray(crop.class_map, dtype=np.uint8)
    x, y, w, h = (int(v) for v in crop.bbox)
    if local.shape != (h, w):
        raise MessageError(f"crop class map is {local.shape[1]}x{local.shape[0]}, its bbox is {w}x{h}")
    names = list(classes) if classes is not None else None
    rles = [{"id": item["id"], "name": names[item["id"]] if names and item["id"] < len(names) else None,
             "counts": item["counts"]} for item in rle.encode_classes(local)]
    head.update(model=model_dict(model), frame_size=[int(v) for v in frame_size], bbox=[x, y, w, h],
                score=finite(crop.score, 6) or 0.0, mask_resolution=[w, h], rle=rles, jpeg_bytes=len(crop.jpeg))
    if crop.seq is not None:
        head["frame_seq"] = int(crop.seq)
    if names is not None:
        head["classes"] = names
    return encoded_message("crop", head, json_bytes(head) + b"\n" + bytes(crop.jpeg), CROP_CONTENT_TYPE)


def encode_status(*, device: str, seq: int, online: bool, model=None, fps: float | None = None,
                  uptime_s: float | None = None, source_state: str | None = None, outbox_depth: int | None = None,
                  degraded: str | None = None, extra: dict | None = None) -> Encoded:
    """A status message (published retained; the ``online: false`` one is also the LWT). ``degraded`` says what
    is wrong while the device runs on (e.g. ``source down since …``); it is left out when all is well."""
    head = envelope(STATUS_SCHEMA, device, seq)
    head.update(online=bool(online), model=model_dict(model), fps=finite(fps, 3), uptime_s=finite(uptime_s, 3),
                source_state=source_state, outbox_depth=None if outbox_depth is None else int(outbox_depth),
                extra=dict(extra or {}))
    if degraded:
        head["degraded"] = str(degraded)[:256]
    return encoded_message("status", head, json_bytes(head))


def encode_metrics(*, device: str, seq: int, summary: dict) -> Encoded:
    """A metrics summary message (any JSON-ready dict)."""
    head = envelope(METRICS_SCHEMA, device, seq)
    head["summary"] = summary
    try:
        return encoded_message("metrics", head, json_bytes(head))
    except (TypeError, ValueError) as err:
        raise MessageError(f"metrics summary is not JSON-ready: {err}") from None


def encode_command_result(*, device: str, seq: int, command_id: str | None, ok: bool, result: dict | None = None,
                          error: str | None = None) -> Encoded:
    """The answer to a command, on ``cmd/result``; ``command_id`` is None when the command had no readable id."""
    head = envelope(RESULT_SCHEMA, device, seq)
    head.update(command_id=None if command_id is None else str(command_id)[:128], ok=bool(ok), result=result,
                error=None if error is None else str(error)[:4096])
    try:
        return encoded_message("cmd/result", head, json_bytes(head))
    except (TypeError, ValueError) as err:
        raise MessageError(f"command result is not JSON-ready: {err}") from None


# --------------------------------------------------------------------------------------------- decoding
def _is_crop_frame(payload: bytes) -> bool:
    newline = payload.find(b"\n", 0, 65536)
    return newline > 0 and any(s.encode() in payload[:newline] for s in (CROP_SCHEMA, INSTANCE_CROP_SCHEMA))


def _decode_crop(payload: bytes) -> CropMessage | InstanceCropMessage:
    newline = payload.find(b"\n", 0, 65536)
    if newline <= 0:
        raise MessageError("bad crop message: no header line before the JPEG")
    head = _load_json(payload[:newline], "crop message")
    if "jpeg" in head:
        raise MessageError("bad crop message: the header must not carry 'jpeg'")
    instance = head.get("schema") == INSTANCE_CROP_SCHEMA
    return _validate(InstanceCropMessage if instance else CropMessage, {**head, "jpeg": payload[newline + 1:]},
                     "instance crop message" if instance else "crop message")


def decode(payload: bytes, content_type: str | None = None) -> Message:
    """Validate and decode a data message (mask, crop, status, metrics, cmd/result, event, zone state);
    ``MessageError`` if bad."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageError(f"bad message: payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise MessageError(f"bad message: {len(payload)} bytes is more than the {MAX_PAYLOAD} accepted")
    if content_type == CROP_CONTENT_TYPE or (not content_type and _is_crop_frame(payload)):
        return _decode_crop(payload)
    obj = _load_json(payload, "message")
    schema = obj.get("schema")
    if schema in (CROP_SCHEMA, INSTANCE_CROP_SCHEMA):
        raise MessageError(f"bad message: crop messages are framed as {CROP_CONTENT_TYPE} (header line + JPEG)")
    cls = BY_SCHEMA.get(schema) if isinstance(schema, str) else None
    if cls is None:
        shown = repr(schema)[:80] if schema is not None else "missing"
        known = ", ".join([*BY_SCHEMA, CROP_SCHEMA, INSTANCE_CROP_SCHEMA])
        raise MessageError(f"bad message: schema {shown} is not one of {known}")
    return _validate(cls, obj, schema.split(".", 1)[1].split("/")[0] + " message")


def decode_command(payload: bytes) -> CommandMessage:
    """Validate a command payload; ``MessageError`` (with ``command_id`` when readable) for anything else."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageError(f"bad command: payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_COMMAND_PAYLOAD:
        raise MessageError(f"bad command: {len(payload)} bytes is more than the {MAX_COMMAND_PAYLOAD} accepted")
    obj = _load_json(payload, "command")
    raw_id = obj.get("id")
    command_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None
    cmd = obj.get("cmd")
    if isinstance(cmd, str) and cmd not in COMMANDS:
        raise MessageError(f"unknown command {cmd[:64]!r} (valid: {', '.join(COMMANDS)})", command_id)
    return _validate(CommandMessage, obj, "command", command_id)


def model_identity(info: ModelInfo | None) -> ModelIdentity | None:
    """The ``ModelIdentity`` a message names."""
    return None if info is None else ModelIdentity(info.name, info.version, info.sha256)


__all__ = ["COMMANDS", "COMMAND_SCHEMA", "CROP_CONTENT_TYPE", "CROP_SCHEMA", "CommandMessage", "CommandResultMessage",
           "CropMessage", "Encoded", "INSTANCES_SCHEMA", "INSTANCE_CROP_SCHEMA", "InstanceCropMessage",
           "InstancesMessage", "JSON_CONTENT_TYPE", "MASK_SCHEMA", "METRICS_SCHEMA", "MaskMessage", "Message",
           "MessageError", "MetricsMessage", "ModelInfo", "RESULT_SCHEMA", "STATUS_SCHEMA", "StatusMessage",
           "decode", "decode_command", "encode_command_result", "encode_crop",
           "encode_instances", "encode_mask", "encode_metrics", "encode_status", "model_identity", "new_msg_id"]
__all__ += ["EVENT_SCHEMA", "EventMessage", "ZONE_STATE_SCHEMA", "ZoneStateMessage", "encode_event",
            "encode_zone_state"]
