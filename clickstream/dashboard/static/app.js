// clickstream dashboard: fetches /api/dashboard and draws every figure with plain DOM and SVG.
// Data is only ever inserted with textContent / attributes, never as HTML.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAP = { width: 1000, height: 500 }; // equirectangular, as static/world.svg
  const state = { minutes: 60, start: null, end: null, timer: null, renders: 0, last: null };

  const $ = (selector, root = document) => root.querySelector(selector);
  const byTestId = (id) => $(`[data-testid="${id}"]`);

  // -- formatting --------------------------------------------------------------------------
  const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const regions = typeof Intl.DisplayNames === "function"
    ? new Intl.DisplayNames(["en"], { type: "region" }) : null;

  const fmtInt = (n) => integer.format(n);
  const fmtPct = (r) => (r === null || r === undefined ? "–" : `${(r * 100).toFixed(1)}%`);
  const fmtRatio = (r) => (r === null || r === undefined ? "–" : r.toFixed(2));
  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  function fmtMoney(amount, currency) {
    // Five figures and more are shown compact (€20.4K) so the tile stays readable; the exact
    // amount is in the tile's data-value and tooltip.
    const compact = Math.abs(amount) >= 10000
      ? { notation: "compact", maximumFractionDigits: 1 }
      : { minimumFractionDigits: 2, maximumFractionDigits: 2 };
    if (currency) {
      try {
        return new Intl.NumberFormat("en-US", { style: "currency", currency, ...compact })
          .format(amount);
      } catch (_error) { /* an unknown code: fall through to a plain number */ }
    }
    return new Intl.NumberFormat("en-US", compact).format(amount);
  }
  function countryName(code) {
    if (!code) return "Unknown";
    try {
      return regions ? `${regions.of(code)} (${code})` : code;
    } catch (_error) {
      return code;
    }
  }
  const pad = (n) => String(n).padStart(2, "0");
  const hhmm = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  const dayHour = (d) => `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:00`;
  const rawValue = (v) => (v === null || v === undefined ? "" : String(v));

  // -- small DOM helpers -------------------------------------------------------------------
  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== null) node.textContent = text;
    return node;
  }
  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  }
  function tooltip(node, text) {
    const title = svg("title");
    title.textContent = text;
    node.appendChild(title);
  }

  // -- range -------------------------------------------------------------------------------
  function readLocation() {
    const params = new URLSearchParams(window.location.search);
    if (params.get("start") && params.get("end")) {
      state.start = params.get("start");
      state.end = params.get("end");
    } else if (params.get("minutes")) {
      const minutes = Number.parseInt(params.get("minutes"), 10);
      if (Number.isFinite(minutes) && minutes > 0) state.minutes = minutes;
    }
  }
  function apiUrl() {
    const params = new URLSearchParams();
    if (state.start && state.end) {
      params.set("start", state.start);
      params.set("end", state.end);
    } else {
      params.set("minutes", String(state.minutes));
    }
    return `/api/dashboard?${params}`;
  }
  function markRange() {
    for (const button of document.querySelectorAll(".ranges button")) {
      const pressed = !state.start && Number(button.dataset.minutes) === state.minutes;
      button.setAttribute("aria-pressed", pressed ? "true" : "false");
    }
  }
  function chooseRange(minutes) {
    state.minutes = minutes;
    state.start = null;
    state.end = null;
    const url = new URL(window.location.href);
    url.searchParams.delete("start");
    url.searchParams.delete("end");
    url.searchParams.set("minutes", String(minutes));
    window.history.replaceState(null, "", url);
    markRange();
    refresh();
  }

  // -- figures -----------------------------------------------------------------------------
  function setKpi(testId, raw, text) {
    const node = byTestId(testId);
    node.dataset.value = rawValue(raw);
    $(".value", node).textContent = text;
  }

  function renderKpis(k) {
    setKpi("kpi-sessions", k.sessions, fmtInt(k.sessions));
    setKpi("kpi-visitors", k.visitors, fmtInt(k.visitors));
    setKpi("kpi-page-views", k.page_views, fmtInt(k.page_views));
    setKpi("kpi-views-per-visit", k.views_per_visit, fmtRatio(k.views_per_visit));
    setKpi("kpi-bounce-rate", k.bounce_rate, fmtPct(k.bounce_rate));
    setKpi("kpi-avg-duration", k.average_duration_seconds, fmtDuration(k.average_duration_seconds));
    setKpi("kpi-conversion-rate", k.conversion_rate, fmtPct(k.conversion_rate));
    setKpi("kpi-revenue", k.revenue, fmtMoney(k.revenue, k.currency));
    const revenue = byTestId("kpi-revenue");
    revenue.dataset.currency = k.currency || "";
    revenue.title = `Revenue of the ${fmtInt(k.purchases)} purchases in the range: ` +
      `${k.revenue.toLocaleString("en-US", { minimumFractionDigits: 2 })} ${k.currency || ""}`;
  }

  function niceMax(value) {
    if (value <= 4) return 4;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * magnitude >= value) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function renderTraffic(traffic) {
    const box = byTestId("traffic-chart");
    const points = traffic.points;
    const sum = (key) => points.reduce((total, p) => total + p[key], 0);
    box.dataset.bucket = traffic.bucket;
    box.dataset.buckets = String(points.length);
    box.dataset.totalEvents = String(sum("events"));
    box.dataset.totalPageViews = String(sum("page_views"));
    box.dataset.totalSessions = String(sum("sessions"));
    byTestId("traffic-bucket").textContent = `per ${traffic.bucket}`;

    const width = Math.max(box.clientWidth, 320);
    const height = Math.max(box.clientHeight, 160);
    const pad = { left: 44, right: 12, top: 10, bottom: 24 };
    const innerW = width - pad.left - pad.right;
    const innerH = height - pad.top - pad.bottom;
    const top = niceMax(Math.max(1, ...points.map((p) => Math.max(p.page_views, p.sessions))));
    const step = innerW / Math.max(points.length, 1);
    const x = (i) => pad.left + (i + 0.5) * step;
    const y = (v) => pad.top + innerH - (v / top) * innerH;

    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Page views and sessions over time" });
    for (let i = 0; i <= 4; i += 1) {
      const value = (top / 4) * i;
      chart.appendChild(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right,
        y1: y(value), y2: y(value) }));
      const label = svg("text", { class: "axis", x: pad.left - 6, y: y(value) + 4, "text-anchor": "end" });
      label.textContent = fmtInt(value);
      chart.appendChild(label);
    }
    if (points.length > 0) {
      const views = points.map((p, i) => `${x(i).toFixed(1)},${y(p.page_views).toFixed(1)}`);
      const sessions = points.map((p, i) => `${x(i).toFixed(1)},${y(p.sessions).toFixed(1)}`);
      const base = y(0).toFixed(1);
      chart.appendChild(svg("path", { class: "area",
        d: `M${x(0).toFixed(1)},${base}L${views.join("L")}L${x(points.length - 1).toFixed(1)},${base}Z` }));
      chart.appendChild(svg("path", { class: "line-views", d: `M${views.join("L")}` }));
      chart.appendChild(svg("path", { class: "line-sessions", d: `M${sessions.join("L")}` }));
      const spanHours = (Date.parse(points[points.length - 1].start) - Date.parse(points[0].start)) / 3.6e6;
      const label = (d) => (traffic.bucket === "hour" && spanHours >= 24 ? dayHour(d) : hhmm(d));
      const every = Math.max(1, Math.ceil(points.length / Math.max(2, Math.floor(innerW / 90))));
      points.forEach((p, i) => {
        const start = new Date(p.start);
        if (i % every === 0) {
          const text = svg("text", { class: "axis", x: x(i), y: height - 6, "text-anchor": "middle" });
          text.textContent = label(start);
          chart.appendChild(text);
        }
        const hover = svg("rect", { class: "hover", x: pad.left + i * step, y: pad.top,
          width: Math.max(step, 1), height: innerH });
        tooltip(hover, `${label(start)}: ${fmtInt(p.page_views)} page views, ` +
          `${fmtInt(p.sessions)} sessions started, ${fmtInt(p.events)} events, ` +
          `${fmtInt(p.purchases)} purchases`);
        chart.appendChild(hover);
      });
    }
    box.replaceChildren(chart);
  }

  function renderMap(points) {
    const map = byTestId("map");
    const layer = $(".points", map);
    const most = Math.max(1, ...points.map((p) => p.events));
    map.dataset.points = String(points.length);
    map.dataset.totalEvents = String(points.reduce((t, p) => t + p.events, 0));
    const circles = points.slice().reverse().map((p) => {
      const circle = svg("circle", {
        class: "point",
        "data-testid": "map-point",
        "data-lat": p.latitude,
        "data-lon": p.longitude,
        "data-events": p.events,
        cx: (((p.longitude + 180) / 360) * MAP.width).toFixed(1),
        cy: (((90 - p.latitude) / 180) * MAP.height).toFixed(1),
        r: (2.5 + 11 * Math.sqrt(p.events / most)).toFixed(1),
      });
      tooltip(circle, `${p.latitude.toFixed(1)}, ${p.longitude.toFixed(1)}: ` +
        `${fmtInt(p.events)} events, ${fmtInt(p.visitors)} visitors`);
      return circle;
    });
    layer.replaceChildren(...circles);
  }

  function fillTable(testId, rows, emptyText, build) {
    const body = $("tbody", byTestId(testId));
    if (rows.length === 0) {
      const tr = el("tr", { class: "empty" });
      tr.appendChild(el("td", { colspan: "3" }, emptyText));
      body.replaceChildren(tr);
      return;
    }
    const most = Math.max(1, ...rows.map((r) => build(r).weight));
    body.replaceChildren(...rows.map((row) => {
      const spec = build(row);
      const tr = el("tr", { "data-testid": spec.testId });
      for (const [name, value] of Object.entries(spec.data)) tr.dataset[name] = rawValue(value);
      const name = el("td", { class: "name", title: spec.title || spec.name });
      const fill = el("span", { class: "fill" });
      fill.style.width = `${((spec.weight / most) * 100).toFixed(1)}%`;
      name.append(fill, el("span", { class: "text" }, spec.name));
      tr.appendChild(name);
      for (const cell of spec.cells) tr.appendChild(el("td", { class: "num" }, cell));
      return tr;
    }));
  }

  function shortUrl(url) {
    try {
      const parsed = new URL(url);
      return `${parsed.pathname}${parsed.search}`;
    } catch (_error) {
      return url;
    }
  }

  function renderTables(d) {
    fillTable("countries", d.countries, "No sessions in this range", (r) => ({
      testId: "country-row", name: countryName(r.country), weight: r.sessions,
      data: { country: r.country, sessions: r.sessions, visitors: r.visitors },
      cells: [fmtInt(r.sessions), fmtInt(r.visitors)],
    }));
    fillTable("sources", d.sources, "No sessions in this range", (r) => ({
      testId: "source-row", name: r.source, weight: r.sessions,
      data: { source: r.source, sessions: r.sessions, converted: r.converted_sessions },
      cells: [fmtInt(r.sessions), fmtInt(r.converted_sessions)],
    }));
    fillTable("pages", d.pages, "No page views in this range", (r) => ({
      testId: "page-row", name: shortUrl(r.page_url), title: r.page_url, weight: r.page_views,
      data: { url: r.page_url, views: r.page_views, visitors: r.visitors },
      cells: [fmtInt(r.page_views), fmtInt(r.visitors)],
    }));
    const paths = d.conversion_paths;
    byTestId("paths").dataset.converted = String(paths.converted_sessions);
    fillTable("paths", paths.paths, "No conversions in this range", (r) => ({
      testId: "path-row", name: r.path, weight: r.sessions,
      data: { path: r.path, sessions: r.sessions, share: r.share },
      cells: [fmtInt(r.sessions), fmtPct(r.share)],
    }));
  }

  function renderFunnel(funnel) {
    const box = byTestId("funnel");
    box.dataset.sessions = String(funnel.sessions);
    box.replaceChildren(...funnel.steps.map((step, index) => {
      const row = el("div", { class: "step", "data-testid": "funnel-step" });
      row.dataset.step = step.name;
      row.dataset.sessions = String(step.sessions);
      row.dataset.dropOff = rawValue(step.drop_off);
      const track = el("div", { class: "track" });
      const bar = el("div", { class: "bar" });
      bar.style.width = `${((step.share_of_first || 0) * 100).toFixed(1)}%`;
      track.appendChild(bar);
      let drop;
      if (index === 0) {
        drop = el("div", { class: "drop first" }, `of ${fmtInt(funnel.sessions)} sessions`);
      } else {
        drop = el("div", { class: "drop" },
          step.drop_off === null ? "–"
            : `${step.drop_off > 0 ? "−" : ""}${(step.drop_off * 100).toFixed(1)}% drop-off`);
      }
      row.append(el("div", { class: "label" }, step.label), track,
        el("div", { class: "count" }, fmtInt(step.sessions)), drop);
      return row;
    }));
  }

  function renderBars(testId, rows, label) {
    const box = byTestId(testId);
    if (rows.length === 0) {
      box.replaceChildren(el("div", { class: "none" }, "No sessions in this range"));
      return;
    }
    box.replaceChildren(...rows.map((r) => {
      const row = el("div", { class: "bar-row", "data-testid": "segment-row" });
      row.dataset.name = rawValue(r.name);
      row.dataset.sessions = String(r.sessions);
      row.dataset.share = String(r.share);
      const track = el("div", { class: "bar-track" });
      const fill = el("div", { class: "bar-fill" });
      fill.style.width = `${(r.share * 100).toFixed(1)}%`;
      track.appendChild(fill);
      row.append(el("div", { class: "bar-name", title: `${fmtInt(r.sessions)} sessions` },
        label(r.name)), track, el("div", { class: "bar-share" }, fmtPct(r.share)));
      return row;
    }));
  }

  function renderDevices(devices) {
    const capital = (s) => (s ? s.charAt(0).toUpperCase() + s.slice(1) : "Unknown");
    renderBars("device-types", devices.device_types, capital);
    renderBars("operating-systems", devices.operating_systems, (s) => s || "Unknown");
    renderBars("browsers", devices.browsers, (s) => s || "Unknown");
  }

  function renderMeta(d) {
    const live = byTestId("current-visitors");
    live.dataset.value = String(d.current_visitors);
    $(".value", live).textContent = fmtInt(d.current_visitors);
    const banner = byTestId("banner");
    banner.hidden = !d.banner;
    banner.textContent = d.banner || "";
    const start = new Date(d.time_range.start);
    const end = new Date(d.time_range.end);
    const range = byTestId("range");
    range.dataset.start = d.time_range.start;
    range.dataset.end = d.time_range.end;
    range.textContent = `Range ${start.toLocaleString()} – ${end.toLocaleString()} ` +
      `(${fmtInt(d.time_range.minutes)} min), refreshed every ${d.refresh_seconds} s`;
  }

  function render(d) {
    renderKpis(d.kpis);
    renderTraffic(d.traffic);
    renderMap(d.map_points);
    renderTables(d);
    renderFunnel(d.funnel);
    renderDevices(d.devices);
    renderMeta(d);
  }

  function setStatus(stateName, text, generated) {
    const status = byTestId("status");
    status.dataset.state = stateName;
    if (generated) status.dataset.generated = generated;
    status.textContent = text;
  }

  async function refresh() {
    window.clearTimeout(state.timer);
    let delay = 5;
    try {
      const response = await fetch(apiUrl(), { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
      state.last = body;
      delay = body.refresh_seconds;
      render(body);
      state.renders += 1;
      document.body.dataset.renders = String(state.renders);
      setStatus("ok", `Updated ${new Date(body.now).toLocaleTimeString()}`, body.now);
    } catch (error) {
      setStatus("error", `Not updated: ${error.message}; retrying`, null);
    }
    state.timer = window.setTimeout(refresh, delay * 1000);
  }

  function start() {
    readLocation();
    markRange();
    for (const button of document.querySelectorAll(".ranges button")) {
      button.addEventListener("click", () => chooseRange(Number(button.dataset.minutes)));
    }
    let resizing = null;
    window.addEventListener("resize", () => {
      window.clearTimeout(resizing);
      resizing = window.setTimeout(() => state.last && renderTraffic(state.last.traffic), 150);
    });
    refresh();
  }

  start();
})();
