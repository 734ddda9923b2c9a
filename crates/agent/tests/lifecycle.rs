//! Agent life: capacity, a server outage in the middle of a job, and the shutdown
//! protocol (drain, shutdown timeout, force-stop, exit-after-job, finish) driven through
//! the `AgentSignals` tokens in-process.

mod common;

use std::time::Duration;

use common::{agent_with, texts, Api};
use drover_agent::AgentExit;
use drover_core::api::Stream;
use drover_core::{JobState, SubmitRequest};
use drover_server::testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_never_run_more_than_two_jobs_at_once() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let _agent = agent_with(&server, |c| c.slots = 2);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let cmd = format!(
            "echo \"start $(date +%s%N)\" >> {t}; sleep 0.8; echo \"end $(date +%s%N)\" >> {t}",
            t = trace.display()
        );
        ids.push(api.submit(SubmitRequest::shell(cmd)).await.id);
    }
    for id in &ids {
        let done = api.wait_done(id).await;
        assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    }
    let mut events: Vec<(u128, i32)> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| {
            let (kind, ts) = l.split_once(' ').unwrap();
            (ts.parse().unwrap(), if kind == "start" { 1 } else { -1 })
        })
        .collect();
    assert_eq!(events.len(), 10);
    // Ends sort before starts at the same instant.
    events.sort();
    let mut running = 0;
    let mut most = 0;
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 2, "{most} jobs ran at once");
    assert_eq!(most, 2, "both slots were used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_loses_no_line_and_stores_none_twice() {
    // The outage is 5 s here (not minutes) to keep the suite short; the lease TTL is
    // raised so the lease outlives it, as it would in production (30 s TTL).
    let data = tempfile::tempdir().unwrap();
    let mut config = TestServer::config(data.path().to_path_buf(), 0);
    config.lease_ttl = Duration::from_secs(30);
    let mut server = TestServer::start_with(config).await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |_| {});
    let lines = 800;
    let cmd = format!("for i in $(seq 1 {lines}); do echo \"line $i\"; sleep 0.01; done");
    let job = api.submit(SubmitRequest::shell(cmd)).await;
    api.wait_log(&job.id, |l| texts(l, Stream::Stdout).len() >= 20)
        .await;
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await; // the outage itself, not an assertion
    let mut config = TestServer::config(data.path().to_path_buf(), server.port);
    config.lease_ttl = Duration::from_secs(30);
    let _server = TestServer::start_with(config).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&job.id).await;
    let expected: Vec<String> = (1..=lines).map(|i| format!("line {i}")).collect();
    assert_eq!(texts(&logs, Stream::Stdout), expected);
    let seqs_ok = logs.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1);
    assert!(seqs_ok, "every record stored once, seq without gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_running_jobs_finish_and_takes_no_new_work() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let agent = agent_with(&server, |_| {});
    let job = api
        .submit(SubmitRequest::shell("echo started; sleep 1; echo done"))
        .await;
    api.wait_log(&job.id, |l| texts(l, Stream::Stdout).len() == 1)
        .await;
    agent.signals.drain.cancel();
    let exit = agent.exit().await;
    assert_eq!(exit, AgentExit::Drained);
    assert_eq!(exit.code(), 0);
    let done = api.job(&job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let later = api.submit(SubmitRequest::shell("true")).await;
    let later = api.job(&later.id).await.unwrap();
    assert_eq!(later.state, JobState::Queued);
}

/// Regression: jobs interrupted by an agent's shutdown ended `canceled` (nobody canceled
/// them, and a one-attempt job was lost); they go back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_stopped_by_a_shutdown_go_back_to_the_queue() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let agent = agent_with(&server, |c| c.shutdown_timeout = Duration::from_millis(500));
    let mut req = SubmitRequest::shell("sleep 1000");
    req.grace_ms = Some(200);
    let job = api.submit(req).await;
    api.wait_running(&job.id).await;
    agent.signals.drain.cancel();
    let exit = agent.exit().await;
    assert_eq!(exit, AgentExit::ShutdownCanceledJobs);
    assert_eq!(exit.code(), 2);
    let job = api.job(&job.id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "{job:#?}");
    assert!(
        job.error
            .as_deref()
            .unwrap_or("")
            .starts_with("agent_shutdown"),
        "{job:#?}"
    );
    assert_eq!(
        (job.attempts_used, job.max_attempts),
        (0, 1),
        "the attempt is not used up"
    );
    // Another agent runs it.
    let _next = agent_with(&server, |_| {});
    let again = api
        .wait_for(&job.id, "its second run", |j| {
            j.current_attempt == 2 && j.state == JobState::Running
        })
        .await;
    assert_eq!(
        again.attempts[0]
            .error
            .as_deref()
            .map(|e| e.starts_with("agent_shutdown")),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_stop_kills_at_once_and_reports_failed() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let agent = agent_with(&server, |_| {});
    let mut req = SubmitRequest::shell("trap '' TERM; sleep 1000");
    req.grace_ms = Some(60_000);
    let job = api.submit(req).await;
    api.wait_running(&job.id).await;
    agent.signals.drain.cancel();
    agent.signals.force.cancel();
    let exit = agent.exit().await;
    assert_eq!(exit, AgentExit::ForceStopped);
    assert_eq!(exit.code(), 3);
    let done = api.job(&job.id).await.unwrap();
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.error.as_deref(), Some("force-stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_job_runs_one_job_and_exits() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let first = api.submit(SubmitRequest::shell("echo one")).await;
    let agent = agent_with(&server, |c| {
        c.slots = 1;
        c.exit_after_job = true;
    });
    let done = api.wait_done(&first.id).await;
    let second = api.submit(SubmitRequest::shell("echo two")).await;
    let exit = agent.exit().await;
    assert_eq!(exit, AgentExit::FinishedAfterJob);
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(api.job(&second.id).await.unwrap().state, JobState::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_signal_lets_current_jobs_end_then_exits() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let agent = agent_with(&server, |_| {});
    let job = api.submit(SubmitRequest::shell("sleep 0.5; echo ok")).await;
    api.wait_running(&job.id).await;
    agent.signals.finish.cancel();
    assert_eq!(agent.exit().await, AgentExit::Drained);
    assert_eq!(api.job(&job.id).await.unwrap().state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_faster_than_its_shipper_loses_no_line_while_the_server_answers() {
    // `seq` prints its 100,000 lines (≈7 MB as records) far faster than they ship, into
    // a 64 KiB spool: the job must wait for the shipper, not lose lines.
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |c| c.spool_limit_bytes = 64 * 1024);
    let lines = 100_000;
    let job = api
        .submit(SubmitRequest::shell(format!("seq 1 {lines}")))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&job.id).await;
    let system = texts(&logs, Stream::System);
    assert!(
        !system.iter().any(|t| t.contains("dropped")),
        "no line dropped: {system:?}"
    );
    let out = texts(&logs, Stream::Stdout);
    assert_eq!(out.len(), lines);
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, t)| *t == (i + 1).to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_lines_and_says_how_many() {
    // A tiny spool limit and a 3 s outage: the agent must drop, and say so in the log.
    let data = tempfile::tempdir().unwrap();
    let mut config = TestServer::config(data.path().to_path_buf(), 0);
    config.lease_ttl = Duration::from_secs(30);
    let mut server = TestServer::start_with(config).await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |c| c.spool_limit_bytes = 4096);
    let lines = 400;
    let cmd = format!("for i in $(seq 1 {lines}); do echo \"line $i\"; sleep 0.01; done");
    let job = api.submit(SubmitRequest::shell(cmd)).await;
    api.wait_log(&job.id, |l| texts(l, Stream::Stdout).len() >= 20)
        .await;
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself, not an assertion
    let mut config = TestServer::config(data.path().to_path_buf(), server.port);
    config.lease_ttl = Duration::from_secs(30);
    let _server = TestServer::start_with(config).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&job.id).await;
    let dropped: usize = texts(&logs, Stream::System)
        .iter()
        .filter_map(|t| t.split("dropped ").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(dropped > 0, "the outage overflowed the spool");
    let out = texts(&logs, Stream::Stdout);
    assert_eq!(
        out.len() + dropped,
        lines,
        "every line is either stored or counted as dropped"
    );
    let numbers: Vec<usize> = out
        .iter()
        .map(|t| t.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "kept lines stay in order"
    );
    let seqs_ok = logs.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1);
    assert!(seqs_ok);
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// Regression: a restarted agent did not stop the jobs its previous run left running.
/// A record whose pid now names another process is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_left_by_an_earlier_run_are_stopped_before_new_work() {
    use std::os::unix::process::CommandExt;
    let server = drover_server::testing::TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let spawn = || {
        std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let (mut left, mut stranger) = (spawn(), spawn());
    let records = work.path().join("attempts");
    std::fs::create_dir_all(&records).unwrap();
    let record = |pid: u32, start: u64| {
        format!(
            r#"{{"job_id":"j","attempt":1,"pgid":{pid},"start_time":{start},"container":null,"deadline_ms":0}}"#
        )
    };
    std::fs::write(
        records.join("j-1.json"),
        record(left.id(), start_time(left.id())),
    )
    .unwrap();
    std::fs::write(
        records.join("k-1.json"),
        record(stranger.id(), start_time(stranger.id()) + 1),
    )
    .unwrap();
    let _agent = common::RunningAgent::start(common::agent_config(&server, work.path()));
    let status = tokio::task::spawn_blocking(move || left.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "another process's pid is never hit"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    let give_up = tokio::time::Instant::now() + common::DEADLINE;
    while std::fs::read_dir(&records).unwrap().count() > 0 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "records are forgotten"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression (chaos run): an agent killed after a job ended but before the server had
/// its report let the job run a second time. The next run of the agent, under the same
/// identity, sends the rest of the log and the finish instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ended_while_its_agent_died_is_reported_not_run_again() {
    ended_while_the_agent_died(Unshipped::InSpoolFile).await;
}

/// The same, for a job whose unshipped records were only in the agent's memory: they
/// were written into the record with the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_only_memory_held_are_sent_from_the_record_after_a_crash() {
    ended_while_the_agent_died(Unshipped::InRecord).await;
}

/// Where the killed run left the log records the server did not have.
enum Unshipped {
    InSpoolFile,
    InRecord,
}

async fn ended_while_the_agent_died(unshipped: Unshipped) {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let http = reqwest::Client::new();
    let register: drover_core::api::RegisterResponse = http
        .post(format!("{}/v1/agents/register", server.url))
        .bearer_auth(&server.join_token)
        .json(&serde_json::json!({"name": "test-agent", "slots": 2, "host": {"hostname": "h", "os": "linux", "arch": "x86_64", "cpus": 2, "memory_bytes": 1, "version": "t"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = api
        .submit(SubmitRequest::shell("echo never run again"))
        .await;
    let polled: drover_core::api::PollResponse = http
        .post(format!("{}/v1/agents/poll", server.url))
        .bearer_auth(&register.token)
        .json(&serde_json::json!({"running": [], "wait_ms": 1000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled.leases[0].job_id, job.id);

    // What the killed run left: its identity, the record of the ended attempt, its
    // spool (one record already shipped, one not) and the result file.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let stem = format!(
        "{}-1",
        job.id.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        )
    );
    for d in ["attempts", "spool", &format!("workspaces/{stem}/.drover")] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    std::fs::write(
        w.join("identity.json"),
        serde_json::json!({"server": server.url, "agent_id": register.agent_id, "token": register.token}).to_string(),
    )
    .unwrap();
    let ts = chrono::Utc::now().to_rfc3339();
    let log = format!("{{\"seq\":1,\"ts\":\"{ts}\",\"stream\":\"system\",\"text\":\"$ echo never run again\"}}\n{{\"seq\":2,\"ts\":\"{ts}\",\"stream\":\"stdout\",\"text\":\"never run again\"}}\n");
    let record = serde_json::json!({"job_id": job.id, "attempt": 1, "pgid": null, "start_time": null, "container": null, "deadline_ms": 0});
    let end = serde_json::json!({"outcome": "succeeded", "exit_code": 0});
    let record = match unshipped {
        Unshipped::InSpoolFile => {
            std::fs::write(w.join(format!("spool/{stem}.jsonl")), log).unwrap();
            format!("{record}\n{end}\n")
        }
        // As `fence::mark_ended` writes it: the records, then the end, after the record.
        Unshipped::InRecord => format!("{record}\n{log}{end}\n"),
    };
    std::fs::write(w.join(format!("attempts/{stem}.json")), record).unwrap();
    std::fs::write(
        w.join(format!("workspaces/{stem}/.drover/result.json")),
        r#"{"ok": 1}"#,
    )
    .unwrap();

    let _agent = common::RunningAgent::start(common::agent_config(&server, w));
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.current_attempt, 1, "not run again");
    assert_eq!(done.result, Some(serde_json::json!({"ok": 1})));
    let out = texts(&api.logs(&job.id).await, Stream::Stdout);
    assert_eq!(out, ["never run again"]);
    let give_up = tokio::time::Instant::now() + common::DEADLINE;
    while std::fs::read_dir(w.join("attempts")).unwrap().count() > 0 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the record is forgotten once reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
