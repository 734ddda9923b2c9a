//! Job templates over the API, on SQLite and PostgreSQL: versions, parameters filled
//! into argv, name, env, image and volumes (with defaults and types), every missing,
//! unknown or ill-typed parameter listed, a job recording its template, secrets and
//! idempotency keys given per submit, a job found by its idempotency key, delete.

mod common;

use common::{error_fields, Client};
use drover_server::testing::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn templates_work(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    let sim = json!({
        "name": "sim",
        "job": {
            "exec": {"kind": "process", "argv": ["run", "--config", "{{ params.config_path }}"]},
            "name": "sim {{ params.job_id }}",
            "env": {"STEPS": "{{ params.steps }}"}
        },
        "params": {"steps": {"type": "integer", "default": 100}}
    });
    let (status, v) = c.post("/v1/templates", sim.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    let params: Vec<&String> = v["params"].as_object().unwrap().keys().collect();
    assert_eq!(params, ["config_path", "job_id", "steps"]);
    let (status, v) = c.post("/v1/templates", sim).await;
    assert_eq!(
        (status, v["version"].clone()),
        (StatusCode::CREATED, json!(2))
    );

    // Every bad parameter is listed, each on its own.
    let (status, v) = c
        .post(
            "/v1/templates/sim/jobs",
            json!({"params": {"job_id": "J-1", "steps": "many", "bogus": "1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        error_fields(&v),
        ["params.bogus", "params.config_path", "params.steps"]
    );

    let (status, job) = c
        .post(
            "/v1/templates/sim/jobs",
            json!({"params": {"job_id": "J-42", "config_path": "/data/c.yaml"},
                   "idempotency_key": "J-42", "secrets": {"API_KEY": "k-123456"}, "metadata": {"from": "lab"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(
        job["exec"]["argv"],
        json!(["run", "--config", "/data/c.yaml"])
    );
    assert_eq!(job["name"], "sim J-42");
    assert_eq!(job["env"]["STEPS"], "100");
    assert_eq!(job["env"]["DROVER_PARAM_JOB_ID"], "J-42");
    assert_eq!(job["secret_names"], json!(["API_KEY"]));
    assert_eq!(job["template"], json!({"name": "sim", "version": 2}));
    // The same key again is the same job; a backend finds it by its own id.
    let (status, again) = c
        .post(
            "/v1/templates/sim/jobs",
            json!({"params": {"job_id": "J-42", "config_path": "/data/c.yaml"}, "idempotency_key": "J-42"}),
        )
        .await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &job["id"]));
    let (_, page) = c.get("/v1/jobs?idempotency_key=J-42").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], job["id"]);
    let (_, none) = c.get("/v1/jobs?idempotency_key=nobody").await;
    assert!(none["jobs"].as_array().unwrap().is_empty());
    let (_, stored) = c
        .get(&format!("/v1/jobs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(stored["template"], json!({"name": "sim", "version": 2}));

    // A container template: image and volumes take parameters too; an older version.
    let (status, v) = c
        .post(
            "/v1/templates",
            json!({"name": "box", "job": {"exec": {"kind": "docker", "image": "busybox:{{ params.tag }}",
                    "command": "ls /data", "volumes": ["/srv/{{ params.dataset }}:/data:ro"]}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, j) = c
        .post(
            "/v1/templates/box/jobs",
            json!({"params": {"tag": "1.36", "dataset": "d7"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    assert_eq!(j["exec"]["image"], "busybox:1.36");
    assert_eq!(j["exec"]["volumes"], json!(["/srv/d7:/data:ro"]));
    let (status, v1) = c.get("/v1/templates/sim?version=1").await;
    assert_eq!((status, v1["version"].clone()), (StatusCode::OK, json!(1)));
    let (_, list) = c.get("/v1/templates").await;
    let names: Vec<(&str, u64)> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(names, [("box", 1), ("sim", 2)]);

    // What a template may not hold, and a job that is invalid once filled in.
    let (status, v) = c
        .post(
            "/v1/templates",
            json!({"name": "bad name!", "job": {"exec": {"kind": "shell", "command": "echo {{ params.a }}"},
                    "secrets": {"K": "v"}, "timeout_ms": 0}, "params": {"b": {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let got = error_fields(&v);
    assert!(got.contains(&"name".to_string()), "{got:?}");
    assert!(got.contains(&"params.b".to_string()), "{got:?}");

    // Delete: gone for show and submit; made again, it goes on numbering.
    let (status, _) = c.call(Method::DELETE, "/v1/templates/sim", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(c.get("/v1/templates/sim").await.0, StatusCode::NOT_FOUND);
    let (status, _) = c
        .post("/v1/templates/sim/jobs", json!({"params": {}}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        c.call(Method::DELETE, "/v1/templates/sim", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, v) = c
        .post(
            "/v1/templates",
            json!({"name": "sim", "job": {"exec": {"kind": "shell", "command": "true"}}}),
        )
        .await;
    assert_eq!(v["version"], 3);
}

#[tokio::test]
async fn templates_on_sqlite() {
    templates_work(&TestServer::start().await).await;
}

#[tokio::test]
async fn templates_on_postgres() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(TestServer::config_shared(tmp.path(), &db)).await;
    templates_work(&s).await;
}
