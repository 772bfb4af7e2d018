"""Operations subcommands, registered through the ``edge_seg.commands`` entry points (setup.cfg):

* ``edge-seg model keygen|pack|verify|install|update|rollback|status|list|gc`` (signed OTA bundles)
* ``edge-seg service install`` (systemd unit + device config)
* ``edge-seg doctor`` (what is wrong with this device, and how to fix it)

``register_*`` only declares arguments; the handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/edge-seg/config.yaml")


def _config(args: argparse.Namespace):
    """``--config``, else $EDGE_SEG_CONFIG, else /etc/edge-seg/config.yaml if present, else defaults."""
    from edge_seg.config import Config, load_config

    path = args.config or (Path(os.environ["EDGE_SEG_CONFIG"]) if os.environ.get("EDGE_SEG_CONFIG") else None)
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return load_config(path) if path else Config()


def _store_args(p: argparse.ArgumentParser, keys: bool = False) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help=f"device config (default: $EDGE_SEG_CONFIG or {DEFAULT_CONFIG} if present)")
    p.add_argument("--state-dir", type=Path, default=None, help="state directory (default: device.state_dir)")
    p.add_argument("--json", action="store_true", help="print JSON")
    if keys:
        p.add_argument("--pubkey", type=Path, action="append", default=None,
                       help="trusted public key file or directory (repeatable; default: ota.trusted_keys)")


def _install_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-downgrade", action="store_true", help="install an older (or same) version")
    p.add_argument("--allow-task-change", action="store_true", help="install a model with another task")
    p.add_argument("--force", action="store_true", help="install a model this device rolled back before")
    p.add_argument("--skip-smoke-test", action="store_true", help="do not load and run the model before switching")


def _emit(args: argparse.Namespace, data, line: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else line)


# --- model -----------------------------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    from edge_seg.ota.bundle import generate_keypair, key_id, load_private_key

    private, public = generate_keypair(args.out, force=args.force)
    kid = key_id(load_private_key(private).public_key())
    print(f"wrote {private} (private: keep it off devices) and {public} (key {kid}: copy it to "
          "/etc/edge-seg/keys/ on each device)")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from edge_seg.ota.bundle import pack

    result = pack(args.dir, args.key, args.out)
    print(f"wrote {result.path}: {result.manifest.name} {result.manifest.version}, {len(result.files)} file(s), "
          f"signed by key {result.key_id}, manifest sha256 {result.digest[:12]}…")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edge_seg.ota.bundle import load_public_keys, verify_bundle

    keys = load_public_keys(args.pubkey)
    if not keys:
        from edge_seg.ota.bundle import OtaError

        raise OtaError(f"no public key found in {', '.join(map(str, args.pubkey))}")
    bundle = verify_bundle(args.bundle, keys)
    data = {"bundle": str(args.bundle), "name": bundle.manifest.name, "version": bundle.manifest.version,
            "key_id": bundle.key_id, "manifest_sha256": bundle.digest, "files": bundle.files}
    _emit(args, data, f"OK: {bundle.manifest.name} {bundle.manifest.version}, signed by {bundle.key_id}, "
                      f"{len(bundle.files)} file(s) match the signed manifest")
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    return {"allow_downgrade": args.allow_downgrade or None, "allow_task_change": args.allow_task_change or None,
            "force": args.force or None, "smoke": False if args.skip_smoke_test else None}


def cmd_install(args: argparse.Namespace) -> int:
    from edge_seg.ota import actions as ota

    result = ota.install(_config(args), args.bundle, pubkeys=args.pubkey, state_dir=args.state_dir,
                         **_overrides(args))
    _emit(args, result.as_dict(), result.line())
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from edge_seg.ota import actions as ota

    def progress(have: int, total: int | None) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\rdownloading {have / 1e6:.1f}{f' / {total / 1e6:.1f}' if total else ''} MB", end="",
                  file=sys.stderr, flush=True)

    result = ota.update(_config(args), args.url, pubkeys=args.pubkey, state_dir=args.state_dir,
                        expected_sha256=args.sha256, progress=progress, **_overrides(args))
    _emit(args, result.as_dict(), result.line())
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from edge_seg.ota import actions as ota

    store = ota.store_for(_config(args), args.state_dir)
    left, now = store.rollback(args.reason or "manual rollback", mark_bad=args.mark_bad)
    _emit(args, {"from": left, "to": now}, f"current is now {now} (was {left}); the running service follows "
                                           "by itself (or: systemctl reload edge-seg)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edge_seg.ota import actions as ota

    data = ota.status(_config(args), args.state_dir)
    if args.json:
        _emit(args, data, "")
        return 0
    cur, prev, pending = data["current"], data["previous"], data["pending"]
    print(f"store:    {data['store']}")
    print(f"current:  {cur['id'] if cur else 'none'}" + (" (pending probation)" if cur and cur["pending"] else ""))
    print(f"previous: {prev['id'] if prev else 'none'}")
    if pending and (not cur or pending["id"] != cur["id"]):
        print(f"pending:  {pending['id']}")
    for model_id, reason in (data["bad"] or {}).items():
        print(f"rolled back: {model_id}: {reason}")
    for event in data["history"][-5:]:
        detail = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("ts", "event"))
        print(f"  {event['event']}: {detail}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from edge_seg.errors import EdgeSegError
    from edge_seg.ota import actions as ota

    config = _config(args)
    store = ota.store_for(config, args.state_dir)
    keys = ota.trusted_keys(config, args.pubkey) if args.verify else None
    rows = []
    for entry in store.entries():
        row = entry.as_dict()
        if args.verify:
            try:
                store.verify_entry(entry.id, keys)
                row["verified"] = "ok"
            except EdgeSegError as err:
                row["verified"] = str(err)
        rows.append(row)
    if args.json:
        _emit(args, rows, "")
        return 0
    for row in rows:
        flags = ",".join(k for k in ("current", "previous", "pending") if row[k]) + (",bad" if row["bad"] else "")
        verified = f"  verify: {row['verified']}" if args.verify else ""
        print(f"{row['id']:<48} {row['bytes'] / 1e6:7.2f} MB  {flags or '-':<17}{verified}")
    if not rows:
        print(f"no models in {store.root}")
    return 1 if args.verify and any(r["verified"] != "ok" for r in rows) else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from edge_seg.ota import actions as ota

    config = _config(args)
    store = ota.store_for(config, args.state_dir)
    removed = store.gc(keep=args.keep or config.ota.keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    _emit(args, {"removed": removed, "dry_run": args.dry_run},
          f"{verb} {len(removed)} item(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0


def register_model(sub) -> None:
    from edge_seg.cli.common import command_actions

    msub = command_actions(sub, "model", "signed model bundles and the on-device model store (OTA)")

    q = msub.add_parser("keygen", help="make an Ed25519 signing key pair (OUT.key, OUT.pub)")
    q.add_argument("--out", "-o", type=Path, default=Path("edge-seg-ota"), help="path stem (default edge-seg-ota)")
    q.add_argument("--force", action="store_true", help="overwrite existing files")
    q.set_defaults(func=cmd_keygen)

    q = msub.add_parser("pack", help="bundle a model directory (manifest.json + files) and sign it")
    q.add_argument("dir", type=Path, metavar="DIR", help="model directory: manifest.json and the files it lists")
    q.add_argument("--key", "-k", type=Path, required=True, help="private key (from 'model keygen')")
    q.add_argument("--out", "-o", type=Path, required=True, help="bundle file to write (.tar, or .tar.gz)")
    q.set_defaults(func=cmd_pack)

    q = msub.add_parser("verify", help="check a bundle's signature and file hashes (writes nothing)")
    q.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle file (from 'model pack')")
    q.add_argument("--pubkey", "-p", type=Path, action="append", required=True, help="trusted public key (repeatable)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_verify)

    q = msub.add_parser("install", help="verify, smoke-test and switch to a bundle (atomic, keeps previous)")
    q.add_argument("bundle", type=Path, metavar="FILE", help="signed bundle file (from 'model pack')")
    _store_args(q, keys=True)
    _install_args(q)
    q.set_defaults(func=cmd_install)

    q = msub.add_parser("update", help="download a bundle (resumable) and install it")
    q.add_argument("--url", required=True, help="http(s) URL of the bundle")
    q.add_argument("--sha256", default=None, help="expected sha256 of the bundle file")
    _store_args(q, keys=True)
    _install_args(q)
    q.set_defaults(func=cmd_update)

    q = msub.add_parser("rollback", help="switch current back to previous")
    _store_args(q)
    q.add_argument("--reason", default=None, help="recorded in the history")
    q.add_argument("--mark-bad", action="store_true", help="refuse to reinstall the model left (without --force)")
    q.set_defaults(func=cmd_rollback)

    q = msub.add_parser("status", help="current, previous, pending models and recent events")
    _store_args(q)
    q.set_defaults(func=cmd_status)

    q = msub.add_parser("list", help="stored models")
    _store_args(q, keys=True)
    q.add_argument("--verify", action="store_true", help="check every stored model's hashes and signature")
    q.set_defaults(func=cmd_list)

    q = msub.add_parser("gc", help="delete old stored models (never current or previous) and downloads")
    _store_args(q)
    q.add_argument("--keep", type=int, default=None, help="models to keep (default ota.keep)")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    q.set_defaults(func=cmd_gc)


# --- service ---------------------------------------------------------------------------------

def cmd_service_install(args: argparse.Namespace) -> int:
    from edge_seg.service.install import install_service

    report = install_service(board=args.board, config_src=args.from_config, root=args.root, user=args.user,
                             exec_path=args.exec_path, force=args.force, seed=not args.no_seed,
                             pubkeys=args.pubkey or [], enable=args.enable)
    print("\n".join(report))
    return 0


def register_service(sub) -> None:
    p = sub.add_parser("service", help="systemd integration")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    q = ssub.add_parser("install", help="write the systemd unit and the device config, seed the model store")
    q.add_argument("--board", default=None, help="start from firmware_configs/boards/BOARD.yaml "
                   "(jetson-orin-nano, jetson-xavier-nx, rpi5-coral, rpi4, x86-dev)")
    q.add_argument("--from-config", type=Path, default=None, help="start from this device config instead")
    q.add_argument("--root", type=Path, default=Path("/"), help="install under this root (images, tests)")
    q.add_argument("--user", default="edge-seg", help="service user (default edge-seg)")
    q.add_argument("--exec-path", default=None, help="edge-seg executable (default: this one)")
    q.add_argument("--pubkey", type=Path, action="append", default=None, help="copy this OTA public key into "
                   "/etc/edge-seg/keys/ (repeatable)")
    q.add_argument("--no-seed", action="store_true", help="do not copy the bundled model into an empty store")
    q.add_argument("--force", action="store_true", help="overwrite an existing config")
    q.add_argument("--enable", action="store_true", help="also run systemctl daemon-reload + enable --now")
    q.set_defaults(func=cmd_service_install)


# --- doctor ----------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from edge_seg.service.doctor import render, run_checks

    results = run_checks(_config(args), config_path=args.config, broker_timeout=args.timeout)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(render(results))
    return 1 if any(r.level == "fail" for r in results) else 0


def register_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check this device: packages, backends, cameras, broker, state, models")
    p.add_argument("--config", "-c", type=Path, default=None,
                   help=f"device config (default: $EDGE_SEG_CONFIG or {DEFAULT_CONFIG} if present)")
    p.add_argument("--timeout", type=float, default=3.0, help="broker connect timeout in seconds (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor)
