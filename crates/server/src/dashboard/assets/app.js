// drover dashboard: live job lists, live job pages and logs; hand-written, no dependencies.
"use strict";

// ANSI SGR colours (30-37, 90-97, bold, reset) into spans; everything else is text.
const COLOURS = ["#6e7681", "#ff7b72", "#3fb950", "#d29922", "#58a6ff", "#bc8cff", "#39c5cf", "#e6edf3"];
function appendAnsi(parent, text) {
  const parts = text.split(/\x1b\[([0-9;]*)m/);
  let style = "";
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      style = "";
      for (const code of part.split(";").map(Number)) {
        if (code >= 30 && code <= 37) style += `color:${COLOURS[code - 30]};`;
        else if (code >= 90 && code <= 97) style += `color:${COLOURS[code - 90]};`;
        else if (code === 1) style += "font-weight:bold;";
      }
      return;
    }
    if (!part) return;
    const span = document.createElement("span");
    if (style) span.setAttribute("style", style);
    span.textContent = part;
    parent.appendChild(span);
  });
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

const when = (t) => (t ? new Date(t).toISOString().replace("T", " ").slice(0, 19) : "-");
const TERMINAL = ["succeeded", "failed", "canceled", "timed_out"];
// Lines a log opens with (its tail), and lines each "Show earlier lines" adds.
const LOG_PAGE = 1000;

function logLine(rec) {
  const line = el("span", { class: rec.stream, "data-seq": rec.seq });
  appendAnsi(line, rec.text + "\n");
  return line;
}

// The job page's log: opens at its last LOG_PAGE lines (a million-line log is never
// loaded whole), pages backwards on request, and follows live over server-sent events.
// The browser reconnects by itself after a dropped connection and sends the last
// record's id, so the server resumes after it: no gap, no repeat.
async function followLog(pre) {
  const resp = await fetch(`${pre.dataset.api}?tail=${LOG_PAGE}&limit=${LOG_PAGE}`, { credentials: "same-origin" });
  let after = 0;
  let attempt = 0;
  let first = 1;
  if (resp.ok) {
    const page = await resp.json();
    attempt = page.attempt;
    after = page.last_seq;
    for (const rec of page.records) pre.appendChild(logLine(rec));
    first = page.records.length ? page.records[0].seq : after + 1;
  }
  const earlier = document.getElementById("log-earlier");
  const showEarlier = () => { earlier.hidden = first <= 1; };
  showEarlier();
  earlier.addEventListener("click", async () => {
    const from = Math.max(0, first - 1 - LOG_PAGE);
    const r = await fetch(`${pre.dataset.api}?attempt=${attempt}&after=${from}&limit=${first - 1 - from}`, { credentials: "same-origin" });
    if (!r.ok) return;
    const page = await r.json();
    const frag = document.createDocumentFragment();
    for (const rec of page.records) frag.appendChild(logLine(rec));
    pre.insertBefore(frag, pre.firstChild);
    first = from + 1;
    showEarlier();
  });
  const query = attempt ? `?attempt=${attempt}&after=${after}` : "";
  const source = new EventSource(pre.dataset.stream + query);
  source.addEventListener("record", (e) => {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.appendChild(logLine(JSON.parse(e.data)));
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", () => {
    source.close();
    pre.dataset.ended = "true";
  });
}

// The job page's state, wait reason, progress, its history and the timeline, from the
// job's event stream. A reconnect sends everything again, so lists restart then.
function watchJob(stateEl) {
  const source = new EventSource(stateEl.dataset.stream);
  const timeline = document.querySelector("#timeline tbody");
  const history = document.getElementById("progress-history");
  let fresh = { timeline: true, history: true };
  source.addEventListener("open", () => { fresh = { timeline: true, history: true }; });
  source.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    stateEl.textContent = job.state;
    stateEl.className = "state-" + job.state;
    document.getElementById("job-wait").textContent = job.wait_reason || "-";
    if (job.progress) {
      document.getElementById("job-progress").value = job.progress.percent;
      document.getElementById("job-progress-text").textContent =
        `${Math.round(job.progress.percent)}% ${job.progress.message}`;
    }
    if (TERMINAL.includes(job.state)) {
      const cancel = document.getElementById("cancel");
      if (cancel) cancel.closest("form").hidden = true;
    }
  });
  source.addEventListener("event", (e) => {
    if (fresh.timeline) { timeline.replaceChildren(); fresh.timeline = false; }
    const ev = JSON.parse(e.data);
    timeline.append(el("tr", {}, el("td", {}, when(ev.at)), el("td", {}, ev.kind),
      el("td", {}, ev.to_state), el("td", {}, ev.actor), el("td", {}, ev.reason || "")));
  });
  source.addEventListener("progress", (e) => {
    if (fresh.history) { history.replaceChildren(); fresh.history = false; }
    const p = JSON.parse(e.data);
    history.append(el("tr", {}, el("td", {}, when(p.at)), el("td", {}, String(p.attempt)),
      el("td", {}, String(Math.round(p.percent))), el("td", {}, p.message)));
  });
  source.addEventListener("end", () => source.close());
}

// The jobs list: rows change as their jobs do, and on the first page new jobs that
// match the filters appear at the top, all over server-sent events.
function jobRow(job) {
  const link = el("a", { href: "/jobs/" + encodeURIComponent(job.id) }, job.name);
  return el("tr", { id: "job-" + job.id },
    el("td", {}, link, el("br"), el("small", {}, job.id)),
    el("td", {}, el("span", { class: "state state-" + job.state }, job.state)),
    el("td", {}, el("progress", { max: "100", value: job.progress ? job.progress.percent : 0, "aria-label": "progress" })),
    el("td", { class: "wide" }, job.queue),
    el("td", { class: "wide" }, when(job.created_at)));
}

function showJob(table, job) {
  const row = document.getElementById("job-" + job.id);
  if (row) {
    const cell = row.querySelector(".state");
    cell.textContent = job.state;
    cell.className = "state state-" + job.state;
    row.querySelector("progress").value = job.progress ? job.progress.percent : 0;
    return;
  }
  const wanted = !table.dataset.state || table.dataset.state === job.state;
  if (table.dataset.firstPage !== "true" || !wanted) return;
  const body = table.tBodies[0];
  // Newest first: a job goes above the first row that is older than it.
  const t = Date.parse(job.created_at);
  const older = [...body.rows].find((r) => Number(r.dataset.created) < t);
  const tr = jobRow(job);
  tr.dataset.created = t;
  body.insertBefore(tr, older || null);
  document.getElementById("no-jobs")?.remove();
}

async function reloadList(table) {
  const resp = await fetch(table.dataset.api, { credentials: "same-origin" });
  if (!resp.ok) return;
  const page = await resp.json();
  for (const job of page.jobs.slice().reverse()) showJob(table, job);
}

function watchList(table) {
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("job", (e) => showJob(table, JSON.parse(e.data)));
  source.addEventListener("reload", () => reloadList(table));
  // What changed while the connection was down.
  source.addEventListener("open", () => reloadList(table));
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("log");
  if (pre) followLog(pre);
  const state = document.getElementById("job-state");
  if (state) watchJob(state);
  const table = document.getElementById("jobs");
  if (table) watchList(table);
});
