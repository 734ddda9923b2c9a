//! Docker jobs against the real Docker engine and a real server: exit codes, streams,
//! env, workdir, mounts, the job log mirror, timeouts and cancels that leave no container
//! behind, orphans of a killed agent, out-of-memory kills, GPU fallback, and clear errors
//! for missing images and a missing engine.
//!
//! The image is built here from Debian's `busybox-static` (no registry is needed). When
//! the engine cannot be reached these tests fail, unless `DROVER_SKIP_DOCKER_TESTS=1`.

mod common;

use std::path::Path;

use common::docker::{containers, docker, docker_ready, unique_name, wait_containers, IMAGE};
use common::{agent_with, texts, Api};
use drover_agent::{AgentConfig, AgentSignals};
use drover_core::api::Stream;
use drover_core::{JobState, SubmitRequest};
use drover_server::testing::TestServer;

/// A docker job from the JSON form of its exec.
fn docker_job(exec: serde_json::Value) -> SubmitRequest {
    let mut exec = exec;
    exec["kind"] = "docker".into();
    serde_json::from_value(serde_json::json!({ "exec": exec })).expect("a docker job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_run_with_exit_codes_streams_env_workdir_and_mounts() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let data = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let job_logs = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), "from the host\n").unwrap();
    std::fs::write(shared.path().join("common.txt"), "x").unwrap();
    let name = unique_name("basics");
    let (mounts, log_dir) = (
        vec![format!("{}:/shared:ro", shared.path().display())],
        job_logs.path().to_path_buf(),
    );
    let _agent = agent_with(&server, |c| {
        c.name = name.clone();
        c.docker_mounts = mounts;
        c.job_log_dir = Some(log_dir);
    });

    let cmd = "echo out; echo err >&2; echo \"v=$MY_VAR s=$MY_SECRET a=$DROVER_ATTEMPT\"; \
               echo \"id=$DROVER_JOB_ID\"; pwd; cat /data/in.txt; echo written > /data/out.txt; \
               ls /shared; exit 3";
    let mut req = docker_job(serde_json::json!({
        "image": IMAGE, "command": cmd, "workdir": "/tmp",
        "volumes": [format!("{}:/data", data.path().display())],
    }));
    req.env.insert("MY_VAR".into(), "hello".into());
    req.secrets.insert("MY_SECRET".into(), "hunter22".into());
    let job = api.submit(req).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.error.as_deref(), Some("exit code 3"));
    let logs = api
        .wait_log(&job.id, |l| {
            l.iter().any(|r| r.text == "[drover] exit code 3")
        })
        .await;
    assert_eq!(logs[0].stream, Stream::System);
    assert!(
        logs[0]
            .text
            .starts_with(&format!("$ docker run --name drover-{}-1 ", job.id)),
        "{}",
        logs[0].text
    );
    assert_eq!(
        texts(&logs, Stream::Stdout),
        [
            "out".to_string(),
            "v=hello s=*** a=1".into(),
            format!("id={}", job.id),
            "/tmp".into(),
            "from the host".into(),
            "common.txt".into(),
        ]
    );
    assert_eq!(texts(&logs, Stream::Stderr), ["err"]);
    assert_eq!(
        std::fs::read_to_string(data.path().join("out.txt")).unwrap(),
        "written\n"
    );
    let mirror = job_logs
        .path()
        .join(format!("jobs/{0}/logs/{0}.log", job.id));
    let mirrored = std::fs::read_to_string(&mirror).expect("the job log mirror");
    assert!(
        mirrored.contains("\nout\n") && mirrored.contains("s=***"),
        "{mirrored}"
    );
    assert!(containers(&format!("drover-{}", job.id)).is_empty());

    // argv runs as is; exit 0 succeeds; a user and the agent's labels.
    let job = api
        .submit(docker_job(serde_json::json!({
            "image": IMAGE, "command": ["sh", "-c", "echo \"$0 $1\"; id -u", "a b", "$HOME"],
            "user": "65534",
        })))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.exit_code, Some(0));
    let logs = api.logs(&job.id).await;
    assert_eq!(texts(&logs, Stream::Stdout), ["a b $HOME", "65534"]);

    let agents = api.agents().await;
    let me = agents.iter().find(|a| a.name == name).expect("agent");
    assert_eq!(me.labels.get("docker").map(String::as_str), Some("true"));
    assert!(me
        .labels
        .get("docker_version")
        .is_some_and(|v| !v.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_and_cancels_stop_and_remove_the_container() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let name = unique_name("stop");
    let _agent = agent_with(&server, |c| c.name = name);

    let mut req = docker_job(serde_json::json!({"image": IMAGE, "command": "sleep 300"}));
    req.timeout_ms = Some(1_000);
    req.grace_ms = Some(1_000);
    let timed = api.submit(req).await;

    // The job traps SIGTERM: the engine's stop gives it the grace period.
    let cmd = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let mut req = docker_job(serde_json::json!({"image": IMAGE, "command": cmd}));
    req.grace_ms = Some(20_000);
    let canceled = api.submit(req).await;
    api.wait_log(&canceled.id, |l| l.iter().any(|r| r.text == "ready"))
        .await;
    assert_eq!(
        containers(&format!("drover-{}", canceled.id)),
        [format!("drover-{}-1", canceled.id)]
    );
    api.cancel(&canceled.id).await;

    let done = api.wait_done(&timed.id).await;
    assert_eq!(done.state, JobState::TimedOut, "{done:#?}");
    assert_eq!(done.error.as_deref(), Some("timed out after 1s"));
    let done = api.wait_done(&canceled.id).await;
    assert_eq!(done.state, JobState::Canceled, "{done:#?}");
    let logs = api.logs(&canceled.id).await;
    assert!(texts(&logs, Stream::Stdout).contains(&"got TERM".to_string()));
    for id in [&timed.id, &canceled.id] {
        assert_eq!(containers(&format!("drover-{id}")), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agents_orphaned_container_is_removed_and_the_job_retried() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let name = unique_name("orphan");
    let work = tempfile::tempdir().unwrap();
    let mut config = common::agent_config(&server, work.path());
    config.name = name.clone();

    let cmd = "if [ \"$DROVER_ATTEMPT\" = 1 ]; then echo first; sleep 300; fi; echo \"attempt $DROVER_ATTEMPT\"";
    let mut req = docker_job(serde_json::json!({"image": IMAGE, "command": cmd}));
    req.max_attempts = Some(2);
    req.backoff = serde_json::from_value(serde_json::json!({"base_ms": 100, "cap_ms": 100})).ok();
    let job = api.submit(req).await;

    // The first agent runs on a runtime of its own, dropped like a SIGKILL would: no
    // clean-up code runs, the container stays.
    let doomed = start_on_own_runtime(config.clone());
    api.wait_log(&job.id, |l| l.iter().any(|r| r.text == "first"))
        .await;
    let first = format!("drover-{}-1", job.id);
    assert_eq!(containers(&first), vec![first.clone()]);
    doomed.shutdown_background();
    assert_eq!(
        containers(&first),
        vec![first.clone()],
        "the orphan is still there"
    );

    let _agent = common::RunningAgent::start(config);
    wait_containers(&first, "removed", |n| n.is_empty()).await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.current_attempt, 2, "{done:#?}");
    let logs = api.logs(&job.id).await;
    assert_eq!(texts(&logs, Stream::Stdout), ["attempt 2"]);
    assert!(containers(&format!("drover-{}", job.id)).is_empty());
}

fn start_on_own_runtime(config: AgentConfig) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(drover_agent::run(config, AgentSignals::default()));
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_over_its_memory_limit_fails_as_out_of_memory() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |c| c.name = unique_name("oom"));
    let job = api
        .submit(docker_job(serde_json::json!({
            "image": IMAGE, "memory": 8 * 1024 * 1024,
            // tmpfs pages count against the limit and cannot be reclaimed: a
            // quick OOM kill (a hog in anonymous memory can thrash for a while).
            "command": "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64",
        })))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    // Regression: under load the engine sometimes loses its OOM event (exit code 137,
    // no OOM flag); the agent then says what most likely happened.
    let error = done.error.unwrap_or_default();
    assert!(
        error == "out of memory (container exceeded its memory limit of 8388608 bytes)"
            || error.starts_with("out of memory, most likely (killed by SIGKILL with a memory limit of 8388608 bytes"),
        "{error}"
    );
    assert!(containers(&format!("drover-{}", job.id)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_images_and_bad_volumes_fail_at_once_and_the_agent_keeps_working() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |c| c.name = unique_name("errors"));

    let never = api
        .submit(docker_job(serde_json::json!({
            "image": "drover-test-missing:latest", "pull": "never", "command": "true",
        })))
        .await;
    let unknown = api
        .submit(docker_job(serde_json::json!({
            "image": "drover-test-no-such-image:latest", "command": "true",
        })))
        .await;
    let volume = api
        .submit(docker_job(serde_json::json!({
            "image": IMAGE, "command": "true",
            "volumes": ["/drover-no-such-host-dir:/data"],
        })))
        .await;

    let done = api.wait_done(&never.id).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(
        done.error.as_deref(),
        Some("image \"drover-test-missing:latest\" is not present and pull is \"never\"")
    );
    let done = api.wait_done(&unknown.id).await;
    assert_eq!(done.state, JobState::Failed);
    let error = done.error.unwrap_or_default();
    assert!(
        error.starts_with("cannot pull image \"drover-test-no-such-image:latest\": "),
        "{error}"
    );
    let done = api.wait_done(&volume.id).await;
    assert_eq!(done.state, JobState::Failed);
    let error = done.error.unwrap_or_default();
    assert!(
        error.starts_with("cannot create the container: ")
            && error.contains("/drover-no-such-host-dir"),
        "{error}"
    );
    let logs = api.logs(&volume.id).await;
    assert!(texts(&logs, Stream::System).contains(&format!("[drover] {error}")));
    assert!(containers(&format!("drover-{}", volume.id)).is_empty());

    let ok = api
        .submit(docker_job(
            serde_json::json!({"image": IMAGE, "command": "echo fine"}),
        ))
        .await;
    let done = api.wait_done(&ok.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_requests_fall_back_to_cpu_unless_required() {
    if !docker_ready() {
        return;
    }
    let runtimes = docker(&["info", "--format", "{{json .Runtimes}}"]).unwrap_or_default();
    if runtimes.contains("nvidia") {
        eprintln!("this engine has the nvidia runtime: the CPU fallback cannot be shown here");
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |c| c.name = unique_name("gpu"));
    let fallback = api
        .submit(docker_job(serde_json::json!({
            "image": IMAGE, "gpus": 1, "command": "echo on cpu",
        })))
        .await;
    let required = api
        .submit(docker_job(serde_json::json!({
            "image": IMAGE, "gpus": "all", "gpus_required": true, "command": "true",
        })))
        .await;
    let done = api.wait_done(&fallback.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let logs = api.logs(&fallback.id).await;
    let system = texts(&logs, Stream::System);
    assert!(
        system
            .iter()
            .any(|t| t.contains("cannot provide the requested GPUs")
                && t.ends_with("running without GPUs")),
        "{system:?}"
    );
    assert_eq!(texts(&logs, Stream::Stdout), ["on cpu"]);
    let done = api.wait_done(&required.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert!(
        done.error
            .as_deref()
            .is_some_and(|e| e.starts_with("cannot start the container: ")),
        "{done:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_containers_stay_after_the_job_and_after_an_agent_restart() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let name = unique_name("keep");
    // One agent, run three times on its work dir: its containers are its own.
    let work = tempfile::tempdir().unwrap();
    let agent = agent_with(&server, |c| {
        c.name = name.clone();
        c.work_dir = work.path().to_path_buf();
        c.keep_containers = true;
    });
    let job = api
        .submit(docker_job(
            serde_json::json!({"image": IMAGE, "command": "echo kept"}),
        ))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let kept = format!("drover-{}-1", job.id);
    assert_eq!(containers(&kept), vec![kept.clone()]);
    agent.signals.drain.cancel();
    agent.exit().await;
    // A restarted agent that keeps containers leaves exited ones for debugging.
    let again = agent_with(&server, |c| {
        c.name = name.clone();
        c.work_dir = work.path().to_path_buf();
        c.keep_containers = true;
    });
    let job2 = api
        .submit(docker_job(
            serde_json::json!({"image": IMAGE, "command": "true"}),
        ))
        .await;
    api.wait_done(&job2.id).await;
    assert_eq!(containers(&kept), vec![kept.clone()]);
    drop(again);
    // One that does not keep them removes them as orphans.
    let _cleaner = agent_with(&server, |c| {
        c.name = name.clone();
        c.work_dir = work.path().to_path_buf();
    });
    wait_containers(&kept, "removed", |n| n.is_empty()).await;
    wait_containers(&format!("drover-{}", job2.id), "removed", |n| n.is_empty()).await;
}

/// Needs no engine: an agent told it has Docker whose socket is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_engine_fails_docker_jobs_clearly_and_the_agent_keeps_working() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let socket = Path::new("/drover-no-such-dir/docker.sock");
    let _agent = agent_with(&server, |c| {
        c.name = unique_name("no-engine");
        c.docker_socket = Some(socket.to_path_buf());
        c.labels.insert("docker".into(), "true".into());
    });
    let job = api
        .submit(docker_job(
            serde_json::json!({"image": IMAGE, "command": "true"}),
        ))
        .await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    let error = done.error.unwrap_or_default();
    assert!(
        error.starts_with(&format!(
            "cannot reach the Docker engine at {}: ",
            socket.display()
        )),
        "{error}"
    );
    let shell = api.submit(SubmitRequest::shell("echo still here")).await;
    let done = api.wait_done(&shell.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
}

/// Regression: two agents on one host, both named after it, each took the other's
/// containers for its own orphans at start, and removed a running job's container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_never_takes_another_agents_containers_for_orphans() {
    if !docker_ready() {
        return;
    }
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let name = unique_name("twin");
    let _first = agent_with(&server, |c| c.name = name.clone());
    let job = api
        .submit(docker_job(
            serde_json::json!({"image": IMAGE, "command": "sleep 30"}),
        ))
        .await;
    api.wait_for(&job.id, "running", |j| j.state == JobState::Running)
        .await;
    let running = format!("drover-{}-1", job.id);
    assert_eq!(containers(&running), vec![running.clone()]);
    // A second agent of the same name (its own work dir) starts and looks for orphans.
    let _second = agent_with(&server, |c| c.name = name.clone());
    let start = std::time::Instant::now();
    let online = || async {
        let agents = api.agents().await;
        agents.iter().filter(|a| a.status == "online").count()
    };
    while online().await < 2 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the second agent never came online"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(containers(&running), vec![running.clone()], "still there");
    assert_eq!(api.job(&job.id).await.unwrap().state, JobState::Running);
    api.cancel(&job.id).await;
}
