"""The dead-letter table: what is kept of a parked message, the cap on rows, a counter that survives restarts."""

from __future__ import annotations

import hashlib

import pytest

from edge_seg.cloud import dead_letters as dl
from edge_seg.cloud.store import Store
from edge_seg.errors import InputError


def test_a_parked_message_keeps_topic_reason_size_and_payload_up_to_the_cap(tmp_path):
    store = Store(tmp_path)
    small, big = b'{"schema": 1}', bytes(range(256)) * (dl.KEEP_BYTES // 256 + 10)
    assert store.dead_letters.add("edge_seg/cam/mask", small, "bad message:\nschema 1", "application/json") == 1
    assert store.dead_letters.add("edge_seg/cam/crop", big, dl.reason_of(MemoryError("Unable to allocate"))) == 2
    store.close()
    first, second = dl.iter_dead_letters(tmp_path)
    assert (first.topic, first.reason, first.content_type, first.size) == (
        "edge_seg/cam/mask", "bad message: schema 1", "application/json", len(small))
    assert first.payload == small and not first.truncated and first.received > 0
    assert second.reason == "MemoryError: Unable to allocate" and second.size == len(big) and second.truncated
    assert second.payload == big[:dl.KEEP_BYTES] and second.sha256 == hashlib.sha256(big).hexdigest()


def test_rows_are_capped_and_the_counter_survives_pruning_and_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "MAX_ROWS", 3)
    store = Store(tmp_path)
    for i in range(5):
        store.dead_letters.add(f"t/{i}", b"x", "bad")
    store.close()
    assert [d.topic for d in dl.iter_dead_letters(tmp_path)] == ["t/2", "t/3", "t/4"]
    store = Store(tmp_path)
    assert store.dead_letters.total() == 5 and store.dead_letters.add("t/5", b"x", "bad") == 6
    store.close()


def test_iter_dead_letters_needs_a_consumer_directory(tmp_path):
    with pytest.raises(InputError, match="consumer.sqlite"):
        list(dl.iter_dead_letters(tmp_path))
