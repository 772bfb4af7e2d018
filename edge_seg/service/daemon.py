"""Running under systemd: signals, hot reload wiring, start-up checks of the model store.

sd_notify and the watchdog are in ``edge_seg.service.notify``.

* ``Service``: wraps a built loop: ``prepare`` (before ``build``) counts starts on an unconfirmed
  model, rolls back a corrupt or repeatedly failing one and resolves ``models/current`` to the
  model directory; ``start`` wires the hot reloader, SIGHUP (reload), SIGTERM/SIGINT (drain,
  ``STOPPING=1``), the watchdog, then sends ``READY=1``; ``close`` stops them.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from edge_seg.service.notify import Notifier, Watchdog, watchdog_interval

log = logging.getLogger(__name__)


def segmenter_factory(config) -> Callable:
    """Make a ``Segmenter`` for a model path the way ``runner.build`` does."""
    from edge_seg.segmenter import Segmenter

    m = config.model
    crops = config.uncertainty.crops.method if config.uncertainty.enabled else None  # the map the crops need

    def create(path):
        return Segmenter.create(model=path, backend=m.backend, num_threads=m.num_threads,
                                norm=m.norm, input_size=m.input_size,
                                entropy=m.entropy or crops == "entropy", margin=crops == "margin",
                                smoothing=config.smoothing if config.smoothing.enabled else None,
                                upsample=config.overlay.upsample)

    return create


class Service:
    """systemd + OTA wiring around a built loop (``runner.Built``)."""

    def __init__(self, config, built, notifier: Notifier | None = None, signals: bool = True):
        self.config, self.built, self.signals = config, built, signals
        enabled = config.service.notify
        self.notifier = (notifier or Notifier.from_env()) if enabled else Notifier(None)
        self.reloader = None
        self.watchdog: Watchdog | None = None
        self.store = None
        self.swap_listeners: list[Callable[[object], None]] = []  # e.g. the MQTT publisher's model identity

    @staticmethod
    def prepare(config):
        """Before ``build``: check the store behind ``model.path`` and pin ``models/current`` to its directory."""
        from edge_seg.errors import EdgeSegError
        from edge_seg.ota.bundle import OtaError
        from edge_seg.ota.store import store_of

        store = store_of(config.model.path)
        if store is None or Path(config.model.path).name != "current":  # not in a store, or pinned to one model
            return config
        from edge_seg.ota.actions import reclaim_space

        reclaim_space(store, int(config.ota.min_free_mb * (1 << 20)), config.ota.keep)  # before anything is written
        if config.ota.hot_reload:  # only the hot reloader's probation confirms a model: count starts only then
            reason = store.note_start(config.ota.max_starts)
            if reason:
                log.error("rolled back: %s", reason)
        current = store.current_id()
        if current is None:
            raise OtaError(f"{store.current_link} does not point at a model: install one with 'edge-seg model "
                           "install BUNDLE' (or 'edge-seg service install' seeds the bundled model)")
        try:
            store.verify_entry(current)
        except EdgeSegError as err:
            log.error("current model is damaged (%s): rolling back", err)
            store.rollback(f"damaged: {err}", mark_bad=True, expect_current=current)
        resolved = store.current_path()
        return config.model_copy(update={"model": config.model.model_copy(update={"path": resolved})})

    def start(self) -> "Service":
        from edge_seg.ota.store import store_of

        pipeline = self.built.pipeline
        if self.config.ota.hot_reload:
            from edge_seg.ota.hot_reload import HotReloader, ReloadPolicy
            from edge_seg.segmenter import DEFAULT_MODEL

            model_path = self.config.model.path or DEFAULT_MODEL
            store = store_of(model_path)
            # follow models/current only when it is what runs (``prepare`` pinned it); a pinned other model stays
            current = store.current_path() if store is not None else None
            if current is not None and current.resolve() == Path(model_path).resolve():
                self.store = store
            self.reloader = HotReloader(pipeline, segmenter_factory(self.config), model_path=model_path,
                                        store=self.store, policy=ReloadPolicy.from_config(self.config.ota),
                                        on_swap=[self._on_swap]).start()
        from edge_seg.ota import actions as ota

        ota.set_active(self)
        self._install_signals()
        interval = watchdog_interval()
        if interval is not None or self.notifier.enabled:
            self.watchdog = Watchdog(self.notifier, pipeline.liveness, interval,
                                     status=self.status_line,
                                     status_every=self.config.service.status_interval_s).start()
        self.notifier.ready(self.status_line())
        return self

    def close(self) -> None:
        from edge_seg.ota import actions as ota

        self.notifier.stopping()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.reloader is not None:
            self.reloader.close()
        ota.set_active(None)
        self.notifier.close()

    def _on_swap(self, segmenter) -> None:
        from edge_seg.segmentation import ModelIdentity

        self.built.segmenter = segmenter
        manifest = segmenter.manifest
        metrics = getattr(self.built, "metrics", None)
        if metrics is not None:
            metrics.set_model(manifest.name, manifest.version, segmenter.loaded.sha256)
            metrics.set_baseline(manifest.baseline)
        publisher = getattr(self.built, "publisher", None)
        if publisher is not None and hasattr(publisher, "model"):  # its status messages name the model
            publisher.model = ModelIdentity(manifest.name, manifest.version, segmenter.loaded.sha256)
            publisher.classes = tuple(manifest.classes)
        for listener in self.swap_listeners:
            listener(segmenter)

    def status(self) -> dict:
        """For status messages: the model in use and the hot reloader's phase and last outcome."""
        m = self.built.pipeline.segmenter.manifest
        reload = self.reloader.status() if self.reloader is not None else None
        return {"model": {"name": m.name, "version": m.version}, "reload": reload}

    def handle_reload(self, timeout: float = 120.0) -> dict:
        """The MQTT ``reload`` command: look at ``current`` again and wait for the outcome (raises on a rollback)."""
        from edge_seg.ota.bundle import OtaError

        ticket = self.reload("mqtt reload")
        if ticket is None:
            raise OtaError("hot reload is off on this device (ota.hot_reload: false)")
        outcome = ticket.wait(timeout)
        if outcome is None:
            return {"outcome": "pending", "note": f"not finished within {timeout:g} s"}
        if outcome.get("outcome") in ("rolled_back", "refused", "failed"):
            raise OtaError(f"reload {outcome['outcome'].replace('_', ' ')}: {outcome.get('reason')}")
        return outcome

    def status_line(self) -> str:
        pipeline = self.built.pipeline
        m = pipeline.segmenter.manifest
        source = getattr(pipeline.source, "state", "?")
        text = f"{pipeline.stats.fps:.1f} FPS; model {m.name} {m.version}; source {source}"
        from edge_seg.sources.reconnect import degraded_of

        degraded = degraded_of(pipeline.source)
        if degraded:
            text += f"; degraded: {degraded}"
        if self.reloader is not None:
            status = self.reloader.status()
            last = status["last"]
            if status["phase"] != "idle":
                text += f"; reload: {status['phase']}"
            elif last:
                text += f"; last reload: {last['outcome']}" + (f" ({last['reason']})" if last.get("reason") else "")
        return text[:400]

    def reload(self, reason: str = "SIGHUP"):
        """Ask the reloader to look at ``current`` again; tells systemd RELOADING=1 … READY=1."""
        if self.reloader is None:
            log.warning("%s: hot reload is off (ota.hot_reload: false)", reason)
            return None
        self.notifier.reloading()
        ticket = self.reloader.request(reason)

        def done() -> None:
            ticket.wait(600)
            self.notifier.ready(self.status_line())

        threading.Thread(target=done, name="edge-seg-reload-notify", daemon=True).start()
        return ticket

    def _install_signals(self) -> None:
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return
        pipeline = self.built.pipeline

        def stop(signum, _frame) -> None:
            log.info("received %s: draining", signal.Signals(signum).name)
            self.notifier.stopping("draining")
            pipeline.stop()

        def hup(_signum, _frame) -> None:
            log.info("received SIGHUP: reloading the model")
            self.reload("SIGHUP")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)


__all__ = ["Service", "segmenter_factory"]
