// The bigbrotr dashboard: polls the engine's JSON endpoints and renders them. No framework,
// no build step. Everything from the archive (relay names, software, URLs) is hostile input:
// it only ever reaches the page as textContent, never as HTML.
"use strict";

(function () {
  const errors = document.getElementById("js-errors");
  function recordError(msg) {
    const li = document.createElement("li");
    li.textContent = String(msg);
    errors.appendChild(li);
  }
  window.addEventListener("error", (e) => recordError(e.message));
  window.addEventListener("unhandledrejection", (e) => recordError(e.reason));

  const API = "../api/";
  const REFRESH_MS = { overview: 10000, relays: 30000, kinds: 60000, authors: 60000 };
  const RETRY_MS = 5000;
  const NETWORKS = ["clearnet", "tor", "i2p", "loki", "local"];
  const STATUSES = ["up", "paused", "reachable", "unreachable", "unknown", "unchecked"];
  const failing = {};

  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
  const fmt1 = (n) => (n === null || n === undefined) ? "–" : Number(n).toFixed(1);

  function setNum(id, n, text) {
    const el = $(id);
    el.dataset.value = String(n);
    el.textContent = text === undefined ? fmt(n) : text;
  }

  function ago(t) {
    if (!t) return "never";
    const s = Math.max(0, Math.round(Date.now() / 1000 - t));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m";
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c);
    return tr;
  }

  // --- the API, with the error banner ------------------------------------------------------
  async function getJson(path) {
    let res;
    try {
      res = await fetch(API + path, { cache: "no-store" });
    } catch (e) {
      throw new Error("the bigbrotr server does not answer (" + e.message + ")");
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const why = body && typeof body.error === "string" ? body.error : res.statusText;
      throw new Error("HTTP " + res.status + " from /api/" + path + ": " + why);
    }
    return body;
  }

  function showErrors() {
    const banner = $("api-error");
    const msgs = Object.values(failing);
    if (msgs.length) {
      banner.textContent = "Data unavailable, retrying every " + RETRY_MS / 1000 + " s — " + msgs[0];
      banner.hidden = false;
      document.body.dataset.state = "error";
    } else {
      banner.hidden = true;
      banner.textContent = "";
      document.body.dataset.state = "ok";
    }
  }

  function poll(name, path, render) {
    const run = async () => {
      let next = REFRESH_MS[name];
      try {
        const data = await getJson(path);
        render(data);
        delete failing[name];
        $("last-update").textContent = new Date().toLocaleTimeString("en-GB");
      } catch (e) {
        failing[name] = e.message;
        next = RETRY_MS;
      }
      showErrors();
      setTimeout(run, next);
    };
    run();
  }

  // --- charts (hand-written SVG) -------------------------------------------------------------
  const SVGNS = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const W = 600, H = 220, L = 64, R = 10, T = 10, B = 24;

  function short(n) {
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (a >= 1e3) return (n / 1e3).toFixed(1) + "k";
    return String(Math.round(n));
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return d.toLocaleString("en-GB", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function frame(svg, xmin, xmax, ymin, ymax) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.appendChild(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    svg.appendChild(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    // A narrow range on large values (1,000,000 to 1,000,004) needs every digit.
    const label = (ymax - ymin) / 4 < Math.abs(ymax) / 100 ? (v) => fmt(Math.round(v)) : short;
    for (let i = 0; i <= 4; i++) {
      const v = ymin + (ymax - ymin) * i / 4;
      const y = H - B - (H - B - T) * i / 4;
      svg.appendChild(svgEl("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, label(v)));
    }
    svg.appendChild(svgEl("text", { x: L, y: H - 6 }, clock(xmin)));
    svg.appendChild(svgEl("text", { x: W - R, y: H - 6, "text-anchor": "end" }, clock(xmax)));
    const sx = (x) => L + (W - L - R) * (xmax === xmin ? 1 : (x - xmin) / (xmax - xmin));
    const sy = (y) => H - B - (H - B - T) * (ymax === ymin ? 0.5 : (y - ymin) / (ymax - ymin));
    return [sx, sy];
  }

  function empty(svg, msg) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, msg));
  }

  function lineChart(svg, series) {
    const pts = series.flatMap((s) => s.points);
    if (pts.length === 0) return empty(svg, "collecting samples…");
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    let ymin = Math.min(...ys), ymax = Math.max(...ys);
    // At least 4 units of range, so the 5 axis labels stay distinct integers.
    if (ymax - ymin < 4) {
      const mid = Math.round((ymin + ymax) / 2);
      ymin = Math.max(0, mid - 2);
      ymax = ymin + 4;
    }
    const [sx, sy] = frame(svg, Math.min(...xs), Math.max(...xs), ymin, ymax);
    series.forEach((s, i) => {
      const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
      if (s.points.length === 1) {
        svg.appendChild(svgEl("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3, class: "s" + i }));
      } else {
        svg.appendChild(svgEl("path", { d: d, class: "s" + i }));
      }
    });
  }

  function barChart(svg, points, step) {
    if (points.length === 0) return empty(svg, "no events created in the last 7 days");
    const xs = points.map((p) => p[0]);
    const ymax = Math.max(...points.map((p) => p[1]), 1);
    const xmin = Math.min(...xs), xmax = Math.max(...xs) + step;
    const [sx, sy] = frame(svg, xmin, xmax, 0, ymax);
    const w = Math.max(1, sx(xmin + step) - sx(xmin) - 0.5);
    for (const [x, y] of points) {
      const r = svgEl("rect", { x: sx(x), y: sy(y), width: w, height: Math.max(0, sy(0) - sy(y)), class: "bar" });
      r.appendChild(svgEl("title", {}, clock(x) + ": " + fmt(y)));
      svg.appendChild(r);
    }
  }

  // --- overview ------------------------------------------------------------------------------
  function renderOverview(o) {
    setNum("events-total", o.events);
    setNum("sightings-total", o.sightings);
    setNum("relays-total", o.relays);
    setNum("relays-running", o.relays_running);
    setNum("ingest-rate", o.rates.events_per_sec, fmt1(o.rates.events_per_sec));
    setNum("sightings-rate", o.rates.sightings_per_sec, fmt1(o.rates.sightings_per_sec));
    setNum("verify-load", o.rates.verify_busy_threads, o.rates.verify_busy_threads.toFixed(2));
    setNum("verify-rejected", o.verify_rejected);
    setNum("verify-verified", o.verify_verified);
    setNum("verify-skipped", o.verify_skipped);
    setNum("sink-batches", o.sink_batches);
    setNum("sink-retries", o.sink_retries);
    setNum("sink-batch-ms", o.sink_batch_seconds * 1000, (o.sink_batch_seconds * 1000).toFixed(1));
    const lag = o.analytics_lag;
    setNum("lag-rows", lag ? lag.rows : "", lag ? fmt(lag.rows) : "–");
    setNum("lag-seconds", lag ? lag.seconds : "", lag ? lag.seconds.toFixed(1) : "–");
    $("uptime").textContent = duration(o.uptime_seconds);
    const ready = $("ready");
    ready.textContent = o.ready ? "ready" : "not ready";
    ready.className = "pill " + (o.ready ? "ok" : "bad");

    const tb = $("channels").tBodies[0];
    tb.replaceChildren(...o.channels.map((c) => {
      const pct = c.capacity ? Math.min(100, 100 * c.depth / c.capacity) : 0;
      const bar = el("div", null, "fill");
      const inner = el("div");
      inner.style.width = pct.toFixed(1) + "%";
      bar.appendChild(inner);
      const cell = el("td");
      cell.appendChild(bar);
      const r = row([el("td", c.name), el("td", fmt(c.depth), "num"), el("td", fmt(c.capacity), "num"), cell]);
      r.id = "channel-" + c.name;
      return r;
    }));

    lineChart($("chart-growth"), [
      { points: o.history.map((s) => [s.t, s.events]) },
      { points: o.history.map((s) => [s.t, s.sightings]) },
    ]);
    barChart($("chart-hourly"), o.hourly, 3600);
  }

  // --- relays --------------------------------------------------------------------------------
  const TEXT_KEYS = new Set(["url", "network", "status", "name", "software"]);
  let relayRows = [];
  let sortKey = "events", sortDir = -1;

  function relayValue(r, key) {
    switch (key) {
      case "nips": return r.supported_nips ? r.supported_nips.length : -1;
      case "rejected_total": return Object.values(r.rejected).reduce((a, b) => a + b, 0);
      default: {
        const v = r[key];
        if (v !== null && v !== undefined) return typeof v === "string" ? v.toLowerCase() : v;
        return TEXT_KEYS.has(key) ? "" : -Infinity;
      }
    }
  }

  function renderRelayTable() {
    const q = $("relay-filter").value.trim().toLowerCase();
    const rows = relayRows.filter((r) => !q || [r.url, r.name, r.software].some((s) => s && s.toLowerCase().includes(q)));
    rows.sort((a, b) => {
      const x = relayValue(a, sortKey), y = relayValue(b, sortKey);
      if (x < y) return -sortDir;
      if (x > y) return sortDir;
      return a.url < b.url ? -1 : 1;
    });
    for (const th of $("relays").tHead.rows[0].cells) {
      th.classList.toggle("asc", th.dataset.key === sortKey && sortDir === 1);
      th.classList.toggle("desc", th.dataset.key === sortKey && sortDir === -1);
    }
    $("relays").tBodies[0].replaceChildren(...rows.map((r) => {
      const rej = Object.entries(r.rejected).sort((a, b) => b[1] - a[1]);
      const rejCell = el("td", fmt(relayValue(r, "rejected_total")), "num");
      if (rej.length) rejCell.title = rej.map(([k, v]) => k + ": " + v).join("\n");
      const nips = el("td", r.supported_nips ? r.supported_nips.length : "–", "num");
      if (r.supported_nips) nips.title = r.supported_nips.join(", ");
      const flags = [r.auth_required ? "auth" : "", r.payment_required ? "paid" : ""].filter(Boolean).join(" ");
      const name = el("td", (r.name || "") + (flags ? " [" + flags + "]" : ""));
      const soft = el("td", [r.software, r.version].filter(Boolean).join(" "));
      const tr = row([
        el("td", r.url, "mono"), el("td", r.network), el("td", r.status, "st-" + r.status),
        el("td", ago(r.checked_at)), el("td", r.rtt_open === null ? "–" : r.rtt_open + " ms", "num"),
        el("td", r.rtt_read === null ? "–" : r.rtt_read + " ms", "num"), name, soft, nips,
        el("td", fmt(r.events), "num"), el("td", fmt1(r.rate), "num"), el("td", fmt(r.failures), "num"), rejCell,
      ]);
      tr.dataset.url = r.url;
      tr.dataset.events = String(r.events);
      return tr;
    }));
  }

  function renderMatrix(byStatus) {
    const counts = {}, all = {};
    for (const c of byStatus) {
      counts[c.network + "/" + c.status] = c.relays;
      all[c.network] = (all[c.network] || 0) + c.relays;
    }
    const nets = NETWORKS.filter((n) => all[n]).concat(Object.keys(all).filter((n) => !NETWORKS.includes(n)));
    const table = $("relay-matrix");
    table.tHead.replaceChildren(row([el("th", "network"), ...STATUSES.map((s) => el("th", s, "num st-" + s)), el("th", "all", "num")]));
    table.tBodies[0].replaceChildren(...nets.map((n) => {
      const cells = STATUSES.map((s) => {
        const c = el("td", fmt(counts[n + "/" + s] || 0), "num");
        c.id = "relays-" + n + "-" + s;
        c.dataset.value = String(counts[n + "/" + s] || 0);
        return c;
      });
      const tot = el("td", fmt(all[n]), "num");
      tot.id = "relays-" + n;
      tot.dataset.value = String(all[n]);
      return row([el("td", n), ...cells, tot]);
    }));
  }

  function renderRelays(d) {
    relayRows = d.relays;
    $("relays-note").textContent = d.truncated
      ? "(the " + fmt(d.relays.length) + " with the most sightings, of " + fmt(d.total) + ")"
      : "(" + fmt(d.relays.length) + ")";
    renderMatrix(d.by_status);
    renderRelayTable();
  }

  for (const th of $("relays").tHead.rows[0].cells) {
    th.addEventListener("click", () => {
      if (sortKey === th.dataset.key) sortDir = -sortDir;
      else { sortKey = th.dataset.key; sortDir = th.classList.contains("num") ? -1 : 1; }
      renderRelayTable();
    });
  }
  $("relay-filter").addEventListener("input", renderRelayTable);

  // --- top kinds and authors -----------------------------------------------------------------
  function renderKinds(list) {
    $("kinds").tBodies[0].replaceChildren(...list.map((k, i) => {
      const tr = row([el("td", k.kind), el("td", fmt(k.event_count), "num"), el("td", fmt(k.unique_pubkeys), "num")]);
      tr.id = "kind-" + i;
      tr.dataset.kind = String(k.kind);
      tr.dataset.events = String(k.event_count);
      return tr;
    }));
  }

  function renderAuthors(list) {
    $("authors").tBodies[0].replaceChildren(...list.map((a, i) => {
      const pk = el("td", a.pubkey.slice(0, 16) + "…", "mono");
      pk.title = a.pubkey;
      const tr = row([pk, el("td", fmt(a.event_count), "num"), el("td", fmt(a.unique_kinds), "num")]);
      tr.id = "author-" + i;
      tr.dataset.pubkey = a.pubkey;
      tr.dataset.events = String(a.event_count);
      return tr;
    }));
  }

  poll("overview", "dashboard/overview", renderOverview);
  poll("relays", "dashboard/relays", renderRelays);
  poll("kinds", "stats/kinds?limit=10", renderKinds);
  poll("authors", "stats/pubkeys?limit=10", renderAuthors);
})();
