//! The README is code: its first screen and its two-minute tour are read from README.md
//! and run as written, in a fresh directory and HOME, with `drover up` started the
//! README's way (default port, data in ./.drover, relative paths and all). Two
//! substitutions, both of what a reader does by hand: `cargo run --release -p drover --`
//! and the `drover` on PATH are the binary under test, and `JOB` is a job id (a running
//! job for `cancel`, the script job for the rest).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{healthy, stderr, stdout, wait_until, Daemon, BIN};

const LIMIT: Duration = Duration::from_secs(60);

/// The README's `sh` code blocks, one list of command lines each.
fn sh_blocks() -> Vec<Vec<String>> {
    let readme = include_str!("../../../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) if !l.is_empty() => b.push(l.to_string()),
            _ => {}
        }
    }
    blocks
}

struct Shell<'a> {
    dir: &'a Path,
    path: String,
    home: &'a Path,
}

impl Shell<'_> {
    fn command(&self, line: &str) -> Command {
        let line = line.replace("cargo run --release -p drover --", "drover");
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &line])
            .current_dir(self.dir)
            .env("PATH", &self.path)
            .env("HOME", self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DROVER_CONFIG_DIR")
            .env_remove("DROVER_SERVER")
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_CONFIG");
        cmd
    }

    fn run(&self, line: &str) -> Output {
        let out = self.command(line).output().unwrap();
        eprintln!("$ {line}\n{}{}", stdout(&out), stderr(&out));
        out
    }

    fn json(&self, args: &str) -> serde_json::Value {
        let out = self.run(&format!("drover -o json {args}"));
        assert!(out.status.success(), "{args}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_state(&self, id: &str, pred: impl Fn(&str) -> bool) -> serde_json::Value {
        let mut job = serde_json::Value::Null;
        wait_until(&format!("job {id}"), LIMIT, || {
            job = self.json(&format!("status {id}"));
            pred(job["state"].as_str().unwrap_or(""))
        });
        job
    }
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "canceled", "timed_out"];

/// The "Files in and out" block: an input in, artifacts listed and downloaded, an upload.
fn files_section(sh: &Shell, blocks: &[Vec<String>]) {
    let block = blocks
        .iter()
        .find(|b| {
            b.iter()
                .any(|l| l.starts_with("drover submit --wait --input"))
        })
        .expect("the files block");
    std::fs::write(sh.dir.join("study.yaml"), "b: 2\na: 1\n").unwrap();
    let mut job = String::new();
    for line in block {
        let line = line.replace(" JOB", &format!(" {job}"));
        let out = sh.run(&line);
        assert!(out.status.success(), "{line}: {}", stderr(&out));
        let text = stdout(&out);
        match line.split_whitespace().nth(1) {
            Some("submit") => {
                job = sh.json("ls --limit 1")["jobs"][0]["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
            Some("artifacts") if line.contains(" ls ") => {
                assert!(text.contains("out/sorted.txt"), "{text}")
            }
            Some("artifacts") => {
                let got = std::fs::read_to_string(sh.dir.join("results/out/sorted.txt")).unwrap();
                assert_eq!(got, "a: 1\nb: 2\n");
            }
            Some("files") => {
                let id = text.trim();
                let list = sh.json("files ls");
                assert_eq!(list["files"][0]["id"], id, "{list}");
            }
            _ => panic!("the files block has a command this test does not know: {line}"),
        }
    }
}

#[test]
fn the_readme_first_screen_and_tour_work_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, home, bin) = (
        tmp.path().join("work"),
        tmp.path().join("home"),
        tmp.path().join("bin"),
    );
    for d in [&dir, &home, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(BIN, bin.join("drover")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = Shell {
        dir: &dir,
        path,
        home: &home,
    };
    let blocks = sh_blocks();
    let first = &blocks[0];
    assert_eq!(
        first.len(),
        2,
        "the first screen is two commands: {first:?}"
    );
    assert!(first[0].contains(" up"), "{first:?}");

    // 1. `drover up`, as written: port 7070, data in ./.drover.
    assert!(
        !healthy(7070),
        "port 7070 is taken: the README's `drover up` needs it"
    );
    let mut up = Daemon::spawn(sh.command(&format!("exec {}", first[0])), &dir, "up");
    wait_until("drover up on port 7070", LIMIT, || healthy(7070));
    wait_until("its agent", LIMIT, || {
        let out = sh.run("drover agents");
        stdout(&out).contains("online")
    });
    assert!(dir.join(".drover").is_dir(), "data in ./.drover");

    // 2. The second command streams the job's log live.
    let out = sh.run(&first[1]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("step 1\nstep 2\nstep 3\n"),
        "{}",
        stdout(&out)
    );

    // The tour. Its script job writes progress and a result through the paths drover
    // hands it (regression: relative paths broke them under the default data dir).
    let tour = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.starts_with("drover submit --script")))
        .expect("the tour block");
    std::fs::write(
        dir.join("job.py"),
        "import json, os\nprint('key is', os.environ['API_KEY'])\nopen(os.environ['DROVER_PROGRESS'], 'a').write('50 half way\\n')\njson.dump({'answer': 42}, open(os.environ['DROVER_RESULT'], 'w'))\n",
    )
    .unwrap();
    let sleeper = stdout(&sh.run("drover submit -- sleep 600"))
        .trim()
        .to_string();
    sh.wait_state(&sleeper, |s| s == "running");
    let mut ids: HashMap<&str, String> = HashMap::new();
    for line in tour {
        let job = match line.split_whitespace().nth(1) {
            Some("cancel") => Some(sleeper.clone()),
            _ => ids.get("script").cloned(),
        };
        let line = match &job {
            Some(id) => line.replace(" JOB", &format!(" {id}")),
            None => line.clone(),
        };
        let out = sh.run(&line);
        let (text, words) = (stdout(&out), line.split_whitespace().collect::<Vec<_>>());
        match (words[1], words.get(2).copied()) {
            ("submit", Some("--wait")) => {
                let code = out.status.code();
                let id = sh.json("ls --limit 1")["jobs"][0]["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let job = sh.wait_state(&id, |s| TERMINAL.contains(&s));
                assert_eq!(
                    code,
                    job["exit_code"].as_i64().map(|c| c as i32),
                    "exits with the job's code"
                );
                assert_eq!(job["attempts_used"], 3, "{job}");
            }
            ("submit", Some("--follow")) => {
                assert!(out.status.success(), "{}", stderr(&out));
                assert!(text.contains("42"), "{text}");
            }
            ("submit", Some("--script")) => {
                assert!(out.status.success(), "{}", stderr(&out));
                let id = text.trim().to_string();
                let job = sh.wait_state(&id, |s| TERMINAL.contains(&s));
                assert_eq!(job["state"], "succeeded", "{job}");
                assert_eq!(job["result"], serde_json::json!({"answer": 42}), "{job}");
                assert_eq!(job["progress"]["percent"], 50.0, "{job}");
                ids.insert("script", id);
            }
            ("submit", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                let id = text.trim();
                assert!(
                    sh.run(&format!("drover status {id}")).status.success(),
                    "prints the job id"
                );
            }
            ("ls", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                assert!(text.contains(&sleeper[..8]), "{text}");
            }
            ("status", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                assert!(text.contains("succeeded") && text.contains("42"), "{text}");
            }
            ("logs", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                assert!(
                    text.contains("key is ***") && !text.contains("s3cr3t"),
                    "{text}"
                );
            }
            ("cancel", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                sh.wait_state(&sleeper, |s| s == "canceled");
            }
            ("retry", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                let job = sh.wait_state(job.as_deref().unwrap(), |s| s == "succeeded");
                assert_eq!(job["current_attempt"], 2, "{job}");
            }
            ("events", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                assert!(text.contains("finished"), "{text}");
            }
            ("agents", _) => {
                assert!(out.status.success(), "{}", stderr(&out));
                assert!(text.contains("online"), "{text}");
            }
            (other, _) => {
                panic!("the tour has a command this test does not know: {other} ({line})")
            }
        }
    }

    files_section(&sh, &blocks);

    up.signal("INT");
    let status = up.wait_exit(LIMIT);
    assert!(status.success(), "drover up stops cleanly: {}", up.stderr());
}
