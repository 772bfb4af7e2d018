"""``edge-seg model install``: verify, check, stage, smoke-test, switch (issue 6).

Steps, in this order; the process may die at any point and ``current`` still resolves to a
complete model (old or new), and the next install succeeds:

1. verify the bundle, before taking the store lock (so a hostile or huge bundle never holds up a
   rollback or gc): entry count and sizes from the headers read one at a time, safe members,
   signature by a trusted key, every file's sha256 (nothing written);
2. under the store lock from here on: clean up what an interrupted install left
   (``ModelStore.recover``);
3. refuse a downgrade (unless allowed) and a model the device config cannot run (backend file and
   runtime, task, classes the config redacts);
4. extract into ``models/.staging-*`` (hashing again while writing, fsync);
5. smoke test in staging: load, segment sample frames (finite outputs, valid labels), latency
   within ``max_latency_factor`` of the current model measured side by side;
6. rename staging to ``models/<name>-<version>-<sha8>`` (fsync), mark it pending, switch
   ``previous`` then ``current`` (atomic symlink renames).

The running service notices the new ``current`` (file watch, SIGHUP or the MQTT command) and hot
swaps to it with a shadow phase and probation (``edge_seg.ota.hot_reload``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_seg.manifest import MANIFEST_NAME, Manifest, read_manifest, sha256_file
from edge_seg.ota.bundle import OtaError, VerifiedBundle, extract, verify_bundle
from edge_seg.ota.durable import Checkpoint, Checkpoints, fsync_dir, write_json_atomic
from edge_seg.ota.entries import ORIGIN_NAME, entry_id
from edge_seg.ota.store import ModelStore


class DowngradeError(OtaError):
    """The bundle's version is not newer than the current model's."""


class CompatibilityError(OtaError):
    """The device config cannot run the model (backend, task, classes)."""


class SmokeTestError(OtaError):
    """The staged model failed to load, gave non-finite or invalid output, or is too slow."""


@dataclass
class InstallOptions:
    """What ``install_bundle`` checks; ``from_config`` fills it from the device config."""

    allow_downgrade: bool = False
    allow_task_change: bool = False
    force: bool = False  # install a model this device rolled back before
    smoke: bool = True
    smoke_frames: int = 5
    max_latency_factor: float = 3.0
    latency_slack_ms: float = 2.0  # tiny models: a fixed allowance on top of the factor
    backend: str | None = None
    num_threads: int | None = None
    redact_classes: list = field(default_factory=list)
    max_bytes: int = 256 << 20

    @classmethod
    def from_config(cls, config, **overrides) -> "InstallOptions":
        ota = config.ota
        values = dict(smoke_frames=ota.smoke_frames, max_latency_factor=ota.max_latency_factor,
                      backend=config.model.backend, num_threads=config.model.num_threads,
                      redact_classes=list(config.overlay.redact_classes), max_bytes=int(ota.max_bundle_mb * (1 << 20)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class InstallResult:
    id: str
    path: Path
    previous: str | None
    manifest: Manifest
    changed: bool
    key_id: str | None = None
    smoke: dict | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.manifest.name, "version": self.manifest.version,
                "previous": self.previous, "changed": self.changed, "signed_by": self.key_id,
                "smoke": self.smoke, "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        if not self.changed:
            return f"{self.id} is already the current model: nothing to do"
        smoke = ""
        if self.smoke:
            smoke = f"; smoke test {self.smoke['frames']} frames, {self.smoke['infer_ms']:.1f} ms/frame"
            if self.smoke.get("current_infer_ms") is not None:
                smoke += f" (current {self.smoke['current_infer_ms']:.1f} ms)"
        return (f"installed {self.id} (was {self.previous or 'none'}) in {self.seconds:.2f} s{smoke}; "
                "the running service picks it up by itself (or: systemctl reload edge-seg)")


# --- checks --------------------------------------------------------------------------------

def version_key(version: str) -> tuple:
    """Sort key for versions like ``1.10.2``, ``2.0.0-rc1`` (a pre-release sorts before its release)."""
    core, _, pre = version.split("+", 1)[0].partition("-")

    def parts(text: str) -> tuple:
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[._]", text) if p)

    return parts(core), (0,) if pre else (1,), parts(pre)


def check_downgrade(new: Manifest, new_id: str, current: Manifest | None, current_id: str | None,
                    allow: bool) -> None:
    if current is None or allow or new.name != current.name:
        return
    if version_key(new.version) < version_key(current.version):
        raise DowngradeError(f"refusing downgrade: the bundle is {new.name} {new.version}, the current model is "
                             f"{current.version}; pass --allow-downgrade to install it anyway")
    if version_key(new.version) == version_key(current.version) and new_id != current_id:
        raise DowngradeError(f"refusing: the bundle is {new.name} {new.version}, the same version as the current "
                             "model but different content; bump the version (or pass --allow-downgrade)")


def check_compatibility(new: Manifest, options: InstallOptions, current: Manifest | None) -> str:
    """Raise ``CompatibilityError`` when the device config cannot run ``new``; returns the backend name."""
    from edge_seg import backends
    from edge_seg.errors import EdgeSegError
    from edge_seg.model import FILE_KEYS

    if options.backend:
        key = FILE_KEYS.get(options.backend)
        if key is None or key not in new.files:
            raise CompatibilityError(f"the device runs backend '{options.backend}' but the model has no "
                                     f"{key or options.backend} file (it has: {', '.join(new.files)}): refusing")
        name = options.backend
        path = new.files[key].path
    else:
        key = "tflite" if "tflite" in new.files else next(iter(new.files))
        path = new.files[key].path
        try:
            name = backends.backend_for_path(Path(path))
        except EdgeSegError as err:
            raise CompatibilityError(f"model file {path}: {err}") from None
    try:
        backends.create(name)
    except EdgeSegError as err:
        raise CompatibilityError(f"the model needs backend '{name}' ({path}), unavailable here: {err}") from None
    if current is not None and new.task != current.task and not options.allow_task_change:
        raise CompatibilityError(f"the model's task is '{new.task}', the current model's is '{current.task}' "
                                 "(consumers expect it): pass --allow-task-change to install it anyway")
    for cls in options.redact_classes:
        if isinstance(cls, str) and cls not in new.classes:
            raise CompatibilityError(f"the device config redacts class '{cls}', which the model does not have "
                                     f"(classes: {', '.join(new.classes)}): refusing, redaction would stop")
        if isinstance(cls, int) and not 0 <= cls < len(new.classes):
            raise CompatibilityError(f"the device config redacts class id {cls}; the model has "
                                     f"{len(new.classes)} classes: refusing")
    return name


def _sample_frames(count: int, size: tuple[int, int] = (320, 240)) -> list:
    from edge_seg.demo.clips import render_clip

    return [scene.image for scene in render_clip(11, count, size)]


def _check_output(seg, segmenter, raw) -> None:
    import numpy as np

    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise SmokeTestError("smoke test: the model's output is not finite (NaN or Inf): refusing")
    labels = seg.label_map
    if labels.size == 0 or int(labels.max()) >= len(segmenter.manifest.classes):
        raise SmokeTestError(f"smoke test: class ids up to {int(labels.max())} for "
                             f"{len(segmenter.manifest.classes)} classes: refusing")
    if not np.isfinite(seg.confidence_map).all():
        raise SmokeTestError("smoke test: confidences are not finite: refusing")


def smoke_test(new_dir: Path, current_dir: Path | None, options: InstallOptions,
               checkpoint: Checkpoint = lambda _n: None) -> dict:
    """Load the staged model, segment sample frames, compare latency with the current model side by side."""
    import numpy as np

    from edge_seg.errors import EdgeSegError
    from edge_seg.segmenter import Segmenter

    def create(path: Path) -> Segmenter:
        return Segmenter.create(model=path, backend=options.backend, num_threads=options.num_threads)

    try:
        new = create(new_dir)
    except EdgeSegError as err:
        raise SmokeTestError(f"smoke test: the model does not load: {err}") from None
    checkpoint("smoke: loaded")
    old = None
    if current_dir is not None:
        try:
            old = create(current_dir)
        except EdgeSegError:
            old = None  # the current model is broken: nothing to compare with
    frames = _sample_frames(options.smoke_frames)
    times: dict[str, list[float]] = {"new": [], "old": []}
    try:
        for image in [frames[0]] + frames:  # the first invoke warms up
            for label, seg in (("new", new), ("old", old)):
                if seg is None:
                    continue
                batch, transform = seg.prepare(image)
                t0 = time.perf_counter()
                raw = seg.invoke(batch)
                times[label].append((time.perf_counter() - t0) * 1e3)
                if label == "new":
                    _check_output(seg.decode(raw, transform), seg, raw)
            checkpoint("smoke: frame")
    except EdgeSegError as err:
        raise SmokeTestError(f"smoke test: inference failed: {err}") from None
    finally:
        new.close()
        if old is not None:
            old.close()
    new_ms = float(np.median(times["new"][1:]))
    old_ms = float(np.median(times["old"][1:])) if times["old"] else None
    if old_ms is not None and new_ms > options.max_latency_factor * old_ms + options.latency_slack_ms:
        raise SmokeTestError(f"smoke test: the model takes {new_ms:.1f} ms per frame, {new_ms / old_ms:.1f}x the "
                             f"current model's {old_ms:.1f} ms (limit {options.max_latency_factor:g}x): refusing")
    return {"frames": options.smoke_frames, "infer_ms": round(new_ms, 3),
            "current_infer_ms": round(old_ms, 3) if old_ms is not None else None}


# --- install -------------------------------------------------------------------------------

def _current(store: ModelStore) -> tuple[str | None, Manifest | None]:
    cid = store.current_id()
    if cid is None:
        return None, None
    from edge_seg.errors import EdgeSegError

    try:
        return cid, read_manifest(store.path_of(cid) / MANIFEST_NAME)
    except EdgeSegError:  # a broken current manifest does not block installing a good model
        return cid, None


def _reuse_existing(store: ModelStore, model_id: str) -> bool:
    """An earlier, interrupted install may have finished the directory: keep it if it verifies, else drop it."""
    path = store.path_of(model_id)
    if not path.exists():
        return False
    try:
        store.verify_entry(model_id)
        return True
    except OtaError:
        store.discard(path)
        return False


def install_bundle(bundle_path: Path, store: ModelStore, keys: dict, options: InstallOptions | None = None,
                   source: str | None = None, checkpoint: Checkpoint | None = None) -> InstallResult:
    """Verify and install a bundle; see the module docstring for the steps."""
    options = options or InstallOptions()
    cp = checkpoint or Checkpoints.from_env()
    started = time.monotonic()
    store.ensure()
    # verified before the lock: a hostile or huge bundle never holds up a rollback or gc (extract hashes again)
    verified: VerifiedBundle = verify_bundle(Path(bundle_path), keys, max_bytes=options.max_bytes, checkpoint=cp)
    with store.lock():
        cp("locked")
        store.recover(cp)
        model_id = entry_id(verified.manifest, verified.digest)
        current_id, current = _current(store)
        if current_id == model_id:
            return InstallResult(model_id, store.path_of(model_id), store.previous_id(), verified.manifest, False,
                                 verified.key_id, seconds=time.monotonic() - started)
        bad = store.read_state()["bad"].get(model_id)
        if bad and not options.force:
            raise OtaError(f"model {model_id} was rolled back on this device ({bad}); pass --force to install it "
                           "again")
        check_downgrade(verified.manifest, model_id, current, current_id, options.allow_downgrade)
        check_compatibility(verified.manifest, options, current)
        cp("checked")
        final = store.path_of(model_id)
        current_dir = store.path_of(current_id) if current_id else None
        smoke = None
        if _reuse_existing(store, model_id):
            cp("reused")
            if options.smoke:
                smoke = smoke_test(final, current_dir, options, cp)
        else:
            staging = store.new_staging()
            cp("staging created")
            try:
                extract(verified, staging, checkpoint=cp)
                if options.smoke:
                    smoke = smoke_test(staging, current_dir, options, cp)
                origin = {"installed": round(time.time(), 3), "source": source or str(bundle_path),
                          "bundle_sha256": sha256_file(Path(bundle_path)), "key_id": verified.key_id,
                          "manifest_sha256": verified.digest, "smoke": smoke}
                write_json_atomic(staging / ORIGIN_NAME, origin, cp)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            cp("staging renamed")
            fsync_dir(store.root)
            cp("store synced")
        store.set_pending(model_id, cp)
        previous = store.switch(model_id, cp)
        store.record("installed", cp, id=model_id, previous=previous, source=source or str(bundle_path))
    return InstallResult(model_id, final, previous, verified.manifest, True, verified.key_id, smoke,
                         time.monotonic() - started)


def seed_factory(store: ModelStore, model_dir: Path) -> str | None:
    """Copy an unsigned model shipped with the software (the bundled default) into an empty store and make it
    current; returns its id, or None when the store already has a current model."""
    import hashlib

    from edge_seg.ota.sign import canonical_json

    store.ensure()
    with store.lock():
        store.recover()
        if store.current_id() is not None:
            return None
        model_dir = Path(model_dir)
        obj = json.loads((model_dir / MANIFEST_NAME).read_text())
        manifest = read_manifest(model_dir / MANIFEST_NAME)
        for key, entry in manifest.files.items():
            obj["files"][key]["sha256"] = sha256_file(model_dir / entry.path)
        digest = hashlib.sha256(canonical_json(obj)).hexdigest()
        model_id = entry_id(manifest, digest)
        if not _reuse_existing(store, model_id):
            staging = store.new_staging()
            for entry in manifest.files.values():
                (staging / entry.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(model_dir / entry.path, staging / entry.path)
            (staging / MANIFEST_NAME).write_text(json.dumps(obj, indent=2) + "\n")
            write_json_atomic(staging / ORIGIN_NAME, {"installed": round(time.time(), 3), "source": "factory",
                                                      "key_id": None, "manifest_sha256": digest})
            for file in (p for p in staging.rglob("*") if p.is_file()):
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(staging)
            os.rename(staging, store.path_of(model_id))
            fsync_dir(store.root)
        store.switch(model_id)
        store.record("seeded", id=model_id, source=str(model_dir))
        return model_id


__all__ = ["CompatibilityError", "DowngradeError", "InstallOptions", "InstallResult", "SmokeTestError",
           "check_compatibility", "check_downgrade", "install_bundle", "seed_factory", "smoke_test", "version_key"]
