//! Runs every scenario at a tiny size so the benchmark cannot rot. Figures from a debug
//! build on a busy machine mean nothing; only that each scenario runs and reports is checked.

use std::process::Command;

#[test]
fn every_scenario_runs_at_a_tiny_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-bench"))
        .args(["all", "--size", "tiny", "--runs", "1", "--json"])
        .output()
        .expect("run drover-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drover-bench failed: {stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let rows = rows.as_array().expect("an array of rows");
    for scenario in ["dispatch", "latency", "queue", "logs", "memory", "docker"] {
        let mine: Vec<_> = rows.iter().filter(|r| r["scenario"] == scenario).collect();
        assert!(!mine.is_empty(), "no rows for {scenario}");
        for r in mine {
            assert!(
                r["median"]
                    .as_f64()
                    .is_some_and(|m| m.is_finite() && m >= 0.0),
                "{r}"
            );
        }
    }
}
