/* Vigil live view: the live streams, a stream's recent scores against its thresholds, its window with the
   reconstruction, and the alert feed (WebSocket, resumed from the last event id after a disconnect).
   Data comes only from the read routes, with the key the user typed (kept in sessionStorage). Text from the
   server is always set with textContent, never parsed as HTML. */
"use strict";

(() => {
  const KEY_STORAGE = "vigil.readKey";
  const FEED_LOOKBACK_MS = 60 * 60 * 1000; // first connection: the last hour of alerts, then live
  const FEED_MAX_ITEMS = 200;
  const SCORE_POINTS = 600;
  const TOP_SENSORS = 5;
  const SENSOR_CHARTS = 3;
  const LIST_EVERY_MS = 5000;
  const SCORES_EVERY_MS = 2000;
  const WINDOW_EVERY_MS = 5000;
  const MIN_LOG_SCORE = 1e-6; // the score axis is logarithmic
  const COLORS = {
    score: "#2563eb",
    warning: "#d97706",
    critical: "#dc2626",
    value: "#0f766e",
    reconstruction: "#7c3aed",
    band: "rgba(220, 38, 38, 0.12)",
    axis: "#475569",
    grid: "#e2e8f0",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    streams: new Map(),
    selected: null,
    trail: { streamId: null, points: [] },
    timeAxis: false,
    lastEventId: null,
    events: [],
    socket: null,
    reconnectMs: 1000,
    reconnectTimer: null,
    timers: [],
    scoreChart: null,
    sensorCharts: [],
    busy: new Set(),
    listSoon: null,
  };

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
    }
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatTs(value) {
    if (value === null || value === undefined) return "–";
    if (state.timeAxis) return new Date(value * 1000).toLocaleString();
    return Number.isInteger(value) ? String(value) : value.toFixed(3);
  }

  function formatScore(value) {
    if (value >= 100) return value.toFixed(0);
    if (value >= 1) return value.toFixed(2);
    return value.toPrecision(3);
  }

  const percent = (share) => `${(100 * share).toFixed(1)} %`;

  // ---- HTTP ----------------------------------------------------------------------------------------------
  async function api(path, params = {}) {
    const url = new URL(path, document.baseURI);
    for (const [name, value] of Object.entries(params)) url.searchParams.set(name, String(value));
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${state.key}` },
      cache: "no-store",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new HttpError(response.status, body);
      if (response.status === 401) signOut("This key was not accepted.");
      if (response.status === 403) signOut("This key lacks the read role.");
      throw error;
    }
    return body;
  }

  // Runs a refresh unless the same one is still in flight or the tab is hidden; errors show in the status.
  async function once(name, job) {
    if (state.busy.has(name) || document.hidden || !state.key) return;
    state.busy.add(name);
    try {
      await job();
    } catch (error) {
      if (!(error instanceof HttpError && (error.status === 401 || error.status === 403))) {
        setStatus($("streams-note"), `${name}: ${error.message}`, true);
      }
    } finally {
      state.busy.delete(name);
    }
  }

  function setStatus(node, text, isError = false) {
    node.textContent = text;
    node.classList.toggle("error", isError);
  }

  // ---- key -----------------------------------------------------------------------------------------------
  async function signIn(key) {
    state.key = key;
    try {
      await api("streams", { limit: 1 });
    } catch (error) {
      if (!(error instanceof HttpError) || error.status >= 500) {
        $("login-error").textContent = `Vigil did not answer: ${error.message}`;
        state.key = null;
      }
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    start();
  }

  function signOut(message) {
    stop();
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("view").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("key-input").value = "";
    $("key-input").focus();
  }

  function start() {
    $("login").hidden = true;
    $("view").hidden = false;
    $("session").hidden = false;
    connectFeed();
    once("streams", refreshList);
    // ?stream=<id> (the link in Alertmanager notifications) or #stream=<id> (older links) opens that stream.
    const wanted =
      new URLSearchParams(location.search).get("stream") ||
      new URLSearchParams(location.hash.slice(1)).get("stream");
    if (wanted) select(wanted);
    state.timers = [
      setInterval(() => once("streams", refreshList), LIST_EVERY_MS),
      setInterval(() => state.selected && once("scores", refreshScores), SCORES_EVERY_MS),
      setInterval(() => state.selected && once("window", refreshWindow), WINDOW_EVERY_MS),
    ];
  }

  function stop() {
    state.timers.forEach(clearInterval);
    state.timers = [];
    clearTimeout(state.reconnectTimer);
    const socket = state.socket;
    state.socket = null;
    if (socket) socket.close();
    state.lastEventId = null;
    state.events = [];
    state.selected = null;
    destroyCharts();
    $("feed").replaceChildren();
    $("streams").replaceChildren();
    $("stream-detail").hidden = true;
    $("empty").hidden = false;
  }

  // ---- stream list ---------------------------------------------------------------------------------------
  async function refreshList() {
    const body = await api("streams", { limit: 200 });
    state.streams = new Map(body.streams.map((s) => [s.stream_id, s]));
    const rows = body.streams.map((s) => {
      const row = element("tr");
      row.dataset.streamId = s.stream_id;
      row.setAttribute("aria-selected", String(s.stream_id === state.selected));
      const name = element("button", "link", s.stream_id);
      name.type = "button";
      name.addEventListener("click", () => select(s.stream_id));
      const cell = element("td");
      cell.append(name);
      const alertCell = element("td");
      alertCell.append(badge(s.alert));
      row.append(
        cell,
        alertCell,
        element("td", "num", s.points_total.toLocaleString()),
        element("td", "num", formatTs(s.last_ts)),
      );
      return row;
    });
    $("streams").replaceChildren(...rows);
    const note = body.streams.length === 0 ? "No live streams yet." : "";
    setStatus($("streams-note"), body.truncated ? `Showing ${body.streams.length} streams.` : note);
    if (state.selected) renderHeader();
  }

  function badge(alert) {
    const text = alert.state === "ok" ? "ok" : `${alert.state} · ${alert.severity}`;
    const node = element("span", "badge", text);
    node.dataset.state = alert.state;
    return node;
  }

  // Several events in a row ask for one list refresh.
  function refreshListSoon() {
    clearTimeout(state.listSoon);
    state.listSoon = setTimeout(() => once("streams", refreshList), 250);
  }

  // ---- one stream ----------------------------------------------------------------------------------------
  function select(streamId) {
    if (streamId === state.selected) return;
    state.selected = streamId;
    state.timeAxis = false;
    history.replaceState(null, "", `?stream=${encodeURIComponent(streamId)}`);
    destroyCharts();
    $("empty").hidden = true;
    $("stream-detail").hidden = false;
    $("contributions").replaceChildren();
    $("score-chart").dataset.points = "0";
    for (const row of $("streams").children) {
      row.setAttribute("aria-selected", String(row.dataset.streamId === streamId));
    }
    renderHeader();
    once("scores", refreshScores);
    once("window", refreshWindow);
  }

  function renderHeader() {
    const info = state.streams.get(state.selected);
    $("stream-title").textContent = state.selected;
    const slot = $("stream-badge");
    slot.replaceChildren();
    if (info) {
      slot.append(badge(info.alert));
      $("stream-meta").textContent =
        `model ${info.model} · ${info.points_total.toLocaleString()} points · last ts ${formatTs(info.last_ts)}`;
    }
  }

  // The server keeps only the newest VIGIL_HISTORY_POINTS scores per stream (Redis memory per stream); the
  // page keeps what it has seen of the selected stream, so the chart grows to SCORE_POINTS while it is open.
  function keepTrail(streamId, scores) {
    if (state.trail.streamId !== streamId) state.trail = { streamId, points: [] };
    const kept = state.trail.points;
    const last = kept.length ? kept.at(-1).ts : -Infinity;
    const first = scores.length ? scores[0].ts : Infinity;
    // A gap (the history moved on past what the page holds) or a restart of the stream: start again.
    const joined = first <= last || kept.length === 0 ? kept.filter((p) => p.ts < first) : [];
    state.trail.points = joined.concat(scores).slice(-SCORE_POINTS);
    return state.trail.points;
  }

  async function refreshScores() {
    const streamId = state.selected;
    const body = await api(`streams/${encodeURIComponent(streamId)}/scores`, { limit: SCORE_POINTS });
    if (streamId !== state.selected) return;
    const points = keepTrail(streamId, body.scores);
    const xs = points.map((p) => p.ts);
    useTimeAxis(xs);
    const { warning, critical } = body.thresholds;
    const data = [
      xs,
      points.map((p) => Math.max(p.score, MIN_LOG_SCORE)),
      xs.map(() => warning),
      xs.map(() => critical),
    ];
    if (!state.scoreChart) {
      state.scoreChart = makeChart($("score-chart"), 260, true, [
        { label: "score", stroke: COLORS.score, width: 1.5 },
        { label: "warning", stroke: COLORS.warning, dash: [6, 4] },
        { label: "critical", stroke: COLORS.critical, dash: [6, 4] },
      ]);
    }
    state.scoreChart.setData(data);
    $("score-chart").dataset.points = String(xs.length);
    const over = points.filter((p) => p.level !== "normal").length;
    $("score-note").textContent = xs.length
      ? `last ${xs.length} scored points (${over} at or over warning) · model ${body.model} ${body.version} · ` +
        `warning ${formatScore(warning)} · critical ${formatScore(critical)}` +
        (body.thresholds.per_stream ? ` (this stream's own, from ${body.thresholds.learned_points} points)` : "") +
        " · log scale"
      : "no scored points yet";
  }

  async function refreshWindow() {
    const streamId = state.selected;
    const body = await api(`streams/${encodeURIComponent(streamId)}/window`, { top: TOP_SENSORS });
    if (streamId !== state.selected) return;
    useTimeAxis(body.ts);
    const span = body.ts.length ? `ts ${formatTs(body.ts[0])} – ${formatTs(body.ts.at(-1))}` : "";
    $("window-note").textContent = body.reconstructed
      ? `the last ${body.window_length} points (${span}), reconstructed now by ${body.model} ${body.version}`
      : `waiting for a full window: ${body.ts.length} of ${body.window_length} points`;
    const items = body.reconstructed
      ? body.sensors.map((s) => {
          const item = element("li");
          item.dataset.sensor = s.sensor;
          const bar = element("span", "share");
          bar.style.width = `${Math.max(1, 100 * s.share).toFixed(1)}%`;
          const track = element("span", "track");
          track.append(bar);
          item.append(element("span", "sensor", s.sensor), track, element("span", "num", percent(s.share)));
          return item;
        })
      : [];
    $("contributions").replaceChildren(...items);
    drawSensors(body);
  }

  function drawSensors(body) {
    const shown = body.sensors.slice(0, SENSOR_CHARTS);
    const names = shown.map((s) => s.sensor).join(",");
    const container = $("sensor-charts");
    if (container.dataset.sensors !== names) {
      state.sensorCharts.forEach((c) => c.destroy());
      state.sensorCharts = [];
      container.replaceChildren();
      container.dataset.sensors = names;
      for (const s of shown) {
        const box = element("div", "sensor-chart");
        box.dataset.sensor = s.sensor;
        const title = element("h4");
        const plot = element("div", "chart");
        box.append(title, plot);
        container.append(box);
        state.sensorCharts.push(
          makeChart(plot, 150, false, [
            { label: "value", stroke: COLORS.value, width: 1.5 },
            { label: "reconstruction", stroke: COLORS.reconstruction, dash: [5, 3] },
          ]),
        );
      }
    }
    shown.forEach((s, i) => {
      const title = container.children[i].querySelector("h4");
      title.textContent = s.share === null ? s.sensor : `${s.sensor} · ${percent(s.share)} of the window's score`;
      state.sensorCharts[i].setData([body.ts, s.values, s.reconstruction || s.values.map(() => null)]);
    });
  }

  // Stream timestamps are any increasing number; ones that look like Unix seconds get a clock axis.
  function useTimeAxis(xs) {
    const looksLikeTime = xs.length > 0 && xs[0] > 1e9 && xs.at(-1) < 1e11;
    if (looksLikeTime !== state.timeAxis) {
      state.timeAxis = looksLikeTime;
      destroyCharts();
    }
  }

  function makeChart(node, height, logScale, series) {
    const options = {
      width: Math.max(240, node.clientWidth),
      height,
      scales: { x: { time: state.timeAxis }, y: logScale ? { distr: 3, log: 10 } : {} },
      series: [{ label: "ts", value: (u, v) => formatTs(v) }, ...series.map((s) => ({ points: { show: false }, ...s }))],
      axes: [
        { stroke: COLORS.axis, grid: { stroke: COLORS.grid } },
        logScale
          ? { stroke: COLORS.axis, grid: { stroke: COLORS.grid, filter: decades }, ticks: { filter: decades }, size: 60 }
          : { stroke: COLORS.axis, grid: { stroke: COLORS.grid }, size: 60 },
      ],
      cursor: { drag: { x: true, y: false } },
      plugins: [alertBands()],
    };
    node.replaceChildren();
    return new uPlot(options, [[], ...series.map(() => [])], node);
  }

  // A log axis splits every decade in nine; only the decades get lines.
  const decades = (u, splits) => splits.map((v) => (Number.isInteger(Math.log10(v)) ? v : null));

  function destroyCharts() {
    if (state.scoreChart) state.scoreChart.destroy();
    state.scoreChart = null;
    state.sensorCharts.forEach((c) => c.destroy());
    state.sensorCharts = [];
    const container = $("sensor-charts");
    container.replaceChildren();
    delete container.dataset.sensors;
  }

  // The selected stream's alerts (pending → firing → resolved) as shaded spans behind the series.
  function alertSpans(streamId) {
    const spans = [];
    let open = null;
    for (const e of state.events) {
      if (e.stream_id !== streamId) continue;
      if (e.state === "pending" || (e.state === "firing" && !open)) open = { start: e.started_ts, firing: false };
      if (e.state === "firing") open.firing = true;
      if ((e.state === "resolved" || e.state === "cancelled") && open) {
        if (open.firing) spans.push([open.start, e.ts]);
        open = null;
      }
    }
    if (open && open.firing) spans.push([open.start, null]);
    return spans;
  }

  function alertBands() {
    const draw = (u) => {
      const spans = alertSpans(state.selected);
      if (!spans.length) return;
      const { left, top, width, height } = u.bbox;
      u.ctx.save();
      u.ctx.fillStyle = COLORS.band;
      for (const [from, to] of spans) {
        const x0 = Math.max(left, u.valToPos(from, "x", true));
        const x1 = Math.min(left + width, to === null ? left + width : u.valToPos(to, "x", true));
        if (x1 > x0) u.ctx.fillRect(x0, top, x1 - x0, height);
      }
      u.ctx.restore();
    };
    return { hooks: { drawClear: [draw] } };
  }

  function resizeCharts() {
    for (const chart of [state.scoreChart, ...state.sensorCharts]) {
      if (chart) chart.setSize({ width: Math.max(240, chart.root.parentNode.clientWidth), height: chart.height });
    }
  }

  // ---- alert feed ----------------------------------------------------------------------------------------
  function idAfter(a, b) {
    const [am, as] = a.split("-").map(Number);
    const [bm, bs] = b.split("-").map(Number);
    return am > bm || (am === bm && as > bs);
  }

  function connectFeed() {
    clearTimeout(state.reconnectTimer);
    const url = new URL("ws/alerts", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("since", state.lastEventId || `${Date.now() - FEED_LOOKBACK_MS}-0`);
    url.searchParams.set("token", state.key); // browsers cannot set headers on a WebSocket
    const socket = new WebSocket(url);
    state.socket = socket;
    setFeedStatus("connecting");
    socket.addEventListener("open", () => {
      state.reconnectMs = 1000;
      setFeedStatus("live");
    });
    socket.addEventListener("message", (message) => onEvent(JSON.parse(message.data)));
    socket.addEventListener("close", () => {
      if (state.socket !== socket) return; // closed on purpose
      state.socket = null;
      setFeedStatus("reconnecting");
      state.reconnectTimer = setTimeout(connectFeed, state.reconnectMs);
      state.reconnectMs = Math.min(2 * state.reconnectMs, 15000);
      once("streams", refreshList); // signs out if the key stopped working
    });
  }

  function setFeedStatus(status) {
    const node = $("feed-status");
    node.dataset.state = status;
    node.textContent = `feed: ${status}`;
  }

  function onEvent(event) {
    if (state.lastEventId && !idAfter(event.id, state.lastEventId)) return;
    state.lastEventId = event.id;
    state.events.push(event);
    if (state.events.length > 5 * FEED_MAX_ITEMS) state.events.shift();
    const feed = $("feed");
    feed.prepend(feedItem(event));
    while (feed.children.length > FEED_MAX_ITEMS) feed.lastElementChild.remove();
    $("feed-note").textContent = `${state.events.length} since ${new Date(Date.now() - FEED_LOOKBACK_MS).toLocaleTimeString()}`;
    refreshListSoon();
    if (event.stream_id === state.selected) {
      once("scores", refreshScores);
      once("window", refreshWindow);
    }
  }

  function feedItem(event) {
    const item = element("li");
    item.dataset.state = event.state;
    item.dataset.streamId = event.stream_id;
    item.dataset.id = event.id;
    const head = element("div", "feed-head");
    const tag = element("span", "badge", `${event.state} · ${event.severity}${event.escalated ? " ↑" : ""}`);
    tag.dataset.state = event.state;
    const stream = element("button", "link", event.stream_id);
    stream.type = "button";
    stream.addEventListener("click", () => select(event.stream_id));
    head.append(tag, stream, element("span", "note", `ts ${formatTs(event.ts)}`));
    const detail = element(
      "div",
      "note",
      `peak ${formatScore(event.peak_score)} (threshold ${formatScore(event.threshold)}) · ` +
        `${event.sensors.join(", ") || "no sensors"}`,
    );
    item.append(head, detail);
    return item;
  }

  // ---- wiring --------------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      $("login-error").textContent = "";
      signIn($("key-input").value.trim());
    });
    $("logout").addEventListener("click", () => signOut(""));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.key) {
        once("streams", refreshList);
        if (state.selected) {
          once("scores", refreshScores);
          once("window", refreshWindow);
        }
      }
    });
    new ResizeObserver(resizeCharts).observe($("stream-detail"));
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) signIn(saved);
    else signOut("");
  });
})();
