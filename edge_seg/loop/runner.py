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


def _source(config: Config, stats: LoopStats, events: list, listeners: list, lores: tuple[int, int] | None = None):
    """The configured source behind a reconnect watchdog; ``lores``: the model input size, for a
    camera that can scale a second stream to it (picamera2).

    The source is opened here, so a bad URI fails before any thread starts; a live camera or stream
    that is only unavailable (unplugged, busy, not up yet at boot) is retried with backoff instead.
    """
    from edge_seg.sources import SourceUnavailable, open_source
    from edge_seg.sources.reconnect import ResilientSource

    src = config.source

    def factory():
        return open_source(src.uri, loop=src.loop, fps=src.fps, lores=lores)

    def on_event(event) -> None:
        events.append(event)
        if event.kind == "reopened":
            stats.reconnects += 1
        for listener in listeners:
            listener(event)
        log.warning("source %s: %s", event.kind, event.detail)

    try:
        first = factory()
    except SourceUnavailable as exc:
        log.warning("source unavailable: %s; retrying with backoff (at most every %g s)", exc, src.backoff_cap_s)
        first = None
    return ResilientSource(factory, deadline=src.deadline_s, backoff_cap=src.backoff_cap_s, on_event=on_event,
                           first=first)


def _source_state(metrics, event) -> None:
    """``source_up``: 1 from the first frame after a reopen (a reopen alone proves nothing), 0 on a failure."""
    if event.kind == "stuck":
        metrics.source_stuck()
    elif event.kind == "recovered":
        metrics.set_source_up(True)
    elif event.kind in ("stalled", "open_failed", "ended"):
        metrics.set_source_up(False)


def _stages(config: Config, segmenter: Segmenter, stats: LoopStats, built: Built) -> list:
    """The sink stages ``config`` asks for; if one cannot be made, those already made are closed."""
    stages: list = []
    try:
        _add_stages(stages, config, segmenter, stats, built)
    except Exception:
        for stage in stages:
            close = getattr(stage, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as err:  # noqa: BLE001 - the first error is the one to report
                    log.warning("closing %s after a failed start: %s", getattr(stage, "name", stage), err)
        raise
    return stages


def _add_stages(stages: list, config: Config, segmenter: Segmenter, stats: LoopStats, built: Built) -> None:
    from edge_seg.loop.sinks import JsonlSink, MetricsStage, OverlayStage, PreviewSink, VideoSink
    from edge_seg.view.overlay import Overlay

    if config.tracking.enabled:  # first: every later stage sees the track ids
        from edge_seg.loop.track_stage import TrackStage
        from edge_seg.postprocess.tracking import Tracker

        stages.append(TrackStage(Tracker(**config.tracking.tracker_options())))
        if segmenter.manifest.task != "instance":
            log.warning("tracking.enabled: %s is a %s model, which has no instances to track",
                        segmenter.manifest.name, segmenter.manifest.task)
    ov = config.overlay
    drawer = None  # draws the overlay; a stage when the video needs every frame, else lazily for the preview
    if ov.enabled and (config.preview.enabled or config.output.video):  # redaction: the pipeline's (``_redactor``)
        zones = None
        if config.zones:
            from edge_seg.view.zone_layer import ZoneLayer

            zones = ZoneLayer(config.zones)
        drawer = OverlayStage(Overlay(alpha=ov.alpha, contours=ov.contours, legend=ov.legend), zones=zones)
        if config.output.video:
            stages.append(drawer)
    if config.uncertainty.enabled:
        from edge_seg.loop.sinks import CropStage
        from edge_seg.postprocess.uncertainty import CropExtractor

        stages.append(CropStage(CropExtractor(config.uncertainty.crops)))
    from edge_seg.loop.metrics import Metrics

    manifest = segmenter.manifest
    built.metrics = Metrics(device=config.device.name, classes=list(manifest.classes), baseline=manifest.baseline)
    built.metrics.set_model(manifest.name, manifest.version, segmenter.loaded.sha256)
    stages.append(MetricsStage(built.metrics, stats))
    zone_summary = None
    if config.zones:  # one ZoneTracker per source (several cameras: one each)
        from edge_seg.loop.zone_stage import ZoneStage
        from edge_seg.postprocess.zones import ZoneTracker, check_classes

        check_classes(config.zones, manifest.classes)  # fails before any thread starts
        stages.append(ZoneStage(ZoneTracker(config.zones), built.metrics))
        zone_summary = stages[-1].summary
    if config.preview.enabled:
        from edge_seg.view.access import read_token_file
        from edge_seg.view.preview import PreviewServer

        pv = config.preview
        token = read_token_file(pv.token_file) if pv.token_file is not None else pv.token
        built.preview = PreviewServer(host=pv.host, port=pv.port, metrics=built.metrics, max_fps=pv.max_fps,
                                      max_clients=pv.max_clients, request_timeout_s=pv.request_timeout_s,
                                      write_timeout_s=pv.write_timeout_s, token=token, allow_open=pv.allow_open)
        built.preview.start()
        info = {"model": f"{manifest.name} {manifest.version}", "source": config.source.uri}
        zones = zone_summary or list
        stages.append(PreviewSink(built.preview, lambda: {**stats.snapshot(), **info, "zones": zones(),
                                                           "source_state": built.pipeline.source.state},
                                  draw=drawer.draw if drawer is not None else None,
                                  tracking=config.tracking.enabled))
    if config.output.video:
        rate = config.source.fps or getattr(built.pipeline.source, "nominal_fps", None) or 15.0
        stages.append(VideoSink(config.output.video, fps=rate))  # the source's own rate where it has one
    if config.output.jsonl:
        stages.append(JsonlSink(config.output.jsonl))
    if config.mqtt.url:
        stages.append(_publisher(config, segmenter, stats, built))


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
    """The MQTT publisher (a sink stage): after the metrics stage, so class areas are computed."""
    from edge_seg.ota import actions as ota
    from edge_seg.publish.mqtt import Publisher
    from edge_seg.segmentation import ModelIdentity
    from edge_seg.sources.reconnect import degraded_of

    m = segmenter.manifest
    built.publisher = Publisher(config.mqtt, device=config.device.name, state_dir=config.device.state_dir,
                                labels=config.device.labels,
                                model=ModelIdentity(m.name, m.version, segmenter.loaded.sha256),
                                classes=m.classes, source_state=lambda: built.pipeline.source.state,
                                degraded=lambda: degraded_of(built.pipeline.source),
                                summary=lambda: {"loop": stats.snapshot(), **_quality(built.metrics)},
                                reload=_reload_active_service, update_model=ota.handle_update_model,
                                rollback=ota.handle_rollback,
                                allowed_url_prefixes=config.ota.allowed_url_prefixes,
                                zones=config.zones, zone_counts=m.task == "instance")
    outbox = built.publisher.outbox
    built.metrics.watch_outbox(lambda: outbox.stats().depth)  # read at each scrape (the outbox-growing alert)
    return built.publisher


def build(config: Config) -> Built:
    """Open the model, the source and the sinks described by ``config``."""
    from edge_seg.service.daemon import segmenter_factory

    segmenter = segmenter_factory(config)(config.model.path or DEFAULT_MODEL)  # as the OTA hot reload makes it
    if config.pipeline.tiling.enabled and segmenter.manifest.task == "instance":
        name = f"{segmenter.manifest.name} {segmenter.manifest.version}"
        segmenter.close()
        raise EdgeSegError(f"pipeline.tiling works with semantic and binary models only, and {name} is an instance "
                           "model: set pipeline.tiling.enabled: false")
    try:
        redactor = _redactor(config, segmenter)
    except Exception:
        segmenter.close()
        raise
    stats = LoopStats()
    events: list = []
    try:
        listeners: list = []
        whole_frame = config.pipeline.roi is None and not config.pipeline.tiling.enabled  # lores shows the whole view
        source = _source(config, stats, events, listeners, lores=segmenter.input_size if whole_frame else None)
    except Exception:
        segmenter.close()
        raise
    built = Built(pipeline=None, segmenter=segmenter, events=events)  # type: ignore[arg-type]
    tiler = None
    if config.pipeline.tiling.enabled:
        from edge_seg.loop.tiling import Tiler

        tiling = config.pipeline.tiling
        tiler = Tiler(segmenter, overlap=tiling.overlap, min_scale=tiling.min_scale)
    p = config.pipeline
    built.pipeline = Pipeline(source, segmenter, every_n=p.every_n, roi=p.roi, max_frames=p.max_frames,
                              tiler=tiler, stats=stats, redactor=redactor)
    try:
        built.pipeline.stages = _stages(config, segmenter, stats, built)
        metrics = built.metrics
        metrics.set_source_up(False)  # until the first frame ("recovered")
        listeners.append(lambda event: _source_state(metrics, event))
    except Exception:
        if built.preview is not None:  # a later stage failed (e.g. an output path): free the port again
            built.preview.stop()
        built.pipeline.source.close()
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
