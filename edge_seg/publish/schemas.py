"""The pydantic models of the MQTT messages (see ``edge_seg.publish.messages`` for the contract).

Data messages are strict about types and ignore unknown fields (``extra="ignore"``: newer devices
may add fields within a schema version); commands forbid unknown fields.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from edge_seg.publish import rle

MASK_SCHEMA = "edge_seg.mask/v1"
INSTANCES_SCHEMA = "edge_seg.instances/v1"
CROP_SCHEMA = "edge_seg.crop/v1"
INSTANCE_CROP_SCHEMA = "edge_seg.instance_crop/v1"
STATUS_SCHEMA = "edge_seg.status/v1"
METRICS_SCHEMA = "edge_seg.metrics/v1"
COMMAND_SCHEMA = "edge_seg.cmd/v1"
RESULT_SCHEMA = "edge_seg.cmd_result/v1"
EVENT_SCHEMA = "edge_seg.event/v1"
ZONE_STATE_SCHEMA = "edge_seg.zone_state/v1"
JSON_CONTENT_TYPE = "application/json"
CROP_CONTENT_TYPE = "application/vnd.edge-seg.crop"
JPEG_MAGIC = b"\xff\xd8"
COMMANDS = ("ping", "snapshot", "set_policy", "reload", "update_model", "rollback")
MAX_PAYLOAD = 16 * 1024 * 1024  # data messages (the broker's own limit is usually far lower)
MAX_COMMAND_PAYLOAD = 64 * 1024
MAX_SNAPSHOT_B64 = 96 * 1024  # an event's optional JPEG (base64): small, so an event stays one small message
MAX_DEPTH = 32  # JSON nesting accepted in any message
DEVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # also a safe directory name and MQTT topic level
MSG_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def b64decode(text: str, field: str = "png") -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field!r} is not valid base64") from None


Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
MsgId = Annotated[str, Field(pattern=MSG_ID_PATTERN)]
Seq = Annotated[int, Field(ge=0, lt=2**63)]
Ts = Annotated[float, Field(ge=0)]
Side = Annotated[int, Field(ge=1, le=rle.MAX_SIDE)]
Size = Annotated[list[Side], Field(min_length=2, max_length=2)]
Name = Annotated[str, Field(max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)


class ModelInfo(_Strict):
    name: Name
    version: Name
    sha256: Name

    @classmethod
    def of(cls, model: Any) -> ModelInfo | None:
        if model is None:
            return None
        if isinstance(model, ModelInfo):
            return model
        if isinstance(model, dict):
            return cls.model_validate(model)
        return cls(name=str(model.name), version=str(model.version), sha256=str(model.sha256))


class ClassRLE(_Strict):
    id: Annotated[int, Field(ge=0, le=255)]
    name: Name | None = None
    counts: Annotated[str, Field(min_length=1)]


class _Envelope(_Strict):
    device: Device
    msg_id: MsgId
    seq: Seq
    ts: Ts
    camera: Device | None = None  # which camera (a device with several); optional: v1 consumers ignore it


def _check_rles(rles: list[ClassRLE], size: list[int], n_classes: int | None) -> None:
    ids = [item.id for item in rles]
    if len(set(ids)) != len(ids):
        raise ValueError("rle lists a class twice")
    for item in rles:
        if n_classes is not None and item.id >= n_classes:
            raise ValueError(f"rle class id {item.id} is not one of the {n_classes} classes")
        rle.check_counts(item.counts, size[1], size[0])


class _FrameResult(_Envelope):
    """What a mask and an instances message share: the model, the frame and the classes."""

    model: ModelInfo
    frame_size: Size
    classes: Annotated[list[Name], Field(min_length=1, max_length=256)]
    palette: Annotated[list[Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]],
                       Field(max_length=256)] = []
    frame_seq: Seq | None = None


class MaskMessage(_FrameResult):
    schema_: Literal["edge_seg.mask/v1"] = Field(alias="schema")
    mask_format: Literal["rle", "png"]
    mask_resolution: Size
    scale: Annotated[float, Field(gt=0, le=1)] = 1.0
    rle: list[ClassRLE] | None = None
    png: str | None = None
    area_fractions: dict[Name, float] = {}
    mean_confidence: float | None = None
    mean_uncertainty: float | None = None
    timings_ms: dict[Name, float] = {}

    @model_validator(mode="after")
    def _mask_present(self) -> MaskMessage:
        if self.mask_format == "rle":
            if self.rle is None or not self.rle:
                raise ValueError("mask_format 'rle' needs a non-empty 'rle' list")
            _check_rles(self.rle, self.mask_resolution, len(self.classes))
        else:
            if self.png is None:
                raise ValueError("mask_format 'png' needs 'png' (base64)")
            if rle.png_size(b64decode(self.png)) != tuple(self.mask_resolution):
                raise ValueError("the PNG's size is not mask_resolution")
        return self


class InstanceRLE(_Strict):
    """One instance: class, score, bbox (x, y, w, h frame px) and its frame-size mask as COCO compressed RLE."""

    class_id: Annotated[int, Field(ge=0, le=255)]
    name: Name | None = None
    score: Annotated[float, Field(ge=0, le=1)]
    bbox: Annotated[list[Annotated[float, Field(ge=0, le=rle.MAX_SIDE)]], Field(min_length=4, max_length=4)]
    counts: Annotated[str, Field(min_length=1)]
    track_id: Annotated[int, Field(ge=0, le=2**53)] | None = None  # once tracking is on: the same object over frames


class InstancesMessage(_FrameResult):
    """An instance model's result for one frame: one RLE per instance (highest score first)."""

    schema_: Literal["edge_seg.instances/v1"] = Field(alias="schema")
    instances: Annotated[list[InstanceRLE], Field(max_length=10000)]
    dropped: Annotated[int, Field(ge=0)] = 0  # lowest-score instances left out to fit the payload cap
    timings_ms: dict[Name, float] = {}

    @model_validator(mode="after")
    def _consistent(self) -> InstancesMessage:
        width, height = self.frame_size
        for k, item in enumerate(self.instances):
            if item.class_id >= len(self.classes):
                raise ValueError(f"instance {k}: class id {item.class_id} is not one of the "
                                 f"{len(self.classes)} classes")
            rle.check_counts(item.counts, height, width)
        return self


class _Crop(_Envelope):
    """What both crop messages share: the frame, the box (x, y, w, h frame px) and the JPEG after the header."""

    model: ModelInfo
    frame_size: Size
    frame_seq: Seq | None = None
    classes: Annotated[list[Name], Field(max_length=256)] | None = None
    bbox: Annotated[list[Annotated[int, Field(ge=0, le=rle.MAX_SIDE)]], Field(min_length=4, max_length=4)]
    score: float
    mask_resolution: Size
    jpeg_bytes: Annotated[int, Field(ge=0)]
    jpeg: bytes = Field(default=b"", exclude=True, repr=False)

    def _check_frame(self) -> None:
        x, y, w, h = self.bbox
        if w < 1 or h < 1 or x + w > self.frame_size[0] or y + h > self.frame_size[1]:
            raise ValueError(f"bbox {self.bbox} is not inside the {self.frame_size[0]}x{self.frame_size[1]} frame")
        if [w, h] != self.mask_resolution:
            raise ValueError("mask_resolution is not the bbox size")
        if len(self.jpeg) != self.jpeg_bytes:
            raise ValueError(f"{len(self.jpeg)} bytes follow the header, it says jpeg_bytes {self.jpeg_bytes}")
        if not self.jpeg.startswith(JPEG_MAGIC):
            raise ValueError("the bytes after the header are not a JPEG")


class CropMessage(_Crop):
    """An uncertain region of a semantic model: ``score`` is its mean uncertainty, ``rle`` the local class map."""

    schema_: Literal["edge_seg.crop/v1"] = Field(alias="schema")
    rle: Annotated[list[ClassRLE], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> CropMessage:
        self._check_frame()
        _check_rles(self.rle, self.mask_resolution, len(self.classes) if self.classes else None)
        return self


Reason = Literal["low_score", "overlap", "ambiguous_class"]


class RunnerUp(_Strict):
    class_id: Annotated[int, Field(ge=0, le=255)]
    score: Annotated[float, Field(ge=0, le=1)]


class CropInstanceRLE(InstanceRLE):
    """An instance in an instance crop: ``counts`` is its mask at the crop's size; ``reasons`` empty if not flagged."""

    reasons: Annotated[list[Reason], Field(max_length=3)] = []
    runner_up: RunnerUp | None = None


class InstanceCropMessage(_Crop):
    """Uncertain instances of an instance model: ``score`` is the largest uncertainty, ``reasons`` their union."""

    schema_: Literal["edge_seg.instance_crop/v1"] = Field(alias="schema")
    reasons: Annotated[list[Reason], Field(min_length=1, max_length=3)]
    instances: Annotated[list[CropInstanceRLE], Field(min_length=1, max_length=10000)]

    @model_validator(mode="after")
    def _consistent(self) -> InstanceCropMessage:
        self._check_frame()
        width, height = self.mask_resolution
        for k, item in enumerate(self.instances):
            if self.classes and item.class_id >= len(self.classes):
                raise ValueError(f"instance {k}: class id {item.class_id} is not one of the "
                                 f"{len(self.classes)} classes")
            if len(set(item.reasons)) != len(item.reasons):
                raise ValueError(f"instance {k} lists a reason twice")
            rle.check_counts(item.counts, height, width)
        flagged = {r for item in self.instances for r in item.reasons}
        if len(set(self.reasons)) != len(self.reasons) or set(self.reasons) != flagged:
            raise ValueError(f"reasons {self.reasons} are not those of the instances ({sorted(flagged) or 'none'})")
        return self


class StatusMessage(_Envelope):
    schema_: Literal["edge_seg.status/v1"] = Field(alias="schema")
    online: bool
    model: ModelInfo | None = None
    fps: float | None = None
    uptime_s: float | None = None
    source_state: Name | None = None
    degraded: Name | None = None  # what is wrong while the device runs on, e.g. "source down since …"
    outbox_depth: Annotated[int, Field(ge=0)] | None = None
    extra: dict[str, Any] = {}


class MetricsMessage(_Envelope):
    schema_: Literal["edge_seg.metrics/v1"] = Field(alias="schema")
    summary: dict[str, Any]


class CommandResultMessage(_Envelope):
    schema_: Literal["edge_seg.cmd_result/v1"] = Field(alias="schema")
    command_id: Annotated[str, Field(max_length=128)] | None = None
    ok: bool
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=4096)] | None = None


ZoneName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TrackIds = Annotated[list[Annotated[int, Field(ge=0, lt=2**63)]], Field(max_length=1000)]


class EventMessage(_Envelope):
    """A zone event (``edge_seg.postprocess.zones``): ``kind`` of ``class_`` in ``zone``; ``ts`` is the capture time."""

    schema_: Literal["edge_seg.event/v1"] = Field(alias="schema")
    zone: ZoneName
    class_: Name = Field(alias="class")
    kind: Literal["enter", "leave", "occupied", "cleared"]
    track_ids: TrackIds = []
    value: Annotated[float, Field(ge=0)]  # the area fraction or the count when it happened
    frame_seq: Seq | None = None
    # optional (zone ``snapshot: true``): base64 JPEG of the frame's overlay and its [width, height]; v1
    # consumers that predate them ignore them (data messages ignore unknown fields)
    snapshot_jpeg: Annotated[str, Field(max_length=MAX_SNAPSHOT_B64)] | None = None
    snapshot_size: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=2, max_length=2)] | None \
        = None

    @model_validator(mode="after")
    def _consistent(self) -> EventMessage:
        if self.kind in ("enter", "leave") and len(self.track_ids) != 1:
            raise ValueError(f"a {self.kind} event names exactly one track, got {len(self.track_ids)}")
        if (self.snapshot_jpeg is None) != (self.snapshot_size is None):
            raise ValueError("snapshot_jpeg and snapshot_size come together")
        if self.snapshot_jpeg is not None and not b64decode(self.snapshot_jpeg, "snapshot_jpeg").startswith(JPEG_MAGIC):
            raise ValueError("snapshot_jpeg is not a base64 JPEG")
        return self


class ZoneClassState(_Strict):
    occupied: bool
    count: Annotated[int, Field(ge=0)] | None = None
    area: Annotated[float, Field(ge=0, le=1)] | None = None
    track_ids: TrackIds = []
    since: Ts | None = None


class ZoneStateMessage(_Envelope):
    """The retained state of one zone (``zone/{zone}/state``): ``occupied`` by any class, and per class."""

    schema_: Literal["edge_seg.zone_state/v1"] = Field(alias="schema")
    zone: ZoneName
    occupied: bool
    classes: Annotated[dict[Name, ZoneClassState], Field(min_length=1, max_length=64)]
    frame_seq: Seq | None = None


class CommandMessage(BaseModel):
    """A command to a device (``{prefix}/{device}/cmd``); ``sig`` when signatures are required."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
    schema_: Literal["edge_seg.cmd/v1"] | None = Field(default=None, alias="schema")
    id: Annotated[str, Field(min_length=1, max_length=128)]
    cmd: Literal["ping", "snapshot", "set_policy", "reload", "update_model", "rollback"]
    args: dict[str, Any] = {}
    ts: Ts | None = None
    sig: Annotated[str, Field(max_length=1024)] | None = None


class UpdateModelArgs(BaseModel):
    """``update_model`` args, strict: ``"false"`` is not a boolean, ``"120"`` not a number, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    allow_downgrade: StrictBool = False
    wait_s: Annotated[float, Field(ge=0, le=3600)] = 120.0  # strict: an int or a float, never a bool or a string


class RollbackArgs(BaseModel):
    """``rollback`` args, strict: ``expect_current`` (only roll back while that model id is current: a newer install
    or a rollback the device did itself wins), ``reason`` (kept in the store's history, the model left is marked bad
    unless ``mark_bad`` is false), ``wait_s`` for the hot swap."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
    expect_current: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    reason: Annotated[StrictStr, Field(max_length=256)] = "rollback command"
    mark_bad: StrictBool = True
    wait_s: Annotated[float, Field(ge=0, le=3600)] = 120.0


Message = Union[MaskMessage, InstancesMessage, CropMessage, InstanceCropMessage, StatusMessage,  # noqa: UP007
                MetricsMessage, CommandResultMessage, EventMessage, ZoneStateMessage]
BY_SCHEMA: dict[str, type[BaseModel]] = {MASK_SCHEMA: MaskMessage, INSTANCES_SCHEMA: InstancesMessage,
                                          STATUS_SCHEMA: StatusMessage,
                                          METRICS_SCHEMA: MetricsMessage, RESULT_SCHEMA: CommandResultMessage,
                                          EVENT_SCHEMA: EventMessage, ZONE_STATE_SCHEMA: ZoneStateMessage}


__all__ = ["BY_SCHEMA", "COMMANDS", "COMMAND_SCHEMA", "CROP_CONTENT_TYPE", "CROP_SCHEMA", "ClassRLE", "CommandMessage",
           "CommandResultMessage", "CropInstanceRLE", "CropMessage", "DEVICE_PATTERN", "INSTANCES_SCHEMA",
           "INSTANCE_CROP_SCHEMA", "InstanceCropMessage", "InstanceRLE", "InstancesMessage", "JPEG_MAGIC",
           "JSON_CONTENT_TYPE", "MASK_SCHEMA", "MAX_COMMAND_PAYLOAD", "MAX_DEPTH", "MAX_PAYLOAD", "METRICS_SCHEMA",
           "MSG_ID_PATTERN", "MaskMessage", "Message", "MetricsMessage", "ModelInfo", "RESULT_SCHEMA", "Reason",
           "RunnerUp", "STATUS_SCHEMA", "StatusMessage", "UpdateModelArgs", "b64decode"]
__all__ += ["RollbackArgs"]
__all__ += ["EVENT_SCHEMA", "EventMessage", "ZONE_STATE_SCHEMA", "ZoneClassState", "ZoneStateMessage"]
