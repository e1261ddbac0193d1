//! Task engine throughput: how fast tasks can be launched durably, and how fast output lines
//! go into the store.
//!
//! `cargo bench --bench tasks` measures; `cargo test --all-targets` runs each bench once.

use std::cell::OnceCell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use forge::config::{Config, Secret};
use forge::model::OutputLine;
use forge::store::Store;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// Whether criterion runs each bench once as a test (`cargo test --all-targets`, or
/// `-- --test`) rather than measuring; decided as criterion does.
fn test_mode() -> bool {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    !has("--bench") || has("--test")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// One request on a connection of its own (setup only); returns status, `Set-Cookie` and body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, String)>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let res = sender
        .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("response");
    let status = res.status().as_u16();
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or_default().to_owned());
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, cookie, value)
}

fn id_of(v: &Value) -> u64 {
    v["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer id in {v}"))
}

/// An in-process server with a project whose bash template runs a script that is just `true`.
struct Server {
    addr: SocketAddr,
    token: String,
    project: u64,
    template: u64,
    /// A build template (`start_version` 1.0.0): its launches count versions.
    build_template: u64,
    /// Database, work dir and the repository; kept until the runtime has stopped.
    _dir: tempfile::TempDir,
}

/// Tasks run at once while launches are measured: the runner works beside the launches, as on
/// a real server, without taking every core.
const MAX_PARALLEL: usize = 2;

fn server(rt: &Runtime) -> Server {
    server_running(rt, "true\n", |_| {})
}

/// A server whose template runs `script`, with `configure` applied to its config.
fn server_running(rt: &Runtime, script: &str, configure: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("repo dir");
    std::fs::write(repo.join("run.sh"), script).expect("script");
    let mut config = Config::with_db(dir.path().join("forge.redb"));
    config.scrypt_log_n = 4;
    config.admin = Some("admin".into());
    config.admin_password = Some(Secret("changeme".into()));
    config.max_parallel_tasks = MAX_PARALLEL;
    // The repository is a local folder; tasks run in the sandbox through the built binary.
    config.local_repo_roots = vec![repo.clone()];
    config.sandbox_exe = Some(env!("CARGO_BIN_EXE_forge").into());
    configure(&mut config);
    rt.block_on(async {
        let app = forge::App::start(config).await.expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(forge::serve(listener, app, std::future::pending()));
        setup(addr, &repo, dir).await
    })
}

async fn setup(addr: SocketAddr, repo: &Path, dir: tempfile::TempDir) -> Server {
    let login = json!({"auth": "admin", "password": "changeme"});
    let (status, cookie, _) = call(addr, "POST", "/api/auth/login", None, Some(login)).await;
    assert_eq!(status, 204, "login");
    let cookie = cookie.expect("session cookie");
    let (status, _, token) = call(
        addr,
        "POST",
        "/api/user/tokens",
        Some(("cookie", cookie)),
        None,
    )
    .await;
    assert_eq!(status, 201, "token");
    let token = token["id"].as_str().expect("token").to_owned();
    let bearer = || Some(("authorization", format!("Bearer {token}")));
    let (status, _, p) = call(
        addr,
        "POST",
        "/api/projects",
        bearer(),
        Some(json!({"name": "bench"})),
    )
    .await;
    assert_eq!(status, 201, "project");
    let p = id_of(&p);
    let (_, _, keys) = call(
        addr,
        "GET",
        &format!("/api/project/{p}/keys"),
        bearer(),
        None,
    )
    .await;
    let none = id_of(&keys[0]);
    let repo_body = json!({"name": "local", "project_id": p, "ssh_key_id": none,
        "git_branch": "", "git_url": repo.display().to_string()});
    let path = format!("/api/project/{p}/repositories");
    let (status, _, _) = call(addr, "POST", &path, bearer(), Some(repo_body)).await;
    assert_eq!(status, 204, "repository");
    let (_, _, repos) = call(addr, "GET", &path, bearer(), None).await;
    let tpl_body = json!({"name": "noop", "project_id": p, "app": "bash",
        "playbook": "run.sh", "repository_id": id_of(&repos[0])});
    let path = format!("/api/project/{p}/templates");
    let (status, _, tpl) = call(addr, "POST", &path, bearer(), Some(tpl_body)).await;
    assert_eq!(status, 201, "template");
    let build_body = json!({"name": "build", "project_id": p, "app": "bash",
        "playbook": "run.sh", "repository_id": id_of(&repos[0]), "type": "build",
        "start_version": "1.0.0"});
    let (status, _, build) = call(addr, "POST", &path, bearer(), Some(build_body)).await;
    assert_eq!(status, 201, "build template");
    Server {
        addr,
        token,
        project: p,
        template: id_of(&tpl),
        build_template: id_of(&build),
        _dir: dir,
    }
}

/// Waits until every task launched on `s` has finished (one template runs one task at a time,
/// so its newest task ends last), so that the next variant does not measure beside them.
async fn drain(s: &Server) {
    let path = format!("/api/project/{}/tasks/last?limit=1", s.project);
    loop {
        let auth = Some(("authorization", format!("Bearer {}", s.token)));
        let (_, _, newest) = call(s.addr, "GET", &path, auth, None).await;
        if matches!(
            newest[0]["status"].as_str(),
            None | Some("success" | "error" | "stopped")
        ) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A keep-alive connection to the server.
async fn connection(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// One `POST /api/project/{p}/tasks` on `sender`; asserts 201 with a `waiting` task.
async fn launch(sender: &mut SendRequest<Full<Bytes>>, s: &Server, body: &Bytes) {
    sender.ready().await.expect("connection ready");
    let req = Request::builder()
        .method("POST")
        .uri(format!("/api/project/{}/tasks", s.project))
        .header("host", s.addr.to_string())
        .header("authorization", format!("Bearer {}", s.token))
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, 201, "launch: {}", String::from_utf8_lossy(&bytes));
    let task: Value = serde_json::from_slice(&bytes).expect("task JSON");
    assert_eq!(task["status"], "waiting", "{task}");
    black_box(task);
}

// Question: how many durable task launches per second does POST /tasks sustain? Each launch is
// one HTTP request over a keep-alive connection with a Bearer token: authentication, the
// durable write of the `waiting` row with its first output line and its event (answered only
// after the commit), and the hand-off to the queue. The launched tasks really run (`true`, at
// most MAX_PARALLEL at once, one template so one at a time), so the runner's own writes
// compete with the launches, as on a busy server.
fn launches(c: &mut Criterion) {
    // One server per variant, so that neither measures beside the other's backlog of tasks.
    let fixtures = [OnceCell::new(), OnceCell::new()];
    // Declared after the fixtures so it stops (and ends the servers) before the temp dirs go.
    let rt = runtime();

    let mut group = c.benchmark_group("launch");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    // A build template's launch also counts its version in the launch's transaction (the
    // newest unfailed build through the template index, and the recorded one): same speed?
    for (fixture, (name, build)) in fixtures
        .iter()
        .zip([("post_tasks", false), ("post_build_tasks", true)])
    {
        for earlier in fixtures.iter().filter_map(OnceCell::get) {
            rt.block_on(drain(earlier));
        }
        group.bench_function(name, |b| {
            let s = fixture.get_or_init(|| server(&rt));
            let template = if build { s.build_template } else { s.template };
            let body = Bytes::from(json!({ "template_id": template }).to_string());
            let sender = tokio::sync::Mutex::new(rt.block_on(connection(s.addr)));
            b.to_async(&rt).iter_custom(|iters| {
                let (sender, body) = (&sender, &body);
                async move {
                    let mut sender = sender.lock().await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        launch(&mut sender, s, body).await;
                    }
                    start.elapsed()
                }
            });
        });
    }
    group.finish();
}

/// `n` output lines of a typical length (about 100 bytes).
fn lines(n: usize) -> Vec<OutputLine> {
    (0..n)
        .map(|i| OutputLine {
            time_us: 1_747_794_912_000_000 + i64::try_from(i).unwrap_or(0),
            text: format!(
                "TASK [deploy : copy configuration {i:06}] ****************************** ok: [web-{}]",
                i % 16
            ),
        })
        .collect()
}

// Question: how many output lines per second go into the store? `append_output` is one durable
// write transaction (fsync) per call, as the runner's output writer commits one batch of up to
// 8192 lines at a time: batches of 1 (a task printing slowly), 100, and 8192 (a task flooding
// its output).
fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_output");
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(20);
    for batch in [1usize, 100, 8192] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("forge.redb")).expect("open the store");
        let lines = lines(batch);
        let mut next = 0u64;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| {
                store
                    .append_output(black_box(1), next, black_box(&lines))
                    .expect("append");
                next += batch as u64;
            });
        });
        if test_mode() {
            assert_eq!(store.output_len(1).expect("output_len"), next);
        }
    }
    group.finish();
}

/// Lines the flooding task prints.
const FLOOD_LINES: u64 = 1_000_000;

// Question: how fast does one task's output flood go into the store, end to end? One task
// prints 1 000 000 lines of ~60 bytes (every line stored: the cap is raised) as fast as bash
// can; measured from the launch request to the task's `success` (which is stored only once
// every line is durable). Throughput is in lines.
fn flood(c: &mut Criterion) {
    let rt = runtime();
    let lines = if test_mode() { 1000 } else { FLOOD_LINES };
    let script = format!(
        "yes 'TASK [deploy : copy configuration] ********************* ok: [web-01]' | \
         head -n {lines}\n"
    );
    let s = server_running(&rt, &script, |config| {
        config.output_max_lines = FLOOD_LINES * 2;
        config.output_max_bytes = 1 << 30;
    });
    let mut group = c.benchmark_group("output");
    group
        .throughput(Throughput::Elements(lines))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("one_task_1m_lines_launch_to_success", |b| {
        let body = Bytes::from(json!({ "template_id": s.template }).to_string());
        b.to_async(&rt).iter_custom(|iters| {
            let (s, body) = (&s, &body);
            async move {
                let mut sender = connection(s.addr).await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    launch(&mut sender, s, body).await;
                    wait_finished(s, lines).await;
                    total += start.elapsed();
                }
                total
            }
        });
    });
    group.finish();
}

/// Waits until the newest task of `s` has ended `success`; asserts it has more than `lines`
/// output lines.
async fn wait_finished(s: &Server, lines: u64) {
    let path = format!("/api/project/{}/tasks/last?limit=1", s.project);
    loop {
        let auth = Some(("authorization", format!("Bearer {}", s.token)));
        let (_, _, newest) = call(s.addr, "GET", &path, auth, None).await;
        match newest[0]["status"].as_str() {
            Some("success") => break,
            Some("error" | "stopped") => panic!("the flood task failed: {newest}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let id = newest_id(s).await;
    let path = format!(
        "/api/project/{}/tasks/{id}/output?offset={lines}&limit=1",
        s.project
    );
    let auth = Some(("authorization", format!("Bearer {}", s.token)));
    let (status, _, tail) = call(s.addr, "GET", &path, auth, None).await;
    assert_eq!(status, 200, "output: {tail}");
    // Line `lines` exists: the server's own lines come before the app's.
    assert!(
        tail.as_array().is_some_and(|t| t.len() == 1),
        "fewer than {lines} lines stored: {tail}"
    );
}

async fn newest_id(s: &Server) -> u64 {
    let path = format!("/api/project/{}/tasks/last?limit=1", s.project);
    let auth = Some(("authorization", format!("Bearer {}", s.token)));
    let (_, _, newest) = call(s.addr, "GET", &path, auth, None).await;
    id_of(&newest[0])
}

criterion_group!(benches, launches, append, flood);
criterion_main!(benches);
