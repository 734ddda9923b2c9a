//! `drover schedule`: cron schedules kept on the server (create, ls, show, pause,
//! resume, rm). Each tick submits one job, from submit flags and a command or from a
//! template.

use clap::Subcommand;
use drover_core::schedule::{
    CatchUp, Overlap, Schedule, ScheduleCreate, ScheduleList, ScheduleTemplate,
};

use crate::client::{segment, Client};
use crate::commands::submit::SubmitArgs;
use crate::config::{ClientConfig, OutputFormat};
use crate::error::{CliError, Result};
use crate::output::{self, outln};

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: a cron expression and the job each tick submits (submit flags
    /// and a command after --, or --template with --param).
    #[command(
        after_help = "Examples:\n  drover schedule create nightly --cron '0 3 * * *' --tz Europe/Lisbon -- ./backup.sh\n  drover schedule create sim-hourly --cron '0 * * * *' --template sim --param config_path=/data/c.yaml\n  drover schedule create poll --cron '*/10 * * * * *' --overlap queue -- ./poll.sh   # 6 fields: seconds first\n\n--overlap: what a tick does while the previous tick's job has not ended: skip (the\ndefault), queue (wait for it), cancel-previous. --catch-up: ticks missed while no\nserver ran: none, one (the default; the latest once), all (up to --catch-up-max)."
    )]
    Create {
        /// Letters, digits, '-', '_' and '.'.
        #[arg(value_name = "NAME")]
        schedule_name: String,
        /// MIN HOUR DAY MONTH WEEKDAY, e.g. '*/5 * * * *' (or 6 fields, seconds first).
        #[arg(long)]
        cron: String,
        /// IANA time zone the expression is read in (default UTC).
        #[arg(long)]
        tz: Option<String>,
        #[arg(long, value_parser = ["skip", "queue", "cancel-previous"], default_value = "skip")]
        overlap: String,
        #[arg(long, value_parser = ["none", "one", "all"], default_value = "one")]
        catch_up: String,
        /// With --catch-up all: at most this many missed ticks (default 10).
        #[arg(long)]
        catch_up_max: Option<u32>,
        #[command(flatten)]
        job: Box<SubmitArgs>,
    },
    /// Every schedule and when it runs next.
    #[command(after_help = "Example:\n  drover schedule ls")]
    Ls,
    /// One schedule: its job, policies, last tick and next run times.
    #[command(after_help = "Example:\n  drover schedule show nightly -o json")]
    Show { name: String },
    /// Stop submitting until resumed.
    #[command(after_help = "Example:\n  drover schedule pause nightly")]
    Pause { name: String },
    /// Submit again from the next tick (ticks of the pause are not caught up).
    #[command(after_help = "Example:\n  drover schedule resume nightly")]
    Resume { name: String },
    /// Delete it (the jobs it submitted stay).
    #[command(after_help = "Example:\n  drover schedule rm nightly")]
    Rm { name: String },
}

fn print(cfg: &ClientConfig, s: &Schedule) {
    if cfg.output == OutputFormat::Json {
        output::json(s);
        return;
    }
    outln!("name:      {}", s.name);
    outln!("cron:      {} ({})", s.cron, s.tz);
    outln!("state:     {}", if s.paused { "paused" } else { "active" });
    match (&s.job, &s.template) {
        (Some(job), _) => outln!("job:       {}", job.exec.display()),
        (_, Some(t)) => outln!("template:  {}", t.name),
        _ => {}
    }
    outln!(
        "policies:  overlap {}, catch-up {}",
        s.overlap.as_str(),
        s.catch_up.as_str()
    );
    outln!("last tick: {}", output::time(s.last_tick_at));
    if let Some(j) = &s.last_job_id {
        outln!("last job:  {j}");
    }
    if let Some(e) = &s.last_error {
        outln!("note:      {e}");
    }
    for t in &s.next_runs {
        outln!("next:      {}", t.to_rfc3339());
    }
}

pub async fn schedule(cfg: &ClientConfig, cmd: ScheduleCommand) -> Result<i32> {
    let client = Client::new(cfg)?;
    let path = |name: &str, verb: &str| format!("/v1/schedules/{}{verb}", segment(name));
    let usage = |e: String| CliError::Usage(e);
    match cmd {
        ScheduleCommand::Create {
            schedule_name,
            cron,
            tz,
            overlap,
            catch_up,
            catch_up_max,
            job,
        } => {
            if job.wait || job.follow || job.has_local_inputs() || job.array.is_some() {
                return Err(CliError::Usage(
                    "schedule create takes no --wait, --follow, --input or --array".into(),
                ));
            }
            let (job_req, template) = match &job.template {
                Some(name) => {
                    let t = job.template_submit()?;
                    if t.name.is_some()
                        || t.metadata.is_some()
                        || t.idempotency_key.is_some()
                        || !t.secrets.is_empty()
                        || !t.after.is_empty()
                    {
                        return Err(CliError::Usage(
                            "a schedule made from a template takes only --param and --template-version: --name, --metadata, --idempotency-key, --secret and --after belong to the template or are refused for schedules".into(),
                        ));
                    }
                    let template = ScheduleTemplate {
                        name: name.clone(),
                        version: t.version,
                        params: t.params,
                    };
                    (None, Some(template))
                }
                None => (Some(job.request()?), None),
            };
            let body = ScheduleCreate {
                name: schedule_name,
                cron,
                tz,
                job: job_req,
                template,
                overlap: overlap
                    .replace('-', "_")
                    .parse::<Overlap>()
                    .map_err(usage)?,
                catch_up: catch_up.parse::<CatchUp>().map_err(usage)?,
                catch_up_max,
            };
            let made: Schedule = client.post("/v1/schedules", &body).await?;
            match cfg.output {
                OutputFormat::Json => output::json(&made),
                OutputFormat::Table => {
                    outln!(
                        "{} next runs at {}",
                        made.name,
                        output::time(made.next_tick_at)
                    )
                }
            }
        }
        ScheduleCommand::Ls => {
            let list: ScheduleList = client.get("/v1/schedules").await?;
            if cfg.output == OutputFormat::Json {
                output::json(&list);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .schedules
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        format!("{} ({})", s.cron, s.tz),
                        if s.paused { "paused" } else { "active" }.to_string(),
                        output::time(s.next_tick_at),
                        output::time(s.last_tick_at),
                    ]
                })
                .collect();
            output::table(&["NAME", "CRON", "STATE", "NEXT", "LAST"], &rows);
        }
        ScheduleCommand::Show { name } => {
            let s: Schedule = client.get(&path(&name, "")).await?;
            print(cfg, &s);
        }
        ScheduleCommand::Pause { name } => {
            let s: Schedule = client
                .post(&path(&name, "/pause"), &serde_json::json!({}))
                .await?;
            print(cfg, &s);
        }
        ScheduleCommand::Resume { name } => {
            let s: Schedule = client
                .post(&path(&name, "/resume"), &serde_json::json!({}))
                .await?;
            print(cfg, &s);
        }
        ScheduleCommand::Rm { name } => {
            client.delete::<serde_json::Value>(&path(&name, "")).await?;
            eprintln!("deleted schedule {name}");
        }
    }
    Ok(0)
}
