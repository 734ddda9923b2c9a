//! What users tripped over in everyday use, one test per fix, with the real binary:
//! what ran shows in the log and `status` as a shell reads it back; agents leave, are
//! removed, pruned and told apart; status tells the truth about attempts, queue
//! position and result files; the CLI prints each problem once; `drover up & drover
//! submit` works the first time.

mod common;
#[path = "../../agent/tests/common/docker.rs"]
#[allow(dead_code)]
mod docker;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{client, free_port, healthy, json, stderr, stdout, wait_until, Daemon, Up, BIN};
use serde_json::Value;

/// What the shared Docker helpers wait at most.
pub const DEADLINE: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(60);

fn wait_state(up: &Up, job: &str, state: &str) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("job {job} {state}"), LIMIT, || {
        last = up.status(job);
        last["state"] == state
    });
    last
}

#[test]
fn a_scripts_log_starts_with_its_body_and_argv_is_shell_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    std::fs::write(tmp.path().join("job.py"), "print('one')\nprint('two')\n").unwrap();
    let script = up.submit(&["--script", "job.py", "--interpreter", "python3"]);
    wait_state(&up, &script, "succeeded");
    let log = up.drover(&["logs", &script]);
    assert_eq!(
        stderr(&log),
        "$ python3 <<'EOF'\nprint('one')\nprint('two')\nEOF\n",
        "the header is the body as a here-document"
    );
    assert_eq!(stdout(&log), "one\ntwo\n");

    let argv = up.submit(&[
        "--no-shell",
        "--",
        "python3",
        "-c",
        "print('hi there')",
        "a b",
    ]);
    wait_state(&up, &argv, "succeeded");
    let quoted = r#"python3 -c 'print('\''hi there'\'')' 'a b'"#;
    let shown = stdout(&up.drover(&["status", &argv]));
    assert!(shown.contains(&format!("command:   {quoted}\n")), "{shown}");
    assert!(
        stderr(&up.drover(&["logs", &argv])).starts_with(&format!("$ {quoted}\n")),
        "the log header is quoted the same way"
    );
    let pasted = Command::new("bash").args(["-c", quoted]).output().unwrap();
    assert_eq!(
        stdout(&pasted),
        "hi there\n",
        "pasted back into a shell, it runs"
    );
    up.stop();
}

#[test]
fn a_container_job_records_whether_it_got_gpus() {
    if !docker::docker_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let job = up.submit(&[
        "--image",
        docker::IMAGE,
        "--pull",
        "never",
        "--gpus",
        "1",
        "--",
        "true",
    ]);
    let done = wait_state(&up, &job, "succeeded");
    let got = done["attempts"][0]["gpus"].as_str().unwrap_or("<none>");
    assert!(matches!(got, "granted" | "unavailable"), "{done}");
    let shown = stdout(&up.drover(&["status", &job]));
    assert!(
        shown.contains(&format!("gpus:      attempt 1: {got}")),
        "{shown}"
    );
    if got == "unavailable" {
        // This engine has no NVIDIA runtime: a job that must have GPUs fails instead.
        let must = up.submit(&[
            "--image",
            docker::IMAGE,
            "--pull",
            "never",
            "--gpus",
            "1",
            "--gpus-required",
            "--",
            "true",
        ]);
        wait_state(&up, &must, "failed");
    }
    let plain = up.submit(&["--", "true"]);
    let done = wait_state(&up, &plain, "succeeded");
    assert!(done["attempts"][0].get("gpus").is_none(), "{done}");
    up.stop();
}

/// A server and agents as separate processes, with their own flags.
struct Cluster {
    dir: std::path::PathBuf,
    url: String,
    _server: Daemon,
}

impl Cluster {
    fn start(dir: &Path, flags: &[&str]) -> Cluster {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.join("data"))
            .args(["--admin-token", "adm", "--join-token", "join"])
            .args(flags)
            .env_remove("DROVER_CONFIG")
            .current_dir(dir);
        let server = Daemon::spawn(cmd, dir, "server");
        wait_until("the server", LIMIT, || healthy(port));
        Cluster {
            dir: dir.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            _server: server,
        }
    }

    /// An agent without `--name`: named after the host.
    fn agent(&self, work: &str) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "agent", "--server", &self.url, "--token", "join", "--slots", "1",
        ])
        .arg("--work-dir")
        .arg(self.dir.join(work))
        .env_remove("DROVER_CONFIG")
        .env_remove("DROVER_AGENT_NAME")
        .current_dir(&self.dir);
        Daemon::spawn(cmd, &self.dir, work)
    }

    fn drover(&self, args: &[&str]) -> Output {
        client(&self.dir.join("ctx"), &self.dir)
            .args(["--server", &self.url, "--token", "adm"])
            .args(args)
            .output()
            .unwrap()
    }

    fn agents(&self) -> Vec<Value> {
        let out = self.drover(&["agents", "-o", "json"]);
        json(&out)["agents"].as_array().unwrap().clone()
    }
}

impl Cluster {
    /// The id of the agent whose log is `d`'s (it logs its id when it registers).
    fn id_of(&self, d: &Daemon) -> String {
        let log = d.stderr();
        self.agents()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .find(|id| log.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no agent id in its log: {log}"))
    }
}

#[test]
fn agents_leave_at_once_get_distinct_names_show_memory_and_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(tmp.path(), &["--lease-ttl", "30s"]);
    let mut first = c.agent("w1");
    let _second = c.agent("w2");
    wait_until("two agents online", LIMIT, || {
        c.agents()
            .iter()
            .filter(|a| a["status"] == "online")
            .count()
            == 2
    });
    let mut names: Vec<String> = c
        .agents()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names[1],
        format!("{}-2", names[0]),
        "two agents on one host: {names:?}"
    );
    let table = stdout(&c.drover(&["agents"]));
    assert!(
        table.contains("MEMORY") && table.contains("GiB (") && table.contains("%)"),
        "{table}"
    );

    // A clean exit shows offline at once, not a 30 s lease TTL later.
    let first_id = c.id_of(&first);
    first.signal("TERM");
    assert!(first.wait_exit(LIMIT).success(), "{}", first.stderr());
    let gone = c
        .agents()
        .into_iter()
        .find(|a| a["id"] == first_id.as_str())
        .unwrap();
    assert_eq!(gone["status"], "offline", "{gone}");

    // `drover agents rm` removes one; an unknown id is not found (exit 3).
    let out = c.drover(&["agents", "rm", &first_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(c.agents().iter().all(|a| a["id"] != first_id.as_str()));
    let out = c.drover(&["agents", "rm", "a-nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn agents_gone_for_longer_than_prune_agents_after_are_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(
        tmp.path(),
        &["--lease-ttl", "2s", "--prune-agents-after", "3s"],
    );
    let agent = c.agent("w");
    wait_until("the agent online", LIMIT, || {
        c.agents().iter().any(|a| a["status"] == "online")
    });
    let id = c.id_of(&agent);
    drop(agent); // SIGKILL: it cannot say goodbye
    wait_until("the killed agent to be pruned", LIMIT, || {
        c.agents().iter().all(|a| a["id"] != id.as_str())
    });
    let out = c.drover(&["audit", "-o", "json"]);
    assert!(stdout(&out).contains("server:prune"), "{}", stdout(&out));
}

#[test]
fn status_tells_the_truth_about_attempts_queue_position_and_result_files() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let marker = tmp.path().join("second-time");
    let cmd = format!(
        "if [ -f {0} ]; then sleep 3; else touch {0}; exit 1; fi",
        marker.display()
    );
    let job = up.submit(&["--", &cmd]);
    wait_state(&up, &job, "failed");
    assert!(stdout(&up.drover(&["status", &job])).contains("attempts:  1 of 1\n"));
    assert!(up.drover(&["retry", &job]).status.success());
    wait_state(&up, &job, "running");
    let shown = stdout(&up.drover(&["status", &job]));
    assert!(shown.contains("attempts:  2 of 2\n"), "{shown}");

    let waiting = ["--label", "nobody=has-this", "--", "true"];
    let a = up.submit(&waiting);
    let b = up.submit(&waiting);
    assert_eq!(up.status(&a)["queue_position"], 1);
    let shown = stdout(&up.drover(&["status", &b]));
    assert!(
        shown.contains("state:     queued (number 2 in queue default)"),
        "{shown}"
    );
    assert!(
        shown.contains("waiting:   no online agent has labels nobody=has-this; 1 job is ahead of it in queue default"),
        "a job nobody can run says so: {shown}"
    );

    // `drover wait` prints each progress update the server received (the agent sends
    // at most one per 200 ms, the latest), none skipped between two of its reads.
    let steps = up.submit(&[
        "--",
        "for p in 10 20 30; do echo \"::progress $p step $p\"; sleep 0.4; done; echo '::progress 100 done'",
    ]);
    let out = up.drover(&["wait", &steps]);
    assert!(out.status.success());
    let told = stderr(&out);
    for p in ["10% step 10", "20% step 20", "30% step 30", "100% done"] {
        assert!(told.contains(p), "{p} missing from {told}");
    }

    let bad = up.submit(&["--", "echo '{not json' > $DROVER_RESULT"]);
    let done = wait_state(&up, &bad, "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("result file is not valid JSON"),
        "{done}"
    );
    assert_eq!(
        done["exit_code"], 0,
        "the exit code stays what the job returned"
    );
    up.stop();
}

#[test]
fn each_validation_problem_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let out = up.drover(&["submit", "--artifact", "../x", "--queue", "", "--", "true"]);
    assert_eq!(out.status.code(), Some(6));
    let err = stderr(&out);
    assert_eq!(err.matches("artifacts[0]").count(), 1, "{err}");
    assert_eq!(err.matches("queue:").count(), 1, "{err}");
    assert!(
        err.starts_with("error: the job spec is invalid:\n"),
        "{err}"
    );
    up.stop();
}

#[test]
fn up_and_submit_started_together_work_the_first_time() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let line = format!(
        "{BIN} up --port {port} --data data > up.log 2>&1 & {BIN} submit --wait -- echo together; code=$?; kill -INT %1; wait; exit $code"
    );
    let out = Command::new("bash")
        .args(["-c", &line])
        .current_dir(tmp.path())
        .env("DROVER_CONFIG_DIR", tmp.path().join("ctx"))
        .env_remove("DROVER_SERVER")
        .env_remove("DROVER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn progress_markers_stay_in_the_log_and_work_in_containers() {
    if !docker::docker_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let job = up.submit(&[
        "--image",
        docker::IMAGE,
        "--pull",
        "never",
        "--",
        "echo '::progress 75 three quarters'; sleep 1",
    ]);
    let done = wait_state(&up, &job, "succeeded");
    assert_eq!(done["progress"]["percent"], 75.0, "{done}");
    assert_eq!(done["progress"]["message"], "three quarters", "{done}");
    let log = stdout(&up.drover(&["logs", &job]));
    assert!(log.contains("::progress 75 three quarters\n"), "{log}");
    up.stop();
}

#[test]
fn rerun_submits_the_same_spec_secrets_included() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let first = up.submit(&[
        "--env",
        "GREETING=hello",
        "--secret",
        "TOKEN=s3cr3t-value",
        "--",
        "echo $GREETING ${#TOKEN}",
    ]);
    wait_state(&up, &first, "succeeded");
    let out = up.drover(&["rerun", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = stdout(&out).trim().to_string();
    assert_ne!(second, first);
    wait_state(&up, &second, "succeeded");
    assert_eq!(
        stdout(&up.drover(&["logs", &second])),
        "hello 12\n",
        "env and the secret came along"
    );
    let events = stdout(&up.drover(&["events", &second]));
    assert!(
        events.contains(&format!("run again of {first}")),
        "{events}"
    );
    let out = up.drover(&["rerun", "no-such-job"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    up.stop();
}

#[test]
fn a_concurrency_key_holds_its_limit_across_agents_as_the_jobs_see_it() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start_with(
        tmp.path(),
        &tmp.path().join("ctx"),
        free_port(),
        &["--agents", "4"],
    );
    let running = tmp.path().join("running");
    std::fs::create_dir_all(&running).unwrap();
    // Each job counts the jobs of the key running beside it, itself included.
    let script = format!(
        "touch {d}/$DROVER_JOB_ID; n=$(ls {d} | wc -l); sleep 1; rm {d}/$DROVER_JOB_ID; echo running=$n; [ $n -le 2 ]",
        d = running.display()
    );
    let ids: Vec<String> = (0..8)
        .map(|_| {
            up.submit(&[
                "--concurrency-key",
                "gpu0",
                "--concurrency-limit",
                "2",
                "--",
                &script,
            ])
        })
        .collect();
    let mut saw_two = false;
    for id in &ids {
        let out = up.drover(&["wait", id]);
        let log = stdout(&up.drover(&["logs", id]));
        assert!(out.status.success(), "{id}: {log}");
        saw_two |= log.contains("running=2");
    }
    assert!(saw_two, "two jobs of the key ran together at least once");
    up.stop();
}

#[test]
fn arrays_dependencies_and_schedules_work_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    // Six agents of two slots each: twelve places, so the array's 10 is what binds.
    let up = Up::start_with(
        tmp.path(),
        &tmp.path().join("ctx"),
        free_port(),
        &["--agents", "6"],
    );
    let running = tmp.path().join("running");
    std::fs::create_dir_all(&running).unwrap();
    let counts = tmp.path().join("counts");
    // Each member counts the members running beside it, itself included.
    let script = format!(
        "touch {d}/$DROVER_ARRAY_INDEX; n=$(ls {d} | wc -l); echo $n >> {c}; sleep 0.05; rm {d}/$DROVER_ARRAY_INDEX; [ $n -le 10 ]",
        d = running.display(),
        c = counts.display()
    );
    let group = up.submit(&["--array", "0-999%10", "--name", "sweep", "--", &script]);
    let mut last = Value::Null;
    wait_until("the array to end", Duration::from_secs(600), || {
        last = json(&up.drover(&["group", "status", "-o", "json", &group]));
        matches!(
            last["state"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        )
    });
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["counts"]["succeeded"], 1000);
    let seen: Vec<u32> = std::fs::read_to_string(&counts)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(seen.len(), 1000);
    let most = *seen.iter().max().unwrap();
    assert!((2..=10).contains(&most), "at most {most} ran at once");
    let shown = stdout(&up.drover(&["group", "status", &group]));
    assert!(shown.contains("1000 succeeded"), "{shown}");
    assert!(stdout(&up.drover(&["group", "ls"])).contains("sweep"));
    let out = up.drover(&["ls", "--group", &group, "--limit", "3", "-o", "json"]);
    assert_eq!(json(&out)["jobs"].as_array().unwrap().len(), 3);

    // A chain of three whose middle fails; a clean-up waits for that failure.
    let a = up.submit(&["--", "true"]);
    let b = up.submit(&["--after", &a, "--", "exit 3"]);
    let c = up.submit(&["--after", &format!("{b}:ok"), "--", "echo never"]);
    let cleanup = up.submit(&["--after", &format!("{b}:failed"), "--", "echo cleaning up"]);
    let out = up.drover(&["wait", &c]);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let shown = stdout(&up.drover(&["status", &c]));
    assert!(shown.contains(&format!("after:     {b}:ok")), "{shown}");
    assert!(shown.contains("dependency_failed"), "{shown}");
    assert!(up.drover(&["wait", &cleanup]).status.success());
    assert!(stdout(&up.drover(&["logs", &cleanup])).contains("cleaning up"));
    assert_eq!(
        up.status(&c)["attempts"].as_array().unwrap().len(),
        0,
        "never ran"
    );

    // Bad input says what is wrong.
    let out = up.drover(&["submit", "--array", "9-3", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("below the first"), "{}", stderr(&out));
    let out = up.drover(&["submit", "--after", "no-such-job", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no job or group"), "{}", stderr(&out));

    // A schedule every second (six fields) submits jobs that run; pause, show, rm.
    let out = up.drover(&[
        "schedule",
        "create",
        "beat",
        "--cron",
        "* * * * * *",
        "--name",
        "beat",
        "--",
        "echo tick",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut first = String::new();
    wait_until("a job of the schedule", LIMIT, || {
        let out = up.drover(&["ls", "--name", "beat", "-o", "json"]);
        first = json(&out)["jobs"][0]["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !first.is_empty()
    });
    assert!(up.drover(&["wait", &first]).status.success());
    assert!(stdout(&up.drover(&["logs", &first])).contains("tick"));
    let out = up.drover(&["schedule", "pause", "beat"]);
    assert!(
        stdout(&out).contains("state:     paused"),
        "{}",
        stdout(&out)
    );
    let shown = stdout(&up.drover(&["schedule", "ls"]));
    assert!(
        shown.contains("beat") && shown.contains("paused"),
        "{shown}"
    );
    let out = up.drover(&["schedule", "create", "bad", "--cron", "* * *", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("fields"), "{}", stderr(&out));
    let out = up.drover(&[
        "schedule",
        "create",
        "t",
        "--cron",
        "0 3 * * *",
        "--template",
        "sim",
        "--name",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--name"), "{}", stderr(&out));
    assert!(up.drover(&["schedule", "rm", "beat"]).status.success());
    let out = up.drover(&["schedule", "show", "beat"]);
    assert!(!out.status.success());
    up.stop();
}
