"""What a fleet rollout sees of its devices, straight from the broker (``edge_seg.cloud.rollout``).

The rollout reads MQTT directly rather than a consumer's store: it needs no consumer running, sees a
device's status the moment it changes (shared consumer subscriptions get no retained messages), and
its health samples are not delayed by a consumer's backlog. Two sessions:

* **commands** (client id ``edge-seg-rollout-{id}``, persistent session, QoS 1): publishes the
  commands and subscribes to ``{prefix}/+/cmd/result``. When the rollout process dies, the broker
  keeps the results devices send meanwhile and delivers them on restart.
* **health** (clean session): ``{prefix}/+/status`` (retained: every device's last status at once:
  online, model, FPS, ``extra.labels``) and, for the devices of the wave being watched only,
  ``{prefix}/{device}/mask`` (``mean_confidence`` and the model of every mask).

Samples are kept per device as (time, model key, value) for FPS and confidence.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_seg.errors import EdgeSegError

log = logging.getLogger(__name__)
MAX_SAMPLES = 10_000  # per device and signal


def model_key(model: dict | None) -> tuple | None:
    """(name, version, sha256) of a message's ``model`` object."""
    if not isinstance(model, dict):
        return None
    return (model.get("name"), model.get("version"), model.get("sha256"))


class FleetWatch:
    """Statuses, command results and health samples of a fleet (see the module docstring)."""

    def __init__(self, address, prefix: str = "edge_seg", session: str | None = None):
        self.address, self.prefix = address, prefix.rstrip("/")
        self.statuses: dict[str, dict] = {}
        self.results: dict[str, dict] = {}  # command id -> cmd/result message
        self.fps: dict[str, list] = defaultdict(list)
        self.confidence: dict[str, list] = defaultdict(list)
        self._tracked: set[str] = set()
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.health = self._client(f"edge-seg-fleet-watch-{uuid.uuid4().hex[:10]}", persistent=False)
        self.commands = self._client(f"edge-seg-rollout-{session}" if session else None, persistent=bool(session))
        self._commands_ready = threading.Event()

    def _client(self, client_id: str | None, persistent: bool) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"edge-seg-{uuid.uuid4().hex}",
                             protocol=mqtt.MQTTv5)
        if self.address.username is not None or self.address.password is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set()
        client.reconnect_delay_set(1, 10)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.user_data_set({"persistent": persistent})
        return client

    def start(self, timeout: float = 30.0) -> FleetWatch:
        for client in (self.health, self.commands):
            props = Properties(PacketTypes.CONNECT)
            persistent = client.user_data_get()["persistent"]
            props.SessionExpiryInterval = 86_400 if persistent else 0
            client.connect_async(self.address.host, self.address.port, keepalive=30, clean_start=not persistent,
                                 properties=props)
            client.loop_start()
        if not (self.ready.wait(timeout) and self._commands_ready.wait(timeout)):
            self.stop()
            raise EdgeSegError(f"cannot reach broker {self.address}: is it running? (fleet rollout reads status and "
                               "command results from it)")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the connection: %s", self.address, reason_code)
            return
        if client is self.commands:
            client.subscribe(f"{self.prefix}/+/cmd/result", qos=1)
            self._commands_ready.set()
            return
        topics = [(f"{self.prefix}/+/status", 1)] + [(f"{self.prefix}/{d}/mask", 0) for d in sorted(self._tracked)]
        client.subscribe(topics)
        self.ready.set()

    def _on_message(self, client, userdata, message) -> None:
        topic = message.topic[len(self.prefix) + 1:]
        device, _, kind = topic.partition("/")
        try:
            obj = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(obj, dict) or obj.get("device") != device:
            return
        now = time.time()
        with self._lock:
            if kind == "status":
                self.statuses[device] = {**obj, "received": now}
                if obj.get("online") and isinstance(obj.get("fps"), (int, float)):
                    _append(self.fps[device], (now, model_key(obj.get("model")), float(obj["fps"])))
            elif kind == "cmd/result" and isinstance(obj.get("command_id"), str):
                self.results[obj["command_id"]] = obj
            elif kind == "mask" and isinstance(obj.get("mean_confidence"), (int, float)):
                _append(self.confidence[device], (now, model_key(obj.get("model")), float(obj["mean_confidence"])))

    # --- what the rollout asks ----------------------------------------------------------------
    def track(self, devices) -> None:
        """Also receive these devices' masks (confidence samples)."""
        new = sorted(set(devices) - self._tracked)
        self._tracked.update(new)
        if new:
            self.health.subscribe([(f"{self.prefix}/{d}/mask", 0) for d in new])

    def untrack(self, devices) -> None:
        gone = sorted(set(devices) & self._tracked)
        self._tracked.difference_update(gone)
        if gone:
            self.health.unsubscribe([f"{self.prefix}/{d}/mask" for d in gone])

    def status(self, device: str) -> dict | None:
        with self._lock:
            return self.statuses.get(device)

    def result(self, command_id: str) -> dict | None:
        with self._lock:
            return self.results.get(command_id)

    def samples(self, device: str, since: float, model: tuple | None = None, exclude: tuple | None = None
                ) -> tuple[list[float], list[float]]:
        """(FPS values, confidence values) received since ``since``, of ``model`` (or any but ``exclude``)."""
        def keep(item) -> bool:
            return item[0] >= since and (model is None or item[1] == model) and (exclude is None or item[1] != exclude)

        with self._lock:
            return ([v for *_, v in filter(keep, self.fps.get(device, ()))],
                    [v for *_, v in filter(keep, self.confidence.get(device, ()))])

    def publish(self, device: str, payload: bytes, timeout: float = 30.0) -> None:
        """Publish a command (QoS 1) and wait for the broker's acknowledgement."""
        info = self.commands.publish(f"{self.prefix}/{device}/cmd", payload, qos=1)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as err:
            raise EdgeSegError(f"cannot send the command to {device}: {err}") from None
        if not info.is_published():
            raise EdgeSegError(f"the broker did not acknowledge the command to {device} within {timeout:g} s")

    def stop(self) -> None:
        for client in (self.health, self.commands):
            client.disconnect()
            client.loop_stop()


def _append(samples: list, item) -> None:
    samples.append(item)
    if len(samples) > MAX_SAMPLES:
        del samples[: len(samples) - MAX_SAMPLES]


__all__ = ["FleetWatch", "model_key"]
