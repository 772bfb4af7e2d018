"""Hot reload: the running loop takes a new model without losing a frame, and gives it back if it misbehaves.

A reload (SIGHUP, a changed ``models/current`` seen by the file watch, or the MQTT
``update_model`` command) runs on its own thread, beside the loop:

1. **load** the new model (the loop keeps running on the old one);
2. **shadow** (``ota.shadow_frames`` > 0): the new model segments the live frames the old one just
   did; agreement (mIoU of the two class maps), latency and confidence are reported; the swap
   goes ahead only if outputs are finite and within ``ota.min_agreement`` / ``ota.max_latency_factor``;
3. **swap** between two frames (``Pipeline.swap_segmenter``): zero frames lost;
4. **probation** (``ota.probation_frames`` frames or ``ota.probation_s``): no model errors, finite
   outputs and valid class ids, latency ≤ factor × the old model's, mean confidence not fallen by
   more than ``ota.max_confidence_drop``, class areas not collapsed onto one class. Pass: the store
   marks the model good. Fail: the old model (still loaded) is swapped back at once, ``current``
   is rolled back in the store, and the reason goes to the status and the command result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_seg.errors import EdgeSegError
from edge_seg.ota.reload_checks import FrameCheck, ReloadPolicy, agreement, frame_check, judge

log = logging.getLogger(__name__)


class ReloadTicket:
    """A reload request; ``wait`` returns its outcome dict (None on timeout)."""

    def __init__(self, reason: str, force: bool = False, rollback: bool = False):
        self.reason, self.force, self.rollback = reason, force, rollback
        self.outcome: dict | None = None
        self._done = threading.Event()

    def finish(self, outcome: dict) -> None:
        self.outcome = outcome
        self._done.set()

    def wait(self, timeout: float | None = None) -> dict | None:
        self._done.wait(timeout)
        return self.outcome


class _Tap:
    """The last loop stage: hands every result to the reloader (baseline, shadow input, probation)."""

    name = "reload-tap"

    def __init__(self, observe: Callable[[object], None]):
        self._observe = observe

    def __call__(self, result) -> None:
        self._observe(result)


def identity_of(segmenter):
    """The ``ModelIdentity`` results of ``segmenter`` carry."""
    from edge_seg.segmentation import ModelIdentity

    m = segmenter.manifest
    return ModelIdentity(m.name, m.version, segmenter.loaded.sha256)


class HotReloader:
    """Watches for a new model and swaps the pipeline to it (see the module docstring)."""

    def __init__(self, pipeline, create: Callable[[Path], object], *, model_path: Path, store=None,
                 policy: ReloadPolicy | None = None, on_swap: list[Callable[[object], None]] | None = None,
                 watch: bool = True):
        self.pipeline, self.create, self.store = pipeline, create, store
        self.policy = policy or ReloadPolicy()
        self.on_swap = list(on_swap or [])
        self.watch = watch and store is not None
        self._model_path = Path(model_path)
        self._active = self._resolve(self._model_path)
        self._requests: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        self._phase = "idle"
        self._baseline: deque = deque(maxlen=120)
        self._shadow_in: deque = deque(maxlen=1)
        self._probation: list[FrameCheck] = []
        self._probation_model = None
        self._errors: list[str] = []
        self._suspect = None  # the model on probation, from its swap until it is confirmed or swapped back
        self._refused: Path | None = None  # the watch does not retry a model that was refused
        self._last: dict | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.outcomes: list[dict] = []

    # --- wiring --------------------------------------------------------------------------
    def start(self) -> "HotReloader":
        self.pipeline.stages.append(_Tap(self._observe))
        self.pipeline.on_model_error = self._on_model_error
        self._thread = threading.Thread(target=self._work, name="edge-seg-reload", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def request(self, reason: str, force: bool = False) -> ReloadTicket:
        """Ask for a reload (thread- and signal-safe); the ticket carries the outcome."""
        ticket = ReloadTicket(reason, force or self.store is None)
        self._requests.put(ticket)
        return ticket

    def status(self) -> dict:
        with self._lock:
            return {"phase": self._phase, "model": str(self._active), "last": self._last}

    @staticmethod
    def _resolve(path: Path) -> Path:
        path = Path(path)
        return path.resolve() if path.exists() else path

    # --- taps (sink and inference threads) -----------------------------------------------
    def _observe(self, result) -> None:
        check = frame_check(result)
        with self._lock:
            if self._phase == "probation" and check.model == self._probation_model:
                self._probation.append(check)
                self._lock.notify_all()
            elif self._phase in ("idle", "loading", "shadow"):
                self._baseline.append(check)
            if self._phase == "shadow":
                self._shadow_in.append((result.raw_image, result.segmentation, check))  # the model's view
                self._lock.notify_all()

    def _on_model_error(self, err: BaseException) -> bool:
        """Errors of the model on probation are its verdict (handled: the loop goes on); others propagate."""
        with self._lock:
            if self._suspect is None or self.pipeline.segmenter is not self._suspect:
                return False
            self._errors.append(f"{type(err).__name__}: {err}"[:200])
            self._lock.notify_all()
            return True

    # --- the worker ----------------------------------------------------------------------
    def _work(self) -> None:
        self._confirm_at_start()
        while not self._closed.is_set():
            try:
                ticket = self._requests.get(timeout=self.policy.watch_interval_s)
            except queue.Empty:
                if not self.watch or not self._current_changed():
                    continue
                ticket = ReloadTicket("models/current changed")
            if ticket is None:
                break
            try:
                outcome = self._reload(ticket)
            except Exception as err:  # noqa: BLE001 - the loop keeps running on its model whatever happens here
                log.exception("reload failed")
                outcome = {"outcome": "failed", "reason": f"{type(err).__name__}: {err}"}
                with self._lock:
                    self._suspect = None
            outcome.update(trigger=ticket.reason, ts=round(time.time(), 3))
            with self._lock:
                self._phase, self._last = "idle", outcome
            self.outcomes.append(outcome)
            log.warning("model reload (%s): %s%s", ticket.reason, outcome["outcome"],
                        f": {outcome['reason']}" if outcome.get("reason") else "")
            ticket.finish(outcome)

    def _target(self) -> Path | None:
        if self.store is not None:
            return self.store.current_path()
        return self._model_path

    def _current_changed(self) -> bool:
        target = self._target()
        if target is None:
            return False
        target = self._resolve(target)
        return target != self._active and target != self._refused

    def _confirm_at_start(self) -> None:
        """A model installed while the service was down is still pending: give it its probation now."""
        if self.store is None:
            return
        pending = (self.store.read_state().get("pending") or {}).get("id")
        if pending is None or self._active.name != pending:
            return
        with self._lock:
            self._suspect = self.pipeline.segmenter
        problem = self._probation_phase(identity_of(self.pipeline.segmenter), baseline=[])
        if problem in (None, "inconclusive"):
            with self._lock:
                self._suspect = None
            if problem is None:
                self.store.mark_good(pending)
                self._last = {"outcome": "confirmed", "id": pending}
            return
        self._rollback_store(pending, problem)
        self._last = {"outcome": "rolled_back", "id": pending, "reason": problem}
        self.outcomes.append(self._last)
        self._requests.put(ReloadTicket("rollback after a failed probation at start", rollback=True))

    def _rollback_store(self, model_id: str, reason: str) -> str | None:
        if self.store is None:
            return None
        try:
            _, now = self.store.rollback(reason, mark_bad=True, expect_current=model_id)
            return now
        except EdgeSegError as err:
            log.error("rollback of %s in the store failed: %s", model_id, err)
            return None

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase
            if phase == "shadow":
                self._shadow_in.clear()

    def _reload(self, ticket: ReloadTicket) -> dict:
        target = self._target()
        if target is None or not target.exists():
            return {"outcome": "refused", "reason": "there is no current model in the store"}
        target = self._resolve(target)
        model_id = target.name
        if target == self._active and not ticket.force:
            return {"outcome": "unchanged", "id": model_id}
        self._set_phase("loading")
        t0 = time.perf_counter()
        try:
            if self.store is not None:
                self.store.verify_entry(model_id)
            new = self.create(target)
        except EdgeSegError as err:
            return self._refuse(target, f"the new model does not load: {err}", ticket.rollback)
        load_ms = (time.perf_counter() - t0) * 1e3
        report: dict = {"id": model_id, "load_ms": round(load_ms, 1)}
        if ticket.rollback:  # back to the model that ran before: no shadow, no probation
            bad = self.pipeline.segmenter
            report["swap_ms"] = round(self._swap(new) or 0.0, 2)
            self._active = target
            with self._lock:
                self._suspect = None
            self._close_after_drain(bad)
            return {**report, "outcome": "swapped", "note": "rolled back to the previous model"}
        if self.policy.shadow_frames > 0:
            self._set_phase("shadow")
            shadow, problem = self._shadow_phase(new)
            report["shadow"] = shadow
            if problem is not None:
                new.close()
                return {**self._refuse(target, f"shadow phase: {problem}"), **report}
        old = self.pipeline.segmenter
        old_path = self._active
        baseline = self._baseline_snapshot()
        with self._lock:
            self._suspect = new
        swap_ms = self._swap(new)
        if swap_ms is None:
            new.close()
            return {**report, "outcome": "failed", "reason": "the loop stopped before the swap"}
        report["swap_ms"] = round(swap_ms, 2)
        self._active = target
        problem = self._probation_phase(identity_of(new), baseline)
        if problem not in (None, "inconclusive"):
            back_ms = self._swap(old)
            with self._lock:
                self._suspect = None
            self._active = old_path
            self._rollback_store(model_id, problem)
            self._close_after_drain(new)
            return {**report, "outcome": "rolled_back", "reason": f"probation: {problem}",
                    "rollback_ms": round(back_ms or 0.0, 2)}
        with self._lock:
            self._suspect = None
        if problem is None and self.store is not None:
            self.store.mark_good(model_id)
        self._close_after_drain(old)
        report["probation"] = "passed" if problem is None else "inconclusive (no frames): confirm pending"
        return {**report, "outcome": "swapped"}

    def _refuse(self, target: Path, reason: str, keep_store: bool = False) -> dict:
        """The new model will not run: roll ``current`` back in the store (unless ``keep_store``)."""
        model_id, now = target.name, None
        self._refused = target
        if not keep_store and self.store is not None and self.store.current_id() == model_id:
            now = self._rollback_store(model_id, reason)
        return {"outcome": "rolled_back" if now else "refused", "id": model_id, "reason": reason,
                "current": now}

    def _swap(self, segmenter) -> float | None:
        t0 = time.perf_counter()
        applied = self.pipeline.swap_segmenter(segmenter)
        while not applied.wait(0.5):
            if self._closed.is_set():
                return None
        for listener in self.on_swap:
            try:
                listener(segmenter)
            except Exception as err:  # noqa: BLE001 - a listener must not undo the swap
                log.error("swap listener failed: %s", err)
        return (time.perf_counter() - t0) * 1e3

    def _close_after_drain(self, segmenter) -> None:
        """Close a retired model; results it produced are decoded by then (the sink is FIFO and has seen newer)."""
        try:
            segmenter.close()
        except Exception as err:  # noqa: BLE001
            log.warning("closing the retired model failed: %s", err)

    def _baseline_snapshot(self) -> list[FrameCheck]:
        with self._lock:
            return list(self._baseline)

    # --- shadow --------------------------------------------------------------------------
    def _shadow_phase(self, new) -> tuple[dict, str | None]:
        p = self.policy
        agree, new_ms, old_ms, conf_new, conf_old = [], [], [], [], []
        deadline = time.monotonic() + p.shadow_timeout_s
        same_classes = tuple(new.manifest.classes)
        while len(new_ms) < p.shadow_frames and time.monotonic() < deadline and not self._closed.is_set():
            with self._lock:
                if not self._shadow_in:
                    self._lock.wait(0.2)
                item = self._shadow_in.pop() if self._shadow_in else None
            if item is None:
                continue
            image, old_seg, check = item
            try:
                seg = new.segment(image)
            except Exception as err:  # noqa: BLE001 - any failure of the new model refuses it
                return {"frames": len(new_ms)}, f"the new model failed on a live frame: {type(err).__name__}: {err}"
            if not np.isfinite(seg.confidence_map).all():
                return {"frames": len(new_ms) + 1}, "the new model's output is not finite (NaN/Inf)"
            if int(seg.label_map.max()) >= len(seg.classes):
                return {"frames": len(new_ms) + 1}, "the new model gives class ids beyond its classes"
            new_ms.append(seg.timings.get("infer", 0.0))
            old_ms.append(check.infer_ms)
            conf_new.append(seg.mean_confidence)
            conf_old.append(check.confidence)
            if tuple(old_seg.classes) == same_classes:
                agree.append(agreement(seg.label_map, old_seg.label_map))
        report = {"frames": len(new_ms)}
        if not new_ms:
            report["note"] = f"no live frames in {p.shadow_timeout_s:g} s: swapped without a shadow phase"
            return report, None
        report.update(agreement_miou=round(float(np.mean(agree)), 4) if agree else None,
                      infer_ms=round(float(np.median(new_ms)), 3), current_infer_ms=round(float(np.median(old_ms)), 3),
                      mean_confidence=round(float(np.mean(conf_new)), 4),
                      current_mean_confidence=round(float(np.mean(conf_old)), 4))
        if agree and report["agreement_miou"] < p.min_agreement:
            return report, (f"agreement with the current model is mIoU {report['agreement_miou']:.3f}, "
                            f"below ota.min_agreement {p.min_agreement:g}")
        if report["infer_ms"] > p.max_latency_factor * report["current_infer_ms"] + p.latency_slack_ms:
            return report, (f"{report['infer_ms']:.1f} ms per frame vs {report['current_infer_ms']:.1f} ms "
                            f"(limit {p.max_latency_factor:g}x)")
        return report, None

    # --- probation -----------------------------------------------------------------------
    def _probation_phase(self, identity, baseline: list[FrameCheck]) -> str | None:
        """None: passed; "inconclusive": no frames in time; else the reason it failed."""
        p = self.policy
        with self._lock:
            self._phase, self._probation, self._errors, self._probation_model = "probation", [], [], identity
        start = time.monotonic()
        try:
            while not self._closed.is_set():
                with self._lock:
                    self._lock.wait(0.1)
                    frames, errors = list(self._probation), list(self._errors)
                if errors:
                    return f"the model raised {errors[0]}"
                bad = next((f for f in frames if not f.finite), None)
                if bad is not None:
                    return f"output is not finite (NaN/Inf) on frame {bad.seq}"
                bad = next((f for f in frames if not f.labels_ok), None)
                if bad is not None:
                    return f"class ids beyond the model's classes on frame {bad.seq}"
                elapsed = time.monotonic() - start
                if len(frames) >= p.probation_frames or (elapsed >= p.probation_s and len(frames) >= 3):
                    return judge(frames, baseline, p)
                if elapsed >= p.probation_s and not frames:
                    return "inconclusive"
            return "inconclusive"
        finally:
            with self._lock:
                self._phase = "idle"


__all__ = ["HotReloader", "ReloadPolicy", "ReloadTicket", "agreement", "identity_of"]
