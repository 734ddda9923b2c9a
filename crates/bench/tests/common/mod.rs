//! Running `drover-bench` from the tests.

use std::process::Command;

/// Runs `drover-bench ARGS --json`; returns its rows and what it printed on stderr.
/// Fails the test when it does not succeed or prints no rows.
pub fn bench_rows(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run drover-bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "drover-bench failed: {stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let rows = rows.as_array().expect("an array of rows").clone();
    (rows, stderr)
}
