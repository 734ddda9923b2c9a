//! `drover template`: job templates kept on the server (create, ls, show, rm); `drover
//! submit --template NAME --param K=V` makes a job from one.

use std::collections::BTreeMap;

use clap::Subcommand;
use drover_core::template::{ParamSpec, ParamType, Template, TemplateCreate, TemplateList};

use crate::client::{segment, Client};
use crate::commands::submit::SubmitArgs;
use crate::config::{ClientConfig, OutputFormat};
use crate::error::{CliError, Result};
use crate::output::{self, outln};

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// Create a template, or the next version of one: a job's submit flags and command,
    /// with {{ params.NAME }} in any of them; every NAME is a parameter.
    #[command(
        after_help = "Examples:\n  drover template create sim --label pool=sim --param steps:integer=100 -- ./simulate --config '{{ params.config_path }}' --steps '{{ params.steps }}'\n  drover submit --template sim --param config_path=/data/c.yaml --idempotency-key J-42"
    )]
    Create {
        /// The template's name: letters, digits, '-', '_' and '.'.
        #[arg(value_name = "NAME")]
        template_name: String,
        #[command(flatten)]
        job: Box<SubmitArgs>,
    },
    /// The latest version of each template.
    #[command(after_help = "Example:\n  drover template ls -o json")]
    Ls,
    /// One template: its parameters and job.
    #[command(
        after_help = "Examples:\n  drover template show sim\n  drover template show sim --version 1 -o json"
    )]
    Show {
        name: String,
        /// Which version (default: the latest).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete every version (jobs made from it keep their record).
    #[command(after_help = "Example:\n  drover template rm sim")]
    Rm { name: String },
}

/// `--param NAME[:TYPE][=DEFAULT]` of `template create`.
fn declaration(spec: &str) -> Result<(String, ParamSpec)> {
    let (head, default) = match spec.split_once('=') {
        Some((h, d)) => (h, Some(d.to_string())),
        None => (spec, None),
    };
    let (name, kind) = match head.split_once(':') {
        None => (head, ParamType::String),
        Some((n, t)) => (
            n,
            t.parse::<ParamType>()
                .map_err(|e| CliError::Usage(format!("--param {spec}: {e}")))?,
        ),
    };
    Ok((
        name.to_string(),
        ParamSpec {
            kind,
            default: default.map(serde_json::Value::String),
        },
    ))
}

fn print(cfg: &ClientConfig, t: &Template) {
    if cfg.output == OutputFormat::Json {
        output::json(t);
        return;
    }
    outln!("name:      {}", t.name);
    outln!("version:   {}", t.version);
    outln!("created:   {}", t.created_at.to_rfc3339());
    for (name, p) in &t.params {
        let default = p
            .default
            .as_ref()
            .map(|d| format!(" = {}", d.as_str().map_or(d.to_string(), str::to_string)))
            .unwrap_or_else(|| " (required)".into());
        outln!("param:     {name}: {}{default}", p.kind.as_str());
    }
    outln!(
        "job:       {}",
        serde_json::to_string(&t.job).expect("a job serializes")
    );
}

pub async fn template(cfg: &ClientConfig, cmd: TemplateCommand) -> Result<i32> {
    let client = Client::new(cfg)?;
    match cmd {
        TemplateCommand::Create { template_name, job } => {
            if job.wait || job.follow || job.has_local_inputs() || job.array.is_some() {
                return Err(CliError::Usage(
                    "template create takes no --wait, --follow, --input or --array: those belong to `drover submit --template`".into(),
                ));
            }
            let params: BTreeMap<String, ParamSpec> = job
                .params
                .iter()
                .map(|p| declaration(p))
                .collect::<Result<_>>()?;
            let body = TemplateCreate {
                name: template_name,
                job: job.request()?,
                params,
            };
            let made: Template = client.post("/v1/templates", &body).await?;
            match cfg.output {
                OutputFormat::Json => output::json(&made),
                OutputFormat::Table => {
                    outln!("{} version {}", made.name, made.version);
                }
            }
        }
        TemplateCommand::Ls => {
            let list: TemplateList = client.get("/v1/templates").await?;
            match cfg.output {
                OutputFormat::Json => output::json(&list),
                OutputFormat::Table => output::table(
                    &["NAME", "VERSION", "PARAMS", "CREATED"],
                    &list
                        .templates
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.version.to_string(),
                                t.params.keys().cloned().collect::<Vec<_>>().join(","),
                                t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        TemplateCommand::Show { name, version } => {
            let mut path = format!("/v1/templates/{}", segment(&name));
            if let Some(v) = version {
                path += &format!("?version={v}");
            }
            let t: Template = client.get(&path).await?;
            print(cfg, &t);
        }
        TemplateCommand::Rm { name } => {
            client
                .delete::<serde_json::Value>(&format!("/v1/templates/{}", segment(&name)))
                .await?;
            eprintln!("deleted template {name}");
        }
    }
    Ok(0)
}
