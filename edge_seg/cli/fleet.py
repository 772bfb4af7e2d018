"""``edge-seg fleet ...``: queries and actions on a fleet through the consumer's store.

Registered through the ``edge_seg.commands`` entry points (setup.cfg). ``status`` (devices, last
seen, model, FPS, drift, degraded camera, outbox depth, gaps), ``export-coco`` (the labelling queue
as COCO for the converters), ``render-masks`` and ``bench-store`` (CPU per stored mask). Each subcommand group is one
``add(actions)`` function; ``register`` calls every one in ``SUBCOMMANDS``, so adding some (e.g.
``fleet_rollout.register``) is one line there. ``store_args(p)`` gives a subcommand the ``--out`` /
``--db`` / ``--objects`` options that pick the store (``edge_seg.cloud.store_base``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edge_seg.cli import fleet_rollout
from edge_seg.cli.store_options import store_args, store_of
from edge_seg.errors import StoreError


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, now - ts)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h ago"


def cmd_status(args: argparse.Namespace) -> int:
    from edge_seg.cloud.fleet import fleet_status

    kwargs = store_of(args)
    kwargs.pop("objects", None)
    states = fleet_status(**kwargs)
    if args.json:
        print(json.dumps([s.as_dict() for s in states], indent=1))
        return 0
    now = time.time()
    rows = [("DEVICE", "ONLINE", "LAST SEEN", "MODEL", "FPS", "DRIFT", "OUTBOX", "GAPS", "DEGRADED")]
    for s in states:
        rows.append((s.device, {True: "yes", False: "no"}.get(s.online, "?"), _age(s.last_seen, now), s.model or "-",
                     "-" if s.fps is None else f"{s.fps:.1f}", "-" if s.drift is None else f"{s.drift:.3f}",
                     "-" if s.outbox_depth is None else str(s.outbox_depth), str(s.gaps), s.degraded or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    degraded = sum(1 for s in states if s.degraded)
    online = sum(1 for s in states if s.online)
    print(f"{len(states)} devices, {online} online, {degraded} degraded")
    return 0


def cmd_export_coco(args: argparse.Namespace) -> int:
    from edge_seg.cloud.fleet import export_coco

    data = export_coco(args.dest, **store_of(args))
    print(f"{args.dest / 'annotations.json'}: {len(data['images'])} crops, {len(data['annotations'])} "
          f"pre-annotations, {len(data['categories'])} categories (images in {args.dest / 'images'})")
    return 0


def add_status(actions) -> None:
    p = actions.add_parser("status", help="devices: last seen, model, FPS, drift, degraded cameras, outbox, gaps")
    store_args(p, objects=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)


def add_export_coco(actions) -> None:
    p = actions.add_parser("export-coco", help="the labelling queue (uncertain crops + pre-annotations) as COCO")
    store_args(p)
    p.add_argument("dest", type=Path, metavar="DEST", help="writes DEST/annotations.json and DEST/images/")
    p.set_defaults(func=cmd_export_coco)


def cmd_bench_store(args: argparse.Namespace) -> int:
    from edge_seg.cloud.store_base import open_store
    from edge_seg.cloud.store_bench import bench_store

    store = open_store(migrate=True, **store_of(args))
    try:
        result = bench_store(store, masks=args.masks, devices=args.devices, render=not args.no_render)
    finally:
        store.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['store']}: {result['masks']} masks ({result['mean_payload_bytes']} B each), "
              f"{result['cpu_ms_per_mask']:.3f} ms CPU per stored mask, {result['masks_per_s']:.0f} masks/s"
              + (f"; PNG rendering off the ingest path {result['render_cpu_ms_per_mask']:.3f} ms CPU per mask, "
                 f"{result['rendered_per_s']:.0f}/s" if "rendered" in result else ""))
    return 0


def cmd_render_masks(args: argparse.Namespace) -> int:
    from edge_seg.cloud.store_postgres import PgStore

    if args.db is None or args.objects is None:
        raise StoreError("render-masks works on the PostgreSQL store: --db postgresql://… --objects s3://…")
    store = PgStore(args.db, args.objects)
    rendered = 0
    try:
        while (args.limit is None or rendered < args.limit) and (done := store.render_masks(
                256 if args.limit is None else min(256, args.limit - rendered))) > 0:
            rendered += done
    finally:
        store.close()
    print(f"rendered {rendered} masks to PNG objects in {args.objects}")
    return 0


def add_render_masks(actions) -> None:
    p = actions.add_parser("render-masks", help="PostgreSQL store: render the masks stored as RLE to frame-size "
                           "PNG objects (batches, parallel puts; content-addressed, so re-running is harmless)")
    p.add_argument("--db", required=True, metavar="URL", help="the fleet's PostgreSQL")
    p.add_argument("--objects", required=True, metavar="s3://BUCKET/PREFIX", help="where the PNGs go")
    p.add_argument("--limit", type=int, default=None, help="at most this many (default: all pending)")
    p.set_defaults(func=cmd_render_masks, out=None)


def add_bench_store(actions) -> None:
    p = actions.add_parser("bench-store", help="CPU per stored mask of a store, MQTT left out (writes bench-N "
                           "devices' masks: use a throw-away database / folder)")
    store_args(p)
    p.add_argument("--masks", type=int, default=2000, help="mask messages to store (default 2000)")
    p.add_argument("--devices", type=int, default=10, help="devices they come from (default 10)")
    p.add_argument("--no-render", action="store_true", help="PostgreSQL: skip rendering the PNGs afterwards")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench_store)


SUBCOMMANDS = [add_status, add_export_coco, add_render_masks, add_bench_store,
               fleet_rollout.register]  # + rollout, simulate, bench


def register(sub) -> argparse._SubParsersAction:
    """Add ``edge-seg fleet`` and its subcommands; the subcommands' action object (to add more)."""
    p = sub.add_parser("fleet", help="fleet queries and actions on the consumer's store")
    actions = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    for add in SUBCOMMANDS:
        add(actions)
    return actions
