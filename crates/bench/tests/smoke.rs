//! Runs every scenario at a tiny size so the benchmark cannot rot. Figures from a debug
//! build on a busy machine mean nothing; only that each scenario runs and reports is checked.

mod common;

#[test]
fn every_scenario_runs_at_a_tiny_size() {
    let (rows, stderr) = common::bench_rows(&["all", "--size", "tiny", "--runs", "1"]);
    for scenario in [
        "dispatch",
        "latency",
        "queue",
        "logs",
        "memory",
        "docker",
        "files",
        "dashboard",
        "cluster",
        "workflows",
        "peers",
    ] {
        let mine: Vec<_> = rows.iter().filter(|r| r["scenario"] == scenario).collect();
        assert!(!mine.is_empty(), "no rows for {scenario}");
        for r in mine {
            assert!(
                r["median"]
                    .as_f64()
                    // A difference of two medians may come out below zero.
                    .is_some_and(|m| m.is_finite()
                        && (m >= 0.0 || r["metric"].as_str().unwrap().starts_with("added"))),
                "{r}"
            );
        }
    }
    // Celery is run, or its absence said: never silently left out.
    let celery = rows
        .iter()
        .any(|r| r["scenario"] == "peers" && r["metric"].as_str().unwrap().starts_with("Celery"));
    assert!(
        celery || stderr.contains("peers: Celery skipped: "),
        "no Celery rows and no line saying why:\n{stderr}"
    );
}
