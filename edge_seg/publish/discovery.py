"""Home Assistant MQTT discovery: sensors for a device's status, FPS and per-class area.

Off by default (``mqtt.ha_discovery``). When on, the publisher sends these retained configs on
every connect, to ``{ha_prefix}/sensor/{device}_{x}/config``:

* ``{device}_status``: ``online``/``offline`` from the retained status topic;
* ``{device}_fps``: the FPS the status reports;
* ``{device}_area_{class}``: the percentage of the frame each class covers, from the mask topic.

All are marked available while the status says ``online``, so the LWT makes them unavailable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_ONLINE = "{{ 'online' if value_json.online else 'offline' }}"


def object_id(text: str) -> str:
    """A Home Assistant object id: letters, digits, ``_`` and ``-`` only."""
    return _UNSAFE.sub("_", text).strip("_") or "x"


def discovery_configs(device: str, base_topic: str, classes: Sequence[str] = (), model: str | None = None,
                      ha_prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """(topic, retained JSON payload) for each sensor; ``base_topic`` is ``{prefix}/{device}``."""
    dev = object_id(device)
    status, mask = f"{base_topic}/status", f"{base_topic}/mask"
    info = {"identifiers": [f"edge_seg_{dev}"], "name": f"edge-seg {device}", "manufacturer": "edge_seg"}
    if model:
        info["model"] = model
    common = {"availability_topic": status, "availability_template": _ONLINE, "device": info}
    sensors = [
        ("status", {"name": "status", "state_topic": status, "value_template": _ONLINE, "icon": "mdi:lan-connect",
                    "device": info}),
        ("fps", {"name": "fps", "state_topic": status, "value_template": "{{ value_json.fps }}",
                 "unit_of_measurement": "fps", "state_class": "measurement", **common}),
    ]
    seen: set[str] = set()
    for name in classes:
        key = object_id(name)
        while key in seen:
            key += "_"
        seen.add(key)
        template = "{{ (value_json.area_fractions[" + json.dumps(name) + "] | float(0) * 100) | round(2) }}"
        sensors.append((f"area_{key}", {"name": f"{name} area", "state_topic": mask, "value_template": template,
                                        "unit_of_measurement": "%", "state_class": "measurement", **common}))
    out = []
    for suffix, body in sensors:
        unique = f"{dev}_{suffix}"
        payload = {"unique_id": f"edge_seg_{unique}", "object_id": unique, **body}
        out.append((f"{ha_prefix}/sensor/{unique}/config", json.dumps(payload, separators=(",", ":")).encode()))
    return out


__all__ = ["discovery_configs", "object_id"]
