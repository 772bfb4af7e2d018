"""Several cameras' frames in one invoke (``pipeline.batch``), where the backend takes a batch > 1.

The inference thread takes the newest frame of up to ``batch`` ready cameras (``RoundRobin.take_many``:
one frame per camera), and ``invoke_batch`` runs them through ``Segmenter.invoke_many``: ONNX Runtime
with a dynamic batch dimension takes any count, LiteRT is resized once (``resize_tensor_input``) and
fewer frames are padded. Each frame gets its own raw output, so everything after is as with one frame.
"""

from __future__ import annotations

import time

from edge_seg.loop.result import region
from edge_seg.loop.stats import StageClock


def invoke_batch(segmenter, due: list[tuple]) -> list[tuple]:
    """(camera, frame, raw, transform, clock) for each (camera, frame, prepared) of ``due``, from one invoke.

    A frame prepared for another model (a swap in between) is prepared again here. Each frame's clock carries
    the invoke's time divided by the frames it served (``infer``), so per-frame figures add up.
    """
    items = []
    for cam, frame, prepared in due:
        clock = StageClock.for_frame(frame.seq, {"capture_age": (time.time() - frame.ts) * 1e3})
        if prepared is not None and prepared[0] is segmenter:
            _, batch, transform, pre = prepared
            clock.wall.update(pre.wall)
            clock.cpu.update(pre.cpu)
        else:
            with clock.stage("preprocess"):
                batch, transform = segmenter.prepare(region(frame.image, cam.roi), cam.lores(frame))
        items.append((cam, frame, batch, transform, clock))
    started = time.perf_counter()
    raws = segmenter.invoke_many([item[2] for item in items])
    share = (time.perf_counter() - started) * 1e3 / len(items)
    out = []
    for (cam, frame, _batch, transform, clock), raw in zip(items, raws):
        clock.wall["infer"] = share
        out.append((cam, frame, raw, transform, clock))
    return out


__all__ = ["invoke_batch"]
