// logfire-run-view --serve: the trace list, one trace, the log records, the endpoints. Reads /api/* as JSON and
// puts every string from the store in the page as text (textContent), never as markup; control,
// bidirectional and invisible characters are shown as escapes (\x1b, \u202e).
(function () {
  "use strict";

  var main = document.getElementById("main");
  var panel = document.getElementById("panel");
  var live = document.getElementById("live");
  var clockOffsetMs = 0;  // the server's clock minus this browser's
  var refresh = function () {};
  var pending = null;

  // Text and numbers

  var INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]|\udb40[\udc00-\udc7f]/g;
  var NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
  function visible(value) {
    var text = typeof value === "string" ? value : (value === null || value === undefined ? "" : String(value));
    return text.replace(INVISIBLE, function (char) {
      if (NAMED[char]) return NAMED[char];
      if (char.length === 2) return "\\u{" + char.codePointAt(0).toString(16) + "}";
      var code = char.charCodeAt(0);
      return code <= 0xff ? "\\x" + ("0" + code.toString(16)).slice(-2) : "\\u" + ("000" + code.toString(16)).slice(-4);
    });
  }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = visible(text);
    return node;
  }
  function link(href, cls, text) {
    var node = el("a", cls, text);
    node.setAttribute("href", href);
    return node;
  }
  function isTraceId(text) { return typeof text === "string" && /^[0-9a-f]{32}$/.test(text); }
  // As the terminal viewer writes durations (model.format_duration).
  function duration(ns) {
    if (ns < 1e6) return Math.round(ns / 1e3) + " \u00b5s";
    if (ns < 1e9) return (ns / 1e6).toFixed(1) + " ms";
    return (ns / 1e9).toFixed(2) + " s";
  }
  function nowNs() { return (Date.now() + clockOffsetMs) * 1e6; }
  function pad(n, width) { return ("000" + n).slice(-(width || 2)); }
  function when(ns) {
    var moment = new Date(ns / 1e6), today = new Date();
    var time = pad(moment.getHours()) + ":" + pad(moment.getMinutes()) + ":" + pad(moment.getSeconds()) + "." +
      pad(moment.getMilliseconds(), 3);
    if (moment.toDateString() === today.toDateString()) return time;
    return moment.getFullYear() + "-" + pad(moment.getMonth() + 1) + "-" + pad(moment.getDate()) + " " + time;
  }
  // Services of the trace on screen get distinct colours in their order; elsewhere, by a hash.
  var PALETTE = ["#2b8a3e", "#7048e8", "#e8590c", "#1971c2", "#c2255c", "#0c8599", "#5c940d", "#9c36b5",
    "#d9480f", "#364fc7"];
  var assigned = {};
  function colour(service) {
    if (Object.prototype.hasOwnProperty.call(assigned, service)) return assigned[service];
    var hash = 0;
    for (var i = 0; i < service.length; i++) hash = (hash * 31 + service.charCodeAt(i)) | 0;
    return PALETTE[Math.abs(hash) % PALETTE.length];
  }
  function chip(service) {
    var node = el("span", "chip svc", service || "(no service)");
    node.style.background = colour(service || "");
    return node;
  }
  function mark(cls, text, title) {
    var node = el("span", cls, text);
    if (title) node.title = visible(title);
    return node;
  }
  function runningText(startNs) { return "running " + duration(Math.max(0, nowNs() - startNs)); }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      return response.json().then(function (body) {
        if (body && body.now_ns) clockOffsetMs = body.now_ns / 1e6 - Date.now();
        if (!response.ok) throw new Error(body && body.error ? body.error : "HTTP " + response.status);
        return body;
      });
    });
  }
  function showError(where, error) {
    var box = where.querySelector(".error-box") || where.appendChild(el("div", "error-box"));
    box.textContent = visible(String(error.message || error));
  }

  // The running timers: every element with data-start-ns shows its span's elapsed time.
  setInterval(function () {
    var nodes = document.querySelectorAll("[data-start-ns]");
    for (var i = 0; i < nodes.length; i++) nodes[i].textContent = runningText(Number(nodes[i].getAttribute("data-start-ns")));
  }, 250);

  // Live updates: the server says when the store changed.
  function connect() {
    if (!window.EventSource) return;
    var source = new EventSource("/api/events");
    source.addEventListener("open", function () { live.textContent = "live"; live.className = "live on"; });
    source.addEventListener("error", function () { live.textContent = "reconnecting"; live.className = "live"; });
    source.addEventListener("change", function () {
      if (pending) return;
      pending = setTimeout(function () { pending = null; refresh(); }, 200);
    });
  }

  // The trace list

  function field(form, label, name, value, placeholder) {
    var wrap = el("label", "", label);
    var input = el("input");
    input.type = "text";
    input.name = name;
    input.value = value || "";
    if (placeholder) input.placeholder = placeholder;
    wrap.appendChild(input);
    form.appendChild(wrap);
    return input;
  }
  function choice(form, label, name, value, options) {
    var wrap = el("label", "", label);
    var select = el("select");
    select.name = name;
    options.forEach(function (option) {
      var item = el("option", "", option[1]);
      item.value = option[0];
      if (option[0] === (value || "")) item.selected = true;
      select.appendChild(item);
    });
    wrap.appendChild(select);
    form.appendChild(wrap);
    return select;
  }

  // A form whose fields become the URL's query: a bookmark holds only the filters in use.
  function filterForm(action, fill) {
    var form = el("form", "filters");
    form.method = "get";
    form.action = action;
    fill(form);
    form.appendChild(el("button", "", "Apply"));
    var clear = el("span", "clear");
    clear.appendChild(link(action, "", "clear"));
    form.appendChild(clear);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var query = new URLSearchParams();
      new FormData(form).forEach(function (value, key) { if (value) query.append(key, value); });
      location.search = query.toString();
    });
    main.appendChild(form);
    return form;
  }

  // A table under the filters; its body is what `refresh` fills.
  function listTable(id, titles) {
    var table = el("table", "list");
    table.id = id;
    var head = el("tr");
    titles.forEach(function (title) { head.appendChild(el("th", "", title)); });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var body = el("tbody");
    table.appendChild(body);
    main.appendChild(table);
    return body;
  }

  function listPage() {
    document.title = "traces - logfire-run";
    var params = new URLSearchParams(location.search);
    var options = el("datalist");
    options.id = "services";
    filterForm("/", function (form) {
      var service = field(form, "service", "service", params.get("service"), "any");
      service.setAttribute("list", "services");
      form.appendChild(options);
      field(form, "text in a span name or attribute", "q", params.get("q"), "e.g. /checkout, SELECT, 500");
      field(form, "route", "route", params.get("route"), "/items/{id}");
      field(form, "min duration", "min_duration", params.get("min_duration"), "250ms, 2s");
      choice(form, "started", "since", params.get("since"), [
        ["", "any time"], ["5m", "last 5 minutes"], ["15m", "last 15 minutes"], ["1h", "last hour"],
        ["6h", "last 6 hours"], ["1d", "last day"], ["7d", "last 7 days"]
      ]);
      if (params.get("until")) field(form, "until", "until", params.get("until"));
      choice(form, "order", "sort", params.get("sort"), [["", "newest first"], ["slowest", "slowest first"]]);
      var errors = el("label", "check");
      var box = el("input");
      box.type = "checkbox";
      box.name = "errors";
      box.value = "1";
      box.checked = params.get("errors") === "1";
      errors.appendChild(box);
      errors.appendChild(document.createTextNode("errors only"));
      form.appendChild(errors);
    });
    var note = el("div", "note", "");
    main.appendChild(note);
    var body = listTable("traces", ["started", "root span", "services", "duration", "spans"]);

    refresh = function () {
      var query = new URLSearchParams(location.search);
      return getJson("/api/traces?" + query.toString()).then(function (data) {
        options.textContent = "";
        data.services.forEach(function (name) { var item = el("option"); item.value = name; options.appendChild(item); });
        body.textContent = "";
        data.traces.forEach(function (trace) { body.appendChild(traceRow(trace)); });
        var filtered = Array.from(query.keys()).length > 0;
        note.textContent = visible(data.traces.length ? data.traces.length + " trace" + (data.traces.length > 1 ? "s" : "") +
          (filtered ? " match" + (data.traces.length > 1 ? "" : "es") : ", the newest first") + " \u2014 store " + data.store
          : (filtered ? "No trace matches these filters." : "No traces yet in " + data.store + ": run an app under logfire-run."));
        var old = main.querySelector(".error-box");
        if (old) old.remove();
        document.body.setAttribute("data-loaded", String(Date.now()));
      }).catch(function (error) { showError(main, error); });
    };
    refresh();
  }

  function traceRow(trace) {
    var row = el("tr", "trace");
    row.setAttribute("data-trace-id", trace.trace_id);
    row.appendChild(el("td", "when", when(trace.start_ns)));
    var root = el("td", "root");
    root.appendChild(link("/trace/" + trace.trace_id, "root-name", trace.root || "(root span not arrived)"));
    if (trace.errors) root.appendChild(mark("err-mark", trace.errors > 1 ? trace.errors + " errors" : "error"));
    if (trace.running) root.appendChild(mark("run-mark", "running", trace.running + " span(s) still running"));
    if (trace.orphans) root.appendChild(mark("orphan-mark", "orphan", trace.orphans + " span(s) whose parent never arrived"));
    row.appendChild(root);
    var services = el("td", "services");
    trace.services.forEach(function (service) { services.appendChild(chip(service)); });
    row.appendChild(services);
    var length = el("td", "num duration");
    if (trace.running) length.setAttribute("data-start-ns", String(trace.start_ns));
    length.textContent = trace.running ? runningText(trace.start_ns) : visible(trace.duration);
    row.appendChild(length);
    row.appendChild(el("td", "num spans", String(trace.spans)));
    row.addEventListener("click", function (event) {
      if (event.target.tagName !== "A") location.href = "/trace/" + trace.trace_id;
    });
    return row;
  }

  // One trace

  function niceStep(totalNs) {
    var rough = totalNs / 6, power = Math.pow(10, Math.floor(Math.log10(Math.max(rough, 1))));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * power >= rough) return steps[i] * power;
    return 10 * power;
  }

  function tracePage(traceId) {
    document.title = "trace " + traceId + " - logfire-run";
    var selected = new URLSearchParams(location.search).get("span");
    var data = null;
    refresh = function () {
      return getJson("/api/trace/" + traceId).then(function (body) {
        data = body;
        draw();
        document.body.setAttribute("data-loaded", String(Date.now()));
        if (body.trace.running) {
          clearTimeout(tracePage.timer);
          tracePage.timer = setTimeout(function () { refresh(); }, 2000);  // bars grow while spans run
        }
      }).catch(function (error) { main.textContent = ""; showError(main, error); });
    };

    function draw() {
      var scroll = window.scrollY;
      main.textContent = "";
      var trace = data.trace;
      assigned = {};
      trace.services.forEach(function (service, index) { assigned[service] = PALETTE[index % PALETTE.length]; });
      main.appendChild(el("h1", "", trace.root || "trace " + traceId));
      var meta = el("div", "meta");
      meta.appendChild(el("span", "mono", "trace " + traceId));
      meta.appendChild(document.createTextNode(visible("  \u00b7  started " + when(trace.start_ns) + "  \u00b7  " +
        (trace.running ? "" : trace.duration + "  \u00b7  ") + trace.spans + " spans")));
      if (trace.running) meta.appendChild(mark("run-mark", trace.running + " running"));
      if (trace.errors) meta.appendChild(mark("err-mark", trace.errors > 1 ? trace.errors + " errors" : "error"));
      main.appendChild(meta);
      var legend = el("div", "legend");
      trace.services.forEach(function (service) { legend.appendChild(chip(service)); });
      main.appendChild(legend);

      var t0 = trace.start_ns, total = Math.max(1, data.end_ns - t0);
      var waterfall = el("div", "waterfall");
      var axis = el("div", "axis");
      axis.appendChild(el("div", "label", "span"));
      var ticks = el("div", "ticks");
      var step = niceStep(total);
      for (var at = 0; at <= total; at += step) {
        var tick = el("span", "tick" + (at === 0 ? " first" : ""), at === 0 ? "0" : duration(at));
        tick.style.left = (at / total * 100) + "%";
        ticks.appendChild(tick);
      }
      axis.appendChild(ticks);
      waterfall.appendChild(axis);
      data.spans.forEach(function (span) { waterfall.appendChild(spanRow(span, t0, total)); });
      if (data.unattached_logs.length) {
        var lost = el("div", "row lost");
        var label = el("div", "label");
        label.appendChild(el("div", "head", "log records whose span never arrived"));
        data.unattached_logs.forEach(function (log) { label.appendChild(logLine(log)); });
        lost.appendChild(label);
        waterfall.appendChild(lost);
      }
      main.appendChild(waterfall);
      window.scrollTo(0, scroll);
      var chosen = data.spans.filter(function (span) { return span.span_id === selected; })[0];
      if (chosen) openPanel(chosen); else closePanel();
    }

    function spanRow(span, t0, total) {
      var row = el("div", "row" + (span.status === "ERROR" ? " error" : "") + (span.span_id === selected ? " selected" : ""));
      row.setAttribute("data-span-id", span.span_id);
      row.setAttribute("data-state", span.state || "ended");
      var label = el("div", "label");
      label.style.paddingLeft = (6 + Math.min(span.depth, 30) * 14) + "px";
      var head = el("div", "head");
      head.appendChild(el("span", "name", span.name));
      head.appendChild(el("span", "kind", span.kind));
      head.appendChild(document.createTextNode(" "));
      head.appendChild(chip(span.service));
      if (span.status === "ERROR") head.appendChild(mark("err-mark", "error", span.status_message));
      if (span.state === "running") head.appendChild(mark("run-mark", "running"));
      if (span.state === "unfinished") head.appendChild(mark("unfinished-mark", "unfinished", "its process stopped reporting it"));
      if (span.orphan) head.appendChild(mark("orphan-mark", "orphan", "parent " + span.parent_id + " never arrived"));
      label.appendChild(head);
      if (span.key_attributes.length) label.appendChild(el("span", "detail", span.key_attributes.join("   ")));
      span.logs.forEach(function (log) { label.appendChild(logLine(log)); });
      row.appendChild(label);
      var track = el("div", "track");
      var left = (span.start_ns - t0) / total * 100;
      var width = Math.max(0, (span.end_ns - span.start_ns) / total * 100);
      var bar = el("div", "bar" + (span.state ? " running" : ""));
      bar.style.left = left + "%";
      bar.style.width = width + "%";
      bar.style.background = colour(span.service || "");
      track.appendChild(bar);
      var text = el("span", "dur", span.duration);
      if (span.state === "running") {
        text.setAttribute("data-start-ns", String(span.start_ns));
        text.textContent = runningText(span.start_ns);
      }
      if (left + width > 80 && width > 15) {
        text.className += " inside";  // a long bar reaching the right edge: its label inside it
        text.style.right = (100 - left - width) + "%";
      } else if (left + width > 80) {
        text.className += " before";  // near the right edge: the label before the bar
        text.style.right = (100 - left) + "%";
      } else {
        text.style.left = (left + width) + "%";
      }
      track.appendChild(text);
      row.appendChild(track);
      row.addEventListener("click", function (event) {
        if (event.target.tagName === "A") return;
        selected = span.span_id;
        history.replaceState(null, "", "/trace/" + traceId + "?span=" + span.span_id);
        var rows = main.querySelectorAll(".row.selected");
        for (var i = 0; i < rows.length; i++) rows[i].classList.remove("selected");
        row.classList.add("selected");
        openPanel(span);
      });
      return row;
    }

    function closePanel() {
      panel.hidden = true;
      panel.textContent = "";
      document.body.classList.remove("with-panel");
    }

    function openPanel(span) {
      panel.textContent = "";
      panel.hidden = false;
      document.body.classList.add("with-panel");
      var close = el("button", "close", "\u00d7");
      close.title = "close";
      close.addEventListener("click", function () {
        selected = null;
        history.replaceState(null, "", "/trace/" + traceId);
        var rows = main.querySelectorAll(".row.selected");
        for (var i = 0; i < rows.length; i++) rows[i].classList.remove("selected");
        closePanel();
      });
      panel.appendChild(close);
      panel.appendChild(el("h2", "", span.name));
      var facts = el("table", "facts");
      function fact(table, key, value) {
        var tr = el("tr");
        tr.appendChild(el("td", "key", key));
        var cell = el("td", "mono");
        if (value instanceof Node) cell.appendChild(value); else cell.textContent = visible(value);
        tr.appendChild(cell);
        table.appendChild(tr);
      }
      fact(facts, "service", span.service + (span.pid ? "  (pid " + span.pid + ")" : ""));
      fact(facts, "kind", span.kind);
      fact(facts, "status", span.status + (span.status_message ? ": " + span.status_message : ""));
      fact(facts, "duration", span.state === "running" ? runningText(span.start_ns) : span.duration);
      fact(facts, "started", when(span.start_ns));
      fact(facts, "span id", span.span_id);
      fact(facts, "parent", span.parent_id ? span.parent_id + (span.orphan ? "  (never arrived)" : "") : "none (root)");
      if (span.scope) fact(facts, "scope", span.scope);
      panel.appendChild(facts);
      panel.appendChild(el("h3", "", "attributes"));
      var attributes = el("table", "attributes");
      var keys = Object.keys(span.attributes).sort();
      keys.forEach(function (key) {
        var value = span.attributes[key];
        fact(attributes, key, typeof value === "string" ? value : JSON.stringify(value));
      });
      if (!keys.length) attributes.appendChild(el("tr", "", "none"));
      panel.appendChild(attributes);
      if (span.events.length) {
        panel.appendChild(el("h3", "", "events"));
        span.events.forEach(function (event) {
          var attrs = event.attributes || {};
          if (event.name === "exception") {
            var box = el("div", "exception");
            box.appendChild(el("div", "name", (attrs["exception.type"] || "exception") + ": " + (attrs["exception.message"] || "")));
            if (attrs["exception.stacktrace"]) box.appendChild(el("pre", "", attrs["exception.stacktrace"]));
            panel.appendChild(box);
            return;
          }
          var item = el("div", "event");
          item.appendChild(el("span", "name", event.name));
          if (event.time_ns) item.appendChild(el("span", "kind", "+" + duration(event.time_ns - span.start_ns)));
          if (Object.keys(attrs).length) item.appendChild(el("pre", "", JSON.stringify(attrs, null, 1)));
          panel.appendChild(item);
        });
      }
      if (span.links.length) {
        panel.appendChild(el("h3", "", "links"));
        span.links.forEach(function (spanLink) {
          var line = el("div", "link");
          var text = "trace " + spanLink.trace_id + " / span " + spanLink.span_id;
          if (isTraceId(spanLink.trace_id)) {
            line.appendChild(link("/trace/" + spanLink.trace_id + "?span=" + encodeURIComponent(spanLink.span_id || ""),
              "linked-trace", text));
          } else {
            line.appendChild(el("span", "", text));
          }
          if (spanLink.attributes && Object.keys(spanLink.attributes).length)
            line.appendChild(el("pre", "", JSON.stringify(spanLink.attributes)));
          panel.appendChild(line);
        });
      }
      if (span.logs.length) {
        panel.appendChild(el("h3", "", "log records"));
        span.logs.forEach(function (log) {
          panel.appendChild(logLine(log));
          if (log.exception) panel.appendChild(el("pre", "", log.exception));
        });
      }
    }
    refresh();
  }

  function logLine(log) {
    var line = el("span", "logline");
    line.appendChild(el("span", "level level-" + (/^[A-Z]+$/.test(log.level) ? log.level : "OTHER"), log.level));
    line.appendChild(el("span", "logger", log.logger + ": "));
    line.appendChild(el("span", "message", log.message));
    return line;
  }

  // The log records

  function logsPage() {
    document.title = "logs - logfire-run";
    var params = new URLSearchParams(location.search);
    filterForm("/logs", function (form) {
      choice(form, "level", "level", params.get("level"), [
        ["", "any level"], ["debug", "debug and above"], ["info", "info and above"], ["warning", "warning and above"],
        ["error", "error and above"], ["critical", "critical"]
      ]);
      field(form, "service", "service", params.get("service"), "any");
      field(form, "text in the message or logger", "q", params.get("q"));
    });
    var note = el("div", "note");
    main.appendChild(note);
    var body = listTable("logs", ["time", "level", "service", "logger", "message", "trace"]);
    refresh = function () {
      return getJson("/api/logs?" + new URLSearchParams(location.search).toString()).then(function (data) {
        body.textContent = "";
        data.logs.forEach(function (log) {
          var row = el("tr", "log");
          row.appendChild(el("td", "when", when(log.time_ns)));
          row.appendChild(el("td", "level level-" + (/^[A-Z]+$/.test(log.level) ? log.level : "OTHER"), log.level));
          var service = el("td");
          service.appendChild(chip(log.service));
          row.appendChild(service);
          row.appendChild(el("td", "mono", log.logger));
          var message = el("td", "message", log.message);
          if (log.exception) message.appendChild(el("pre", "", log.exception));
          row.appendChild(message);
          var trace = el("td", "mono");
          if (isTraceId(log.trace_id)) trace.appendChild(link("/trace/" + log.trace_id + "?span=" + log.span_id, "trace-link", log.trace_id.slice(0, 12)));
          row.appendChild(trace);
          body.appendChild(row);
        });
        note.textContent = data.logs.length ? data.logs.length + " record(s), the newest first (at most 200)" : "No log records match.";
        document.body.setAttribute("data-loaded", String(Date.now()));
      }).catch(function (error) { showError(main, error); });
    };
    refresh();
  }

  // The endpoints: requests, errors and latency per service and route, from the stored metrics

  // "GET /items/{id}" -> "/items/{id}": what the trace list's route filter matches (null: no route,
  // as for a 404, whose requests are measured under their method alone).
  function routeOnly(route) {
    var match = /^[A-Z]+ (.+)$/.exec(route);
    return match ? match[1] : (/^[A-Z]+$/.test(route) || route === "(no route)" ? null : route);
  }
  function milliseconds(value) { return value === null || value === undefined ? "-" : duration(value * 1e6); }

  function endpointsPage() {
    document.title = "endpoints - logfire-run";
    var params = new URLSearchParams(location.search);
    filterForm("/endpoints", function (form) {
      choice(form, "window", "since", params.get("since"), [
        ["", "last hour"], ["5m", "last 5 minutes"], ["15m", "last 15 minutes"], ["6h", "last 6 hours"],
        ["1d", "last day"], ["7d", "last 7 days"]
      ]);
      field(form, "service", "service", params.get("service"), "any");
    });
    var note = el("div", "note");
    main.appendChild(note);
    var body = listTable("endpoints", ["service", "route", "requests", "errors", "error rate", "p50", "p95", "p99"]);
    refresh = function () {
      return getJson("/api/endpoints?" + new URLSearchParams(location.search).toString()).then(function (data) {
        body.textContent = "";
        data.endpoints.forEach(function (endpoint) {
          var row = el("tr", "endpoint");
          var service = el("td");
          service.appendChild(chip(endpoint.service));
          row.appendChild(service);
          var traces = new URLSearchParams();
          if (endpoint.service) traces.set("service", endpoint.service);
          var path = routeOnly(endpoint.route);
          if (path) traces.set("route", path);
          traces.set("since", data.since);
          var route = el("td", "mono route");
          route.appendChild(link("/?" + traces.toString(), "route-link", endpoint.route));
          row.appendChild(route);
          row.appendChild(el("td", "num count", String(endpoint.count)));
          row.appendChild(el("td", "num errors" + (endpoint.errors ? " bad" : ""), String(endpoint.errors)));
          var rate = endpoint.count ? (100 * endpoint.errors / endpoint.count) : 0;
          row.appendChild(el("td", "num rate" + (endpoint.errors ? " bad" : ""), (rate < 10 && rate > 0 ? rate.toFixed(1) : Math.round(rate)) + "%"));
          row.appendChild(el("td", "num p50", milliseconds(endpoint.p50)));
          row.appendChild(el("td", "num p95", milliseconds(endpoint.p95)));
          row.appendChild(el("td", "num p99", milliseconds(endpoint.p99)));
          body.appendChild(row);
        });
        note.textContent = visible(data.endpoints.length
          ? data.endpoints.length + " endpoint" + (data.endpoints.length > 1 ? "s" : "") + " over the last " + data.since +
            " (HTTP server duration metrics; percentiles estimated from their buckets)"
          : "No HTTP server requests measured over the last " + data.since + ".");
        var old = main.querySelector(".error-box");
        if (old) old.remove();
        document.body.setAttribute("data-loaded", String(Date.now()));
      }).catch(function (error) { showError(main, error); });
    };
    refresh();
  }

  // Which page

  var path = location.pathname;
  var traceMatch = /^\/trace\/([0-9a-f]{32})$/.exec(path);
  if (traceMatch) {
    tracePage(traceMatch[1]);
  } else if (path === "/endpoints") {
    document.getElementById("nav-endpoints").className = "current";
    endpointsPage();
  } else if (path === "/logs") {
    document.getElementById("nav-logs").className = "current";
    logsPage();
  } else {
    document.getElementById("nav-traces").className = "current";
    listPage();
  }
  connect();
})();
