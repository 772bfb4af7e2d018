"""``edge-seg doctor``: what this device has, what is wrong, and the fix for each problem.

Checks: Python and package versions, which backends load, cameras and accelerators found, the
MQTT broker reachable, state-dir permissions and free space, trusted OTA keys, model store
integrity (hashes, signatures, leftovers), the configured model loads, the systemd unit.
Each result is ``ok``, ``warn`` or ``fail``; a ``fail`` makes the command exit 1.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from edge_seg.errors import EdgeSegError

REQUIRED = [("numpy", "numpy"), ("opencv", "opencv-python-headless|opencv-python|opencv-contrib-python"),
            ("pydantic", "pydantic"), ("pyyaml", "PyYAML"), ("litert", "ai-edge-litert|tflite-runtime|tensorflow")]
OPTIONAL = [("paho-mqtt", "paho-mqtt", "MQTT publishing"), ("cryptography", "cryptography", "signed OTA bundles"),
            ("prometheus-client", "prometheus-client", "the /metrics endpoint"),
            ("pycocotools", "pycocotools", "RLE cross-checks (optional)")]


@dataclass
class Check:
    name: str
    level: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _version(dists: str) -> str | None:
    for dist in dists.split("|"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def check_python() -> list[Check]:
    ok = sys.version_info >= (3, 10)
    out = [Check("python", "ok" if ok else "fail", sys.version.split()[0],
                 "" if ok else "edge-seg needs Python >= 3.10 (JetPack 6, Pi OS Bookworm have it)")]
    for label, dists in REQUIRED:
        found = _version(dists)
        out.append(Check(f"package {label}", "ok" if found else "fail", found or "not installed",
                         "" if found else "pip install 'edge-seg[device]'"))
    for label, dist, used_for in OPTIONAL:
        found = _version(dist)
        out.append(Check(f"package {label}", "ok" if found else "warn", found or f"not installed ({used_for} off)",
                         "" if found else f"pip install {dist}"))
    return out


def check_backends(config) -> list[Check]:
    from edge_seg import backends

    out = []
    for name in backends.available():
        try:
            out.append(Check(f"backend {name}", "ok", backends.registry.probe(name)))
        except EdgeSegError as err:
            # only the configured backend (or LiteRT, the default) must be there; others are optional
            needed = name == (config.model.backend or "litert")
            out.append(Check(f"backend {name}", "fail" if needed else "warn", str(err),
                             "install the runtime the message names" if needed else "only needed to use it"))
    wanted = config.model.backend
    if wanted and wanted not in backends.available():
        out.append(Check(f"backend {wanted}", "fail", f"configured (model.backend) but this version ships "
                         f"{', '.join(backends.available())}",
                         "set model.backend to one of those, or install an edge-seg with that backend"))
    return out


def check_devices(config) -> list[Check]:
    out = []
    cams = sorted(glob.glob("/dev/video*"))
    uris = [camera.uri for camera in config.cameras()]  # the first camera that needs a device node, if any
    uri = next((u for u in uris if u.startswith(("v4l2://", "csi://", "picam://"))), uris[0])
    needs_camera = uri.startswith(("v4l2://", "csi://", "picam://"))
    if cams:
        usable = [c for c in cams if os.access(c, os.R_OK | os.W_OK)]
        level = "ok" if usable or not needs_camera else "fail"
        out.append(Check("cameras", level, f"{', '.join(cams)} ({len(usable)} usable by this user)",
                         "" if level == "ok" else "add the user to group video: usermod -aG video edge-seg"))
    else:
        out.append(Check("cameras", "fail" if needs_camera else "ok",
                         "no /dev/video* found" + (f" but the source is {uri}" if needs_camera else ""),
                         "connect/enable the camera (Pi: camera_auto_detect=1; Jetson: check the CSI ribbon)"
                         if needs_camera else ""))
    if uri.startswith("v4l2://"):
        node = uri[len("v4l2://"):]
        if not Path(node).exists():
            out.append(Check("source device", "fail", f"{node} does not exist", "ls /dev/video*; fix source.uri"))
    if uri.startswith("picam://") and _version("picamera2") is None:
        out.append(Check("picamera2", "fail", "source is picam:// but picamera2 is not importable",
                         "apt install python3-picamera2 and create the venv with --system-site-packages"))
    accel = [p for p in ("/dev/apex_0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl", "/dev/nvidia0")
             if Path(p).exists()]
    backend = config.model.backend
    missing = (backend == "edgetpu" and "/dev/apex_0" not in accel and not _coral_usb())
    out.append(Check("accelerators", "fail" if missing else "ok", ", ".join(accel) or "none (CPU only)",
                     "install the gasket/apex driver (Coral PCIe) or plug in the Coral USB" if missing else ""))
    return out


def _coral_usb() -> bool:
    for vendor in glob.glob("/sys/bus/usb/devices/*/idVendor"):
        try:
            if Path(vendor).read_text().strip() in ("1a6e", "18d1"):
                return True
        except OSError:
            continue
    return False


def check_broker(config, timeout: float) -> list[Check]:
    mqtt = getattr(config, "mqtt", None)
    url = getattr(mqtt, "url", None) if mqtt is not None else None
    if not url:
        return [Check("mqtt broker", "ok", "not configured (publishing off)")]
    parts = urlsplit(str(url))
    port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl", "tls") else 1883)
    t0 = time.perf_counter()
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            ms = (time.perf_counter() - t0) * 1e3
        return [Check("mqtt broker", "ok", f"{parts.hostname}:{port} reachable ({ms:.0f} ms)")]
    except OSError as err:
        return [Check("mqtt broker", "fail", f"{parts.hostname}:{port} not reachable ({err})",
                      "check mqtt.url, the network and firewall; results queue in the outbox meanwhile")]


def check_state_dir(config) -> list[Check]:
    state = Path(config.device.state_dir)
    if not state.exists():
        return [Check("state dir", "warn", f"{state} does not exist",
                      "edge-seg service install creates it (systemd StateDirectory= also does at start)")]
    out = []
    writable = os.access(state, os.W_OK | os.X_OK)
    try:
        import pwd

        owner = pwd.getpwuid(state.stat().st_uid).pw_name
    except (KeyError, ImportError):
        owner = str(state.stat().st_uid)
    out.append(Check("state dir", "ok" if writable else "fail", f"{state} (owner {owner}, "
                     f"{'writable' if writable else 'not writable'} by this user)",
                     "" if writable else f"run as the service user (sudo -u {owner} edge-seg …) or chown it"))
    free = shutil.disk_usage(state).free
    out.append(Check("free space", "ok" if free > (config.ota.max_bundle_mb * 3) * (1 << 20) else "warn",
                     f"{free / (1 << 30):.1f} GiB free in {state}",
                     "" if free > config.ota.max_bundle_mb * 3 * (1 << 20) else "edge-seg model gc; free disk space"))
    return out


def check_store(config) -> list[Check]:
    from edge_seg.ota import actions as ota

    out = []
    try:
        keys = ota.trusted_keys(config)
    except EdgeSegError as err:
        keys = {}
        out.append(Check("ota keys", "fail", str(err), "replace the broken key file"))
    else:
        paths = ", ".join(map(str, config.ota.trusted_keys))
        out.append(Check("ota keys", "ok" if keys else "warn", f"{len(keys)} trusted key(s) in {paths}",
                         "" if keys else "copy the fleet's public key (edge-seg model keygen) into "
                                         "/etc/edge-seg/keys/, else every bundle is refused"))
    store = ota.store_for(config)
    if not store.root.is_dir():
        out.append(Check("model store", "warn", f"{store.root} does not exist",
                         "edge-seg service install seeds it; or edge-seg model install BUNDLE"))
        return out
    cur, prev = store.current_id(), store.previous_id()
    if cur is None:
        level = "fail" if Path(str(config.model.path)).name == "current" else "warn"
        out.append(Check("model store", level, f"{store.current_link} does not point at a model",
                         "edge-seg model install BUNDLE (or edge-seg model rollback)"))
    for label, model_id in (("current model", cur), ("previous model", prev)):
        if model_id is None:
            continue
        try:
            store.verify_entry(model_id, keys or None)
            signed = "signed" if (store.path_of(model_id) / "manifest.sig").is_file() else "unsigned (factory)"
            out.append(Check(label, "ok", f"{model_id}: files match the manifest, {signed}"))
        except EdgeSegError as err:
            fix = "edge-seg model rollback" if label == "current model" else "edge-seg model gc after a new install"
            out.append(Check(label, "fail", str(err), fix))
    leftovers = [p.name for p in store.root.iterdir() if p.name.startswith((".staging-", ".trash-"))]
    if leftovers:
        out.append(Check("interrupted installs", "warn", ", ".join(leftovers),
                         "harmless: the next install or edge-seg model gc removes them"))
    state = store.read_state()
    for model_id, reason in state.get("bad", {}).items():
        out.append(Check("rolled back", "warn", f"{model_id}: {reason}", "fix the model and ship a new version"))
    return out


def check_model(config) -> list[Check]:
    from edge_seg.model import load_model
    from edge_seg.segmenter import DEFAULT_MODEL

    path = config.model.path or DEFAULT_MODEL
    t0 = time.perf_counter()
    try:
        loaded = load_model(path, backend=config.model.backend)
    except EdgeSegError as err:
        return [Check("model loads", "fail", str(err), "fix model.path / model.backend, or edge-seg model rollback")]
    ms = (time.perf_counter() - t0) * 1e3
    m = loaded.manifest
    loaded.close()
    return [Check("model loads", "ok", f"{m.name} {m.version} on {loaded.backend.name} ({ms:.0f} ms)")]


def check_systemd() -> list[Check]:
    unit = Path("/etc/systemd/system/edge-seg.service")
    if unit.is_file():
        return [Check("systemd unit", "ok", str(unit))]
    return [Check("systemd unit", "warn", "edge-seg.service is not installed", "edge-seg service install --board …")]


def run_checks(config, config_path: Path | None = None, broker_timeout: float = 3.0) -> list[Check]:
    """Every check, in order."""
    results = [Check("config", "ok", str(config_path) if config_path else "built-in defaults")]
    for fn in (check_python, lambda: check_backends(config), lambda: check_devices(config),
               lambda: check_broker(config, broker_timeout), lambda: check_state_dir(config),
               lambda: check_store(config), lambda: check_model(config), check_systemd):
        try:
            results.extend(fn())
        except Exception as err:  # noqa: BLE001 - a broken check is reported, the others still run
            results.append(Check(getattr(fn, "__name__", "check"), "fail", f"the check itself failed: {err}"))
    return results


def render(results: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for r in results:
        lines.append(f"[{marks[r.level]}] {r.name:<25} {r.detail}")
        if r.fix:
            lines.append(f"       {'':<25} fix: {r.fix}")
    fails = sum(r.level == "fail" for r in results)
    warns = sum(r.level == "warn" for r in results)
    lines.append(f"{fails} problem(s), {warns} warning(s)")
    return "\n".join(lines)


__all__ = ["Check", "render", "run_checks"]
