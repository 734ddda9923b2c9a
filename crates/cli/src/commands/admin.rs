//! Admin and fleet commands: agents, tokens, audit.

use crate::output::outln;
use drover_core::api::{AgentList, AuditPage, CreatedToken, ProviderList, TokenList, TokenView};
use drover_core::labels;
use std::time::Duration;

use crate::client::{segment, Client};
use crate::config::{parse_duration, ClientConfig, OutputFormat};
use crate::error::Result;
use crate::output;

/// `drover agents`: the fleet as a table or the AgentList JSON.
pub async fn agents(cfg: &ClientConfig, cmd: Option<AgentsCommand>) -> Result<i32> {
    let client = Client::new(cfg)?;
    if let Some(AgentsCommand::Rm { ids }) = cmd {
        for id in &ids {
            client
                .delete::<serde_json::Value>(&format!("/v1/agents/{}", segment(id)))
                .await?;
            if cfg.output == OutputFormat::Table {
                outln!("{id}: removed");
            }
        }
        return Ok(0);
    }
    let list: AgentList = client.get("/v1/agents").await?;
    if cfg.output == OutputFormat::Json {
        output::json(&list);
        return Ok(0);
    }
    // Agents providers are still starting have not registered: they come from there.
    let providers: ProviderList = client.get("/v1/providers").await?;
    let now = chrono::Utc::now();
    let mut rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.name.clone(),
                a.status.clone(),
                a.provider.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", a.running, a.slots),
                labels::display(&a.labels, ","),
                format!("{:.0}%", a.stats.cpu_percent),
                memory(a.stats.memory_used_bytes, a.host.memory_bytes),
                format!("{} ago", output::elapsed(now - a.last_seen_at)),
            ]
        })
        .collect();
    for p in &providers.providers {
        for a in p.agents.iter().filter(|a| a.state == "starting") {
            rows.push(vec![
                "-".into(),
                a.id.clone(),
                "starting".into(),
                p.name.clone(),
                format!("0/{}", p.slots),
                String::new(),
                String::new(),
                String::new(),
                format!("started {} ago", output::elapsed(now - a.started_at)),
            ]);
        }
    }
    output::table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "PROVIDER",
            "RUNNING",
            "LABELS",
            "CPU",
            "MEMORY",
            "LAST SEEN",
        ],
        &rows,
    );
    Ok(0)
}

/// `3.1/15.6 GiB (20%)`: memory in use of the host's, and the share.
fn memory(used: u64, total: u64) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if total == 0 {
        return format!("{:.1} GiB", gib(used));
    }
    format!(
        "{:.1}/{:.1} GiB ({:.0}%)",
        gib(used),
        gib(total),
        used as f64 * 100.0 / total as f64
    )
}

/// `drover agents …`.
#[derive(clap::Subcommand)]
pub enum AgentsCommand {
    /// Remove agents: their tokens stop working and the jobs they held are retried
    /// where attempts remain (admin).
    #[command(
        after_help = "Example:\n  drover agents rm a-0193…\n\nAgents not seen for --prune-agents-after (24h) are removed by the server itself."
    )]
    Rm {
        /// Agent ids, as `drover agents` lists them.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `drover token …`.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    #[command(
        after_help = "Examples:\n  drover token create --scope submit --name ci --expires 30d\n  drover token create --scope bootstrap --name burst-1 --label pool=burst"
    )]
    Create {
        /// A name to recognise it by.
        #[arg(long)]
        name: String,
        /// read, submit, admin, join (agents register) or bootstrap (one agent, once).
        #[arg(long, value_parser = ["read", "submit", "admin", "join", "bootstrap"])]
        scope: String,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        /// Bootstrap tokens: a label the agent gets (repeatable).
        #[arg(long = "label", value_name = "k=v")]
        labels: Vec<String>,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  drover token ls -o json")]
    Ls,
    /// Revoke a token by id; it fails on its next request.
    #[command(after_help = "Example:\n  drover token revoke tok_01...")]
    Revoke {
        /// The token's id (from `drover token ls`).
        id: String,
    },
}

fn token_rows(tokens: &[TokenView]) -> Vec<Vec<String>> {
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default()
    };
    tokens
        .iter()
        .map(|tok| {
            vec![
                tok.id.clone(),
                tok.name.clone(),
                tok.scope.clone(),
                t(Some(tok.created_at)),
                t(tok.expires_at),
                t(tok.revoked_at),
                t(tok.used_at),
            ]
        })
        .collect()
}

/// Runs a `drover token` subcommand.
pub async fn token(cfg: &ClientConfig, cmd: TokenCommand) -> Result<i32> {
    let client = Client::new(cfg)?;
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            expires,
            labels,
        } => {
            let labels =
                drover_core::labels::parse(&labels).map_err(crate::error::CliError::Usage)?;
            let body = serde_json::json!({"name": name, "scope": scope, "expires_in_secs": expires.map(|d| d.as_secs().max(1)), "labels": labels});
            let created: CreatedToken = client.post("/v1/tokens", &body).await?;
            match cfg.output {
                OutputFormat::Json => output::json(&created),
                OutputFormat::Table => {
                    outln!("{}", created.token);
                    eprintln!(
                        "token {} ({}) created; the secret above is shown only now",
                        created.info.id, created.info.scope
                    );
                }
            }
        }
        TokenCommand::Ls => {
            let list: TokenList = client.get("/v1/tokens").await?;
            match cfg.output {
                OutputFormat::Json => output::json(&list),
                OutputFormat::Table => output::table(
                    &[
                        "ID", "NAME", "SCOPE", "CREATED", "EXPIRES", "REVOKED", "USED",
                    ],
                    &token_rows(&list.tokens),
                ),
            }
        }
        TokenCommand::Revoke { id } => {
            let tok: Option<TokenView> = client.delete(&format!("/v1/tokens/{id}")).await?;
            match (cfg.output, tok) {
                (OutputFormat::Json, Some(t)) => output::json(&t),
                _ => outln!("{id}: revoked"),
            }
        }
    }
    Ok(0)
}

/// `drover audit`: the newest audit entries.
pub async fn audit(cfg: &ClientConfig, limit: u32) -> Result<i32> {
    let client = Client::new(cfg)?;
    let page: AuditPage = client
        .get(&format!("/v1/audit?limit={}", limit.clamp(1, 1000)))
        .await?;
    if cfg.output == OutputFormat::Json {
        output::json(&page);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = page
        .entries
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"], &rows);
    Ok(0)
}

/// `drover providers`: each provider of agents on demand, its agents and its starts.
pub async fn providers(cfg: &ClientConfig) -> Result<i32> {
    let client = Client::new(cfg)?;
    let list: ProviderList = client.get("/v1/providers").await?;
    if cfg.output == OutputFormat::Json {
        output::json(&list);
        return Ok(0);
    }
    if list.providers.is_empty() {
        outln!("No providers. Add [[provider]] tables to the server's config file (see drover.example.toml).");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .providers
        .iter()
        .map(|p| {
            let count = |s: &str| p.agents.iter().filter(|a| a.state == s).count();
            let mut last = p.last_failure.clone().unwrap_or_else(|| "-".into());
            if let Some(t) = p.backoff_until.filter(|t| *t > chrono::Utc::now()) {
                last = format!("(backing off until {}) {last}", t.format("%H:%M:%S"));
            }
            vec![
                p.name.clone(),
                p.kind.clone(),
                labels::display(&p.labels, ","),
                format!(
                    "{}/{} ({} starting, {} stopping)",
                    p.agents.len(),
                    p.max_agents,
                    count("starting"),
                    count("stopping")
                ),
                p.starts.to_string(),
                p.failures.to_string(),
                last,
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "KIND",
            "LABELS",
            "AGENTS",
            "STARTS",
            "FAILURES",
            "LAST FAILURE",
        ],
        &rows,
    );
    Ok(0)
}
