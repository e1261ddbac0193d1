//! Retention benchmarks (issue 11 §3). Not criterion: each question wants a distribution or a
//! curve, not a mean. `cargo bench --bench retention` measures and prints tables;
//! `cargo test --benches` runs a small version of each as a check. Loopback only, bounded.
//!
//! - `launch`: does pruning hurt requests? Task-launch latency percentiles (real
//!   `POST /api/project/{p}/tasks` over a keep-alive connection, paced) with the pruner idle,
//!   then while it removes a large backlog (20 000 old finished tasks of 100 output lines each,
//!   2 M output rows) through the same writer.
//! - `churn`: does a steady churn stay bounded? 50 000 tasks of 100 lines each through the
//!   store's library API (one durable transaction per task: insert, output, final status),
//!   with the retention loop's template prune running beside them as the server runs it
//!   (`--max-tasks-per-template 1000`); the db file size every 2 500 tasks (every 250 before).
//!   `FORGE_BENCH_CHURN_TASKS=N` runs N tasks instead.

// Sizes and times are printed as floats; exactness does not matter there.
#![allow(clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use forge::clock::ClockHandle;
use forge::config::{Config, Secret};
use forge::model::{OutputLine, ProjectId, Task, TaskStatus};
use forge::retention::{Policy, Retention};
use forge::store::Store;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Sizes of one run: the measured one, or a quick check.
struct Sizes {
    old_tasks: u64,
    old_lines: u64,
    idle_launches: usize,
    max_launches: usize,
    churn_tasks: u64,
    churn_lines: u64,
    churn_cap: u64,
    churn_every: u64,
}

const MEASURE: Sizes = Sizes {
    old_tasks: 20_000,
    old_lines: 100,
    idle_launches: 500,
    max_launches: 5_000,
    churn_tasks: 50_000,
    churn_lines: 100,
    churn_cap: 1_000,
    churn_every: 2_500,
};

const CHECK: Sizes = Sizes {
    old_tasks: 300,
    old_lines: 10,
    idle_launches: 20,
    max_launches: 200,
    churn_tasks: 600,
    churn_lines: 10,
    churn_cap: 50,
    churn_every: 200,
};

/// Time between two launches (40 a second: the runner keeps up with that, so the queue does
/// not grow from one phase to the next).
const PACE: Duration = Duration::from_millis(25);

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let mut sizes = if measuring { MEASURE } else { CHECK };
    // A longer churn on request, to see the curve stay flat further out.
    if let Some(n) = std::env::var("FORGE_BENCH_CHURN_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        sizes.churn_tasks = n;
    }
    let sizes = &sizes;
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if wanted("launch") {
        rt.block_on(launch(sizes));
    }
    if wanted("churn") {
        rt.block_on(churn(sizes));
    }
}

/// A finished (or waiting) task of `template` created at `now`.
fn task(project: ProjectId, template: u64, status: TaskStatus, now: i64) -> Task {
    Task {
        status,
        start: Some(now),
        end: status.is_finished().then_some(now),
        ..Task::waiting(project, template, now)
    }
}

/// `n` output lines of a typical length (about 100 bytes).
fn lines(n: u64) -> Vec<OutputLine> {
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

/// Stores `count` finished tasks of `template`, each with `lines` output lines, `per_tx` tasks
/// per transaction.
fn fill(store: &Store, project: ProjectId, template: u64, count: u64, lines: u64, per_tx: u64) {
    let out = Arc::new(self::lines(lines));
    let mut left = count;
    while left > 0 {
        let n = left.min(per_tx);
        let out = Arc::clone(&out);
        store
            .transact(0, move |tx| {
                for _ in 0..n {
                    let mut t = task(project, template, TaskStatus::Success, 1);
                    let id = tx.insert_task(&mut t)?;
                    tx.append_output(id, 0, &out)?;
                }
                Ok::<_, forge::store::Error>(())
            })
            .expect("fill");
        left -= n;
    }
}

// ---------------------------------------------------------------------------------------------
// launch p99 with and without pruning

/// One request on a connection of its own (setup only).
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
    (
        status,
        cookie,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn id_of(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

/// Logs in, makes a token, a project, a local repository and two bash templates (`true`):
/// one to launch, one whose old tasks get pruned. Returns (token, project, launched, old).
async fn setup(addr: SocketAddr, repo: &Path) -> (String, u64, u64, u64) {
    let login = json!({"auth": "admin", "password": "changeme"});
    let (_, cookie, _) = call(addr, "POST", "/api/auth/login", None, Some(login)).await;
    let cookie = cookie.expect("session cookie");
    let (_, _, token) = call(
        addr,
        "POST",
        "/api/user/tokens",
        Some(("cookie", cookie)),
        None,
    )
    .await;
    let token = token["id"].as_str().expect("token").to_owned();
    let bearer = || Some(("authorization", format!("Bearer {token}")));
    let project = json!({"name": "bench"});
    let (_, _, p) = call(addr, "POST", "/api/projects", bearer(), Some(project)).await;
    let p = id_of(&p);
    let (_, _, keys) = call(
        addr,
        "GET",
        &format!("/api/project/{p}/keys"),
        bearer(),
        None,
    )
    .await;
    let repo_body = json!({"name": "local", "project_id": p, "ssh_key_id": id_of(&keys[0]),
        "git_branch": "", "git_url": repo.display().to_string()});
    let path = format!("/api/project/{p}/repositories");
    let (status, _, _) = call(addr, "POST", &path, bearer(), Some(repo_body)).await;
    assert_eq!(status, 204, "repository");
    let (_, _, repos) = call(addr, "GET", &path, bearer(), None).await;
    let path = format!("/api/project/{p}/templates");
    let mut tpls = Vec::new();
    for name in ["launched", "old"] {
        let body = json!({"name": name, "project_id": p, "app": "bash",
            "playbook": "run.sh", "repository_id": id_of(&repos[0])});
        let (status, _, tpl) = call(addr, "POST", &path, bearer(), Some(body)).await;
        assert_eq!(status, 201, "template");
        tpls.push(id_of(&tpl));
    }
    (token, p, tpls[0], tpls[1])
}

/// One launch on a keep-alive connection; its latency.
async fn launch_one(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    token: &str,
    project: u64,
    body: &Bytes,
) -> Duration {
    let start = Instant::now();
    sender.ready().await.expect("connection ready");
    let req = Request::builder()
        .method("POST")
        .uri(format!("/api/project/{project}/tasks"))
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let took = start.elapsed();
    assert_eq!(status, 201, "launch: {}", String::from_utf8_lossy(&bytes));
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {label:<22} | {:>5} | {:>6.2} | {:>6.2} | {:>6.2} | {:>7.2} |",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(*samples.last().expect("samples"))
    );
}

/// Waits until the runner has no unfinished task (so both phases start from an empty queue).
async fn settle(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !store.active_tasks().expect("active").is_empty() {
        assert!(Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn launch(sizes: &Sizes) {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("repo dir");
    std::fs::write(repo.join("run.sh"), "true\n").expect("script");
    let mut config = Config::with_db(dir.path().join("forge.redb"));
    config.scrypt_log_n = 4;
    config.admin = Some("admin".into());
    config.admin_password = Some(Secret("changeme".into()));
    config.max_parallel_tasks = 2;
    // The repository is a local folder; tasks run in the sandbox through the built binary.
    config.local_repo_roots = vec![repo.clone()];
    config.sandbox_exe = Some(env!("CARGO_BIN_EXE_forge").into());
    // The server's own pruner has nothing to do; the bench drives one by hand.
    let app = forge::App::start(config).await.expect("server starts");
    let store = app.services.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(forge::serve(listener, app, std::future::pending()));
    let (token, p, launched, old) = setup(addr, &repo).await;

    let started = Instant::now();
    let filler = store.clone();
    let (n, l) = (sizes.old_tasks, sizes.old_lines);
    tokio::task::spawn_blocking(move || fill(&filler, p, old, n, l, 100))
        .await
        .expect("fill");
    let db_size = std::fs::metadata(dir.path().join("forge.redb")).map_or(0, |m| m.len());
    println!(
        "\nlaunch: {n} old finished tasks x {l} lines stored in {:.1} s (db {:.0} MiB)",
        started.elapsed().as_secs_f64(),
        db_size as f64 / 1_048_576.0
    );

    let body = Bytes::from(json!({ "template_id": launched }).to_string());
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);

    // Idle: the pruner has nothing to do.
    let mut idle = Vec::new();
    let mut tick = tokio::time::interval(PACE);
    for _ in 0..sizes.idle_launches {
        tick.tick().await;
        idle.push(launch_one(&mut sender, addr, &token, p, &body).await);
    }
    settle(&store).await;

    // Pruning: keep 1 of the old template's tasks, so all the others go, batch by batch.
    let policy = Policy {
        max_tasks_per_template: 1,
        ..Policy::default()
    };
    let pruner = Retention::new(store.clone(), policy, ClockHandle::default());
    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    let prune_started = Instant::now();
    let prune = tokio::spawn(async move {
        let pruned = pruner.prune_templates([(p, old)]).await.expect("prune");
        flag.store(false, Ordering::SeqCst);
        (pruned, prune_started.elapsed())
    });
    let mut busy = Vec::new();
    while running.load(Ordering::SeqCst) && busy.len() < sizes.max_launches {
        tick.tick().await;
        let took = launch_one(&mut sender, addr, &token, p, &body).await;
        // Only launches that both began and ended while the prune ran count.
        if running.load(Ordering::SeqCst) {
            busy.push(took);
        }
    }
    let (pruned, took) = prune.await.expect("prune task");
    assert_eq!(pruned.tasks, n - 1, "every old task but one pruned");
    assert_eq!(pruned.lines, (n - 1) * l, "their output pruned");
    println!(
        "launch: pruned {} tasks and {} output rows in {:.1} s ({:.0} rows/s) beside the launches",
        pruned.tasks,
        pruned.lines,
        took.as_secs_f64(),
        pruned.lines as f64 / took.as_secs_f64()
    );
    println!(
        "\n| launches (POST /tasks) |     n | p50 ms | p90 ms | p99 ms |  max ms |\n|---|---|---|---|---|---|"
    );
    row("pruner idle", idle);
    if busy.is_empty() {
        println!("| while pruning          |     0 | (the prune ended before a launch did) |");
    } else {
        row("while pruning", busy);
    }
    settle(&store).await;
}

// ---------------------------------------------------------------------------------------------
// churn: the file levels off

async fn churn(sizes: &Sizes) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("forge.redb");
    let store = Store::open(&path).expect("open the store");
    let (project, template) = (1, 1);
    let policy = Policy {
        max_tasks_per_template: sizes.churn_cap,
        ..Policy::default()
    };
    // The server prunes a template SOON after a task of it finishes; here the same prune runs
    // on the same schedule beside the writes.
    let pruner = Retention::new(store.clone(), policy, ClockHandle::default());
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let prune = tokio::spawn(async move {
        let mut total = forge::store::retention::Pruned::default();
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(forge::retention::SOON).await;
            total += pruner
                .prune_templates([(project, template)])
                .await
                .expect("prune");
        }
        total += pruner
            .prune_templates([(project, template)])
            .await
            .expect("prune");
        total
    });
    let writer = store.clone();
    let (n, l, every) = (sizes.churn_tasks, sizes.churn_lines, sizes.churn_every);
    let started = Instant::now();
    let curve = tokio::task::spawn_blocking(move || {
        let out = Arc::new(lines(l));
        let mut curve = Vec::new();
        for i in 1..=n {
            let out = Arc::clone(&out);
            writer
                .transact(0, move |tx| {
                    let mut t = task(project, template, TaskStatus::Running, 1);
                    let id = tx.insert_task(&mut t)?;
                    tx.append_output(id, 0, &out)?;
                    t.status = TaskStatus::Success;
                    t.end = Some(2);
                    tx.put_task(&t)?;
                    Ok::<_, forge::store::Error>(())
                })
                .expect("a task");
            // Finer at first, where the file grows to its working size.
            if i % every == 0 || (i < every && i % (every / 10).max(1) == 0) {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                let (kept, _) = writer
                    .template_task_stats(project, template)
                    .expect("stats");
                curve.push((i, size, kept, started.elapsed()));
            }
        }
        curve
    })
    .await
    .expect("churn");
    done.store(true, Ordering::SeqCst);
    let pruned = prune.await.expect("pruner");
    let (kept, _) = store.template_task_stats(project, template).expect("stats");
    assert_eq!(
        kept, sizes.churn_cap,
        "the cap holds once the pruner catches up"
    );
    assert_eq!(store.purge_backlog().expect("backlog"), 0);
    println!(
        "\nchurn: {n} tasks x {l} lines, cap {}: {} tasks and {} output rows pruned in {:.1} s",
        sizes.churn_cap,
        pruned.tasks,
        pruned.lines,
        started.elapsed().as_secs_f64()
    );
    println!("\n| tasks run | db file MiB | tasks kept | elapsed s |\n|---|---|---|---|");
    for (i, size, kept, at) in curve {
        println!(
            "| {i:>9} | {:>11.1} | {kept:>10} | {:>9.1} |",
            size as f64 / 1_048_576.0,
            at.as_secs_f64()
        );
    }
}
