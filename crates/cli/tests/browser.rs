//! The dashboard in a real browser: Debian's Chromium driven through chromedriver's
//! WebDriver API (`scripts/test.sh` installs both), against `drover server` and agents
//! started here. Signs in, watches a job change state and its log follow live to the
//! end, cancels a running job from its page, checks that a read token has no buttons and
//! that its forged POST is refused, and sees a killed agent go offline. Screenshots go
//! to `target/screenshots/` (and to `docs/` with `DROVER_UPDATE_SCREENSHOTS=1`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, free_port, healthy, json, stdout, wait_until, Daemon, BIN};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// A headless Chromium session.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Child,
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Browser {
    /// None when Chromium is not installed and the environment does not demand it
    /// (`DROVER_REQUIRE_BROWSER=1`, as `scripts/test.sh` sets).
    async fn start() -> Option<Browser> {
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            assert!(
                std::env::var("DROVER_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "chromium and chromedriver are not installed; scripts/test.sh installs them"
            );
            eprintln!("skipping the browser test: chromium/chromedriver not installed");
            return None;
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(start.elapsed() < LIMIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"));
        Some(Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver: child,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The element matching `css`, if any.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        // An element reference has this key (W3C WebDriver); "not found" is an error
        // object instead.
        v.get("element-6066-11e4-a52e-4f735466cecf")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    async fn must(&self, css: &str) -> String {
        self.find(css)
            .await
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    async fn click(&self, css: &str) {
        let el = self.must(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.must(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` in the page and returns what it returns (a promise is awaited).
    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": format!("const done = arguments[0]; Promise.resolve((async () => {{ {script} }})()).then(done, e => done(String(e)));"), "args": []})),
        )
        .await
    }

    async fn text(&self, css: &str) -> String {
        self.eval(&format!(
            "const e = document.querySelector({css:?}); return e ? e.textContent : null;"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits until `check` holds on the page, failing with `what`.
    async fn wait(&self, what: &str, script: &str) {
        let start = Instant::now();
        while self.eval(script).await != Value::Bool(true) {
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = root.join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &png).unwrap();
        if std::env::var("DROVER_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            std::fs::write(root.join("docs").join(name), &png).unwrap();
        }
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.call(reqwest::Method::DELETE, "/cookie", None).await;
        self.goto(&format!("{base}/login")).await;
        self.type_into("#token", token).await;
        self.click("button[type=submit]").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(BIN);
    server
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .args([
            "--lease-ttl",
            "3s",
            "--admin-token",
            "adm",
            "--join-token",
            "join",
        ])
        .env_remove("DROVER_CONFIG")
        .current_dir(dir);
    let _server = Daemon::spawn(server, dir, "server");
    wait_until("the server", LIMIT, || healthy(port));
    let agent = |name: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "agent", "--server", &base, "--token", "join", "--name", name, "--slots", "2",
        ])
        .arg("--work-dir")
        .arg(dir.join(name))
        .env_remove("DROVER_CONFIG")
        .current_dir(dir);
        Daemon::spawn(cmd, dir, name)
    };
    let _worker = agent("worker");
    let doomed = agent("doomed");
    let drover = |args: &[&str]| {
        client(&dir.join("ctx"), dir)
            .args(["--server", &base, "--token", "adm"])
            .args(args)
            .output()
            .unwrap()
    };
    wait_until("two agents online", LIMIT, || {
        json(&drover(&["agents", "-o", "json"]))["agents"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|a| a["status"] == "online").count() == 2)
    });

    // A bad token is refused with a message; the admin token signs in.
    b.sign_in(&base, "drt_not_a_token").await;
    // The click returns before the answer's page has loaded.
    b.wait("the refusal", "return !!document.querySelector('.error');")
        .await;
    assert!(b.text(".error").await.contains("does not sign in"));
    b.sign_in(&base, "adm").await;
    b.wait("the jobs list", "return location.pathname === '/jobs';")
        .await;

    // A submitted job appears and changes state without a reload; its log follows live
    // to the end and matches the stored log line for line.
    let job = stdout(&drover(&[
        "submit",
        "--",
        "for i in $(seq 1 40); do echo \"line $i\"; printf '\\033[32mgreen\\033[0m\\n' >&2; sleep 0.05; done",
    ]))
    .trim()
    .to_string();
    b.goto(&format!("{base}/jobs")).await;
    b.must(&format!("#job-{job}")).await;
    b.goto(&format!("{base}/jobs/{job}")).await;
    b.wait(
        "lines to arrive live",
        "return document.querySelectorAll('#log span[data-seq]').length >= 30;",
    )
    .await;
    b.screenshot("dashboard-job.png").await;
    b.wait(
        "the log to end",
        "return document.getElementById('log').dataset.ended === 'true';",
    )
    .await;
    b.wait(
        "the state to show succeeded",
        "return document.getElementById('job-state').textContent === 'succeeded';",
    )
    .await;
    let shown = b.text("#log").await;
    let stored = {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v1/jobs/{job}/logs.txt"))
            .bearer_auth("adm")
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    };
    let plain = stored.replace("\u{1b}[32m", "").replace("\u{1b}[0m", "");
    assert_eq!(shown, plain, "the page shows the stored log, line for line");
    let coloured = b
        .eval("return document.querySelector('#log .stderr span[style]').getAttribute('style');")
        .await;
    assert!(
        coloured.as_str().unwrap_or_default().contains("color"),
        "{coloured}"
    );
    b.goto(&format!("{base}/jobs")).await;
    b.wait(
        "the list to show it succeeded",
        &format!("return document.querySelector('#job-{job} .state').textContent === 'succeeded';"),
    )
    .await;
    // The list was loaded before this job existed: it appears, then changes, live.
    b.eval("window.sameList = true; return true;").await;
    let live = stdout(&drover(&["submit", "--", "sleep 1"]))
        .trim()
        .to_string();
    b.wait(
        "the new job to appear without a reload",
        &format!("return window.sameList === true && !!document.getElementById('job-{live}');"),
    )
    .await;
    b.wait(
        "the new job to succeed without a reload",
        &format!(
            "return document.querySelector('#job-{live} .state').textContent === 'succeeded';"
        ),
    )
    .await;
    b.screenshot("dashboard-jobs.png").await;
    assert_eq!(
        b.eval("return window.sameList;").await,
        json!(true),
        "no reload happened"
    );

    // At phone width nothing overflows the page sideways.
    b.call(
        reqwest::Method::POST,
        "/window/rect",
        Some(json!({"width": 390, "height": 844})),
    )
    .await;
    b.goto(&format!("{base}/jobs")).await;
    b.must(&format!("#job-{live}")).await;
    let fits = b
        .eval("return document.documentElement.scrollWidth <= window.innerWidth;")
        .await;
    b.screenshot("dashboard-phone.png").await;
    assert_eq!(fits, json!(true), "the jobs list fits a phone's width");
    b.call(
        reqwest::Method::POST,
        "/window/rect",
        Some(json!({"width": 1280, "height": 900})),
    )
    .await;

    // The overview: per queue, with charts of the last hour.
    b.goto(&format!("{base}/")).await;
    b.must("#queue-default svg.chart").await;
    b.screenshot("dashboard-overview.png").await;

    // A running job shows its progress and the history of it, and is canceled from its
    // page.
    let running = stdout(&drover(&[
        "submit",
        "--",
        "echo '::progress 30 warming up'; sleep 600",
    ]))
    .trim()
    .to_string();
    wait_until("the job to run", LIMIT, || {
        json(&drover(&["status", "-o", "json", &running]))["state"] == "running"
    });
    b.goto(&format!("{base}/jobs/{running}")).await;
    b.wait(
        "the progress and its history",
        "return document.getElementById('job-progress-text').textContent.includes('warming up') \
         && document.querySelectorAll('#progress-history tr').length === 1;",
    )
    .await;
    b.click("#cancel").await;
    b.wait(
        "the job to be canceled",
        "return document.getElementById('job-state').textContent === 'canceled';",
    )
    .await;

    // A read token sees no cancel button, and its forged POST is refused.
    let token = json(&drover(&[
        "token", "create", "--scope", "read", "--name", "viewer", "-o", "json",
    ]))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let other = stdout(&drover(&["submit", "--", "sleep 600"]))
        .trim()
        .to_string();
    b.sign_in(&base, &token).await;
    b.wait("the read session", "return location.pathname === '/jobs';")
        .await;
    b.goto(&format!("{base}/jobs/{other}")).await;
    assert!(
        b.find("#cancel").await.is_none(),
        "a read token has no cancel button"
    );
    let status = b
        .eval(&format!(
            "const csrf = document.querySelector('input[name=csrf]').value; \
             const r = await fetch('/jobs/{other}/cancel', {{method: 'POST', body: new URLSearchParams({{csrf}})}}); \
             return r.status;"
        ))
        .await;
    assert_eq!(status, json!(403));
    assert_ne!(
        json(&drover(&["status", "-o", "json", &other]))["state"],
        "canceled"
    );

    // The agents page shows a killed agent going offline.
    drop(doomed); // SIGKILL
    b.goto(&format!("{base}/agents")).await;
    let start = Instant::now();
    loop {
        let status = b.text("#agents tr:has(td) td:nth-child(2)").await;
        let offline = b
            .eval("return [...document.querySelectorAll('#agents tbody tr')].some(r => r.textContent.includes('doomed') && r.querySelector('.status-offline'));")
            .await;
        if offline == Value::Bool(true) {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "the killed agent never showed offline ({status})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.goto(&format!("{base}/agents")).await;
    }
    b.screenshot("dashboard-agents.png").await;
    let _ = drover(&["cancel", &other]);
}
