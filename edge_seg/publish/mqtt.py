"""``Publisher``: the loop's publish sink, sending masks and crops over MQTT through the outbox.

Threads and what runs where:

* **the loop's sink thread** calls ``publish(result)``: the publish policy decides on the class
  areas (cached by the segmentation; the metrics stage usually computed them already) and, when
  the frame is to be published or has crops, the result is appended to a bounded queue
  (``mqtt.queue``; full: the oldest is dropped and counted). Nothing else: no encoding, no disk,
  no socket. ``call_ms`` keeps the wall and CPU time of each call (~0.03 ms in the loop).
* **edge-seg-mqtt** (the publisher thread) encodes the messages, commits them to the outbox in one
  transaction per batch, deletes acknowledged rows, and feeds paho from the outbox in id order,
  at most ``mqtt.inflight`` unacknowledged at a time (so paho's memory never holds a backlog). It
  also sends the periodic status and metrics and expires old rows.
* **paho's network thread** runs the callbacks, which only record and wake: connect (online status,
  subscribe, discovery), disconnect, PUBACK (→ the mid is acknowledged), command payloads.
* **edge-seg-mqtt-cmd** runs commands (a reload hook may take seconds) and sends their results.

Delivery: data messages (mask, crop, metrics, zone event) are QoS 1, written to the outbox before paho sees
them and deleted on PUBACK: at least once across broker outages and device restarts; consumers
dedupe by ``msg_id``. Within a process, paho retransmits its in-flight window after a reconnect;
after a restart, the outbox is replayed from its oldest row. Status, command results and
discovery configs are control messages sent directly at QoS 1: a replayed stale status or an
answer to a command from before a restart would be wrong, so they are not kept on disk.
Every message's ``seq`` comes from ``edge_seg.publish.sequence`` (per topic, monotonic across restarts);
``frame_seq`` is the frame's number. The LWT has ``seq`` 0: the broker sends it at a time nobody knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_seg.publish import snapshot
from edge_seg.publish.commands import CommandHooks, CommandRunner, build_handler
from edge_seg.publish.discovery import discovery_configs, zone_discovery_configs
from edge_seg.publish.messages import (
    Encoded,
    MessageError,
    encode_crop,
    encode_instances,
    encode_mask,
    encode_metrics,
    encode_status,
)
from edge_seg.publish.mqtt_client import connection
from edge_seg.publish.mqtt_config import MqttConfig, PolicyConfig, parse_broker_url
from edge_seg.publish.outbox import Outbox
from edge_seg.publish.policy import CameraPolicies
from edge_seg.publish.sequence import Sequences
from edge_seg.publish.zone_output import ZoneOutput

log = logging.getLogger(__name__)
EXPIRE_EVERY_S = 5.0


@dataclass
class _Work:
    result: object  # FrameResult
    reason: str | None
    uncertainty: float | None
    crops: Sequence = ()


class Publisher:
    """MQTT publish sink (``edge_seg.loop.sinks.PublishSink``); also usable as a loop stage (``publisher(result)``)."""

    name = "publish"

    def __init__(self, config: MqttConfig, *, device: str, state_dir: str | Path, model=None,
                 classes: Sequence[str] = (), source_state: Callable[[], str | None] | None = None,
                 degraded: Callable[[], str | None] | None = None,
                 summary: Callable[[], dict] | None = None, reload: Callable[[], dict | None] | None = None,
                 update_model: Callable[[dict], dict] | None = None, rollback: Callable[[dict], dict] | None = None,
                 allowed_url_prefixes: Sequence[str] = (), zones: Sequence | Mapping = (), zone_counts: bool = False,
                 labels: dict[str, str] | None = None, start: bool = True,
                 cameras: Mapping[str, PolicyConfig] | None = None, camera_states: Callable[[], dict] | None = None):
        self.config, self.device = config, device
        self.base = f"{config.topic_prefix}/{device}"
        self.model, self.classes, self.labels = model, tuple(classes), dict(labels or {})  # labels: status extra
        self._source_state, self._degraded, self._summary = source_state, degraded, summary
        self._started = time.monotonic()
        self.counts = {"frames": 0, "queued": 0, "queue_dropped": 0, "masks": 0, "crops": 0, "encode_errors": 0,
                       "sent": 0, "acked": 0, "rejected": 0, "qos0_dropped": 0}
        self.call_ms: deque[tuple[float, float]] = deque(maxlen=2000)  # (wall, thread CPU) ms per publish()
        self.policy = CameraPolicies(config.policy, cameras)  # each camera's own (several cameras)
        self._camera_states = camera_states  # () -> each camera's state, for the status message
        hooks = CommandHooks(uptime=self.uptime, set_policy=lambda args: self.policy.update(**args),
                             snapshot=self._arm_snapshot, reload=reload, update_model=update_model,
                             rollback=rollback)
        self.commands = build_handler(config.commands, device, hooks, lambda: self.seqs.next("cmd/result"),
                                      state_dir=state_dir, allowed_url_prefixes=allowed_url_prefixes)
        self.runner = CommandRunner(self.commands, self._send_direct)
        will = encode_status(device=device, seq=0, online=False, model=model)
        self.link = connection(config, device, f"{self.base}/status", will.payload, on_online=self._on_online,
                               on_ack=lambda mid, failed: self._wake((mid, failed)), on_command=self.runner.submit)
        self.client = self.link.client
        self.seqs = Sequences(state_dir)  # seq per topic, monotonic across restarts; reads the outbox: before it
        # ZoneConfig values, or camera -> its ZoneConfig values (several cameras); counts: an instance model
        self.zones = dict(zones) if isinstance(zones, Mapping) else {None: tuple(zones)}
        self._zone_counts = zone_counts
        self.zone_output = ZoneOutput(device, self.seqs, lambda e, retain: self._send_direct(e, retain=retain),
                                      lambda: self.link.connected)
        self.outbox = Outbox(Path(state_dir) / "outbox.sqlite", ttl_s=config.outbox.ttl_s,  # last: nothing to undo
                             max_bytes=config.outbox.max_bytes, sync=config.outbox.sync, audit=config.outbox.audit)
        self._cond = threading.Condition()
        self._frames: deque[_Work] = deque()
        self._acks: deque[tuple[int, bool]] = deque()
        self._kick = self._stopping = self._closed = self._busy = False
        self._mids: dict[int, int] = {}  # paho mid → outbox row id, for the in-flight window
        self._cursor = 0  # highest outbox row id handed to paho
        self._snapshots = snapshot.SnapshotRequests()
        self._ha_sent = False
        self._fps = (0, time.monotonic(), 0.0)  # frames, at, fps
        self._thread = threading.Thread(target=self._run, name="edge-seg-mqtt", daemon=True)
        if start:
            self.start()

    # --- the calling (sink) thread ---------------------------------------------------------
    def start(self) -> None:
        """Start connecting (in the background, with backoff) and the publisher threads."""
        self._thread.start()
        self.runner.start()
        self.link.start()

    def publish(self, result) -> None:
        """Decide and enqueue; never blocks on the network or the disk."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if self._closed:
            return
        seg, policy = result.segmentation, self.policy.of(getattr(result, "camera", None))
        # the mean over the confidence map only when the policy needs it (else the publisher thread computes it)
        uncertainty = None if policy.config.uncertainty is None else 1.0 - seg.mean_confidence
        reason = policy.decide(seg.area_fractions, uncertainty)
        crops = result.extras.get("crops") or ()
        self.counts["frames"] += 1
        if reason is not None or crops or ZoneOutput.wants(result):
            with self._cond:
                if len(self._frames) >= self.config.queue:  # drop the oldest frame without zone events or states
                    victim = next((w for w in self._frames if not ZoneOutput.wants(w.result)), None)
                    if victim is not None:
                        self._frames.remove(victim)
                        self.counts["queue_dropped"] += 1
                self._frames.append(_Work(result, reason, uncertainty, tuple(crops)))
                self.counts["queued"] += 1
                self._cond.notify()
        self.call_ms.append(((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3))

    __call__ = publish

    def uptime(self) -> float:
        return time.monotonic() - self._started

    def _wake(self, ack: tuple[int, bool] | None = None) -> None:
        with self._cond:
            if ack is not None:
                self._acks.append(ack)
            self._kick = True
            self._cond.notify()

    # --- hooks called on paho's network thread (the Connection catches what they raise) -----------------
    def _on_online(self, client) -> None:
        if self.config.commands.enabled:
            client.subscribe(f"{self.base}/cmd", qos=1)
        self._send_direct(self._status(True), retain=True)
        self.zone_output.resend()
        self._ha_sent = False
        self._send_discovery()
        self._wake()

    # --- sending ------------------------------------------------------------------------------
    def _send_direct(self, encoded: Encoded, retain: bool = False) -> None:
        self.link.send(f"{self.base}/{encoded.topic}", encoded.payload, retain=retain,
                       content_type=encoded.content_type, msg_id=encoded.msg_id)

    def _status(self, online: bool) -> Encoded:
        frames, at, fps = self._fps
        now = time.monotonic()
        if now - at >= 1.0:
            fps = (self.counts["frames"] - frames) / (now - at)
            self._fps = (self.counts["frames"], now, fps)
        state, degraded = self._hook(self._source_state), self._hook(self._degraded)
        extra = {"nodelay": self.link.nodelay, **({"labels": self.labels} if self.labels else {})}
        if self._camera_states is not None:
            extra["cameras"] = self._hook(self._camera_states)  # name -> state, degraded, fps, counters
        return encode_status(device=self.device, seq=self.seqs.next("status"), online=online, model=self.model, fps=fps,
                             uptime_s=self.uptime(), source_state=state, outbox_depth=self.outbox.stats().depth,
                             degraded=degraded, extra=extra)

    @staticmethod
    def _hook(hook: Callable[[], object] | None):
        try:
            return None if hook is None else hook()
        except Exception:  # noqa: BLE001 - a status must not fail on a hook
            return None

    def _send_discovery(self) -> None:
        if not self.config.ha_discovery or self._ha_sent or (self.model is None and not self.classes):
            return
        name = f"{self.model.name} {self.model.version}" if self.model is not None else None
        configs = discovery_configs(self.device, self.base, self.classes, name, self.config.ha_prefix)
        for camera, zones in self.zones.items():
            configs += zone_discovery_configs(self.device, self.base, zones, self._zone_counts, name,
                                              self.config.ha_prefix, camera)
        for topic, payload in configs:
            self.client.publish(topic, payload, qos=1, retain=True)
        self._ha_sent = True

    def summary(self) -> dict:
        """Counters for the metrics message and tests (outbox, publisher, policy, commands, call cost)."""
        calls = np.asarray(self.call_ms, dtype=np.float64).reshape(-1, 2) if self.call_ms else np.zeros((1, 2))
        cost = {f"{name}_{q}": round(float(np.percentile(calls[:, i], q)), 4)
                for i, name in enumerate(("wall", "cpu")) for q in (50, 99)}
        publisher = {**self.counts, "commands_busy": self.runner.busy}
        out = {"outbox": asdict(self.outbox.stats()), "publisher": publisher, "link": dict(self.link.counts),
               "policy": dict(self.policy.counts), "commands": dict(self.commands.counts),
               "connected": self.link.connected, "publish_call_ms": cost}
        if self._summary is not None:
            try:
                out.update(self._summary())
            except Exception as err:  # noqa: BLE001
                out["summary_error"] = str(err)
        return out

    # --- the publisher thread -----------------------------------------------------------------
    def _run(self) -> None:
        next_status = time.monotonic() + self.config.status_interval_s
        next_metrics = time.monotonic() + (self.config.metrics_interval_s or 0)
        next_expire = 0.0
        while True:
            with self._cond:
                if not (self._frames or self._acks or self._kick or self._stopping):
                    self._cond.wait(0.25)
                work, acks = list(self._frames), list(self._acks)
                self._frames.clear()
                self._acks.clear()
                self._kick, stopping, self._busy = False, self._stopping, True
            try:
                self._step(work, acks)
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + self.config.status_interval_s
                    if self.link.connected:
                        self._send_direct(self._status(True), retain=True)
                if self.config.metrics_interval_s and now >= next_metrics:
                    next_metrics = now + self.config.metrics_interval_s
                    seq = self.seqs.next("metrics")
                    self._store([encode_metrics(device=self.device, seq=seq, summary=self.summary())])
                if now >= next_expire:
                    next_expire = now + EXPIRE_EVERY_S
                    self.outbox.expire(set(self._mids.values()))
                    self._snapshots.fail_expired(now, self._reply)
            except Exception as err:  # noqa: BLE001 - the publisher thread must survive a bad frame
                log.error("publisher step failed: %s", err, exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                self._busy = False
            if stopping and not work:
                return

    def _step(self, work: list[_Work], acks: list[tuple[int, bool]]) -> None:
        done = [self._mids.pop(mid) for mid, failed in acks if not failed and mid in self._mids]
        refused = [self._mids.pop(mid) for mid, failed in acks if failed and mid in self._mids]
        if done:
            self.counts["acked"] += self.outbox.ack(done)
        if refused:
            self.counts["rejected"] += self.outbox.ack(refused, rejected=True)
            log.warning("the broker refused %d message(s) (error PUBACK); they are dropped", len(refused))
        encoded, snapshot_frame = [], None
        for item in work:
            messages = self._encode(item)
            encoded += messages
            if item.reason == "snapshot" and messages and messages[0].topic.endswith("mask"):
                snapshot_frame = (item, messages[0])
        if encoded:
            self._store(encoded)
        if snapshot_frame is not None:
            item, mask = snapshot_frame
            self._snapshots.answer(item.result, mask.msg_id, self.config.max_payload - 2048, self._reply)
        self._pump()

    def _encode(self, item: _Work) -> list[Encoded]:
        result, cfg = item.result, self.config
        seg, frame, camera = result.segmentation, result.frame, getattr(result, "camera", None)
        topic = "" if camera is None else f"{camera}/"  # seq per device and topic: each camera's count on their own
        if self.model is None:
            self.model, self.classes = seg.model, tuple(seg.classes)
            if self.link.connected:
                self._send_discovery()
        out = []
        try:
            out += self.zone_output.encode(result)  # zone events (outbox) and changed retained zone states
            if item.reason is not None:
                if seg.instances is not None:  # an instance model: one RLE per instance
                    out.append(encode_instances(seg, device=self.device, seq=self.seqs.next(f"{topic}mask"),
                                                ts=frame.ts, max_bytes=cfg.max_payload, timings=result.timings,
                                                frame_seq=frame.seq, camera=camera))
                else:
                    out.append(encode_mask(seg, device=self.device, seq=self.seqs.next(f"{topic}mask"), ts=frame.ts,
                                           fmt=cfg.mask_format, max_bytes=cfg.max_payload, timings=result.timings,
                                           mean_uncertainty=item.uncertainty, frame_seq=frame.seq, camera=camera))
                self.counts["masks"] += 1
            for crop in item.crops:
                out.append(encode_crop(crop, device=self.device, seq=self.seqs.next(f"{topic}crop"), model=seg.model,
                                       frame_size=seg.frame_size, classes=seg.classes, camera=camera))
                self.counts["crops"] += 1
        except MessageError as err:
            self.counts["encode_errors"] += 1
            log.warning("frame %s not published: %s", frame.seq, err)
        return out

    def _store(self, encoded: list[Encoded]) -> None:
        if self.config.qos == 1:
            self.outbox.put(encoded, inflight=set(self._mids.values()))
            return
        for message in encoded:  # QoS 0: best effort, nothing kept
            if self.link.connected:
                self.link.send(f"{self.base}/{message.topic}", message.payload, qos=0,
                               content_type=message.content_type, msg_id=message.msg_id)
                self.counts["sent"] += 1
            else:
                self.counts["qos0_dropped"] += 1

    def _pump(self) -> None:
        """Hand the next outbox rows to paho while connected, keeping at most ``inflight`` unacknowledged."""
        room = self.config.inflight - len(self._mids)
        if self.config.qos != 1 or not self.link.connected or room <= 0:
            return
        for row in self.outbox.fetch(self._cursor, room):
            try:
                info = self.link.send(f"{self.base}/{row.topic}", row.payload, content_type=row.content_type,
                                      msg_id=row.msg_id)
            except ValueError as err:  # paho refuses it outright (e.g. size): it can never be sent
                log.warning("message %s cannot be sent: %s", row.msg_id, err)
                self.outbox.ack([row.id], rejected=True)
                self._cursor = row.id
                continue
            if info.rc not in (0, 4):  # success, or no connection (paho keeps it and sends it on reconnect)
                break
            self._mids[info.mid] = row.id
            self._cursor = row.id
            self.counts["sent"] += 1

    # --- snapshots --------------------------------------------------------------------------------
    def _arm_snapshot(self, command_id: str) -> None:
        self._snapshots.arm(command_id)
        self.policy.request_snapshot()

    def _reply(self, command_id: str, ok: bool, body: dict | None, error: str | None) -> None:
        self._send_direct(self.commands.result(command_id, ok, body, error=error))

    # --- shutdown ---------------------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every outbox row is acknowledged (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                idle = not self._frames and not self._busy
            if idle and self.outbox.stats().depth == 0:
                return True
            self._wake()
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 3.0) -> None:
        """Stop: queued frames go to the outbox, in-flight ones get ``timeout`` s for their PUBACK, retained offline
        status, disconnect. Rows not acknowledged stay in the outbox for the next start."""
        if self._closed:
            return
        self._closed = True
        if self.link.connected:
            self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)
        self.runner.stop()
        if self.link.connected:
            status = self._status(False)
            info = self.link.send(f"{self.base}/status", status.payload, retain=True,
                                  content_type=status.content_type, msg_id=status.msg_id)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self.link.stop()
        self.seqs.close()  # the exact next numbers: the next start skips none
        self.outbox.close()


__all__ = ["MqttConfig", "Publisher", "parse_broker_url"]
