"""Building the paho-mqtt client from ``MqttConfig``: protocol, session, TLS, credentials, LWT.

* paho-mqtt v2 callbacks (``CallbackAPIVersion.VERSION2``); MQTT 5 by default, 3.1.1 selectable.
* A stable client id (``edge-seg-{device}``) with a persistent session: MQTT 5 ``clean_start``
  False and a ``SessionExpiryInterval``; MQTT 3.1.1 ``clean_session=False``. Commands sent while
  the device is offline wait in the broker's session.
* TLS for ``mqtts://`` (CA, optional client certificate and key for mutual TLS).
* The password comes from ``resolve_password`` (file or environment) and is never logged.
* The retained ``offline`` status is the Last Will.
* TCP_NODELAY on the socket as soon as it is open (paho never sets it; small messages would
  otherwise wait for Nagle's algorithm, ~40 ms each).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_seg.errors import EdgeSegError
from edge_seg.publish.mqtt_config import PASSWORD_ENV, MqttConfig, parse_broker_url, resolve_password

log = logging.getLogger("edge_seg.publish.mqtt")
REMIND_EVERY_S = 600.0
AUTH_REFUSED = {134: "bad username or password",
                135: "not authorized (bad username or password, or the user may not connect)"}  # Mosquitto sends 135


@dataclass(frozen=True)
class Endpoint:
    """Where the client connects (no secrets: safe to log)."""

    scheme: str
    host: str
    port: int
    user: str | None
    password_source: str | None  # "password_file", PASSWORD_ENV, or None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def set_nodelay(sock) -> bool:
    """Turn Nagle's algorithm off on a (possibly TLS-wrapped) TCP socket; whether it is now off."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except (OSError, AttributeError):
        return False


def v5(config: MqttConfig) -> bool:
    return config.protocol == "5"


def publish_properties(config: MqttConfig, content_type: str | None, msg_id: str | None) -> Properties | None:
    """MQTT 5 PUBLISH properties: content type and a ``msg_id`` user property (None for 3.1.1)."""
    if not v5(config):
        return None
    props = Properties(PacketTypes.PUBLISH)
    if content_type:
        props.ContentType = content_type
    if msg_id:
        props.UserProperty = [("msg_id", msg_id)]
    return props


def connect_properties(config: MqttConfig) -> Properties | None:
    if not v5(config):
        return None
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(config.session_expiry_s)
    return props


def make_client(config: MqttConfig, device: str, will_topic: str, will_payload: bytes) -> tuple[mqtt.Client, Endpoint]:
    """A configured (not yet connected) paho client and where it will connect."""
    if config.url is None:
        raise EdgeSegError("mqtt.url is not set: give --broker mqtt://host:1883 or mqtt.url in the config")
    scheme, user, host, port = parse_broker_url(config.url)
    protocol = MQTTProtocolVersion.MQTTv5 if v5(config) else MQTTProtocolVersion.MQTTv311
    client_id = config.client_id or f"edge-seg-{device}"
    kwargs: dict = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id,
                    "protocol": protocol}
    if not v5(config):
        kwargs["clean_session"] = False
    client = mqtt.Client(**kwargs)
    client.suppress_exceptions = True  # our callbacks catch everything; this is the second fence
    password = resolve_password(config)
    source = None
    if password is not None:
        if user is None:
            raise EdgeSegError("a broker password is set but the URL names no user: use mqtt[s]://USER@host:port")
        source = "password_file" if config.password_file is not None else PASSWORD_ENV
    if user is not None:
        client.username_pw_set(user, password)
    if scheme == "mqtts":
        tls = config.tls
        for name in ("ca", "cert", "key"):
            path = getattr(tls, name)
            if path is not None and not path.is_file():
                raise EdgeSegError(f"mqtt.tls.{name}: file not found: {path}")
        try:
            client.tls_set(ca_certs=str(tls.ca) if tls.ca else None, certfile=str(tls.cert) if tls.cert else None,
                           keyfile=str(tls.key) if tls.key else None)
        except (OSError, ValueError) as err:
            raise EdgeSegError(f"mqtt.tls: cannot load the certificates: {err}") from None
        client.tls_insecure_set(tls.insecure)
    will_props = None
    if v5(config):
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.ContentType = "application/json"
    client.will_set(will_topic, will_payload, qos=1, retain=True, properties=will_props)
    client.max_inflight_messages_set(config.inflight)
    client.max_queued_messages_set(config.inflight + 1000)  # the outbox window + status and command results
    client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
    return client, Endpoint(scheme, host, port, user, source)


def connect_async(client: mqtt.Client, config: MqttConfig, endpoint: Endpoint) -> None:
    """Start connecting (never blocks; the network thread retries with backoff)."""
    if v5(config):
        client.connect_async(endpoint.host, endpoint.port, keepalive=config.keepalive, clean_start=False,
                             properties=connect_properties(config))
    else:
        client.connect_async(endpoint.host, endpoint.port, keepalive=config.keepalive)


def refusal_text(reason_code, endpoint: Endpoint, max_delay: int) -> str:
    """One line for a refused CONNECT: what, who, what to do (never the password)."""
    value = getattr(reason_code, "value", None)
    if value in AUTH_REFUSED:
        who = f"user '{endpoint.user}'" if endpoint.user else "no user"
        how = f"password from {endpoint.password_source}" if endpoint.password_source else "no password"
        return (f"MQTT broker {endpoint.host}:{endpoint.port} refused the connection: {AUTH_REFUSED[value]} "
                f"({who}, {how}); check the credentials; retrying with backoff up to {max_delay} s")
    return (f"MQTT broker {endpoint.host}:{endpoint.port} refused the connection: {reason_code}; "
            f"retrying with backoff up to {max_delay} s")


@dataclass
class Connection:
    """The paho client and its connection state. Callbacks run on paho's network thread: they record, log
    (once per distinct problem, reminding every ``REMIND_EVERY_S``) and forward to the hooks; never raise.

    Hooks: ``on_online(client)`` after a successful CONNACK; ``on_ack(mid, failed)`` per PUBACK;
    ``on_command(payload)`` per message on the subscribed command topic.
    """

    config: MqttConfig
    client: mqtt.Client
    endpoint: Endpoint
    on_online: Callable[[mqtt.Client], None]
    on_ack: Callable[[int, bool], None]
    on_command: Callable[[bytes], None]
    connected: bool = False
    nodelay: bool = False
    session_present: bool = False
    closing: bool = False
    counts: dict = field(default_factory=lambda: {"connects": 0, "disconnects": 0, "refused": 0})
    attempts: list[float] = field(default_factory=list)  # monotonic time of each CONNECT attempt
    _problem: str | None = None
    _problem_at: float = 0.0

    def __post_init__(self) -> None:
        c = self.client
        c.on_socket_open = lambda _c, _u, sock: set_nodelay(sock)
        c.on_pre_connect = lambda _c, _u: self.attempts.append(time.monotonic())
        c.on_connect, c.on_disconnect, c.on_connect_fail = self._on_connect, self._on_disconnect, self._on_connect_fail
        c.on_publish, c.on_message = self._on_publish, self._on_message

    def start(self) -> None:
        """Connect in the background; paho's thread retries with backoff."""
        connect_async(self.client, self.config, self.endpoint)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, content_type: str | None = None,
             msg_id: str | None = None) -> mqtt.MQTTMessageInfo:
        props = publish_properties(self.config, content_type, msg_id)
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    def stop(self) -> None:
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def report(self, text: str, level: int) -> None:
        now = time.monotonic()
        if text != self._problem or now - self._problem_at > REMIND_EVERY_S:
            log.log(level, "%s", text)
            self._problem, self._problem_at = text, now

    def _on_connect(self, client, _userdata, flags, reason_code, _properties) -> None:
        try:
            if reason_code.is_failure:
                self.counts["refused"] += 1
                self.report(refusal_text(reason_code, self.endpoint, self.config.reconnect_max_s), logging.ERROR)
                return
            sock = client.socket()
            self.nodelay = bool(sock is not None and set_nodelay(sock))
            self.session_present, self.connected, self._problem = bool(flags.session_present), True, None
            self.counts["connects"] += 1
            log.info("MQTT connected to %s (session present: %s)", self.endpoint, flags.session_present)
            self.on_online(client)
        except Exception as err:  # noqa: BLE001 - never raise into paho's thread
            log.error("MQTT on_connect failed: %s", err)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if self.connected:
            self.counts["disconnects"] += 1
            if not self.closing:
                self.report(f"MQTT connection to {self.endpoint.host}:{self.endpoint.port} lost ({reason_code}); "
                            "reconnecting with backoff, messages wait in the outbox", logging.WARNING)
        self.connected = False

    def _on_connect_fail(self, _client, _userdata) -> None:
        self.report(f"MQTT broker {self.endpoint.host}:{self.endpoint.port} unreachable; retrying with backoff up "
                    f"to {self.config.reconnect_max_s} s, messages wait in the outbox", logging.WARNING)

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        try:
            self.on_ack(int(mid), bool(getattr(reason_code, "is_failure", False)))
        except Exception as err:  # noqa: BLE001
            log.error("MQTT on_publish failed: %s", err)

    def _on_message(self, _client, _userdata, message) -> None:
        try:
            self.on_command(bytes(message.payload))
        except Exception as err:  # noqa: BLE001
            log.error("MQTT on_message failed: %s", err)


def connection(config: MqttConfig, device: str, will_topic: str, will_payload: bytes, **hooks) -> Connection:
    """A ``Connection`` for ``config`` (not started); ``hooks``: on_online, on_ack, on_command."""
    client, endpoint = make_client(config, device, will_topic, will_payload)
    return Connection(config, client, endpoint, **hooks)


__all__ = ["AUTH_REFUSED", "Connection", "Endpoint", "connect_async", "connection", "make_client",
           "publish_properties", "refusal_text", "set_nodelay"]
