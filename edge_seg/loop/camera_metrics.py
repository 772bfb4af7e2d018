"""Metrics of a device with several cameras: one ``Metrics`` per camera, one exposition labelled by ``camera``.

Each camera keeps a whole ``edge_seg.loop.metrics.Metrics`` of its own (FPS, drops, source up, class
areas, drift, zones, stage latencies), fed by its own stages. ``CameraMetrics`` is what the device
shows: ``exposition()`` merges the cameras' families into one, every sample with a ``camera`` label
(``edge_seg_fps{camera="front"}``), plus the device's own gauges without one (the outbox depth);
``snapshot()`` lists each camera's snapshot under ``cameras``. One camera keeps a plain ``Metrics``
(its series carry no ``camera`` label, as before).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric

from edge_seg.loop.metrics import Metrics

DEVICE_FAMILIES = ("edge_seg_outbox_messages",)  # one per device: left out of the cameras' families


class _Merged:
    """A prometheus collector: the families of every camera's registry, each sample labelled by its camera."""

    def __init__(self, cameras: Mapping[str, Metrics]):
        self.cameras = cameras

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, metrics in self.cameras.items():
            for family in metrics.registry.collect():
                if family.name in DEVICE_FAMILIES:
                    continue
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                            family.unit)
                merged.samples += [sample._replace(labels={"camera": name, **sample.labels})
                                   for sample in family.samples]
        yield from families.values()


class CameraMetrics:
    """The device's metrics over its cameras' (see the module docstring); ``cameras`` maps name → ``Metrics``."""

    def __init__(self, device: str, cameras: Mapping[str, Metrics]):
        self.device = device
        self.cameras = dict(cameras)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Merged(self.cameras))
        self.outbox_messages = Gauge("edge_seg_outbox_messages", "Messages waiting in the on-disk outbox",
                                     registry=self.registry)

    def watch_outbox(self, depth) -> None:
        """Read the outbox depth at each scrape from ``depth()``."""
        self.outbox_messages.set_function(depth)

    def set_model(self, name: str, version: str, sha256: str) -> None:
        for metrics in self.cameras.values():
            metrics.set_model(name, version, sha256)

    def set_baseline(self, baseline: Mapping[str, float] | None) -> None:
        for metrics in self.cameras.values():
            metrics.set_baseline(baseline)

    def exposition(self) -> bytes:
        """The Prometheus text exposition: every camera's series with its ``camera`` label, and the device's."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict:
        """JSON-ready: the device, the summed FPS and frame counters, and each camera's own snapshot."""
        cams = {name: metrics.snapshot() for name, metrics in self.cameras.items()}
        first = next(iter(cams.values()))
        return {"device": self.device, "fps": sum(c["fps"] or 0.0 for c in cams.values()),
                "source_up": min((c["source_up"] for c in cams.values() if c["source_up"] is not None), default=None),
                "frames_processed": sum(c["frames_processed"] for c in cams.values()),
                "frames_dropped": sum(c["frames_dropped"] for c in cams.values()),
                "stages_p50_ms": first["stages_p50_ms"], "model": first["model"],
                "drift_js": _worst(c["drift_js"] for c in cams.values()),
                "mean_uncertainty": _mean(c["mean_uncertainty"] for c in cams.values()), "cameras": cams}


def _worst(values) -> float | None:
    """The largest of the known values (the camera drifting most), None when none is known."""
    return max((v for v in values if v is not None), default=None)


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def camera_metrics(device: str, names: Sequence[str | None], manifest, sha256: str) -> tuple[object, list[Metrics]]:
    """(the device's metrics, one ``Metrics`` per camera): one camera (``names == [None]``) is both."""
    per_camera = []
    for _name in names:
        metrics = Metrics(device=device, classes=list(manifest.classes), baseline=manifest.baseline)
        metrics.set_model(manifest.name, manifest.version, sha256)
        per_camera.append(metrics)
    if names == [None]:
        return per_camera[0], per_camera
    return CameraMetrics(device, dict(zip(names, per_camera))), per_camera


__all__ = ["CameraMetrics", "camera_metrics"]
