// The live page: one EventSource on /api/v1/events; every `status` message
// redraws the summary, the workers table, the chart and the event feed.
// Nothing here reloads the page; the browser's EventSource reconnects by itself.
"use strict";

(function () {
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { e.appendChild(c); });
    return e;
  }

  function fmt(v) { return v === null || v === undefined ? "–" : String(v); }

  function duration(secs) {
    if (secs === null || secs === undefined) return "–";
    if (secs < 60) return secs.toFixed(0) + " s";
    if (secs < 3600) return Math.floor(secs / 60) + " min " + Math.floor(secs % 60) + " s";
    return Math.floor(secs / 3600) + " h " + Math.floor((secs % 3600) / 60) + " min";
  }

  function clock(ms) {
    var d = new Date(ms);
    var p = function (n) { return (n < 10 ? "0" : "") + n; };
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function badge(id, ok, label) {
    var b = $(id);
    b.className = "badge " + (ok ? "ok" : "bad");
    b.textContent = label + (ok ? " connected" : " lost");
  }

  function describe(e) {
    switch (e.kind) {
      case "worker_started": return e.role + " " + e.worker + " started (pid " + e.pid + ")";
      case "caught_up": return e.worker + " (pid " + e.pid + ") caught up at seq " + e.seq + " after " + e.after_ms + " ms";
      case "crashed": return e.role + " " + e.worker + " (pid " + e.pid + ") crashed, detected by " + e.detected.replace(/_/g, " ");
      case "stopped": return e.worker + " (pid " + e.pid + ") stopped";
      case "promoted": return e.worker + " (pid " + e.pid + ") promoted to master, epoch " + e.epoch +
        ", seq " + fmt(e.seq) + ", failover " + e.failover_ms + " ms";
      case "switchover": return "switchover: " + e.from + " handed over to " + e.to + " (pid " + e.to_pid + ") at seq " + e.seq +
        ", epoch " + e.epoch + ", writes paused " + e.pause_ms + " ms";
      case "rolled_out": return "rollout to " + e.image + ": " + e.replaced + " workers replaced in " + e.took_ms + " ms";
      case "setting_changed": return "setting " + e.key + ": " + e.before + " → " + e.after + " by " + e.by;
      case "master_started": return "empty master " + e.worker + " (pid " + e.pid + ") started, epoch " + e.epoch;
      case "recovery_started": return "recovery (" + e.why + "): committed seq " + fmt(e.committed_seq) + ", " + e.volumes + " volumes";
      case "recovered": return e.worker + " (pid " + e.pid + ") opened its volume's copy as master, seq " + e.seq + ", epoch " + e.epoch + ", " + e.took_ms + " ms";
      case "data_missing": return "DATA MISSING: acknowledged writes reach seq " + fmt(e.need_seq) + ", the best copy holds " + fmt(e.best_seq);
      case "data_loss_accepted": return "operator accepted losing seq " + (e.kept_seq + 1) + "–" + e.lost_through;
      case "volume_removed": return "volume of " + e.worker + " removed: " + e.why;
      case "scaled": return "window " + e.window + ": " + e.reads + " reads, slaves " + e.before + " → " + e.after + (e.reason ? " (" + e.reason + ")" : "");
      case "paused": return "maintenance mode on by " + e.by + (e.reason ? " (" + e.reason + ")" : "") + ": no failover, replacement or scaling";
      case "resumed": return "maintenance mode off by " + e.by + (e.paused_secs !== undefined ? " after " + duration(e.paused_secs) : "");
      case "held": return "held (paused or rolling out): " + e.what;
      case "broker_lost": return "broker connection lost: " + e.error;
      case "broker_regained": return "broker connection regained";
      case "zookeeper_lost": return "ZooKeeper session lost";
      case "zookeeper_regained": return "ZooKeeper session regained";
      default: return e.kind;
    }
  }

  function renderWorkers(s) {
    var body = $("workers").tBodies[0];
    var rows = s.workers.map(function (w) {
      var num = function (v) { return el("td", { class: "num", text: fmt(v) }); };
      return el("tr", { class: w.role, "data-role": w.role, "data-pid": String(w.pid), "data-id": w.id }, [
        el("td", { text: w.role }),
        el("td", {}, [el("span", { class: "state " + w.state, text: w.state.replace(/_/g, " ") })]),
        el("td", { text: w.id }),
        num(w.pid),
        num(w.applied_seq),
        num(w.lag_seqs),
        num(w.lag_ms),
        el("td", { class: "num", text: duration(w.uptime_secs) }),
        el("td", { class: "num", text: w.last_heartbeat_ms_ago === null ? "–" : w.last_heartbeat_ms_ago + " ms ago" }),
        el("td", { text: w.container_id ? w.container_id.slice(0, 12) : w.runtime }),
      ]);
    });
    body.replaceChildren.apply(body, rows);
  }

  function renderEvents(s) {
    var items = s.events.slice().reverse().map(function (e) {
      return el("li", { class: e.kind, "data-kind": e.kind, "data-id": String(e.id) }, [
        el("time", { datetime: new Date(e.at_ms).toISOString(), text: clock(e.at_ms) }),
        el("span", { class: "kind", text: e.kind.replace(/_/g, " ") }),
        el("span", { text: describe(e) }),
      ]);
    });
    var list = $("events");
    list.replaceChildren.apply(list, items);
  }

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Bars: reads of each decided window (from `scaled` events) and of the
  // current one; line: the slave count after each decision, and now.
  function renderChart(s) {
    var a = s.autoscaler;
    var points = s.events.filter(function (e) { return e.kind === "scaled"; }).slice(-24)
      .map(function (e) { return { label: "w" + e.window, reads: e.reads, slaves: e.after, now: false }; });
    points.push({ label: "now", reads: a.reads_in_window, slaves: a.slaves_running, now: true });
    var W = 600, H = 200, left = 36, right = 30, top = 10, bottom = 22;
    var maxReads = Math.max(a.reads_per_slave, Math.max.apply(null, points.map(function (p) { return p.reads; })));
    var maxSlaves = Math.max(1, a.max_slaves < 20 ? a.max_slaves : 0, Math.max.apply(null, points.map(function (p) { return p.slaves; })));
    var slot = (W - left - right) / points.length;
    var y = function (v, max) { return top + (H - top - bottom) * (1 - v / max); };
    var nodes = [
      svg("line", { x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, stroke: "#dde1e6" }),
      svg("text", { x: 2, y: top + 8 }, String(maxReads)),
      svg("text", { x: 2, y: H - bottom }, "0"),
      svg("text", { x: W - right + 4, y: top + 8 }, String(maxSlaves)),
    ];
    var line = [];
    points.forEach(function (p, i) {
      var x = left + i * slot;
      var h = (H - top - bottom) * (p.reads / maxReads);
      nodes.push(svg("rect", { x: x + slot * 0.15, y: H - bottom - h, width: slot * 0.7, height: Math.max(h, 0.5),
        fill: "#4a78c2", "fill-opacity": p.now ? 0.35 : 0.9 }));
      if (points.length <= 12 || i % 2 === 0 || p.now) {
        nodes.push(svg("text", { x: x + slot / 2, y: H - 6, "text-anchor": "middle" }, p.label));
      }
      line.push((x + slot / 2).toFixed(1) + "," + y(p.slaves, maxSlaves).toFixed(1));
    });
    nodes.push(svg("polyline", { points: line.join(" "), fill: "none", stroke: "#d9822b", "stroke-width": 2.5 }));
    line.forEach(function (xy) {
      var c = xy.split(",");
      nodes.push(svg("circle", { cx: c[0], cy: c[1], r: 3.5, fill: "#d9822b" }));
    });
    var chart = $("chart");
    chart.replaceChildren.apply(chart, nodes);
  }

  function render(s) {
    $("cluster").textContent = s.cluster_id + " · " + s.runtime;
    $("master").textContent = s.master ? s.master.id + " (pid " + s.master.pid + ")" : "none";
    $("epoch").textContent = s.master ? String(s.master.epoch) : "–";
    var a = s.autoscaler;
    $("slaves").textContent = a.slaves_running + " / " + a.slaves_desired;
    $("reads").textContent = String(a.reads_in_window);
    $("next").textContent = a.next_decision_ms ? Math.max(0, Math.round((a.next_decision_ms - s.at_ms) / 1000)) + " s" : "at first read";
    $("would").textContent = String(a.would_choose);
    $("policy").textContent = a.policy + ", window " + a.window_secs + " s, " +
      (a.policy === "reads-per-window" ? a.reads_per_slave + " reads per slave, " : "") +
      a.min_slaves + "–" + a.max_slaves + " slaves" + (a.last_window ? "; last: " + a.last_window.reason : "");
    badge("broker", s.broker_connected, "broker");
    badge("zookeeper", s.zookeeper_connected, "zookeeper");
    var m = s.maintenance || { paused: false, held: [] };
    var mb = $("maintenance");
    mb.hidden = !m.paused;
    mb.title = m.paused ? "maintenance mode" + (m.by ? " by " + m.by : "") + (m.reason ? ": " + m.reason : "") +
      "; held: " + (m.held.length ? m.held.join("; ") : "nothing") : "";
    var d = s.data || { volumes: [] };
    var db = $("data");
    db.className = "badge " + (d.missing ? "bad" : "ok");
    db.textContent = d.missing ? "DATA MISSING" : "data ok";
    db.title = d.missing || "";
    $("committed").textContent = (d.committed ? String(d.committed.seq) : "–") + " / " + (d.archive ? String(d.archive.seq) : "no archive");
    $("volumes").textContent = d.volumes.length + " (" + d.volumes.filter(function (v) { return !v.in_use; }).length + ")";
    renderWorkers(s);
    renderChart(s);
    renderEvents(s);
    window.__lastStatus = s;
  }

  function connect() {
    var feed = $("feed");
    var source = new EventSource("/api/v1/events");
    source.addEventListener("open", function () { feed.className = "badge ok"; feed.textContent = "live"; });
    source.addEventListener("error", function () { feed.className = "badge warn"; feed.textContent = "reconnecting…"; });
    source.addEventListener("status", function (m) {
      try { render(JSON.parse(m.data)); } catch (err) { console.error("bad status message", err); }
    });
  }

  connect();
})();
