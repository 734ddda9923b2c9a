//! `drover template` and `drover submit --template` as a lab backend would use them: a
//! worker-owned command line with the backend's id and config path filled in, the
//! parameters and metadata in the job's env, the job found again by the backend's own
//! id (`key:K`), every bad parameter named, and a deleted template gone.

mod common;

use common::{free_port, stderr, stdout, Up};

#[test]
fn a_backend_submits_by_template_and_finds_its_job_by_its_own_id() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let line = "echo job=$DROVER_PARAM_JOB_ID cfg={{ params.config_path }} steps={{ params.steps }} meta=$DROVER_METADATA";
    let out = up.drover(&[
        "template",
        "create",
        "sim",
        "--name",
        "sim {{ params.job_id }}",
        "--param",
        "steps:integer=3",
        "--",
        line,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "sim version 1");
    let listed = stdout(&up.drover(&["template", "ls"]));
    assert!(
        listed.contains("sim") && listed.contains("config_path,job_id,steps"),
        "{listed}"
    );
    let shown = stdout(&up.drover(&["template", "show", "sim"]));
    assert!(shown.contains("param:     steps: integer = 3"), "{shown}");
    assert!(
        shown.contains("param:     job_id: string (required)"),
        "{shown}"
    );

    let out = up.drover(&[
        "submit",
        "--template",
        "sim",
        "--param",
        "job_id=J-42",
        "--param",
        "config_path=/data/c.yaml",
        "--idempotency-key",
        "J-42",
        "--metadata",
        r#"{"k":1}"#,
        "--wait",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stdout(&up.drover(&["logs", "key:J-42"]));
    assert!(
        log.contains(r#"job=J-42 cfg=/data/c.yaml steps=3 meta={"k":1}"#),
        "{log}"
    );
    let job = up.status("key:J-42");
    assert_eq!(job["template"]["name"], "sim");
    assert_eq!(job["template"]["version"], 1);
    assert_eq!(job["name"], "sim J-42");

    // Every missing parameter is named; a bad type too; a command is refused.
    let out = up.drover(&["submit", "--template", "sim", "--param", "steps=many"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    for p in ["params.config_path", "params.job_id", "params.steps"] {
        assert!(stderr(&out).contains(p), "{}", stderr(&out));
    }
    let out = up.drover(&["submit", "--template", "sim", "--", "echo", "mine"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = up.drover(&["status", "key:nobody"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no job was submitted with idempotency key"));

    // The job-log path takes parameters too: the backend finds the log by its own id.
    let tokens: toml::Table =
        toml::from_str(&std::fs::read_to_string(tmp.path().join("data/tokens.toml")).unwrap())
            .unwrap();
    let logs = tmp.path().join("shared");
    let mut agent = std::process::Command::new(common::BIN);
    agent
        .args([
            "agent",
            "--server",
            &format!("http://127.0.0.1:{}", up.port),
        ])
        .args(["--token", tokens["join"].as_str().unwrap()])
        .args(["--labels", "logs=shared", "--work-dir"])
        .arg(tmp.path().join("logs-agent"))
        .arg("--job-log-dir")
        .arg(&logs)
        .env_remove("DROVER_CONFIG");
    let _agent = common::Daemon::spawn(agent, tmp.path(), "logs-agent");
    let out = up.drover(&[
        "template",
        "create",
        "logged",
        "--label",
        "logs=shared",
        "--log-path",
        "runs/{{ params.job_id }}/job.log",
        "--",
        "echo ran {{ params.job_id }}",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = up.drover(&[
        "submit",
        "--template",
        "logged",
        "--param",
        "job_id=J-43",
        "--idempotency-key",
        "J-43",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mirrored = std::fs::read_to_string(logs.join("runs/J-43/job.log")).unwrap();
    assert!(mirrored.contains("ran J-43"), "{mirrored}");
    assert_eq!(up.status("key:J-43")["log_path"], "runs/J-43/job.log");
    let out = up.drover(&["submit", "--log-path", "../out.log", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("log_path"), "{}", stderr(&out));

    assert!(up.drover(&["template", "rm", "sim"]).status.success());
    let out = up.drover(&["submit", "--template", "sim", "--param", "job_id=x"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no template named"),
        "{}",
        stderr(&out)
    );
    up.stop();
}
