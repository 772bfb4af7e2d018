"""Board facts for the bench: peak memory, thermal zones, throttling ("n/a" where not exposed)."""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

THERMAL_ROOT = Path("/sys/class/thermal")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB of 10^6 bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def current_memory_mb() -> tuple[float, float]:
    """(resident, of which file-backed) now, in MB of 10^6 bytes (Linux /proc; zeros where not available).

    File-backed pages are the mapped libraries and model: clean, shared and reclaimable, and how many
    are resident depends on the page cache (right after an install every page of the freshly written
    libraries is cached, and a fault maps its cached neighbours too). The rest is the process's own.
    """
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        page = resource.getpagesize()
        return int(fields[1]) * page / 1e6, int(fields[2]) * page / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def thermal_zones(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """{zone type: °C} for every readable thermal zone (Pi: cpu-thermal; Jetson: CPU-therm, GPU-therm, …)."""
    zones: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        kind, temp = _read(zone / "type"), _read(zone / "temp")
        if kind and temp and temp.lstrip("-").isdigit():
            zones[kind] = int(temp) / 1000.0
    return zones


def pi_throttled() -> str | None:
    """``vcgencmd get_throttled`` on a Raspberry Pi (0x0 = never throttled), else None."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().partition("=")[2] or None


JETSON_GPU_FREQ = ("/sys/devices/gpu.0/devfreq/17000000.gv11b/cur_freq",  # Xavier
                   "/sys/devices/platform/17000000.ga10b/devfreq/17000000.ga10b/cur_freq")  # Orin


def jetson_clocks() -> dict[str, str]:
    """The current GPU frequency (Hz) where a Jetson exposes it."""
    for path in JETSON_GPU_FREQ:
        value = _read(Path(path))
        if value:
            return {"gpu_cur_freq_hz": value}
    return {}


def thermals() -> dict:
    """Temperatures and throttling state; each missing fact is "n/a"."""
    zones = thermal_zones()
    return {"zones_c": zones or "n/a", "pi_throttled": pi_throttled() or "n/a",
            "jetson": jetson_clocks() or "n/a"}
