//! Prometheus metrics and request ids (issue 17), through a real server. The exposition is
//! parsed by the Prometheus project's own Python client (`prometheus_client.parser`, PyPI, in
//! `.ci/venv`): a parser we did not write, which refuses malformed lines. The tests check that
//! the counters move as work happens: requests by route template, a task run, the queue,
//! stops, output lines, failed and throttled logins, the store's commits.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ADMIN, Client, TestServer, at, id_of, new_project, tools};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// The scraper's token the servers here start with.
const TOKEN: &str = "metrics-test-token-5e0c2a";

/// Reads the exposition with `prometheus_client` and prints each sample as JSON.
const PARSE: &str = r"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.append([f.name, f.type, s.name, s.labels, s.value])
print(json.dumps(out))
";

/// A Python with `prometheus_client`: the build tree's venv first, then `python3` on PATH;
/// `None` after `tools::ready` said why not (a failure in CI).
fn parser() -> Option<PathBuf> {
    let candidates = [
        tools::root().join(".ci/venv/bin/python3"),
        PathBuf::from("python3"),
    ];
    let found = candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        let _ = tools::ready(
            "the metrics tests",
            &["prometheus_client (PyPI) in .ci/venv".to_owned()],
        );
    }
    found
}

/// One parsed scrape: sample name → (sorted labels → value), and family name → type.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, BTreeMap<Vec<(String, String)>, f64>>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// The sample `name{labels}`, or 0 when absent (counters start at 0 and are left out
    /// until they move).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        key.sort();
        self.samples
            .get(name)
            .and_then(|s| s.get(&key))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every label set of sample `name`.
    fn series(&self, name: &str) -> Vec<&Vec<(String, String)>> {
        self.samples
            .get(name)
            .map(|s| s.keys().collect())
            .unwrap_or_default()
    }
}

/// One sample as the parser script prints it: family, type, sample name, labels, value.
type Parsed = (String, String, String, BTreeMap<String, String>, f64);

/// Scrapes `/api/metrics` as `c` and parses it with the Prometheus client's parser.
async fn scrape(python: &PathBuf, c: &Client) -> Scrape {
    let r = c.get("/api/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &r.body).unwrap();
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition:\n{}\n{}",
        tools::show(&out),
        r.text()
    );
    let parsed: Vec<Parsed> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    let mut s = Scrape::default();
    for (family, kind, name, labels, value) in parsed {
        s.types.insert(family, kind);
        let key = labels.into_iter().collect();
        let previous = s
            .samples
            .entry(name.clone())
            .or_default()
            .insert(key, value);
        assert!(previous.is_none(), "{name} repeats a label set");
    }
    check_histograms(&s);
    s
}

/// Every histogram: buckets cumulative, `+Inf` equal to `_count`.
fn check_histograms(s: &Scrape) {
    for (family, kind) in &s.types {
        if kind != "histogram" {
            continue;
        }
        for labels in s.series(&format!("{family}_count")) {
            let count = s.samples[&format!("{family}_count")][labels];
            let mut buckets: Vec<(f64, f64)> = s.samples[&format!("{family}_bucket")]
                .iter()
                .filter(|(l, _)| l.iter().filter(|(k, _)| k != "le").eq(labels.iter()))
                .map(|(l, v)| {
                    let le = &l.iter().find(|(k, _)| k == "le").expect("le").1;
                    (le.parse::<f64>().expect("le is a number"), *v)
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{labels:?}: buckets not cumulative: {buckets:?}"
            );
            assert_eq!(
                buckets.last().map(|b| (b.0, b.1)),
                Some((f64::INFINITY, count)),
                "{family}{labels:?}"
            );
        }
    }
}

async fn wait_status(a: &Client, p: u64, t: u64, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = a.get(&at(p, &format!("tasks/{t}"))).await.json();
        if task["status"] == want {
            return task;
        }
        assert!(Instant::now() < deadline, "task {t} never {want}: {task}");
        sleep(Duration::from_millis(40)).await;
    }
}

/// POSTs `body` to `path` as `a`, asserting `status`; returns the answer's JSON (or null).
async fn post_ok(a: &Client, path: &str, body: Value, status: u16) -> Value {
    let r = a.post(path, body).await;
    assert_eq!(r.status, status, "POST {path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// A project with a local repository holding `scripts` and one bash template per script;
/// returns the project, the template ids and the directory.
async fn project_with(a: &Client, scripts: &[(&str, &str)]) -> (u64, Vec<u64>, tempfile::TempDir) {
    let p = new_project(a, "Metrics").await;
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().to_str().unwrap();
    let key = id_of(&a.get(&at(p, "keys")).await.json()[0]);
    let repo = json!({"name": "local", "project_id": p, "git_url": url, "ssh_key_id": key});
    post_ok(a, &at(p, "repositories"), repo, 204).await;
    let repo = id_of(&a.get(&at(p, "repositories")).await.json()[0]);
    let mut tpls = Vec::new();
    for (name, script) in scripts {
        let playbook = format!("{name}.sh");
        std::fs::write(dir.path().join(&playbook), script).unwrap();
        let template = json!({"name": name, "project_id": p, "app": "bash",
                              "playbook": playbook, "repository_id": repo});
        tpls.push(id_of(&post_ok(a, &at(p, "templates"), template, 201).await));
    }
    (p, tpls, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_move_as_work_happens() {
    let Some(python) = parser() else { return };
    let s = TestServer::start_with(|c| {
        c.metrics_token = Some(forge::config::Secret(TOKEN.into()));
        c.login_max_failures = 2;
        c.max_parallel_tasks = 1;
    })
    .await;
    let scraper = s.client().with_bearer(TOKEN);
    let a = s.admin().await;
    let before = scrape(&python, &scraper).await;
    assert!(before.get("forge_store_file_bytes", &[]) > 4096.0);
    assert_eq!(before.get("forge_password_hash_queue_depth", &[]), 0.0);

    // Requests: by route template (never the raw path), method and status class.
    for _ in 0..3 {
        assert_eq!(s.client().get("/api/ping").await.status, 200);
    }
    let p = new_project(&a, "Counted").await;
    assert_eq!(a.get(&format!("/api/project/{p}")).await.status, 200);
    assert_eq!(a.get("/api/project/999999").await.status, 404);
    assert_eq!(s.client().get("/api/nope").await.status, 404);
    let after = scrape(&python, &scraper).await;
    let requests = |m: &Scrape, route: &str, method: &str, class: &str| {
        m.get(
            "forge_http_requests_total",
            &[("route", route), ("method", method), ("status", class)],
        ) - before.get(
            "forge_http_requests_total",
            &[("route", route), ("method", method), ("status", class)],
        )
    };
    assert_eq!(requests(&after, "/api/ping", "GET", "2xx"), 3.0);
    let project = "/api/project/{project_id}";
    assert_eq!(requests(&after, project, "GET", "2xx"), 1.0);
    assert_eq!(requests(&after, project, "GET", "4xx"), 1.0);
    assert_eq!(requests(&after, "/api/projects", "POST", "2xx"), 1.0);
    assert_eq!(requests(&after, "(unmatched)", "other", "4xx"), 1.0);
    // The scrape before this one counted too.
    assert_eq!(requests(&after, "/api/metrics", "GET", "2xx"), 1.0);
    let latency = |m: &Scrape| {
        m.get(
            "forge_http_request_duration_seconds_count",
            &[("route", "/api/ping"), ("method", "GET")],
        )
    };
    assert_eq!(latency(&after) - latency(&before), 3.0);
    for labels in after.series("forge_http_requests_total") {
        let route = &labels.iter().find(|(k, _)| k == "route").unwrap().1;
        assert!(
            !route.chars().any(|c| c.is_ascii_digit()),
            "a raw path as a route label: {route}"
        );
    }
    // Writes went through the writer: commits, batches and commit times agree.
    let commits = after.get("forge_store_commits_total", &[]);
    assert!(commits > before.get("forge_store_commits_total", &[]));
    assert_eq!(
        after.get("forge_store_commit_batch_size_count", &[]),
        commits
    );
    assert_eq!(
        after.get("forge_store_commit_duration_seconds_count", &[]),
        commits
    );
    assert!(after.get("forge_store_writes_total", &[]) >= commits);

    // A task run: success +1, its duration observed for its project, its lines counted.
    let lines = "for i in $(seq 1 50); do echo line$i; done\n";
    let (p, tpls, _dir) = project_with(&a, &[("fifty", lines), ("nap", "sleep 30\n")]).await;
    let r = a
        .post(&at(p, "tasks"), json!({"template_id": tpls[0]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    wait_status(&a, p, id_of(&r.json()), "success").await;
    // The end is counted just after its status is stored (a reader may see `success` a moment
    // before the metrics do): scrape until the task's duration is there.
    let started = std::time::Instant::now();
    let ran = loop {
        let ran = scrape(&python, &scraper).await;
        if ran.types.contains_key("forge_task_duration_seconds")
            || started.elapsed() > std::time::Duration::from_secs(10)
        {
            break ran;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Every family is there, with its type (an empty family shows no sample).
    for (name, kind) in [
        ("semaphore_tasks_running", "gauge"),
        ("semaphore_tasks", "counter"),
        ("forge_tasks_waiting", "gauge"),
        ("forge_task_duration_seconds", "histogram"),
        ("forge_task_output_lines", "counter"),
        ("forge_http_requests", "counter"),
        ("forge_http_request_duration_seconds", "histogram"),
        ("forge_store_commits", "counter"),
        ("forge_store_commit_batch_size", "histogram"),
        ("forge_store_commit_duration_seconds", "histogram"),
        ("forge_store_file_bytes", "gauge"),
        ("forge_login_failures", "counter"),
        ("forge_login_throttled", "counter"),
        ("forge_password_hash_queue_depth", "gauge"),
    ] {
        assert_eq!(
            ran.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    let ended = |m: &Scrape, status: &str| m.get("semaphore_tasks_total", &[("status", status)]);
    assert_eq!(ended(&ran, "success") - ended(&after, "success"), 1.0);
    assert_eq!(ended(&ran, "error"), ended(&after, "error"));
    let pid = p.to_string();
    assert_eq!(
        ran.get(
            "forge_task_duration_seconds_count",
            &[("project", pid.as_str())]
        ),
        1.0
    );
    let output = |m: &Scrape| m.get("forge_task_output_lines_total", &[]);
    assert!(output(&ran) - output(&after) >= 50.0, "{}", output(&ran));

    // Two sleepers with one slot: one running, one waiting; both stopped.
    let mut naps = Vec::new();
    for _ in 0..2 {
        let r = a
            .post(&at(p, "tasks"), json!({"template_id": tpls[1]}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        naps.push(id_of(&r.json()));
    }
    wait_status(&a, p, naps[0], "running").await;
    let busy = scrape(&python, &scraper).await;
    assert_eq!(busy.get("semaphore_tasks_running", &[]), 1.0);
    assert_eq!(busy.get("forge_tasks_waiting", &[]), 1.0);
    for t in naps.iter().rev() {
        let r = a
            .post(&at(p, &format!("tasks/{t}/stop")), json!({"force": true}))
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        wait_status(&a, p, *t, "stopped").await;
    }
    let idle = scrape(&python, &scraper).await;
    assert_eq!(idle.get("semaphore_tasks_running", &[]), 0.0);
    assert_eq!(idle.get("forge_tasks_waiting", &[]), 0.0);
    assert_eq!(ended(&idle, "stopped") - ended(&busy, "stopped"), 2.0);
    // Only the one that ran has a duration.
    assert_eq!(
        idle.get(
            "forge_task_duration_seconds_count",
            &[("project", pid.as_str())]
        ),
        2.0
    );

    // Failed logins, then the throttle (two failures allowed per account and address).
    let mut anon = s.client();
    anon.login("ghost", "wrong").await.assert_error(401);
    anon.login(ADMIN, "wrong").await.assert_error(401);
    anon.login(ADMIN, "wrong too").await.assert_error(401);
    anon.login(ADMIN, "wrong again").await.assert_error(429);
    let logins = scrape(&python, &scraper).await;
    let count = |m: &Scrape, name: &str| m.get(name, &[]);
    assert_eq!(
        count(&logins, "forge_login_failures_total") - count(&idle, "forge_login_failures_total"),
        3.0
    );
    assert_eq!(
        count(&logins, "forge_login_throttled_total") - count(&idle, "forge_login_throttled_total"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_honoured_when_sane_and_generated_otherwise() {
    let s = TestServer::start().await;
    let c = s.client();
    let id_of_response = |r: &common::Resp| r.header("x-request-id").expect("x-request-id");
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    for sane in ["abc-123", "req_1.2:3/4+5=6@host", &"a".repeat(128)] {
        let r = c
            .raw("GET", "/api/ping", None, &[("x-request-id", sane)])
            .await;
        assert_eq!(id_of_response(&r), sane);
    }
    let long = "a".repeat(129);
    for insane in [
        "",
        "has space",
        "quote\"d",
        "semi;colon",
        long.as_str(),
        "é",
    ] {
        let r = c
            .raw("GET", "/api/ping", None, &[("x-request-id", insane)])
            .await;
        let id = id_of_response(&r);
        assert!(generated(&id), "{insane:?} gave {id:?}");
    }
    // Generated when absent, on errors too, and never the same twice.
    let first = id_of_response(&c.get("/api/ping").await);
    let second = id_of_response(&c.get("/api/user").await);
    assert!(generated(&first) && generated(&second) && first != second);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_refuse_callers_without_the_right_credentials() {
    let s = TestServer::start_with(|c| {
        c.metrics_token = Some(forge::config::Secret(TOKEN.into()));
    })
    .await;
    let r = s.client().get("/api/metrics").await;
    r.assert_error(401);
    s.client()
        .with_bearer("metrics-test-token-5e0c2b")
        .get("/api/metrics")
        .await
        .assert_error(401);
    let (_, user) = s.user("watcher", false).await;
    user.get("/api/metrics").await.assert_error(403);
    let r = s
        .client()
        .with_bearer(TOKEN)
        .raw("POST", "/api/metrics", None, &[])
        .await;
    r.assert_error(405);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_metrics_token_stops_the_start() {
    for token in ["short", "has a space in it 0123"] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = forge::Config::with_db(dir.path().join("forge.redb"));
        config.metrics_token = Some(forge::config::Secret(token.into()));
        let err = forge::App::start(config).await.expect_err("refused");
        assert!(err.to_string().contains("metrics token"), "{err}");
        assert!(
            !err.to_string().contains(token),
            "the token is not echoed: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scrape.token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let s = TestServer::start_with(|c| c.metrics_token_file = Some(file.clone())).await;
    let r = s.client().with_bearer(TOKEN).get("/api/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut config = forge::Config::with_db(dir.path().join("other.redb"));
    config.metrics_token_file = Some(dir.path().join("missing"));
    let err = forge::App::start(config).await.expect_err("refused");
    assert!(err.to_string().contains("metrics token file"), "{err}");
}
