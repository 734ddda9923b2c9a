//! `drover up --database postgres://… --servers 3`: three servers on one database act as
//! one. The context lists them all, exactly one holds the singleton duties, a job
//! submitted through the context runs on the local agents and its log reads the same
//! through any server; and `--servers` without PostgreSQL is refused.

mod common;

use common::{free_port, http_get, stderr, stdout, Up};

/// A port with the next two free as well.
fn three_free_ports() -> u16 {
    loop {
        let p = free_port();
        if p < 65000 && (1..3).all(|k| std::net::TcpListener::bind(("127.0.0.1", p + k)).is_ok()) {
            return p;
        }
    }
}

#[test]
fn up_with_three_servers_on_postgres_acts_as_one() {
    let db = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(drover_server::testing_pg::fresh_database());
    let tmp = tempfile::tempdir().unwrap();
    let (dir, ctx) = (tmp.path().join("work"), tmp.path().join("ctx"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = three_free_ports();
    let up = Up::start_with(&dir, &ctx, port, &["--database", &db, "--servers", "3"]);
    let urls: Vec<String> = (0..3)
        .map(|k| format!("http://127.0.0.1:{}", port + k))
        .collect();

    let context = std::fs::read_to_string(ctx.join("context.toml")).unwrap();
    assert!(context.contains(&urls.join(",")), "{context}");
    let token = context
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_string();

    let leaders = (0..3)
        .filter(|k| {
            http_get(port + k, "/metrics", Some(&token))
                .is_some_and(|m| m.lines().any(|l| l == "drover_leader 1"))
        })
        .count();
    assert_eq!(leaders, 1, "exactly one server leads");

    let id = up.submit(&["--", "echo", "across servers"]);
    let waited = up.drover(&["wait", &id]);
    assert!(waited.status.success(), "{}", stderr(&waited));
    for url in &urls {
        let out = up.drover(&["--server", url, "--token", &token, "logs", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("across servers"), "{}", stdout(&out));
    }
    let banner = up.stop();
    assert!(
        banner.contains("(3 servers on one PostgreSQL database)"),
        "{banner}"
    );
}

#[test]
fn several_servers_without_postgres_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--servers", "2", "--data"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs --database postgres://"),
        "{}",
        stderr(&out)
    );
}
