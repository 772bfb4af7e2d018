"""The device configuration (YAML) as pydantic v2 models: one place for every default.

``load_config(path)`` reads and validates a file; errors name the field path and what was
expected, one line each (``source.deadline_s: must be > 0, got -1``). Unknown fields are
rejected, so a typo never passes silently. ``edge-seg config schema`` prints the JSON Schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_seg.errors import EdgeSegError, FieldValueError, field_path
from edge_seg.postprocess.uncertainty import CropConfig
from edge_seg.postprocess.zones import ZoneConfig, check_zones
from edge_seg.publish.mqtt_config import MqttConfig, PolicyConfig
from edge_seg.view.preview_config import PreviewConfig


class ConfigError(EdgeSegError):
    """The device config file is missing, not YAML, or has invalid fields."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf/.nan are never a setting


class DeviceConfig(_Section):
    name: str = Field(default="edge-01", pattern=r"^[A-Za-z0-9_.-]+$", description="device id (MQTT topics, metrics)")
    state_dir: Path = Field(default=Path("/var/lib/edge-seg"), description="models, outbox, engine cache")
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. {site: north}: in the MQTT status "
                                   "(extra.labels), what 'edge-seg fleet rollout --select' matches")


class ModelConfig(_Section):
    path: Path | None = Field(default=None, description="model dir, manifest.json or model file; None: bundled")
    backend: str | None = Field(default=None, description="runtime; None: by model file suffix")
    num_threads: int | None = Field(default=None, ge=1, le=64)
    entropy: bool = False
    norm: Literal["imagenet", "unit", "minus1to1", "raw"] | None = Field(
        default=None, description="input normalisation preset over the manifest's (PyTorch models: imagenet)")
    input_size: tuple[Annotated[int, Field(ge=1, le=16384)], Annotated[int, Field(ge=1, le=16384)]] | None = Field(
        default=None, description="[width, height] of a model input with dynamic dims")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str | None) -> str | None:
        from edge_seg.backends.registry import available  # names only: no runtime is imported

        if name is not None and name not in available():
            raise ValueError(f"unknown backend (valid: {', '.join(available())})")
        return name


class SourceConfig(_Section):
    uri: str = Field(default="synthetic://", description="file://, rtsp://, v4l2:///dev/videoN, csi://N, "
                                                         "picam://N, images://DIR, synthetic://")
    loop: bool = Field(default=True, description="at end of a file or image dir: start again (else stop)")
    fps: float | None = Field(default=None, gt=0, description="pace file/image/synthetic sources")
    deadline_s: float = Field(default=2.0, gt=0, description="no frame for this long (at least 3 frame periods "
                                                            "of a slower source): reopen the source")
    backoff_cap_s: float = Field(default=30.0, gt=0)

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        from edge_seg.sources import SCHEMES, uri_scheme, valid_schemes  # no capture module is imported
        from edge_seg.sources._common import redact

        if not uri.strip():
            raise ValueError(f"empty source URI (valid: {valid_schemes()})")
        scheme = uri_scheme(uri)
        if scheme is not None and scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {uri[:len(scheme)]}:// (valid: {valid_schemes()}), got {redact(uri)!r}")
        return uri


CAMERA_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # one MQTT topic level, a metrics label, a file-name part
RESERVED_CAMERA_NAMES = ("cmd", "crop", "event", "mask", "metrics", "status", "zone")  # the device's own topics


class CameraConfig(SourceConfig):
    """One camera of ``sources:``: a source plus what may differ per camera (None: the device-wide setting)."""

    name: str = Field(pattern=CAMERA_PATTERN, description="camera id: topics {prefix}/{device}/{name}/mask|crop|"
                                                          "event, metrics label, file names")
    every_n: int | None = Field(default=None, ge=1, description="segment every Nth frame (default pipeline.every_n)")
    roi: tuple[int, int, int, int] | None = Field(default=None, description="x, y, width, height (default "
                                                                            "pipeline.roi)")
    zones: list[ZoneConfig] | None = Field(default=None, max_length=64, description="this camera's zones "
                                                                                    "(default: the top-level zones)")
    publish: PolicyConfig | None = Field(default=None, description="publish policy fields that differ from "
                                                                   "mqtt.policy for this camera")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_CAMERA_NAMES:
            raise ValueError(f"{name!r} is a device topic (reserved: {', '.join(RESERVED_CAMERA_NAMES)}): "
                             "name the camera otherwise")
        return name

    @field_validator("roi")
    @classmethod
    def _roi(cls, roi: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        return check_roi(roi)

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, zones: list[ZoneConfig] | None) -> list[ZoneConfig] | None:
        if zones is not None:
            check_zones(zones)
        return zones


def check_roi(roi: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """``roi`` when it is a valid [x, y, width, height] (ValueError otherwise)."""
    if roi is not None and (roi[0] < 0 or roi[1] < 0 or roi[2] <= 0 or roi[3] <= 0):
        raise ValueError(f"[x, y, width, height] needs x, y >= 0 and width, height > 0, got {list(roi)}")
    return roi


class TilingConfig(_Section):
    enabled: bool = False
    min_scale: float = Field(default=2.5, gt=1, description="tile when the frame is this many times the input")
    overlap: float = Field(default=0.25, ge=0, lt=0.9)


class PipelineConfig(_Section):
    every_n: int = Field(default=1, ge=1, description="segment every Nth frame")
    roi: tuple[int, int, int, int] | None = Field(default=None, description="x, y, width, height in frame pixels")
    tiling: TilingConfig = TilingConfig()
    max_frames: int | None = Field(default=None, ge=1, description="stop after this many segmented frames")
    batch: Literal["auto"] | int = Field(default=1, description="several cameras: frames of up to this many in "
                                         "one invoke where the backend allows (ONNX dynamic batch, LiteRT); auto: "
                                         "one per camera")

    @field_validator("batch")
    @classmethod
    def _batch(cls, batch: str | int) -> str | int:
        if isinstance(batch, int) and not 1 <= batch <= 64:
            raise ValueError(f"must be auto or 1..64, got {batch}")
        return batch

    @field_validator("roi")
    @classmethod
    def _roi(cls, roi: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        return check_roi(roi)


class SmoothingConfig(_Section):
    enabled: bool = False
    alpha: float = Field(default=0.5, gt=0, le=1)
    scene_cut: float = Field(default=0.35, gt=0, le=1)
    hysteresis_high: float = Field(default=0.6, gt=0, lt=1)
    hysteresis_low: float = Field(default=0.4, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> "SmoothingConfig":
        if self.hysteresis_low > self.hysteresis_high:
            raise FieldValueError("hysteresis_low", f"must not exceed hysteresis_high ({self.hysteresis_high}), "
                                                    f"got {self.hysteresis_low}")
        return self


class TrackingConfig(_Section):
    """Stable ids for the instances of an instance model (``edge_seg.postprocess.tracking``); off by default:
    semantic and binary models have no instances, and ids cost nothing only where something reads them."""

    enabled: bool = False
    high_score: float = Field(default=0.5, ge=0, le=1, description="detections at least this sure are matched first")
    low_score: float = Field(default=0.1, ge=0, le=1, description="below this a detection is ignored")
    new_track_score: float = Field(default=0.6, ge=0, le=1, description="least score that starts a track")
    match_iou: float = Field(default=0.2, gt=0, le=1, description="least IoU of a track and a high-score detection")
    low_match_iou: float = Field(default=0.5, gt=0, le=1, description="least IoU with a low-score detection")
    min_hits: int = Field(default=3, ge=1, le=1000, description="frames a track needs before it gives its id")
    max_age: int = Field(default=30, ge=0, le=100000, description="segmented frames a lost track is kept")
    iou: Literal["box", "mask"] = Field(default="mask", description="overlap of masks (keeps crossing objects "
                                        "apart), or of boxes (cheaper)")
    class_aware: bool = Field(default=False, description="match only instances of the track's class")

    @model_validator(mode="after")
    def _ordered(self) -> "TrackingConfig":
        if self.low_score > self.high_score:
            raise FieldValueError("low_score", f"must not exceed high_score ({self.high_score}), got {self.low_score}")
        return self

    def tracker_options(self) -> dict:
        """Keyword arguments of ``Tracker``."""
        return self.model_dump(exclude={"enabled"})


class UncertaintyConfig(_Section):
    enabled: bool = Field(default=False, description="extract crops of uncertain regions for labelling")
    crops: CropConfig = CropConfig()


class OverlayConfig(_Section):
    enabled: bool = True
    alpha: float = Field(default=0.5, ge=0, le=1)
    contours: bool = False
    legend: bool = True
    redact_classes: list[str | int] = Field(default_factory=list, description="classes to hide")
    redact_mode: Literal["fill", "blur"] = "fill"
    upsample: Literal["bilinear", "nearest"] = Field(
        default="bilinear", description="frame-size class map (overlay, redaction, crops): bilinear upsampling of "
                                        "uint8 probabilities (smooth edges) or nearest resize of the model-resolution "
                                        "label map (cheapest, for the smallest devices)")


class OutputConfig(_Section):
    video: Path | None = Field(default=None, description="write the overlay video here (.mp4)")
    jsonl: Path | None = Field(default=None, description="append one JSON summary per frame here")


class OtaConfig(_Section):
    """Signed model updates (``edge-seg model install/update``) and hot reload in the running service."""

    trusted_keys: list[Path] = Field(default_factory=lambda: [Path("/etc/edge-seg/keys")],
                                     description="Ed25519 public keys (files, or dirs of *.pub/*.pem) bundles must "
                                                 "be signed by")
    max_bundle_mb: float = Field(default=256.0, gt=0, description="refuse bigger downloads and bundles")
    allowed_url_prefixes: list[str] = Field(default_factory=list, max_length=64,
                                            description="http(s) URL prefixes the MQTT update_model command may "
                                                        "download from (empty: none; the CLI is not limited)")
    smoke_frames: int = Field(default=5, ge=1, le=100, description="sample frames the install smoke test segments")
    max_latency_factor: float = Field(default=3.0, ge=1, description="new model ms/frame <= this x the current's")
    hot_reload: bool = Field(default=True, description="the running loop swaps to a new 'current' by itself")
    watch_interval_s: float = Field(default=2.0, gt=0, description="how often the loop checks 'current'")
    shadow_frames: int = Field(default=10, ge=0, description="live frames run on both models before a swap (0: off)")
    min_agreement: float = Field(default=0.0, ge=0, le=1, description="least mIoU between the two models' class "
                                                                       "maps in the shadow phase (0: report only)")
    probation_frames: int = Field(default=30, ge=1, description="frames checked after a swap before confirming")
    probation_s: float = Field(default=60.0, gt=0, description="probation ends after this even with fewer frames")
    max_confidence_drop: float = Field(default=0.35, ge=0, le=1, description="roll back when mean confidence "
                                                                             "falls by more than this")
    max_starts: int = Field(default=3, ge=1, description="service starts on an unconfirmed model before rollback")
    keep: int = Field(default=3, ge=2, description="models 'edge-seg model gc' keeps")
    min_free_mb: float = Field(default=32.0, ge=0, description="below this much free space in the state dir, "
                                                               "a start first removes downloads and old models")


    @field_validator("allowed_url_prefixes")
    @classmethod
    def _http_prefixes(cls, prefixes: list[str]) -> list[str]:
        from edge_seg.publish.commands_urls import prefix_problem

        for prefix in prefixes:
            problem = prefix_problem(prefix)
            if problem is not None:
                raise ValueError(f"{prefix!r} is not an http(s) URL prefix ({problem}), e.g. "
                                 "https://models.example.com/fleet/")
        return prefixes


class ServiceConfig(_Section):
    """systemd integration (active when NOTIFY_SOCKET is set, i.e. under a Type=notify unit)."""

    notify: bool = Field(default=True, description="sd_notify READY/STATUS/WATCHDOG/STOPPING")
    status_interval_s: float = Field(default=10.0, gt=0, description="how often STATUS= is refreshed")


class Config(_Section):
    """The whole device config."""

    device: DeviceConfig = DeviceConfig()
    model: ModelConfig = ModelConfig()
    source: SourceConfig = SourceConfig()
    sources: list[CameraConfig] = Field(default_factory=list, max_length=64,
                                        description="several cameras sharing one model (instead of source:)")
    pipeline: PipelineConfig = PipelineConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    tracking: TrackingConfig = TrackingConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    overlay: OverlayConfig = OverlayConfig()
    preview: PreviewConfig = PreviewConfig()
    output: OutputConfig = OutputConfig()
    mqtt: MqttConfig = MqttConfig()
    ota: OtaConfig = OtaConfig()
    service: ServiceConfig = ServiceConfig()
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=64, description="polygons of the frame "
                                    "watched per class: events, retained state (edge_seg.postprocess.zones)")

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, zones: list[ZoneConfig]) -> list[ZoneConfig]:
        check_zones(zones)
        return zones

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for camera in sources:
            if camera.name in seen:
                raise ValueError(f"camera name {camera.name!r} is used twice: give each camera its own name")
            seen.add(camera.name)
        return sources

    @model_validator(mode="after")
    def _one_kind_of_source(self) -> "Config":
        if self.sources and self.source != SourceConfig():
            raise ValueError("set source: (one camera) or sources: (several), not both")
        return self

    def cameras(self) -> list[CameraConfig]:
        """Every camera with its settings resolved (``sources:``, or ``source:`` as one camera named ``cam0``)."""
        cams = self.sources or [CameraConfig(name="cam0", **self.source.model_dump())]
        out = []
        for cam in cams:
            policy = self.mqtt.policy
            if cam.publish is not None:
                changed = cam.publish.model_dump(exclude_unset=True)  # only what the camera sets
                policy = PolicyConfig.model_validate({**policy.model_dump(), **changed})
            out.append(cam.model_copy(update={
                "every_n": cam.every_n or self.pipeline.every_n,
                "roi": cam.roi if cam.roi is not None else self.pipeline.roi,
                "zones": cam.zones if cam.zones is not None else list(self.zones), "publish": policy}))
        return out


_SCALAR = (int, float, str, bool, type(None))


def _describe(err: dict) -> str:
    raised = (err.get("ctx") or {}).get("error")  # the exception a validator raised (type value_error)
    loc = list(err["loc"]) + ([raised.field] if isinstance(raised, FieldValueError) else [])
    where = field_path(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    msg = str(raised) if err["type"] == "value_error" and raised is not None else err["msg"]
    msg = f"{msg[0].lower()}{msg[1:]}"
    got = err.get("input")
    if err["type"] == "missing" or "input" not in err or "got " in msg or (isinstance(got, (dict, list))
                                                                             and err["type"] == "value_error"):
        return f"{where}: {msg}"  # the message says what it got, or the input is a whole section
    if isinstance(got, (list, tuple)) and all(isinstance(v, _SCALAR) for v in got) and len(got) <= 8:
        got_text = json.dumps(list(got))
    else:
        got_text = json.dumps(got) if isinstance(got, _SCALAR) else type(got).__name__
    return f"{where}: {msg}, got {got_text}"


def parse_config(data: dict | None, source: str = "config") -> Config:
    """Validate a config mapping; errors list each bad field path on one line, '; '-separated."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        problems = "; ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML device config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}): "
                          "save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a device config") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return parse_config(data, str(path))


def json_schema() -> str:
    """The JSON Schema of the config file."""
    return json.dumps(Config.model_json_schema(), indent=2) + "\n"
