//! The store suite: every test runs against SQLite and against a real throwaway PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_core::api::{
    FinishRequest, HostInfo, Lease, LogRecord, PollRequest, RunningAttempt, Stream,
};
use drover_core::labels::Labels;
use drover_core::{JobState, Outcome, Priority, SubmitRequest, ValidJob};
use drover_server::store::{AgentAuth, NewAgent, Store, StoreError};

const TTL: Duration = Duration::from_secs(30);

struct Fx {
    store: Store,
    _tmp: tempfile::TempDir,
}

async fn sqlite() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    Fx {
        store: Store::open(tmp.path(), None).await.unwrap(),
        _tmp: tmp,
    }
}

async fn postgres() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let url = drover_server::testing_pg::fresh_database().await;
    Fx {
        store: Store::open(tmp.path(), Some(&url)).await.unwrap(),
        _tmp: tmp,
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::postgres().await).await
            }
        }
    )*};
}

both!(
    concurrent_claimers_lease_every_job_exactly_once,
    priority_first_then_fifo,
    labels_and_queues_decide_who_gets_a_job,
    run_at_is_respected,
    idempotency_key_returns_the_same_job,
    concurrent_submits_of_one_new_key_make_one_job,
    expired_lease_is_retried_then_fails_when_attempts_are_used_up,
    lease_that_never_started_does_not_use_an_attempt,
    stale_attempt_writes_are_refused,
    resent_log_batches_are_stored_once_and_read_in_order,
    failed_attempt_is_retried_after_a_backoff,
    cancel_queued_running_and_finished_jobs,
    poll_reconciliation_kills_unknown_attempts_and_releases_forgotten_leases,
    a_poll_renews_then_leases_up_to_its_free_slots,
    claim_looks_past_jobs_the_agent_cannot_run,
    finish_many_ends_each_attempt_as_one_finish_would,
    finish_many_records_starts_that_came_with_the_end,
    log_batches_of_many_attempts_are_stored_as_one_each_would_be,
);

fn t0() -> DateTime<Utc> {
    Utc::now()
}

fn valid(req: SubmitRequest, now: DateTime<Utc>) -> ValidJob {
    req.validate(now).unwrap()
}

fn shell(cmd: &str) -> SubmitRequest {
    SubmitRequest::shell(cmd)
}

async fn agent(
    store: &Store,
    name: &str,
    slots: u32,
    labels: &[(&str, &str)],
    queues: &[&str],
) -> AgentAuth {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let new = NewAgent {
        name: name.into(),
        labels: labels.clone(),
        queues: queues.clone(),
        slots,
        host: HostInfo::default(),
    };
    let (id, _) = store
        .register_agent(
            &new,
            &format!("hash-{name}-{}", uuid_like()),
            "test",
            t0(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    AgentAuth {
        id,
        name: name.into(),
        labels,
        queues,
        slots,
    }
}

fn uuid_like() -> u64 {
    rand::random()
}

async fn enqueue(store: &Store, reqs: Vec<SubmitRequest>, now: DateTime<Utc>) -> Vec<String> {
    let jobs = reqs.into_iter().map(|r| valid(r, now)).collect();
    store
        .enqueue(jobs, "test", now)
        .await
        .unwrap()
        .into_iter()
        .map(|(j, _)| j.id)
        .collect()
}

fn finish(outcome: Outcome, code: Option<i32>) -> FinishRequest {
    FinishRequest {
        outcome,
        exit_code: code,
        error: None,
        result: None,
        gpus: None,
    }
}

async fn concurrent_claimers_lease_every_job_exactly_once(fx: Fx) {
    let now = t0();
    let ids = enqueue(
        &fx.store,
        (0..1000).map(|i| shell(&format!("echo {i}"))).collect(),
        now,
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = fx.store.clone();
        let a = agent(&store, &format!("claimer-{i}"), 1000, &[], &["default"]).await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let leases = store.claim(&a, now, TTL).await.unwrap();
                if leases.is_empty() {
                    break;
                }
                got.extend(leases.into_iter().map(|l| l.job_id));
            }
            got
        }));
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        for id in t.await.unwrap() {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 1000, "every job is leased");
    assert!(seen.values().all(|&n| n == 1), "no job is leased twice");
    for id in &ids {
        assert!(seen.contains_key(id));
    }
}

async fn priority_first_then_fifo(fx: Fx) {
    let now = t0();
    let mk = |name: &str, p: Priority| {
        let mut r = shell("true");
        r.name = Some(name.into());
        r.priority = Some(p);
        r
    };
    enqueue(
        &fx.store,
        vec![
            mk("low", Priority::LOW),
            mk("a", Priority::NORMAL),
            mk("high", Priority::HIGH),
            mk("b", Priority::NORMAL),
            mk("crit", Priority::CRITICAL),
            mk("c", Priority::NORMAL),
        ],
        now,
    )
    .await;
    let a = agent(&fx.store, "a", 1, &[], &["default"]).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let lease = fx
            .store
            .claim(&a, now, TTL)
            .await
            .unwrap()
            .pop()
            .expect("a lease");
        order.push(lease.name.clone());
        fx.store
            .start(&a.id, &lease.job_id, lease.attempt, now)
            .await
            .unwrap();
        fx.store
            .finish(
                &a.id,
                &lease.job_id,
                lease.attempt,
                &finish(Outcome::Succeeded, Some(0)),
                now,
                0.5,
            )
            .await
            .unwrap();
    }
    assert_eq!(order, ["crit", "high", "a", "b", "c", "low"]);
}

async fn labels_and_queues_decide_who_gets_a_job(fx: Fx) {
    let now = t0();
    let mut gpu = shell("train");
    gpu.labels.insert("gpu".into(), "a100".into());
    gpu.queue = Some("ml".into());
    let docker: SubmitRequest =
        serde_json::from_value(serde_json::json!({"exec": {"kind": "docker", "image": "busybox"}}))
            .unwrap();
    let ids = enqueue(&fx.store, vec![gpu, docker], now).await;
    let plain = agent(&fx.store, "plain", 10, &[], &["default", "ml"]).await;
    assert!(
        fx.store.claim(&plain, now, TTL).await.unwrap().is_empty(),
        "no labels, no job"
    );
    let wrong_queue = agent(&fx.store, "wq", 10, &[("gpu", "a100")], &["default"]).await;
    assert!(
        fx.store
            .claim(&wrong_queue, now, TTL)
            .await
            .unwrap()
            .is_empty(),
        "gpu job is in queue ml"
    );
    let wrong_value = agent(&fx.store, "wv", 10, &[("gpu", "t4")], &["ml"]).await;
    assert!(fx
        .store
        .claim(&wrong_value, now, TTL)
        .await
        .unwrap()
        .is_empty());
    let gpu_agent = agent(
        &fx.store,
        "g",
        10,
        &[("gpu", "a100"), ("os", "linux")],
        &["ml"],
    )
    .await;
    let got = fx.store.claim(&gpu_agent, now, TTL).await.unwrap();
    assert_eq!(got.iter().map(|l| &l.job_id).collect::<Vec<_>>(), [&ids[0]]);
    let docker_agent = agent(&fx.store, "d", 10, &[("docker", "true")], &["default"]).await;
    let got = fx.store.claim(&docker_agent, now, TTL).await.unwrap();
    assert_eq!(got.iter().map(|l| &l.job_id).collect::<Vec<_>>(), [&ids[1]]);
}

async fn run_at_is_respected(fx: Fx) {
    let now = t0();
    let mut later = shell("true");
    later.delay_ms = Some(3_600_000);
    enqueue(&fx.store, vec![later], now).await;
    let a = agent(&fx.store, "a", 10, &[], &["default"]).await;
    assert!(fx.store.claim(&a, now, TTL).await.unwrap().is_empty());
    let due = fx.store.next_due(now).await.unwrap().expect("a due time");
    assert!(
        (due - (now + chrono::Duration::hours(1)))
            .num_milliseconds()
            .abs()
            <= 1
    );
    let two_hours = now + chrono::Duration::hours(2);
    assert_eq!(fx.store.claim(&a, two_hours, TTL).await.unwrap().len(), 1);
}

async fn idempotency_key_returns_the_same_job(fx: Fx) {
    let now = t0();
    let mut r = shell("echo once");
    r.idempotency_key = Some("deploy-42".into());
    let first = fx
        .store
        .enqueue(vec![valid(r.clone(), now)], "test", now)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let second = fx
        .store
        .enqueue(vec![valid(r, now)], "test", now)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(first.1 && !second.1);
    assert_eq!(first.0.id, second.0.id);
    let (all, _) = fx.store.list_jobs(&Default::default(), None).await.unwrap();
    assert_eq!(all.len(), 1);
}

/// Regression (PostgreSQL): submits of the same new key at once each saw no job with it,
/// and all but one failed on the key's uniqueness with a database error (a 500).
async fn concurrent_submits_of_one_new_key_make_one_job(fx: Fx) {
    let now = t0();
    let mut r = shell("echo once");
    r.idempotency_key = Some("deploy-43".into());
    let submits = (0..8).map(|_| {
        let (store, job) = (fx.store.clone(), valid(r.clone(), now));
        tokio::spawn(async move { store.enqueue(vec![job], "test", now).await })
    });
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for submit in submits.collect::<Vec<_>>() {
        let (job, fresh) = submit.await.unwrap().unwrap().pop().unwrap();
        created += usize::from(fresh);
        ids.insert(job.id);
    }
    assert_eq!((created, ids.len()), (1, 1));
}

async fn expired_lease_is_retried_then_fails_when_attempts_are_used_up(fx: Fx) {
    let now = t0();
    let mut r = shell("sleep 100");
    r.max_attempts = Some(2);
    let id = enqueue(&fx.store, vec![r], now).await.remove(0);
    let a = agent(&fx.store, "a", 1, &[], &["default"]).await;
    let l = fx.store.claim(&a, now, TTL).await.unwrap().remove(0);
    fx.store.start(&a.id, &id, l.attempt, now).await.unwrap();
    let later = now + chrono::Duration::seconds(31);
    assert_eq!(fx.store.reap(later).await.unwrap(), 1);
    let job = fx.store.job(&id).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts[0].state, drover_core::api::AttemptState::Lost);
    // Never leased again before the TTL plus a margin after the last renewal: its agent
    // may still be stopping it.
    let expired = now + chrono::Duration::from_std(TTL).unwrap();
    let margin = chrono::Duration::from_std(drover_server::store::REQUEUE_MARGIN).unwrap();
    assert_eq!(
        job.run_at.timestamp_millis(),
        (expired + margin).timestamp_millis()
    );
    let too_soon = expired + margin - chrono::Duration::milliseconds(10);
    assert!(fx.store.claim(&a, too_soon, TTL).await.unwrap().is_empty());
    let l = fx.store.claim(&a, later, TTL).await.unwrap().remove(0);
    assert_eq!(l.attempt, 2);
    fx.store.start(&a.id, &id, 2, later).await.unwrap();
    let much_later = later + chrono::Duration::seconds(31);
    assert_eq!(fx.store.reap(much_later).await.unwrap(), 1);
    let job = fx.store.job(&id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error.as_deref().unwrap().starts_with("agent_lost"),
        "{:?}",
        job.error
    );
    assert_eq!(job.attempts_used, 2);
}

async fn lease_that_never_started_does_not_use_an_attempt(fx: Fx) {
    let now = t0();
    let id = enqueue(&fx.store, vec![shell("true")], now).await.remove(0);
    let a = agent(&fx.store, "a", 1, &[], &["default"]).await;
    fx.store.claim(&a, now, TTL).await.unwrap();
    fx.store
        .reap(now + chrono::Duration::seconds(31))
        .await
        .unwrap();
    let job = fx.store.job(&id).await.unwrap();
    assert_eq!((job.state, job.attempts_used), (JobState::Queued, 0));
}

async fn stale_attempt_writes_are_refused(fx: Fx) {
    let now = t0();
    let mut r = shell("true");
    r.max_attempts = Some(3);
    let id = enqueue(&fx.store, vec![r], now).await.remove(0);
    let zombie = agent(&fx.store, "zombie", 1, &[], &["default"]).await;
    let other = agent(&fx.store, "other", 1, &[], &["default"]).await;
    fx.store.claim(&zombie, now, TTL).await.unwrap();
    fx.store.start(&zombie.id, &id, 1, now).await.unwrap();
    let later = now + chrono::Duration::seconds(31);
    fx.store.reap(later).await.unwrap();
    let l = fx.store.claim(&other, later, TTL).await.unwrap().remove(0);
    assert_eq!(l.attempt, 2);
    let stale = |e: StoreError| matches!(e, StoreError::StaleAttempt { attempt: 1, .. });
    assert!(stale(
        fx.store.start(&zombie.id, &id, 1, later).await.unwrap_err()
    ));
    assert!(stale(
        fx.store
            .check_attempt(&zombie.id, &id, 1)
            .await
            .unwrap_err()
    ));
    assert!(stale(
        fx.store
            .progress(&zombie.id, &id, 1, 50.0, "x", later)
            .await
            .unwrap_err()
    ));
    assert!(stale(
        fx.store
            .finish(
                &zombie.id,
                &id,
                1,
                &finish(Outcome::Succeeded, Some(0)),
                later,
                0.5
            )
            .await
            .unwrap_err()
    ));
    let err = fx
        .store
        .finish(
            &zombie.id,
            &id,
            2,
            &finish(Outcome::Succeeded, Some(0)),
            later,
            0.5,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotYourAttempt { .. }), "{err:?}");
    let job = fx.store.job(&id).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Leased,
        "nothing the zombie sent changed the job"
    );
}

async fn resent_log_batches_are_stored_once_and_read_in_order(fx: Fx) {
    let rec = |seq: u64, stream: Stream| LogRecord {
        seq,
        ts: t0(),
        stream,
        text: format!("line {seq}"),
    };
    fx.store
        .append_logs("j", 1, &[rec(3, Stream::Stdout), rec(4, Stream::Stderr)])
        .await
        .unwrap();
    fx.store
        .append_logs("j", 1, &[rec(1, Stream::System), rec(2, Stream::Stdout)])
        .await
        .unwrap();
    fx.store
        .append_logs(
            "j",
            1,
            &[
                rec(2, Stream::Stdout),
                rec(3, Stream::Stdout),
                rec(4, Stream::Stderr),
            ],
        )
        .await
        .unwrap();
    fx.store
        .append_logs("j", 2, &[rec(1, Stream::Stdout)])
        .await
        .unwrap();
    let all = fx.store.read_logs("j", 1, 0, None, 100).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let after = fx.store.read_logs("j", 1, 2, None, 100).await.unwrap();
    assert_eq!(after.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    let stderr = fx
        .store
        .read_logs("j", 1, 0, Some(Stream::Stderr), 100)
        .await
        .unwrap();
    assert_eq!(stderr.iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
    let big: Vec<LogRecord> = (1..=2500).map(|s| rec(s, Stream::Stdout)).collect();
    fx.store.append_logs("k", 1, &big).await.unwrap();
    assert_eq!(
        fx.store
            .read_logs("k", 1, 0, None, 10_000)
            .await
            .unwrap()
            .len(),
        2500
    );

    // Batches with gaps, filled later out of order; a resent record keeps its first text.
    for seqs in [&[1u64, 5][..], &[9, 10], &[2, 3, 4, 5, 6], &[8, 7, 11]] {
        let batch: Vec<LogRecord> = seqs
            .iter()
            .map(|&s| LogRecord {
                text: format!("take {seqs:?}"),
                ..rec(s, Stream::Stdout)
            })
            .collect();
        fx.store.append_logs("g", 1, &batch).await.unwrap();
    }
    let gaps = fx.store.read_logs("g", 1, 0, None, 100).await.unwrap();
    assert_eq!(
        gaps.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    assert_eq!(gaps[4].text, "take [1, 5]", "the stored record wins");
    // Paging through many small chunks in small pages sees every record once.
    for start in (1..=300).step_by(3) {
        let batch: Vec<LogRecord> = (start..start + 3).map(|s| rec(s, Stream::Stdout)).collect();
        fx.store.append_logs("p", 1, &batch).await.unwrap();
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = fx.store.read_logs("p", 1, after, None, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        seen.extend(page.iter().map(|r| r.seq));
    }
    assert_eq!(seen, (1..=300).collect::<Vec<_>>());
}

/// Logs stored by the first schema (a row per record) are still there after the upgrade
/// to chunks.
#[tokio::test]
async fn logs_of_the_first_schema_survive_the_upgrade_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", tmp.path().join("logs.db").display());
    let v1 = include_str!("../migrations/sqlite/logs_0001_init.sql");
    logs_survive_the_upgrade(tmp, &url, v1, None).await;
}

#[tokio::test]
async fn logs_of_the_first_schema_survive_the_upgrade_postgres() {
    let tmp = tempfile::tempdir().unwrap();
    let url = drover_server::testing_pg::fresh_database().await;
    let v1 = include_str!("../migrations/postgres/logs_0001_init.sql");
    logs_survive_the_upgrade(tmp, &url, v1, Some(&url)).await;
}

async fn logs_survive_the_upgrade(
    tmp: tempfile::TempDir,
    url: &str,
    v1: &str,
    database: Option<&str>,
) {
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
        for sql in [
            "CREATE TABLE drover_migrations (component TEXT NOT NULL, version BIGINT NOT NULL, PRIMARY KEY (component, version))",
            "INSERT INTO drover_migrations VALUES ('logs', 1)",
            v1,
            "INSERT INTO log_records VALUES ('old', 1, 1, 1700000000123, 'system', '$ echo \"hi\"'), ('old', 1, 2, 1700000000456, 'stdout', 'hi')",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    let store = Store::open(tmp.path(), database).await.unwrap();
    let records = store.read_logs("old", 1, 0, None, 100).await.unwrap();
    let got: Vec<(u64, i64, Stream, &str)> = records
        .iter()
        .map(|r| (r.seq, r.ts.timestamp_millis(), r.stream, r.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, 1700000000123, Stream::System, "$ echo \"hi\""),
            (2, 1700000000456, Stream::Stdout, "hi"),
        ]
    );
    // New records go on after them.
    store
        .append_logs(
            "old",
            1,
            &[LogRecord {
                seq: 3,
                ts: Utc::now(),
                stream: Stream::Stdout,
                text: "new".into(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        store.read_logs("old", 1, 2, None, 100).await.unwrap()[0].text,
        "new"
    );
}

async fn failed_attempt_is_retried_after_a_backoff(fx: Fx) {
    let now = t0();
    let mut r = shell("exit 1");
    r.max_attempts = Some(2);
    r.backoff = Some(drover_core::backoff::Backoff {
        base_ms: 10_000,
        cap_ms: 10_000,
    });
    let id = enqueue(&fx.store, vec![r], now).await.remove(0);
    let a = agent(&fx.store, "a", 1, &[], &["default"]).await;
    fx.store.claim(&a, now, TTL).await.unwrap();
    fx.store.start(&a.id, &id, 1, now).await.unwrap();
    let job = fx
        .store
        .finish(&a.id, &id, 1, &finish(Outcome::Failed, Some(1)), now, 1.0)
        .await
        .unwrap()
        .job;
    assert_eq!(job.state, JobState::Queued);
    assert!(((job.run_at - now).num_milliseconds() - 10_000).abs() <= 1);
    assert!(
        fx.store.claim(&a, now, TTL).await.unwrap().is_empty(),
        "waits for the backoff"
    );
    let later = now + chrono::Duration::seconds(11);
    fx.store.claim(&a, later, TTL).await.unwrap().remove(0);
    fx.store.start(&a.id, &id, 2, later).await.unwrap();
    let job = fx
        .store
        .finish(&a.id, &id, 2, &finish(Outcome::Failed, Some(3)), later, 0.5)
        .await
        .unwrap()
        .job;
    assert_eq!(
        (job.state, job.exit_code, job.attempts_used),
        (JobState::Failed, Some(3), 2)
    );
    let kinds: Vec<String> = fx
        .store
        .events(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "leased",
            "started",
            "retry_scheduled",
            "leased",
            "started",
            "finished"
        ]
    );
}

async fn cancel_queued_running_and_finished_jobs(fx: Fx) {
    let now = t0();
    let ids = enqueue(&fx.store, vec![shell("sleep 1"), shell("sleep 2")], now).await;
    let (job, done) = fx.store.cancel(&ids[0], "user", now).await.unwrap();
    assert_eq!((job.state, done.agents.len()), (JobState::Canceled, 0));
    let a = agent(&fx.store, "a", 1, &[], &["default"]).await;
    let l = fx.store.claim(&a, now, TTL).await.unwrap().remove(0);
    assert_eq!(l.job_id, ids[1]);
    fx.store.start(&a.id, &ids[1], 1, now).await.unwrap();
    let (job, done) = fx.store.cancel(&ids[1], "user", now).await.unwrap();
    assert_eq!((job.state, job.cancel_requested), (JobState::Running, true));
    assert_eq!(done.agents, vec![a.id.clone()]);
    let running = [RunningAttempt {
        job_id: ids[1].clone(),
        attempt: 1,
    }];
    assert_eq!(
        fx.store.pending_cancels(&a.id, &running).await.unwrap(),
        running
    );
    let job = fx
        .store
        .finish(
            &a.id,
            &ids[1],
            1,
            &finish(Outcome::Canceled, None),
            now,
            0.5,
        )
        .await
        .unwrap()
        .job;
    assert_eq!(job.state, JobState::Canceled);
    let err = fx.store.cancel(&ids[1], "user", now).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let job = fx.store.retry(&ids[1], "user", now).await.unwrap();
    assert_eq!((job.state, job.attempts_used), (JobState::Queued, 0));
}

async fn poll_reconciliation_kills_unknown_attempts_and_releases_forgotten_leases(fx: Fx) {
    let now = t0();
    let ids = enqueue(&fx.store, vec![shell("a"), shell("b")], now).await;
    let a = agent(&fx.store, "a", 2, &[], &["default"]).await;
    assert_eq!(fx.store.claim(&a, now, TTL).await.unwrap().len(), 2);
    let later = now + chrono::Duration::seconds(1);
    let attempt = |job_id: &str, attempt| RunningAttempt {
        job_id: job_id.into(),
        attempt,
    };
    let renew = |running: Vec<RunningAttempt>| {
        let poll = PollRequest {
            running,
            wait_ms: 0,
            draining: false,
            stats: Default::default(),
        };
        let (store, a) = (fx.store.clone(), a.clone());
        async move {
            let (out, leases) = store
                .poll(&a, &poll, later, later, TTL, false)
                .await
                .unwrap();
            assert!(
                leases.is_empty(),
                "a poll that may not lease leases nothing"
            );
            out
        }
    };
    let out = renew(vec![attempt(&ids[0], 1), attempt("ghost", 7)]).await;
    assert_eq!(out.kill, [attempt("ghost", 7)]);
    let forgotten = fx.store.job(&ids[1]).await.unwrap();
    assert_eq!(
        forgotten.state,
        JobState::Queued,
        "a lease the agent does not know goes back"
    );
    assert_eq!(fx.store.job(&ids[0]).await.unwrap().state, JobState::Leased);
    // A poll sent before the agent's own finish of an attempt was stored still lists
    // it: that attempt is done, not stale. The lost one is still killed.
    fx.store
        .finish(
            &a.id,
            &ids[0],
            1,
            &finish(Outcome::Succeeded, Some(0)),
            later,
            0.5,
        )
        .await
        .unwrap();
    let out = renew(vec![attempt(&ids[0], 1), attempt(&ids[1], 1)]).await;
    assert_eq!(out.kill, [attempt(&ids[1], 1)]);
}

/// A poll renews, reconciles and leases in one transaction: a lease the agent forgot is
/// lost first, so its slot (and the job, as a new attempt) is leased again in the same
/// poll; a removed agent's poll leases nothing.
async fn a_poll_renews_then_leases_up_to_its_free_slots(fx: Fx) {
    let now = t0();
    let ids = enqueue(&fx.store, vec![shell("a"), shell("b"), shell("c")], now).await;
    let a = agent(&fx.store, "a", 2, &[], &["default"]).await;
    let poll = |running: Vec<(&str, u32)>| PollRequest {
        running: running
            .into_iter()
            .map(|(job_id, attempt)| RunningAttempt {
                job_id: job_id.into(),
                attempt,
            })
            .collect(),
        wait_ms: 0,
        draining: false,
        stats: Default::default(),
    };
    let leased = |leases: Vec<Lease>| -> Vec<(String, u32)> {
        leases.into_iter().map(|l| (l.job_id, l.attempt)).collect()
    };
    let (_, got) = fx
        .store
        .poll(&a, &poll(vec![]), now, now, TTL, true)
        .await
        .unwrap();
    assert_eq!(leased(got), [(ids[0].clone(), 1), (ids[1].clone(), 1)]);
    let later = now + chrono::Duration::seconds(1);
    let full = poll(vec![(&ids[0], 1), (&ids[1], 1)]);
    let (out, got) = fx
        .store
        .poll(&a, &full, later, later, TTL, true)
        .await
        .unwrap();
    assert!(
        out.kill.is_empty() && got.is_empty(),
        "no free slot: {got:?}"
    );
    let forgot = poll(vec![(&ids[0], 1)]);
    let (out, got) = fx
        .store
        .poll(&a, &forgot, later, later, TTL, true)
        .await
        .unwrap();
    assert!(out.kill.is_empty());
    assert_eq!(
        leased(got),
        [(ids[1].clone(), 2)],
        "the forgotten lease is lost, and its slot leases the oldest due job again"
    );
    fx.store.remove_agent(&a.id, "test", later).await.unwrap();
    let err = fx
        .store
        .poll(&a, &forgot, later, later, TTL, true)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent { .. }), "{err:?}");
    assert_eq!(fx.store.job(&ids[2]).await.unwrap().state, JobState::Queued);
}

async fn claim_looks_past_jobs_the_agent_cannot_run(fx: Fx) {
    let now = t0();
    let mut reqs: Vec<SubmitRequest> = (0..300)
        .map(|_| {
            let mut r = shell("needs a gpu");
            r.labels.insert("gpu".into(), "a100".into());
            r
        })
        .collect();
    reqs.push(shell("plain"));
    let ids = enqueue(&fx.store, reqs, now).await;
    let plain = agent(&fx.store, "plain", 1, &[], &["default"]).await;
    let got = fx.store.claim(&plain, now, TTL).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].job_id, ids[300],
        "the one job it can run, behind 300 it cannot"
    );
}

async fn finish_many_ends_each_attempt_as_one_finish_would(fx: Fx) {
    use drover_core::api::AttemptState;
    let now = t0();
    let mut flaky = shell("flaky");
    flaky.max_attempts = Some(2);
    let ids = enqueue(
        &fx.store,
        vec![shell("b's"), shell("ok"), shell("bad"), flaky, shell("ok2")],
        now,
    )
    .await;
    let b = agent(&fx.store, "b", 1, &[], &["default"]).await;
    assert_eq!(
        fx.store.claim(&b, now, TTL).await.unwrap()[0].job_id,
        ids[0]
    );
    let a = agent(&fx.store, "a", 10, &[], &["default"]).await;
    assert_eq!(fx.store.claim(&a, now, TTL).await.unwrap().len(), 4);
    for id in [&ids[1], &ids[3], &ids[4]] {
        fx.store.start(&a.id, id, 1, now).await.unwrap();
    }
    let ok = |code| finish(Outcome::Succeeded, Some(code));
    let items = vec![
        (
            ids[1].clone(),
            1,
            FinishRequest {
                result: Some(serde_json::json!({"x": 1})),
                ..ok(0)
            },
        ),
        // Never reported a start: still uses up its only attempt.
        (ids[2].clone(), 1, finish(Outcome::Failed, Some(2))),
        (ids[3].clone(), 1, finish(Outcome::Failed, Some(1))),
        (ids[0].clone(), 1, ok(0)),
        (ids[4].clone(), 7, ok(0)),
        (ids[1].clone(), 1, ok(0)),
        ("no-such-job".to_string(), 1, ok(0)),
        (ids[4].clone(), 1, ok(0)),
    ];
    let later = now + chrono::Duration::seconds(2);
    let done = fx
        .store
        .finish_many(&a.id, &items, later, &[0.5; 8], &[])
        .await
        .unwrap();
    assert!(done.released.is_empty(), "nothing waited on these");
    let out = done.results;
    let states: Vec<std::result::Result<JobState, String>> = out
        .iter()
        .map(|r| match r {
            Ok((s, _, _)) => Ok(*s),
            Err(StoreError::NotYourAttempt { .. }) => Err("not yours".into()),
            Err(StoreError::StaleAttempt { .. }) => Err("stale".into()),
            Err(StoreError::NotFound(_)) => Err("not found".into()),
            Err(e) => Err(format!("{e:?}")),
        })
        .collect();
    assert_eq!(
        states,
        [
            Ok(JobState::Succeeded),
            Ok(JobState::Failed),
            Ok(JobState::Queued),
            Err("not yours".into()),
            Err("stale".into()),
            Err("stale".into()),
            Err("not found".into()),
            Ok(JobState::Succeeded),
        ]
    );
    let ran = out[0].as_ref().unwrap().1.unwrap().as_millis();
    assert!((1999..=2001).contains(&ran), "ran {ran} ms");

    let job = |i: usize| fx.store.job(&ids[i]);
    let j = job(1).await.unwrap();
    assert_eq!(
        (j.exit_code, j.result, j.finished_at.is_some()),
        (Some(0), Some(serde_json::json!({"x": 1})), true)
    );
    assert_eq!(j.attempts[0].state, AttemptState::Succeeded);
    let j = job(2).await.unwrap();
    assert_eq!((j.exit_code, j.attempts_used), (Some(2), 1));
    assert_eq!(
        (j.attempts[0].state, j.attempts[0].exit_code),
        (AttemptState::Failed, Some(2))
    );
    let j = job(3).await.unwrap();
    assert_eq!((j.state, j.attempts_used), (JobState::Queued, 1));
    assert!(j.run_at > later && j.finished_at.is_none());
    assert_eq!(j.attempts[0].state, AttemptState::Failed);
    assert_eq!(
        job(0).await.unwrap().state,
        JobState::Leased,
        "b's job untouched"
    );
    assert_eq!(job(4).await.unwrap().state, JobState::Succeeded);
    let kinds = |events: Vec<drover_core::api::JobEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.kind).collect()
    };
    assert_eq!(
        kinds(fx.store.events(&ids[3]).await.unwrap())
            .last()
            .unwrap(),
        "retry_scheduled"
    );
    let finished: Vec<String> = kinds(fx.store.events(&ids[4]).await.unwrap());
    assert_eq!(finished.iter().filter(|k| *k == "finished").count(), 1);
}

/// Regression: a queued job whose lease could not be built (its sealed secrets could not
/// be opened after the key changed) made every poll answer 500, forever.
async fn a_job_whose_lease_cannot_be_built_fails_alone(url: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), url.as_deref()).await.unwrap();
    let mut sealed = shell("echo secret");
    sealed.secrets.insert("API_KEY".into(), "s3cr3t".into());
    sealed.priority = Some(Priority::HIGH);
    let ids = enqueue(&store, vec![sealed, shell("echo plain")], t0()).await;
    store.close().await;
    std::fs::write(tmp.path().join("secrets.key"), "ab".repeat(32)).unwrap();
    // Another key is refused at once now …
    let err = Store::open(tmp.path(), url.as_deref()).await.unwrap_err();
    assert!(err.to_string().contains("sealed with key"), "{err}");
    // … but a database from before the key's fingerprint was kept takes any key.
    sqlx::any::install_default_drivers();
    let db = url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("drover.db").display()));
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    sqlx::query("DELETE FROM server_meta")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = Store::open(tmp.path(), url.as_deref()).await.unwrap();
    let a = agent(&store, "a", 1, &[], &["default"]).await;
    let leases = store.claim(&a, t0(), TTL).await.unwrap();
    assert_eq!(leases.len(), 1, "the job behind the bad one is served");
    assert_eq!(leases[0].job_id, ids[1]);
    let bad = store.job(&ids[0]).await.unwrap();
    assert_eq!(bad.state, JobState::Failed);
    let error = bad.error.unwrap_or_default();
    assert!(error.starts_with("cannot_lease: "), "{error}");
    assert!(store.claim(&a, t0(), TTL).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_lease_cannot_be_built_fails_alone_sqlite() {
    a_job_whose_lease_cannot_be_built_fails_alone(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_lease_cannot_be_built_fails_alone_postgres() {
    let url = drover_server::testing_pg::fresh_database().await;
    a_job_whose_lease_cannot_be_built_fails_alone(Some(url)).await
}

async fn finish_many_records_starts_that_came_with_the_end(fx: Fx) {
    use drover_core::api::AttemptState;
    let now = t0();
    let ids = enqueue(&fx.store, vec![shell("a"), shell("b"), shell("c")], now).await;
    let a = agent(&fx.store, "a", 3, &[], &["default"]).await;
    assert_eq!(fx.store.claim(&a, now, TTL).await.unwrap().len(), 3);
    // b started the usual way; its start in the batch changes nothing.
    let b_started = now + chrono::Duration::milliseconds(100);
    fx.store.start(&a.id, &ids[1], 1, b_started).await.unwrap();
    let later = now + chrono::Duration::seconds(2);
    let ok = finish(Outcome::Succeeded, Some(0));
    let items = vec![
        (ids[0].clone(), 1, ok.clone()),
        (ids[1].clone(), 1, ok.clone()),
        (ids[2].clone(), 1, ok.clone()),
        (ids[2].clone(), 5, ok.clone()),
    ];
    let starts = [
        Some(later - chrono::Duration::milliseconds(500)),
        Some(later - chrono::Duration::milliseconds(500)),
        // Before the lease: kept at the lease.
        Some(now - chrono::Duration::hours(1)),
        Some(later),
    ];
    let done = fx
        .store
        .finish_many(&a.id, &items, later, &[0.5; 4], &starts)
        .await
        .unwrap();
    let ok_states: Vec<Option<JobState>> = done
        .results
        .iter()
        .map(|r| r.as_ref().ok().map(|e| e.0))
        .collect();
    assert_eq!(
        ok_states,
        [
            Some(JobState::Succeeded),
            Some(JobState::Succeeded),
            Some(JobState::Succeeded),
            None
        ]
    );
    assert_eq!(done.waited.len(), 2, "a and c started with their end");
    let ran = done.results[0].as_ref().unwrap().1.unwrap().as_millis();
    assert!((499..=501).contains(&ran), "a ran {ran} ms");
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    for (i, started) in [
        (0, later - chrono::Duration::milliseconds(500)),
        (1, b_started),
        (2, now),
    ] {
        let j = fx.store.job(&ids[i]).await.unwrap();
        assert_eq!(j.started_at.map(ms), Some(ms(started)), "job {i}");
        assert_eq!(
            j.attempts[0].started_at.map(ms),
            Some(ms(started)),
            "job {i}"
        );
        assert_eq!(
            (j.attempts_used, j.attempts[0].state),
            (1, AttemptState::Succeeded)
        );
        let events = fx.store.events(&ids[i]).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["submitted", "leased", "started", "finished"],
            "job {i}"
        );
        assert_eq!(ms(events[2].at), ms(started), "job {i}");
    }
}

async fn log_batches_of_many_attempts_are_stored_as_one_each_would_be(fx: Fx) {
    let rec = |seq: u64, text: &str| LogRecord {
        seq,
        ts: t0(),
        stream: Stream::Stdout,
        text: text.into(),
    };
    // Attempt b already has records 1-2 (a resend will overlap them).
    fx.store
        .append_logs("b", 1, &[rec(1, "b1"), rec(2, "b2")])
        .await
        .unwrap();
    let a = [rec(2, "a2"), rec(1, "a1"), rec(2, "dup")];
    let b = [rec(2, "b2 again"), rec(3, "b3")];
    let c = [rec(5, "c5")];
    fx.store
        .append_logs_many(&[
            ("a", 1, &a[..]),
            ("b", 1, &b[..]),
            ("c", 2, &c[..]),
            ("d", 1, &[]),
        ])
        .await
        .unwrap();
    let texts = |job: &'static str, attempt: u32| {
        let store = fx.store.clone();
        async move {
            let records = store.read_logs(job, attempt, 0, None, 100).await.unwrap();
            records.into_iter().map(|r| r.text).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        texts("a", 1).await,
        ["a1", "a2"],
        "sorted, the first of a seq kept"
    );
    assert_eq!(
        texts("b", 1).await,
        ["b1", "b2", "b3"],
        "stored records win"
    );
    assert_eq!(texts("c", 2).await, ["c5"]);
    assert!(texts("d", 1).await.is_empty());
    // Sent again, nothing changes.
    fx.store
        .append_logs_many(&[("a", 1, &a[..]), ("c", 2, &c[..])])
        .await
        .unwrap();
    assert_eq!(texts("a", 1).await, ["a1", "a2"]);
    assert_eq!(texts("c", 2).await, ["c5"]);
}
