// weir console: a single page over the same /v1 routes the CLI uses.
//
// Pages (hash routes): `#/` the applications, components and cluster, with
// upload and deploy; `#/apps/NAME` one application: its topology (laid out
// by dagre), charts (uPlot) of throughput and lag from the status samples
// this page took, tasks, swaps, dead letters, a store browser, and the swap
// and delete actions. Everything is polled; nothing is kept on the server
// for the console. The API token (when the server has one) is kept in this
// tab's sessionStorage and sent as a bearer token.
"use strict";

const POLL_MS = 1000;
const HISTORY_MS = 5 * 60 * 1000;
const DEAD_LETTERS_SHOWN = 50;

const session = {
  token: sessionStorage.getItem("weir-token") || "",
  writesNeedToken: false,
  readsNeedToken: false,
};

// ---- helpers -------------------------------------------------------------

/** An element: h("td", {class: "num"}, "12"). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** An API answer that was not 2xx: status, the error code, detail, problems. */
class ApiFailure extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.problems = (body && body.problems) || [];
    this.body = body;
  }
}

async function api(method, path, body, contentType, extraHeaders) {
  const headers = Object.assign({}, extraHeaders || {});
  if (session.token) headers["Authorization"] = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
  const response = await fetch(path, { method, headers, body });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text, keepBigIntegers) : null; } catch (_) { json = { detail: text }; }
  if (!response.ok) throw new ApiFailure(response.status, json);
  return { status: response.status, body: json };
}

/** JSON.parse reviver: integers past 2^53 (record values may hold i64s)
 * become BigInts from their source text instead of rounded numbers. */
function keepBigIntegers(_key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source || "")) {
    return BigInt(context.source);
  }
  return value;
}

/** JSON.stringify with BigInts written as the integers they are. */
function toJson(value) {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? (JSON.rawJSON ? JSON.rawJSON(v.toString()) : v.toString()) : v));
}

/** Shows a message above the page; errors stay until the next action. */
function flash(message, kind) {
  const el = document.getElementById("flash");
  el.hidden = !message;
  el.className = kind || "info";
  el.textContent = message || "";
}

/** The message for a failed action, with the spec's field paths. */
function describeFailure(action, e) {
  if (!(e instanceof ApiFailure)) return `${action}: ${e.message}`;
  let text = `${action}: ${e.status} ${e.code || ""} — ${e.message}`;
  if (e.status === 401 || e.status === 403) text += "\n(enter the API token in the box at the top right)";
  return text;
}

function problemList(e) {
  if (!(e instanceof ApiFailure) || e.problems.length === 0) return null;
  return h("ul", { class: "problems" },
    e.problems.map(p => h("li", {}, h("code", {}, p.path || "(spec)"), ": ", p.message)));
}

const fmt = {
  num: n => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en")),
  rate: r => (r === undefined || r === null ? "–" : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en")),
  time: ms => (ms ? new Date(ms).toLocaleTimeString() : "–"),
  preview: v => {
    const text = typeof v === "string" ? v : toJson(v);
    return text && text.length > 160 ? text.slice(0, 160) + "…" : text;
  },
};

function stateCell(state) {
  return h("td", { class: `state-${state}` }, state);
}

/** A link for an http(s) URL; anything else (a `javascript:` URL planted in
 * the catalog, say) is shown as text only. */
function linkIfHttp(url) {
  if (!url) return "–";
  return /^https?:\/\//i.test(url) ? h("a", { href: url }, url) : url;
}

function canAct() {
  return !session.writesNeedToken || session.token !== "";
}

/** A form's submit button, disabled in read-only mode. */
function actionButton(label, attrs) {
  const b = h("button", Object.assign({ type: "submit" }, attrs || {}), label);
  if (!canAct()) { b.disabled = true; b.title = "read-only: enter the API token to act"; }
  return b;
}

// ---- polling and routing ----------------------------------------------------

let page = null; // the current page: { stop() }
let pageNumber = 0; // bumped on every navigation: a late answer for an old page writes nothing

function route() {
  if (page) page.stop();
  pageNumber++;
  flash("");
  const main = document.getElementById("main");
  main.replaceChildren();
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/apps\/([^/]+)$/);
  let app = null;
  try { app = m ? decodeURIComponent(m[1]) : null; } catch (_) { app = null; }
  page = app !== null ? appPage(main, app) : overviewPage(main);
}

/** Runs `f` only while the page that asked is still the current one. */
function forThisPage(f) {
  const mine = pageNumber;
  return (...args) => { if (mine === pageNumber) f(...args); };
}

/** Calls `tick` now and every POLL_MS until stopped; errors show, polling
 * goes on. `tick` gets `alive()`: false once the page was left (check it
 * after every await before writing outside the page's own elements). */
function poller(tick) {
  let stopped = false;
  let timer = null;
  const alive = () => !stopped;
  const run = async () => {
    if (stopped) return;
    try { await tick(alive); } catch (e) { if (!stopped) showPollError(e); }
    if (!stopped) timer = setTimeout(run, POLL_MS);
  };
  run();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

function showPollError(e) {
  const el = document.getElementById("poll-error");
  if (el) el.textContent = describeFailure("reading", e);
}

function crumbs(...parts) {
  document.getElementById("crumbs").replaceChildren(...parts.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

// ---- the overview: applications, components, cluster -----------------------

function overviewPage(main) {
  crumbs(h("a", { href: "#/" }, "applications"));
  const appsBody = h("tbody");
  const componentsBody = h("tbody");
  const clusterSection = h("section", { id: "cluster", hidden: true }, h("h2", {}, "Cluster"));
  main.append(
    h("p", { id: "poll-error", class: "problems" }),
    h("section", { id: "apps" }, h("h2", {}, "Applications"),
      h("table", {}, h("thead", {}, h("tr", {}, ["application", "state", "guarantee", "backend", "tasks", "lag", "in/s", "out/s"].map(t => h("th", {}, t)))), appsBody)),
    clusterSection,
    h("div", { class: "grid" }, uploadForm(() => refreshComponents()), deployForm()),
    h("section", { id: "components" }, h("h2", {}, "Components"),
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "versions"))), componentsBody)),
  );
  const rates = new Rates();
  const refreshComponents = async () => {
    const { body } = await api("GET", "/v1/components");
    componentsBody.replaceChildren(
      ...Object.entries(body.components || {}).map(([name, versions]) =>
        h("tr", {}, h("td", {}, name), h("td", {}, (Array.isArray(versions) ? versions : Object.keys(versions)).map(v => (typeof v === "object" ? v.version : v)).join(", ")))),
      ...(body.unnamed || []).map(sha => h("tr", {}, h("td", { class: "muted" }, "(unnamed)"), h("td", { class: "preview" }, `sha256:${sha}`))));
  };
  refreshComponents().catch(forThisPage(showPollError));
  return poller(async alive => {
    const { body } = await api("GET", "/v1/apps");
    const statuses = await Promise.all(body.apps.map(a => api("GET", `/v1/apps/${encodeURIComponent(a.name)}`).then(r => r.body).catch(() => null)));
    const now = Date.now();
    appsBody.replaceChildren(...body.apps.map((a, i) => {
      const s = statuses[i] || {};
      const tasks = s.tasks || [];
      const r = appRates(rates, a.name, s, now);
      return h("tr", { "data-app": a.name },
        h("td", {}, h("a", { href: `#/apps/${encodeURIComponent(a.name)}` }, a.name)),
        stateCell(a.state), h("td", {}, s.guarantee || "–"), h("td", {}, s.backend || "–"),
        h("td", { class: "num" }, tasks.length), h("td", { class: "num" }, fmt.num(a.lag)),
        h("td", { class: "num" }, fmt.rate(r.in)), h("td", { class: "num" }, fmt.rate(r.out)));
    }));
    if (body.apps.length === 0) appsBody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No application is deployed. Deploy a spec below, or `weir deploy app.yaml`.")));
    await renderCluster(clusterSection);
    if (alive()) document.getElementById("poll-error").textContent = "";
  });
}

function sum(items, f) {
  return items.reduce((acc, x) => acc + (f(x) || 0), 0);
}

function emittedOf(task) {
  return Object.values(task.emitted || {}).reduce((a, b) => a + b, 0);
}



/** Per-second rates from successive counter samples, by key. A sample
 * taken at the same time as the last one (another instance's heartbeat,
 * not renewed since the previous poll) keeps the last rate. */
class Rates {
  constructor() { this.last = new Map(); }
  sample(key, t, inCount, outCount) {
    const prev = this.last.get(key);
    if (prev && t <= prev.t) return prev.rate;
    const rate = !prev ? { in: null, out: null } : {
      in: Math.max(0, inCount - prev.inCount) / ((t - prev.t) / 1000),
      out: Math.max(0, outCount - prev.outCount) / ((t - prev.t) / 1000),
    };
    this.last.set(key, { t, inCount, outCount, rate });
    return rate;
  }
}

/** The instances of a cluster view still alive (a dead one's last tasks
 * have moved to the others). */
function liveInstances(status) {
  return ((status.cluster && status.cluster.instances) || []).filter(i => i.alive);
}

function outOf(task) {
  return task.emitted ? emittedOf(task) : task.records_out || 0;
}

/** An application's records in and out per second: from its tasks here, or
 * in a cluster from every live instance's heartbeat (each at its own time). */
function appRates(rates, key, status, now) {
  if (!status.cluster) {
    const tasks = status.tasks || [];
    return rates.sample(key, now, sum(tasks, t => t.records_in), sum(tasks, outOf));
  }
  let total = { in: null, out: null };
  for (const i of liveInstances(status)) {
    const tasks = i.tasks || [];
    const r = rates.sample(`${key}/${i.id}`, i.at_ms || now, sum(tasks, t => t.records_in), sum(tasks, outOf));
    if (r.in !== null) total = { in: (total.in || 0) + r.in, out: (total.out || 0) + r.out };
  }
  return total;
}

let inNoCluster = false;

async function renderCluster(section) {
  if (inNoCluster) return;
  let overview;
  try { overview = (await api("GET", "/v1/cluster")).body; } catch (e) {
    if (e instanceof ApiFailure && e.status === 404) { section.hidden = true; inNoCluster = true; return; }
    throw e;
  }
  section.hidden = false;
  section.replaceChildren(h("h2", {}, `Cluster ${overview.cluster || ""} (this is ${overview.instance})`), instancesTable(overview.instances || []));
}

/** Instances of the cluster: from `/v1/cluster` (each with all its `apps`) or
 * from one application's `cluster` view (each with that app's generation). */
function instancesTable(instances) {
  const applied = i => (i.apps
    ? Object.entries(i.apps).map(([app, a]) => `${app}: gen ${a.generation} ${a.state}${a.error ? ` (${a.error})` : ""}`).join("; ")
    : i.generation !== null && i.generation !== undefined ? `gen ${i.generation} ${i.state}${i.error ? ` (${i.error})` : ""}` : "");
  const taskCount = i => (i.apps ? sum(Object.values(i.apps), a => (a.tasks || []).length) : (i.tasks || []).length);
  return h("table", { class: "instances" },
    h("thead", {}, h("tr", {}, ["instance", "URL", "alive", "applied", "tasks"].map(t => h("th", {}, t)))),
    h("tbody", {}, instances.map(i => h("tr", { "data-instance": i.id },
      h("td", {}, i.id), h("td", {}, linkIfHttp(i.url)),
      h("td", { class: `alive-${!!i.alive}` }, i.alive ? "alive" : "not alive"),
      h("td", {}, applied(i) || "–"),
      h("td", { class: "num" }, taskCount(i))))));
}

function uploadForm(afterUpload) {
  const file = h("input", { type: "file", name: "file", accept: ".wasm", required: true });
  const name = h("input", { name: "name", placeholder: "name (optional)" });
  const version = h("input", { name: "version", placeholder: "version (default: next)" });
  const result = h("div", { class: "result" });
  const form = h("form", { class: "action", id: "upload-form" }, file, name, version, actionButton("Upload"));
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    if (!file.files[0]) return;
    const q = new URLSearchParams();
    if (name.value) q.set("name", name.value);
    if (version.value) q.set("version", version.value);
    try {
      const bytes = await file.files[0].arrayBuffer();
      const { body } = await api("POST", `/v1/components?${q}`, bytes, "application/wasm");
      const label = body.name ? `${body.name}@${body.version}` : `sha256:${body.sha256}`;
      result.textContent = `uploaded ${label}`;
      flash(`uploaded ${label}`, "info");
      afterUpload();
    } catch (e) {
      result.textContent = "";
      flash(describeFailure("upload", e), "error");
    }
  });
  return h("section", {}, h("h2", {}, "Upload a component"), form, result);
}

function deployForm(initialName, initialText) {
  const name = h("input", { name: "app", placeholder: "application name", required: true, value: initialName || "" });
  const text = h("textarea", { name: "spec", placeholder: "the spec, YAML or JSON (components as name@version or sha256:…)" });
  text.value = initialText || "";
  const problems = h("div", { class: "spec-problems" });
  const form = h("form", { id: "deploy-form" }, h("div", { class: "action" }, name, actionButton("Deploy")), text, problems);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    problems.replaceChildren();
    try {
      const { status, body } = await api("PUT", `/v1/apps/${encodeURIComponent(name.value)}`, text.value, "application/yaml");
      flash(status === 202 ? `deploy of ${name.value} accepted, not yet applied everywhere` : `${body.action} ${name.value}`, "info");
    } catch (e) {
      flash(describeFailure(`deploy ${name.value}`, e), "error");
      const list = problemList(e);
      if (list) problems.append(list);
    }
  });
  return h("section", {}, h("h2", {}, "Deploy or update a spec"), form);
}

// ---- one application --------------------------------------------------------

function appPage(main, name) {
  crumbs(h("a", { href: "#/" }, "applications"), h("a", { href: `#/apps/${encodeURIComponent(name)}` }, name));
  const summary = h("div", { id: "summary" });
  const graph = h("div", { id: "graph" });
  const tasksBody = h("tbody");
  const swapsBody = h("tbody");
  const deadBody = h("tbody");
  const instances = h("section", { id: "instances", hidden: true });
  const throughputChart = h("div", { class: "chart", id: "chart-throughput" });
  const lagChart = h("div", { class: "chart", id: "chart-lag" });
  const swapForm = h("form", { class: "action", id: "swap-form" });
  const storeSection = h("section", { id: "stores" }, h("h2", {}, "Stores"));
  main.append(
    h("p", { id: "poll-error", class: "problems" }),
    h("section", {}, h("h2", {}, name), summary,
      h("form", { class: "action", id: "delete-form", onsubmit: ev => deleteApp(ev, name) }, actionButton("Delete application", { class: "danger" }))),
    h("section", {}, h("h2", {}, "Topology"), graph),
    h("section", {}, h("h2", {}, "Throughput and lag (last minutes)"), h("div", { class: "charts" }, throughputChart, lagChart)),
    h("section", {}, h("h2", {}, "Tasks"),
      h("table", { id: "tasks" }, h("thead", {}, h("tr", {}, ["task", "instance", "partition", "version", "state", "in/s", "out/s", "records in", "lag", "restore", "last error"].map(t => h("th", {}, t)))), tasksBody)),
    instances,
    h("section", {}, h("h2", {}, "Swap a processor's version"), swapForm),
    h("section", {}, h("h2", {}, "Swaps and updates"),
      h("table", { id: "swaps" }, h("thead", {}, h("tr", {}, ["#", "started", "kind", "from", "to", "state", "switched · passed", "longest pause", "error"].map(t => h("th", {}, t)))), swapsBody)),
    h("section", {}, h("h2", {}, "Dead letters (latest first)"),
      h("table", { id: "dead-letters" }, h("thead", {}, h("tr", {}, ["offset", "time", "key", "error", "kind", "processor", "source", "value"].map(t => h("th", {}, t)))), deadBody)),
    storeSection,
  );

  const history = { t: [], in: [], out: [], lag: [] };
  const charts = {
    throughput: makeChart(throughputChart, "records/s", [{ label: "in/s", stroke: "#1565c0" }, { label: "out/s", stroke: "#2e7d32" }]),
    lag: makeChart(lagChart, "lag", [{ label: "lag", stroke: "#b26a00" }]),
  };
  const rates = new Rates();
  const taskRates = new Rates();
  let drawnTopology = null;
  let swapFormFor = null;
  let storesFor = null;
  let deadTopic = null;
  const deadSeen = { known: null, warnUntil: new Map() };
  let recentDeadByProcessor = new Map();
  let tick = 0;

  return poller(async alive => {
    const { body: s } = await api("GET", `/v1/apps/${encodeURIComponent(name)}`);
    if (!alive()) return;
    const now = Date.now();
    const tasks = s.tasks || [];
    const r = appRates(rates, "app", s, now);
    summary.replaceChildren(h("table", {}, h("tbody", {},
      h("tr", {}, h("th", {}, "state"), stateCell(s.state), h("th", {}, "guarantee"), h("td", {}, s.guarantee || "–"), h("th", {}, "backend"), h("td", {}, s.backend)),
      h("tr", {}, h("th", {}, "lag"), h("td", { class: "num", id: "app-lag" }, fmt.num(s.lag)), h("th", {}, "in/s"), h("td", { class: "num" }, fmt.rate(r.in)), h("th", {}, "out/s"), h("td", { class: "num" }, fmt.rate(r.out))),
      h("tr", {}, h("th", {}, "components"), h("td", { colspan: 5 }, Object.entries(s.component_versions || {}).map(([p, v]) => `${p}: ${v}`).join(" · "))))));

    if (r.in !== null) {
      history.t.push(now / 1000); history.in.push(r.in); history.out.push(r.out); history.lag.push(s.lag);
      while (history.t.length && history.t[0] < (now - HISTORY_MS) / 1000) { history.t.shift(); history.in.shift(); history.out.shift(); history.lag.shift(); }
      charts.throughput.setData([history.t, history.in, history.out]);
      charts.lag.setData([history.t, history.lag]);
    }

    if (s.topology) {
      const key = JSON.stringify(s.topology);
      if (key !== drawnTopology) { drawTopology(graph, s.topology); drawnTopology = key; }
      paintHealth(graph, s, recentDeadByProcessor);
      deadTopic = s.topology.dead_letter_topic;
    }
    renderTasks(tasksBody, s, now, taskRates);
    renderSwaps(swapsBody, s.swaps || []);
    renderInstances(instances, s.cluster);
    const specKey = s.spec ? toJson(s.spec) : null;
    if (specKey && swapFormFor !== specKey) {
      // Rebuilt on any change of the spec: a swap sends the spec as it runs now.
      await buildSwapForm(swapForm, name, s.spec, s.cluster ? s.cluster.generation : null);
      swapFormFor = specKey;
    }
    if (s.topology && storesFor === null) { storesFor = name; buildStoreBrowser(storeSection, name, s.topology); }
    if (deadTopic && tick % 2 === 0) recentDeadByProcessor = await renderDeadLetters(deadBody, deadTopic, deadSeen);
    tick++;
    if (alive()) document.getElementById("poll-error").textContent = "";
  });
}

function makeChart(el, title, series) {
  const width = Math.max(320, Math.min(640, el.clientWidth || 480));
  return new uPlot({
    title, width, height: 180,
    scales: { x: { time: true } },
    series: [{}].concat(series.map(s => Object.assign({ width: 1.5, points: { show: false } }, s))),
    axes: [{}, { size: 60 }],
  }, [[], ...series.map(() => [])], el);
}

/** Lays the topology out with dagre (sub-topologies as clusters) and draws it as SVG. */
function drawTopology(container, topology) {
  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  g.setGraph({ rankdir: "LR", nodesep: 24, ranksep: 48, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const sub of topology.subtopologies) g.setNode(`sub:${sub.id}`, { label: `sub-topology ${sub.id} · ${sub.partitions} partitions`, cluster: true });
  for (const n of topology.nodes) {
    const lines = nodeLines(n);
    const width = Math.max(90, 7.2 * Math.max(...lines.map(l => l.length)) + 20);
    g.setNode(n.id, { node: n, lines, width, height: 20 + 15 * lines.length });
    if (n.subtopology !== null && n.subtopology !== undefined && n.kind !== "sink") g.setParent(n.id, `sub:${n.subtopology}`);
  }
  topology.edges.forEach((e, i) => g.setEdge(e.from, e.to, { kind: e.kind }, `e${i}`));
  dagre.layout(g);

  const width = g.graph().width, height = g.graph().height;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "topology" });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#607080" }))));
  for (const id of g.nodes()) {
    const n = g.node(id);
    if (!n.cluster) continue;
    root.append(svg("g", { class: "cluster", "data-id": id },
      svg("rect", { x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height, rx: 6 }),
      svg("text", { x: n.x - n.width / 2 + 6, y: n.y - n.height / 2 + 12 }, n.label)));
  }
  for (const e of g.edges()) {
    const edge = g.edge(e);
    const d = edge.points.map((p, i) => `${i ? "L" : "M"} ${p.x} ${p.y}`).join(" ");
    root.append(svg("g", { class: `edge kind-${edge.kind}`, "data-from": e.v, "data-to": e.w, "data-kind": edge.kind },
      svg("path", { d, "marker-end": edge.kind === "store" || edge.kind === "reads-store" ? "" : "url(#arrow)" })));
  }
  for (const id of g.nodes()) {
    const n = g.node(id);
    if (n.cluster) continue;
    const x = n.x - n.width / 2, y = n.y - n.height / 2;
    const group = svg("g", { class: `node kind-${n.node.kind}`, "data-id": id, "data-kind": n.node.kind },
      svg("rect", { x, y, width: n.width, height: n.height, rx: n.node.kind === "processor" ? 8 : 2 }));
    n.lines.forEach((line, i) => group.append(svg("text", { x: n.x, y: y + 17 + 15 * i, class: i ? "sub" : "" }, line)));
    group.append(svg("title", {}, `${n.node.kind} ${n.node.name}`));
    root.append(group);
  }
  container.replaceChildren(root);
}

function nodeLines(n) {
  switch (n.kind) {
    case "processor": return [n.name, shortComponent(n.component)];
    case "source": return [n.name, `source · ${n.topic}`];
    case "table": return [n.name, `table · ${n.topic}`];
    case "global-table": return [n.name, `global table · ${n.topic}`];
    case "repartition": return [n.name, `repartition · ${n.topic}`];
    case "store": return [n.name, "store"];
    case "sink": return [n.name, "sink"];
    default: return [n.name];
  }
}

/** sha256 → `name@version` of every named component, from /v1/components. */
const componentNames = new Map();

async function learnComponentNames() {
  const { body } = await api("GET", "/v1/components");
  for (const [name, versions] of Object.entries(body.components || {})) {
    for (const v of Array.isArray(versions) ? versions : []) if (v && v.sha256) componentNames.set(v.sha256, `${name}@${v.version}`);
  }
  return body;
}

/** A component reference for people: its name@version when it has one, else a short sha. */
function shortComponent(c) {
  if (!c) return "";
  if (!c.startsWith("sha256:")) return c;
  return componentNames.get(c.slice(7)) || c.slice(0, 19) + "…";
}

/** Colours processors: failed tasks of their sub-topology, recent dead letters. */
function paintHealth(container, status, recentDeadByProcessor) {
  const everyTask = (status.tasks || []).concat(liveInstances(status).flatMap(i => i.tasks || []));
  const failedSubs = new Set(everyTask.filter(t => t.state === "failed" || t.error).map(subtopologyOf));
  for (const el of container.querySelectorAll("g.node.kind-processor")) {
    const id = el.getAttribute("data-id");
    const node = status.topology.nodes.find(n => n.id === id);
    const health = failedSubs.has(node.subtopology) ? "fail" : recentDeadByProcessor.has(node.name) ? "warn" : "ok";
    el.classList.remove("health-ok", "health-warn", "health-fail");
    el.classList.add(`health-${health}`);
    el.setAttribute("data-health", health);
    const version = (status.component_versions || {})[node.name];
    const label = el.querySelectorAll("text")[1];
    if (label && version && version !== "(unnamed)") label.textContent = version;
  }
}

/** A task's sub-topology: in its status, or the first part of its id (`1_3`). */
function subtopologyOf(task) {
  return task.subtopology ?? Number(String(task.id).split("_")[0]);
}

function renderTasks(body, status, now, taskRates) {
  const versions = status.component_versions || {};
  const processorsOf = sub => ((status.topology && status.topology.nodes) || []).filter(n => n.kind === "processor" && n.subtopology === sub).map(n => n.name);
  const rows = [];
  const local = status.cluster ? null : "this instance";
  const sources = status.cluster
    ? liveInstances(status).flatMap(i => (i.tasks || []).map(t => ({ instance: i.id, at: i.at_ms, task: t })))
    : (status.tasks || []).map(t => ({ instance: local, at: now, task: t }));
  // This instance's tasks have every counter; another instance's, the brief
  // its heartbeat carries (partition, state, lag, restore progress).
  const here = status.cluster ? status.cluster.instance : local;
  const detailed = new Map((status.tasks || []).map(t => [t.id, t]));
  for (const { instance, at, task: brief } of sources) {
    const t = instance === here && detailed.has(brief.id) ? Object.assign({}, brief, detailed.get(brief.id)) : brief;
    // Another instance's counters are as of its last heartbeat.
    const r = taskRates.sample(`${instance}/${t.id}`, instance === here ? now : at || now, t.records_in || 0, outOf(t));
    const lag = t.inputs ? sum(t.inputs, i => i.lag) : t.lag;
    const restoring = t.restore && (t.state === "restoring" || t.restore[0] < t.restore[1]);
    const restore = restoring ? `${fmt.num(t.restore[0])} / ${fmt.num(t.restore[1])}`
      : t.restore_ms !== undefined && t.restore_ms !== null ? `done in ${t.restore_ms} ms` : "–";
    rows.push(h("tr", { "data-task": t.id, "data-instance": instance || "" },
      h("td", {}, t.id), h("td", {}, instance || "–"), h("td", { class: "num" }, t.partition),
      h("td", {}, processorsOf(subtopologyOf(t)).map(p => `${p}: ${versions[p] || "?"}`).join(", ")),
      stateCell(t.state),
      h("td", { class: "num" }, fmt.rate(r.in)), h("td", { class: "num" }, fmt.rate(r.out)),
      h("td", { class: "num records-in" }, fmt.num(t.records_in)), h("td", { class: "num" }, fmt.num(lag)),
      h("td", {}, restore), h("td", { class: "preview" }, t.error || "")));
  }
  body.replaceChildren(...rows);
}

function renderSwaps(body, swaps) {
  body.replaceChildren(...swaps.slice().reverse().map(s => h("tr", { "data-swap": s.id },
    h("td", {}, s.id), h("td", {}, fmt.time(s.started_ms)), h("td", {}, s.kind),
    h("td", {}, changed(s.from, s.to, "from")),
    h("td", {}, changed(s.from, s.to, "to")),
    stateCell(s.state), h("td", { class: "num" }, `${s.switched}/${s.tasks} · ${s.passed}`),
    h("td", { class: "num" }, s.max_pause_ms !== undefined ? `${s.max_pause_ms.toFixed(2)} ms` : "–"),
    h("td", { class: "preview" }, s.error || ""))));
}

/** The processors an update changed, with their component before or after. */
function changed(from, to, side) {
  const names = Object.keys(Object.assign({}, from, to)).filter(p => (from || {})[p] !== (to || {})[p]);
  const refs = side === "from" ? from || {} : to || {};
  return (names.length ? names : Object.keys(refs)).map(p => `${p}: ${shortComponent(refs[p]) || "–"}`).join(", ");
}

function renderInstances(section, cluster) {
  if (!cluster) { section.hidden = true; return; }
  section.hidden = false;
  section.replaceChildren(h("h2", {}, `Instances (generation ${cluster.generation})`), instancesTable(cluster.instances || []));
}

/** The latest dead letters of the topic, newest first. Returns the
 * processors that dead-lettered a record in the last 15 s of this page's
 * polls (`seen` remembers the letters already shown), which paint amber. */
async function renderDeadLetters(body, topic, seen) {
  const { body: topics } = await api("GET", "/v1/topics");
  const info = (topics.topics || []).find(t => t.name === topic);
  const now = Date.now();
  const recent = () => new Map([...seen.warnUntil].filter(([, until]) => until > now));
  if (!info) { body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No dead letter yet."))); return recent(); }
  const { body: read } = await api("GET", `/v1/topics/${encodeURIComponent(topic)}/records?last=${DEAD_LETTERS_SHOWN}&limit=${DEAD_LETTERS_SHOWN * Math.max(1, info.partitions || 1)}`);
  const records = (read.records || []).slice().sort((a, b) => (b.timestamp - a.timestamp) || (b.offset - a.offset)).slice(0, DEAD_LETTERS_SHOWN);
  const known = new Set();
  body.replaceChildren(...records.map(rec => {
    const hd = Object.fromEntries(rec.headers || []);
    const id = `${rec.partition}:${rec.offset}`;
    known.add(id);
    if (seen.known && !seen.known.has(id) && hd["weir.processor"]) seen.warnUntil.set(hd["weir.processor"], now + 15000);
    return h("tr", { "data-offset": `${rec.partition}:${rec.offset}` },
      h("td", { class: "num" }, `${rec.partition}:${rec.offset}`), h("td", {}, fmt.time(rec.timestamp)), h("td", {}, rec.key === null || rec.key === undefined ? "–" : fmt.preview(rec.key)),
      h("td", { class: "dl-error" }, hd["weir.error"] || ""), h("td", { class: "dl-kind" }, hd["weir.error.kind"] || ""),
      h("td", {}, hd["weir.processor"] || ""),
      h("td", {}, `${hd["weir.source.topic"] || "?"}/${hd["weir.source.partition"] || "?"}@${hd["weir.source.offset"] || "?"}`),
      h("td", { class: "preview", title: fmt.preview(rec.value) }, fmt.preview(rec.value)));
  }));
  if (records.length === 0) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No dead letter yet.")));
  seen.known = known;
  return recent();
}

/** Processor → a registered component version; the update is the running spec with that one reference changed. */
async function buildSwapForm(form, app, spec, generation) {
  const body = await learnComponentNames();
  const choices = [];
  for (const [name, versions] of Object.entries(body.components || {})) {
    const list = Array.isArray(versions) ? versions : Object.keys(versions);
    for (const v of list) { const version = typeof v === "object" ? v.version : v; choices.push(`${name}@${version}`); }
  }
  const processor = h("select", { name: "processor" }, Object.keys(spec.processors).map(p => h("option", { value: p }, `${p} (${shortComponent(spec.processors[p].component)})`)));
  const version = h("select", { name: "version" }, choices.map(c => h("option", { value: c }, c)));
  const note = choices.length === 0 ? h("span", { class: "muted" }, "Upload a named component version on the applications page first.") : null;
  form.replaceChildren(...[processor, h("span", {}, "→"), version, actionButton("Swap"), note].filter(Boolean));
  form.onsubmit = async ev => {
    ev.preventDefault();
    const updated = structuredClone(spec);
    updated.processors[processor.value].component = version.value;
    flash(`swapping ${processor.value} to ${version.value}…`, "info");
    try {
      // In a cluster, only over the generation this form was built from:
      // a deploy in between makes it 409 instead of undoing that deploy.
      const extra = generation !== null && generation !== undefined ? { "If-Match": String(generation) } : {};
      const { body: d } = await api("PUT", `/v1/apps/${encodeURIComponent(app)}`, toJson(updated), "application/json", extra);
      const u = d.update;
      flash(u ? `update ${u.id}: ${u.state}${u.max_pause_ms !== undefined ? `, longest pause ${u.max_pause_ms.toFixed(2)} ms` : ""}` : d.action, "info");
    } catch (e) {
      flash(describeFailure(`swap ${processor.value}`, e), "error");
    }
  };
}

function buildStoreBrowser(section, app, topology) {
  const flashHere = forThisPage(flash);
  const stores = topology.nodes.filter(n => n.kind === "store").map(n => n.name);
  if (stores.length === 0) { section.append(h("p", { class: "muted" }, "This application has no store.")); return; }
  const store = h("select", { name: "store" }, stores.map(s => h("option", { value: s }, s)));
  const key = h("input", { name: "key", placeholder: "key, or a prefix" });
  const results = h("tbody");
  const show = entries => results.replaceChildren(...(entries.length
    ? entries.map(e => h("tr", {}, h("td", {}, fmt.preview(e.key)), h("td", { class: "num" }, e.partition ?? "–"),
      h("td", { class: "served-by" }, e.served_by || "this instance"), h("td", { class: "preview" }, fmt.preview(e.value))))
    : [h("tr", {}, h("td", { colspan: 4, class: "muted" }, "nothing found"))]));
  const run = async exact => {
    const base = `/v1/apps/${encodeURIComponent(app)}/stores/${encodeURIComponent(store.value)}`;
    try {
      if (exact) {
        const { body } = await api("GET", `${base}/keys/${encodeURIComponent(key.value)}`);
        show([{ key: key.value, partition: body.partition, served_by: body.served_by, value: body.value }]);
      } else {
        const { body } = await api("GET", `${base}?prefix=${encodeURIComponent(key.value)}&limit=100`);
        show(body.entries || []);
      }
    } catch (e) {
      if (e instanceof ApiFailure && e.status === 404 && exact) show([]);
      else flashHere(describeFailure("query", e), "error");
    }
  };
  const form = h("form", { class: "action", id: "store-form" }, store, key,
    h("button", { type: "submit", name: "lookup" }, "Look up key"),
    h("button", { type: "button", name: "scan", onclick: () => run(false) }, "Scan prefix"));
  form.addEventListener("submit", ev => { ev.preventDefault(); run(true); });
  section.append(form, h("table", { id: "store-results" }, h("thead", {}, h("tr", {}, ["key", "partition", "served by", "value"].map(t => h("th", {}, t)))), results),
    h("p", { class: "muted" }, "Served by interactive queries: keys on another instance are fetched from it. Showing the first 100 entries."));
  run(false); // the first entries at once, before anyone asks
}

async function deleteApp(ev, name) {
  ev.preventDefault();
  if (!confirm(`Delete ${name} and its state?`)) return;
  try {
    await api("DELETE", `/v1/apps/${encodeURIComponent(name)}`);
    flash(`deleted ${name}`, "info");
    location.hash = "#/";
  } catch (e) {
    flash(describeFailure(`delete ${name}`, e), "error");
  }
}

// ---- start ------------------------------------------------------------------

/** Which routes need the token, from the server's own OpenAPI document. */
async function learnSecurity() {
  try {
    const doc = (await api("GET", "/v1/openapi.json")).body;
    const needs = op => op && Array.isArray(op.security) && op.security.some(s => s.bearer);
    session.writesNeedToken = needs(doc.paths["/v1/apps/{name}"] && doc.paths["/v1/apps/{name}"].put);
    session.readsNeedToken = needs(doc.paths["/v1/apps"] && doc.paths["/v1/apps"].get);
  } catch (e) {
    session.writesNeedToken = session.readsNeedToken = e instanceof ApiFailure && (e.status === 401 || e.status === 403);
  }
  showMode();
}

function showMode() {
  const mode = document.getElementById("mode");
  if (!session.writesNeedToken) mode.textContent = "no token configured: reads and actions open";
  else if (session.token) mode.textContent = "token set";
  else mode.textContent = session.readsNeedToken ? "this weir needs a token, also to read" : "read-only: enter the API token to act";
  mode.className = session.writesNeedToken && !session.token ? "readonly-note" : "";
}

document.getElementById("token-form").addEventListener("submit", ev => {
  ev.preventDefault();
  session.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("weir-token", session.token);
  document.getElementById("token").value = "";
  showMode();
  route();
});
document.getElementById("token-clear").addEventListener("click", () => {
  session.token = "";
  sessionStorage.removeItem("weir-token");
  showMode();
  route();
});
window.addEventListener("hashchange", route);
learnSecurity().then(route);
