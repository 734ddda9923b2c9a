//! The dashboard's pages for workloads beyond one job: groups (arrays) with their
//! progress, one group with cancel and retry, and schedules with their next runs.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Form;
use drover_core::group::Group;
use drover_core::JobState;
use maud::{html, Markup};

use super::pages::{act, encode, state_cell, store_error_page, when};
use super::{layout, refuse_action, CsrfForm, Viewer};
use crate::api::groups;
use crate::state::AppState;

fn group_page(id: &str) -> String {
    format!("/groups/{}", encode(id))
}

/// Members by state, each linking to the jobs list of those members.
fn counts(g: &Group) -> Markup {
    html! {
        @for s in JobState::ALL {
            @if let Some(n) = g.counts.get(&s) {
                a href=(format!("/jobs?group={}&state={}", encode(&g.id), s.as_str())) { (n) " " (state_cell(s)) } " "
            }
        }
    }
}

pub async fn groups(State(state): State<AppState>, viewer: Viewer) -> Response {
    let (groups, _) = match state.store.list_groups(100, None).await {
        Ok(page) => page,
        Err(e) => return store_error_page(e),
    };
    let body = html! {
        h1 { "Groups" }
        @if groups.is_empty() { p { "No groups yet: " code { "drover submit --array 0-99%10 -- …" } " makes one." } }
        @else {
            table #groups {
                thead { tr { th { "Group" } th { "State" } th { "Progress" } th { "Members" } th.wide { "Created" } } }
                tbody {
                    @for g in &groups {
                        tr {
                            td { a href=(group_page(&g.id)) { (g.name) } br; small { (g.id) } }
                            td { (g.state.as_str()) }
                            td { progress max="100" value=(g.percent) aria-label="progress" {} " " (format!("{:.1}%", g.percent)) }
                            td { (counts(g)) }
                            td.wide { (when(Some(g.created_at))) }
                        }
                    }
                }
            }
        }
    };
    layout("Groups", Some(&viewer), body).into_response()
}

pub async fn group(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let g = match state.store.group(&id).await {
        Ok(g) => g,
        Err(e) => return store_error_page(e),
    };
    let path = group_page(&g.id);
    let body = html! {
        h1 { (g.name) }
        @if viewer.can_act() {
            div.actions {
                @if !g.state.is_terminal() {
                    form method="post" action=(format!("{path}/cancel")) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button.danger #cancel-group type="submit" { "Cancel all" }
                    }
                }
                form method="post" action=(format!("{path}/retry")) {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button #retry-group type="submit" title="Run the members that failed or timed out again" { "Retry failed" }
                }
            }
        }
        dl {
            dt { "State" } dd #group-state { (g.state.as_str()) }
            dt { "Progress" } dd { progress max="100" value=(g.percent) aria-label="progress" {} " " (format!("{:.1}%", g.percent)) }
            dt { "Members" } dd { (g.count) " (indexes " (g.first) "–" (g.first + g.count.saturating_sub(1)) ")" }
            @if let Some(p) = g.parallelism { dt { "Parallelism" } dd { (p) } }
            dt { "By state" } dd { (counts(&g)) }
            dt { "Id" } dd { (g.id) }
            dt { "Created" } dd { (when(Some(g.created_at))) }
        }
        p { a href=(format!("/jobs?group={}", encode(&g.id))) { "All members →" } }
    };
    layout(&g.name, Some(&viewer), body).into_response()
}

pub async fn cancel_group(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let actor = &viewer.caller.actor;
    act(refuse_action(&viewer, &f), async {
        groups::cancel_group(&state, &id, actor).await?;
        Ok(group_page(&id))
    })
    .await
}

pub async fn retry_group(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let actor = &viewer.caller.actor;
    act(refuse_action(&viewer, &f), async {
        groups::retry_group(&state, &id, actor).await?;
        Ok(group_page(&id))
    })
    .await
}

pub async fn schedules(State(state): State<AppState>, viewer: Viewer) -> Response {
    let list = match state.store.schedules().await {
        Ok(l) => l,
        Err(e) => return store_error_page(e),
    };
    let body = html! {
        h1 { "Schedules" }
        @if list.is_empty() { p { "No schedules yet: " code { "drover schedule create NAME --cron '0 3 * * *' -- …" } " makes one." } }
        @else {
            table #schedules {
                thead { tr { th { "Schedule" } th { "Cron" } th { "State" } th { "Next runs" } th { "Last job" } th { "Note" } } }
                tbody {
                    @for s in &list {
                        tr {
                            td { (s.name) }
                            td { code { (s.cron) } " " small { (s.tz) } }
                            td { @if s.paused { "paused" } @else { "active" } }
                            td { @for t in s.next_runs.iter().take(3) { (when(Some(*t))) br; } }
                            td { @if let Some(j) = &s.last_job_id { a href=(super::pages::job_page(j)) { (when(s.last_tick_at)) } } @else { "-" } }
                            td { (s.last_error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    layout("Schedules", Some(&viewer), body).into_response()
}
