"""CPU per stored mask of a consumer's store, MQTT left out: ``edge-seg fleet bench-store``.

The masks are real ``edge_seg.mask/v1`` messages (RLE, 1280x720 frame, a noisy synthetic scene at
192x108 model resolution, as ``edge-seg bench-messages`` uses), each with its own ``msg_id``, spread
over ``devices`` devices. Timed per message: what the consumer does after MQTT hands it the payload
(decode + validate, the decode limits, ``store.store``). ``cpu_ms_per_mask`` is this process's CPU
time (all threads) per stored mask; the database server's CPU is not in it. For the PostgreSQL + S3
store the rendering of frame-size PNGs to object storage (``render_masks``: batches, parallel puts)
is timed separately, as it runs off the ingest path.
"""

from __future__ import annotations

import time

import numpy as np

from edge_seg.bench.messages import FRAME, noisy_label_map
from edge_seg.demo.scenes import CLASSES, PALETTE, render_scene
from edge_seg.publish.messages import decode, encode_mask
from edge_seg.publish.payload_masks import check_limits
from edge_seg.segmentation import ModelIdentity, Segmentation

MODEL_SIZE = (192, 108)


def mask_payloads(n: int, devices: int = 10, seeds: int = 8) -> list[tuple[bytes, str | None]]:
    """``n`` encoded mask messages (payload, content type), a distinct msg_id each, over ``devices`` devices."""
    rng = np.random.default_rng(0)
    model = ModelIdentity("bench", "1", "0" * 64)
    segs = []
    for seed in range(seeds):
        labels = noisy_label_map(render_scene(seed, FRAME).mask, MODEL_SIZE, rng)
        conf = rng.uniform(0.4, 1.0, labels.shape).astype(np.float32)
        segs.append(Segmentation(labels, conf, FRAME, CLASSES, PALETTE, model))
    out = []
    for i in range(n):
        enc = encode_mask(segs[i % seeds], device=f"bench-{i % devices}", seq=i // devices + 1, ts=time.time())
        out.append((enc.payload, enc.content_type))
    return out


def bench_store(store, masks: int = 2000, devices: int = 10, render: bool = True) -> dict:
    """Store ``masks`` mask messages into ``store`` (see the module docstring); the figures."""
    payloads = mask_payloads(masks + 20, devices)
    for payload, content_type in payloads[:20]:  # warm-up: connections, caches, first-statement planning
        store.store(decode(payload, content_type))
    cpu, wall = time.process_time(), time.perf_counter()
    for payload, content_type in payloads[20:]:
        msg = decode(payload, content_type)
        check_limits(msg)
        if not store.store(msg):
            raise RuntimeError("a bench message was a duplicate: the store is not empty")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {"store": store.describe(), "masks": masks, "devices": devices,
              "mean_payload_bytes": round(sum(len(p) for p, _ in payloads) / len(payloads)),
              "cpu_ms_per_mask": round(1000 * cpu / masks, 3), "masks_per_s": round(masks / wall, 1)}
    if render and hasattr(store, "render_masks"):
        cpu, wall, rendered = time.process_time(), time.perf_counter(), 0
        while (done := store.render_masks(256)) > 0:
            rendered += done
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        result.update(rendered=rendered, render_cpu_ms_per_mask=round(1000 * cpu / max(rendered, 1), 3),
                      rendered_per_s=round(rendered / wall, 1) if wall else None)
    return result


__all__ = ["bench_store", "mask_payloads"]
