//! `drover group`: arrays as one thing (status, ls, cancel, retry); `drover submit
//! --array` makes one.

use clap::Subcommand;
use drover_core::group::{Group, GroupAction, GroupPage, ListGroupsQuery};
use drover_core::JobState;

use crate::client::{segment, Client};
use crate::config::{ClientConfig, OutputFormat};
use crate::error::Result;
use crate::output::{self, outln};

#[derive(Subcommand)]
pub enum GroupCommand {
    /// A group's state, progress and members by state.
    #[command(
        after_help = "Examples:\n  drover group status GROUP\n  drover ls --group GROUP --state failed"
    )]
    Status { id: String },
    /// Groups, newest first.
    #[command(after_help = "Example:\n  drover group ls --limit 10 -o json")]
    Ls {
        /// How many groups to show (1-1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Continue after a previous page (the `next_cursor` it printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel every member that has not ended.
    #[command(after_help = "Example:\n  drover group cancel GROUP")]
    Cancel { id: String },
    /// Run the members that failed or timed out again.
    #[command(after_help = "Example:\n  drover group retry GROUP")]
    Retry { id: String },
}

/// Members by state, in life order: `3 running, 7 queued`.
fn counts(g: &Group) -> String {
    JobState::ALL
        .iter()
        .filter_map(|s| g.counts.get(s).map(|n| format!("{n} {s}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print(cfg: &ClientConfig, g: &Group) {
    if cfg.output == OutputFormat::Json {
        output::json(g);
        return;
    }
    outln!("id:          {}", g.id);
    outln!("name:        {}", g.name);
    outln!("state:       {}", g.state);
    outln!("progress:    {:.1}%", g.percent);
    outln!(
        "members:     {} (indexes {}-{})",
        g.count,
        g.first,
        g.first + g.count.saturating_sub(1)
    );
    if let Some(p) = g.parallelism {
        outln!("parallelism: {p}");
    }
    outln!("by state:    {}", counts(g));
    outln!("created:     {}", g.created_at.to_rfc3339());
}

pub async fn group(cfg: &ClientConfig, cmd: GroupCommand) -> Result<i32> {
    let client = Client::new(cfg)?;
    let path = |id: &str, verb: &str| format!("/v1/groups/{}{verb}", segment(id));
    match cmd {
        GroupCommand::Status { id } => {
            let g: Group = client.get(&path(&id, "")).await?;
            print(cfg, &g);
        }
        GroupCommand::Ls { limit, cursor } => {
            let q = ListGroupsQuery {
                limit: Some(limit),
                cursor,
            };
            let page: GroupPage = client.get_with("/v1/groups", |r| r.query(&q)).await?;
            if cfg.output == OutputFormat::Json {
                output::json(&page);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = page
                .groups
                .iter()
                .map(|g| {
                    vec![
                        g.id.clone(),
                        g.name.clone(),
                        g.state.to_string(),
                        format!("{:.1}%", g.percent),
                        counts(g),
                        g.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    ]
                })
                .collect();
            output::table(
                &["ID", "NAME", "STATE", "PROGRESS", "MEMBERS", "CREATED"],
                &rows,
            );
            if let Some(c) = page.next_cursor {
                eprintln!("(more: drover group ls --cursor {c})");
            }
        }
        GroupCommand::Cancel { id } => {
            let done: GroupAction = client
                .post(&path(&id, "/cancel"), &serde_json::json!({}))
                .await?;
            if cfg.output == OutputFormat::Json {
                output::json(&done);
            } else {
                eprintln!("canceled {} members of group {id}", done.changed);
            }
        }
        GroupCommand::Retry { id } => {
            let done: GroupAction = client
                .post(&path(&id, "/retry"), &serde_json::json!({}))
                .await?;
            if cfg.output == OutputFormat::Json {
                output::json(&done);
            } else {
                eprintln!("queued {} members of group {id} again", done.changed);
            }
        }
    }
    Ok(0)
}
