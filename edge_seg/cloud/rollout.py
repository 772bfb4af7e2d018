"""``edge-seg fleet rollout``: a signed model update, wave by wave, gated on each device's health.

For each wave (``rollout_plan``): the wave's devices are watched (``rollout_watch``) for
``baseline_s`` to take their own pre-rollout **baseline** (mean FPS from their statuses, mean
confidence from their masks, and the model they run); then each gets a signed ``update_model``
(persisted before it is published, ``rollout_state``). The wave waits, up to ``command_timeout_s``,
for every device's ``cmd/result`` and for its status to report a model other than its baseline's;
then **soaks** for ``soak_s`` and compares each device's FPS and confidence on the new model with its
baseline. A drop of more than ``max_fps_drop`` / ``max_confidence_drop`` (fractions of the baseline),
a failed result, no status on the new model, or a timeout **halts** the rollout: every device of
the wave that installed the model gets a signed ``rollback`` (with ``expect_current``: the model id it
installed) and no later wave is touched. Devices of earlier, healthy waves keep the new model.

A rollout of the same bundle URL and sha256 that did not finish resumes: finished waves are skipped,
commands already sent are published again with the same id and signature (a device answers a
repeated id with its first result; it does not run it twice), baselines already taken are kept.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time

from edge_seg.cloud.rollout_plan import Plan, Signer, parse_waves, selected, split_waves
from edge_seg.cloud.rollout_state import Rollout, RolloutState
from edge_seg.cloud.rollout_watch import FleetWatch, model_key
from edge_seg.errors import InputError
from edge_seg.publish.commands_signing import MAX_SKEW_S

log = logging.getLogger(__name__)
POLL_S = 0.1
RESIGN_AFTER_S = MAX_SKEW_S - 60  # an older command would be refused by the device's clock check


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class RolloutRunner:
    """Runs (or resumes) one rollout over a ``FleetWatch``; state in a ``RolloutState``."""

    def __init__(self, state: RolloutState, watch: FleetWatch, signer: Signer, report=say):
        self.state, self.watch, self.signer, self.report = state, watch, signer, report

    # --- start ---------------------------------------------------------------------------------
    def start_or_resume(self, url: str, sha256: str, plan: Plan) -> Rollout:
        """The interrupted rollout of this bundle, or a new one over the selected online devices."""
        existing = self.state.unfinished(url, sha256)
        if existing is not None:
            self.report(f"resuming rollout {existing.id} at wave {existing.wave + 1} of {len(existing.devices)}")
            return existing
        time.sleep(plan.discover_s)  # the retained statuses of every device arrive
        devices = sorted(d for d, s in self.watch.statuses.items() if s.get("online") and selected(s, plan.select))
        if not devices:
            raise InputError("no online device matches the selection (their retained status on "
                             f"{self.watch.prefix}/+/status is what is read)")
        waves = split_waves(devices, parse_waves(plan.waves))
        rollout = self.state.create(url, sha256, plan.as_dict(), waves)
        self.report(f"rollout {rollout.id}: {len(devices)} devices in {len(waves)} waves "
                    f"({', '.join(str(len(w)) for w in waves)})")
        return rollout

    def run(self, rollout: Rollout) -> Rollout:
        """Every remaining wave, or until one fails; the rollout as it ends (state done or halted)."""
        plan = Plan(**rollout.plan)
        if rollout.state == "halting":
            self._halt(rollout, plan, rollout.wave, rollout.message or "halted")
            return self.state.get(rollout.id)
        for k in range(rollout.wave, len(rollout.devices)):
            self.state.set_rollout(rollout.id, wave=k)
            failures = self._wave(rollout, plan, k)
            if failures:
                reason = f"wave {k + 1} failed: " + "; ".join(f"{d}: {r}" for d, r in sorted(failures.items())[:5])
                self._halt(rollout, plan, k, reason)
                return self.state.get(rollout.id)
            self.report(f"wave {k + 1}/{len(rollout.devices)}: {len(rollout.devices[k])} devices healthy")
        self.state.set_rollout(rollout.id, state="done", wave=len(rollout.devices), message="all waves healthy")
        return self.state.get(rollout.id)

    # --- one wave ------------------------------------------------------------------------------
    def _wave(self, rollout: Rollout, plan: Plan, k: int) -> dict[str, str]:
        """Baseline, commands, results, soak, verdict of wave ``k``: device -> why it failed ({} when healthy)."""
        rows = self.state.devices(rollout.id, k)
        devices = list(rows)
        self.watch.track(devices)
        try:
            self._baselines(rollout, plan, rows)
            for device, row in rows.items():
                if row["state"] in ("pending", "sending", "sent"):
                    self._send_update(rollout, plan, device, row)
            rows = self.state.devices(rollout.id, k)
            failures = self._await_applied(rollout, plan, rows)
            if failures:
                return failures
            return self._soak(rollout, plan, self.state.devices(rollout.id, k))
        finally:
            self.watch.untrack(devices)

    def _baselines(self, rollout: Rollout, plan: Plan, rows: dict[str, dict]) -> None:
        need = [d for d, row in rows.items() if row["baseline"] is None]
        if not need:
            return
        since = time.time()
        time.sleep(plan.baseline_s)
        for device in need:
            status = self.watch.status(device) or {}
            model = model_key(status.get("model"))
            fps, conf = self.watch.samples(device, since, model=model)
            if not fps and isinstance(status.get("fps"), (int, float)):
                fps = [float(status["fps"])]  # the retained status: no newer one within the window
            baseline = {"model": list(model) if model else None, "fps": _mean(fps), "confidence": _mean(conf),
                        "samples": [len(fps), len(conf)]}
            self.state.update_device(rollout.id, device, baseline=baseline)

    def _send_update(self, rollout: Rollout, plan: Plan, device: str, row: dict) -> None:
        payload = row["cmd"]
        if payload is not None and time.time() - json.loads(payload)["ts"] > RESIGN_AFTER_S:
            payload = None  # too old for the device's clock check: a new id (update_model is idempotent)
        if payload is None:
            attempt = 1 if row["cmd_id"] is None else int(row["cmd_id"].rsplit("-u", 1)[-1]) + 1
            args = {"url": rollout.url, "sha256": rollout.sha256, "wait_s": plan.wait_s}
            if plan.allow_downgrade:
                args["allow_downgrade"] = True
            command = self.signer.sign({"id": f"{rollout.id}-{device}-u{attempt}"[-128:], "cmd": "update_model",
                                        "args": args})
            payload = json.dumps(command, separators=(",", ":"))
            self.state.update_device(rollout.id, device, state="sending", cmd_id=command["id"], cmd=payload,
                                     sent=time.time())  # before it leaves: a restart sends this, not a new one
        self.watch.publish(device, payload.encode())
        self.state.update_device(rollout.id, device, state="sent")

    def _await_applied(self, rollout: Rollout, plan: Plan, rows: dict[str, dict]) -> dict[str, str]:
        """Until each device's result is in and its status reports a new model; device -> failure."""
        failures: dict[str, str] = {}
        waiting = {d for d, row in rows.items() if row["state"] in ("sent", "applied")}
        failures.update({d: row["reason"] or "failed" for d, row in rows.items() if row["state"] == "failed"})
        deadline = time.monotonic() + plan.command_timeout_s
        wave = next(iter(rows.values()))["wave"]
        while waiting and time.monotonic() < deadline:
            current = self.state.devices(rollout.id, wave)
            for device in sorted(waiting):
                verdict = self._applied(rollout, device, current[device])
                if verdict is not None:
                    waiting.discard(device)
                    if verdict:
                        failures[device] = verdict
            if waiting:
                time.sleep(POLL_S)
        current = self.state.devices(rollout.id, wave)
        for device in waiting:
            row = current[device]
            why = ("timeout: no command result" if row["state"] == "sent"
                   else "timeout: the status still reports the old model")
            self.state.update_device(rollout.id, device, state="failed", reason=why)
            failures[device] = why
        return failures

    def _applied(self, rollout: Rollout, device: str, row: dict) -> str | None:
        """'' when the device runs the new model, a reason when it failed, None while undecided."""
        if row["state"] == "sent":
            result = self.watch.result(row["cmd_id"])
            if result is None:
                return None
            if not result.get("ok"):
                error = str(result.get("error") or "failed")
                if error.startswith("replayed command id"):  # it ran before a device restart: its status tells
                    self.state.update_device(rollout.id, device, state="applied", result=result)
                    return None
                self.state.update_device(rollout.id, device, state="failed", result=result, reason=error[:300])
                return error[:300]
            installed = (result.get("result") or {}).get("installed")
            self.state.update_device(rollout.id, device, state="applied", result=result, installed=installed)
            return None
        status = self.watch.status(device) or {}
        old = tuple(row["baseline"]["model"]) if row["baseline"] and row["baseline"]["model"] else None
        if status.get("online") and model_key(status.get("model")) not in (None, old):
            return ""
        return None

    def _soak(self, rollout: Rollout, plan: Plan, rows: dict[str, dict]) -> dict[str, str]:
        """Health over ``soak_s`` against each device's baseline; healthy devices are marked so."""
        since = time.time()
        time.sleep(plan.soak_s)
        failures = {}
        for device, row in rows.items():
            if row["state"] == "healthy":
                continue
            base = row["baseline"] or {}
            old = tuple(base["model"]) if base.get("model") else None
            fps, conf = self.watch.samples(device, since, exclude=old)
            health = {"fps": _mean(fps), "confidence": _mean(conf), "samples": [len(fps), len(conf)]}
            why = _regression(base, health, plan)
            if why is None and not (self.watch.status(device) or {}).get("online"):
                why = "went offline during the soak"
            if why:
                failures[device] = why
                self.state.update_device(rollout.id, device, state="failed", health=health, reason=why)
            else:
                self.state.update_device(rollout.id, device, state="healthy", health=health)
        return failures

    # --- halting -------------------------------------------------------------------------------
    def _halt(self, rollout: Rollout, plan: Plan, k: int, reason: str) -> None:
        """Roll back every device of wave ``k`` that installed the model; the rollout ends halted."""
        self.report(f"halting rollout {rollout.id}: {reason}")
        self.state.set_rollout(rollout.id, state="halting", message=reason[:1000])
        rows = self.state.devices(rollout.id, k)
        pending = {}
        for device, row in rows.items():
            if row["installed"] is None or row["state"] == "rolled_back":
                continue
            payload = row["rollback_cmd"]
            if payload is None:
                command = self.signer.sign({"id": f"{rollout.id}-{device}-rb"[-128:], "cmd": "rollback",
                                            "args": {"expect_current": row["installed"], "wait_s": plan.wait_s,
                                                     "reason": f"fleet rollout {rollout.id}: wave {k + 1} failed"}})
                payload = json.dumps(command, separators=(",", ":"))
                self.state.update_device(rollout.id, device, state="rolling_back", rollback_id=command["id"],
                                         rollback_cmd=payload)
            self.watch.publish(device, payload.encode())
            pending[device] = json.loads(payload)["id"]
        deadline = time.monotonic() + plan.command_timeout_s
        while pending and time.monotonic() < deadline:
            for device, cid in list(pending.items()):
                result = self.watch.result(cid)
                if result is not None:
                    state = "rolled_back" if result.get("ok") else "rolling_back"
                    self.state.update_device(rollout.id, device, state=state, rollback_result=result)
                    del pending[device]
            time.sleep(POLL_S)
        note = f"; no rollback result from {', '.join(sorted(pending))}" if pending else ""
        self.state.set_rollout(rollout.id, state="halted", message=(reason + note)[:1000])


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _regression(base: dict, health: dict, plan: Plan) -> str | None:
    """Why the health on the new model is a regression from the baseline (None: it is not)."""
    if health["fps"] is None:
        return "no status on the new model during the soak"
    if base.get("fps"):
        drop = (base["fps"] - health["fps"]) / base["fps"]
        if drop > plan.max_fps_drop:
            return f"FPS dropped {drop:.0%} ({base['fps']:g} → {health['fps']:g}; max {plan.max_fps_drop:.0%})"
    if base.get("confidence") and health["confidence"] is not None:
        drop = (base["confidence"] - health["confidence"]) / base["confidence"]
        if drop > plan.max_confidence_drop:
            return (f"confidence dropped {drop:.0%} ({base['confidence']:g} → {health['confidence']:g}; "
                    f"max {plan.max_confidence_drop:.0%})")
    return None


__all__ = ["RolloutRunner"]
