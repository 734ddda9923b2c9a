//! The dashboard's pages: the overview (per queue: counts, the last hour as charts, why
//! jobs wait), the jobs list (filters, search, cursor pages), a job (spec, attempts,
//! progress and its history, result, artifacts, timeline, live log, actions), and the
//! agents. Groups and schedules are in `workloads.rs`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use drover_core::api::{Job, ListJobsQuery};
use drover_core::{labels, Exec, JobState};
use maud::{html, Markup};
use serde::Deserialize;

use super::{error_page, layout, refuse_action, CsrfForm, Viewer};
use crate::api::{admin, jobs, ApiError};
use crate::state::AppState;
use crate::store::{QueueOverview, StoreError, OVERVIEW_MINUTES};

/// Jobs per page of the list.
const PAGE: u32 = 50;
/// Waiting jobs per queue whose reasons the overview shows.
const WAITING_SAMPLE: u32 = 100;

/// The list's filters, as the form sends them (empty fields mean no filter).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    name: String,
    /// A job id, name or idempotency key.
    #[serde(default)]
    q: String,
    /// Only the members of this group.
    #[serde(default)]
    group: String,
    #[serde(default)]
    cursor: String,
}

fn some(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Filters {
    fn query(&self) -> ListJobsQuery {
        ListJobsQuery {
            state: some(&self.state),
            queue: some(&self.queue),
            label: some(&self.label),
            name: some(&self.name),
            limit: Some(PAGE),
            cursor: some(&self.cursor),
            group: some(&self.group),
            ..ListJobsQuery::default()
        }
    }

    /// The same filters as a query string, without the cursor.
    fn query_string(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("queue", &self.queue),
            ("label", &self.label),
            ("name", &self.name),
            ("group", &self.group),
        ] {
            if !v.trim().is_empty() {
                parts.push(format!("{k}={}", encode(v.trim())));
            }
        }
        parts.join("&")
    }
}

/// Percent-encodes a query value.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

pub(super) fn state_cell(s: JobState) -> Markup {
    html! { span class=(format!("state state-{}", s.as_str())) { (s.as_str()) } }
}

pub async fn jobs(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<Filters>,
) -> Response {
    // Search: a job id opens the job; else a name or an idempotency key filters.
    let mut f = f;
    if let Some(q) = some(&f.q) {
        if state.store.job(&q).await.is_ok() {
            return Redirect::to(&job_page(&q)).into_response();
        }
        if let Ok(Some(id)) = state.store.job_by_key(&q).await {
            return Redirect::to(&job_page(&id)).into_response();
        }
        f.name = q;
    }
    let job_state = match some(&f.state).map(|s| s.parse::<JobState>()).transpose() {
        Ok(s) => s,
        Err(m) => return error_page(StatusCode::BAD_REQUEST, &m),
    };
    let (jobs, next) = match state.store.list_jobs(&f.query(), job_state).await {
        Ok(page) => page,
        Err(StoreError::Conflict(m)) => return error_page(StatusCode::BAD_REQUEST, &m),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let filters = f.query_string();
    let mut api = format!("/v1/jobs?limit={PAGE}&{filters}");
    if let Some(c) = some(&f.cursor) {
        api += &format!("&cursor={}", encode(&c));
    }
    let watch = Filters {
        queue: f.queue.clone(),
        label: f.label.clone(),
        name: f.name.clone(),
        ..Default::default()
    };
    let stream = format!("/v1/jobs/stream?{}", watch.query_string());
    let first_page = some(&f.cursor).is_none();
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/jobs" role="search" {
            label { "Search" input type="search" name="q" value=(f.q) placeholder="id, name or key"; }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[f.state == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Queue" input name="queue" value=(f.queue); }
            label { "Label" input name="label" value=(f.label) placeholder="key=value"; }
            label { "Name" input name="name" value=(f.name); }
            button type="submit" { "Filter" }
        }
        table #jobs data-api=(api) data-stream=(stream) data-first-page=(first_page) data-state=(f.state.trim()) {
            thead { tr { th { "Job" } th { "State" } th { "Progress" } th.wide { "Queue" } th.wide { "Created" } } }
            tbody {
                @for j in &jobs {
                    tr id=(format!("job-{}", j.id)) data-created=(j.created_at.timestamp_millis()) {
                        td { a href=(job_page(&j.id)) { (j.name) } br; small { (j.id) } }
                        td { (state_cell(j.state)) }
                        td { progress max="100" value=(j.progress.as_ref().map_or(0.0, |p| p.percent)) aria-label="progress" {} }
                        td.wide { (j.queue) }
                        td.wide { (when(Some(j.created_at))) }
                    }
                }
            }
        }
        @if jobs.is_empty() { p #no-jobs { "No jobs match." } }
        @if let Some(c) = next {
            p.pager { a href=(format!("/jobs?{filters}&cursor={}", encode(&c))) { "Older jobs →" } }
        }
    };
    layout("Jobs", Some(&viewer), body).into_response()
}

/// The command as the page shows it: argv shell-quoted, a script's body in full.
fn command(exec: &Exec) -> Markup {
    match exec {
        Exec::Script { .. } => html! { pre { (exec.log_header().join("\n")) } },
        other => html! { pre { (other.display()) } },
    }
}

pub async fn job(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let job: Job = match jobs::job_with_reason(&state, &id).await {
        Ok(j) => j,
        Err(ApiError::NotFound(m)) => return error_page(StatusCode::NOT_FOUND, &m),
        Err(e) => return e.into_response(),
    };
    let events = state.store.events(&id).await.unwrap_or_default();
    let artifacts = state.store.artifacts(&id, None).await.unwrap_or_default();
    let path = job_page(&job.id);
    let api = format!("/v1/jobs/{}", encode(&job.id));
    let body = html! {
        h1 { (job.name) }
        @if viewer.can_act() {
            div.actions {
                @if !job.state.is_terminal() {
                    form method="post" action=(format!("{path}/cancel")) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button.danger #cancel type="submit" { "Cancel" }
                    }
                } @else {
                    form method="post" action=(format!("{path}/retry")) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button #retry type="submit" { "Retry" }
                    }
                }
                form method="post" action=(format!("{path}/rerun")) {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button #rerun type="submit" title="A new job with the same spec" { "Run again" }
                }
            }
        }
        dl {
            dt { "State" } dd { span #job-state class=(format!("state-{}", job.state.as_str())) data-stream=(format!("{api}/events/stream")) { (job.state.as_str()) } }
            dt { "Progress" } dd {
                progress #job-progress max="100" value=(job.progress.as_ref().map_or(0.0, |p| p.percent)) aria-label="progress" {}
                " " span #job-progress-text { (job.progress.as_ref().map(|p| format!("{:.0}% {}", p.percent, p.message)).unwrap_or_default()) }
            }
            dt { "Waiting" } dd #job-wait { (job.wait_reason.clone().unwrap_or_else(|| "-".into())) }
            dt { "Id" } dd { (job.id) }
            dt { "Queue" } dd { (job.queue) " (priority " (job.priority) ")" }
            @if let (Some(g), Some(i)) = (&job.group_id, job.array_index) {
                dt { "Group" } dd { a href=(format!("/groups/{}", encode(g))) { (g) } " (index " (i) ")" }
            }
            @for d in &job.after {
                dt { "Waits for" } dd.after { a href=(job_page(&d.job)) { (d.job) } " (" (d.condition.as_str()) ")" }
            }
            @if let Some(e) = &job.error { dt { "Error" } dd.error { (e) } }
            @if let Some(code) = job.exit_code { dt { "Exit code" } dd { (code) } }
            @if let Some(r) = &job.result { dt { "Result" } dd { pre { (serde_json::to_string_pretty(r).unwrap_or_default()) } } }
        }
        details #progress-history-box {
            summary { "Progress history" }
            table {
                thead { tr { th { "When" } th { "Attempt" } th { "%" } th { "Message" } } }
                tbody #progress-history {}
            }
        }
        h2 { "Command" }
        (command(&job.exec))
        h2 { "Log" }
        p { a href=(format!("{api}/logs.txt")) download { "Download as text" } }
        p { button.secondary #log-earlier type="button" hidden { "Show earlier lines" } }
        pre.log #log data-api=(format!("{api}/logs")) data-stream=(format!("{api}/logs/stream")) tabindex="0" aria-label="log" {}
        h2 { "Attempts" }
        table {
            thead { tr { th { "#" } th { "State" } th { "Agent" } th.wide { "Started" } th.wide { "Finished" } th { "Error" } } }
            tbody {
                @for a in &job.attempts {
                    tr { td { (a.number) } td { (a.state.as_str()) } td { (a.agent_id) } td.wide { (when(a.started_at)) } td.wide { (when(a.finished_at)) } td { (a.error.clone().unwrap_or_default()) } }
                }
            }
        }
        @if !artifacts.is_empty() {
            h2 { "Artifacts" }
            table {
                thead { tr { th { "Attempt" } th { "Path" } th { "Bytes" } } }
                tbody {
                    @for f in &artifacts {
                        tr { td { (f.attempt.unwrap_or_default()) } td { a href=(format!("/v1/files/{}", encode(&f.id))) { (f.name) } } td { (f.size) } }
                    }
                }
            }
        }
        h2 { "Timeline" }
        table #timeline {
            thead { tr { th { "When" } th { "What" } th { "State" } th { "By" } th { "Why" } } }
            tbody {
                @for e in &events {
                    tr { td { (when(Some(e.at))) } td { (e.kind) } td { (e.to_state.as_str()) } td { (e.actor) } td { (e.reason.clone().unwrap_or_default()) } }
                }
            }
        }
    };
    layout(&job.name, Some(&viewer), body).into_response()
}

/// Runs an action a form asked for, unless it was `refused`: then the page of the
/// outcome (`action` names it), or one saying why the action failed.
pub(super) async fn act(
    refused: Option<Response>,
    action: impl std::future::Future<Output = Result<String, StoreError>>,
) -> Response {
    if let Some(r) = refused {
        return r;
    }
    match action.await {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => store_error_page(e),
    }
}

pub(super) fn job_page(id: &str) -> String {
    format!("/jobs/{}", encode(id))
}

pub async fn cancel(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let actor = &viewer.caller.actor;
    act(refuse_action(&viewer, &f), async {
        let job = jobs::cancel_job(&state, &id, actor).await?;
        Ok(job_page(&job.id))
    })
    .await
}

pub async fn retry(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let actor = &viewer.caller.actor;
    act(refuse_action(&viewer, &f), async {
        let job = jobs::retry_job(&state, &id, actor).await?;
        Ok(job_page(&job.id))
    })
    .await
}

pub async fn rerun(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let actor = &viewer.caller.actor;
    act(refuse_action(&viewer, &f), async {
        let job = jobs::rerun_job(&state, &id, actor).await?;
        Ok(job_page(&job.id))
    })
    .await
}

pub async fn remove_agent(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let refused = refuse_action(&viewer, &f).or_else(|| {
        (!viewer.can_admin()).then(|| {
            error_page(
                StatusCode::FORBIDDEN,
                "removing an agent needs the admin scope",
            )
        })
    });
    act(refused, async {
        admin::remove_agent_now(&state, &id, &viewer.caller.actor).await?;
        Ok("/agents".to_string())
    })
    .await
}

pub async fn agents(State(state): State<AppState>, viewer: Viewer) -> Response {
    let list = match state
        .store
        .list_agents(Utc::now(), state.config.lease_ttl)
        .await
    {
        Ok(l) => l,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let providers = state.providers.providers();
    let held = match state.store.held_jobs().await {
        Ok(h) => h,
        Err(e) => return store_error_page(e),
    };
    let body = html! {
        h1 { "Agents" }
        table #agents {
            thead { tr { th { "Name" } th { "Status" } th { "Running" } th.wide { "Jobs" } th.wide { "Provider" } th.wide { "Labels" } th { "CPU" } th { "Memory" } th.wide { "Version" } th { "Last seen" } } }
            tbody {
                @for a in &list {
                    tr id=(format!("agent-{}", a.id)) {
                        td { (a.name) br; small { (a.id) } }
                        td class=(format!("status-{}", a.status)) { (a.status) }
                        td { (a.running) "/" (a.slots) }
                        td.wide {
                            @for (_, id, name) in held.iter().filter(|(agent, _, _)| *agent == a.id) {
                                a href=(job_page(id)) { (name) } " "
                            }
                        }
                        td.wide { (a.provider.as_deref().unwrap_or("-")) }
                        td.wide { (labels::display(&a.labels, ", ")) }
                        td { (format!("{:.0}%", a.stats.cpu_percent)) }
                        td { (memory(a.stats.memory_used_bytes, a.host.memory_bytes)) }
                        td.wide { (a.host.version) }
                        td { (when(Some(a.last_seen_at))) }
                        @if viewer.can_admin() && a.status == "offline" {
                            td {
                                form method="post" action=(format!("/agents/{}/remove", encode(&a.id))) {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    button.danger type="submit" aria-label=(format!("Remove {}", a.name)) { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if list.is_empty() { p { "No agents. Start one with " code { "drover agent --server URL --token JOIN_TOKEN" } "." } }
        @if !providers.is_empty() {
            h2 { "Providers" }
            table #providers {
                thead { tr { th { "Name" } th { "Kind" } th.wide { "Labels" } th { "Agents" } th { "Starts" } th { "Failures" } th { "Last failure" } } }
                tbody {
                    @for p in &providers {
                        tr {
                            td { (p.name) }
                            td { (p.kind) }
                            td.wide { (labels::display(&p.labels, ", ")) }
                            td {
                                (p.agents.len()) "/" (p.max_agents)
                                @for a in p.agents.iter().filter(|a| a.state != "running") { br; small { (a.id) " " (a.state) } }
                            }
                            td { (p.starts) }
                            td { (p.failures) }
                            td { (p.last_failure.as_deref().unwrap_or("-")) }
                        }
                    }
                }
            }
        }
    };
    layout("Agents", Some(&viewer), body).into_response()
}

/// The page for a store error: a message page for what the user can act on (not found,
/// conflict), the API's error otherwise.
pub(super) fn store_error_page(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(m) => error_page(StatusCode::NOT_FOUND, &m),
        StoreError::Conflict(m) => error_page(StatusCode::CONFLICT, &m),
        e => ApiError::from(e).into_response(),
    }
}

fn memory(used: u64, total: u64) -> String {
    match total {
        0 => "-".into(),
        t => format!("{:.0}%", used as f64 * 100.0 / t as f64),
    }
}

/// How long ago, roughly: `42s`, `5m`, `3h`, `2d`.
fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A bar chart of one value per minute of the last hour, as inline SVG (no script), with
/// a text alternative for screen readers.
fn minute_chart(label: &str, values: &[Option<f64>], unit: &str) -> Markup {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    let max = values.iter().flatten().cloned().fold(0.0, f64::max);
    let bar = W / OVERVIEW_MINUTES as f64;
    let last = values.iter().rev().flatten().next();
    let summary = match last {
        Some(v) => format!("{label}, last hour; peak {max:.0}{unit}, latest {v:.0}{unit}"),
        None => format!("{label}, last hour: none"),
    };
    html! {
        svg.chart width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(summary) {
            title { (summary) }
            line x1="0" y1=(H - 0.5) x2=(W) y2=(H - 0.5) stroke="#d0d7de" {}
            @for (i, v) in values.iter().enumerate() {
                @if let Some(v) = v.filter(|v| *v > 0.0 && max > 0.0) {
                    @let h = (v / max * (H - 2.0)).max(1.0);
                    rect x=(format!("{:.1}", i as f64 * bar)) y=(format!("{:.1}", H - h)) width=(format!("{:.1}", bar - 0.5)) height=(format!("{h:.1}")) fill="#0550ae" {}
                }
            }
        }
    }
}

pub async fn overview(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = Utc::now();
    let queues = match state.store.queue_overview(now).await {
        Ok(q) => q,
        Err(e) => return store_error_page(e),
    };
    let agents = match state.store.list_agents(now, state.config.lease_ttl).await {
        Ok(a) => a,
        Err(e) => return store_error_page(e),
    };
    let providers = state.providers.providers();
    // Why the jobs each queue hands out next wait, with how many share each reason.
    let mut reasons: Vec<(String, Vec<(String, usize)>)> = Vec::new();
    for (name, q) in &queues {
        if q.due == 0 {
            continue;
        }
        let waiting = match state.store.next_waiting(name, now, WAITING_SAMPLE).await {
            Ok(w) => w,
            Err(e) => return store_error_page(e),
        };
        let mut counts: Vec<(String, usize)> = Vec::new();
        for job in &waiting {
            let Some(r) = crate::waiting::blocker(job, &agents, &providers, now) else {
                continue;
            };
            match counts.iter_mut().find(|(c, _)| *c == r) {
                Some((_, n)) => *n += 1,
                None => counts.push((r, 1)),
            }
        }
        reasons.push((name.clone(), counts));
    }
    let online = agents.iter().filter(|a| a.status != "offline").count();
    let body = html! {
        h1 { "Overview" }
        p { (online) " of " (agents.len()) " agents online · " a href="/agents" { "agents" } " · " a href="/jobs" { "all jobs" } }
        @if queues.is_empty() {
            p { "No jobs in the last hour. Submit one with " code { "drover submit -- echo hello" } "." }
        } @else {
            table #queues {
                thead { tr { th { "Queue" } th { "Waiting" } th { "Running" } th { "Oldest wait" } th.wide { "Ended per minute (last hour)" } th.wide { "Submit → start (last hour)" } } }
                tbody {
                    @for (name, q) in &queues {
                        (queue_row(name, q, now))
                    }
                }
            }
        }
        @for (name, counts) in &reasons {
            @if !counts.is_empty() {
                h2 { "Why jobs in " (name) " wait" }
                ul.reasons {
                    @for (r, n) in counts {
                        li { (r) " (" (n) @if *n as u32 == WAITING_SAMPLE { "+" } " " (if *n == 1 { "job" } else { "jobs" }) ")" }
                    }
                }
            }
        }
    };
    layout("Overview", Some(&viewer), body).into_response()
}

fn queue_row(name: &str, q: &QueueOverview, now: DateTime<Utc>) -> Markup {
    let ended: Vec<Option<f64>> = q.ended.iter().map(|n| Some(*n as f64)).collect();
    let waiting = if q.queued > q.due {
        format!("{} ({} later)", q.due, q.queued - q.due)
    } else {
        q.due.to_string()
    };
    html! {
        tr id=(format!("queue-{name}")) {
            td { a href=(format!("/jobs?queue={}", encode(name))) { (name) } }
            td { (waiting) }
            td { (q.running) }
            td { (q.oldest_due.map(|t| ago(t, now)).unwrap_or_else(|| "-".into())) }
            td.wide { (minute_chart("jobs ended per minute", &ended, "")) }
            td.wide { (minute_chart("mean submit to start", &q.latency_ms, " ms")) }
        }
    }
}
