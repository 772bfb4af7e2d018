"""``edge-seg fleet rollout|simulate|bench`` (parsers here; the work in ``edge_seg.cloud``).

* ``fleet rollout BUNDLE_URL --sha256 H --signing-key KEY [--waves 1,10,50,100%] [--select k=v] …``:
  a staged, health-gated, resumable update (``edge_seg.cloud.rollout``); exit status 1 when halted.
* ``fleet rollout status [ID]``: the rollouts in the state database, or one rollout's devices.
* ``fleet simulate --devices N --rate R``: simulated devices (``edge_seg.cloud.fleet_simulator``).
* ``fleet bench --devices N [--db postgresql://… --objects s3://…]``: consumer ingest figures on loopback
  (``edge_seg.cloud.fleet_bench``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="mqtt[s]://[user@]host:port (password: EDGE_SEG_MQTT_PASSWORD; default mqtt://127.0.0.1:1883)")
    p.add_argument("--prefix", default="edge_seg", help="topic prefix (default edge_seg)")


def _state(args: argparse.Namespace):
    from edge_seg.cli.store_options import store_of
    from edge_seg.cloud.rollout_state import open_state

    where = store_of(args)
    return open_state(where.get("out_dir"), db=where.get("db"))


def cmd_rollout(args: argparse.Namespace) -> int:
    from edge_seg.errors import InputError

    if args.url == "status":
        return _rollout_status(args)
    if args.rollout_id is not None:
        raise InputError(f"unexpected argument {args.rollout_id!r}: fleet rollout BUNDLE_URL --sha256 H …")
    if not args.sha256 or not args.signing_key:
        raise InputError("fleet rollout needs --sha256 (of the bundle) and --signing-key (HMAC key file or "
                         "Ed25519 private key PEM)")
    from edge_seg.cloud.consumer import parse_broker_url
    from edge_seg.cloud.rollout import RolloutRunner
    from edge_seg.cloud.rollout_plan import Plan, Signer, parse_duration, parse_select
    from edge_seg.cloud.rollout_watch import FleetWatch

    plan = Plan(waves=args.waves, select=parse_select(args.select), max_fps_drop=args.max_fps_drop,
                max_confidence_drop=args.max_confidence_drop, soak_s=parse_duration(args.soak),
                baseline_s=parse_duration(args.baseline), command_timeout_s=parse_duration(args.command_timeout),
                discover_s=parse_duration(args.discover), wait_s=parse_duration(args.wait),
                allow_downgrade=args.allow_downgrade)
    signer = Signer(args.signing_key)
    state = _state(args)
    existing = state.unfinished(args.url, args.sha256.lower())
    watch = FleetWatch(parse_broker_url(args.broker), args.prefix, session=existing.id if existing else None)
    try:
        runner = RolloutRunner(state, watch.start(), signer)
        rollout = runner.start_or_resume(args.url, args.sha256.lower(), plan)
        if existing is None:  # from now on the command session is this rollout's: results wait for a restart
            watch.stop()
            watch = FleetWatch(parse_broker_url(args.broker), args.prefix, session=rollout.id).start()
            runner.watch = watch
        rollout = runner.run(rollout)
    finally:
        watch.stop()
        state.close()
    print(json.dumps({"id": rollout.id, "state": rollout.state, "waves": len(rollout.devices),
                      "message": rollout.message}))
    return 0 if rollout.state == "done" else 1


def _rollout_status(args: argparse.Namespace) -> int:
    from collections import Counter

    state = _state(args)
    try:
        if args.rollout_id is None:
            rows = [{"id": r.id, "state": r.state, "wave": r.wave, "waves": len(r.devices), "url": r.url,
                     "devices": sum(len(w) for w in r.devices), "message": r.message} for r in state.latest()]
            if args.json:
                print(json.dumps(rows, indent=1))
            for row in [] if args.json else rows:
                print(f"{row['id']}  {row['state']:<8} wave {min(row['wave'] + 1, row['waves'])}/{row['waves']}  "
                      f"{row['devices']} devices  {row['url']}" + (f"  ({row['message']})" if row["message"] else ""))
            return 0
        rollout = state.get(args.rollout_id)
        devices = state.devices(rollout.id)
    finally:
        state.close()
    if args.json:
        print(json.dumps({"id": rollout.id, "state": rollout.state, "wave": rollout.wave, "url": rollout.url,
                          "sha256": rollout.sha256, "plan": rollout.plan, "message": rollout.message,
                          "devices": devices}, indent=1, default=str))
        return 0
    print(f"rollout {rollout.id}: {rollout.state}, wave {min(rollout.wave + 1, len(rollout.devices))}/"
          f"{len(rollout.devices)}, {rollout.url}" + (f"\n  {rollout.message}" if rollout.message else ""))
    for k, wave in enumerate(rollout.devices):
        counts = Counter(devices[d]["state"] for d in wave)
        print(f"  wave {k + 1}: {len(wave)} devices: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for d in wave:
            if devices[d]["reason"]:
                print(f"    {d}: {devices[d]['state']}: {devices[d]['reason']}")
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_simulate(args: argparse.Namespace) -> int:
    from edge_seg.cloud.consumer import parse_broker_url
    from edge_seg.cloud.fleet_simulator import MAX_PER_PROCESS, SimConfig, Simulator
    from edge_seg.publish.commands_signing import Verifier

    if args.devices > MAX_PER_PROCESS:  # paho's select() loop: a few hundred clients per process
        from edge_seg.cloud.fleet_procs import run_split

        argv = sys.argv[sys.argv.index("fleet"):] if "fleet" in sys.argv else ["fleet", "simulate"]
        print(json.dumps(run_split(argv, args.devices, _stop_on_signals())))
        return 0

    verifier = None
    if args.require_signature:
        verifier = Verifier(args.require_signature, Path(args.key_file).read_bytes().rstrip(b"\r\n"))
    labels = {}
    for item in args.label or ():
        key, _, values = item.partition("=")
        labels[key] = values.split(",")
    config = SimConfig(devices=args.devices, rate=args.rate, prefix=args.prefix, name=args.name,
                       status_interval=args.status_interval, crop_every=args.crop_every, fail_on=args.fail_health_on,
                       fail_devices=tuple(d for d in (args.fail_devices or "").split(",") if d),
                       labels=labels, verifier=verifier, first=args.first,
                       allowed_url_prefixes=tuple(args.allow_url or ["http://bundles.test/"]))
    sim = Simulator(parse_broker_url(args.broker), config).start()
    print(f"fleet simulate: {args.devices} devices connected, {args.rate:g} masks/s each", file=sys.stderr, flush=True)
    stop = _stop_on_signals()
    while not stop.wait(min(args.report_every, args.duration or args.report_every)):
        stats = sim.stats()
        print(json.dumps({k: stats[k] for k in ("elapsed_s", "frames_per_s", "cpu_ms_per_frame", "cpu_cores")}),
              file=sys.stderr, flush=True)
        if args.duration and stats["elapsed_s"] >= args.duration:
            break
    print(json.dumps(sim.stop()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_seg.cloud.fleet_bench import BenchConfig, run_bench
    from edge_seg.errors import InputError

    try:
        consumers = tuple(int(n) for n in args.consumers.split(","))
    except ValueError:
        raise InputError("--consumers is a list of counts, e.g. 1,2,4") from None
    config = BenchConfig(devices=args.devices, rate=args.rate, duration_s=args.duration, consumers=consumers,
                         drain_s=args.drain, broker=args.broker, db=args.db, objects=args.objects)
    results = run_bench(config)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    cols = ("consumers", "offered_masks_s", "ingest_masks_s", "cpu_ms_per_mask", "latency_ms_p50", "latency_ms_p99",
            "db_rows_s", "objects_s")
    print("  ".join(cols))
    for row in results:
        print("  ".join(str(row[c]).rjust(len(c)) for c in cols))
    return 0


def register(fsub) -> None:
    from edge_seg.cli.store_options import store_args
    p = fsub.add_parser("rollout", help="signed update_model wave by wave, halted and rolled back on a health "
                                        "regression; 'fleet rollout status [ID]' shows rollouts")
    p.add_argument("url", metavar="BUNDLE_URL", help="http(s) URL of the signed bundle (or 'status')")
    p.add_argument("rollout_id", nargs="?", default=None, metavar="ID", help="with 'status': one rollout's devices")
    p.add_argument("--sha256", default=None, help="sha256 of the bundle file (the devices check it)")
    p.add_argument("--signing-key", type=Path, default=None,
                   help="key the commands are signed with: HMAC key file or Ed25519 private key (PEM)")
    p.add_argument("--waves", default="1,10,50,100%", help="cumulative wave sizes: counts or percentages "
                   "(default 1,10,50,100%%: 1 device, up to 10, up to 50, all)")
    p.add_argument("--select", action="append", metavar="LABEL=VALUE", help="only devices whose status matches: "
                   "device=PATTERN, model=NAME, version=V or a key of extra.labels (repeatable)")
    p.add_argument("--max-fps-drop", type=float, default=0.1, help="largest FPS drop, fraction of the device's "
                   "baseline (default 0.1)")
    p.add_argument("--max-confidence-drop", type=float, default=0.1, help="largest mean-confidence drop, "
                   "fraction of the baseline (default 0.1)")
    p.add_argument("--soak", default="10m", help="health watched on the new model per wave (default 10m)")
    p.add_argument("--baseline", default="30s", help="health sampled before a wave's commands (default 30s)")
    p.add_argument("--command-timeout", default="5m", help="wait for results and the new model (default 5m)")
    p.add_argument("--discover", default="3s", help="time to read the devices' retained statuses (default 3s)")
    p.add_argument("--wait", default="120s", help="update_model's wait_s on the device (default 120s)")
    p.add_argument("--allow-downgrade", action="store_true", help="let devices install an older version")
    store_args(p, objects=False)  # the rollout tables live in the consumer's store
    p.add_argument("--json", action="store_true", help="with 'status': print JSON")
    _broker_args(p)
    p.set_defaults(func=cmd_rollout)

    p = fsub.add_parser("simulate", help="N simulated devices (real MQTT sessions and messages) answering commands")
    p.add_argument("--devices", type=int, default=10, help="number of devices (default 10)")
    p.add_argument("--rate", type=float, default=1.0, help="masks per second per device (default 1)")
    p.add_argument("--name", default="sim", help="device ids are NAME-0000, NAME-0001, … (default sim)")
    p.add_argument("--crop-every", type=int, default=5, help="a crop every N masks, 0 for none (default 5)")
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between statuses (default 5)")
    p.add_argument("--fail-health-on", default=None, metavar="VERSION_OR_SHA",
                   help="a model (version, or 8+ leading hex of its sha256) on which FPS and confidence halve")
    p.add_argument("--fail-devices", default=None, metavar="ID,ID", help="only these devices fail (default all)")
    p.add_argument("--label", action="append", metavar="KEY=V1,V2", help="status labels, values round-robin")
    p.add_argument("--require-signature", choices=("hmac", "ed25519"), default=None,
                   help="devices verify command signatures (with --key-file); default: unsigned commands run")
    p.add_argument("--key-file", type=Path, default=None, help="HMAC key or Ed25519 public key the devices hold")
    p.add_argument("--allow-url", action="append", default=None, metavar="PREFIX",
                   help="URL prefix update_model may name (ota.allowed_url_prefixes; default http://bundles.test/)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)  # a slice of a split fleet
    p.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines (default 10)")
    _broker_args(p)
    p.set_defaults(func=cmd_simulate)

    p = fsub.add_parser("bench", help="consumer ingest with 1, 2, 4 consumers of simulated devices (loopback)")
    p.add_argument("--devices", type=int, default=200, help="simulated devices (default 200; try 500, 1000)")
    p.add_argument("--rate", type=float, default=1.0, help="masks per second per device (default 1)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds the devices send per run (default 10)")
    p.add_argument("--consumers", default="1,2,4", help="consumer counts, one run each (default 1,2,4)")
    p.add_argument("--drain", type=float, default=30.0, help="seconds left to store the backlog (default 30)")
    p.add_argument("--broker", default=None, help="a broker URL (default: a Mosquitto started on loopback)")
    p.add_argument("--db", default=None, help="PostgreSQL URL (default: SQLite + folder in a temporary directory)")
    p.add_argument("--objects", default=None, metavar="s3://BUCKET/PREFIX", help="with --db: object storage")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)


__all__ = ["register"]
