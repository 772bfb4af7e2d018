"""Hostile input, generated: 10,000 configs, manifests, commands and consumer payloads (2,500 each, derived from
valid ones by replacing parts with any JSON value, or by corrupting the bytes). Each must end in the module's own
one-line error or be accepted: no other exception, no hang (a deadline per case), no memory growth.

Hypothesis runs derandomized (the same cases in every run) and keeps no example database.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from message_builders import MODEL, instances_payload, make_crop, make_seg

from edge_seg.config import ConfigError, parse_config
from edge_seg.errors import ManifestError
from edge_seg.manifest import parse_manifest
from edge_seg.publish.commands import CommandHandler, CommandHooks
from edge_seg.publish.messages import MessageError, decode, encode_crop, encode_mask, encode_metrics, encode_status
from edge_seg.publish.payload_masks import check_limits
from edge_seg.publish.policy import PublishPolicy

ROOT = Path(__file__).resolve().parents[1]
CASES = 2_500
FUZZ = settings(max_examples=CASES, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                      st.sampled_from(["", "0", "-1", "1e309", "NaN", "../../etc/passwd", "\x00", "a" * 300]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                             st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                          max_leaves=20)


def _paths(obj, prefix=()) -> list[tuple]:
    """Every path to a value inside a JSON object (dict keys and list indices)."""
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for index, value in enumerate(obj[:8]):
            out += _paths(value, prefix + (index,))
    return out


def _replace(obj, path: tuple, value):
    if not path:
        return value
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


@st.composite
def mutated(draw, valid: dict):
    """``valid`` with 1-3 of its parts (any depth, the whole included) replaced by any JSON value; sometimes a
    key is dropped or an unknown one added."""
    obj = valid
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(obj)))
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        target = obj
        for part in path:
            target = target[part]
        if action == "drop" and path and isinstance(_get_parent(obj, path), dict):
            parent = dict(_get_parent(obj, path))
            parent.pop(path[-1], None)
            obj = _replace(obj, path[:-1], parent)
        elif action == "add" and isinstance(target, dict):
            obj = _replace(obj, path, {**target, draw(st.text(max_size=12)): draw(json_value)})
        else:
            obj = _replace(obj, path, draw(json_value))
    return obj


def _get_parent(obj, path: tuple):
    for part in path[:-1]:
        obj = obj[part]
    return obj


@st.composite
def corrupted(draw, payload: bytes) -> bytes:
    """``payload`` truncated, with bytes flipped, or spliced with random bytes."""
    data = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "splice"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        else:
            data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)


class MemoryBound:
    """Peak RSS may grow by at most ``mb`` over a fuzz run (ru_maxrss only rises: a leak or a blow-up shows)."""

    def __init__(self, mb: int):
        self.mb = mb

    def __enter__(self):
        self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start) / 1024
        assert exc[0] is not None or grew < self.mb, f"peak RSS grew by {grew:.0f} MB"


# ------------------------------------------------------------------------------------------------- configs
BOARD = yaml.safe_load((ROOT / "firmware_configs" / "boards" / "rpi4.yaml").read_text())


def test_fuzzed_configs_are_accepted_or_one_line_errors():
    runs = [0]

    @FUZZ
    @given(mutated(BOARD))
    def case(data):
        runs[0] += 1
        try:
            parse_config(data if isinstance(data, dict) else {"x": data}, "fuzz.yaml")
        except ConfigError as err:
            assert "\n" not in str(err) and str(err).startswith("fuzz.yaml")

    with MemoryBound(200):
        case()
    assert runs >= [CASES]  # every generated case ran (hypothesis stops early only when out of cases)


# ------------------------------------------------------------------------------------------------ manifests
MANIFEST = json.loads((ROOT / "edge_seg" / "models" / "default" / "manifest.json").read_text())


def test_fuzzed_manifests_are_accepted_or_one_line_errors():
    runs = [0]

    @FUZZ
    @given(mutated(MANIFEST))
    def case(data):
        runs[0] += 1
        try:
            manifest = parse_manifest(data if isinstance(data, dict) else {"x": data}, "fuzz/manifest.json")
        except ManifestError as err:
            assert "\n" not in str(err)
            return
        assert all(0 <= c <= 255 for colour in manifest.palette for c in colour)
        assert all(np.isfinite(v) for v in manifest.input.mean + manifest.input.std)

    with MemoryBound(200):
        case()
    assert runs >= [CASES]  # every generated case ran (hypothesis stops early only when out of cases)


# ------------------------------------------------------------------------------------------------ commands
COMMANDS = [{"id": "c1", "cmd": "ping"}, {"id": "c2", "cmd": "set_policy", "args": {"every_n": 3, "max_rate": 2.0}},
            {"id": "c3", "cmd": "snapshot"}, {"id": "c4", "cmd": "reload"},
            {"id": "c5", "cmd": "update_model", "args": {"url": "https://example.invalid/m.tar", "sha256": "ab" * 32,
                                                          "allow_downgrade": False, "wait_s": 5}}]


def test_fuzzed_commands_always_get_a_result_and_never_raise():
    calls: list[str] = []
    policy = PublishPolicy()
    hooks = CommandHooks(uptime=lambda: 1.0, set_policy=lambda args: policy.update(**args),
                         snapshot=lambda cid: calls.append("snapshot"), reload=lambda: calls.append("reload") or {},
                         update_model=lambda args: calls.append("update_model") or {"installed": "x"})
    seq = iter(range(1, 10**9))

    def fresh() -> CommandHandler:  # one per case: a handler remembers ids (a repeated id is a duplicate)
        return CommandHandler("dev1", hooks, lambda: next(seq), insecure=True,
                              allowed_url_prefixes=["https://example.invalid/"])

    runs = [0]

    @FUZZ
    @given(st.one_of(st.sampled_from(COMMANDS).flatmap(mutated).map(lambda c: json.dumps(c).encode()),
                     st.sampled_from(COMMANDS).flatmap(lambda c: corrupted(json.dumps(c).encode())),
                     st.binary(max_size=64)))
    def case(payload):
        runs[0] += 1
        before = list(calls)
        answer = fresh().handle(payload)
        if answer is None:  # a snapshot: answered with the next frame
            assert calls[len(before):] == ["snapshot"]
            return
        result = decode(answer.payload)
        assert result.ok or (result.error and "\n" not in result.error)
        if not result.ok:
            assert calls == before  # a refused command ran nothing

    with MemoryBound(200):
        case()
    assert runs >= [CASES]  # every generated case ran (hypothesis stops early only when out of cases)


# ---------------------------------------------------------------------------------------- consumer payloads
def _valid_payloads() -> list[tuple[bytes, str | None]]:
    seg = make_seg(1)
    out = [(encode_mask(seg, device="cam-1", seq=1, ts=1.0, fmt=fmt), None) for fmt in ("rle", "png")]
    out.append((encode_crop(make_crop(2), device="cam-1", seq=2, model=MODEL, frame_size=(1280, 720)), None))
    out += [(encode_status(device="cam-1", seq=3, online=True, model=MODEL, fps=3.0), None),
            (encode_metrics(device="cam-1", seq=4, summary={"fps": 3.0}), None)]
    payloads = [(e.payload, e.content_type) for e, _ in out]
    rng = np.random.default_rng(0)
    masks = [rng.random((72, 128)) > 0.7 for _ in range(3)]
    payloads.append((instances_payload((128, 72), masks), None))
    return payloads


def test_fuzzed_consumer_payloads_decode_or_are_refused_in_one_line(tmp_path):
    from edge_seg.cloud.store import Store

    valid = _valid_payloads()
    store = Store(tmp_path / "store")
    json_ones = [(p, c) for p, c in valid if b"\n" not in p]  # a crop is a JSON line, then the JPEG

    runs = [0]

    @FUZZ
    @given(st.one_of(
        st.sampled_from(json_ones).flatmap(lambda pc: mutated(json.loads(pc[0])).map(
            lambda obj: (json.dumps(obj).encode(), pc[1]))),
        st.sampled_from(valid).flatmap(lambda pc: corrupted(pc[0]).map(lambda p: (p, pc[1]))),
        st.tuples(st.binary(max_size=64), st.sampled_from([None, "application/json",
                                                          "application/vnd.edge-seg.crop"]))))
    def case(payload_and_type):
        runs[0] += 1
        payload, content_type = payload_and_type
        try:
            msg = decode(payload, content_type)
            check_limits(msg)
            store.store(msg)
        except MessageError as err:
            assert "\n" not in str(err)

    try:
        with MemoryBound(300):
            case()
    finally:
        store.close()
    assert runs >= [CASES]  # every generated case ran (hypothesis stops early only when out of cases)
