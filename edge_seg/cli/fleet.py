"""``edge-seg fleet ...``: the cloud side's fleet commands (registered through the ``edge_seg.commands`` entry
points). ``rollout``, ``simulate`` and ``bench`` are declared in ``edge_seg.cli.fleet_rollout``."""

from __future__ import annotations


def register(sub) -> None:
    from edge_seg.cli import fleet_rollout

    p = sub.add_parser("fleet", help="cloud side: staged model rollouts, a fleet simulator, a fleet benchmark")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    fleet_rollout.register(fsub)
