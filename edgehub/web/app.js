// The edgecollab web dashboard: plain JavaScript, no build step, no dependency.
//
// It reads the hub's live stream of summaries (GET /api/v1/stream, server-sent events) with fetch(),
// because EventSource cannot send the Authorization header, and polls recent events every few seconds.
// The read-only viewer token comes in the URL fragment (#token=...: never sent to a server, never
// logged), is kept in this tab's sessionStorage and taken out of the address bar.
//
// Every value shows its age (ticking every second); what a node reported is greyed and labelled
// "stale" while the node is offline, and the whole page is while the stream is down.
"use strict";

(() => {
  const TOKEN_KEY = "edgecollab.viewerToken";
  const SUMMARY = "ec/v1/summary/";
  const STREAM_URL = "/api/v1/stream";
  // The hub sends a keepalive comment every 15 s: three missed means the connection is dead.
  const STALL_MS = 45000;
  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const EVENTS_EVERY_MS = 5000;
  // The hub's warnings (GET /healthz) change at most once per certificate check (hourly by default).
  const HEALTH_EVERY_MS = 60000;
  const EVENTS_SHOWN = 50;
  // Without GET /api/v1/events: the most recently seen nodes' own events, this many nodes at most.
  const EVENTS_NODES_POLLED = 25;
  const EVENTS_PER_NODE = 10;
  const PHASES = ["Deployed", "Applying", "Pending", "Degraded", "Failed", "Removing", "Removed"];

  const $ = (id) => document.getElementById(id);

  const state = {
    summaries: new Map(), // topic -> summary, as of the stream
    ready: false, // the stream has sent every current summary
    connected: false,
    lastHeard: 0, // Date.now() of the stream's last byte
    disconnectedSince: 0,
    retryAt: 0,
    clockOffset: 0, // the hub's clock minus this browser's, in ms (from the Date header)
    events: [],
    eventsMode: "all", // "all": GET /api/v1/events; "nodes": each node's own events
    eventsAt: 0,
    eventsError: "",
    openDetails: new Map(), // a component's per-node list: open or closed by the user
    filter: "",
  };
  let memoryToken = "";

  // --- the token ---------------------------------------------------------------------

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch {
      return memoryToken;
    }
  }

  function setToken(token) {
    memoryToken = token;
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      // Storage disabled: the token lives as long as the page.
    }
  }

  function forgetToken() {
    memoryToken = "";
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
  }

  function takeTokenFromFragment() {
    const fragment = location.hash.replace(/^#/, "");
    if (!fragment) return;
    const params = new URLSearchParams(fragment);
    const token = (params.get("token") || "").trim();
    if (token) setToken(token);
    params.delete("token");
    const rest = params.toString();
    // Out of the address bar and the history: a shared screen or a copied URL does not carry it.
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }

  function showLogin(message) {
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    if (message) $("login-message").textContent = message;
    setConnection("signed-out", "no token");
    $("token-input").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
  }

  // --- time --------------------------------------------------------------------------

  function hubNow() {
    return Date.now() + state.clockOffset;
  }

  // A moment of this browser's clock (Date.now()) as a timestamp of the hub's.
  function hubTime(localMs) {
    return new Date(localMs + state.clockOffset).toISOString();
  }

  function noteHubClock(dateHeader) {
    const hub = Date.parse(dateHeader || "");
    if (Number.isNaN(hub)) return;
    // The header has whole seconds: only an offset clearly larger than that is taken.
    const offset = hub + 500 - Date.now();
    state.clockOffset = Math.abs(offset) > 2000 ? offset : 0;
  }

  function ageText(timestamp) {
    const at = Date.parse(timestamp || "");
    if (Number.isNaN(at)) return "never";
    const seconds = Math.max(0, Math.round((hubNow() - at) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  // A <time> whose text ("12 s ago") the clock below keeps current.
  function age(timestamp, prefix = "") {
    const node = el("time", { class: "age" });
    if (timestamp) {
      node.dateTime = timestamp;
      node.title = timestamp;
      node.dataset.ts = timestamp;
    }
    node.dataset.prefix = prefix;
    node.textContent = prefix + ageText(timestamp);
    return node;
  }

  function tick() {
    for (const node of document.querySelectorAll("time[data-ts]")) {
      node.textContent = node.dataset.prefix + ageText(node.dataset.ts);
    }
    renderConnection();
  }

  // --- building the page (text only: nothing the hub sends becomes markup) ------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.dataset[key.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A table cell labelled for the phone layout (one card per row, each cell with its label).
  const cell = (label, attrs, ...children) =>
    el("td", { ...attrs, "data-label": label }, el("div", { class: "cell" }, ...children));
  const badge = (text, kind) => el("span", { class: `badge badge-${kind}`, text });
  const staleLabel = (why) => el("span", { class: "stale-label", title: why, text: "stale" });

  function phaseKind(phase) {
    return { Deployed: "ok", Failed: "bad", Degraded: "warn", Applying: "busy", Pending: "busy",
             Removing: "busy", Removed: "muted" }[phase] || "muted";
  }

  function bar(segments, total, label) {
    const outer = el("div", { class: "bar", role: "img", "aria-label": label, title: label });
    let used = 0;
    for (const [count, kind] of segments) {
      const shown = Math.max(0, Math.min(count, total - used));
      if (!shown || !total) continue;
      const part = el("span", { class: `bar-part bar-${kind}` });
      part.style.width = `${(100 * shown) / total}%`; // CSSOM: allowed by the Content-Security-Policy
      outer.append(part);
      used += shown;
    }
    return outer;
  }

  // --- what the summaries say ------------------------------------------------------------

  function byPrefix(prefix) {
    const found = [];
    for (const [topic, summary] of state.summaries) {
      if (topic.startsWith(SUMMARY + prefix) && summary) found.push(summary);
    }
    return found;
  }

  const fleet = () => state.summaries.get(SUMMARY + "fleet");
  const nodes = () => byPrefix("nodes/").sort((a, b) => a.node.localeCompare(b.node));
  const pools = () => byPrefix("pools/").sort((a, b) => a.pool.localeCompare(b.pool));
  const components = () => byPrefix("components/").sort((a, b) => a.component.localeCompare(b.component));

  // --- rendering ---------------------------------------------------------------------------

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => {
      renderQueued = false;
      render();
    }, 50);
  }

  function render() {
    renderConnection();
    renderOverview();
    renderPools();
    renderNodes();
    renderComponents();
    renderEvents();
    const offline = fleet()?.nodes_offline || 0;
    document.title = `${offline ? `(${offline} offline) ` : ""}edgecollab fleet`;
  }

  function renderOverview() {
    const summary = fleet();
    const cards = $("overview-cards");
    if (!summary) {
      cards.replaceChildren(el("p", { class: "muted", text: state.ready ? "The hub has no fleet summary yet." :
        "Waiting for the hub's summaries…" }));
      $("overview-age").replaceChildren();
      return;
    }
    $("overview-age").replaceChildren(age(summary.observed_at, "changed "));
    const phases = PHASES.filter((p) => summary[`releases_${p.toLowerCase()}`])
      .map((p) => el("li", {}, badge(`${summary[`releases_${p.toLowerCase()}`]} ${p}`, phaseKind(p))));
    cards.replaceChildren(
      el("div", { class: "card stat", "data-stat": "nodes" },
        el("div", { class: "stat-label", text: "Nodes" }),
        el("div", { class: "stat-value" }, el("span", { "data-count": "online", text: summary.nodes_online }),
           el("span", { class: "of", text: ` / ${summary.nodes_total} online` })),
        summary.nodes_offline ? badge(`${summary.nodes_offline} offline`, "offline") : badge("all online", "ok"),
        bar([[summary.nodes_online, "ok"], [summary.nodes_offline, "offline"]], summary.nodes_total,
            `${summary.nodes_online} of ${summary.nodes_total} nodes online`)),
      el("div", { class: "card stat", "data-stat": "pools" },
        el("div", { class: "stat-label", text: "Pools" }),
        el("div", { class: "stat-value", "data-count": "pools", text: summary.pools_total })),
      el("div", { class: "card stat", "data-stat": "components" },
        el("div", { class: "stat-label", text: "Components" }),
        el("div", { class: "stat-value", "data-count": "components", text: summary.components_total })),
      el("div", { class: "card stat", "data-stat": "releases" },
        el("div", { class: "stat-label", text: "Releases" }),
        el("div", { class: "stat-value", "data-count": "releases", text: summary.releases_total }),
        el("ul", { class: "chips" }, phases)),
    );
  }

  function renderPools() {
    const list = pools();
    $("pool-list").replaceChildren(...(list.length ? list.map((p) => {
      const phases = PHASES.filter((phase) => p[`releases_${phase.toLowerCase()}`])
        .map((phase) => el("li", {}, badge(`${p[`releases_${phase.toLowerCase()}`]} ${phase}`, phaseKind(phase))));
      return el("div", { class: "card pool", "data-pool": p.pool },
        el("div", { class: "card-head" }, el("h3", { text: p.pool }), age(p.observed_at, "changed ")),
        el("div", {}, el("strong", { text: `${p.nodes_online} / ${p.nodes_total}` }), " nodes online",
           p.nodes_offline ? [" ", badge(`${p.nodes_offline} offline`, "offline")] : null),
        bar([[p.nodes_online, "ok"], [p.nodes_offline, "offline"]], p.nodes_total,
            `${p.nodes_online} of ${p.nodes_total} nodes online`),
        el("div", { class: "muted" }, `${p.components_total} component${p.components_total === 1 ? "" : "s"}`,
           p.components?.length ? `: ${p.components.join(", ")}` : ""),
        phases.length ? el("ul", { class: "chips" }, phases) : null);
    }) : [el("p", { class: "muted", text: "No pool yet: nodes join one." })]));
  }

  function nodeMatches(n) {
    const words = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
    const text = `${n.node} ${n.pool} ${n.presence} ${n.ready ? "ready" : "not-ready"} ` +
      (n.releases || []).map((r) => `${r.release} ${r.phase} ${r.reason || ""}`).join(" ");
    return words.every((w) => text.toLowerCase().includes(w));
  }

  function renderNodes() {
    const all = nodes();
    const rows = all.filter(nodeMatches).map((n) => {
      const stale = !n.online;
      const why = `${n.node} is offline: this is what it reported before, last seen ${ageText(n.last_seen)}`;
      const conditions = Object.entries(n.conditions || {}).map(([type, status]) =>
        el("li", {}, badge(`${type}${status === "True" ? "" : `: ${status}`}`, status === "True" ? "ok" : "bad")));
      const releases = (n.releases || []).map((r) => el("li", { title: r.message || null },
        badge(`${r.release} r${r.revision}${r.desired_revision !== r.revision ? `→${r.desired_revision}` : ""} ` +
              r.phase + (r.reason ? `: ${r.reason}` : ""), phaseKind(r.phase))));
      return el("tr", { class: stale ? "node stale" : "node", "data-node": n.node, "data-presence": n.presence },
        cell("Node", {}, el("strong", { text: n.node })),
        cell("Pool", {}, n.pool),
        cell("State", { class: "presence" },
             badge(n.online ? "online" : "offline", n.online ? "online" : "offline"),
             n.online && !n.ready && Object.keys(n.conditions || {}).length ? [" ", badge("not ready", "bad")] : null,
             n.agent_version ? el("div", { class: "muted small", text: `agent ${n.agent_version}` }) : null),
        cell("Last seen", {}, age(n.last_seen)),
        cell("Conditions", { class: "reported" },
             conditions.length ? el("ul", { class: "chips" }, conditions) :
               el("span", { class: "muted", text: "not reported" }),
             stale ? staleLabel(why) : null),
        cell("Releases", { class: "reported" },
             releases.length ? el("ul", { class: "chips" }, releases) : el("span", { class: "muted", text: "none" }),
             stale ? staleLabel(why) : null),
      );
    });
    $("node-rows").replaceChildren(...rows);
    $("nodes-empty").hidden = all.length > 0;
    $("node-table").hidden = all.length === 0;
  }

  function releasesOnNodes() {
    const byRelease = new Map();
    for (const n of nodes()) {
      for (const r of n.releases || []) {
        if (!byRelease.has(r.release)) byRelease.set(r.release, []);
        byRelease.get(r.release).push({ ...r, node: n.node, pool: n.pool, online: n.online, last_seen: n.last_seen });
      }
    }
    return byRelease;
  }

  function rolloutKind(rollout) {
    return { complete: "ok", failing: "bad", "waiting for offline nodes": "offline", progressing: "busy" }[rollout] || "muted";
  }

  function progress(counts, title) {
    const { desired = 0, ready = 0, failed = 0, offline = 0, updated = 0 } = counts || {};
    const text = `${ready}/${desired} ready` + (updated !== desired ? ` · ${updated}/${desired} updated` : "") +
      (failed ? ` · ${failed} failed` : "") + (offline ? ` · ${offline} offline` : "");
    return el("div", { class: "progress" },
      el("div", { class: "progress-head" }, el("span", { class: "progress-title", text: title }),
         el("span", { class: "progress-text", text })),
      bar([[ready, "ok"], [failed, "bad"], [offline, "offline"], [updated - ready, "busy"]], desired,
          `${title}: ${text}`));
  }

  function renderComponents() {
    const list = components();
    const onNodes = releasesOnNodes();
    $("component-list").replaceChildren(...(list.length ? list.map((c) => {
      const reported = (onNodes.get(c.component) || []).sort((a, b) => a.node.localeCompare(b.node));
      const perPool = Object.entries(c.pools || {}).sort(([a], [b]) => a.localeCompare(b))
        .map(([pool, counts]) => progress(counts, `pool ${pool}`));
      const missing = Math.max(0, (c.desired || 0) - reported.filter((r) => c.pools && r.pool in c.pools).length);
      const key = `component:${c.component}`;
      const open = state.openDetails.has(key) ? state.openDetails.get(key) : reported.length <= 8;
      const details = el("details", { class: "per-node", open },
        el("summary", { text: `per node (${reported.length})` }),
        el("table", { class: "release-table" },
          el("tbody", {}, reported.map((r) => el("tr", {
            class: r.online ? "" : "stale", "data-node": r.node, "data-release-phase": r.phase },
            el("td", {}, el("strong", { text: r.node }), el("span", { class: "muted", text: ` ${r.pool}` })),
            el("td", {}, badge(r.phase + (r.reason ? `: ${r.reason}` : ""), phaseKind(r.phase)),
               r.message ? el("div", { class: "muted small release-message", text: r.message }) : null),
            el("td", { text: `r${r.revision}${r.desired_revision !== r.revision ? ` → r${r.desired_revision}` : ""}` +
                             (r.desired_revision !== c.revision ? ` (hub: r${c.revision})` : "") }),
            el("td", {}, r.online ? badge("online", "online") : [badge("offline", "offline"), " ",
               staleLabel(`${r.node} is offline: its last report, seen ${ageText(r.last_seen)}`)],
               " ", age(r.last_seen, "seen "))))),
        ),
        missing ? el("p", { class: "muted small", text: `${missing} target node${missing === 1 ? " has" : "s have"} ` +
          "not reported this release yet" }) : null);
      // Remembered across re-renders once the user opens or closes it (a click comes before the toggle).
      details.querySelector("summary").addEventListener("click", () => state.openDetails.set(key, !details.open));
      return el("article", { class: "card component", "data-component": c.component },
        el("div", { class: "card-head" },
           el("h3", {}, c.component, el("span", { class: "muted", text: ` ${c.chart}-${c.chart_version}` })),
           age(c.observed_at, "changed ")),
        el("div", { class: "component-line" }, badge(`revision ${c.revision}`, "muted"), " ",
           badge(c.rollout, rolloutKind(c.rollout)),
           // What unhealthy targets report (CrashLoopBackOff, ImagePullBackOff, ...), counted.
           Object.entries(c.reasons || {}).flatMap(([reason, count]) => [" ", badge(`${count} ${reason}`, "warn")])),
        progress(c, "all targets"),
        perPool,
        details);
    }) : [el("p", { class: "muted", text: "No component yet: edgectl apply -f component.yaml" })]));
  }

  function renderEvents() {
    const list = $("event-list");
    if (state.eventsError) {
      list.replaceChildren(el("li", { class: "muted", text: state.eventsError }));
    } else if (!state.events.length) {
      list.replaceChildren(el("li", { class: "muted", text: state.eventsAt ? "No events yet." : "Loading…" }));
    } else {
      const online = new Map(nodes().map((n) => [n.node, n.online]));
      list.replaceChildren(...state.events.map((e) => el("li", {
        class: `event${online.get(e.node) === false ? " from-offline" : ""}`, "data-node": e.node || "" },
        age(e.at), " ", el("strong", { text: e.node || "" }), " ", badge(e.reason || "event", eventKind(e.reason)),
        e.release ? el("span", { class: "muted", text: ` ${e.namespace ? `${e.namespace}/` : ""}${e.release}` +
          (e.revision ? ` r${e.revision}` : "") }) : null,
        e.message ? el("div", { class: "event-message", text: e.message }) : null)));
    }
    $("events-age").replaceChildren(...(state.eventsAt ? [age(hubTime(state.eventsAt), "polled ")] : []));
  }

  function eventKind(reason) {
    const text = String(reason || "");
    if (/fail|error|refus|reject|notready|crash|degrad|unhealthy/i.test(text)) return "bad";
    if (/ready|deployed|applied|started|joined|renewed/i.test(text)) return "ok";
    return "muted";
  }

  function setConnection(kind) {
    state.connectionKind = kind;
    renderConnection();
  }

  function renderConnection() {
    const node = $("connection");
    const kind = state.connectionKind || "connecting";
    let text;
    if (kind === "live") text = "live";
    else if (kind === "connecting") text = "connecting…";
    else if (kind === "signed-out") text = "no token";
    else {
      const wait = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      text = `disconnected${wait ? ` · retry in ${wait} s` : ""}`;
    }
    node.textContent = text;
    node.className = `conn conn-${kind}`;
    node.dataset.state = kind;
    const down = kind !== "live" && kind !== "signed-out" && state.summaries.size > 0;
    document.body.classList.toggle("disconnected", down);
    const banner = $("banner");
    if (down) {
      const since = state.lastHeard ? ageText(hubTime(state.lastHeard)) : "";
      banner.textContent = "Not connected to the hub: every value below is stale" +
        (since ? ` (last heard from the hub ${since})` : "") + ". Reconnecting…";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  // --- the live stream --------------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class Unauthorized extends Error {}

  async function readStream(token) {
    const controller = new AbortController();
    let stall;
    const heard = () => {
      state.lastHeard = Date.now();
      clearTimeout(stall);
      stall = setTimeout(() => controller.abort(), STALL_MS);
    };
    try {
      const response = await fetch(STREAM_URL, {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
        cache: "no-store", signal: controller.signal,
      });
      if (response.status === 401) throw new Unauthorized();
      if (!response.ok || !response.body) throw new Error(`the hub answered ${response.status}`);
      noteHubClock(response.headers.get("Date"));
      heard();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = "message";
      let data = [];
      let fresh = new Map(); // the summaries of this connection until "ready"
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "ended";
        heard();
        buffer += value;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (data.length) {
              const outcome = onEvent(event, data.join("\n"), fresh);
              if (outcome === "reset") return "reset";
              if (outcome === "ready") fresh = null;
            }
            event = "message";
            data = [];
          } else if (line.startsWith(":")) {
            // a keepalive comment
          } else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event = text;
            else if (field === "data") data.push(text);
          }
        }
      }
    } finally {
      clearTimeout(stall);
      controller.abort();
    }
  }

  function onEvent(event, text, fresh) {
    if (event === "reset") return "reset";
    if (event === "ready") {
      // Everything current has arrived: it replaces what an earlier connection left (gone topics go).
      state.summaries = fresh || state.summaries;
      state.ready = true;
      state.connected = true;
      setConnection("live");
      scheduleRender();
      return "ready";
    }
    if (event !== "summary") return "";
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return "";
    }
    if (!message || typeof message.topic !== "string") return "";
    const target = fresh || state.summaries;
    if (message.summary) target.set(message.topic, message.summary);
    else target.delete(message.topic);
    if (!fresh) scheduleRender();
    return "";
  }

  async function streamForever() {
    let backoff = BACKOFF_FIRST_MS;
    for (;;) {
      const token = getToken();
      if (!token) {
        showLogin();
        return;
      }
      setConnection("connecting");
      let outcome;
      try {
        outcome = await readStream(token);
      } catch (error) {
        if (error instanceof Unauthorized) {
          forgetToken();
          showLogin("The hub refused that token. Paste the viewer token (the file viewer-token in the hub's " +
                    "state directory).");
          return;
        }
        outcome = "error";
      }
      const wasLive = state.connected;
      state.connected = false;
      if (outcome === "reset") {
        backoff = BACKOFF_FIRST_MS; // behind, not broken: start again at once
        continue;
      }
      if (wasLive) backoff = BACKOFF_FIRST_MS;
      const wait = backoff / 2 + Math.random() * (backoff / 2);
      state.retryAt = Date.now() + wait;
      setConnection("disconnected");
      await sleep(wait);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  // --- recent events (polled) -------------------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${getToken()}` }, cache: "no-store" });
    if (response.status === 401) throw Object.assign(new Unauthorized(), { status: 401 });
    if (!response.ok) {
      const error = new Error(`${path}: the hub answered ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  async function fetchEvents() {
    if (state.eventsMode === "all") {
      try {
        const body = await getJson(`/api/v1/events?limit=${EVENTS_SHOWN}`);
        return Array.isArray(body) ? body : body.events || [];
      } catch (error) {
        // A hub without the fleet-wide list answers 404, or 401 to the viewer token (which it accepts on
        // known routes only; the stream took it): ask each node's own events instead.
        if (!(error.status === 404 || error instanceof Unauthorized)) throw error;
        state.eventsMode = "nodes";
      }
    }
    const recent = nodes().sort((a, b) => (b.last_seen || "").localeCompare(a.last_seen || ""))
      .slice(0, EVENTS_NODES_POLLED);
    const lists = await Promise.all(recent.map(async (n) => {
      try {
        const list = await getJson(`/api/v1/nodes/${encodeURIComponent(n.node)}/events?limit=${EVENTS_PER_NODE}`);
        return list.map((e) => ({ ...e, node: e.node || n.node }));
      } catch (error) {
        if (error instanceof Unauthorized) throw error;
        return []; // a node reset meanwhile
      }
    }));
    return lists.flat();
  }

  async function pollEvents() {
    for (;;) {
      if (getToken() && !document.hidden && state.ready) {
        try {
          const events = await fetchEvents();
          events.sort((a, b) => String(b.at || "").localeCompare(String(a.at || "")));
          state.events = events.slice(0, EVENTS_SHOWN);
          state.eventsError = "";
          state.eventsAt = Date.now();
        } catch (error) {
          state.eventsError = error instanceof Unauthorized ? "The hub refused the token for events." :
            `Events unavailable: ${error.message}`;
        }
        renderEvents();
      }
      await sleep(EVENTS_EVERY_MS);
    }
  }

  // --- the hub's warnings (polled) ---------------------------------------------------------

  async function pollHealth() {
    for (;;) {
      if (!document.hidden) {
        try {
          const body = await getJson("/healthz");
          renderHubWarnings(Array.isArray(body.warnings) ? body.warnings : []);
        } catch {
          // The hub is unreachable: the connection banner says so; the warnings shown stay.
        }
      }
      await sleep(HEALTH_EVERY_MS);
    }
  }

  function renderHubWarnings(warnings) {
    const list = $("hub-warnings");
    list.replaceChildren(...warnings.map((text) => el("li", { text: String(text) })));
    list.hidden = warnings.length === 0;
  }

  // --- start ------------------------------------------------------------------------------

  function start() {
    takeTokenFromFragment();
    // A URL with another token opened in this tab changes only the fragment: no page load. Start again with it.
    window.addEventListener("hashchange", () => {
      if (!new URLSearchParams(location.hash.replace(/^#/, "")).get("token")) return;
      takeTokenFromFragment();
      location.reload();
    });
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      $("token-input").value = "";
      setToken(token);
      showDashboard();
      streamForever();
    });
    $("sign-out").addEventListener("click", () => {
      forgetToken();
      location.reload();
    });
    $("node-filter").addEventListener("input", (event) => {
      state.filter = event.target.value;
      renderNodes();
    });
    setInterval(tick, 1000);
    pollEvents();
    pollHealth();
    if (getToken()) {
      showDashboard();
      streamForever();
    } else {
      showLogin();
    }
  }

  start();
})();
