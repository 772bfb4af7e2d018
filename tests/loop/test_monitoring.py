"""firmware_configs/monitoring: the alert rules pass promtool, the dashboard only names real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_seg.loop.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[2] / "firmware_configs" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")


def exported_sample_names() -> set[str]:
    """Every sample name the runtime exports once each kind of metric has a value."""
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics(classes=["background", "car"], baseline={"background": 0.9, "car": 0.1})
    m.observe_stages({"infer": 5.0})
    m.observe_segmentation({"background": 0.5, "car": 0.5}, 0.1)
    m.set_model("demo", "1.0.0", "0" * 64)
    return {s.name for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target (rows included) and every query variable."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and query:
            out.append((f"variable {var['name']}", query))
    return out


@needs_promtool
def test_alert_rules_pass_promtool_check():
    result = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_fire_on_their_unit_test_series():
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_reference_only_exported_metrics():
    import yaml

    rules = [r for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    names = exported_sample_names()
    used = {n for r in rules for n in re.findall(r"\bedge_seg_[a-z0-9_]+", r["expr"])}
    assert used <= names, f"unknown metrics in alerts.yml: {sorted(used - names)}"
    alerts = [r for r in rules if "alert" in r]
    assert len(alerts) >= 5
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_loads_and_names_only_exported_metrics():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["On call", "Debug"]
    names = exported_sample_names()
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    for where, expr in queries:
        used = set(re.findall(r"\bedge_seg_[a-z0-9_]+", expr))
        assert used, f"{where}: query names no edge_seg metric: {expr}"
        assert used <= names, f"{where}: unknown metrics {sorted(used - names)} in {expr}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_covers_on_call_and_debug_signals():
    text = (MONITORING / "grafana-dashboard.json").read_text()
    for needle in ("edge_seg_fps", "edge_seg_source_up", "edge_seg_frames_dropped_total",
                   "edge_seg_drift_js_distance", "edge_seg_outbox_messages", "histogram_quantile(0.5",
                   "histogram_quantile(0.95", "edge_seg_class_area_fraction", "edge_seg_mean_uncertainty"):
        assert needle in text, needle


def test_label_values_in_rules_and_dashboard_are_ones_the_runtime_exports():
    from edge_seg.loop.metrics import DEFAULT_STAGES, DROP_POINTS

    text = "\n".join((MONITORING / name).read_text() for name in ("alerts.yml", "alerts_test.yml",
                                                                   "grafana-dashboard.json"))
    text = text.replace('\\"', '"')
    wheres = set(re.findall(r'\bwhere="([^"]+)"', text))
    assert wheres and wheres <= set(DROP_POINTS), wheres
    stages = set(re.findall(r'\bstage="([^"]+)"', text))
    assert "total" in stages and stages <= set(DEFAULT_STAGES), stages
    # the drops alert must add capture and sink drops up (a labelled counter cannot be divided as is)
    rules = (MONITORING / "alerts.yml").read_text()
    assert "sum without (where) (rate(edge_seg_frames_dropped_total" in rules
