"""The camera scheduler of the inference thread: newest frame per camera, round-robin over ready cameras."""

from __future__ import annotations

import threading

from edge_seg.loop.scheduler import RoundRobin


def test_fast_cameras_share_the_model_evenly_and_the_slow_one_is_never_skipped():
    # per tick (1/30 s): three 30 FPS cameras bring one frame each, the 5 FPS one a frame every 6th tick;
    # the loop manages 2 invokes a tick (60 FPS < 95 FPS offered)
    rr_served, dropped, longest = _simulate_ticks([1, 1, 1], slow_every=6, ticks=600, invokes_per_tick=2)
    fast = rr_served[:3]
    assert max(fast) - min(fast) <= 0.1 * min(fast)  # within ±10 % of each other
    assert rr_served[3] == 100 and dropped[3] == 0  # every frame of the slow camera was segmented
    assert longest <= 3  # it waits at most one invoke per other camera


def _simulate_ticks(fast: list[int], slow_every: int, ticks: int, invokes_per_tick: int):
    rr = RoundRobin(len(fast) + 1)
    served, dropped = [0] * (len(fast) + 1), [0] * (len(fast) + 1)
    put_at, longest, invokes = None, 0, 0
    for tick in range(ticks):
        for i, n in enumerate(fast):
            for _ in range(n):
                dropped[i] += rr.slots[i].put(("fast", i, tick))
        if tick % slow_every == 0:
            dropped[-1] += rr.slots[-1].put(("slow", tick))
            put_at = invokes
        for _ in range(invokes_per_tick):
            taken = rr.take(0)
            if taken is None:
                break
            served[taken[0]] += 1
            if taken[0] == len(fast):
                longest = max(longest, invokes - put_at)
            invokes += 1
    return served, dropped, longest


def test_one_slot_is_taken_like_a_plain_latest_frame_slot():
    rr = RoundRobin(1)
    assert rr.slots[0].put("a") is False and rr.slots[0].put("b") is True  # overwritten: counted as a drop
    assert rr.take(0) == (0, "b") and rr.take(0.01) is None
    rr.slots[0].close()
    assert rr.closed


def test_take_wakes_when_any_camera_delivers_and_ends_when_all_are_closed():
    rr = RoundRobin(3)
    got = []
    thread = threading.Thread(target=lambda: got.append(rr.take(5.0)))
    thread.start()
    rr.slots[2].put("frame")
    thread.join(2)
    assert got == [(2, "frame")]
    rr.slots[0].close()
    rr.slots[1].put("last")
    rr.slots[1].close()
    assert not rr.closed  # slot 1 still holds a frame, and slot 2 is open
    assert rr.take(0) == (1, "last")
    rr.slots[2].close()
    assert rr.closed and rr.take(0.01) is None


def test_round_robin_order_starts_after_the_camera_served_last():
    rr = RoundRobin(3)
    order = []
    for _ in range(6):
        for i in range(3):
            rr.slots[i].put(i)
        order.append(rr.take(0)[0])
    assert order == [0, 1, 2, 0, 1, 2]  # each always has a frame: strict turns


def test_each_camera_is_smoothed_over_its_own_frames_only():
    import numpy as np

    from edge_seg.config import SmoothingConfig
    from edge_seg.demo.clips import render_clip
    from edge_seg.segmenter import DEFAULT_MODEL, Segmenter

    scene = next(iter(render_clip(4, 1, (320, 180)))).image
    with Segmenter.create(model=DEFAULT_MODEL, smoothing=SmoothingConfig(enabled=True, alpha=0.2)) as seg:
        batch_b, t_b = seg.prepare(scene)
        batch_a, t_a = seg.prepare(np.zeros_like(scene))
        raw_a, raw_b = seg.invoke(batch_a), seg.invoke(batch_b)
        alone = seg.decode(raw_b, t_b, stream="b").label_map  # a fresh stream: its first frame as it is
        for _ in range(5):
            seg.decode(raw_a, t_a, stream="a")
            seg.decode(raw_a, t_a)  # the unnamed stream sees the same black frames
        assert np.array_equal(seg.decode(raw_b, t_b, stream="b").label_map, alone)  # a's frames did not leak in
        assert not np.array_equal(seg.decode(raw_b, t_b).label_map, alone)  # (smoothing does carry state over)
