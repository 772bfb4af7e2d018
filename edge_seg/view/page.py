"""The preview's browser page: the MJPEG overlay and a stats table polled once a second.

With zones configured, a zone list (zone, class, occupied/clear, instance count or area share, the
track ids inside); with tracking on, the current frame's track ids. Both come from ``/stats.json``
(``pipeline.zones``, ``pipeline.tracks``) on the same poll.

With a bearer token, open it as ``/?token=...``: the script passes the token on to the stream
(``?token=``, which an ``<img>`` can carry) and to ``/stats.json`` (an ``Authorization`` header).

Several cameras: ``grid_page`` shows one stream per camera, each with its source state and FPS.
"""

import json

__all__ = ["PAGE", "grid_page"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge_seg preview</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#111;color:#ddd;display:flex;flex-wrap:wrap}
 main{flex:1 1 520px;padding:12px} aside{flex:0 0 300px;padding:12px;background:#1b1b1b}
 img{max-width:100%;background:#000;display:block} h1{font-size:16px;margin:0 0 8px}
 table{border-collapse:collapse;width:100%} td{padding:2px 4px;border-bottom:1px solid #333}
 td:last-child{text-align:right;font-variant-numeric:tabular-nums} .bad{color:#f66} .good{color:#6c6}
 #err{color:#f66;min-height:1.4em} #zones td:last-child{text-align:left}
 #zones th{text-align:left;font-weight:normal;color:#999}
 .tid{display:inline-block;margin:0 4px 4px 0;padding:0 4px;border:1px solid #555;border-radius:3px}
</style></head><body>
<main><h1>edge_seg live preview</h1><img id="overlay" alt="live overlay"></main>
<aside><h1>Stats</h1><div id="err"></div><table>
 <tr><td>FPS</td><td id="fps">&ndash;</td></tr>
 <tr><td>Source</td><td id="source">&ndash;</td></tr>
 <tr><td>Model</td><td id="model">&ndash;</td></tr>
 <tr><td>Frames processed</td><td id="processed">&ndash;</td></tr>
 <tr><td>Frames dropped</td><td id="dropped">&ndash;</td></tr>
 <tr><td>Drift (JS)</td><td id="drift">&ndash;</td></tr>
 <tr><td>Frame age (s)</td><td id="age">&ndash;</td></tr>
</table><h1 style="margin-top:12px">Latency p50 (ms)</h1><table id="stages"></table>
<h1 style="margin-top:12px">Zones</h1><table id="zones"></table>
<h1 style="margin-top:12px">Tracks</h1><div id="tracks">&ndash;</div></aside>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");  // set when the server asks for one
$("overlay").src = "/stream.mjpg" + (token ? "?token=" + encodeURIComponent(token) : "");
const auth = token ? {Authorization: "Bearer " + token} : {};
const num = (v, d) => (typeof v === "number" && isFinite(v)) ? v.toFixed(d) : "\\u2013";
function pick(s, p, a, b) { return s[a] !== undefined && s[a] !== null ? s[a] : p[b]; }
async function poll() {
  try {
    const r = await fetch("/stats.json", {cache: "no-store", headers: auth});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json(); const p = s.pipeline || {};
    $("fps").textContent = num(pick(s, p, "fps", "fps"), 1);
    const up = pick(s, p, "source_up", "source_up");
    const src = $("source");
    src.textContent = up === null || up === undefined ? "unknown" : (up ? "up" : "down");
    src.className = up ? "good" : (up === 0 || up === false ? "bad" : "");
    const m = s.model || p.model;
    $("model").textContent = m ? m.name + " " + m.version : "\\u2013";
    $("processed").textContent = pick(s, p, "frames_processed", "completed") ?? "\\u2013";
    $("dropped").textContent = pick(s, p, "frames_dropped", "dropped") ?? "\\u2013";
    $("drift").textContent = num(s.drift_js, 3);
    $("age").textContent = s.frame ? num(s.frame.age_s, 1) : "no frame yet";
    const st = s.stages_p50_ms || p.p50_ms || {};
    const t = $("stages"); t.replaceChildren();
    for (const [k, v] of Object.entries(st)) {
      const row = t.insertRow(); row.insertCell().textContent = k; row.insertCell().textContent = num(v, 1);
    }
    zones(p.zones || []); tracks(p.tracks);
    $("err").textContent = "";
  } catch (e) { $("err").textContent = "stats unavailable: " + e; }
}
function zones(list) {  // one row per zone and class: zone, class, state, count or area, track ids
  const t = $("zones"); t.replaceChildren();
  if (!list.length) { t.insertRow().insertCell().textContent = "no zones configured"; return; }
  const head = t.insertRow();
  for (const h of ["zone", "class", "state", "n / area", "tracks"]) {
    head.appendChild(document.createElement("th")).textContent = h;
  }
  for (const z of list) {
    const classes = Object.entries(z.classes || {});
    if (!classes.length) classes.push(["\u2013", null]);
    for (const [cls, st] of classes) {
      const row = t.insertRow(); row.dataset.zone = z.name;
      row.insertCell().textContent = z.name; row.insertCell().textContent = cls;
      const state = row.insertCell();
      state.textContent = st ? (st.occupied ? "occupied" : "clear") : "no data";
      state.className = st && st.occupied ? "bad" : "good";
      row.insertCell().textContent = !st ? "\u2013" : (st.area !== null && st.area !== undefined
        ? (100 * st.area).toFixed(1) + " %" : String(st.count));
      row.insertCell().textContent = st && st.track_ids && st.track_ids.length
        ? st.track_ids.map((i) => "#" + i).join(" ") : "\u2013";
    }
  }
}
function tracks(list) {  // the track ids of the latest frame (absent without tracking)
  const d = $("tracks"); d.replaceChildren();
  if (!list || !list.length) { d.textContent = list ? "none in view" : "\u2013"; return; }
  for (const tr of list) {
    const s = d.appendChild(document.createElement("span"));
    s.className = "tid"; s.dataset.track = tr.id; s.textContent = "#" + tr.id + " " + tr.class;
  }
}
poll(); setInterval(poll, 1000);
</script></body></html>
"""

_GRID = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge_seg preview: cameras</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#111;color:#ddd}
 h1{font-size:16px;margin:12px} #grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px;
 padding:0 12px 12px} figure{margin:0;background:#1b1b1b;padding:8px} img{width:100%;background:#000;display:block}
 figcaption{display:flex;justify-content:space-between} .bad{color:#f66} .good{color:#6c6}
 #err{color:#f66;margin:0 12px}
</style></head><body><h1>edge_seg live preview: <span id="count"></span> cameras</h1><div id="err"></div>
<div id="grid"></div>
<script>
"use strict";
const cameras = __CAMERAS__;
const token = new URLSearchParams(location.search).get("token");
const auth = token ? {Authorization: "Bearer " + token} : {};
const q = (name) => "?camera=" + encodeURIComponent(name) + (token ? "&token=" + encodeURIComponent(token) : "");
document.getElementById("count").textContent = cameras.length;
for (const name of cameras) {  // one stream per camera; its caption: name, source state, FPS
  const f = document.getElementById("grid").appendChild(document.createElement("figure"));
  f.dataset.camera = name;
  const img = f.appendChild(document.createElement("img")); img.alt = name; img.src = "/stream.mjpg" + q(name);
  const c = f.appendChild(document.createElement("figcaption"));
  c.appendChild(document.createElement("b")).textContent = name;
  c.appendChild(document.createElement("span")).className = "state";
}
async function poll() {
  try {
    const r = await fetch("/stats.json", {cache: "no-store", headers: auth});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json(); const views = s.views || {};
    for (const f of document.querySelectorAll("figure")) {
      const v = views[f.dataset.camera] || {}; const p = v.pipeline || {}; const st = f.querySelector(".state");
      st.textContent = (p.source_state || "no frame yet") + " \u00b7 " + (p.fps ?? 0).toFixed(1) + " FPS";
      st.className = "state " + (p.source_state === "live" ? "good" : "bad");
    }
    document.getElementById("err").textContent = "";
  } catch (e) { document.getElementById("err").textContent = "stats unavailable: " + e; }
}
poll(); setInterval(poll, 1000);
</script></body></html>
"""


def grid_page(cameras: list[str]) -> str:
    """The page of a device with several cameras: a grid with one stream per camera (names are topic-safe)."""
    return _GRID.replace("__CAMERAS__", json.dumps(list(cameras)))
