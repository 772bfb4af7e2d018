"""Remote commands on ``{prefix}/{device}/cmd``; every command gets an answer on ``/cmd/result``.

A command is one UTF-8 JSON object (``edge_seg.publish.messages.CommandMessage``)::

    {"id": "c-42", "cmd": "set_policy", "args": {"every_n": 10}, "ts": 1732233600.0, "sig": "…"}

* ``ping`` → ``{"pong": true, "uptime_s": …}``
* ``snapshot`` → the next frame's mask is published at once (whatever the policy says) and the
  result, sent with that frame, carries ``frame_seq``, ``mask_msg_id`` and a JPEG of the overlay
  (``overlay_jpeg``, base64, downscaled to fit the payload cap).
* ``set_policy`` → ``args`` holds some of ``every_n``, ``area_delta``, ``uncertainty``,
  ``max_rate`` (strict types, same ranges as the config); the result is the whole new policy.
* ``reload`` → calls the reload hook the service wires (config/model reload); ok or the error.
* ``update_model`` (args ``url``, optional ``sha256``, ``allow_downgrade``, ``wait_s``: strict types,
  ``schemas.UpdateModelArgs``, so ``"false"`` is refused, not truthy; ``url`` under one of
  ``ota.allowed_url_prefixes``, http(s) only, see ``commands_urls``) → download, verify,
  install and hot-swap through ``edge_seg.ota.actions`` (the running service); the result says what happened,
  or the error why not (e.g. a rollback and its reason). Without an OTA-enabled service: an error.
* ``rollback`` (args ``expect_current``, ``reason``, ``mark_bad``, ``wait_s``: ``schemas.RollbackArgs``) →
  ``current`` goes back to ``previous`` and the loop hot-swaps to it (``edge_seg.ota.actions.handle_rollback``);
  with ``expect_current`` only while that model id is still current (a fleet rollout halting a wave sends it).

Anything else (bad JSON, not UTF-8, over 64 KB, unknown command or field, wrong type, bad or
missing signature, a hook that raises) is answered with ``ok: false``, a one-line ``error`` and
the command's ``id`` when it could be read (``command_id: null`` otherwise). ``handle`` never
raises. A command id seen recently (the last 1024) is not executed again: its first result is
sent again (QoS 1 may deliver a command twice). Signed ids are also kept in the state dir until their
``ts`` window ends (``commands_replay``), so a sniffed signed command replayed after a restart is
refused (``replayed command id …``).

**Secure by default**: ``update_model``, ``set_policy``, ``reload`` and ``snapshot`` (``PRIVILEGED``) need a
valid signature. With no key configured they are refused (``unsigned 'reload' refused: …``; said once at
start) unless the config says ``commands.insecure: true``, which is warned about at every start; ``ping``
needs none. With a key (``commands.require_signature``), every command, ``ping`` included, must be signed.

**Signatures** (``commands.require_signature`` in the config): ``sig`` is the standard base64 of

* ``hmac``: HMAC-SHA256 with the shared key, or
* ``ed25519``: an Ed25519 signature by the private key whose public key the device holds,

over the *canonical JSON* of the command object without ``sig``: keys sorted at every level,
separators ``,`` and ``:`` without spaces, UTF-8 without escaping non-ASCII, i.e. Python's
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. Floats are
written as Python does (shortest repr); senders in other languages should avoid floats in
signed commands or format them the same way. Signed commands must carry ``ts`` (Unix seconds)
within ``MAX_SKEW_S`` of the device clock, so an old command cannot be replayed after its id
leaves the (persisted) set of seen ids. ``sign_command`` makes a signed command (cloud tools, tests).
The HMAC key is the UTF-8 of ``commands.key`` or the bytes of ``key_file`` (trailing newline
dropped); the Ed25519 public key is PEM or the base64 of the raw 32 bytes.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_seg.publish.commands_replay import ReplayError, SeenIds
from edge_seg.publish.commands_signing import MAX_SKEW_S, Verifier, canonical_json, sign_command
from edge_seg.publish.commands_urls import UrlRefused, check_update_url
from edge_seg.publish.messages import (
    MAX_COMMAND_PAYLOAD,
    CommandMessage,
    Encoded,
    MessageError,
    decode_command,
    encode_command_result,
)
from edge_seg.publish.mqtt_config import CommandsConfig, PolicyConfig
from edge_seg.publish.schemas import RollbackArgs, UpdateModelArgs

log = logging.getLogger(__name__)
REMEMBERED_IDS = 1024
# need a signature unless commands.insecure
PRIVILEGED = ("update_model", "rollback", "set_policy", "reload", "snapshot")
UNSUPPORTED_OTA = "unsupported: this device runs without OTA model updates (no model store / service)"
_PENDING = object()


def readable_id(payload: bytes) -> str | None:
    """The ``id`` of a rejected command when one can be read (a JSON object of at most 64 KB, ``id`` a 1-128
    character string), so its sender can match the error result; None otherwise."""
    if len(payload) > MAX_COMMAND_PAYLOAD:
        return None
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    raw = obj.get("id") if isinstance(obj, dict) else None
    return raw if isinstance(raw, str) and 0 < len(raw) <= 128 else None


@dataclass
class CommandHooks:
    """What commands act on; the publisher and the service fill these in."""

    uptime: Callable[[], float] = lambda: 0.0
    set_policy: Callable[[dict], PolicyConfig] | None = None  # validated fields → the new policy
    snapshot: Callable[[str], None] | None = None  # arm a snapshot; the result is sent with the next frame
    reload: Callable[[], dict | None] | None = None  # raises on failure
    update_model: Callable[[dict], dict] | None = None  # download + install + swap; raises with the reason
    rollback: Callable[[dict], dict] | None = None  # current back to previous + swap; raises with the reason


def arg_error(cmd: str, err: ValidationError, fields) -> str:
    """One line for the first problem in a command's args: the field, what was expected, what came."""
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])[:64] or "args"
    if first["type"] == "extra_forbidden":
        return f"{cmd}: unknown field '{where}' (valid: {', '.join(fields)})"
    if first["type"] == "missing":
        return f"{cmd}: {where}: missing"
    got = json.dumps(first.get("input"), default=str)
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{cmd}: {where}: {first['msg']}, got {got}"[:300]


def unsigned_refused(cmd: str) -> str:
    """The error of a privileged command without a signature on a device that is not ``commands.insecure``."""
    return (f"unsigned '{cmd}' refused: commands need a signature (commands.require_signature, "
            "or commands.insecure: true)")


class CommandHandler:
    """Turns a raw command payload into its result message (or None when the result comes later).

    Without a ``verifier``, the ``PRIVILEGED`` commands are refused unless ``insecure`` is true."""

    def __init__(self, device: str, hooks: CommandHooks, next_seq: Callable[[], int],
                 verifier: Verifier | None = None, clock=time.time, *, insecure: bool = False,
                 allowed_url_prefixes: Sequence[str] = (), seen_ids: SeenIds | None = None):
        self.device, self.hooks, self.next_seq, self.verifier, self._clock = device, hooks, next_seq, verifier, clock
        self.insecure, self.allowed_url_prefixes = insecure, tuple(allowed_url_prefixes)
        self.seen_ids = seen_ids  # signed ids, persisted across restarts (None: in memory only)
        self._seen: OrderedDict[str, object] = OrderedDict()
        self.counts = {"received": 0, "ok": 0, "error": 0, "duplicate": 0}

    def result(self, command_id: str | None, ok: bool, result: dict | None = None,
               error: str | None = None) -> Encoded:
        """A ``cmd/result`` message (counted)."""
        self.counts["ok" if ok else "error"] += 1
        encoded = encode_command_result(device=self.device, seq=self.next_seq(), command_id=command_id, ok=ok,
                                        result=result, error=error)
        if command_id is not None and self._seen.get(command_id) is _PENDING:
            self._seen[command_id] = encoded
        return encoded

    def reject(self, payload: bytes, reason: str) -> Encoded:
        """An error result for a command that will not be run (e.g. the queue is full)."""
        return self.result(readable_id(payload), False, error=reason)

    def handle(self, payload: bytes) -> Encoded | None:
        """Validate, verify and run one command; its result (None: a snapshot answers with its frame)."""
        self.counts["received"] += 1
        command_id: str | None = None
        try:
            try:
                command = decode_command(payload)
            except MessageError as err:
                command_id = err.command_id if err.command_id is not None else readable_id(payload)
                raise
            command_id = command.id
            if self.verifier is not None:
                self.verifier.verify(json.loads(bytes(payload)), command_id, self._clock())
            elif command.cmd in PRIVILEGED and not self.insecure:
                raise MessageError(unsigned_refused(command.cmd), command_id)
            if command_id in self._seen:
                self.counts["duplicate"] += 1
                previous = self._seen[command_id]
                return None if previous is _PENDING else previous  # type: ignore[return-value]
            if self.verifier is not None and self.seen_ids is not None and command.ts is not None:
                try:
                    self.seen_ids.claim(command_id, float(command.ts))
                except ReplayError as err:
                    raise MessageError(str(err), command_id) from None
            self._remember(command_id)
            return self._run(command)
        except MessageError as err:
            return self.result(command_id, False, error=str(err))
        except Exception as err:  # noqa: BLE001 - a command must never take the device down
            log.warning("command %s failed: %s", command_id, err, exc_info=log.isEnabledFor(logging.DEBUG))
            return self.result(command_id, False, error=f"internal error: {type(err).__name__}: {str(err)[:200]}")

    def _remember(self, command_id: str) -> None:
        self._seen[command_id] = _PENDING
        while len(self._seen) > REMEMBERED_IDS:
            self._seen.popitem(last=False)

    def _run(self, command: CommandMessage) -> Encoded | None:
        cid, hooks, args = command.id, self.hooks, dict(command.args)
        if command.cmd == "ping":
            if args:
                return self.result(cid, False, error="ping takes no args")
            return self.result(cid, True, {"pong": True, "uptime_s": round(hooks.uptime(), 3)})
        if command.cmd == "update_model":
            return self._ota(cid, "update_model", hooks.update_model, UpdateModelArgs, args, given_only=True,
                             check=lambda checked: check_update_url(checked.url, self.allowed_url_prefixes))
        if command.cmd == "rollback":
            return self._ota(cid, "rollback", hooks.rollback, RollbackArgs, args)
        if command.cmd == "set_policy":
            return self._set_policy(cid, args)
        if command.cmd == "snapshot":
            if args:
                return self.result(cid, False, error="snapshot takes no args")
            if hooks.snapshot is None:
                return self.result(cid, False, error="snapshot is not available on this device")
            hooks.snapshot(cid)
            return None
        if command.cmd == "reload":
            if args:
                return self.result(cid, False, error="reload takes no args")
            if hooks.reload is None:
                return self.result(cid, False, error="reload is not available on this device")
            try:
                outcome = hooks.reload()
            except Exception as err:  # noqa: BLE001 - reported as the command's result
                return self.result(cid, False, error=f"reload failed: {str(err)[:300]}")
            return self.result(cid, True, outcome if isinstance(outcome, dict) else {"reloaded": True})
        return self.result(cid, False, error=f"unknown command {command.cmd!r}")  # pragma: no cover - schema forbids

    def _ota(self, cid: str, name: str, hook, schema, args: dict, given_only: bool = False, check=None) -> Encoded:
        """An OTA command (``update_model``, ``rollback``): its args validated by ``schema`` and ``check``
        (raises ``UrlRefused``), then ``hook`` with them (``given_only``: without the defaults of args not
        given); its outcome or error is the result."""
        if hook is None:
            return self.result(cid, False, error=UNSUPPORTED_OTA)
        try:
            checked = schema.model_validate(args)
        except ValidationError as err:
            return self.result(cid, False, error=arg_error(name, err, schema.model_fields))
        try:
            if check is not None:
                check(checked)
        except UrlRefused as err:
            return self.result(cid, False, error=str(err))
        try:
            return self.result(cid, True, hook(checked.model_dump(exclude_unset=given_only)))
        except Exception as err:  # noqa: BLE001 - reported as the command's result
            return self.result(cid, False, error=f"{name} failed: {str(err)[:300]}")

    def _set_policy(self, cid: str, args: dict) -> Encoded:
        if self.hooks.set_policy is None:
            return self.result(cid, False, error="set_policy is not available on this device")
        if not args:
            fields = ", ".join(PolicyConfig.model_fields)
            return self.result(cid, False, error=f"set_policy needs args: some of {fields}")
        unknown = sorted(set(args) - set(PolicyConfig.model_fields))
        if unknown:
            return self.result(cid, False, error=f"set_policy: unknown field '{str(unknown[0])[:64]}' "
                                                 f"(valid: {', '.join(PolicyConfig.model_fields)})")
        try:
            PolicyConfig.model_validate(args, strict=True)  # types as sent, no "5" for 5
            policy = self.hooks.set_policy(args)
        except ValidationError as err:
            first = err.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return self.result(cid, False, error=f"set_policy: {where}: {first['msg']}"[:300])
        return self.result(cid, True, {"policy": policy.model_dump()})


def build_handler(config: CommandsConfig, device: str, hooks: CommandHooks, next_seq: Callable[[], int], *,
                  state_dir: str | Path | None = None, allowed_url_prefixes: Sequence[str] = (),
                  clock: Callable[[], float] = time.time) -> CommandHandler:
    """The device's handler for ``config`` (``mqtt.commands``); says at start what unsigned commands may do.
    ``state_dir`` keeps the seen signed ids across restarts (``commands_replay``); ``allowed_url_prefixes``
    (``ota.allowed_url_prefixes``) limits the URLs ``update_model`` may fetch."""
    verifier = Verifier.from_config(config)
    seen = SeenIds(state_dir, clock=clock) if verifier is not None and state_dir is not None else None
    if config.enabled and config.insecure:
        log.warning("commands.insecure: true: %s run without a signature; anyone who can publish on the cmd "
                    "topic can run them (set commands.require_signature and a key)", ", ".join(PRIVILEGED))
    elif config.enabled and verifier is None:
        log.info("privileged commands (%s) are refused: no commands.require_signature key is configured; ping "
                 "still answers", ", ".join(PRIVILEGED))
    return CommandHandler(device, hooks, next_seq, verifier, clock, insecure=config.insecure,
                          allowed_url_prefixes=allowed_url_prefixes, seen_ids=seen)


class CommandRunner:
    """The ``edge-seg-mqtt-cmd`` thread: runs commands in arrival order (a reload hook may take seconds) and
    sends each result with ``send``. At most ``capacity`` commands wait; more are answered "busy" at once."""

    def __init__(self, handler: CommandHandler, send: Callable[[Encoded], None], capacity: int = 64):
        self.handler, self._send = handler, send
        self.busy = 0  # commands refused because the queue was full
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="edge-seg-mqtt-cmd", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, payload: bytes) -> None:
        """Queue a command payload (called on paho's network thread: never blocks)."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.busy += 1
            self._send(self.handler.reject(payload, "busy: too many commands waiting"))

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            try:
                answer = self.handler.handle(payload)
                if answer is not None:
                    self._send(answer)
            except Exception as err:  # noqa: BLE001 - handle() does not raise; publishing might
                log.error("command result not sent: %s", err)

    def stop(self, timeout: float = 10.0) -> None:
        """Run what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)


__all__ = ["CommandHandler", "CommandHooks", "CommandRunner", "MAX_SKEW_S", "PRIVILEGED", "UNSUPPORTED_OTA", "Verifier",
           "build_handler", "canonical_json", "sign_command", "unsigned_refused"]
