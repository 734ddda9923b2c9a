// drover dashboard: live job lists and live logs, hand-written, no dependencies.
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

// The job page's log: follows live over server-sent events. The browser reconnects by
// itself after a dropped connection and sends the last record's id, so the server
// resumes after it: no gap, no repeat.
function followLog(pre) {
  const source = new EventSource(pre.dataset.stream);
  source.addEventListener("record", (e) => {
    const rec = JSON.parse(e.data);
    const line = document.createElement("span");
    line.className = rec.stream;
    line.dataset.seq = rec.seq;
    appendAnsi(line, rec.text + "\n");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.appendChild(line);
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", () => {
    source.close();
    pre.dataset.ended = "true";
    refreshJob();
  });
}

// State and progress of the job page, refreshed while the job has not ended.
async function refreshJob() {
  const el = document.getElementById("job-state");
  if (!el) return;
  const resp = await fetch(el.dataset.api, { credentials: "same-origin" });
  if (!resp.ok) return;
  const job = await resp.json();
  el.textContent = job.state;
  el.className = "state-" + job.state;
  const bar = document.getElementById("job-progress");
  if (bar && job.progress) {
    bar.value = job.progress.percent;
    document.getElementById("job-progress-text").textContent =
      `${Math.round(job.progress.percent)}% ${job.progress.message}`;
  }
  const terminal = ["succeeded", "failed", "canceled", "timed_out"].includes(job.state);
  if (!terminal) setTimeout(refreshJob, 1000);
}

// The jobs list: states and progress of the rows shown, refreshed every second.
async function refreshList(table) {
  const resp = await fetch(table.dataset.api, { credentials: "same-origin" });
  if (resp.ok) {
    const page = await resp.json();
    for (const job of page.jobs) {
      const row = document.getElementById("job-" + job.id);
      if (!row) continue;
      const cell = row.querySelector(".state");
      cell.textContent = job.state;
      cell.className = "state state-" + job.state;
      const bar = row.querySelector("progress");
      if (bar && job.progress) bar.value = job.progress.percent;
    }
  }
  setTimeout(() => refreshList(table), 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("log");
  if (pre) followLog(pre);
  refreshJob();
  const table = document.getElementById("jobs");
  if (table) refreshList(table);
});
