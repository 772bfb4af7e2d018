"""``edge-seg run``: build the loop from a ``Config`` (plus quick flags) and run it until stopped.

SIGTERM and SIGINT stop the loop gracefully: in-flight frames are finished, sinks closed, and
the stats line printed.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field

from edge_seg.config import Config
from edge_seg.errors import EdgeSegError
from edge_seg.loop.assemble import CameraParts, camera_stages, open_camera, start_preview
from edge_seg.loop.camera import Camera, close_stages
from edge_seg.loop.pipeline import Pipeline
from edge_seg.loop.stats import LoopStats
from edge_seg.segmenter import DEFAULT_MODEL, Segmenter

log = logging.getLogger(__name__)


@dataclass
class Built:
    """Everything ``build`` made, so callers (tests, the service) can reach the parts."""

    pipeline: Pipeline
    segmenter: Segmenter
    preview: object | None = None
    metrics: object | None = None
    publisher: object | None = None
    events: list = field(default_factory=list)


def _source_state(metrics, event) -> None:
    """``source_up``: 1 from the first frame after a reopen (a reopen alone proves nothing), 0 on a failure."""
    if event.kind == "stuck":
        metrics.source_stuck()
    elif event.kind == "recovered":
        metrics.set_source_up(True)
    elif event.kind in ("stalled", "open_failed", "ended"):
        metrics.set_source_up(False)


def _redactor(config: Config, segmenter: Segmenter):
    """The ``Redactor`` of ``overlay.redact_classes`` (None without classes), checked against the model's classes.

    The pipeline runs it on every frame before any stage: crops, snapshots, preview, video and every
    message carry redacted pixels only, whichever stages are on.
    """
    from edge_seg.errors import InputError
    from edge_seg.view.redact import Redactor

    ov = config.overlay
    if not ov.redact_classes:
        return None
    redactor = Redactor(ov.redact_classes, mode=ov.redact_mode)
    try:
        redactor.check(segmenter.manifest.classes)
    except InputError as err:
        raise InputError(f"overlay.redact_classes: {err}") from None
    log.info("redacting %s (%s) in every frame", ", ".join(map(str, ov.redact_classes)), ov.redact_mode)
    return redactor


def _quality(metrics) -> dict:
    """Drift against the model's baseline and mean uncertainty for the metrics message (``edge-seg fleet status``)."""
    if metrics is None:
        return {}
    snap = metrics.snapshot()
    return {"drift_js": snap["drift_js"], "mean_uncertainty": snap["mean_uncertainty"]}


def _reload_active_service() -> dict:
    """The MQTT ``reload`` command: the running service looks at ``current`` again (raises the reason)."""
    from edge_seg.ota import actions as ota

    service = ota.active()
    if service is None:
        raise EdgeSegError("no running service to reload")
    return service.handle_reload()


def _publisher(config: Config, segmenter: Segmenter, stats: LoopStats, built: Built):
    """The one MQTT publisher of the device (a sink stage): after the metrics stages, so class areas are computed.

    With several cameras it publishes each camera's data on ``{prefix}/{device}/{camera}/...`` with that
    camera's publish policy, and its status lists every camera's state."""
    from edge_seg.loop.camera import degraded, source_state
    from edge_seg.ota import actions as ota
    from edge_seg.publish.mqtt import Publisher
    from edge_seg.segmentation import ModelIdentity

    m = segmenter.manifest
    cameras = config.cameras()
    multi = len(cameras) > 1
    built.publisher = Publisher(config.mqtt, device=config.device.name, state_dir=config.device.state_dir,
                                labels=config.device.labels,
                                model=ModelIdentity(m.name, m.version, segmenter.loaded.sha256),
                                classes=m.classes, source_state=lambda: source_state(built.pipeline.cameras),
                                degraded=lambda: degraded(built.pipeline.cameras),
                                summary=lambda: {"loop": stats.snapshot(), **_quality(built.metrics)},
                                reload=_reload_active_service, update_model=ota.handle_update_model,
                                rollback=ota.handle_rollback,
                                allowed_url_prefixes=config.ota.allowed_url_prefixes,
                                zones={cam.name: cam.zones for cam in cameras} if multi else cameras[0].zones,
                                zone_counts=m.task == "instance",
                                cameras={cam.name: cam.publish for cam in cameras} if multi else None,
                                camera_states=built.pipeline.camera_states if multi else None)
    outbox = built.publisher.outbox
    built.metrics.watch_outbox(lambda: outbox.stats().depth)  # read at each scrape (the outbox-growing alert)
    return built.publisher


def _cameras(config: Config, segmenter: Segmenter, stats: LoopStats, events: list) -> list[Camera]:
    """One ``Camera`` per configured camera, its source opened (closed again if a later one fails)."""
    cameras: list[Camera] = []
    configs = config.cameras()
    multi = len(configs) > 1
    try:
        for cam in configs:
            whole = cam.roi is None and not config.pipeline.tiling.enabled  # lores shows the whole view
            cam_stats = LoopStats() if multi else stats
            listeners: list = []  # the metrics' source_up, added by _add_stages
            source = open_camera(cam, cam_stats, events, listeners, lores=segmenter.input_size if whole else None,
                                 many=multi)
            cameras.append(Camera(source, name=cam.name if multi else None, every_n=cam.every_n, roi=cam.roi,
                                  stats=cam_stats, listeners=listeners))
    except Exception:
        for made in cameras:
            made.source.close()
        raise
    return cameras


def _add_stages(config: Config, segmenter: Segmenter, built: Built) -> None:
    """Each camera's stages, and the loop's own (the publisher); metrics first, so the preview can serve them."""
    from edge_seg.loop.camera_metrics import camera_metrics

    pipeline, manifest = built.pipeline, segmenter.manifest
    configs = config.cameras()
    names = [cam.name for cam in configs] if pipeline.multi else [None]
    built.metrics, per_camera = camera_metrics(config.device.name, names, manifest, segmenter.loaded.sha256)
    built.preview = start_preview(config, built.metrics)
    for cam, cfg, metrics in zip(pipeline.cameras, configs, per_camera):
        parts = CameraParts(cfg, cam.name, cam.stats, metrics, share=len(configs), preview=built.preview,
                            source=cam.source)
        stages = camera_stages(config, segmenter, parts)
        if pipeline.multi:
            cam.stages = stages
        else:
            pipeline.stages = stages
        metrics.set_source_up(False)  # until the first frame ("recovered")
        cam.listeners.append(lambda event, m=metrics: _source_state(m, event))
    if config.mqtt.url:
        pipeline.stages.append(_publisher(config, segmenter, built.pipeline.stats, built))


def build(config: Config) -> Built:
    """Open the model, the sources and the sinks described by ``config``."""
    from edge_seg.service.daemon import segmenter_factory

    segmenter = segmenter_factory(config)(config.model.path or DEFAULT_MODEL)  # as the OTA hot reload makes it
    if config.pipeline.tiling.enabled and segmenter.manifest.task == "instance":
        name = f"{segmenter.manifest.name} {segmenter.manifest.version}"
        segmenter.close()
        raise EdgeSegError(f"pipeline.tiling works with semantic and binary models only, and {name} is an instance "
                           "model: set pipeline.tiling.enabled: false")
    stats = LoopStats()
    events: list = []
    try:
        redactor = _redactor(config, segmenter)
        cameras = _cameras(config, segmenter, stats, events)
    except Exception:
        segmenter.close()
        raise
    built = Built(pipeline=None, segmenter=segmenter, events=events)  # type: ignore[arg-type]
    tiler = None
    if config.pipeline.tiling.enabled:
        from edge_seg.loop.tiling import Tiler

        tiling = config.pipeline.tiling
        tiler = Tiler(segmenter, overlap=tiling.overlap, min_scale=tiling.min_scale)
    batch = config.pipeline.batch
    built.pipeline = Pipeline(None, segmenter, max_frames=config.pipeline.max_frames, tiler=tiler, stats=stats,
                              redactor=redactor, cameras=cameras, batch=len(cameras) if batch == "auto" else batch)
    try:
        _add_stages(config, segmenter, built)
    except Exception:
        if built.preview is not None:  # a later stage failed (e.g. an output path): free the port again
            built.preview.stop()
        close_stages([s for cam in cameras for s in cam.stages] + built.pipeline.stages, "after a failed start")
        for cam in cameras:
            cam.source.close()
        segmenter.close()
        raise
    return built


def install_signal_handlers(pipeline: Pipeline) -> None:
    """SIGTERM/SIGINT → ``pipeline.stop()`` (only from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        log.info("received %s: draining", signal.Signals(signum).name)
        pipeline.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(config: Config) -> LoopStats:
    """Build and run the loop in this thread until the source ends, max_frames, or a signal.

    ``service.Service`` adds sd_notify/watchdog, SIGHUP and the OTA hot reload (issue 6).
    """
    from edge_seg.service.daemon import Service

    config = Service.prepare(config)  # model store: count starts, roll back a bad current, pin its directory
    built = build(config)
    install_signal_handlers(built.pipeline)
    service = Service(config, built).start()
    try:
        stats = built.pipeline.run()
    finally:
        service.close()
        built.segmenter.close()  # the model in use at the end (the service updates it on a swap)
    print(stats.line(), flush=True)
    if built.pipeline.error is not None:  # e.g. a source that can never deliver (SourceUnusable)
        raise EdgeSegError(f"the loop stopped: {built.pipeline.error}")
    return stats
