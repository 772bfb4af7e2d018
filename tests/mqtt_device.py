"""The device for the MQTT tests: the loop on ``synthetic://`` with the ``Publisher`` as its last stage.

Run as a subprocess so a test can SIGKILL it. The outbox keeps its audit log (every produced
msg_id, written in the same transaction as the message), which the tests compare with what the
consumer received. ``--record`` appends ``{"seq", "sha256"}`` of each frame's class map, so a
test can check that every decoded mask is exactly what the device segmented.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from edge_seg.config import parse_config
from edge_seg.loop.runner import build, install_signal_handlers
from edge_seg.publish.mqtt import Publisher
from edge_seg.publish.mqtt_config import MqttConfig
from edge_seg.segmentation import ModelIdentity


class Recorder:
    """A loop stage writing the sha256 of each frame's nearest class map (flushed per line).

    The nearest map (``Segmentation.nearest_class_map``) is what a mask message reproduces exactly; the
    device's default smooth ``class_map`` differs from it near class edges (see ``test_mqtt_e2e``).
    """

    name = "record"

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def __call__(self, result) -> None:
        digest = hashlib.sha256(result.segmentation.nearest_class_map.tobytes()).hexdigest()
        self.file.write(json.dumps({"seq": result.frame.seq, "sha256": digest}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="dev1")
    p.add_argument("--fps", type=float, default=12.0)
    p.add_argument("--size", default="160x96")
    p.add_argument("--record", type=Path)
    p.add_argument("--password-file", type=Path)
    p.add_argument("--reconnect-max", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    width, height = (int(v) for v in args.size.split("x"))
    config = parse_config({"device": {"name": args.device, "state_dir": str(args.state_dir)},
                           "model": {"path": args.model},
                           "source": {"uri": f"synthetic://?seed=5&width={width}&height={height}", "fps": args.fps}})
    mqtt = MqttConfig(url=args.broker, policy={"every_n": 1, "max_rate": 100}, outbox={"audit": True},
                      reconnect_min_s=1, reconnect_max_s=args.reconnect_max, status_interval_s=2,
                      metrics_interval_s=5, password_file=args.password_file)
    built = build(config)
    if args.record:
        built.pipeline.stages.append(Recorder(args.record))
    manifest = built.segmenter.manifest
    model = ModelIdentity(manifest.name, manifest.version, built.segmenter.loaded.sha256)
    publisher = Publisher(mqtt, device=args.device, state_dir=args.state_dir, model=model, classes=manifest.classes,
                          source_state=lambda: built.pipeline.source.state,
                          summary=lambda: {"loop": built.pipeline.stats.snapshot()})
    built.pipeline.stages.append(publisher)
    install_signal_handlers(built.pipeline)
    try:
        built.pipeline.run()
    finally:
        built.segmenter.close()
        publisher.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
