"""Prometheus metrics of the device runtime, plus class-area drift against the model's baseline.

One ``Metrics`` object owns its own ``CollectorRegistry`` (never the global one), so several
pipelines or tests can live in one process. Every metric name starts with ``edge_seg_``.

Latency: ``edge_seg_stage_seconds{stage=...}`` has one series per stage the loop times (capture,
decode, preprocess, infer, postprocess and every sink stage, wherever it sits in the sink list:
``MetricsStage`` listens to the loop's ``LoopStats``), plus ``capture_age`` (how old the frame was
when inference took it: a wait, not a stage) and ``total``: end to end, from the frame's capture
timestamp to the end of its last sink stage (what the latency SLO counts).
The per-frame calls (``observe_stages``, ``frame_processed``, ``observe_segmentation``) cost a
few microseconds: label children are cached, drift is a handful of ``math.log2`` calls over the
class list, and nothing is formatted until ``exposition()`` / ``snapshot()`` is asked for.

Drift: a sliding window of the last ``drift_window`` frames' class-area fractions is averaged
into one distribution; ``edge_seg_drift_js_distance`` is its Jensen–Shannon distance (base 2,
so in [0, 1]) to the manifest's ``baseline``. Without a baseline the drift gauge is not
exported at all (a 0 would read as "no drift").
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["DEFAULT_STAGES", "DROP_POINTS", "LATENCY_BUCKETS", "Metrics", "js_distance"]

# Seconds. 0.5 ms .. 1 s; 0.2 s is an edge on purpose: the latency SLO counts frames over 200 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0)
DEFAULT_STAGES = ("preprocess", "infer", "postprocess", "total")
DROP_POINTS = ("capture", "sink")  # the ``where`` label of edge_seg_frames_dropped_total
_RECENT = 256  # per-stage samples kept for the p50 that the preview page shows


def js_distance(p: Sequence[float] | Iterable[float], q: Sequence[float] | Iterable[float]) -> float:
    """Jensen–Shannon distance (square root of the JS divergence, base 2) of two distributions.

    Inputs are non-negative weights of equal length; each is normalised to sum 1. The result is
    in [0, 1]: 0 for identical distributions, 1 for disjoint ones. Matches
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.
    """
    p, q = [float(x) for x in p], [float(x) for x in q]
    if len(p) != len(q):
        raise ValueError(f"distributions differ in length: {len(p)} vs {len(q)}")
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0 or any(x < 0 for x in p) or any(x < 0 for x in q):
        raise ValueError("distributions need non-negative weights with a positive sum")
    div = 0.0
    for a, b in zip(p, q):
        a, b = a / sp, b / sq
        m = 0.5 * (a + b)
        if a > 0:
            div += a * math.log2(a / m)
        if b > 0:
            div += b * math.log2(b / m)
    return math.sqrt(min(max(0.5 * div, 0.0), 1.0))


class Metrics:
    """The runtime's Prometheus metrics; see the module docstring.

    ``classes`` pre-creates the per-class area gauges (new class names seen later are added);
    ``baseline`` maps class name -> expected area fraction (the manifest's ``baseline``).
    """

    def __init__(self, registry: CollectorRegistry | None = None, device: str = "edge",
                 classes: Sequence[str] = (), baseline: Mapping[str, float] | None = None,
                 drift_window: int = 300) -> None:
        if drift_window < 1:
            raise ValueError("drift_window must be at least 1 frame")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.device = device
        r = self.registry
        self._stage_hist = Histogram("edge_seg_stage_seconds",
                                     "Per-stage latency of one frame (total: capture to the end of its last stage; "
                                     "capture_age: frame age when inference took it)",
                                     ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self._processed = Counter("edge_seg_frames_processed", "Frames fully processed", registry=r)
        self._dropped = Counter("edge_seg_frames_dropped",
                                "Frames dropped (where=capture: overwritten before inference took them; "
                                "where=sink: segmented, but the sink queue was full)", ["where"], registry=r)
        self._dropped_at = {where: self._dropped.labels(where=where) for where in DROP_POINTS}
        self._skipped = Counter("edge_seg_frames_skipped", "Frames skipped on purpose (every-n)", registry=r)
        self._reconnects = Counter("edge_seg_source_reconnects", "Times the source was reopened", registry=r)
        self._stuck = Counter("edge_seg_source_stuck_captures", "Closed sources whose capture thread stayed stuck in "
                              "the driver (the reopen waits for it)", registry=r)
        self._area = Gauge("edge_seg_class_area_fraction", "Fraction of the last frame covered by each class",
                           ["class"], registry=r)
        self._uncertainty = Gauge("edge_seg_mean_uncertainty", "Mean per-pixel uncertainty of the last frame",
                                  registry=r)
        self._fps = Gauge("edge_seg_fps", "Processed frames per second (recent)", registry=r)
        self._source_up = Gauge("edge_seg_source_up", "1 while the source delivers frames, else 0", registry=r)
        self.outbox_messages = Gauge("edge_seg_outbox_messages", "Messages waiting in the on-disk outbox", registry=r)
        self._model_info = Gauge("edge_seg_model_info", "The model in use (value is always 1)",
                                 ["name", "version", "sha256"], registry=r)
        self._zone_occupied = Gauge("edge_seg_zone_occupied", "1 while the class occupies the zone, else 0",
                                    ["zone", "class"], registry=r)
        self._zone_count = Gauge("edge_seg_zone_count", "Instances of the class in the zone (instance models)",
                                 ["zone", "class"], registry=r)
        self._zone_area = Gauge("edge_seg_zone_area_fraction", "Share of the zone the class covers (semantic models)",
                                ["zone", "class"], registry=r)
        self._drift: Gauge | None = None
        self._lock = threading.Lock()
        self._stage_children: dict[str, tuple[object, deque]] = {}
        for stage in DEFAULT_STAGES:
            self._stage(stage)
        self._area_children: dict[str, object] = {}
        self._class_index: dict[str, int] = {}
        with self._lock:
            for name in classes:
                self._class(name)
        self._window: deque[tuple[float, ...]] = deque()
        self._window_size = drift_window
        self._sums: list[float] = []
        self._since_resum = 0
        self._baseline: dict[str, float] | None = None
        self._counts = {"processed": 0, "skipped": 0, "reconnects": 0, **{f"dropped_{w}": 0 for w in DROP_POINTS}}
        self._values: dict[str, float | None] = {"fps": None, "source_up": None, "mean_uncertainty": None,
                                                 "drift_js": None}
        self._model: dict[str, str] | None = None
        self.set_baseline(baseline)

    # -- per-frame calls (hot path) -------------------------------------------------------------

    def observe_stages(self, timings_ms: Mapping[str, float], end_to_end_ms: float | None = None) -> None:
        """Record per-stage milliseconds; ``end_to_end_ms`` (capture to the end of the frame's last stage)
        goes to ``stage="total"``. A ``LoopStats`` listener: ``stats.listeners.append(m.observe_stages)``."""
        for stage, ms in timings_ms.items():
            self._observe(stage, ms)
        if end_to_end_ms is not None:
            self._observe("total", end_to_end_ms)

    def frame_processed(self) -> None:
        self._processed.inc()
        self._counts["processed"] += 1

    def frames_dropped(self, n: int = 1, where: str = "capture") -> None:
        """``where``: ``capture`` (overwritten in the latest-frame slot) or ``sink`` (the sink queue was full)."""
        if where not in self._dropped_at:
            raise ValueError(f"unknown drop point {where!r} (valid: {', '.join(DROP_POINTS)})")
        if n > 0:
            self._dropped_at[where].inc(n)
            self._counts[f"dropped_{where}"] += n

    def frame_skipped(self, n: int = 1) -> None:
        if n > 0:
            self._skipped.inc(n)
            self._counts["skipped"] += n

    def source_reconnect(self, n: int = 1) -> None:
        if n > 0:
            self._reconnects.inc(n)
            self._counts["reconnects"] += n

    def source_stuck(self) -> None:
        self._stuck.inc()

    def set_source_up(self, up: bool) -> None:
        self._source_up.set(1 if up else 0)
        self._values["source_up"] = 1.0 if up else 0.0

    def set_fps(self, fps: float) -> None:
        self._fps.set(fps)
        self._values["fps"] = float(fps)

    def set_outbox(self, messages: int) -> None:
        """Messages waiting in the on-disk MQTT outbox (set by the publisher)."""
        self.outbox_messages.set(messages)

    def watch_outbox(self, depth) -> None:
        """Read the outbox depth at each scrape from ``depth()`` (e.g. ``lambda: outbox.stats().depth``)."""
        self.outbox_messages.set_function(depth)

    def set_zone(self, zone: str, class_name: str, occupied: bool, count: int | None, area: float | None) -> None:
        """The zone gauges of one zone and class (``edge_seg.loop.zone_stage``); count or area may be None."""
        labels = {"zone": zone, "class": class_name}
        self._zone_occupied.labels(**labels).set(1 if occupied else 0)
        if count is not None:
            self._zone_count.labels(**labels).set(count)
        if area is not None:
            self._zone_area.labels(**labels).set(area)

    def observe_segmentation(self, area_fractions: Mapping[str, float], mean_uncertainty: float) -> None:
        """Set the per-class area and uncertainty gauges; update the rolling distribution and drift."""
        self._uncertainty.set(mean_uncertainty)
        self._values["mean_uncertainty"] = float(mean_uncertainty)
        with self._lock:
            for name, fraction in area_fractions.items():
                self._class(name).set(fraction)
            row = [0.0] * len(self._class_index)
            for name, fraction in area_fractions.items():
                row[self._class_index[name]] = fraction
            self._push(tuple(row))
            if self._baseline is not None and self._drift is not None:
                drift = self._drift_now()
                if drift is not None:
                    self._drift.set(drift)
                    self._values["drift_js"] = drift

    # -- occasional calls -----------------------------------------------------------------------

    def set_model(self, name: str, version: str, sha256: str) -> None:
        """Export ``edge_seg_model_info{name,version,sha256} 1`` (replacing the previous model)."""
        self._model_info.clear()
        self._model_info.labels(name=name, version=version, sha256=sha256).set(1)
        self._model = {"name": name, "version": version, "sha256": sha256}

    def set_baseline(self, baseline: Mapping[str, float] | None) -> None:
        """Set (or drop, with None) the drift baseline and restart the rolling window (e.g. after a swap)."""
        with self._lock:
            for name in baseline or ():
                self._class(name)
            self._window.clear()
            self._sums = [0.0] * len(self._class_index)
            self._since_resum = 0
            self._values["drift_js"] = None
            if not baseline:
                self._baseline = None
                if self._drift is not None:
                    self.registry.unregister(self._drift)
                    self._drift = None
                return
            if any(v < 0 for v in baseline.values()) or sum(baseline.values()) <= 0:
                raise ValueError("baseline area fractions must be non-negative with a positive sum")
            self._baseline = {k: float(v) for k, v in baseline.items()}
            if self._drift is None:
                self._drift = Gauge("edge_seg_drift_js_distance",
                                    "Jensen-Shannon distance (base 2) of recent class areas to the model baseline",
                                    registry=self.registry)

    def rolling_distribution(self) -> dict[str, float]:
        """The mean class-area distribution over the current window (empty before any frame)."""
        with self._lock:
            n = len(self._window)
            if not n:
                return {}
            return {name: (self._sums[i] if i < len(self._sums) else 0.0) / n for name, i in self._class_index.items()}

    def exposition(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict:
        """JSON-ready values for the preview page: counters, gauges, p50 ms per stage, model."""
        with self._lock:
            p50 = {stage: _median(recent) for stage, (_, recent) in self._stage_children.items() if recent}
        return {"device": self.device, "fps": self._values["fps"], "source_up": self._values["source_up"],
                "frames_processed": self._counts["processed"],
                "frames_dropped": sum(self._counts[f"dropped_{w}"] for w in DROP_POINTS),
                "frames_dropped_by": {w: self._counts[f"dropped_{w}"] for w in DROP_POINTS},
                "frames_skipped": self._counts["skipped"], "source_reconnects": self._counts["reconnects"],
                "mean_uncertainty": self._values["mean_uncertainty"], "drift_js": self._values["drift_js"],
                "stages_p50_ms": p50, "model": self._model}

    # -- internals ------------------------------------------------------------------------------

    def _stage(self, stage: str) -> tuple[object, deque]:
        entry = self._stage_children.get(stage)
        if entry is None:
            with self._lock:
                entry = self._stage_children.setdefault(stage, (self._stage_hist.labels(stage=stage),
                                                                deque(maxlen=_RECENT)))
        return entry

    def _observe(self, stage: str, ms: float) -> None:
        child, recent = self._stage(stage)
        child.observe(ms / 1000.0)
        recent.append(ms)

    def _class(self, name: str):
        """The area gauge child of ``name``, registering the class on first sight (caller holds the lock)."""
        child = self._area_children.get(name)
        if child is None:
            child = self._area_children[name] = self._area.labels(**{"class": name})
            self._class_index[name] = len(self._class_index)
        return child

    def _push(self, row: tuple[float, ...]) -> None:
        """Add one frame to the window (caller holds the lock); keep running sums exact-ish."""
        if len(self._sums) < len(row):
            self._sums.extend([0.0] * (len(row) - len(self._sums)))
        self._window.append(row)
        for i, v in enumerate(row):
            self._sums[i] += v
        if len(self._window) > self._window_size:
            for i, v in enumerate(self._window.popleft()):
                self._sums[i] -= v
        self._since_resum += 1
        if self._since_resum >= self._window_size:  # re-add from scratch: no float error builds up
            self._since_resum = 0
            sums = [0.0] * len(self._sums)
            for old in self._window:
                for i, v in enumerate(old):
                    sums[i] += v
            self._sums = sums

    def _drift_now(self) -> float | None:
        names = list(self._class_index) + [k for k in self._baseline if k not in self._class_index]
        observed = [max(self._sums[self._class_index[k]], 0.0) if k in self._class_index else 0.0 for k in names]
        expected = [self._baseline.get(k, 0.0) for k in names]
        if sum(observed) <= 0:
            return None
        return js_distance(observed, expected)


def _median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
