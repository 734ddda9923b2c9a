//! Python against a real server: the SDK's (`sdk/python`) own unittest suite, which
//! submits, follows, cancels and retries jobs and calls Python functions, against
//! `drover up`; and the example agent written from the OpenAPI document
//! (`examples/python-agent`), whose suite starts a server and runs jobs through it.
//! Both run with the system's python3 (standard library only).

mod common;

use std::process::Command;

use common::{free_port, python_suite, Up};

#[test]
fn the_python_sdks_suite_passes_against_a_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let up = Up::start(tmp.path(), &ctx, free_port());
    let tokens: toml::Table =
        toml::from_str(&std::fs::read_to_string(tmp.path().join("data/tokens.toml")).unwrap())
            .unwrap();
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python");
    let mut suite = Command::new("python3");
    suite
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(&sdk)
        .env("DROVER_SERVER", format!("http://127.0.0.1:{}", up.port))
        .env("DROVER_TOKEN", tokens["admin"].as_str().unwrap())
        .env("DROVER_CONFIG_DIR", &ctx);
    python_suite(suite);
    up.stop();
}

#[test]
fn the_example_python_agent_runs_jobs_from_a_real_server() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-agent");
    let mut suite = Command::new("python3");
    suite
        .args(["-m", "unittest", "test_agent", "-v"])
        .current_dir(&example)
        .env("DROVER_BIN", common::BIN);
    python_suite(suite);
}
