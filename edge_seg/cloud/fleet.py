"""Queries on a consumer's store for the fleet commands: ``fleet_status`` and ``export_coco``.

Both work on either store: a SQLite + folder ``out_dir`` (read-only: ``devices.json`` and
``consumer.sqlite``) or a PostgreSQL database (``devices`` and ``streams``; crops from object storage).
What a device reports comes from its last ``status`` (online, model, FPS, degraded camera, outbox
depth) and last ``metrics`` summary (``drift_js``: class-area drift against the model's baseline,
``mean_uncertainty``); ``gaps`` are its messages that never arrived, all topics together.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_seg.cloud.records import coco_dataset, write_atomic
from edge_seg.errors import InputError, StoreError

IMAGES_PREFIX = "images/"


@dataclass(frozen=True)
class DeviceState:
    """One device as the store last heard of it."""

    device: str
    last_seen: float | None
    online: bool | None
    model: str | None  # "name version"
    fps: float | None
    drift: float | None
    degraded: str | None
    outbox_depth: int | None
    gaps: int

    def as_dict(self) -> dict:
        return asdict(self)


def _state(device: str, last_seen, status: dict | None, metrics: dict | None, gaps: int) -> DeviceState:
    status, metrics = status or {}, metrics or {}
    model = status.get("model") or {}
    name = " ".join(str(model[k]) for k in ("name", "version") if model.get(k)) or None
    drift = metrics.get("drift_js")
    return DeviceState(device, None if last_seen is None else float(last_seen), status.get("online"), name,
                       status.get("fps"), drift if isinstance(drift, (int, float)) else None, status.get("degraded"),
                       status.get("outbox_depth"), int(gaps))


def _sqlite(out_dir: Path) -> sqlite3.Connection:
    path = Path(out_dir) / "consumer.sqlite"
    if not path.is_file():
        raise InputError(f"{out_dir} holds no consumer.sqlite: not a consumer's output directory")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def fleet_status(out_dir: str | os.PathLike | None = None, db: str | None = None) -> list[DeviceState]:
    """Every device the store heard of, by name."""
    if db is not None:
        from edge_seg.cloud import pg

        con = pg.connect(db, application="edge-seg fleet")
        try:
            gaps = dict(con.execute("SELECT device, sum(greatest(highest - lowest + 1 - stored, 0)) FROM streams "
                                    "GROUP BY device").fetchall())
            rows = con.execute("SELECT device, last_seen, status, metrics FROM devices ORDER BY device").fetchall()
        finally:
            con.close()
        return [_state(dev, seen, status, metrics, gaps.get(dev) or 0) for dev, seen, status, metrics in rows]
    _sqlite(out_dir).close()  # says clearly when out_dir is not a consumer's
    try:
        devices = json.loads((Path(out_dir) / "devices.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        devices = {}
    return [_state(dev, entry.get("last_seen"), entry.get("status"), entry.get("metrics"),
                   sum((entry.get("gaps") or {}).values())) for dev, entry in sorted(devices.items())]


def _coco_sqlite(out_dir: Path) -> dict:
    con = _sqlite(out_dir)
    try:
        try:
            return coco_dataset(con.execute("SELECT id, name FROM categories ORDER BY id").fetchall(),
                                con.execute("SELECT id, image, annotations FROM coco_images ORDER BY id").fetchall())
        except sqlite3.OperationalError:  # no crop stored yet
            return coco_dataset([], [])
    finally:
        con.close()


def export_coco(dest: str | os.PathLike, out_dir: str | os.PathLike | None = None, db: str | None = None,
                objects: str | None = None) -> dict:
    """Write the labelling queue as ``dest/annotations.json`` + ``dest/images/{device}/…jpg``; the dataset.

    ``file_name``s are relative to ``dest/images`` (the converters' COCO reader's default image folder).
    """
    dest = Path(dest)
    images_dir = dest / "images"
    if db is not None:
        if objects is None:
            raise StoreError("--db postgresql://… needs --objects s3://bucket/prefix to fetch the crops from")
        from edge_seg.cloud.objects import ObjectStore
        from edge_seg.cloud.store_postgres import PgStore

        store = PgStore(db, objects)
        try:
            data = store.coco()
        finally:
            store.close()
        source = ObjectStore(objects)

        def fetch(image: dict) -> None:
            write_atomic(images_dir / _relative(image["file_name"]), source.get(image["object_key"]))
    else:
        data = _coco_sqlite(Path(out_dir))
        labelling = Path(out_dir) / "labelling"

        def fetch(image: dict) -> None:
            target = images_dir / _relative(image["file_name"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(labelling / image["file_name"], target)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, data["images"]))
    for image in data["images"]:
        image["file_name"] = _relative(image["file_name"])
    dest.mkdir(parents=True, exist_ok=True)
    write_atomic(dest / "annotations.json", json.dumps(data).encode())
    return data


def _relative(file_name: str) -> str:
    return file_name[len(IMAGES_PREFIX):] if file_name.startswith(IMAGES_PREFIX) else file_name



__all__ = ["DeviceState", "export_coco", "fleet_status"]
