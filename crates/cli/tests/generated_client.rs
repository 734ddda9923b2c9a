//! The OpenAPI document against a tool we did not write: `openapi-python-client`
//! generates a Python client from `/openapi.json` as `drover up` serves it, and
//! `generated_client/test_generated_client.py` submits a job, polls it, reads and follows
//! its log and cancels another through that client, every answer parsed by the generated
//! models. Our own SDK and tests are written by the people who wrote the server; this is
//! the check that the document alone is enough to use the API. The generator comes from
//! `target/test-venv` (scripts/test.sh installs it and sets `DROVER_REQUIRE_GENERATOR=1`);
//! a plain `cargo test` without it skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, http_get, python_suite, Up};

/// The test virtualenv's `bin` folder.
fn venv_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin")
}

/// The lines of the generator's output that report a problem, less the one warning it
/// cannot help: `GET /v1/jobs/{id}/artifacts.tar` answers `application/x-tar`, a content
/// type it has no Python type for (this test downloads no archive). Each warning is a
/// header line, a reason and the offending part of the document as indented JSON that
/// ends with a `}` alone on its line.
fn unexpected_warnings(log: &str) -> Vec<&str> {
    let mut left = Vec::new();
    let mut in_tar_warning = false;
    for line in log.lines() {
        if line.starts_with("WARNING parsing GET /v1/jobs/{id}/artifacts.tar ") {
            in_tar_warning = true;
        } else if in_tar_warning {
            if line.starts_with("Cannot parse response")
                && !line.contains("(Unsupported content_type application/x-tar)")
            {
                left.push(line);
            }
            in_tar_warning = line != "}";
        } else if !(line.trim().is_empty()
            || line.starts_with("Generating ")
            || line.starts_with("Warning(s) encountered while generating")
            || line.starts_with("If you believe this was a mistake"))
        {
            left.push(line);
        }
    }
    left
}

#[test]
fn a_client_generated_from_the_openapi_document_submits_follows_and_cancels_jobs() {
    let bin = venv_bin();
    let (python, generator) = (bin.join("python"), bin.join("openapi-python-client"));
    if !python.exists() || !generator.exists() {
        assert!(
            std::env::var("DROVER_REQUIRE_GENERATOR").as_deref() != Ok("1"),
            "openapi-python-client is not installed in target/test-venv; scripts/test.sh installs it"
        );
        eprintln!("skipping the generated-client test: openapi-python-client is not installed in target/test-venv (scripts/test.sh installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let up = Up::start(tmp.path(), &ctx, free_port());
    let tokens: toml::Table =
        toml::from_str(&std::fs::read_to_string(tmp.path().join("data/tokens.toml")).unwrap())
            .unwrap();
    let admin = tokens["admin"].as_str().unwrap();

    let answer = http_get(up.port, "/openapi.json", Some(admin)).expect("GET /openapi.json");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .expect("an HTTP answer with a body");
    assert_eq!(head.split_whitespace().nth(1), Some("200"), "{head}");
    // The whole document came (the helper reads until the server closes).
    serde_json::from_str::<serde_json::Value>(body).expect("/openapi.json is JSON");
    let doc = tmp.path().join("openapi.json");
    std::fs::write(&doc, body).unwrap();

    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generated_client");
    let generated = tmp.path().join("generated");
    std::fs::create_dir(&generated).unwrap();
    let out = Command::new(&generator)
        .arg("generate")
        .arg("--path")
        .arg(&doc)
        .args(["--meta", "none", "--config"])
        .arg(here.join("config.yaml"))
        .arg("--output-path")
        .arg(generated.join("drover_client"))
        .output()
        .expect("openapi-python-client runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    // A warning means part of the document was dropped from the client.
    let warnings = unexpected_warnings(&log);
    assert!(
        warnings.is_empty(),
        "openapi-python-client left parts of the document out:\n{}\n\nits whole output:\n{log}",
        warnings.join("\n")
    );

    let mut suite = Command::new(&python);
    suite
        .args(["-m", "unittest", "test_generated_client", "-v"])
        .current_dir(&here)
        .env("DROVER_SERVER", format!("http://127.0.0.1:{}", up.port))
        .env("DROVER_TOKEN", admin)
        .env("GENERATED", &generated);
    python_suite(suite);
    up.stop();
}
