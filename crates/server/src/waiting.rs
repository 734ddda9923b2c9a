//! Why a queued job is not running: the answer `GET /v1/jobs/{id}`, `drover status`
//! and the dashboard give, from the job and the agents the server knows.

use chrono::{DateTime, Utc};
use drover_core::api::{Agent, Job, Provider};
use drover_core::labels::{self, satisfies};
use drover_core::JobState;

/// Why `job` waits, or None when it is not queued. `agents` is every known agent,
/// `providers` the providers of agents on demand as last seen.
pub fn wait_reason(
    job: &Job,
    agents: &[Agent],
    providers: &[Provider],
    now: DateTime<Utc>,
) -> Option<String> {
    let why = blocker(job, agents, providers, now)?;
    let ahead = job.queue_position.map_or(0, |p| p.saturating_sub(1));
    Some(match ahead {
        0 => why,
        1 => format!("{why}; 1 job is ahead of it in queue {}", job.queue),
        n => format!("{why}; {n} jobs are ahead of it in queue {}", job.queue),
    })
}

/// What keeps `job` from running, leaving out its place in the queue: the part jobs
/// waiting for the same thing share (the overview counts jobs by it).
pub fn blocker(
    job: &Job,
    agents: &[Agent],
    providers: &[Provider],
    now: DateTime<Utc>,
) -> Option<String> {
    if job.state != JobState::Queued {
        return None;
    }
    if job.run_at > now {
        let at = job.run_at.format("%Y-%m-%d %H:%M:%S UTC");
        return Some(if job.attempts_used > 0 {
            format!("backing off after a failed attempt: it may run again at {at}")
        } else {
            format!("waiting for its start time, {at}")
        });
    }
    let required = job.required_labels();
    let provider = providers
        .iter()
        .find(|p| crate::provision::offers(p, job))
        .map(|p| provider_state(p, now));
    let online: Vec<&Agent> = agents.iter().filter(|a| a.status != "offline").collect();
    let serving: Vec<&Agent> = online
        .iter()
        .copied()
        .filter(|a| a.queues.contains(&job.queue))
        .collect();
    let fitting: Vec<&Agent> = serving
        .iter()
        .copied()
        .filter(|a| satisfies(&a.labels, &required))
        .collect();
    if fitting.is_empty() {
        let missing = if online.is_empty() {
            "no agent is online".to_string()
        } else if serving.is_empty() {
            format!("no online agent takes queue {}", job.queue)
        } else {
            format!(
                "no online agent has labels {}",
                labels::display(&required, ",")
            )
        };
        return Some(match provider {
            Some(p) => format!("{missing}; {p}"),
            None if providers.is_empty() => missing,
            None => format!("{missing}, and no provider offers them"),
        });
    }
    let taking: Vec<&Agent> = fitting
        .into_iter()
        .filter(|a| a.status == "online")
        .collect();
    if taking.is_empty() {
        return Some("every agent that could run it is draining".into());
    }
    if taking.iter().all(|a| a.running >= a.slots) {
        let slots: u32 = taking.iter().map(|a| a.slots).sum();
        let busy = format!("all {slots} slots of the agents that could run it are in use");
        return Some(match provider {
            Some(p) => format!("{busy}; {p}"),
            None => busy,
        });
    }
    Some("an agent with a free slot takes it at its next poll".into())
}

/// What a provider that could run the job is doing about it.
fn provider_state(p: &Provider, now: DateTime<Utc>) -> String {
    let name = &p.name;
    if p.agents.iter().any(|a| a.state == "starting") {
        format!("provider {name} is starting an agent")
    } else if let Some(until) = p.backoff_until.filter(|t| *t > now) {
        let why = p.last_failure.as_deref().unwrap_or("unknown");
        format!(
            "provider {name} is backing off after failed starts until {} (last failure: {why})",
            until.format("%H:%M:%S UTC")
        )
    } else if p.agents.len() as u32 >= p.max_agents {
        format!(
            "provider {name} is at its maximum ({} agents)",
            p.max_agents
        )
    } else {
        format!("provider {name} will start an agent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::api::{AgentStats, HostInfo};
    use drover_core::labels::Labels;

    fn agent(status: &str, labels: &[(&str, &str)], running: u32) -> Agent {
        Agent {
            id: "a".into(),
            name: "a".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            queues: vec!["default".into()],
            slots: 2,
            running,
            status: status.into(),
            host: HostInfo::default(),
            stats: AgentStats::default(),
            registered_at: Utc::now(),
            last_seen_at: Utc::now(),
            provider: None,
        }
    }

    fn job(labels: &[(&str, &str)]) -> Job {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "id": "j", "name": "j", "queue": "default", "priority": 0, "state": "queued",
            "cancel_requested": false, "exec": {"kind": "shell", "command": "true"},
            "labels": labels, "timeout_ms": null, "grace_ms": 0, "max_attempts": 1,
            "backoff": {"base_ms": 0, "cap_ms": 0}, "env": {}, "secret_names": [],
            "metadata": null, "idempotency_key": null, "attempts_used": 0,
            "current_attempt": 0, "progress": null, "result": null, "exit_code": null,
            "error": null, "created_at": Utc::now(), "run_at": Utc::now(),
            "started_at": null, "finished_at": null
        }))
        .unwrap();
        job.queue_position = Some(1);
        job
    }

    #[test]
    fn says_what_is_missing() {
        let now = Utc::now() + chrono::Duration::seconds(1);
        let j = job(&[("gpu", "a100")]);
        assert_eq!(
            wait_reason(&j, &[], &[], now).unwrap(),
            "no agent is online"
        );
        let cpu = agent("online", &[("gpu", "none")], 0);
        assert_eq!(
            wait_reason(&j, std::slice::from_ref(&cpu), &[], now).unwrap(),
            "no online agent has labels gpu=a100"
        );
        let gpu = agent("draining", &[("gpu", "a100")], 0);
        assert!(wait_reason(&j, &[cpu, gpu.clone()], &[], now)
            .unwrap()
            .contains("draining"));
        let busy = agent("online", &[("gpu", "a100")], 2);
        assert!(wait_reason(&j, &[busy], &[], now)
            .unwrap()
            .contains("slots of the agents that could run it are in use"));
        let mut later = j.clone();
        later.run_at = now + chrono::Duration::hours(1);
        assert!(wait_reason(&later, &[gpu], &[], now)
            .unwrap()
            .starts_with("waiting for its start time"));
    }
}
