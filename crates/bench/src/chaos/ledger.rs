//! The jobs of a chaos run and their ledger: each execution's heartbeats and end mark,
//! from which runs that overlapped or ran twice are found.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use drover_core::api::{Job, JobEvents};
use serde_json::{json, Value};

use super::system::Chaos;
use super::{Tally, LINES_PER_JOB};

/// A job that prints numbered lines and writes a heartbeat to its own ledger file
/// (one per attempt) every 50 ms, then an end mark. Times come from `/proc/uptime`,
/// which containers share with the host (busybox's `date` has no nanoseconds).
pub(super) fn job_command(ledger: &str) -> String {
    let lines: Vec<String> = (1..=LINES_PER_JOB).map(|i| i.to_string()).collect();
    format!(
        "L={ledger}/$DROVER_JOB_ID.$DROVER_ATTEMPT; for i in {}; do echo \"line $i\"; echo \"h $(cut -d' ' -f1 /proc/uptime)\" >> $L; sleep 0.05; done; echo \"end $(cut -d' ' -f1 /proc/uptime)\" >> $L",
        lines.join(" ")
    )
}

/// Job `i` of a run: every tenth a container when the engine is there, the rest shell.
pub(super) fn job_spec(i: usize, ledger: &Path, docker: bool) -> Value {
    let exec = if docker && i % 10 == 5 {
        json!({"kind": "docker", "image": crate::scenarios::IMAGE, "command": ["sh", "-c", job_command("/ledger")],
               "volumes": [format!("{}:/ledger", ledger.display())]})
    } else {
        json!({"kind": "shell", "command": job_command(&ledger.to_string_lossy())})
    };
    json!({"exec": exec, "max_attempts": 50, "backoff": {"base_ms": 100, "cap_ms": 1000}})
}

pub(super) fn expected_lines() -> Vec<String> {
    (1..=LINES_PER_JOB).map(|i| format!("line {i}")).collect()
}

/// Executions per job from the ledger: attempts that overlapped; returns the jobs whose
/// work ran to its end more than once, with the first attempt that did and its end.
pub(super) fn check_ledger(
    ledger: &Path,
    tally: &mut Tally,
) -> anyhow::Result<Vec<(String, u32, u128)>> {
    // job id -> attempt -> (first, last timestamp ns, completed)
    let mut runs: HashMap<String, BTreeMap<u32, (u128, u128, bool)>> = HashMap::new();
    for entry in std::fs::read_dir(ledger)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some((job, attempt)) = name.rsplit_once('.') else {
            continue;
        };
        let attempt: u32 = attempt.parse()?;
        let text = std::fs::read_to_string(&path)?;
        let times: Vec<u128> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|secs| (secs * 1e9) as u128)
            .collect();
        let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
            continue;
        };
        let completed = text.lines().any(|l| l.starts_with("end "));
        runs.entry(job.to_string())
            .or_default()
            .insert(attempt, (*first, *last, completed));
    }
    let mut twice = Vec::new();
    for (job, attempts) in &runs {
        let mut completed = attempts.iter().filter(|(_, r)| r.2);
        if let (Some((first, run)), Some(_)) = (completed.next(), completed.next()) {
            twice.push((job.clone(), *first, run.1));
        }
        let list: Vec<_> = attempts.values().collect();
        let mut worst = 0u128;
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                worst = worst.max(a.1.saturating_sub(b.0));
            }
        }
        if worst > 0 {
            tally.overlapping += 1;
            tally.overlap_s = tally.overlap_s.max(worst as f64 / 1e9);
        }
    }
    Ok(twice)
}

/// Sorts the jobs whose work ran to its end twice by why (see [`Tally`]), and how long
/// a job ran on after its agent died.
pub(super) async fn classify_reruns(
    sys: &Chaos,
    jobs: &[Job],
    events: &HashMap<String, JobEvents>,
    twice: Vec<(String, u32, u128)>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let index_of: HashMap<String, usize> = sys
        .agent_ids()
        .await?
        .into_iter()
        .filter_map(|(name, id)| Some((id, name.strip_prefix("chaos-")?.parse().ok()?)))
        .collect();
    for (id, attempt, end) in twice {
        let cut_off = events.get(&id).is_some_and(|e| {
            e.events.iter().any(|e| {
                e.kind == "lost"
                    && e.attempt == Some(attempt)
                    && e.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("lease expired"))
            })
        });
        // The agent that ran it, killed less than a second before or after the job's end
        // (a job in its last moments can finish before the watchdog, woken by its
        // agent's death, gets to kill it).
        let agent = jobs
            .iter()
            .find(|j| j.id == id)
            .and_then(|j| j.attempts.iter().find(|a| a.number == attempt))
            .and_then(|a| index_of.get(&a.agent_id));
        let died_at_end = sys
            .kills
            .iter()
            .any(|(i, _, at)| Some(i) == agent && at.abs_diff(end) < 1_000_000_000);
        // How long the job ran on after its agent died, if it did.
        if let Some(late) = sys
            .kills
            .iter()
            .filter(|(i, _, at)| Some(i) == agent && *at <= end)
            .map(|(_, _, at)| end - at)
            .min()
            .filter(|late| *late < 1_000_000_000)
        {
            tally.ran_on_s = tally.ran_on_s.max(late as f64 / 1e9);
        }
        if cut_off {
            tally.rerun_after_cutoff += 1;
        } else if died_at_end {
            tally.rerun_after_death_at_end += 1;
        } else {
            let timeline: Vec<String> = events
                .get(&id)
                .into_iter()
                .flat_map(|e| &e.events)
                .map(|e| {
                    format!(
                        "{} {} {:?} {}",
                        e.at.format("%H:%M:%S%.3f"),
                        e.kind,
                        e.attempt,
                        e.reason.as_deref().unwrap_or("")
                    )
                })
                .collect();
            let kills: Vec<i128> = sys
                .kills
                .iter()
                .filter(|(i, _, _)| Some(i) == agent)
                .map(|(_, _, at)| (*at as i128 - end as i128) / 1_000_000)
                .collect();
            eprintln!("    job {id}: attempt {attempt} (agent {agent:?}) ran to its end and the job ran again; its agent's kills relative to the end (ms): {kills:?}; {timeline:?}");
            tally.rerun_otherwise += 1;
        }
    }
    Ok(())
}
