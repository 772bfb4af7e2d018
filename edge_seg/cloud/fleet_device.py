"""One simulated device of ``edge-seg fleet simulate`` (``edge_seg.cloud.fleet_simulator``).

A ``SimDevice`` is what a real device looks like from the broker, without a camera or a model: its
own MQTT 5 session (paho, QoS 1, an ``online: false`` retained status as its will), mask messages
built by the real ``encode_mask`` (pycocotools RLE of a synthetic scene's class map), crop messages
(``encode_crop``, a real JPEG), a retained status with its FPS, model and ``extra.labels``, and
commands answered by the real ``CommandHandler`` with the real signature ``Verifier``:

* ``update_model``: nothing is downloaded; the new model is named after the URL (its last path
  segment without ``.tar``/``.gz``/``.bundle`` is the version, the command's ``sha256`` the hash).
  The result names the model installed and the one left; the next status reports the new model.
* ``rollback``: back to the previous model (refused when ``expect_current`` is not the current one).

Health: FPS and mean confidence come from the device's baseline; a device in ``fail_on``'s set
running a model whose version or sha256 matches ``fail_on`` reports FPS and confidence lower by
``fail_drop`` (the regression a rollout must catch). ``counts`` records the command ids received and
run per command, so tests can tell a repeated command from a redelivered one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_seg.publish.commands import CommandHandler, CommandHooks
from edge_seg.publish.commands_signing import Verifier
from edge_seg.publish.messages import Encoded, encode_crop, encode_mask, encode_status
from edge_seg.segmentation import ModelIdentity

log = logging.getLogger(__name__)
BUNDLE_SUFFIXES = (".gz", ".tar", ".bundle", ".tgz")


def model_from_url(name: str, url: str, sha256: str | None) -> ModelIdentity:
    """The model a simulated device installs from ``url``: version = the URL's file name without bundle suffixes."""
    stem = url.rstrip("/").rsplit("/", 1)[-1] or "model"
    changed = True
    while changed:
        changed = False
        for suffix in BUNDLE_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem, changed = stem[: -len(suffix)], True
    import hashlib

    return ModelIdentity(name, stem[:64], (sha256 or hashlib.sha256(url.encode()).hexdigest()).lower())


def model_id(model: ModelIdentity) -> str:
    """The store id a simulated device gives a model (like ``edge_seg.ota.store``: name, version, short hash)."""
    return f"{model.name}-{model.version}-{model.sha256[:12]}"


def matches(model: ModelIdentity, selector: str | None) -> bool:
    """True when ``selector`` is the model's version or a prefix (8+ characters) of its sha256."""
    if not selector:
        return False
    return model.version == selector or (len(selector) >= 8 and model.sha256.startswith(selector.lower()))


@dataclass
class Health:
    """What a device reports: FPS in its status, mean confidence in its masks."""

    fps: float = 10.0
    confidence: float = 0.8


class SimDevice:
    """One simulated device (see the module docstring); ``connect()`` then ``tick()`` from a driver thread."""

    def __init__(self, device: str, broker, scenes, *, prefix: str = "edge_seg", model: ModelIdentity,
                 labels: dict | None = None, health: Health | None = None, verifier: Verifier | None = None,
                 fail_on: str | None = None, fail_drop: float = 0.5, crop_every: int = 5,
                 allowed_url_prefixes: tuple[str, ...] = ("http://bundles.test/",)):
        self.device, self.broker, self.scenes, self.prefix = device, broker, scenes, prefix
        self.base = f"{prefix}/{device}"
        self.model, self.previous = model, None
        self.labels = dict(labels or {})
        self.health = health or Health()
        self.fail_on, self.fail_drop, self.crop_every = fail_on, fail_drop, crop_every
        self.counts: Counter = Counter()  # masks, crops, status, results, commands
        self.command_ids: dict[str, set[str]] = {}  # cmd -> distinct ids received
        self.runs: Counter = Counter()  # cmd -> times run (not a redelivery)
        self._seq: Counter = Counter()
        self._lock = threading.Lock()
        self._frame = 0
        self._started = time.monotonic()
        self.connected = threading.Event()
        hooks = CommandHooks(uptime=lambda: time.monotonic() - self._started, update_model=self._update_model,
                             rollback=self._rollback)
        self.handler = CommandHandler(device, hooks, lambda: self._next("cmd/result"), verifier,
                                      insecure=verifier is None, allowed_url_prefixes=allowed_url_prefixes)
        self.client = self._client()

    # --- MQTT --------------------------------------------------------------------------------
    def _client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{self.device}", protocol=mqtt.MQTTv5)
        will = encode_status(device=self.device, seq=0, online=False, model=self.model,
                             extra={"labels": self.labels})
        client.will_set(f"{self.base}/status", will.payload, qos=1, retain=True)
        client.reconnect_delay_set(1, 5)
        client.connect_timeout = 30.0  # a loaded host: a slow handshake is not a dead broker
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = self._on_message
        return client

    def connect(self) -> None:
        """Connect in the background (paho's own thread reconnects)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # a persistent session: commands sent while away arrive on reconnect
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        client.subscribe(f"{self.base}/cmd", qos=1)
        self.connected.set()
        self.send_status()

    def _on_message(self, client, userdata, message) -> None:
        answer = self._command(bytes(message.payload))
        if answer is not None:
            self._publish(answer)
            self.send_status()  # the model it now runs, at once

    def _command(self, payload: bytes) -> Encoded | None:
        import json

        try:
            obj = json.loads(payload)
            cmd, cid = str(obj.get("cmd")), str(obj.get("id"))
        except (ValueError, AttributeError):
            cmd, cid = "?", "?"
        with self._lock:
            self.counts["commands"] += 1
            self.command_ids.setdefault(cmd, set()).add(cid)
        return self.handler.handle(payload)

    def _publish(self, encoded: Encoded, retain: bool = False) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = encoded.content_type
        self.client.publish(f"{self.base}/{encoded.topic}", encoded.payload, qos=1, retain=retain, properties=props)
        with self._lock:
            self.counts[encoded.topic] += 1

    def _next(self, topic: str) -> int:
        with self._lock:
            self._seq[topic] += 1
            return self._seq[topic]

    # --- commands ------------------------------------------------------------------------------
    def _update_model(self, args: dict) -> dict:
        new = model_from_url(self.model.name, args["url"], args.get("sha256"))
        with self._lock:
            self.runs["update_model"] += 1
            left = self.model
            if new != self.model:
                self.model, self.previous = new, self.model
        return {"installed": model_id(new), "previous": model_id(left), "changed": new != left}

    def _rollback(self, args: dict) -> dict:
        with self._lock:
            self.runs["rollback"] += 1
            current = model_id(self.model)
            expect = args.get("expect_current")
            if expect is not None and expect != current:
                raise RuntimeError(f"not rolling back: current is now {current}, not {expect}")
            if self.previous is None:
                raise RuntimeError("no previous model to roll back to")
            self.model, self.previous = self.previous, self.model
            return {"left": current, "current": model_id(self.model)}

    # --- data ----------------------------------------------------------------------------------
    def current_health(self) -> Health:
        """FPS and confidence now: lower by ``fail_drop`` on a model matching ``fail_on``."""
        if matches(self.model, self.fail_on):
            return Health(self.health.fps * (1 - self.fail_drop), self.health.confidence * (1 - self.fail_drop))
        return self.health

    def send_status(self) -> None:
        health = self.current_health()
        status = encode_status(device=self.device, seq=self._next("status"), online=True, model=self.model,
                               fps=health.fps, uptime_s=time.monotonic() - self._started, outbox_depth=0,
                               extra={"labels": self.labels})
        self._publish(status, retain=True)

    def send_frame(self) -> None:
        """One mask (and every ``crop_every``-th frame a crop) of the next synthetic scene, stamped now."""
        self._frame += 1
        health = self.current_health()
        seg = self.scenes.segmentation(self._frame, self.model, health.confidence)
        now = time.time()
        self._publish(encode_mask(seg, device=self.device, seq=self._next("mask"), ts=now, frame_seq=self._frame))
        if self.crop_every and self._frame % self.crop_every == 0:
            crop = dataclasses.replace(self.scenes.crop(self._frame), ts=now, seq=self._frame)
            self._publish(encode_crop(crop, device=self.device, seq=self._next("crop"), model=self.model,
                                      frame_size=seg.frame_size, classes=seg.classes))

    def close(self) -> None:
        """Disconnect cleanly (the retained status stays as last sent)."""
        self.client.disconnect()
        self.client.loop_stop()


__all__ = ["Health", "SimDevice", "matches", "model_from_url", "model_id"]
