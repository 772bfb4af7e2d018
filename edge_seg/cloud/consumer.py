"""The cloud side: subscribe to devices' results over MQTT, dedupe, store (``edge-seg consume``).

``Consumer`` subscribes (MQTT 5, QoS 1) to ``{prefix}/+/mask``, ``/crop``, ``/status``, ``/metrics``,
``/cmd/result`` and ``/event`` (zone events: also in the ``events`` table, ``edge_seg.cloud.events``).
With ``share="GROUP"`` the filters become ``$share/GROUP/...``: the broker hands
each message to one member of the group, so N consumer processes split the stream. (Shared
subscriptions get no retained messages: a shared consumer sees a device's status when it next
changes.) Each message is decoded and validated (``edge_seg.publish.messages.decode``), checked
against its topic, deduplicated by ``msg_id`` and stored: into SQLite + ``out_dir`` (``edge_seg.cloud.store``) or,
with ``db``/``objects``, PostgreSQL + S3 (``edge_seg.cloud.store_postgres``; ``edge_seg.cloud.store_base``
picks). If the store goes away while running (``StoreUnavailableError``: connection lost, server down),
the consumer acknowledges nothing more, stops, and ``run`` raises: ``edge-seg consume`` exits non-zero
for its service manager to restart it; the broker redelivers what was not stored. Before any pixel is decoded
its frame and pixel counts are checked against the limits of ``edge_seg.publish.payload_masks``
(a dozen bytes of RLE can describe a 16384x16384 mask), so one message costs bounded time and memory.
A payload that does not decode or passes a limit is counted as ``bad``; one that raises anything
else while being stored (a full disk, a bug) as ``errors``; both are logged on one line, parked in
the dead letters (``edge_seg.cloud.dead_letters``: topic, reason, time, size, payload) and
acknowledged: nothing a device sends stops the consumer or is redelivered forever (unacknowledged
messages would fill the broker's in-flight window, 20 in Mosquitto, and stall every device).

Gaps: devices number each topic's messages on across restarts, so the store counts, per device and
topic, messages that never arrived (``edge_seg.cloud.gaps``): ``stats`` has ``gaps``, ``late``,
``out_of_order``, ``seq_resets`` and per device ``gaps`` by topic (also in ``devices.json``). The
consumer has no Prometheus registry; a scraper reads these from the stats.

Storage happens in paho's network thread inside ``on_message``, and the PUBACK is sent (manual
ack) only after the message is on disk, found a duplicate or parked: a crash before that makes the
broker redeliver it, and the dedupe drops the copy. Only a message that cannot even be parked (the
database itself fails: disk full, locked) is left unacknowledged, logged, and redelivered on the
next connection: acknowledging it would lose it. A stable ``client_id`` gets a persistent
session (clean start off, session expiry a day): the broker queues messages while the consumer is
away. Without one, a random id and a clean session.

Broker URL: ``mqtt[s]://[user[:password]@]host[:port]``. The password may instead come from
``password``/``password_file`` or the ``EDGE_SEG_MQTT_PASSWORD`` environment variable; it is
never logged (log lines name only host and port).

For other programs: ``decode_message(payload, content_type)`` (= ``messages.decode``),
``iter_masks(out_dir)`` for what a consumer stored, ``iter_dead_letters(out_dir)`` for what it parked,
``parse_broker_url``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_seg.cloud.dead_letters import iter_dead_letters, reason_of
from edge_seg.cloud.records import kind_of
from edge_seg.cloud.store import StoredMask, iter_masks
from edge_seg.cloud.store_base import open_store
from edge_seg.errors import EdgeSegError, StoreUnavailableError
from edge_seg.publish.messages import MessageError
from edge_seg.publish.messages import decode as decode_message
from edge_seg.publish.payload_masks import check_limits

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGE_SEG_MQTT_PASSWORD"
KINDS = ("mask", "crop", "status", "metrics", "cmd/result", "event")
PROGRESS_INTERVAL_S = 5.0
SLOW_MESSAGE_S = 2.0  # a message that takes longer is logged (the decode limits keep this from happening)


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL; ``password`` is kept out of ``repr``."""

    tls: bool
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str, *, username: str | None = None, password: str | None = None,
                     password_file: str | os.PathLike | None = None) -> BrokerAddress:
    """``mqtt[s]://[user[:password]@]host[:port]`` (ports 1883 / 8883 by default).

    The password comes from, in order: the ``password`` argument, ``password_file`` (trailing
    newline ignored), the URL, ``EDGE_SEG_MQTT_PASSWORD``. Error messages never repeat the URL.
    """
    parts = urlsplit(url if isinstance(url, str) else "")
    try:
        port = parts.port
    except ValueError:
        raise EdgeSegError("broker URL has a bad port (1-65535), e.g. mqtt://host:1883") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise EdgeSegError("broker URL must look like mqtt://host:1883 or mqtts://user@host:8883")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EdgeSegError("broker URL takes no path or query: mqtt[s]://[user[:password]@]host[:port]")
    tls = parts.scheme == "mqtts"
    secret = password
    if secret is None and password_file is not None:
        try:
            secret = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise EdgeSegError(f"cannot read the password file {password_file}: {err.strerror}") from None
    if secret is None and parts.password is not None:
        secret = unquote(parts.password)
    if secret is None:
        secret = os.environ.get(PASSWORD_ENV) or None
    user = username if username is not None else (unquote(parts.username) if parts.username else None)
    return BrokerAddress(tls, parts.hostname, port or (8883 if tls else 1883), user, secret)


class Consumer:
    """Subscribe, decode, dedupe and store devices' messages into ``out_dir`` (see the module docstring)."""

    def __init__(self, broker_url: str, out_dir: str | os.PathLike | None, *, share: str | None = None,
                 topic_prefix: str = "edge_seg", client_id: str | None = None, username: str | None = None,
                 password: str | None = None, password_file: str | os.PathLike | None = None,
                 tls_ca: str | os.PathLike | None = None, tls_cert: str | os.PathLike | None = None,
                 tls_key: str | os.PathLike | None = None, tls_insecure: bool = False, progress: bool = False,
                 progress_interval: float = PROGRESS_INTERVAL_S, keepalive: int = 30, db: str | None = None,
                 objects: str | None = None, migrate: bool = False):
        if share is not None and (not share or any(c in share for c in "/+#")):
            raise EdgeSegError(f"share group {share!r} must be a non-empty name without '/', '+' or '#'")
        if any(c in topic_prefix for c in "+#") or not topic_prefix:
            raise EdgeSegError("topic prefix must be non-empty and without '+' or '#'")
        self.address = parse_broker_url(broker_url, username=username, password=password,
                                        password_file=password_file)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.share = share
        self.prefix = topic_prefix.rstrip("/")
        self.progress = progress
        self.progress_interval = progress_interval
        self.keepalive = keepalive
        self.ready = threading.Event()  # set once the subscriptions are acknowledged
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stats = {"received": 0, "stored": 0, "duplicates": 0, "bad": 0, "errors": 0, "dead_letters": 0,
                       "dead_letters_total": 0, "connects": 0, "by_kind": dict.fromkeys(KINDS, 0)}
        self._last_error: str | None = None
        self._connected = False
        self._fatal: str | None = None  # the store went away: acknowledge nothing more, stop, exit non-zero
        self.store = open_store(self.out_dir, db=db, objects=objects, migrate=migrate)
        self._stats["dead_letters_total"] = self.store.dead_letters.total()
        persistent = client_id is not None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"edge-seg-consumer-{uuid.uuid4().hex[:12]}",
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        self._connect_props = Properties(PacketTypes.CONNECT)
        self._connect_props.SessionExpiryInterval = 86_400 if persistent else 0
        self._clean_start = not persistent
        if self.address.username is not None or self.address.password is not None:
            self.client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or tls_ca is not None or tls_cert is not None:
            self.client.tls_set(ca_certs=None if tls_ca is None else os.fspath(tls_ca),
                                certfile=None if tls_cert is None else os.fspath(tls_cert),
                                keyfile=None if tls_key is None else os.fspath(tls_key))
            if tls_insecure:
                self.client.tls_insecure_set(True)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # ------------------------------------------------------------------------------------ MQTT callbacks
    def topics(self) -> list[str]:
        """The subscription filters (with ``$share/GROUP/`` when sharing)."""
        base = [f"{self.prefix}/+/{kind}" for kind in KINDS]
        return [f"$share/{self.share}/{t}" for t in base] if self.share else base

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report(f"broker {self.address} refused the connection: {reason_code} (retrying with backoff)")
            return
        self._last_error = None
        self._connected = True
        with self._lock:
            self._stats["connects"] += 1
        log.info("connected to %s", self.address)
        client.subscribe([(t, 1) for t in self.topics()])

    def _on_connect_fail(self, client, userdata) -> None:
        self._report(f"cannot reach broker {self.address} (retrying with backoff)")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.ready.clear()
        was_connected, self._connected = self._connected, False
        if was_connected and not self._stop.is_set():
            self._report(f"disconnected from {self.address}: {reason_code} (reconnecting)")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self._report(f"broker refused the subscription: {', '.join(failed)}")
        else:
            self.ready.set()

    def _report(self, text: str) -> None:
        if text != self._last_error:  # one line per distinct problem, not one per retry
            log.warning("%s", text)
            self._last_error = text

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        content_type = getattr(message.properties, "ContentType", None) if message.properties else None
        started = time.monotonic()
        with self._lock:
            if self._fatal is not None:
                return  # not acknowledged: the broker redelivers it when the consumer is back
            self._stats["received"] += 1
            try:
                msg = decode_message(message.payload, content_type)
                self._check_topic(message.topic, msg)
                check_limits(msg)  # before any pixel is decoded: a small message may describe a huge frame
                stored = self.store.store(msg)
                self._stats["stored" if stored else "duplicates"] += 1
                if stored:
                    self._stats["by_kind"][kind_of(msg)] += 1
                ack = True
            except StoreUnavailableError as err:
                self._give_up(str(err))
                return
            except MessageError as err:
                self._stats["bad"] += 1
                ack = self._dead_letter(message, content_type, str(err), "bad payload")
            except Exception as err:  # noqa: BLE001 - anything else (disk, a bug, MemoryError): park it, go on
                self._stats["errors"] += 1
                ack = self._dead_letter(message, content_type, reason_of(err), "cannot store a message")
            self._flush()
        elapsed = time.monotonic() - started
        if elapsed > SLOW_MESSAGE_S:
            log.warning("a message on %s took %.1f s (%d bytes)", message.topic[:200], elapsed, len(message.payload))
        if ack and message.qos > 0:
            client.ack(message.mid, message.qos)

    def _dead_letter(self, message: mqtt.MQTTMessage, content_type: str | None, reason: str, what: str) -> bool:
        """Park a message that cannot be stored; True when parked (then it is acknowledged)."""
        topic = message.topic[:200]
        try:
            self._stats["dead_letters_total"] = self.store.dead_letters.add(message.topic, message.payload,
                                                                            reason, content_type)
        except StoreUnavailableError as err:
            self._give_up(str(err))
            return False
        except Exception as err:  # noqa: BLE001 - the database itself is failing (disk full, locked)
            log.error("%s from %s (%s) and cannot park it in the dead letters: %s; not acknowledged, the broker "
                      "redelivers it on the next connection", what, topic, reason, reason_of(err))
            return False
        self._stats["dead_letters"] += 1
        log.warning("%s from %s (%d bytes): %s; kept in the dead letters", what, topic, len(message.payload), reason)
        return True

    def _give_up(self, reason: str) -> None:
        """The store went away: acknowledge nothing more and stop; ``run`` raises ``StoreUnavailableError``."""
        if self._fatal is None:
            self._fatal = reason
            log.error("%s; not acknowledged, stopping (the broker redelivers what was not stored)", reason)
        self._stop.set()

    def _flush(self) -> None:
        if self._fatal is not None:
            return
        try:
            self.store.flush()  # at most once a second; run() also flushes when idle
        except StoreUnavailableError as err:
            self._give_up(str(err))
        except Exception as err:  # noqa: BLE001 - the message is stored: the summary is rewritten at the next flush
            self._report(f"cannot update the summary of {self.store.describe()}: {reason_of(err)}")

    def _check_topic(self, topic: str, msg) -> None:
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else ""
        device, _, kind = rest.partition("/")
        if device != msg.device or kind != kind_of(msg):
            raise MessageError(f"a {kind_of(msg)} message from device '{msg.device}' arrived on topic '{topic[:200]}'")

    # ----------------------------------------------------------------------------------------- running
    def start(self) -> Consumer:
        """Connect in the background (paho's thread reconnects with backoff); returns at once."""
        self._stop.clear()
        self.client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive,
                                  clean_start=self._clean_start, properties=self._connect_props)
        self.client.loop_start()
        return self

    def run(self, stop_event: threading.Event | None = None, duration: float | None = None) -> dict:
        """Consume until ``stop_event`` is set, ``duration`` seconds pass or ``stop()`` is called; the stats."""
        self.start()
        deadline = None if duration is None else time.monotonic() + duration
        next_line = time.monotonic() + self.progress_interval
        try:
            while not self._stop.is_set() and not (stop_event is not None and stop_event.is_set()):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._stop.wait(0.2)
                with self._lock:
                    self._flush()
                if self.progress and time.monotonic() >= next_line:
                    print(self.summary_line(), flush=True)
                    next_line = time.monotonic() + self.progress_interval
        finally:
            self.close()
        if self.progress:
            print(self.summary_line(), flush=True)
        if self._fatal is not None:
            raise StoreUnavailableError(f"{self._fatal}: exiting so the service manager restarts the consumer "
                                        "(nothing unstored was acknowledged)")
        return self.stats

    def stop(self) -> None:
        """Ask ``run`` to return (thread- and signal-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Disconnect, stop paho's thread and write the state files."""
        self._stop.set()
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            with self._lock:
                self.store.close()

    @property
    def stats(self) -> dict:
        """Counters: received, stored, duplicates, bad, errors, dead_letters (this run; ``dead_letters_total``
        ever, in this out_dir), connects, by_kind; gaps, late, out_of_order, seq_resets (this run,
        ``edge_seg.cloud.gaps``); plus ``devices`` (online, last seen, gaps per topic ever in this out_dir)."""
        with self._lock:
            out = {**self._stats, **self.store.gaps.counts, "by_kind": dict(self._stats["by_kind"])}
            out["devices"] = {dev: {"online": (entry.get("status") or {}).get("online"),
                                    "last_seen": entry.get("last_seen"), "gaps": dict(entry.get("gaps") or {})}
                              for dev, entry in self.store.devices.items()}
        return out

    def summary_line(self) -> str:
        """``received 120 stored 118 duplicates 2 bad 0 | cam-1 online 14.9 fps outbox 0 (3 s ago)``."""
        s = self.stats
        parts = [f"received {s['received']} stored {s['stored']} duplicates {s['duplicates']} bad {s['bad']}"
                 + (f" dead letters {s['dead_letters']}" if s["dead_letters"] else "")
                 + (f" gaps {s['gaps']}" if s["gaps"] or s["late"] else "")]
        now = time.time()
        with self._lock:
            devices = {dev: dict(entry) for dev, entry in self.store.devices.items()}
        for dev, entry in sorted(devices.items()):
            status = entry.get("status") or {}
            state = {True: "online", False: "offline"}.get(status.get("online"), "no status")
            fps = f" {status['fps']:.1f} fps" if status.get("fps") is not None else ""
            depth = f" outbox {status['outbox_depth']}" if status.get("outbox_depth") is not None else ""
            seen = entry.get("last_seen")
            age = f" ({now - seen:.0f} s ago)" if seen else ""
            parts.append(f"{dev} {state}{fps}{depth}{age}")
        return "consumer: " + " | ".join(parts)


def run_consumer(broker_url: str, out_dir: str | os.PathLike, share: str | None = None,
                 duration: float | None = None, *, progress: bool = True, **options) -> dict:
    """``edge-seg consume``: run a ``Consumer`` until SIGINT/SIGTERM or ``duration``; its final stats.

    ``options`` go to ``Consumer`` (topic_prefix, client_id, username, password_file, tls_ca,
    tls_cert, tls_key, tls_insecure, progress_interval).
    """
    consumer = Consumer(broker_url, out_dir, share=share, progress=progress, **options)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: consumer.stop())
    try:
        return consumer.run(duration=duration)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["BrokerAddress", "Consumer", "StoredMask", "decode_message", "iter_dead_letters", "iter_masks",
           "parse_broker_url", "run_consumer"]
