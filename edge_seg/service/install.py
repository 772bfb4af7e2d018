"""``edge-seg service install``: the systemd unit, the device config, the trusted keys, a seeded model store.

``render_unit`` is the single source of the unit text; ``firmware_configs/systemd/edge-seg.service``
is its output for ``/usr/local/bin/edge-seg`` (a test keeps them equal).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from edge_seg.ota.bundle import OtaError

log = logging.getLogger(__name__)
UNIT_NAME = "edge-seg.service"
CONFIG_PATH = Path("/etc/edge-seg/config.yaml")
KEYS_DIR = Path("/etc/edge-seg/keys")
STATE_DIR = Path("/var/lib/edge-seg")
BOARDS_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "boards"
# cameras (video4linux, media controller), the Coral TPU (PCIe/M.2 apex, USB), the Jetson GPU nodes (JetPack 5
# /dev/nvhost-*, JetPack 6 /dev/nvgpu/igpu0/*) and dGPU nodes; missing nodes are skipped by systemd
_NVGPU = ["as", "channel", "ctrl", "ctxsw", "dbg", "power", "prof", "prof-ctx", "prof-dev", "sched", "tsg"]
DEVICES = (["char-video4linux rw", "/dev/media0 rw", "/dev/media1 rw", "/dev/apex_0 rw", "char-usb_device rw",
            "/dev/nvmap rw", "/dev/nvhost-ctrl rw"]
           + [f"/dev/nvhost-{n}-gpu rw" for n in ("ctrl", "as", "prof", "dbg", "ctxsw", "sched")]
           + ["/dev/nvhost-gpu rw"]
           + [f"/dev/nvgpu/igpu0/{n} rw" for n in _NVGPU]
           + ["/dev/nvidia0 rw", "/dev/nvidiactl rw", "/dev/nvidia-uvm rw"])


def render_unit(exec_path: str = "/usr/local/bin/edge-seg", user: str = "edge-seg",
                config_path: Path = CONFIG_PATH, state_dir: Path = STATE_DIR) -> str:
    """The systemd unit text."""
    devices = "\n".join(f"DeviceAllow={d}" for d in DEVICES)
    return f"""# edge-seg: the segmentation loop as a supervised, sandboxed service (`edge-seg service install`).
# Reload the model without a restart: systemctl reload edge-seg (SIGHUP); new models also arrive by
# `edge-seg model install|update` and the MQTT update_model command (hot swap, probation, rollback).
[Unit]
Description=edge-seg segmentation runtime
Wants=network-online.target
After=network-online.target
# give up after 5 failed starts in 10 minutes (RestartSec below keeps the starts apart)
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_path} run --config {config_path}
ExecReload=/bin/kill -HUP $MAINPID
# the loop pings every WatchdogSec/2 while all its threads go round (a camera down is reconnected, not a restart);
# a thread hung in a driver, the model or a sink stops the pings and restarts it
WatchdogSec=60
# a first TensorRT engine build can take minutes
TimeoutStartSec=600
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
User={user}
Group={user}
SupplementaryGroups=video
StateDirectory=edge-seg
StateDirectoryMode=0750
ConfigurationDirectory=edge-seg
UMask=0027
Environment=PYTHONUNBUFFERED=1
# sandbox (no MemoryDenyWriteExecute: it breaks cffi/libffi closures)
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state_dir}
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# devices: closed policy, then cameras, the Coral TPU and the GPU nodes (`edge-seg doctor` lists what it finds;
# add others in a drop-in: systemctl edit edge-seg)
DevicePolicy=closed
{devices}

[Install]
WantedBy=multi-user.target
"""


ARGUS_DROPIN = """# Jetson CSI cameras: nvarguscamerasrc talks to nvargus-daemon over /tmp/argus_socket,
# which a private /tmp hides.
[Service]
PrivateTmp=no
"""


def _board_config(board: str | None, config_src: Path | None) -> dict:
    if board and config_src:
        raise OtaError("pass --board or --from-config, not both")
    if config_src is not None:
        path = Path(config_src)
    elif board is not None:
        path = BOARDS_DIR / f"{board}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in BOARDS_DIR.glob("*.yaml"))) or "none found"
            raise OtaError(f"unknown board '{board}' (known: {known}); or pass --from-config FILE")
    else:
        return {}
    from edge_seg.config import load_config

    load_config(path)  # validate before writing anything
    return yaml.safe_load(path.read_text()) or {}


def _exec_path(given: str | None) -> str:
    path = given or shutil.which("edge-seg") or str(Path(sys.argv[0]).resolve())
    if not os.path.isabs(path):
        raise OtaError(f"--exec-path must be absolute, got {path}")
    return path


def _ensure_user(user: str) -> str | None:
    """Create the system user (root only, real root filesystem); a note line."""
    import pwd

    try:
        pwd.getpwnam(user)
        return None
    except KeyError:
        pass
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return f"create the service user first: useradd --system --home-dir {STATE_DIR} --shell /usr/sbin/nologin " \
               f"--groups video {user}"
    subprocess.run(["useradd", "--system", "--home-dir", str(STATE_DIR), "--shell", "/usr/sbin/nologin", user],
                   check=True)
    subprocess.run(["usermod", "-a", "-G", "video", user], check=False)
    return f"created system user {user}"


def install_service(board: str | None = None, config_src: Path | None = None, root: Path = Path("/"),
                    user: str = "edge-seg", exec_path: str | None = None, force: bool = False, seed: bool = True,
                    pubkeys: list[Path] | None = None, enable: bool = False) -> list[str]:
    """Write unit, config and keys under ``root``; seed the model store; lines saying what was done."""
    from edge_seg.config import parse_config

    root = Path(root)
    real_root = root.resolve() == Path("/")
    report: list[str] = []
    data = _board_config(board, config_src)
    data.setdefault("device", {}).setdefault("state_dir", str(STATE_DIR))
    state_dir = Path(data["device"]["state_dir"])
    if not state_dir.is_absolute():
        state_dir = STATE_DIR
        data["device"]["state_dir"] = str(state_dir)
    model = data.setdefault("model", {})
    if not model.get("path"):
        model["path"] = str(state_dir / "models" / "current")
    data.setdefault("ota", {}).setdefault("trusted_keys", [str(KEYS_DIR)])
    config = parse_config(data, "service config")

    def under(path: Path) -> Path:
        return root / Path(path).relative_to("/")

    config_file = under(CONFIG_PATH)
    if config_file.exists() and not force:
        report.append(f"kept {config_file} (exists; --force overwrites it)")
    else:
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text("# edge-seg device config (edge-seg config schema prints every field)\n"
                               + yaml.safe_dump(data, sort_keys=False))
        report.append(f"wrote {config_file}")
    keys_dir = under(KEYS_DIR)
    keys_dir.mkdir(parents=True, exist_ok=True)
    for key in pubkeys or []:
        shutil.copyfile(key, keys_dir / Path(key).name)
        report.append(f"trusted OTA key {keys_dir / Path(key).name}")
    if not any(keys_dir.iterdir()):
        report.append(f"no OTA public key in {keys_dir}: copy one there (edge-seg model keygen makes a pair)")
    unit_dir = under(Path("/etc/systemd/system"))
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / UNIT_NAME).write_text(render_unit(_exec_path(exec_path), user, CONFIG_PATH, state_dir))
    report.append(f"wrote {unit_dir / UNIT_NAME}")
    if any(camera.uri.startswith("csi://") for camera in config.cameras()):
        dropin = unit_dir / f"{UNIT_NAME}.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "jetson-argus.conf").write_text(ARGUS_DROPIN)
        report.append(f"wrote {dropin / 'jetson-argus.conf'} (CSI camera: PrivateTmp=no)")
    if real_root:
        note = _ensure_user(user)
        if note:
            report.append(note)
    if seed:
        from edge_seg.ota.install import seed_factory
        from edge_seg.ota.store import ModelStore
        from edge_seg.segmenter import DEFAULT_MODEL

        store = ModelStore.for_state_dir(under(state_dir))
        seeded = seed_factory(store, DEFAULT_MODEL)
        report.append(f"seeded {store.root} with the bundled model {seeded}" if seeded
                      else f"kept the model store {store.root} (it has a current model)")
        if real_root and os.geteuid() == 0:
            shutil.chown(store.root.parent, user, user)
            store.adopt_owner()  # models/ and everything in it to the service user
    if enable and real_root:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", UNIT_NAME], check=True)
        report.append("enabled and started edge-seg.service")
    elif real_root:
        report.append("next: systemctl daemon-reload && systemctl enable --now edge-seg")
    return report


__all__ = ["ARGUS_DROPIN", "install_service", "render_unit"]
