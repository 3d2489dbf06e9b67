// The sluice dashboard: three pages drawn from the admin server's JSON API (/api/...),
// refreshed every second. Plain DOM, no framework: rows are kept by key and updated in place,
// so a checked box or an open dead letter survives the refresh.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const REFRESH_MS = 1000;
const TOKEN_KEY = "sluice-admin-token";

// ---------------------------------------------------------------- small helpers

/** An element with attributes (class, data-*, on* handlers) and children (nodes or text). */
function el(tag, attrs = {}, ...children) {
  const svg = ["svg", "polyline", "line", "text", "rect", "path"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const short = (sha) => (sha ? sha.slice(0, 12) : "—");
const num = (n) => (n === undefined || n === null ? "—" : Number(n).toLocaleString("en"));
const rate = (r) => (r === undefined || r === null ? "—" : r >= 100 ? Math.round(r).toLocaleString("en") : r.toFixed(1));

function ago(ms) {
  if (ms === undefined || ms === null) return "—";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function when(ms) {
  if (!ms) return "—";
  // Sweden's locale writes ISO 8601's "2026-12-07 05:54:04", in the viewer's time zone.
  return new Date(ms).toLocaleString("sv-SE");
}

function toast(message, kind = "info") {
  const t = $("#toast");
  t.textContent = message;
  t.className = `show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.className = ""), 5000);
}

/** Replace the children of `node` only if the text differs (no flicker, no lost selection). */
function setText(node, text) {
  text = String(text);
  if (node.textContent !== text) node.textContent = text;
}

/**
 * Keep the rows of `tbody` in step with `items`: one row per key, made by `make(item)` the
 * first time and brought up to date by `update(row, item)` each time; rows whose key is
 * gone are removed. Row order follows `items`.
 */
function syncRows(tbody, items, key, make, update) {
  const have = new Map([...tbody.children].map((r) => [r.dataset.key, r]));
  const keep = new Set();
  let prev = null;
  for (const item of items) {
    const k = String(key(item));
    keep.add(k);
    let row = have.get(k);
    if (!row) {
      row = make(item);
      row.dataset.key = k;
    }
    update(row, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== row) tbody.insertBefore(row, want);
    prev = row;
  }
  for (const [k, r] of have) if (!keep.has(k)) r.remove();
}

/** A table with a header and a tbody; `empty` is shown while it has no rows. */
function table(cls, headers, empty) {
  const tbody = el("tbody");
  const note = el("p", { class: "empty", text: empty });
  const t = el("table", { class: cls }, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))), tbody);
  const wrap = el("div", { class: "table" }, t, note);
  const observe = () => (note.hidden = tbody.children.length > 0);
  new MutationObserver(observe).observe(tbody, { childList: true });
  observe();
  return { wrap, tbody };
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A request that gives up after `ms` (a host whose Redis hangs answers late or never). */
function fetchWithin(path, options = {}, ms = 8000) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ms);
  return fetch(path, { ...options, signal: abort.signal }).finally(() => clearTimeout(timer));
}

async function api(path) {
  let res;
  try {
    res = await fetchWithin(path, { headers: { Accept: "application/json" } });
  } catch (e) {
    throw new ApiError(0, e.name === "AbortError" ? "the host did not answer within 8 s" : "the host does not answer");
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, body.error || res.statusText);
  return body;
}

/** Ask for the admin token in the page's dialog; resolves to the token or null. */
function askToken(why) {
  const dialog = $("#token-dialog");
  const input = $("#token-input");
  setText($("#token-why"), why || "");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  return new Promise((resolve) => {
    const done = (value) => {
      $("#token-form").onsubmit = null;
      $("#token-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    $("#token-form").onsubmit = (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      // An HTTP header carries Latin-1 only; a token with other characters can never match.
      if (/[^\x21-\x7e]/.test(token)) {
        setText($("#token-why"), "A token has printable ASCII characters only, without spaces.");
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      showToken();
      done(token);
    };
    $("#token-cancel").onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
    input.focus();
  });
}

const ACTION_WAIT_MS = 5 * 60_000;

/** An action: POST with the admin token, asking for it when there is none or it is refused. */
async function act(path, body = {}) {
  let token = sessionStorage.getItem(TOKEN_KEY);
  for (let tries = 0; tries < 3; tries++) {
    if (!token) {
      token = await askToken(tries ? "That token was refused." : "");
      if (!token) throw new ApiError(401, "cancelled: no admin token");
    }
    let res;
    try {
      // An action runs to its end on the host even if this page stops waiting.
      res = await fetchWithin(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      }, ACTION_WAIT_MS);
    } catch (e) {
      throw new ApiError(0, e.name === "AbortError"
        ? `no answer within ${ACTION_WAIT_MS / 60000} min: the host carries on with it; the counters will show what it did`
        : "the host does not answer");
    }
    const answer = await res.json().catch(() => ({}));
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showToken();
      token = null;
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, answer.error || res.statusText);
    return answer;
  }
  throw new ApiError(401, "the admin token was refused");
}

let readOnly = false;

function showToken() {
  const b = $("#token-button");
  b.hidden = readOnly;
  const set = !!sessionStorage.getItem(TOKEN_KEY);
  setText(b, set ? "Token set · forget" : "Admin token");
  b.classList.toggle("set", set);
}

$("#token-button").addEventListener("click", () => {
  if (sessionStorage.getItem(TOKEN_KEY)) {
    sessionStorage.removeItem(TOKEN_KEY);
    showToken();
    toast("The admin token is forgotten: the dashboard is read-only again.");
  } else {
    askToken("");
  }
});

/** A button that runs `action` (async), disabled meanwhile; errors become a toast. */
function button(label, attrs, action) {
  const b = el("button", { type: "button", ...attrs, text: label });
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await action();
    } catch (e) {
      toast(e.message, "error");
    } finally {
      b.disabled = false;
      refreshSoon();
    }
  });
  return b;
}

// ---------------------------------------------------------------- charts

/** Per-second rates of counter `field` from series points (first point has none). */
function rates(points, field) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const dt = (points[i].t - points[i - 1].t) / 1000;
    const d = (points[i][field] || 0) - (points[i - 1][field] || 0);
    out.push({ t: points[i].t, v: dt > 0 ? Math.max(0, d) / dt : 0 });
  }
  return out;
}

const values = (points, field) => points.map((p) => ({ t: p.t, v: p[field] ?? 0 }));

/** `data` (one point a second) as a small line, scaled to its own peak. */
function sparkline(svg, data) {
  const w = 120, h = 24;
  svg.replaceChildren();
  if (data.length < 2) return;
  const max = Math.max(1, ...data.map((d) => d.v));
  const pts = data.map((d, i) => `${((i / (data.length - 1)) * w).toFixed(1)},${(h - 1 - (d.v / max) * (h - 2)).toFixed(1)}`);
  svg.append(el("polyline", { points: pts.join(" "), class: "spark" }));
}

/** A line chart of `lines` ([{data, class, label}]) over the last ten minutes. */
function chart(svg, lines, unit) {
  const w = 420, h = 140, left = 40, bottom = 16;
  svg.replaceChildren();
  const all = lines.flatMap((l) => l.data);
  const now = hostNow();
  const t0 = Math.min(now - 60_000, ...all.map((d) => d.t));
  const max = Math.max(1, ...all.map((d) => d.v));
  const x = (t) => left + ((t - t0) / (now - t0)) * (w - left - 4);
  const top = 22; // room for the legend above the highest point
  const y = (v) => top + (1 - v / max) * (h - bottom - top - 4);
  svg.append(el("line", { x1: left, y1: y(0), x2: w - 4, y2: y(0), class: "axis" }));
  svg.append(el("line", { x1: left, y1: y(max), x2: w - 4, y2: y(max), class: "grid" }));
  svg.append(el("text", { x: left - 6, y: y(max) + 4, class: "tick end", text: rate(max) }));
  svg.append(el("text", { x: left - 6, y: y(0) + 4, class: "tick end", text: "0" }));
  svg.append(el("text", { x: left, y: h - 3, class: "tick", text: ago(now - t0) + " ago" }));
  svg.append(el("text", { x: w - 4, y: h - 3, class: "tick end", text: "now" }));
  let legend = left + 8;
  for (const l of lines) {
    if (l.data.length > 1) {
      svg.append(el("polyline", { points: l.data.map((d) => `${x(d.t).toFixed(1)},${y(d.v).toFixed(1)}`).join(" "), class: `line ${l.class}` }));
    }
    svg.append(el("text", { x: legend, y: 14, class: `legend ${l.class}`, text: l.label }));
    legend += 6 * l.label.length + 14;
  }
  if (unit) svg.append(el("text", { x: w - 4, y: 14, class: "tick end", text: unit }));
}

// ---------------------------------------------------------------- job state

/** How a job looks: its state, and whether it is stuck or failing by its recent points. */
function health(job, points) {
  const s = job.status || {};
  if (job.state !== "running") return job.state;
  const recent = points.slice(-11);
  if (recent.length >= 2) {
    const first = recent[0], last = recent[recent.length - 1];
    if (last.failed > first.failed || last.dead > first.dead) return "failing";
    const waiting = (last.lag || 0) + (last.pending || 0) - (last.scheduled || 0);
    if (recent.length >= 11 && waiting > 0 && last.received === first.received) return "stuck";
  }
  if (!job.hosts.length) return "unserved";
  if ((s.dead_letters || 0) > 0) return "dead letters";
  return "ok";
}

/** A state as a class name ("dead letters" -> "state-dead-letters"): never one of a cell's. */
const stateClass = (state) => `state-${state.replace(/ /g, "-")}`;

function badge(state) {
  return el("span", { class: `badge ${stateClass(state)}`, text: state });
}

// ---------------------------------------------------------------- pages

let page = null; // { refresh: async () => void }
let series = {};
let seriesFailing = null;
// The host's clock minus this browser's: times from the host are drawn against the host's now.
let skew = 0;
const hostNow = () => Date.now() + skew;

/** The series of every job (the last `points` of each), or all of one job's. */
async function loadSeries(job, points) {
  const query = job ? `job=${encodeURIComponent(job)}` : `points=${points}`;
  const answer = await api(`/api/series?${query}`);
  series = answer.jobs || {};
  seriesFailing = answer.failing || null;
  if (answer.now) skew = answer.now - Date.now();
}

function overview() {
  const hosts = table("hosts", ["host", "machine", "sluice", "up", "jobs held", "last seen", ""], "No host has checked in.");
  const jobs = table("jobs", ["job", "state", "plugin", "acked", "failed", "dead letters", "pending", "lag", "events/s", "last 2 min"], "No jobs: start one with `sluice job start` or a [[job]] in the config.");
  const summary = el("div", { class: "cards" });
  const root = el("section", { id: "overview" },
    summary,
    el("h2", { text: "Jobs" }), jobs.wrap,
    el("h2", { text: "Hosts" }), hosts.wrap);
  const card = (label, cls) => {
    const v = el("div", { class: `value ${cls}` });
    summary.append(el("div", { class: "card" }, el("div", { class: "label", text: label }), v));
    return v;
  };
  const cHosts = card("live hosts", "hosts-live");
  const cJobs = card("jobs running", "jobs-running");
  const cRate = card("events/s", "events-rate");
  const cDead = card("dead letters", "dead-letters");

  async function refresh() {
    const [jobList, hostList] = await Promise.all([api("/api/jobs"), api("/api/hosts?all=true"), loadSeries(null, 122)]);
    let total = 0;
    syncRows(jobs.tbody, jobList, (j) => j.name,
      (j) => el("tr", { "data-job": j.name },
        el("td", { class: "name" }, el("a", { href: `#/job/${encodeURIComponent(j.name)}`, text: j.name })),
        el("td", { class: "state" }), el("td", { class: "plugin" }),
        el("td", { class: "acked num" }), el("td", { class: "failed num" }), el("td", { class: "dead-letters num" }),
        el("td", { class: "pending num" }), el("td", { class: "lag num" }), el("td", { class: "rate num" }),
        el("td", { class: "spark" }, el("svg", { viewBox: "0 0 120 24", class: "sparkline" }))),
      (row, j) => {
        const points = series[j.name] || [];
        const s = j.status || {};
        const r = rates(points, "received");
        const now = r.length ? r[r.length - 1].v : 0;
        total += now;
        const h = health(j, points);
        row.className = stateClass(h);
        const state = $(".state", row);
        if (state.dataset.shown !== h) {
          state.replaceChildren(badge(h));
          state.dataset.shown = h;
          state.title = j.reason || "";
        }
        setText($(".plugin", row), `${j.plugin} @ ${short(j.version || j.current)}`);
        setText($(".acked", row), num(s.acked));
        setText($(".failed", row), num(s.failed));
        setText($(".dead-letters", row), num(s.dead_letters));
        setText($(".pending", row), num(s.pending));
        setText($(".lag", row), num(s.lag));
        setText($(".rate", row), rate(now));
        sparkline($(".sparkline", row), r.slice(-120));
      });
    syncRows(hosts.tbody, hostList, (h) => h.consumer,
      (h) => el("tr", {}, el("td", { class: "consumer" }), el("td", { class: "machine" }), el("td", { class: "version" }),
        el("td", { class: "uptime" }), el("td", { class: "held" }), el("td", { class: "seen" }), el("td", { class: "live" })),
      (row, h) => {
        row.className = h.live ? "live" : "gone";
        setText($(".consumer", row), h.consumer);
        setText($(".machine", row), `${h.hostname} (pid ${h.pid})`);
        setText($(".version", row), h.sluice);
        // Both times by the host's record and Redis's clock, not this browser's.
        setText($(".uptime", row), h.live ? ago(h.seen_at + h.seen_ago_ms - h.started_at) : "—");
        const held = Object.keys(h.jobs || {});
        setText($(".held", row), held.length ? `${held.length}: ${held.join(", ")}` : "none");
        setText($(".seen", row), `${ago(h.seen_ago_ms)} ago`);
        setText($(".live", row), h.live ? "live" : h.stopped ? "stopped" : "gone");
      });
    setText(cHosts, hostList.filter((h) => h.live).length);
    setText(cJobs, jobList.filter((j) => j.state === "running").length);
    setText(cRate, rate(total));
    setText(cDead, num(jobList.reduce((n, j) => n + ((j.status || {}).dead_letters || 0), 0)));
  }
  return { root, refresh };
}

/** A dead letter's fields as the inspect panel shows them. */
function showFields(d) {
  return d.fields.map(([k, v]) => `${k} = ${v}`).join("\n") +
    `\n\nplugin ${short(d.plugin)}${d.cut ? "\n(long values cut: shown whole on inspect)" : ""}` +
    `${d.fields_in === "source" ? "\n(fields too large to copy: held in the source stream)" : ""}`;
}

/** Dead letters a job page lists, and how much of each field value it shows. */
const LETTERS = 100;
const PREVIEW = 300;

function jobPage(name) {
  const path = `/api/jobs/${encodeURIComponent(name)}`;
  const title = el("h1", {}, el("span", { text: name }), el("span", { class: "state" }));
  const facts = el("dl", { class: "facts" });
  const counters = el("div", { class: "cards counters" });
  const charts = {
    rate: el("svg", { viewBox: "0 0 420 140", class: "chart", id: "chart-rate" }),
    failures: el("svg", { viewBox: "0 0 420 140", class: "chart", id: "chart-failures" }),
    backlog: el("svg", { viewBox: "0 0 420 140", class: "chart", id: "chart-backlog" }),
  };
  const pending = table("pending", ["entry", "host", "deliveries", "idle"], "Nothing pending.");
  const retries = table("retries", ["entry", "due", "attempts", "last error"], "No retries scheduled.");
  const letters = table("dead-letters", ["", "dead letter", "source entry", "deliveries", "error", "dead since", ""], "No dead letters.");
  const lifecycle = table("lifecycle", ["event", "run", "at"], "No lifecycle events yet.");
  const aggregates = table("aggregates", ["aggregate", "key by", "threshold", "open windows", "fired"], "");
  const aggSection = el("div", { hidden: true }, el("h2", { text: "Aggregates" }), aggregates.wrap);
  const replayed = el("ul", { id: "replayed" });
  const more = el("p", { class: "more", hidden: true });
  const selected = new Set();
  // Replayed dead letters: new source id -> { letter, status, error }, newest last.
  const watching = new Map();
  const FOLLOW = 20; // the newest this many are shown and followed until they settle
  const settled = (status) => ["done", "dead", "skipped"].includes(status);
  // The dead-letter list is fetched again only when the job's dead-letter counters move, after
  // an action, or every 15 s (each may hold a large entry's fields).
  let lettersSeen = null;
  let lettersAt = 0;
  // What each part showed last: kept when a request fails, so a hiccup empties nothing.
  let last = { dlq: { dead_letters: [] }, queue: { pending: [], retries: [] }, life: [], aggs: [] };

  const selectedIds = () => [...selected];
  let replayedTotal = 0;
  async function replay(all) {
    const body = all ? { all: true } : { ids: selectedIds() };
    if (!all && !body.ids.length) throw new Error("select dead letters first");
    if (all && !confirm(`Replay every dead letter of ${name}?`)) return;
    const answer = await act(`${path}/dlq/replay`, body);
    let n = 0;
    for (const r of answer) {
      if (r.new_id) {
        watching.delete(r.new_id);
        watching.set(r.new_id, { letter: r.id, status: "pending" });
        selected.delete(r.id);
        n++;
      }
    }
    // Only the newest are kept (and followed).
    for (const k of [...watching.keys()].slice(0, Math.max(0, watching.size - FOLLOW))) watching.delete(k);
    replayedTotal += n;
    lettersSeen = null;
    toast(`replayed ${n} dead letter${n === 1 ? "" : "s"}`);
  }
  async function purge(all) {
    const body = all ? { all: true } : { ids: selectedIds() };
    if (!all && !body.ids.length) throw new Error("select dead letters first");
    if (!confirm(all ? `Delete every dead letter of ${name}?` : `Delete ${body.ids.length} dead letter(s)?`)) return;
    const answer = await act(`${path}/dlq/purge`, body);
    for (const id of body.ids || []) selected.delete(id);
    if (all) selected.clear();
    lettersSeen = null;
    toast(`purged ${answer.purged} dead letter${answer.purged === 1 ? "" : "s"}`);
  }

  const lookupInput = el("input", { id: "lookup-id", placeholder: "entry id, e.g. 1733541234567-0", size: 28 });
  const lookupOut = el("pre", { id: "lookup-result", class: "json", hidden: true });
  async function lookup() {
    const id = lookupInput.value.trim();
    if (!id) return;
    lookupOut.hidden = false;
    try {
      lookupOut.textContent = JSON.stringify(await api(`${path}/events/${encodeURIComponent(id)}`), null, 2);
    } catch (e) {
      lookupOut.textContent = e.message;
    }
  }

  const actions = el("div", { class: "actions" },
    button("Stop", { id: "job-stop", class: "needs-token" }, async () => { await act(`${path}/stop`); toast(`${name}: stopping on every host`); }),
    button("Resume", { id: "job-resume", class: "needs-token" }, async () => { await act(`${path}/resume`); toast(`${name}: resuming on every host`); }));

  const root = el("section", { id: "job", "data-job": name },
    el("p", { class: "crumbs" }, el("a", { href: "#/", text: "Overview" }), " / job"),
    el("div", { class: "title" }, title, actions),
    facts, counters,
    el("div", { class: "charts" },
      el("figure", {}, el("figcaption", { text: "Throughput" }), charts.rate),
      el("figure", {}, el("figcaption", { text: "Failures" }), charts.failures),
      el("figure", {}, el("figcaption", { text: "Backlog" }), charts.backlog)),
    el("h2", { text: "Dead letters" }),
    el("div", { class: "actions needs-token" },
      button("Replay selected", { id: "replay-selected", class: "primary" }, () => replay(false)),
      button("Replay all", { id: "replay-all" }, () => replay(true)),
      button("Purge selected", { id: "purge-selected", class: "danger" }, () => purge(false)),
      button("Purge all", { id: "purge-all", class: "danger" }, () => purge(true))),
    letters.wrap, more, replayed,
    aggSection,
    el("div", { class: "two" },
      el("div", {}, el("h2", { text: "Pending" }), pending.wrap),
      el("div", {}, el("h2", { text: "Scheduled retries" }), retries.wrap)),
    el("div", { class: "two" },
      el("div", {}, el("h2", { text: "Event lookup" }),
        el("form", { class: "lookup", onsubmit: (e) => { e.preventDefault(); lookup(); } },
          lookupInput, el("button", { type: "submit", id: "lookup-go", text: "Look up" })),
        lookupOut),
      el("div", {}, el("h2", { text: "Lifecycle" }), lifecycle.wrap)));

  const counter = {};
  for (const [key, label] of [["received", "received"], ["acked", "acked"], ["skipped", "skipped"], ["retried", "retried"],
    ["failed", "failed"], ["dead", "dead-lettered"], ["dead_letters", "dead letters now"], ["pending", "pending"],
    ["scheduled", "retries scheduled"], ["lag", "lag"], ["duplicates", "duplicates"], ["conflicts", "conflicts"]]) {
    counter[key] = el("div", { class: `value ${key}` });
    counters.append(el("div", { class: "card", title: label }, el("div", { class: "label", text: label }), counter[key]));
  }

  function fact(label, value) {
    return [el("dt", { text: label }), el("dd", {}, value)];
  }

  const missing = el("p", { class: "notice error", hidden: true });
  root.prepend(missing);

  async function refresh() {
    let job;
    try {
      job = await api(path);
      missing.hidden = true;
      root.classList.remove("gone");
    } catch (e) {
      if (e.status !== 404) throw e;
      // Deleted (or never was): say so, and keep looking in case it is started.
      setText(missing, `No job named “${name}” in the registry. `);
      missing.append(el("a", { href: "#/", text: "Back to the overview" }));
      missing.hidden = false;
      root.classList.add("gone");
      return;
    }
    // The list shows the oldest LETTERS: new dead letters change it only while it is not full,
    // fewer dead letters (replayed, purged) always may; and every 15 s in any case.
    const count = (job.status || {}).dead_letters ?? 0;
    const full = last.dlq.dead_letters.length >= LETTERS;
    const fetchLetters = lettersSeen === null || count < lettersSeen ||
      (count !== lettersSeen && !full) || Date.now() - lettersAt > 15_000;
    // A part that fails keeps showing what it showed (the connection light says why).
    const keep = (promise, part) => promise.then((v) => (last[part] = v), () => last[part]);
    let lettersRead = false;
    const readLetters = () => api(`${path}/dlq?limit=${LETTERS}&preview=${PREVIEW}`)
      .then((v) => { lettersRead = true; return v; });
    const [dlq, queue, life, aggs] = await Promise.all([
      fetchLetters ? keep(readLetters(), "dlq") : last.dlq,
      keep(api(`${path}/pending?limit=20`), "queue"),
      keep(api(`${path}/lifecycle?limit=20`), "life"),
      keep(api(`${path}/aggregates`), "aggs"), loadSeries(name)]);
    if (lettersRead) {
      lettersSeen = count;
      lettersAt = Date.now();
    }
    const points = series[name] || [];
    const s = job.status || {};
    const h = health(job, points);
    const state = $(".state", title);
    if (state.dataset.shown !== h) {
      state.replaceChildren(badge(h));
      state.dataset.shown = h;
    }
    facts.replaceChildren(
      ...fact("source", job.source),
      ...fact("plugin", `${job.plugin} @ ${short(job.version || job.current)}${job.current && job.version && job.current !== job.version ? ` (moving to ${short(job.current)})` : ""}`),
      ...fact("registry state", job.state + (job.reason ? ` — ${job.reason}` : "")),
      ...fact("run", `${job.run} (a host last started it ${when(job.started_at)})`),
      ...fact("hosts", job.hosts.length ? job.hosts.map((x) => `${x.consumer} (${short(x.version)})`).join(", ") : "none"),
      ...(job.refused ? fact("refused", `${job.refused.host || ""}: ${job.refused.reason || JSON.stringify(job.refused)}`) : []));
    for (const [key, node] of Object.entries(counter)) setText(node, num(s[key]));
    $("#job-stop").disabled = job.state === "stopped" || job.state === "finished";
    $("#job-resume").disabled = job.state === "running" || job.state === "waiting";
    chart(charts.rate, [
      { data: rates(points, "received"), class: "received", label: "received/s" },
      { data: rates(points, "acked"), class: "acked", label: "acked/s" }], "events/s");
    chart(charts.failures, [
      { data: rates(points, "failed"), class: "failed", label: "failed/s" },
      { data: rates(points, "dead"), class: "dead", label: "dead-lettered/s" }], "events/s");
    chart(charts.backlog, [
      { data: values(points, "lag"), class: "lag", label: "lag" },
      { data: values(points, "pending"), class: "pending", label: "pending" },
      { data: values(points, "dead_letters"), class: "dead", label: "dead letters" }], "entries");

    more.hidden = !dlq.next;
    setText(more, `The oldest ${dlq.dead_letters.length} of ${num(s.dead_letters)} dead letters are shown; replay all and purge all take every one.`);
    const present = new Set(dlq.dead_letters.map((d) => d.id));
    for (const id of [...selected]) if (!present.has(id)) selected.delete(id);
    syncRows(letters.tbody, dlq.dead_letters, (d) => d.id,
      (d) => {
        const box = el("input", { type: "checkbox", class: "pick needs-token", "aria-label": `select ${d.id}` });
        box.addEventListener("change", () => (box.checked ? selected.add(d.id) : selected.delete(d.id)));
        const fields = el("pre", { class: "fields", hidden: true });
        const inspect = el("button", { type: "button", class: "inspect link", text: "inspect" });
        inspect.addEventListener("click", async () => {
          if (fields.hidden && fields.dataset.cut === "true") {
            // The list has values cut short: fetch this one whole.
            try {
              const whole = await api(`${path}/dlq/${encodeURIComponent(d.id)}`);
              setText(fields, showFields(whole));
              fields.dataset.whole = "true";
            } catch (e) {
              toast(e.message, "error");
            }
          }
          fields.hidden = !fields.hidden;
          setText(inspect, fields.hidden ? "inspect" : "hide");
        });
        return el("tr", { "data-id": d.id, "data-source": d.source_id },
          el("td", {}, box), el("td", { class: "id mono" }), el("td", { class: "source-id mono" }),
          el("td", { class: "deliveries num" }), el("td", { class: "error" }, el("span", { class: "msg" }), fields),
          el("td", { class: "dead-at" }), el("td", {}, inspect));
      },
      (row, d) => {
        $(".pick", row).checked = selected.has(d.id);
        setText($(".id", row), d.id);
        setText($(".source-id", row), d.source_id);
        setText($(".deliveries", row), d.deliveries);
        setText($(".error .msg", row), d.error);
        setText($(".dead-at", row), when(d.dead_at));
        const fields = $(".fields", row);
        fields.dataset.cut = String(!!d.cut);
        if (fields.dataset.whole !== "true") setText(fields, showFields(d));
      });

    // Replayed dead letters (the newest few): their new entries, followed until they settle.
    await Promise.all([...watching].filter(([, r]) => !settled(r.status)).map(async ([newId, r]) => {
      try {
        const st = await api(`${path}/events/${encodeURIComponent(newId)}`);
        r.status = st.status;
        r.error = st.error;
      } catch (e) {
        // Not known yet, or a hiccup: asked again next time.
      }
    }));
    const shownStatus = (st) => (st === "done" ? "acked" : st);
    replayed.replaceChildren(...[...watching].reverse().map(([newId, r]) => el("li", { "data-id": newId, "data-letter": r.letter },
      "dead letter ", el("span", { class: "mono", text: r.letter }), " replayed as ",
      el("span", { class: "mono", text: newId }), ": ",
      el("span", { class: `status ${shownStatus(r.status)}`, text: shownStatus(r.status) }),
      r.error ? el("span", { class: "error", text: ` (${r.error})` }) : null)),
    ...(replayedTotal > watching.size ? [el("li", { class: "more", text: `and ${num(replayedTotal - watching.size)} more replayed from this page` })] : []));

    syncRows(pending.tbody, queue.pending, (p) => p.id,
      () => el("tr", {}, el("td", { class: "mono id" }), el("td", { class: "host" }), el("td", { class: "num deliveries" }), el("td", { class: "idle" })),
      (row, p) => {
        setText($(".id", row), p.id);
        setText($(".host", row), p.consumer);
        setText($(".deliveries", row), p.deliveries);
        setText($(".idle", row), ago(p.idle_ms));
      });
    syncRows(retries.tbody, queue.retries, (r) => r.id,
      () => el("tr", {}, el("td", { class: "mono id" }), el("td", { class: "due" }), el("td", { class: "num attempts" }), el("td", { class: "error" })),
      (row, r) => {
        setText($(".id", row), r.id);
        setText($(".due", row), r.due_at > hostNow() ? `in ${ago(r.due_at - hostNow())}` : "now");
        setText($(".attempts", row), r.attempts ?? "—");
        setText($(".error", row), r.error || "");
      });
    aggSection.hidden = aggs.length === 0;
    syncRows(aggregates.tbody, aggs, (a) => a.name,
      () => el("tr", {}, el("td", { class: "name" }), el("td", { class: "key-by" }), el("td", { class: "threshold" }),
        el("td", { class: "num open" }), el("td", { class: "num fired" })),
      (row, a) => {
        setText($(".name", row), a.name);
        setText($(".key-by", row), a.key_by || "(one window for all)");
        const within = a.within_s ? ` within ${a.within_s} s${a.sliding ? ", sliding" : ""}` : "";
        setText($(".threshold", row), a.count ? `${num(a.count)} events${within}` : within.trim() || "—");
        setText($(".open", row), num(a.open));
        setText($(".fired", row), num(a.fired));
      });
        syncRows(lifecycle.tbody, life, (e) => e.id,
      () => el("tr", {}, el("td", { class: "kind" }), el("td", { class: "num run" }), el("td", { class: "at" })),
      (row, e) => {
        setText($(".kind", row), e.kind);
        setText($(".run", row), e.run);
        setText($(".at", row), when(e.at));
      });
  }
  return { root, refresh };
}

function pluginsPage() {
  const list = el("div", { class: "plugins" });
  const root = el("section", { id: "plugins" }, el("h1", { text: "Plugins" }), list);
  const cards = new Map();

  function card(name) {
    const versions = table("versions", ["version", "size", "loaded", "by", "from", ""], "No versions.");
    const running = table("running", ["job", "host", "version"], "No live host runs it.");
    const refusals = el("ul", { class: "refusals" });
    const head = el("div", { class: "head" });
    const node = el("article", { class: "plugin", "data-plugin": name },
      el("h2", { text: name }), head,
      el("h3", { text: "Versions" }), versions.wrap,
      el("h3", { text: "Where it runs" }), running.wrap,
      refusals);
    return { node, head, versions, running, refusals };
  }

  async function refresh() {
    const [plugins, hosts] = await Promise.all([api("/api/plugins"), api("/api/hosts")]);
    const all = await Promise.all(plugins.map((p) => api(`/api/plugins/${encodeURIComponent(p.name)}/versions`).catch(() => [])));
    const names = new Set(plugins.map((p) => p.name));
    for (const [n, c] of cards) if (!names.has(n)) { c.node.remove(); cards.delete(n); }
    if (!plugins.length) list.replaceChildren(el("p", { class: "empty", text: "No plugins: load one with `sluice plugin load NAME FILE`." }));
    else list.querySelector(":scope > p.empty")?.remove();
    plugins.forEach((p, i) => {
      let c = cards.get(p.name);
      if (!c) {
        c = card(p.name);
        cards.set(p.name, c);
      }
      list.append(c.node);
      c.head.replaceChildren(
        el("span", { text: "current " }), el("span", { class: "mono current", text: short(p.sha256) }),
        ` · ${num(p.size)} bytes · loaded ${when(p.loaded_at)} by ${p.by} · ${p.versions} version${p.versions === 1 ? "" : "s"}`,
        p.jobs.length ? ` · jobs: ${p.jobs.join(", ")}` : " · no running job");
      // One row per distinct version, newest load first.
      const seen = new Set();
      const distinct = all[i].filter((v) => !seen.has(v.sha256) && seen.add(v.sha256));
      syncRows(c.versions.tbody, distinct, (v) => v.sha256,
        (v) => el("tr", { "data-sha": v.sha256 },
          el("td", { class: "mono sha", title: v.sha256, text: short(v.sha256) }), el("td", { class: "num size" }),
          el("td", { class: "at" }), el("td", { class: "by" }), el("td", { class: "origin" }),
          el("td", { class: "do" }, el("span", { class: "badge current-badge", text: "current" }),
            button("Roll back to this", { class: "rollback needs-token" }, async () => {
              if (!confirm(`Make ${short(v.sha256)} the current version of ${p.name}? Hosts switch within a second.`)) return;
              const now = await act(`/api/plugins/${encodeURIComponent(p.name)}/rollback`, { to: v.sha256 });
              toast(`${p.name}: back to ${short(now.sha256)}`);
            }))),
        (row, v) => {
          const current = v.sha256 === p.sha256;
          row.classList.toggle("is-current", current);
          setText($(".size", row), num(v.size));
          setText($(".at", row), when(v.loaded_at));
          setText($(".by", row), v.by);
          setText($(".origin", row), v.origin);
          const refused = p.refused[v.sha256];
          row.classList.toggle("refused", !!refused);
          $(".rollback", row).hidden = current;
          $(".current-badge", row).hidden = !current;
        });
      const runs = [];
      for (const h of hosts) {
        for (const [job, hj] of Object.entries(h.jobs || {})) {
          if (p.jobs.includes(job)) runs.push({ job, host: h.consumer, version: hj.version });
        }
      }
      syncRows(c.running.tbody, runs, (r) => `${r.job}/${r.host}`,
        () => el("tr", {}, el("td", { class: "job" }), el("td", { class: "host" }), el("td", { class: "mono version" })),
        (row, r) => {
          $(".job", row).replaceChildren(el("a", { href: `#/job/${encodeURIComponent(r.job)}`, text: r.job }));
          setText($(".host", row), r.host);
          setText($(".version", row), short(r.version) + (r.version === p.sha256 ? "" : " (not current)"));
        });
      c.refusals.replaceChildren(...Object.entries(p.refused).map(([sha, r]) =>
        el("li", { class: "error" }, `refused ${short(sha)}`, r.host ? ` by ${r.host}` : "", `: ${r.reason || JSON.stringify(r)}`)));
    });
  }
  return { root, refresh };
}

// ---------------------------------------------------------------- routing and refresh

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  let next;
  const decoded = (text) => {
    try {
      return decodeURIComponent(text);
    } catch (e) {
      return text; // a stray % in a typed address: take it as it is
    }
  };
  if (hash.startsWith("/job/")) next = jobPage(decoded(hash.slice(5)));
  else if (hash === "/plugins") next = pluginsPage();
  else next = overview();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", a.getAttribute("href") === `#${hash}`);
  page = next;
  $("#main").replaceChildren(next.root);
  refreshSoon();
}

let timer = null;
let running = false;
async function refreshNow() {
  clearTimeout(timer);
  if (running) return;
  running = true;
  const current = page;
  try {
    await current.refresh();
    if (seriesFailing) {
      setText($("#connection"), `charts paused: ${seriesFailing}`);
      $("#connection").className = "connection down";
    } else {
      setText($("#connection"), `live · ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`);
      $("#connection").className = "connection ok";
    }
  } catch (e) {
    setText($("#connection"), e.status === 404 ? e.message : `no answer: ${e.message}`);
    $("#connection").className = "connection down";
  } finally {
    running = false;
    if (!document.hidden) timer = setTimeout(refreshNow, REFRESH_MS);
  }
}
function refreshSoon() {
  clearTimeout(timer);
  timer = setTimeout(refreshNow, 0);
}

/** Whether this server takes actions at all (no token file: read-only, nothing to offer). */
async function loadInfo() {
  try {
    const info = await api("/api/info");
    readOnly = !!info.read_only;
    document.body.classList.toggle("read-only", readOnly);
    $("#mode").hidden = !readOnly;
    showToken();
  } catch (e) {
    setTimeout(loadInfo, 2000);
  }
}

document.addEventListener("visibilitychange", () => !document.hidden && refreshSoon());
window.addEventListener("hashchange", route);
showToken();
loadInfo();
route();
