"""What each outbox durability level costs: ``python -m edge_seg.publish.outbox_bench [DIR]``.

Prints microseconds per message for ``put`` and ``ack`` with ``sync="normal"`` and ``"full"``, one
and ten messages per commit (see ``edge_seg.publish.outbox`` for what each level survives).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edge_seg.publish.outbox import Outbox, Sync


@dataclass(frozen=True)
class _Fake:
    topic: str
    payload: bytes
    content_type: str | None
    msg_id: str
    seq: int


def measure(directory: str | Path, sync: Sync, batch: int = 1, count: int = 500, payload: int = 2_000) -> dict:
    """Microseconds per message for put (``batch`` messages per commit) and ack, on a fresh outbox in ``directory``."""
    path = Path(directory) / f"bench-{sync}-{batch}.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    body = bytes(payload)
    with Outbox(path, sync=sync, ttl_s=None) as box:
        ids: list[int] = []
        t0 = time.perf_counter()
        for start in range(0, count, batch):
            ids += box.put([_Fake("mask", body, None, f"m{i}", i) for i in range(start, min(count, start + batch))])
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, count, batch):
            box.ack(ids[start:start + batch])
        ack_s = time.perf_counter() - t0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"sync": sync, "batch": batch, "put_us": put_s / count * 1e6, "ack_us": ack_s / count * 1e6}


def main(argv: list[str] | None = None) -> int:
    """``python -m edge_seg.publish.outbox_bench [DIR]``: print the cost per message of each sync level and batch."""
    import sys
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{'sync':6} {'batch':>5} {'put µs/msg':>11} {'ack µs/msg':>11}   (2 KB payloads, {directory})")
    for sync in ("normal", "full"):
        for batch in (1, 10):
            r = measure(directory, sync, batch)  # type: ignore[arg-type]
            print(f"{r['sync']:6} {r['batch']:>5} {r['put_us']:>11.1f} {r['ack_us']:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())



__all__ = ["measure"]
