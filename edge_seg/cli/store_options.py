"""The options that pick a consumer store, shared by the ``edge-seg fleet`` subcommands (``cli.fleet`` and
``cli.fleet_rollout``): ``--out DIR`` (SQLite + folder) or ``--db postgresql://…`` [``--objects s3://…``]."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_seg.errors import StoreError


def store_args(p: argparse.ArgumentParser, objects: bool = True) -> None:
    """``--out DIR`` (SQLite + folder) or ``--db postgresql://…`` [``--objects s3://…``]."""
    p.add_argument("--out", "-o", type=Path, default=None, help="the consumer's SQLite + folder output directory")
    p.add_argument("--db", default=None, metavar="URL", help="the fleet's PostgreSQL: postgresql://user@host/dbname")
    if objects:
        p.add_argument("--objects", default=None, metavar="s3://BUCKET/PREFIX",
                       help="with --db: the object storage of masks and crops (AWS_ENDPOINT_URL, keys from env)")


def store_of(args: argparse.Namespace) -> dict:
    """``out_dir`` / ``db`` / ``objects`` keyword arguments from ``store_args`` options (exactly one store)."""
    if (args.out is None) == (args.db is None):
        raise StoreError("give either --out DIR (SQLite + folder) or --db postgresql://…")
    found = {"out_dir": args.out, "db": args.db}
    if getattr(args, "objects", None) is not None:
        found["objects"] = args.objects
    return found


__all__ = ["store_args", "store_of"]
