"""Home Assistant MQTT discovery: sensors for a device's status, FPS and per-class area.

Off by default (``mqtt.ha_discovery``). When on, the publisher sends these retained configs on
every connect, to ``{ha_prefix}/sensor/{device}_{x}/config``:

* ``{device}_status``: ``online``/``offline`` from the retained status topic;
* ``{device}_fps``: the FPS the status reports;
* ``{device}_area_{class}``: the percentage of the frame each class covers, from the mask topic.

With zones (``zone_discovery_configs``), from each zone's retained ``zone/{zone}/state`` topic:

* ``binary_sensor/{device}_zone_{zone}``: ``occupancy``, on while any watched class occupies it;
* ``sensor/{device}_zone_{zone}_{class}``: per watched class, the count of instances in the zone
  (instance models) or the percentage of the zone the class covers (semantic and binary models).

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


def zone_discovery_configs(device: str, base_topic: str, zones: Sequence, counting: bool, model: str | None = None,
                           ha_prefix: str = "homeassistant", camera: str | None = None) -> list[tuple[str, bytes]]:
    """(topic, retained JSON payload) per zone (a ``binary_sensor``) and per zone and class (a ``sensor``).

    ``zones`` are ``ZoneConfig`` values; ``counting``: instance counts (True) or area percentages (False);
    ``camera``: the zones of that camera of a device with several (its ``{camera}/zone/...`` topics, its name
    in the entities' ids and names).
    """
    dev = object_id(device)
    info = {"identifiers": [f"edge_seg_{dev}"], "name": f"edge-seg {device}", "manufacturer": "edge_seg"}
    if model:
        info["model"] = model
    common = {"availability_topic": f"{base_topic}/status", "availability_template": _ONLINE, "device": info}
    out = []
    data_base = base_topic if camera is None else f"{base_topic}/{camera}"
    cam_id, cam_name = ("", "") if camera is None else (f"_{object_id(camera)}", f"{camera} ")
    for zone in zones:
        state = f"{data_base}/zone/{zone.name}/state"
        unique = f"{dev}{cam_id}_zone_{object_id(zone.name)}"
        body = {"unique_id": f"edge_seg_{unique}", "object_id": unique, "name": f"{cam_name}{zone.name} occupied",
                "state_topic": state, "value_template": "{{ 'ON' if value_json.occupied else 'OFF' }}",
                "payload_on": "ON", "payload_off": "OFF", "device_class": "occupancy", **common}
        out.append((f"{ha_prefix}/binary_sensor/{unique}/config", json.dumps(body, separators=(",", ":")).encode()))
        for cls in zone.classes:
            key = f"{unique}_{object_id(cls)}"
            item = "value_json.classes[" + json.dumps(cls) + "]"
            if counting:
                extra = {"name": f"{cam_name}{zone.name} {cls} count",
                         "value_template": "{{ " + item + ".count | int(0) }}", "icon": "mdi:counter"}
            else:
                extra = {"name": f"{cam_name}{zone.name} {cls} area", "unit_of_measurement": "%",
                         "value_template": "{{ (" + item + ".area | float(0) * 100) | round(1) }}"}
            body = {"unique_id": f"edge_seg_{key}", "object_id": key, "state_topic": state,
                    "state_class": "measurement", **extra, **common}
            out.append((f"{ha_prefix}/sensor/{key}/config", json.dumps(body, separators=(",", ":")).encode()))
    return out


__all__ = ["discovery_configs", "object_id", "zone_discovery_configs"]
