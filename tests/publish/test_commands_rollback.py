"""The signed ``rollback`` command (a fleet rollout halting a wave sends it): validated, signed only, to its hook."""

from __future__ import annotations

import json

from edge_seg.publish.commands import UNSUPPORTED_OTA, CommandHandler, CommandHooks, Verifier, sign_command
from edge_seg.publish.messages import decode

KEY = b"rollback-key"


def handler(rollback=None, signed: bool = True) -> CommandHandler:
    counter = iter(range(1, 10**6))
    return CommandHandler("dev1", CommandHooks(rollback=rollback), lambda: next(counter),
                          Verifier("hmac", KEY) if signed else None)


def answer(h: CommandHandler, command: dict, sign: bool = True):
    body = sign_command(command, hmac_key=KEY) if sign else command
    return decode(h.handle(json.dumps(body).encode()).payload)


def test_rollback_runs_its_hook_with_checked_args_once_per_id():
    calls = []
    h = handler(lambda args: calls.append(args) or {"left": "m-2", "current": "m-1"})
    ok = answer(h, {"id": "rb1", "cmd": "rollback", "args": {"expect_current": "m-2", "reason": "wave 2 failed"}})
    assert ok.ok and ok.result == {"left": "m-2", "current": "m-1"}
    assert calls == [{"expect_current": "m-2", "reason": "wave 2 failed", "mark_bad": True, "wait_s": 120.0}]
    assert answer(h, {"id": "rb1", "cmd": "rollback", "args": {"expect_current": "m-2"}}).ok  # same id: not re-run
    assert len(calls) == 1


def test_rollback_refuses_bad_args_unsigned_commands_and_devices_without_ota():
    h = handler(lambda args: {})
    bad = answer(h, {"id": "b1", "cmd": "rollback", "args": {"mark_bad": "yes"}})
    assert not bad.ok and bad.error.startswith("rollback: mark_bad")
    unknown = answer(h, {"id": "b2", "cmd": "rollback", "args": {"to": "m-0"}})
    assert not unknown.ok and "unknown field 'to'" in unknown.error
    unsigned = answer(handler(lambda args: {}, signed=False), {"id": "u1", "cmd": "rollback"}, sign=False)
    assert not unsigned.ok and unsigned.error.startswith("unsigned 'rollback' refused")
    assert answer(handler(None), {"id": "n1", "cmd": "rollback"}).error == UNSUPPORTED_OTA
    failing = answer(handler(lambda args: 1 / 0), {"id": "f1", "cmd": "rollback"})
    assert not failing.ok and failing.error.startswith("rollback failed")
