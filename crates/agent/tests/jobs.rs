//! Executors against a real server and real child processes: shell features, argv,
//! scripts, big interleaved output, timeouts and cancels that leave no process behind,
//! progress, results, secrets, spawn failures.

mod common;

use common::{server_and_agent, texts, wait_gone};
use drover_core::api::Stream;
use drover_core::{Exec, JobState, SubmitRequest};

fn process(argv: &[&str]) -> SubmitRequest {
    let mut req = SubmitRequest::shell("unused");
    req.exec = Exec::Process {
        argv: argv.iter().map(|s| s.to_string()).collect(),
    };
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_jobs_get_pipes_home_globs_and_and() {
    let (_server, api, _agent) = server_and_agent().await;
    let cmd = "echo test | grep test && echo \"home=$HOME\" && touch b.txt a.txt && echo *.txt && echo \"ws=$DROVER_WORKSPACE\" && pwd";
    let job = api.submit(SubmitRequest::shell(cmd)).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.exit_code, Some(0));
    let logs = api.wait_log(&job.id, |l| l.len() >= 6).await;
    assert_eq!(logs[0].stream, Stream::System);
    assert_eq!(logs[0].text, format!("$ {cmd}"));
    let out = texts(&logs, Stream::Stdout);
    assert_eq!(out[0], "test");
    assert_eq!(
        out[1],
        format!("home={}", std::env::var("HOME").unwrap_or_default())
    );
    assert_eq!(out[2], "a.txt b.txt");
    let ws = out[3].strip_prefix("ws=").unwrap();
    assert_eq!(out[4], ws, "the job runs in its workspace");
    assert!(
        !std::path::Path::new(ws).exists(),
        "workspace removed after the job"
    );
    let seqs: Vec<u64> = logs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=logs.len() as u64).collect::<Vec<_>>());
}

/// A job that ends within moments of starting costs one request after its lease: its
/// start and its log ride on its finish. A longer one is seen running while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_job_reports_start_log_and_end_in_one_request() {
    let (server, api, _agent) = server_and_agent().await;
    // However slow the machine, this job ends within its start's hold.
    let _holding = common::agent_with(&server, |c| {
        c.start_hold = std::time::Duration::from_secs(60);
        c.queues = vec!["hold".into()];
    });
    let logs_route = "/v1/jobs/{id}/attempts/{attempt}/logs";
    let mut req = SubmitRequest::shell("echo hi");
    req.queue = Some("hold".into());
    let job = api.submit(req).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let (started, finished) = (done.started_at.unwrap(), done.finished_at.unwrap());
    assert!(started <= finished, "{done:#?}");
    assert_eq!(done.attempts[0].started_at, Some(started));
    let logs = api.logs(&job.id).await;
    assert_eq!(texts(&logs, Stream::Stdout), ["hi"]);
    assert_eq!(
        api.requests("POST", logs_route).await,
        0,
        "the log came with the finish"
    );
    assert_eq!(api.requests("POST", "/v1/agents/finish").await, 1);

    let job = api
        .submit(SubmitRequest::shell("echo a; sleep 3; echo b"))
        .await;
    let running = api.wait_running(&job.id).await;
    assert!(
        running.finished_at.is_none(),
        "seen running before it ended"
    );
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(texts(&api.logs(&job.id).await, Stream::Stdout), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_argv_reaches_the_program_unchanged() {
    let (_server, api, _agent) = server_and_agent().await;
    let args = ["a b", "it's \"quoted\"", "$HOME", "*", ""];
    let mut argv = vec!["printf", "<%s>\\n"];
    argv.extend(args);
    let job = api.submit(process(&argv)).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&job.id).await;
    let expected: Vec<String> = args.iter().map(|a| format!("<{a}>")).collect();
    assert_eq!(texts(&logs, Stream::Stdout), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scripts_run_and_report_progress_and_results() {
    let (_server, api, _agent) = server_and_agent().await;
    // The script waits for the test to see the file progress before it prints a marker,
    // so the two progress sources cannot race.
    let body = r#"
import json, os, sys, time
print("hello from", sys.argv[0].rsplit("/", 1)[-1], flush=True)
with open(os.environ["DROVER_PROGRESS"], "a") as f:
    f.write("50 half way\n")
go = os.path.join(os.environ["DROVER_WORKSPACE"], "go")
print(go, flush=True)
deadline = time.time() + 30
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.02)
print("::progress 90 almost", flush=True)
with open(os.environ["DROVER_RESULT"], "w") as f:
    json.dump({"answer": 42, "attempt": os.environ["DROVER_ATTEMPT"]}, f)
"#;
    let mut req = SubmitRequest::shell("unused");
    req.exec = Exec::Script {
        interpreter: "python3".into(),
        body: body.into(),
    };
    let job = api.submit(req).await;
    let half = api
        .wait_for(&job.id, "progress 50", |j| {
            j.progress.as_ref().is_some_and(|p| p.percent == 50.0)
        })
        .await;
    assert_eq!(half.progress.unwrap().message, "half way");
    let logs = api
        .wait_log(&job.id, |l| texts(l, Stream::Stdout).len() >= 2)
        .await;
    std::fs::write(&texts(&logs, Stream::Stdout)[1], "").unwrap();
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(
        done.result,
        Some(serde_json::json!({"answer": 42, "attempt": "1"}))
    );
    let progress = done.progress.expect("progress reached the server");
    assert_eq!(
        (progress.percent, progress.message.as_str()),
        (90.0, "almost")
    );
    let logs = api.logs(&job.id).await;
    // The header is the script's body as a here-document.
    assert_eq!(logs[0].text, "$ python3 <<'EOF'");
    assert_eq!(logs[0].stream, Stream::System);
    let out = texts(&logs, Stream::Stdout);
    assert_eq!(out[0], "hello from script");
    assert_eq!(out[2], "::progress 90 almost");
}

/// A Python job calling `module:function` from a folder of the test's, with `args`
/// and `kwargs`.
fn python_call(
    dir: &std::path::Path,
    function: &str,
    args: serde_json::Value,
    kwargs: serde_json::Value,
) -> SubmitRequest {
    serde_json::from_value(serde_json::json!({"exec": {
        "kind": "python", "function": function, "args": args, "kwargs": kwargs,
        "path": [dir.to_string_lossy()],
    }}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_functions_return_results_and_raise_remote_exceptions() {
    let (_server, api, _agent) = server_and_agent().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pkg")).unwrap();
    std::fs::write(dir.path().join("pkg/__init__.py"), "").unwrap();
    std::fs::write(
        dir.path().join("pkg/fns.py"),
        r#"
def add(a, b, *, scale=1):
    print("adding", a, b, flush=True)
    return {"sum": (a + b) * scale}

def fail(why):
    raise ValueError("bad input: " + why)

class Tools:
    @staticmethod
    def pair():
        return {1, 2}
"#,
    )
    .unwrap();
    let call = |f: &str, args, kwargs| python_call(dir.path(), f, args, kwargs);

    let job = api
        .submit(call(
            "pkg.fns:add",
            serde_json::json!([2, 3]),
            serde_json::json!({"scale": 10}),
        ))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.result, Some(serde_json::json!({"sum": 50})));
    let logs = api.logs(&job.id).await;
    assert_eq!(logs[0].text, r#"$ pkg.fns:add(2, 3, scale=10)"#);
    assert_eq!(texts(&logs, Stream::Stdout), ["adding 2 3"]);

    // An exception: its type and message are the error, the traceback is in the log
    // (from the user's frame on) and in the result.
    let job = api
        .submit(call(
            "pkg.fns:fail",
            serde_json::json!(["x"]),
            serde_json::json!({}),
        ))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.error.as_deref(), Some("ValueError: bad input: x"));
    assert_eq!(done.exit_code, Some(1));
    let e = &done.result.as_ref().expect("the exception is the result")["exception"];
    assert_eq!(
        (e["type"].as_str(), e["module"].as_str()),
        (Some("ValueError"), Some("builtins"))
    );
    let tb = e["traceback"].as_str().unwrap();
    assert!(tb.starts_with("Traceback (most recent call last):"), "{tb}");
    assert!(tb.contains("fns.py") && !tb.contains("<string>"), "{tb}");
    let logs = api
        .wait_log(&job.id, |l| {
            texts(l, Stream::Stderr)
                .iter()
                .any(|t| t.starts_with("ValueError"))
        })
        .await;
    assert!(
        texts(&logs, Stream::Stderr)
            .iter()
            .any(|t| t.contains("in fail")),
        "{logs:?}"
    );

    // A return value JSON cannot hold, a missing function, a missing module.
    for (f, error) in [
        (
            "pkg.fns:Tools.pair",
            "ResultNotJSON: pkg.fns:Tools.pair returned set, which is not JSON",
        ),
        (
            "pkg.fns:nope",
            "AttributeError: module 'pkg.fns' has no attribute 'nope'",
        ),
        (
            "pkg.nope:f",
            "ModuleNotFoundError: No module named 'pkg.nope'",
        ),
    ] {
        let job = api
            .submit(call(f, serde_json::json!([]), serde_json::json!({})))
            .await;
        let done = api.wait_done(&job.id).await;
        assert_eq!(done.state, JobState::Failed, "{done:#?}");
        let got = done.error.unwrap_or_default();
        assert!(got.starts_with(error), "{f}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_result_file_fails_the_job_and_says_why() {
    let (_server, api, _agent) = server_and_agent().await;
    let job = api
        .submit(SubmitRequest::shell(
            "echo '{not json' > \"$DROVER_RESULT\"",
        ))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.exit_code, Some(0), "the job's own exit code is kept");
    assert!(done.result.is_none());
    let error = done.error.unwrap_or_default();
    assert!(
        error.starts_with("result file is not valid JSON: "),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_interleaved_lines_arrive_complete_and_in_order() {
    let (_server, api, _agent) = server_and_agent().await;
    let n = 50_000;
    let cmd =
        format!("for i in $(seq 1 {n}); do echo \"out $i\"; echo \"err $i\" >&2; done; exit 3");
    let job = api.submit(SubmitRequest::shell(cmd)).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.error.as_deref(), Some("exit code 3"));
    let logs = api.logs(&job.id).await;
    let seqs_ok = logs.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1);
    assert!(seqs_ok, "seq numbers run from 1 without gaps");
    let out = texts(&logs, Stream::Stdout);
    let err = texts(&logs, Stream::Stderr);
    assert_eq!(out.len(), n);
    assert_eq!(err.len(), n);
    for i in 0..n {
        assert_eq!(out[i], format!("out {}", i + 1));
        assert_eq!(err[i], format!("err {}", i + 1));
    }
    let system = texts(&logs, Stream::System);
    assert_eq!(
        system.last().map(String::as_str),
        Some("[drover] exit code 3")
    );
}

/// Three MiB in one burst: more than the spool keeps in memory, so it spills to the spool
/// file mid-log; nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_memory_spool_arrives_complete_and_in_order() {
    let (_server, api, _agent) = server_and_agent().await;
    let n = 30_000;
    let cmd = format!("seq -f '%098g' 1 {n}");
    let job = api.submit(SubmitRequest::shell(cmd)).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let out = texts(&api.logs(&job.id).await, Stream::Stdout);
    assert_eq!(out.len(), n);
    for (i, line) in out.iter().enumerate() {
        assert_eq!(line.parse::<usize>().ok(), Some(i + 1), "line {i}: {line}");
    }
}

/// Reads `$$` and `$!` that the job echoed first.
async fn job_pids(api: &common::Api, id: &str) -> Vec<i32> {
    let logs = api
        .wait_log(id, |l| texts(l, Stream::Stdout).len() >= 2)
        .await;
    texts(&logs, Stream::Stdout)
        .iter()
        .take(2)
        .map(|t| t.parse().expect("a pid"))
        .collect()
}

const SLEEPERS: &str = "sleep 1000 & echo $$; echo $!; sleep 1000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let (_server, api, _agent) = server_and_agent().await;
    let mut req = SubmitRequest::shell(SLEEPERS);
    req.timeout_ms = Some(1_000);
    req.grace_ms = Some(500);
    let job = api.submit(req).await;
    let pids = job_pids(&api, &job.id).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::TimedOut, "{done:#?}");
    assert_eq!(done.error.as_deref(), Some("timed out after 1s"));
    wait_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kills_the_whole_process_group() {
    let (_server, api, _agent) = server_and_agent().await;
    let mut req = SubmitRequest::shell(SLEEPERS);
    req.grace_ms = Some(500);
    let job = api.submit(req).await;
    let pids = job_pids(&api, &job.id).await;
    api.cancel(&job.id).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Canceled, "{done:#?}");
    assert_eq!(done.error.as_deref(), Some("canceled by user"));
    wait_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_stored_log() {
    let (_server, api, _agent) = server_and_agent().await;
    let secret = "s3cr3t-Value-42";
    let mut req = SubmitRequest::shell(
        "echo \"token is $TOKEN\"; echo \"$TOKEN\" >&2; echo \"::progress 10 $TOKEN\"; true s3cr3t-Value-42",
    );
    req.secrets.insert("TOKEN".into(), secret.into());
    let job = api.submit(req).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&job.id).await;
    assert!(logs.iter().all(|r| !r.text.contains(secret)), "{logs:#?}");
    assert_eq!(texts(&logs, Stream::Stdout)[0], "token is ***");
    assert!(
        logs[0].text.ends_with("true ***"),
        "the command header is masked too"
    );
    assert_eq!(texts(&logs, Stream::Stderr), ["***"]);
    assert_eq!(done.progress.map(|p| p.message), Some("***".to_string()));
}

/// A result is shown as the log is: a secret in it is masked, and a secret of several
/// lines (a PEM key) is masked in the log line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_in_results_and_line_by_line() {
    let (_server, api, _agent) = server_and_agent().await;
    let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END KEY-----";
    let mut req = SubmitRequest::shell(
        r#"printf '%s\n' "$KEY"; printf '{"got": "%s", "line": "BKcwggSjAgEAAoIBAQC7"}' "$TOKEN" > "$DROVER_RESULT""#,
    );
    req.secrets.insert("KEY".into(), key.into());
    req.secrets.insert("TOKEN".into(), "s3cr3t-Value-42".into());
    let job = api.submit(req).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(
        done.result,
        Some(serde_json::json!({"got": "***", "line": "***"}))
    );
    let logs = api.logs(&job.id).await;
    let out = texts(&logs, Stream::Stdout);
    assert!(
        !out.iter()
            .any(|l| l.contains("MIIEvQ") || l.contains("BKcwgg")),
        "{out:?}"
    );
    assert_eq!(out[1..3], ["***", "***"], "{out:?}");
}

/// Regression: a secret written in pieces, encoded, or across the point where a long
/// line is split reached the log unmasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_pieces_encoded_or_across_a_line_split_are_masked() {
    let (_server, api, _agent) = server_and_agent().await;
    let secret = "s3cr3t/Value+42";
    let script = r#"
import base64, json, sys, time, urllib.parse, os
s = os.environ["TOKEN"]
sys.stdout.write("pieces: " + s[:5]); sys.stdout.flush(); time.sleep(0.2)
sys.stdout.write(s[5:] + "\n")
print("b64:", base64.b64encode(("user:" + s).encode()).decode())
print("url:", urllib.parse.quote(s, safe=""))
print("json:", json.dumps({"t": s}))
for at in range(65530, 65540):
    print("x" * (at - 6) + s + "y" * 20)
sys.stdout.flush()
"#;
    let mut req = SubmitRequest::shell("unused");
    req.exec = Exec::Script {
        interpreter: "python3".into(),
        body: script.into(),
    };
    req.secrets.insert("TOKEN".into(), secret.into());
    let job = api.submit(req).await;
    let done = api.wait_done(&job.id).await;
    let logs = api.logs(&job.id).await;
    let errors = texts(&logs, Stream::Stderr);
    assert_eq!(done.state, JobState::Succeeded, "{errors:#?}");
    let out = texts(&logs, Stream::Stdout);
    for leak in [
        "s3cr3t",
        "Value+42",
        "czNjcjN0L1ZhbHVlKzQy",
        "s3cr3t%2FValue",
    ] {
        assert!(out.iter().all(|l| !l.contains(leak)), "{leak} leaked");
    }
    assert_eq!(out[0], "pieces: ***");
    let masked: usize = out.iter().map(|l| l.matches("***").count()).sum();
    assert_eq!(masked, 14, "every occurrence masked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_with_a_clear_error() {
    let (_server, api, _agent) = server_and_agent().await;
    let job = api.submit(process(&["drover-no-such-program", "x"])).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(
        done.error.as_deref(),
        Some("cannot start \"drover-no-such-program\": No such file or directory")
    );
    assert!(
        done.started_at.is_none(),
        "start is not sent for a job that did not start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_and_exit_codes_map_to_outcomes() {
    let (_server, api, _agent) = server_and_agent().await;
    let job = api.submit(SubmitRequest::shell("kill -9 $$")).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.exit_code, Some(137));
    assert_eq!(done.error.as_deref(), Some("killed by signal SIGKILL"));
}

/// Starts `sleep` in a new session and waits until it really left the job's session
/// (so the group kill at the end cannot reach it), then exits.
const ESCAPE: &str = "setsid sleep 30 & pid=$!; \
    while [ \"$(cut -d' ' -f6 /proc/$pid/stat)\" = \"$(cut -d' ' -f6 /proc/$$/stat)\" ]; do sleep 0.01; done; \
    echo $pid; echo bye";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_escapes_the_group_does_not_hang_the_attempt() {
    let (_server, api, _agent) = server_and_agent().await;
    let job = api.submit(SubmitRequest::shell(ESCAPE)).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&job.id).await;
    let out = texts(&logs, Stream::Stdout);
    assert_eq!(out[1], "bye");
    let system = texts(&logs, Stream::System);
    assert!(
        system.iter().any(|t| t.contains("pipes were still open")),
        "{system:#?}"
    );
    let escaped: i32 = out[0].parse().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(escaped),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_token_is_an_error_not_a_retry_loop() {
    let server = drover_server::testing::TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let mut config = common::agent_config(&server, work.path());
    config.token = "not-a-token".into();
    let result = tokio::time::timeout(
        common::DEADLINE,
        drover_agent::run(config, drover_agent::AgentSignals::default()),
    )
    .await
    .expect("returns at once");
    let err = result.expect_err("registration is refused");
    assert!(
        matches!(err, drover_agent::AgentError::Register(_)),
        "{err}"
    );
}

/// Regression: jobs inherited the agent's whole environment (its join token among it),
/// and a relative work dir gave them relative `DROVER_*` paths that broke inside the
/// workspace, so progress and results were silently lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_get_absolute_paths_and_none_of_the_agents_credentials() {
    let server = drover_server::testing::TestServer::start().await;
    let api = common::Api::new(&server);
    // A work dir given relative to the agent's current directory, as `drover up` does.
    let work = tempfile::tempdir_in(".").unwrap();
    let relative = std::path::Path::new(".").join(work.path().file_name().unwrap());
    let host = |k: &str, v: &str| (k.into(), v.into());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let _agent = common::agent_with(&server, |c| {
        c.work_dir = relative.clone();
        c.job_env = drover_agent::job_env(
            [
                ("PATH".into(), path),
                host("DROVER_TOKEN", "drj_join_secret"),
                host("DROVER_SERVER", "http://somewhere"),
                host("KEEP_ME", "kept"),
            ],
            &[],
        );
    });
    let body = r#"
import json, os
for k in sorted(os.environ):
    if k.startswith("DROVER_") or k == "KEEP_ME":
        print(k + "=" + os.environ[k])
with open(os.environ["DROVER_PROGRESS"], "a") as f:
    f.write("70 nearly\n")
with open(os.environ["DROVER_RESULT"], "w") as f:
    json.dump({"ok": True}, f)
"#;
    let mut req = SubmitRequest::shell("unused");
    req.exec = Exec::Script {
        interpreter: "python3".into(),
        body: body.into(),
    };
    let job = api.submit(req).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
    assert_eq!(done.progress.map(|p| p.percent), Some(70.0));
    let out = texts(&api.logs(&job.id).await, Stream::Stdout);
    assert!(out.contains(&"KEEP_ME=kept".to_string()), "{out:?}");
    let names: Vec<&str> = out
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        names,
        [
            "DROVER_ATTEMPT",
            "DROVER_JOB_ID",
            "DROVER_PROGRESS",
            "DROVER_RESULT",
            "DROVER_WORKSPACE",
            "KEEP_ME"
        ],
        "only the job's own DROVER_* variables: {out:?}"
    );
    for line in out
        .iter()
        .filter(|l| l.contains("_PROGRESS=") || l.contains("_RESULT=") || l.contains("_WORKSPACE="))
    {
        let value = line.split_once('=').unwrap().1;
        assert!(std::path::Path::new(value).is_absolute(), "{line}");
    }
}

#[test]
fn an_allow_list_lets_only_the_named_host_variables_through() {
    let vars = [
        "PATH",
        "HOME",
        "LC_ALL",
        "LC_TIME",
        "SECRET",
        "DROVER_TOKEN",
    ]
    .map(|k| (k.into(), "v".into()));
    let env = drover_agent::job_env(vars, &["PATH".into(), "LC_*".into(), "DROVER_*".into()]);
    let names: Vec<String> = env
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["PATH", "LC_ALL", "LC_TIME"]);
}
