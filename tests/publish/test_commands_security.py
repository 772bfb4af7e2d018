"""Issue 14 (commands): secure by default, strict flags, allowed update URLs, no replay after a restart.

Each test first reproduced the attack on the code before the fix (through a real Mosquitto where the
attack is over MQTT)."""

from __future__ import annotations

import json
import logging
import time

import pytest
from mqtt_helpers import Collector, publisher_factory, results_of, run_broker, wait_for

from edge_seg.config import ConfigError, parse_config
from edge_seg.publish.commands import MAX_SKEW_S, CommandHooks, build_handler, sign_command
from edge_seg.publish.messages import decode
from edge_seg.publish.mqtt_config import CommandsConfig
from edge_seg.publish.policy import PublishPolicy

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
broker = pytest.fixture(run_broker, name="broker")
make_publisher = pytest.fixture(publisher_factory, name="make_publisher")
KEY = b"k" * 32
PRIVILEGED = ("update_model", "set_policy", "reload", "snapshot")
FLEET = "https://models.example/fleet/"


def refused_unsigned(cmd: str) -> str:
    return (f"unsigned '{cmd}' refused: commands need a signature (commands.require_signature, "
            "or commands.insecure: true)")


class Calls:
    """Hooks that record what they were asked to do."""

    def __init__(self):
        self.seen: list = []

    def reload(self):
        self.seen.append("reload")
        return {"reloaded": True}

    def update_model(self, args: dict) -> dict:
        self.seen.append(args)
        return {"outcome": "swapped"}


def connected_sender(broker, publisher) -> Collector:
    results = Collector(broker.host, broker.port, "edge_seg/dev1/#")
    wait_for(lambda: publisher.link.connected, 10, what="connect")
    time.sleep(0.2)  # the device's subscription is in place
    return results


def answers_for(results: Collector, ids: list[str]) -> dict:
    def got():
        by_id = {r.command_id: r for r in results_of(results)}
        return by_id if all(i in by_id for i in ids) else None

    return wait_for(got, 10, what=f"results for {ids}")


def handler_on(state_dir, calls: Calls, *, prefixes=(FLEET,), clock=time.time, **commands):
    policy = PublishPolicy()
    counter = iter(range(1, 10**9))
    hooks = CommandHooks(set_policy=lambda args: policy.update(**args), reload=calls.reload,
                         update_model=calls.update_model, snapshot=lambda cid: None)
    config = CommandsConfig(**(commands or {"require_signature": "hmac", "key": KEY.decode()}))
    return build_handler(config, "dev1", hooks, lambda: next(counter), state_dir=state_dir,
                         allowed_url_prefixes=prefixes, clock=clock)


def run(handler, command: dict):
    return decode(handler.handle(json.dumps(command).encode()).payload)


# --- 1. secure by default ---------------------------------------------------------------------------------
def test_unsigned_privileged_commands_are_refused_by_default_through_the_broker(broker, make_publisher, caplog):
    caplog.set_level(logging.INFO, logger="edge_seg.publish")
    calls = Calls()
    publisher = make_publisher(broker.url, hooks={"reload": calls.reload, "update_model": calls.update_model})
    assert "privileged commands" in caplog.text and "refused" in caplog.text  # said at start
    before = publisher.policy.config
    results = connected_sender(broker, publisher)
    sent = {"ping": {}, "update_model": {"url": FLEET + "b.tar", "allow_downgrade": True},
            "set_policy": {"every_n": 0, "area_delta": None}, "reload": {}, "snapshot": {}}
    for cmd, args in sent.items():
        command = {"id": f"u-{cmd}", "cmd": cmd, **({"args": args} if args else {})}
        results.publish("edge_seg/dev1/cmd", json.dumps(command).encode())
    answers = answers_for(results, [f"u-{cmd}" for cmd in sent])
    assert answers["u-ping"].ok and answers["u-ping"].result["pong"] is True
    for cmd in PRIVILEGED:
        assert not answers[f"u-{cmd}"].ok and answers[f"u-{cmd}"].error == refused_unsigned(cmd), cmd
    assert calls.seen == [] and publisher.policy.config == before
    assert not results.on("mask")  # no snapshot was taken
    results.close()


def test_insecure_runs_unsigned_commands_and_warns_at_every_start(broker, make_publisher, caplog):
    caplog.set_level(logging.WARNING, logger="edge_seg.publish")
    calls = Calls()
    for _ in range(2):
        publisher = make_publisher(broker.url, commands={"insecure": True}, hooks={"reload": calls.reload})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "commands.insecure" in r.getMessage()]
    assert len(warnings) == 2
    results = connected_sender(broker, publisher)
    results.publish("edge_seg/dev1/cmd", b'{"id": "r1", "cmd": "reload"}')
    assert answers_for(results, ["r1"])["r1"].ok and calls.seen == ["reload"]
    results.close()


def test_insecure_and_a_signature_key_together_are_a_config_error():
    with pytest.raises(ConfigError, match="commands.insecure"):
        parse_config({"mqtt": {"commands": {"insecure": True, "require_signature": "hmac", "key": "x"}}})
    with pytest.raises(ConfigError, match="insecure"):
        parse_config({"mqtt": {"commands": {"insecure": "yes"}}})


# --- 2. strict booleans and numbers ------------------------------------------------------------------------
def test_string_false_for_allow_downgrade_is_refused_through_the_broker(broker, make_publisher):
    calls = Calls()
    publisher = make_publisher(broker.url, commands={"require_signature": "hmac", "key": KEY.decode()},
                               hooks={"update_model": calls.update_model, "allowed_url_prefixes": [FLEET]})
    results = connected_sender(broker, publisher)
    url = FLEET + "old.tar"
    bad = {"s-false": {"allow_downgrade": "false"}, "s-zero": {"allow_downgrade": 0},
           "s-one": {"allow_downgrade": 1}, "s-null": {"allow_downgrade": None},
           "w-str": {"wait_s": "120"}, "w-bool": {"wait_s": True}, "w-neg": {"wait_s": -1},
           "h-int": {"sha256": 5}, "h-short": {"sha256": "abc"}, "u-int": {"url": 7}}
    for cid, args in bad.items():
        command = sign_command({"id": cid, "cmd": "update_model", "args": {"url": url, **args}}, hmac_key=KEY)
        results.publish("edge_seg/dev1/cmd", json.dumps(command).encode())
    good = sign_command({"id": "good", "cmd": "update_model",
                         "args": {"url": url, "allow_downgrade": False, "wait_s": 30}}, hmac_key=KEY)
    results.publish("edge_seg/dev1/cmd", json.dumps(good).encode())
    answers = answers_for(results, [*bad, "good"])
    for cid in bad:
        error = answers[cid].error
        assert not answers[cid].ok and error.startswith("update_model: ") and "\n" not in error, (cid, error)
    assert "allow_downgrade" in answers["s-false"].error and "boolean" in answers["s-false"].error
    assert "wait_s" in answers["w-str"].error and "sha256" in answers["h-short"].error
    assert answers["good"].ok and calls.seen == [{"url": url, "allow_downgrade": False, "wait_s": 30}]
    assert calls.seen[0]["allow_downgrade"] is False
    results.close()


# --- 3. update_model URLs ----------------------------------------------------------------------------------
def test_update_model_urls_are_refused_unless_allowed_by_default_through_the_broker(broker, make_publisher):
    calls = Calls()
    publisher = make_publisher(broker.url, commands={"require_signature": "hmac", "key": KEY.decode()},
                               hooks={"update_model": calls.update_model})  # ota.allowed_url_prefixes: []
    results = connected_sender(broker, publisher)
    command = sign_command({"id": "any", "cmd": "update_model", "args": {"url": FLEET + "b.tar"}}, hmac_key=KEY)
    results.publish("edge_seg/dev1/cmd", json.dumps(command).encode())
    answer = answers_for(results, ["any"])["any"]
    assert not answer.ok and "ota.allowed_url_prefixes" in answer.error and calls.seen == []
    results.close()


@pytest.mark.parametrize("url", [
    "https://models.example/other/b.tar", "https://models.example.evil.org/fleet/b.tar",
    "https://models.example:8443/fleet/b.tar", "http://models.example/fleet/b.tar",
    "https://models.example/fleet/../secret/b.tar", "https://models.example/fleet/%2e%2e/secret/b.tar",
    "https://user@models.example/fleet/b.tar", "https://models.example/fleetx/b.tar", "file:///etc/passwd",
    "ftp://models.example/fleet/b.tar", "https://models.example/fleet/b.tar\nX", "not a url"])
def test_update_model_urls_outside_the_allowed_prefixes_are_refused(tmp_path, url):
    calls = Calls()
    handler = handler_on(tmp_path, calls, prefixes=(FLEET, "https://models.example/fleet"))
    answer = run(handler, sign_command({"id": "u", "cmd": "update_model", "args": {"url": url}}, hmac_key=KEY))
    assert not answer.ok and answer.error.startswith("update_model: ") and "\n" not in answer.error
    assert calls.seen == []


def test_update_model_urls_inside_the_allowed_prefixes_run(tmp_path):
    calls = Calls()
    handler = handler_on(tmp_path, calls, prefixes=(FLEET, "https://cdn.example/m"))
    for i, url in enumerate([FLEET + "b.tar", "https://MODELS.example/fleet/sub/b.tar?x=1", "https://cdn.example/m",
                             "https://cdn.example/m/b.tar"]):
        answer = run(handler, sign_command({"id": f"ok{i}", "cmd": "update_model", "args": {"url": url}},
                                           hmac_key=KEY))
        assert answer.ok, (url, answer.error)
    assert len(calls.seen) == 4


def test_non_http_schemes_are_refused_even_when_insecure(tmp_path):
    calls = Calls()
    handler = handler_on(tmp_path, calls, prefixes=(FLEET,), insecure=True)
    answer = run(handler, {"id": "f", "cmd": "update_model", "args": {"url": "file:///etc/edge-seg/keys"}})
    assert not answer.ok and "http" in answer.error and calls.seen == []


def test_allowed_url_prefixes_must_be_http_urls():
    for prefix in ("file:///var/", "models.example/", "https://"):
        with pytest.raises(ConfigError, match="ota.allowed_url_prefixes"):
            parse_config({"ota": {"allowed_url_prefixes": [prefix]}})
    assert parse_config({}).ota.allowed_url_prefixes == []
    assert parse_config({"ota": {"allowed_url_prefixes": [FLEET]}}).ota.allowed_url_prefixes == [FLEET]


def test_the_cli_update_is_a_local_action_and_not_limited(tmp_path):
    from edge_seg.ota import actions as ota

    config = parse_config({"device": {"state_dir": str(tmp_path)}})  # no allowed prefixes at all
    with pytest.raises(Exception) as caught:
        ota.update(config, "http://127.0.0.1:9/b.tar", state_dir=tmp_path)
    assert "allowed_url_prefixes" not in str(caught.value)  # it tried to download


# --- 4. replay after a restart -----------------------------------------------------------------------------
def test_a_signed_command_replayed_after_a_restart_is_refused(tmp_path):
    calls = Calls()
    command = sign_command({"id": "r-1", "cmd": "reload"}, hmac_key=KEY)
    assert run(handler_on(tmp_path, calls), command).ok and calls.seen == ["reload"]
    restarted = handler_on(tmp_path, calls)  # a new process on the same state dir
    replay = run(restarted, command)
    assert not replay.ok and "replayed command id" in replay.error and replay.command_id == "r-1"
    assert calls.seen == ["reload"]
    assert run(restarted, sign_command({"id": "r-2", "cmd": "reload"}, hmac_key=KEY)).ok
    assert calls.seen == ["reload", "reload"]


def test_replay_after_a_restart_through_the_broker(broker, make_publisher):
    calls = Calls()
    fields = {"commands": {"require_signature": "hmac", "key": KEY.decode()}, "hooks": {"reload": calls.reload}}
    first = make_publisher(broker.url, **fields)
    results = connected_sender(broker, first)
    sniffed = json.dumps(sign_command({"id": "sniffed", "cmd": "reload"}, hmac_key=KEY)).encode()
    results.publish("edge_seg/dev1/cmd", sniffed)
    assert answers_for(results, ["sniffed"])["sniffed"].ok and calls.seen == ["reload"]
    first.close()
    results.close()
    second = make_publisher(broker.url, **fields)  # same device, same state dir: a restart
    results = connected_sender(broker, second)
    results.publish("edge_seg/dev1/cmd", sniffed)
    replay = answers_for(results, ["sniffed"])["sniffed"]
    assert not replay.ok and "replayed command id" in replay.error and calls.seen == ["reload"]
    results.close()


def test_seen_ids_are_dropped_after_their_window_and_capped(tmp_path):
    from edge_seg.publish import commands_replay

    now = [time.time()]
    calls = Calls()
    handler = handler_on(tmp_path, calls, clock=lambda: now[0])
    for i in range(3):
        assert run(handler, sign_command({"id": f"w{i}", "cmd": "ping", "ts": now[0]}, hmac_key=KEY)).ok
    stored = json.loads((tmp_path / commands_replay.SEEN_FILE).read_text())
    assert sorted(stored["ids"]) == ["w0", "w1", "w2"]
    now[0] += MAX_SKEW_S + 5
    later = handler_on(tmp_path, calls, clock=lambda: now[0])
    assert run(later, sign_command({"id": "w3", "cmd": "ping", "ts": now[0]}, hmac_key=KEY)).ok
    assert sorted(json.loads((tmp_path / commands_replay.SEEN_FILE).read_text())["ids"]) == ["w3"]

    seen = commands_replay.SeenIds(tmp_path / "capped", cap=2, clock=lambda: now[0])
    seen.claim("a", now[0])
    seen.claim("b", now[0])
    with pytest.raises(commands_replay.ReplayError, match="too many"):
        seen.claim("c", now[0])  # forgetting a live id would let it be replayed: refuse instead
    assert len(json.loads((tmp_path / "capped" / commands_replay.SEEN_FILE).read_text())["ids"]) == 2


def test_an_unreadable_seen_ids_file_refuses_commands_signed_before_the_start(tmp_path, caplog):
    from edge_seg.publish import commands_replay

    calls = Calls()
    old = sign_command({"id": "old", "cmd": "reload", "ts": time.time() - 10}, hmac_key=KEY)
    (tmp_path / commands_replay.SEEN_FILE).write_bytes(b"\x00garbage{")
    handler = handler_on(tmp_path, calls)
    assert "seen command ids" in caplog.text
    answer = run(handler, old)
    assert not answer.ok and "replayed command id" in answer.error and calls.seen == []
    assert run(handler, sign_command({"id": "new", "cmd": "reload", "ts": time.time() + 1}, hmac_key=KEY)).ok
