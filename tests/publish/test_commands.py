"""Remote commands: 10,000 generated bad payloads, good commands, HMAC and Ed25519 signatures, via a real broker."""

from __future__ import annotations

import base64
import json
import logging
import time

import cv2
import numpy as np
import pytest
from command_fuzz import bad_commands
from mqtt_helpers import Collector, fake_result, publisher_factory, results_of, run_broker, wait_for

from edge_seg.publish import mqtt as mqtt_module
from edge_seg.publish import snapshot as snapshot_module
from edge_seg.publish.commands import UNSUPPORTED_OTA, CommandHandler, CommandHooks, Verifier, sign_command
from edge_seg.publish.messages import CommandResultMessage, decode
from edge_seg.publish.mqtt_config import CommandsConfig
from edge_seg.publish.policy import PublishPolicy

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
broker = pytest.fixture(run_broker, name="broker")
make_publisher = pytest.fixture(publisher_factory, name="make_publisher")


def handler_for_tests(verifier=None, reload=None, update_model=None, insecure=True
                      ) -> tuple[CommandHandler, PublishPolicy]:
    """A handler whose hooks act on a policy; ``insecure`` (unsigned privileged commands run) unless a verifier."""
    policy = PublishPolicy()
    counter = iter(range(1, 10**9))
    hooks = CommandHooks(uptime=lambda: 12.5, set_policy=lambda args: policy.update(**args), reload=reload,
                         snapshot=lambda cid: policy.request_snapshot(), update_model=update_model)
    insecure = insecure and verifier is None
    return CommandHandler("dev1", hooks, lambda: next(counter), verifier, insecure=insecure,
                          allowed_url_prefixes=["https://example.invalid/"]), policy


def run(handler: CommandHandler, command) -> CommandResultMessage:
    payload = command if isinstance(command, bytes) else json.dumps(command).encode()
    return decode(handler.handle(payload).payload)


def test_ten_thousand_bad_commands_each_get_an_error_result_with_their_id():
    handler, policy = handler_for_tests()
    before = policy.config
    count = 0
    for payload, expected_id in bad_commands(10_000, seed=1):
        encoded = handler.handle(payload)
        assert encoded is not None and encoded.topic == "cmd/result"
        result = decode(encoded.payload)
        assert result.ok is False and result.error, payload[:200]
        assert result.command_id == expected_id, (payload[:200], result.error)
        count += 1
    assert count == 10_000 and handler.counts["error"] == 10_000 and handler.counts["ok"] == 0
    assert policy.config == before


def test_good_commands(tmp_path):
    calls = []
    handler, policy = handler_for_tests(reload=lambda: calls.append("reload") or {"model": "m"})
    pong = run(handler, {"id": "p1", "cmd": "ping"})
    assert pong.ok and pong.command_id == "p1" and pong.result == {"pong": True, "uptime_s": 12.5}
    changed = run(handler, {"id": "s1", "cmd": "set_policy", "args": {"every_n": 3, "area_delta": None}})
    assert changed.ok and changed.result["policy"]["every_n"] == 3 and policy.config.area_delta is None
    assert run(handler, {"id": "r1", "cmd": "reload"}).result == {"model": "m"} and calls == ["reload"]
    again = run(handler, {"id": "r1", "cmd": "reload"})  # QoS 1 redelivery: answered, not run twice
    assert again.ok and calls == ["reload"] and handler.counts["duplicate"] == 1
    ota = run(handler, {"id": "u1", "cmd": "update_model", "args": {"url": "https://x"}})
    assert not ota.ok and ota.error == UNSUPPORTED_OTA
    assert handler.handle(b'{"id": "snap", "cmd": "snapshot"}') is None  # answered with the next frame
    failing, _ = handler_for_tests(reload=lambda: 1 / 0)
    broken = run(failing, {"id": "r2", "cmd": "reload"})
    assert not broken.ok and broken.error.startswith("reload failed")


def test_update_model_goes_to_the_ota_hook_and_reports_its_outcome():
    from edge_seg.ota.bundle import OtaError

    seen = []
    handler, _ = handler_for_tests(update_model=lambda args: seen.append(args) or {"outcome": "swapped"})
    done = run(handler, {"id": "u1", "cmd": "update_model", "args": {"url": "https://example.invalid/b.tar"}})
    assert done.ok and done.result == {"outcome": "swapped"} and seen == [{"url": "https://example.invalid/b.tar"}]

    def refuse(args):
        raise OtaError("refused: signature does not verify with any trusted key")

    refused, _ = handler_for_tests(update_model=refuse)
    answer = run(refused, {"id": "u2", "cmd": "update_model", "args": {"url": "https://example.invalid/b.tar"}})
    assert not answer.ok
    assert answer.error == "update_model failed: refused: signature does not verify with any trusted key"


def test_hmac_signatures():
    key = b"shared-secret"
    handler, _ = handler_for_tests(Verifier("hmac", key))
    assert run(handler, sign_command({"id": "h1", "cmd": "ping"}, hmac_key=key)).ok
    tampered = sign_command({"id": "h2", "cmd": "set_policy", "args": {"every_n": 1}}, hmac_key=key)
    tampered["args"]["every_n"] = 2
    cases = {"tampered": tampered, "wrong key": sign_command({"id": "h3", "cmd": "ping"}, hmac_key=b"other"),
             "missing": {"id": "h4", "cmd": "ping", "ts": time.time()},
             "stale": sign_command({"id": "h5", "cmd": "ping", "ts": time.time() - 3600}, hmac_key=key),
             "not base64": {"id": "h6", "cmd": "ping", "ts": time.time(), "sig": "%%%"}}
    for name, command in cases.items():
        result = run(handler, command)
        assert not result.ok and result.command_id == command["id"], name
        assert "signature" in result.error or "ts" in result.error, (name, result.error)


def test_ed25519_signatures(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public = private.public_key()
    pem = tmp_path / "cmd.pub"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    raw = base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    for config in (CommandsConfig(require_signature="ed25519", key_file=pem),
                   CommandsConfig(require_signature="ed25519", key=raw)):
        handler, _ = handler_for_tests(Verifier.from_config(config))
        assert run(handler, sign_command({"id": "e1", "cmd": "ping"}, ed25519_private_key=private)).ok
        bad = run(handler, sign_command({"id": "e2", "cmd": "ping"}, ed25519_private_key=other))
        assert not bad.ok and bad.error == "bad signature (ed25519)" and bad.command_id == "e2"
    with pytest.raises(Exception, match="Ed25519 public key"):
        Verifier("ed25519", b"not a key")


def test_commands_through_the_broker(broker, make_publisher, monkeypatch):
    monkeypatch.setattr(snapshot_module, "SNAPSHOT_TIMEOUT_S", 0.3)
    monkeypatch.setattr(mqtt_module, "EXPIRE_EVERY_S", 0.2)
    key = b"k" * 32
    publisher = make_publisher(broker.url, commands={"require_signature": "hmac", "key": key.decode()},
                               policy={"every_n": 0, "area_delta": None, "max_rate": 100})
    results = Collector(broker.host, broker.port, "edge_seg/dev1/#")
    wait_for(lambda: publisher.link.connected, 10, what="connect")
    time.sleep(0.2)  # the device's subscription is in place

    def send(command: dict, sign: bool = True) -> None:
        results.publish("edge_seg/dev1/cmd", json.dumps(sign_command(command, hmac_key=key) if sign else command))

    send({"id": "late", "cmd": "snapshot"})  # no frame comes: a timeout error
    wait_for(lambda: any(r.command_id == "late" for r in results_of(results)), 5, what="snapshot timeout")
    monkeypatch.setattr(snapshot_module, "SNAPSHOT_TIMEOUT_S", 30.0)  # "snap" waits for the frame sent below
    send({"id": "unsigned", "cmd": "ping"}, sign=False)
    send({"id": "pol", "cmd": "set_policy", "args": {"every_n": 2}})
    send({"id": "snap", "cmd": "snapshot"})
    wait_for(lambda: publisher.policy.config.every_n == 2 and publisher.commands.counts["received"] >= 4, 5,
             what="commands handled")
    publisher.publish(fake_result(7, split=0.5))
    answers = {r.command_id: r for r in wait_for(lambda: len(results_of(results)) >= 4 and results_of(results), 10,
                                                 what="four results")}
    assert not answers["late"].ok and "no frame" in answers["late"].error
    assert not answers["unsigned"].ok and "signature required" in answers["unsigned"].error
    assert answers["pol"].ok and answers["pol"].result["policy"]["every_n"] == 2
    snap = answers["snap"]
    assert snap.ok and snap.result["frame_seq"] == 7
    image = cv2.imdecode(np.frombuffer(base64.b64decode(snap.result["overlay_jpeg"]), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == snap.result["overlay_size"][0] == 960  # downscaled 720p overlay
    masks = wait_for(lambda: results.on("mask"), 5, what="the snapshot's mask")
    assert decode(masks[0].payload).msg_id == snap.result["mask_msg_id"]
    results.close()


def test_hundreds_of_bad_commands_through_the_broker_are_each_answered(broker, make_publisher, caplog):
    caplog.set_level(logging.DEBUG, logger="paho.test")
    publisher = make_publisher(broker.url, commands={"insecure": True})  # unsigned set_policy etc. reach the checks
    sender = Collector(broker.host, broker.port, "edge_seg/dev1/cmd/result")
    wait_for(lambda: publisher.link.connected, 10, what="connect")
    time.sleep(0.2)
    payloads = [payload for payload, _ in bad_commands(300, seed=2)]
    for payload in payloads:
        sender.client.publish("edge_seg/dev1/cmd", payload, qos=1)
    got = wait_for(lambda: len(sender.on("cmd/result")) >= 300 and sender.on("cmd/result"), 30,
                   what="300 results")
    assert len(got) == 300 and not any(decode(m.payload).ok for m in got)
    assert publisher.link.connected and "Caught exception" not in caplog.text
    sender.close()
