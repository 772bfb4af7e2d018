"""The parts of one camera of ``edge-seg run``: its source (behind the reconnect watchdog) and its sink stages.

``edge_seg.loop.runner.build`` calls these once per camera. With one camera everything is what it
always was (the stages become the loop's own); with several, each camera gets its own tracker, zone
tracker, overlay, crop extractor (an equal share of the crop budget), metrics, preview view, video and
JSONL file (``NAME`` added to the file name: ``out.mp4`` → ``out-front.mp4``), while the one MQTT
publisher is the loop's (``Pipeline.stages``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge_seg.config import CameraConfig, Config
from edge_seg.loop.camera import close_stages
from edge_seg.loop.stats import LoopStats

log = logging.getLogger(__name__)


@dataclass
class CameraParts:
    """What the stages of one camera need to know besides the config."""

    camera: CameraConfig
    name: str | None  # None: the only camera
    stats: LoopStats
    metrics: object  # edge_seg.loop.metrics.Metrics
    share: int = 1  # how many cameras split the device-wide budgets (crops)
    preview: object | None = None  # the device's PreviewServer, if any
    source: object = None  # the camera's (resilient) source


def open_camera(camera: CameraConfig, stats: LoopStats, events: list, listeners: list,
                lores: tuple[int, int] | None = None, many: bool = False):
    """``camera``'s source behind a reconnect watchdog; ``lores``: the model input size, for a camera that can
    scale a second stream to it (picamera2); ``many``: one of several cameras (its name goes in the log lines).

    The source is opened here, so a bad URI fails before any thread starts; a live camera or stream
    that is only unavailable (unplugged, busy, not up yet at boot) is retried with backoff instead.
    """
    from edge_seg.sources import SourceUnavailable, open_source
    from edge_seg.sources.reconnect import ResilientSource

    who = f" (camera {camera.name})" if many else ""

    def factory():
        return open_source(camera.uri, loop=camera.loop, fps=camera.fps, lores=lores)

    def on_event(event) -> None:
        events.append(event)
        if event.kind == "reopened":
            stats.reconnects += 1
        for listener in listeners:
            listener(event)
        log.warning("source %s%s: %s", event.kind, who, event.detail)

    try:
        first = factory()
    except SourceUnavailable as exc:
        log.warning("source unavailable%s: %s; retrying with backoff (at most every %g s)", who, exc,
                    camera.backoff_cap_s)
        first = None
    return ResilientSource(factory, deadline=camera.deadline_s, backoff_cap=camera.backoff_cap_s, on_event=on_event,
                           first=first)


def per_camera(path: Path | None, name: str | None) -> Path | None:
    """``path`` with ``-NAME`` before its suffix (several cameras), or ``path`` itself (one camera)."""
    if path is None or name is None:
        return path
    path = Path(path)
    return path.with_name(f"{path.stem}-{name}{path.suffix}")


def camera_stages(config: Config, segmenter, parts: CameraParts) -> list:
    """The sink stages of one camera; if one cannot be made, those already made are closed."""
    stages: list = []
    try:
        _add_stages(stages, config, segmenter, parts)
    except Exception:
        close_stages(stages, "after a failed start")  # the first error is the one to report
        raise
    return stages


def _add_stages(stages: list, config: Config, segmenter, parts: CameraParts) -> None:
    from edge_seg.loop.sinks import JsonlSink, MetricsStage, OverlayStage, VideoSink
    from edge_seg.view.overlay import Overlay

    cam, manifest = parts.camera, segmenter.manifest
    if config.tracking.enabled:  # first: every later stage sees the track ids
        from edge_seg.loop.track_stage import TrackStage
        from edge_seg.postprocess.tracking import Tracker

        stages.append(TrackStage(Tracker(**config.tracking.tracker_options())))
        if manifest.task != "instance":
            log.warning("tracking.enabled: %s is a %s model, which has no instances to track",
                        manifest.name, manifest.task)
    ov = config.overlay
    drawer = None  # draws the overlay; a stage when the video needs every frame, else lazily for the preview
    if ov.enabled and (config.preview.enabled or config.output.video):  # redaction: the pipeline's
        zones = None
        if cam.zones:
            from edge_seg.view.zone_layer import ZoneLayer

            zones = ZoneLayer(cam.zones)
        drawer = OverlayStage(Overlay(alpha=ov.alpha, contours=ov.contours, legend=ov.legend), zones=zones)
        if config.output.video:
            stages.append(drawer)
    if config.uncertainty.enabled:
        from edge_seg.loop.sinks import CropStage
        from edge_seg.postprocess.uncertainty import CropExtractor

        crops = config.uncertainty.crops
        if parts.share > 1:  # the device's crop budget, split evenly between the cameras
            crops = crops.model_copy(update={"crops_per_minute": crops.crops_per_minute // parts.share,
                                             "bytes_per_minute": crops.bytes_per_minute // parts.share})
        stages.append(CropStage(CropExtractor(crops)))
    stages.append(MetricsStage(parts.metrics, parts.stats))
    zone_summary = None
    if cam.zones:  # one ZoneTracker per camera
        from edge_seg.loop.zone_stage import ZoneStage
        from edge_seg.postprocess.zones import ZoneTracker, check_classes

        check_classes(cam.zones, manifest.classes)  # fails before any thread starts
        stages.append(ZoneStage(ZoneTracker(cam.zones), parts.metrics))
        zone_summary = stages[-1].summary
    if parts.preview is not None:
        from edge_seg.loop.sinks import PreviewSink

        info = {"model": f"{manifest.name} {manifest.version}", "source": cam.uri}
        zones, stats, source = zone_summary or list, parts.stats, parts.source
        stages.append(PreviewSink(parts.preview, lambda: {**stats.snapshot(), **info, "zones": zones(),
                                                           "source_state": source.state},
                                  draw=drawer.draw if drawer is not None else None,
                                  tracking=config.tracking.enabled, camera=parts.name))
    if config.output.video:
        rate = cam.fps or getattr(parts.source, "nominal_fps", None) or 15.0  # the source's own rate if it has one
        stages.append(VideoSink(per_camera(config.output.video, parts.name), fps=rate))
    if config.output.jsonl:
        stages.append(JsonlSink(per_camera(config.output.jsonl, parts.name), camera=parts.name))


def start_preview(config: Config, metrics):
    """The preview server of ``preview:`` (started), or None when it is off."""
    if not config.preview.enabled:
        return None
    from edge_seg.view.access import read_token_file
    from edge_seg.view.preview import PreviewServer

    pv, cameras = config.preview, config.cameras()
    token = read_token_file(pv.token_file) if pv.token_file is not None else pv.token
    server = PreviewServer(host=pv.host, port=pv.port, metrics=metrics, max_fps=pv.max_fps,
                           max_clients=pv.max_clients, request_timeout_s=pv.request_timeout_s,
                           write_timeout_s=pv.write_timeout_s, token=token, allow_open=pv.allow_open,
                           cameras=[cam.name for cam in cameras] if len(cameras) > 1 else ())
    return server.start()


__all__ = ["CameraParts", "camera_stages", "open_camera", "per_camera", "start_preview"]
