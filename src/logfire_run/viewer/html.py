"""`--html FILE`: one trace as a self-contained waterfall page.

Everything is inline (CSS, a small script, the trace as JSON): the page makes no network request and
can be mailed or attached to a ticket. The script draws one row per span in tree order, a bar placed
by start time and duration, and shows a span's attributes, events and links when its row is clicked.
"""

from __future__ import annotations

import html
import json
import re

from logfire_run.viewer.inert import visible, visible_data
from logfire_run.viewer.model import (
    StoredLog,
    TreeRow,
    format_duration,
    log_dict,
    logs_by_span,
    span_dict,
    summarize,
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>trace __TRACE_ID__ - logfire-run</title>
<style>
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px; color: #1d2330; }
h1 { font-size: 16px; margin: 0 0 4px; }
.meta { color: #5b6475; margin-bottom: 10px; }
.legend span { display: inline-block; margin-right: 12px; }
.legend i, .svc i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
#waterfall { border-top: 1px solid #d9dde5; }
.row { display: flex; align-items: center; border-bottom: 1px solid #eef0f4; cursor: pointer;
       min-height: 22px; }
.row:hover { background: #f5f7fb; }
.label { width: 46%; min-width: 320px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
         padding: 2px 6px; }
.name { font-weight: 600; }
.svc, .kind, .attrs { margin-left: 8px; color: #5b6475; font-size: 12px; }
.orphan-tag { margin-left: 8px; color: #fff; background: #c62828; border-radius: 3px; padding: 0 4px;
              font-size: 11px; }
.row.error .name { color: #c62828; }
.track { position: relative; flex: 1; height: 14px; margin-right: 8px; }
.bar { position: absolute; top: 0; height: 14px; border-radius: 2px; min-width: 2px; }
.dur { position: absolute; top: -1px; font-size: 11px; color: #5b6475; white-space: nowrap;
       padding-left: 4px; }
.dur.inside { color: #fff; padding: 0 4px 0 0; }
.dur.before { padding: 0 4px 0 0; }
.details { display: none; background: #f8f9fc; padding: 6px 12px 8px; border-bottom: 1px solid #eef0f4;
           font-size: 12px; }
.details.open { display: block; }
.details table { border-collapse: collapse; }
.details td { padding: 1px 10px 1px 0; vertical-align: top; font-family: ui-monospace, monospace; }
.log { font-size: 12px; color: #3b4252; min-height: 18px; }
.log .label { font-family: ui-monospace, monospace; }
.level { font-weight: 600; margin-right: 6px; }
.level-WARNING { color: #b26a00; }
.level-ERROR, .level-CRITICAL { color: #c62828; }
.details pre { margin: 4px 0; white-space: pre-wrap; font-family: ui-monospace, monospace; }
</style>
</head>
<body>
<h1>trace <code>__TRACE_ID__</code></h1>
<div class="meta">__META__</div>
<div class="legend" id="legend"></div>
<div id="waterfall"><noscript>This page draws the waterfall with an inline script: enable JavaScript.
</noscript></div>
<script type="application/json" id="trace-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("trace-data").textContent);
  var spans = data.spans;
  var t0 = data.start_ns, total = Math.max(1, data.end_ns - data.start_ns);
  var colors = {};
  data.services.forEach(function (service, index) {
    colors[service] = "hsl(" + Math.round(index * 137.5 % 360) + ", 62%, 52%)";
  });
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function duration(ms) {
    if (ms < 1) return Math.round(ms * 1000) + " \\u00b5s";
    if (ms < 1000) return ms.toFixed(1) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  }
  var legend = document.getElementById("legend");
  data.services.forEach(function (service) {
    var item = el("span", "service");
    var swatch = el("i");
    swatch.style.background = colors[service];
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(service));
    legend.appendChild(item);
  });
  var waterfall = document.getElementById("waterfall");
  spans.forEach(function (span) {
    var row = el("div", "row" + (span.status === "ERROR" ? " error" : "") + (span.orphan ? " orphan" : ""));
    row.setAttribute("data-span-id", span.span_id);
    var label = el("div", "label");
    label.style.paddingLeft = (6 + span.depth * 16) + "px";
    label.appendChild(el("span", "name", span.name));
    var svc = el("span", "svc");
    var swatch = el("i");
    swatch.style.background = colors[span.service];
    svc.appendChild(swatch);
    svc.appendChild(document.createTextNode(span.service));
    label.appendChild(svc);
    label.appendChild(el("span", "kind", span.kind));
    if (span.key_attributes.length) label.appendChild(el("span", "attrs", span.key_attributes.join("  ")));
    if (span.orphan) {
      var tag = el("span", "orphan-tag", "orphan");
      tag.title = "parent " + span.parent_id + " never arrived";
      label.appendChild(tag);
    }
    row.appendChild(label);
    var track = el("div", "track");
    var left = (span.start_ns - t0) / total * 100;
    var width = (span.end_ns - span.start_ns) / total * 100;
    var bar = el("div", "bar");
    bar.style.left = left + "%";
    bar.style.width = width + "%";
    bar.style.background = colors[span.service];
    track.appendChild(bar);
    var dur = el("span", "dur", duration(span.duration_ms));
    if (left + width > 80 && width > 12) {
      dur.className = "dur inside";           // a long bar reaching the right edge: label inside it
      dur.style.right = (100 - left - width) + "%";
    } else if (left + width > 85) {
      dur.className = "dur before";           // near the right edge: label before the bar
      dur.style.right = (100 - left) + "%";
    } else {
      dur.style.left = (left + width) + "%";
    }
    track.appendChild(dur);
    row.appendChild(track);
    var details = el("div", "details");
    var table = el("table");
    function add(key, value) {
      var tr = el("tr");
      tr.appendChild(el("td", "", key));
      tr.appendChild(el("td", "", typeof value === "string" ? value : JSON.stringify(value)));
      table.appendChild(tr);
    }
    add("span id", span.span_id + (span.parent_id ? "  (parent " + span.parent_id + ")" : ""));
    add("service / pid", span.service + " / " + span.pid);
    add("status", span.status + (span.status_message ? ": " + span.status_message : ""));
    if (span.orphan) add("orphan", "parent " + span.parent_id + " never arrived");
    Object.keys(span.attributes).sort().forEach(function (key) { add(key, span.attributes[key]); });
    span.events.forEach(function (event) {
      add("event", event.name + " " + JSON.stringify(event.attributes));
    });
    span.links.forEach(function (link) { add("link", link.trace_id + "/" + link.span_id); });
    details.appendChild(table);
    row.addEventListener("click", function () { details.classList.toggle("open"); });
    waterfall.appendChild(row);
    waterfall.appendChild(details);
    span.logs.forEach(function (log) { addLog(log, span.depth + 1); });
  });
  function addLog(log, depth) {
    var row = el("div", "row log");
    row.setAttribute("data-log-span-id", log.span_id);
    var label = el("div", "label");
    label.style.paddingLeft = (6 + depth * 16) + "px";
    label.appendChild(el("span", "level level-" + log.level, log.level));
    label.appendChild(el("span", "logger", log.logger + ": "));
    label.appendChild(el("span", "message", log.message));
    row.appendChild(label);
    var track = el("div", "track");
    var mark = el("div", "bar");
    mark.style.left = ((log.time_ns - t0) / total * 100) + "%";
    mark.style.width = "2px";
    mark.style.background = "#5b6475";
    track.appendChild(mark);
    row.appendChild(track);
    var details = el("div", "details");
    details.appendChild(el("pre", "", log.message + (log.exception ? "\\n" + log.exception : "")));
    row.addEventListener("click", function () { details.classList.toggle("open"); });
    waterfall.appendChild(row);
    waterfall.appendChild(details);
  }
  if (data.unattached_logs.length) {
    waterfall.appendChild(el("div", "row log", "log records whose span never arrived"));
    data.unattached_logs.forEach(function (log) { addLog(log, 1); });
  }
  document.body.setAttribute("data-rendered", String(spans.length));
})();
</script>
</body>
</html>
"""


def render_html(trace_id: str, rows: list[TreeRow], logs: list[StoredLog] | None = None) -> str:
    """The page for one trace (rows in tree order), each span's log records under it."""
    summary = summarize(trace_id, [row.span for row in rows])
    by_span, unattached = logs_by_span(logs or [], rows)
    data = {
        "trace_id": trace_id,
        "start_ns": summary.start_ns,
        "end_ns": summary.end_ns,
        "services": summary.services,
        "spans": [span_dict(row, by_span.get(row.span.span_id)) for row in rows],
        "unattached_logs": [log_dict(log) for log in unattached],
    }
    # Shown as the terminal views show it: nothing that hides or reorders text (`inert`); a log
    # record's message and traceback keep their lines.
    data = visible_data(data, lines=frozenset({"message", "exception"}))
    # The JSON sits in a <script> element, where the HTML parser reads "</script", and "<!--" followed by
    # "<script", as markup. Written as \\u003c (and > and & alike) they are inert there and mean the same
    # to JSON.parse; non-ASCII, U+2028 and U+2029 included, is written as \\u escapes (ensure_ascii).
    payload = (
        json.dumps(data, default=str, ensure_ascii=True)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    meta = (
        f"{summary.span_count} spans, {format_duration(summary.duration_ns)}, "
        f"services: {', '.join(summary.services)}"
    )
    if summary.orphan_count:
        meta += f", {summary.orphan_count} orphan span(s) whose parent never arrived"
    values = {"TRACE_ID": html.escape(visible(trace_id)), "META": html.escape(visible(meta)), "DATA": payload}
    # One pass, so that a span name or service containing a placeholder is never substituted.
    return re.sub(r"__(TRACE_ID|META|DATA)__", lambda match: values[match.group(1)], _PAGE)
