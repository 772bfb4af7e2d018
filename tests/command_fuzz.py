"""Generated bad command payloads, each with the id the device should put in its error result.

Every payload is invalid for a device without a reload hook: random bytes, truncated JSON, wrong
types, huge strings, unknown commands and fields, bad policy values, NaN, deep nesting, non-UTF-8,
commands that take no args given some, and ``update_model`` (always "unsupported").
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

MAX_ID = 128
MAX_PAYLOAD = 64 * 1024


def _expected_id(payload: bytes) -> str | None:
    """The id a device can read: a JSON object (NaN allowed) of at most 64 KB whose ``id`` is 1-128 characters."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    raw = obj.get("id")
    return raw if isinstance(raw, str) and 0 < len(raw) <= MAX_ID else None


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _cases(rng: random.Random, i: int) -> bytes:
    cid = f"bad-{i}"
    good = {"id": cid, "cmd": rng.choice(["ping", "snapshot", "set_policy", "reload"]), "ts": 1.0}
    kind = i % 16
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    if kind == 1:
        text = _json({**good, "args": {"every_n": 3}})
        return text[: rng.randint(0, len(text) - 1)]
    if kind == 2:
        return _json({**good, "id": rng.choice([7, 1.5, None, True, [cid], {"x": 1}, ""])})
    if kind == 3:
        return _json({**good, "cmd": rng.choice([1, None, ["ping"], {"c": "ping"}, True])})
    if kind == 4:
        return _json({"id": cid, "cmd": "set_policy", "args": rng.choice([[1], "every_n=3", 5, None])})
    if kind == 5:
        size = rng.choice([129, 5_000, 70_000, 200_000])
        return _json({**good, "id": "x" * size})
    if kind == 6:
        return _json({"id": cid, "cmd": "".join(rng.choice("abcxyz_") for _ in range(rng.randint(1, 20_000)))})
    if kind == 7:
        field = rng.choice(["every_nn", "rate", "__class__", "x" * 300])
        return _json({"id": cid, "cmd": "set_policy", "args": {field: 1}})
    if kind == 8:
        args = rng.choice([{"every_n": "5"}, {"every_n": -1}, {"every_n": 2.5}, {"max_rate": 0}, {"max_rate": "fast"},
                           {"area_delta": 5}, {"uncertainty": [0.5]}, {"every_n": True}, {}])
        return _json({"id": cid, "cmd": "set_policy", "args": args})
    if kind == 9:
        return _json({**good, "extra": rng.choice([1, "x", None]), "cmd": "ping"})
    if kind == 10:
        return rng.choice([b'{"id": "%s", "cmd": "ping", "ts": NaN}', b'{"id": "%s", "cmd": "ping", "ts": Infinity}',
                           b'{"id": "%s", "cmd": "ping", "args": {"a": -Infinity}}']) % cid.encode()
    if kind == 11:
        depth = rng.choice([40, 500, 5000])
        return b'{"id": "' + cid.encode() + b'", "cmd": "ping", "args": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    if kind == 12:
        return b'{"id": "' + cid.encode() + b'", "cmd": "ping\xff\xfe"}'
    if kind == 13:
        return rng.choice([b"[]", b"null", b"42", b'"ping"', b"", b" ", b"{}", b'[{"id": "a", "cmd": "ping"}]'])
    if kind == 14:
        cmd = rng.choice(["ping", "snapshot"])
        return _json({"id": cid, "cmd": cmd, "args": {"now": rng.choice([1, "x" * rng.randint(1, 30_000)])}})
    return _json({"id": cid, "cmd": "update_model", "args": rng.choice([{}, {"url": "https://x/bundle.tar"}])})


def bad_commands(count: int, seed: int = 0) -> Iterator[tuple[bytes, str | None]]:
    """``count`` (payload, expected command_id or None) pairs, reproducible by ``seed``."""
    rng = random.Random(seed)
    for i in range(count):
        payload = _cases(rng, i)
        yield payload, _expected_id(payload)
