"""OTA model updates (issue 6): the entry points the CLI, the service and the MQTT command use.

The work lives beside it in ``ota/``: ``bundle`` (keys, pack, verify, safe extraction), ``sign``
(signatures), ``store`` (the on-device store, ``current``/``previous``, rollback, gc) and ``entries``
(one stored model), ``install`` (the install steps and the smoke test), ``fetch`` (resumable
download), ``durable`` (fsync and crash checkpoints) and ``hot_reload`` (swap in the running loop).

``handle_update_model(args)`` is what the MQTT ``update_model`` command calls::

    {"cmd": "update_model", "args": {"url": "https://…/model.bundle", "sha256": "…", "allow_downgrade": false,
                                     "wait_s": 120}}

It downloads (resumable, size-limited), verifies and installs the bundle, then waits (up to
``wait_s``) for the running loop to swap to it and finish probation. It returns a dict on success
and raises ``OtaError`` with the reason on any refusal or automatic rollback. It blocks for the
whole download + probation: call it off the MQTT network thread.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from edge_seg.ota.bundle import (
    BundleError,
    IntegrityError,
    OtaError,
    SignatureError,
    generate_keypair,
    load_public_keys,
    pack,
    verify_bundle,
)
from edge_seg.ota.install import InstallOptions, InstallResult, install_bundle
from edge_seg.ota.store import ModelStore, store_of

log = logging.getLogger(__name__)
_ACTIVE = None  # the running Service (set by Service.start), for handle_update_model


def store_for(config, state_dir: Path | None = None) -> ModelStore:
    """The store behind ``model.path`` when it is one, else ``<state_dir>/models``."""
    if state_dir is None:
        store = store_of(config.model.path)
        if store is not None:
            return store
    return ModelStore.for_state_dir(state_dir or config.device.state_dir)


def trusted_keys(config, extra: list[Path] | None = None) -> dict:
    """key_id -> public key from ``--pubkey`` paths when given, else ``ota.trusted_keys``."""
    return load_public_keys(extra if extra else config.ota.trusted_keys)


def install(config, bundle: Path, *, pubkeys: list[Path] | None = None, state_dir: Path | None = None,
            source: str | None = None, **overrides) -> InstallResult:
    """Verify and install a bundle file into the device's store (see ``ota.install``)."""
    return install_bundle(Path(bundle), store_for(config, state_dir), trusted_keys(config, pubkeys),
                          InstallOptions.from_config(config, **overrides), source=source)


def update(config, url: str, *, pubkeys: list[Path] | None = None, state_dir: Path | None = None,
           expected_sha256: str | None = None, progress=None, **overrides) -> InstallResult:
    """Download (resumable) and install a bundle; the downloaded file is removed once installed."""
    from edge_seg.ota.fetch import download

    store = store_for(config, state_dir)
    store.ensure()
    path = download(url, store.root.parent / "downloads", int(config.ota.max_bundle_mb * (1 << 20)),
                    progress=progress, expected_sha256=expected_sha256)
    if expected_sha256:
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        if h != expected_sha256.lower():
            path.unlink(missing_ok=True)
            raise IntegrityError(f"the download of {url} has sha256 {h[:12]}…, the command says "
                                 f"{expected_sha256[:12]}…: refusing")
    try:
        options = InstallOptions.from_config(config, **overrides)
        return install_bundle(path, store, trusted_keys(config, pubkeys), options, source=url)
    finally:
        path.unlink(missing_ok=True)


def reclaim_space(store: ModelStore, min_free_bytes: int, keep: int) -> list[str]:
    """Before a start writes anything: when the store's filesystem has less than ``min_free_bytes`` free, remove
    what can go, cheapest first: downloads, then what interrupted installs left and models beyond ``keep`` (never
    current, previous or pending). The names removed; nothing when there is room."""
    from edge_seg.ota.fetch import clear_slot

    def free() -> int:
        return shutil.disk_usage(store.root if store.root.exists() else store.root.parent).free

    if free() >= min_free_bytes:
        return []
    removed = [f"downloads/{name}" for name in clear_slot(store.root.parent / "downloads")]
    if free() < min_free_bytes and store.root.is_dir():
        removed += store.gc(keep)
    log.warning("low on disk space (%d MB free): removed %s", free() >> 20, ", ".join(removed) or "nothing")
    return removed


def status(config, state_dir: Path | None = None) -> dict:
    """Current/previous/pending models, bad ones, recent history."""
    store = store_for(config, state_dir)
    state = store.read_state()
    entries = {e.id: e.as_dict() for e in store.entries()}
    cur, prev = store.current_id(), store.previous_id()
    return {"store": str(store.root), "current": entries.get(cur) if cur else None,
            "previous": entries.get(prev) if prev else None, "pending": state.get("pending"),
            "bad": state.get("bad"), "history": state.get("history", [])[-10:]}


def set_active(service) -> None:
    global _ACTIVE
    _ACTIVE = service


def active():
    return _ACTIVE


def handle_update_model(args: dict) -> dict:
    """The MQTT ``update_model`` command (see the module docstring)."""
    service = _ACTIVE
    if service is None:
        raise OtaError("update_model: no running loop with OTA on this device")
    if not isinstance(args, dict) or not isinstance(args.get("url"), str):
        raise OtaError("update_model needs args.url (http:// or https://)")
    unknown = sorted(set(args) - {"url", "sha256", "allow_downgrade", "wait_s"})
    if unknown:
        raise OtaError(f"update_model: unknown field '{unknown[0]}' (valid: url, sha256, allow_downgrade, wait_s)")
    if service.store is None:
        raise OtaError("update_model: model.path is not in the model store (set it to <state_dir>/models/current)")
    wait_s = float(args.get("wait_s", 120.0))
    result = update(service.config, args["url"], state_dir=service.store.root.parent,
                    expected_sha256=args.get("sha256"), allow_downgrade=bool(args.get("allow_downgrade", False)))
    reply = {"installed": result.id, "previous": result.previous, "changed": result.changed, "smoke": result.smoke}
    reloader = service.reloader
    if reloader is None:
        reply["reload"] = "hot reload is off: restart the service to use the new model"
        return reply
    outcome = _await_swap(reloader, "update_model", result.id, wait_s)
    if outcome is None:
        reply["reload"] = {"outcome": "pending", "note": f"not finished within {wait_s:g} s; see the status"}
        return reply
    if outcome.get("outcome") in ("rolled_back", "refused", "failed"):
        raise OtaError(f"update_model: installed {result.id}, then {outcome['outcome'].replace('_', ' ')}: "
                       f"{outcome.get('reason')}")
    reply["reload"] = outcome
    return reply


def _await_swap(reloader, reason: str, model_id: str, wait_s: float) -> dict | None:
    """Ask the loop to reload and wait for the outcome for ``model_id`` (None: not within ``wait_s``)."""
    outcome = reloader.request(reason).wait(wait_s)
    if outcome is not None and outcome.get("outcome") == "unchanged":  # the file watch got there first
        outcome = next((o for o in reversed(reloader.outcomes)
                        if o.get("id") == model_id and o.get("outcome") != "unchanged"), outcome)
    return outcome


def handle_rollback(args: dict) -> dict:
    """The MQTT ``rollback`` command (``schemas.RollbackArgs``): ``current`` back to ``previous`` (only while
    ``expect_current`` is current, when given), then wait up to ``wait_s`` for the loop to swap to it."""
    service = _ACTIVE
    if service is None:
        raise OtaError("rollback: no running loop with OTA on this device")
    if service.store is None:
        raise OtaError("rollback: model.path is not in the model store (set it to <state_dir>/models/current)")
    left, now = service.store.rollback(str(args.get("reason") or "rollback command"),
                                       mark_bad=bool(args.get("mark_bad", True)),
                                       expect_current=args.get("expect_current"))
    reply = {"left": left, "current": now}
    if service.reloader is None:
        reply["reload"] = "hot reload is off: restart the service to use the previous model"
        return reply
    outcome = _await_swap(service.reloader, "rollback", now, float(args.get("wait_s", 120.0)))
    reply["reload"] = outcome if outcome is not None else {"outcome": "pending", "note": "see the status"}
    return reply


__all__ = ["BundleError", "IntegrityError", "OtaError", "SignatureError", "active", "generate_keypair",
           "handle_rollback", "handle_update_model", "install", "pack", "set_active", "status", "store_for",
           "trusted_keys", "update", "verify_bundle"]
