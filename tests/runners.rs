//! Remote runners (issue 15) through real processes on loopback: a `forge serve` and
//! `forge runner` agents started from the built binary. Jobs spread over the runners within
//! their tags and limits; a runner killed with SIGKILL loses its task (`error`, with a line
//! saying so) while the others finish; a stop reaches a remote task; a restarted runner
//! cleans up after itself and runs again; a server restarted while runners hold jobs ends
//! those tasks as its crash recovery does, and the runners kill them and go on. Bad input on
//! every runner route gets a JSON error.

mod common;

use common::git::git as git_in;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::files::holding as files_holding;
use common::process::{FORGE, ServerProcess};
use common::tools::landlock as landlock_here;
use common::{ADMIN, ADMIN_PASSWORD, Client, TestServer, at, id_of, ok_json};
use serde_json::{Value, json};

const REGISTRATION: &str = "test-registration-token";

/// A `forge runner start` process (killed on drop).
struct Agent {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path) -> Self {
        Self::start_with(config, &[], &[])
    }

    /// Started with `args` after `start --config PATH`, and `path_first` before its PATH.
    fn start_with(config: &Path, args: &[&str], path_first: &[&Path]) -> Self {
        let log = config.with_extension("log");
        let path = path_with(path_first);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("runner log");
        let child = Command::new(FORGE)
            .args(["runner", "start", "--config"])
            .arg(config)
            .args(args)
            .env("PATH", path)
            .env("FORGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn forge runner");
        Self {
            child,
            config: config.to_owned(),
            log,
        }
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first: the agent stops its jobs' process groups.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_9();
    }
}

/// `forge runner register` against `server`; returns the config path and the runner's id.
fn register(server: SocketAddr, dir: &Path, name: &str, tags: &str, max: u32) -> (PathBuf, u64) {
    let config = dir.join(format!("{name}.json"));
    let mut cmd = Command::new(FORGE);
    cmd.args(["runner", "register", "--server"])
        .arg(format!("http://{server}"))
        .args(["--registration-token-stdin", "--name", name])
        .args(["--max-parallel-tasks", &max.to_string()])
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !tags.is_empty() {
        cmd.args(["--tags", tags]);
    }
    let mut child = cmd.spawn().expect("spawn register");
    writeln!(child.stdin.take().expect("stdin"), "{REGISTRATION}").expect("token");
    let out = child.wait_with_output().expect("register");
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config)
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the config holds the token");
    let cfg: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    (config, cfg["id"].as_u64().expect("id"))
}

/// A free loopback port (so a restarted server listens where its runners look).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `forge serve` on `db` at `port` with the registration token and a short runner timeout.
fn serve(db: &Path, port: u16, timeout: &str) -> ServerProcess {
    serve_with(db, port, timeout, &[])
}

/// [`serve`] with more environment variables.
fn serve_with(db: &Path, port: u16, timeout: &str, env: &[(&str, &str)]) -> ServerProcess {
    let mut cmd = Command::new(FORGE);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("FORGE_DB", db)
        .env("FORGE_ADMIN", ADMIN)
        .env("FORGE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("FORGE_SCRYPT_LOG_N", "4")
        .env("FORGE_LOG", "info")
        .env("NO_COLOR", "1")
        .env("FORGE_RUNNER_REGISTRATION_TOKEN", REGISTRATION)
        .env("FORGE_RUNNER_TIMEOUT", timeout)
        // The tests' repositories are local folders in the temp dir.
        .env("FORGE_LOCAL_REPO_ROOTS", std::env::temp_dir())
        .env("FORGE_STOP_GRACE_SECS", "2")
        .env("FORGE_SHUTDOWN_GRACE_SECS", "1")
        .envs(env.iter().copied())
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ServerProcess::spawn(cmd)
}

/// A project with a local repository holding `scripts`; returns the project and repository.
async fn project(admin: &Client, repo: &Path, scripts: &[(&str, &str)]) -> (u64, u64) {
    for (name, text) in scripts {
        std::fs::write(repo.join(name), text).unwrap();
    }
    let p = common::new_project(admin, "remote").await;
    let r = common::local_repository(admin, p, repo).await;
    (p, r)
}

async fn template(admin: &Client, p: u64, repo: u64, name: &str, script: &str, tag: &str) -> u64 {
    let mut body = json!({"name": name, "project_id": p, "app": "bash", "playbook": script,
                          "repository_id": repo});
    if !tag.is_empty() {
        body["runner_tag"] = json!(tag);
    }
    let r = admin.post(&at(p, "templates"), body).await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    let t = r.json();
    assert_eq!(t["runner_tag"].as_str().unwrap_or(""), tag);
    id_of(&t)
}

async fn launch(admin: &Client, p: u64, template: u64) -> u64 {
    let r = admin
        .post(&at(p, "tasks"), json!({"template_id": template}))
        .await;
    assert_eq!(r.status, 201, "launch: {}", r.text());
    id_of(&r.json())
}

async fn output(c: &Client, p: u64, task: u64) -> Vec<Value> {
    ok_json(c, &at(p, &format!("tasks/{task}/output")))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["output"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls task `task` until its status is one of `want` (panics after `secs`).
async fn wait_status(c: &Client, p: u64, task: u64, want: &[&str], secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = ok_json(c, &at(p, &format!("tasks/{task}"))).await;
        if want.contains(&t["status"].as_str().unwrap_or_default()) {
            return t;
        }
        if Instant::now() > deadline {
            let out = texts(&output(c, p, task).await);
            panic!("task {task} not {want:?} within {secs} s: {t}\noutput: {out:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until runner `id` shows online in `/api/runners/{id}`.
async fn wait_online(admin: &Client, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let r = ok_json(admin, &format!("/api/runners/{id}")).await;
        if r["online"] == true {
            assert!(r["touched"].is_string(), "{r}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("runner {id} did not come online");
}

/// The number after `prefix` in the task's output.
fn number_after(lines: &[String], prefix: &str) -> Option<i32> {
    lines
        .iter()
        .find_map(|t| t.strip_prefix(prefix).and_then(|n| n.trim().parse().ok()))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        state != "Z" && state != "X"
    })
}

async fn wait_dead(pid: i32, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn microseconds(line: &Value) -> i128 {
    let t = line["time"].as_str().expect("time");
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("time {t}: {e}"));
    t.unix_timestamp_nanos() / 1000
}

const WORK: &str =
    "#!/usr/bin/env bash\necho \"work $FORGE_TASK_ID on $(hostname)\"\nsleep 0.3\necho done\n";
const SLEEPY: &str = "#!/usr/bin/env bash\necho \"pid $$\"\nsleep 60\n";
const SHORT: &str = "#!/usr/bin/env bash\necho \"pid $$\"\nsleep 3\necho finished\n";

#[tokio::test(flavor = "multi_thread")]
async fn sixty_tasks_spread_over_three_runners_within_tags_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("forge.redb"), free_port(), "5");
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let (c1, r1) = register(server.addr, dir.path(), "one", "a", 2);
    let (c2, r2) = register(server.addr, dir.path(), "two", "a,b", 2);
    let (c3, r3) = register(server.addr, dir.path(), "three", "", 3);
    let max: HashMap<u64, usize> = [(r1, 2), (r2, 2), (r3, 3)].into();
    let _agents = [Agent::start(&c1), Agent::start(&c2), Agent::start(&c3)];
    for id in [r1, r2, r3] {
        wait_online(&admin, id).await;
    }
    let (p, repo_id) = project(&admin, repo.path(), &[("work.sh", WORK)]).await;
    // Two templates per tag ("b": runner two only; "a": one or two; none: any): a template
    // runs one task at a time, so six templates keep up to six tasks going.
    let mut templates = Vec::new();
    for (i, tag) in ["b", "b", "a", "a", "", ""].iter().enumerate() {
        let t = template(&admin, p, repo_id, &format!("t{i}"), "work.sh", tag).await;
        templates.push((t, *tag));
    }
    let mut tasks = Vec::new();
    for round in 0..10 {
        for &(t, tag) in &templates {
            let _ = round;
            tasks.push((launch(&admin, p, t).await, tag));
        }
    }
    assert_eq!(tasks.len(), 60);
    let mut intervals: BTreeMap<u64, Vec<(i128, i128)>> = BTreeMap::new();
    for &(task, tag) in &tasks {
        let t = wait_status(&admin, p, task, &["success", "error", "stopped"], 120).await;
        let lines = output(&admin, p, task).await;
        assert_eq!(t["status"], "success", "{t}: {:#?}", texts(&lines));
        let runner = t["runner_id"].as_u64().expect("a runner ran it");
        match tag {
            "b" => assert_eq!(runner, r2, "tag b runs on runner two only"),
            "a" => assert!(runner == r1 || runner == r2, "tag a: {runner}"),
            _ => {}
        }
        let text = texts(&lines);
        assert!(
            text.iter()
                .any(|l| l.starts_with(&format!("work {task} on"))),
            "{text:#?}"
        );
        assert_eq!(text.last().map(String::as_str), Some("done"), "{text:#?}");
        let prepared = lines
            .iter()
            .find(|l| l["output"] == format!("Preparing: {task}"))
            .expect("the runner's first line");
        intervals
            .entry(runner)
            .or_default()
            .push((microseconds(prepared), microseconds(lines.last().unwrap())));
    }
    assert_eq!(
        intervals.len(),
        3,
        "every runner took jobs: {:?}",
        intervals.keys()
    );
    for (runner, spans) in &intervals {
        // The most jobs a runner ever ran at once (from its own timestamps).
        let mut edges: Vec<(i128, i32)> =
            spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
        edges.sort_unstable();
        let (mut now, mut most) = (0, 0);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        assert!(
            usize::try_from(most).unwrap() <= max[runner],
            "runner {runner} ran {most} at once (limit {})",
            max[runner]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runner_loses_its_task_the_others_finish_and_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("forge.redb"), free_port(), "2");
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let (c1, r1) = register(server.addr, dir.path(), "one", "", 1);
    let (c2, r2) = register(server.addr, dir.path(), "two", "", 1);
    let mut agents: HashMap<u64, Agent> = [(r1, Agent::start(&c1)), (r2, Agent::start(&c2))].into();
    wait_online(&admin, r1).await;
    wait_online(&admin, r2).await;
    let (p, repo_id) = project(
        &admin,
        repo.path(),
        &[("sleepy.sh", SLEEPY), ("short.sh", SHORT)],
    )
    .await;
    let sleepy = template(&admin, p, repo_id, "sleepy", "sleepy.sh", "").await;
    let short = template(&admin, p, repo_id, "short", "short.sh", "").await;
    let doomed = launch(&admin, p, sleepy).await;
    let t = wait_status(&admin, p, doomed, &["running"], 20).await;
    let victim = t["runner_id"].as_u64().expect("runner");
    let other = launch(&admin, p, short).await;
    let t = wait_status(&admin, p, other, &["running"], 20).await;
    assert_ne!(t["runner_id"].as_u64(), Some(victim), "one task per runner");
    let pid = loop {
        if let Some(pid) = number_after(&texts(&output(&admin, p, doomed).await), "pid ") {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Its private dir (keys, handoffs) outlives a kill -9, until the runner starts again.
    let victim_dir = agents[&victim]
        .config
        .with_extension("json.work")
        .join("tasks")
        .join(doomed.to_string());
    assert!(victim_dir.is_dir(), "{}", victim_dir.display());
    let killed_at = Instant::now();
    agents.get_mut(&victim).unwrap().kill_9();
    let t = wait_status(&admin, p, doomed, &["error"], 15).await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(8),
        "ended after {:?}",
        killed_at.elapsed()
    );
    assert!(t["end"].is_string(), "{t}");
    let text = texts(&output(&admin, p, doomed).await);
    assert!(
        text.iter()
            .any(|l| l.contains("was lost: no contact for 2 s")),
        "{text:#?}"
    );
    let t = wait_status(&admin, p, other, &["success"], 20).await;
    assert_ne!(t["runner_id"].as_u64(), Some(victim));
    let r = ok_json(&admin, &format!("/api/runners/{victim}")).await;
    assert_eq!(r["online"], false, "{r}");

    // Back again: it kills what its killed predecessor left running, and takes jobs.
    assert!(alive(pid), "the orphaned script still runs");
    let config = agents[&victim].config.clone();
    agents.insert(victim, Agent::start(&config));
    wait_online(&admin, victim).await;
    wait_dead(pid, 10).await;
    assert!(
        !victim_dir.exists(),
        "swept at start: {}",
        victim_dir.display()
    );
    // Two jobs, one runner each (limit 1): the restarted one takes one of them.
    let busy = launch(&admin, p, sleepy).await;
    let again = launch(&admin, p, short).await;
    let b = wait_status(&admin, p, busy, &["running"], 20).await;
    let a = wait_status(&admin, p, again, &["success"], 30).await;
    let mut used = [b["runner_id"].as_u64(), a["runner_id"].as_u64()];
    used.sort_unstable();
    let mut both = [Some(r1), Some(r2)];
    both.sort_unstable();
    assert_eq!(used, both, "{}", agents[&victim].log());
    let r = admin
        .post(&at(p, &format!("tasks/{busy}/stop")), json!({}))
        .await;
    assert_eq!(r.status, 204);
    wait_status(&admin, p, busy, &["stopped"], 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_reaches_a_remote_task_and_kills_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("forge.redb"), free_port(), "10");
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let (c1, r1) = register(server.addr, dir.path(), "one", "", 0);
    let _agent = Agent::start(&c1);
    wait_online(&admin, r1).await;
    let (p, repo_id) = project(&admin, repo.path(), &[("sleepy.sh", SLEEPY)]).await;
    let sleepy = template(&admin, p, repo_id, "sleepy", "sleepy.sh", "").await;
    let task = launch(&admin, p, sleepy).await;
    wait_status(&admin, p, task, &["running"], 20).await;
    let pid = loop {
        if let Some(pid) = number_after(&texts(&output(&admin, p, task).await), "pid ") {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = admin
        .post(&at(p, &format!("tasks/{task}/stop")), json!({}))
        .await;
    assert_eq!(r.status, 204);
    let t = wait_status(&admin, p, task, &["stopped"], 10).await;
    assert!(t["end"].is_string());
    wait_dead(pid, 5).await;
    let text = texts(&output(&admin, p, task).await);
    assert_eq!(
        text.last().map(String::as_str),
        Some("Task stopped"),
        "{text:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restart_ends_remote_tasks_and_runners_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let port = free_port();
    let server = serve(&db, port, "10");
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;
    let (c1, r1) = register(server.addr, dir.path(), "one", "", 0);
    let agent = Agent::start(&c1);
    wait_online(&admin, r1).await;
    let (p, repo_id) = project(
        &admin,
        repo.path(),
        &[("sleepy.sh", SLEEPY), ("short.sh", SHORT)],
    )
    .await;
    let sleepy = template(&admin, p, repo_id, "sleepy", "sleepy.sh", "").await;
    let short = template(&admin, p, repo_id, "short", "short.sh", "").await;
    let task = launch(&admin, p, sleepy).await;
    wait_status(&admin, p, task, &["running"], 20).await;
    let pid = loop {
        if let Some(pid) = number_after(&texts(&output(&admin, p, task).await), "pid ") {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.kill_9();
    // The runner keeps the job while the server is away, then learns it is over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alive(pid));
    let server = serve(&db, port, "10");
    let admin = server.client().with_bearer(&token);
    let t = wait_status(&admin, p, task, &["error"], 5).await;
    let text = texts(&output(&admin, p, task).await);
    assert_eq!(
        text.last().map(String::as_str),
        Some("interrupted: server restarted"),
        "{text:#?}"
    );
    assert_eq!(t["runner_id"].as_u64(), Some(r1));
    wait_dead(pid, 15).await;
    let next = launch(&admin, p, short).await;
    let t = wait_status(&admin, p, next, &["success"], 30).await;
    assert_eq!(t["runner_id"].as_u64(), Some(r1), "{}", agent.log());
}

/// Runner routes on an in-process server: every refusal is a JSON error.
#[tokio::test]
async fn runner_routes_refuse_bad_input() {
    let server = TestServer::start_with(|c| {
        c.runner_registration_token = Some(forge::config::Secret(REGISTRATION.into()));
    })
    .await;
    let admin = server.admin().await;
    let anon = server.client();
    let (_, user) = server.user("plain", false).await;
    let internal = "/api/internal/runners";
    // Registration.
    let r = anon
        .post(
            internal,
            json!({"registration_token": "wrong", "name": "x"}),
        )
        .await;
    r.assert_error(401);
    let r = anon
        .raw("POST", internal, Some(b"{nope".to_vec()), &[])
        .await;
    r.assert_error(400);
    let r = anon
        .post(
            internal,
            json!({"registration_token": REGISTRATION, "tags": ["a b"]}),
        )
        .await;
    r.assert_error(400);
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = anon.raw("POST", internal, Some(big.clone()), &[]).await;
    r.assert_error(413);
    let r = anon
        .post(
            internal,
            json!({"registration_token": REGISTRATION, "name": "x", "tags": ["a"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let id = id_of(&r.json());
    let header = [("x-runner-token", token.as_str())];
    // Polls and reports.
    anon.get(internal).await.assert_error(401);
    anon.raw("GET", internal, None, &[("x-runner-token", "nope")])
        .await
        .assert_error(401);
    let r = anon.raw("GET", internal, None, &header).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"jobs": [], "stop": [], "confirm": [], "reject": [], "timeout_secs": 60})
    );
    anon.raw("GET", &format!("{internal}?wait=soon"), None, &header)
        .await
        .assert_error(400);
    anon.raw("PUT", internal, Some(b"[1,".to_vec()), &header)
        .await
        .assert_error(400);
    anon.raw("PUT", internal, Some(big.clone()), &header)
        .await
        .assert_error(413);
    let body = json!({"jobs": [{"task_id": 5, "status": "flying"}]}).to_string();
    anon.raw("PUT", internal, Some(body.into_bytes()), &header)
        .await
        .assert_error(400);
    // A host key that would add a known_hosts line of its own, or mark one.
    for (host, key) in [
        ("h", "AAAA\n@cert-authority * ssh-ed25519 AAAA"),
        ("@revoked", "AAAA"),
        ("a b", "AAAA"),
        ("", "AAAA"),
    ] {
        let body = json!({"jobs": [{"task_id": 5, "status": "running", "host_keys": [
            {"host": host, "key_type": "ssh-ed25519", "key": key}]}]});
        let r = anon
            .raw(
                "PUT",
                internal,
                Some(body.to_string().into_bytes()),
                &header,
            )
            .await;
        r.assert_error(400);
        assert!(r.text().contains("host_keys"), "{}", r.text());
    }
    // A job the runner does not hold comes back as one to stop.
    let body = json!({"jobs": [{"task_id": 5, "status": "running"}]}).to_string();
    let r = anon
        .raw("PUT", internal, Some(body.into_bytes()), &header)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"stop": [5]}));
    // Admin routes.
    anon.get("/api/runners").await.assert_error(401);
    user.get("/api/runners").await.assert_error(403);
    user.post("/api/runners", json!({})).await.assert_error(403);
    admin.get("/api/runners/999").await.assert_error(404);
    admin.get("/api/runners/abc").await.assert_error(400);
    admin
        .put("/api/runners/999", json!({}))
        .await
        .assert_error(404);
    admin.delete("/api/runners/999").await.assert_error(404);
    admin
        .post("/api/runners/999/active", json!({"active": false}))
        .await
        .assert_error(404);
    admin
        .raw("POST", "/api/runners", Some(b"{".to_vec()), &[])
        .await
        .assert_error(400);
    admin
        .raw("POST", "/api/runners", Some(big), &[])
        .await
        .assert_error(413);
    admin
        .post(&format!("/api/runners/{id}/active"), json!({}))
        .await
        .assert_error(400);
    admin
        .put(
            &format!("/api/runners/{id}"),
            json!({"max_parallel_tasks": 1_000_000}),
        )
        .await
        .assert_error(400);
    let list = ok_json(&admin, "/api/runners").await;
    assert_eq!(list[0]["name"], "x");
    assert_eq!(list[0]["tags"], json!(["a"]));
    assert!(list[0].get("token").is_none());
    // Deactivated: refused at once; active again: accepted; deleted: refused.
    let r = admin
        .post(
            &format!("/api/runners/{id}/active"),
            json!({"active": false}),
        )
        .await;
    assert_eq!(r.status, 204);
    anon.raw("GET", internal, None, &header)
        .await
        .assert_error(401);
    let r = admin
        .put(
            &format!("/api/runners/{id}"),
            json!({"active": true, "name": "y"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(anon.raw("GET", internal, None, &header).await.status, 200);
    assert_eq!(
        ok_json(&admin, &format!("/api/runners/{id}")).await["name"],
        "y"
    );
    let r = admin
        .post("/api/runners", json!({"name": "made", "tags": ["z"]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let made = r.json();
    assert!(made["token"].as_str().is_some_and(|t| t.len() == 44));
    assert_eq!(
        admin.delete(&format!("/api/runners/{id}")).await.status,
        204
    );
    anon.raw("GET", internal, None, &header)
        .await
        .assert_error(401);
    // Unregister with the second runner's token.
    let made_token = made["token"].as_str().unwrap();
    let h = [("x-runner-token", made_token)];
    assert_eq!(anon.raw("DELETE", internal, None, &h).await.status, 204);
    anon.raw("DELETE", internal, None, &h)
        .await
        .assert_error(401);
    // A template's runner tag is checked.
    let p = common::new_project(&admin, "tags").await;
    let repo = tempfile::tempdir().unwrap();
    let repo_id = common::local_repository(&admin, p, repo.path()).await;
    let r = admin
        .post(
            &at(p, "templates"),
            json!({"name": "t", "project_id": p, "app": "bash", "playbook": "x.sh",
                   "repository_id": repo_id, "runner_tag": "no spaces"}),
        )
        .await;
    r.assert_error(400);
}

/// A server in `dir` and one runner, online, named and tagged `name` (one slot).
struct OneRunner {
    // Dropped first: the runner stops before the server.
    agent: Agent,
    admin: Client,
    config: PathBuf,
    runner: u64,
    _server: ServerProcess,
}

impl OneRunner {
    /// The server with `env`, the runner started with `args` and `path_first` on its PATH.
    async fn start(
        dir: &Path,
        name: &str,
        env: &[(&str, &str)],
        args: &[&str],
        path_first: &[&Path],
    ) -> Self {
        let server = serve_with(&dir.join("forge.redb"), free_port(), "10", env);
        let mut admin = server.client();
        assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
        let (config, runner) = register(server.addr, dir, name, name, 1);
        let agent = Agent::start_with(&config, args, path_first);
        wait_online(&admin, runner).await;
        Self {
            agent,
            admin,
            config,
            runner,
            _server: server,
        }
    }
}

/// Creates `body` in project `p`'s `kind` (a `201` with the object, or a `204` after which
/// it is found by name); returns its id.
async fn add(admin: &Client, p: u64, kind: &str, body: Value) -> u64 {
    let r = admin.post(&at(p, kind), body.clone()).await;
    match r.status {
        201 => id_of(&r.json()),
        204 => {
            let list = ok_json(admin, &at(p, kind)).await;
            list.as_array()
                .and_then(|l| l.iter().find(|o| o["name"] == body["name"]))
                .map_or_else(|| panic!("no {} in {list}", body["name"]), id_of)
        }
        other => panic!("POST {kind}: {other} {}", r.text()),
    }
}

/// `PATH` with `first` before the test's own.
fn path_with(first: &[&Path]) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(
        first
            .iter()
            .map(|p| p.to_path_buf())
            .chain(std::env::split_paths(&path)),
    )
    .expect("PATH")
}

/// `localhost` over the local connection, modules run by the Python that runs ansible.
const INVENTORY: &str = "localhost ansible_connection=local ansible_python_interpreter='{{ ansible_playbook_python }}'\n";

const PLAYBOOK: &str = r#"- name: remote play
  hosts: all
  gather_facts: false
  vars_files:
    - vaulted.yml
  tasks:
    - name: show the vaulted variable
      ansible.builtin.debug:
        msg: "vault says {{ from_vault }}"
    - name: show the secret extra variable
      ansible.builtin.debug:
        msg: "secret var is {{ secret_var }}"
"#;

const VAULT_PASSWORD: &str = "runner-vault-password-7c1e";
const SECRET_VAR: &str = "runner-secret-var-93ea";
const VAULTED: &str = "vaulted-plain-text-5d2b";

/// A tagged ansible template runs on a real `forge runner` with the server's own executor:
/// the inventory, the vault password and a `var` secret travel in the job, reach the playbook
/// (a vaulted variable is decrypted, the secret is an extra var), and once the task has ended
/// no file under the runner's directories holds any of them.
#[tokio::test(flavor = "multi_thread")]
async fn an_ansible_template_runs_on_a_runner_and_its_secrets_leave_nothing_behind() {
    let Some(ansible) = common::tools::require("ansible-playbook", "the remote ansible test")
    else {
        return;
    };
    let bin = ansible.parent().expect("ansible's directory").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let password_file = scratch.path().join("vault-password");
    std::fs::write(&password_file, VAULT_PASSWORD).unwrap();
    let vaulted = Command::new(bin.join("ansible-vault"))
        .args(["encrypt_string", "--vault-password-file"])
        .arg(&password_file)
        .args([VAULTED, "--name", "from_vault"])
        .output()
        .expect("ansible-vault");
    assert!(
        vaulted.status.success(),
        "ansible-vault: {}",
        String::from_utf8_lossy(&vaulted.stderr)
    );
    std::fs::write(repo.path().join("vaulted.yml"), &vaulted.stdout).unwrap();

    // The server checks that the app is there (the runner runs it).
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let path = path.to_str().expect("PATH is UTF-8");
    let one = OneRunner::start(dir.path(), "ansible", &[("PATH", path)], &[], &[&bin]).await;
    let (admin, config, runner) = (&one.admin, &one.config, one.runner);
    let (p, repo_id) = project(admin, repo.path(), &[("site.yml", PLAYBOOK)]).await;

    let vault = add(
        admin,
        p,
        "keys",
        json!({"name": "vault", "type": "login_password", "project_id": p,
               "login_password": {"login": "", "password": VAULT_PASSWORD}}),
    )
    .await;
    let inventory = add(
        admin,
        p,
        "inventory",
        json!({"name": "local", "project_id": p, "type": "static", "inventory": INVENTORY}),
    )
    .await;
    let env = add(
        admin,
        p,
        "environment",
        json!({"name": "vars", "project_id": p, "json": "{}", "env": "{}",
               "secrets": [{"operation": "create", "type": "var", "name": "secret_var",
                            "secret": SECRET_VAR}]}),
    )
    .await;
    let template = add(
        admin,
        p,
        "templates",
        json!({"name": "play", "project_id": p, "app": "ansible", "playbook": "site.yml",
               "inventory_id": inventory, "repository_id": repo_id, "environment_id": env,
               "runner_tag": "ansible", "vaults": [{"vault_key_id": vault}]}),
    )
    .await;

    let task = launch(admin, p, template).await;
    let t = wait_status(admin, p, task, &["success", "error", "stopped"], 180).await;
    let text = texts(&output(admin, p, task).await);
    assert_eq!(t["status"], "success", "{t}: {text:#?}");
    assert_eq!(t["runner_id"].as_u64(), Some(runner), "{t}");
    for want in [
        "PLAY [remote play]".to_owned(),
        format!("vault says {VAULTED}"),
        format!("secret var is {SECRET_VAR}"),
    ] {
        assert!(
            text.iter().any(|l| l.contains(&want)),
            "no {want:?} in {text:#?}"
        );
    }
    let work = config.with_extension("json.work");
    assert!(work.is_dir(), "the runner's work dir {}", work.display());
    assert!(
        !work.join("tasks").join(task.to_string()).exists(),
        "the task's private dir is gone"
    );
    let secrets = [VAULT_PASSWORD, SECRET_VAR, VAULTED];
    let hits = files_holding(&work, &secrets);
    assert!(hits.is_empty(), "secrets left on the runner: {hits:#?}");
    let log = one.agent.log();
    assert!(
        !secrets.iter().any(|s| log.contains(s)),
        "the runner logged a secret: {log}"
    );
}

/// A runner's jobs run in the same Landlock sandbox as the server's: a job can write its own
/// home, but cannot read the runner's config file (its token) or look into the runner's task
/// directories (another job's files).
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_job_cannot_read_the_runners_config_or_other_jobs() {
    if !landlock_here("the runner sandbox test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let args = ["--sandbox", "landlock"];
    let one = OneRunner::start(dir.path(), "boxed", &[], &args, &[]).await;
    let (admin, config, runner) = (&one.admin, &one.config, one.runner);
    let token = serde_json::from_slice::<Value>(&std::fs::read(config).unwrap()).unwrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let work = config.with_extension("json.work");
    let script = format!(
        "#!/usr/bin/env bash\n\
         if cat '{config}'; then echo READ-THE-CONFIG; else echo config-denied; fi\n\
         if ls '{tasks}'; then echo LISTED-THE-TASKS; else echo tasks-denied; fi\n\
         echo mine > \"$HOME/own\" && echo own-home-ok\n",
        config = config.display(),
        tasks = work.join("tasks").display()
    );
    let (p, repo_id) = project(admin, repo.path(), &[("peek.sh", &script)]).await;
    let t = template(admin, p, repo_id, "peek", "peek.sh", "boxed").await;
    let task = launch(admin, p, t).await;
    let t = wait_status(admin, p, task, &["success", "error", "stopped"], 60).await;
    let text = texts(&output(admin, p, task).await);
    assert_eq!(t["status"], "success", "{t}: {text:#?}");
    assert_eq!(t["runner_id"].as_u64(), Some(runner), "{t}");
    for want in ["config-denied", "tasks-denied", "own-home-ok"] {
        assert!(text.iter().any(|l| l == want), "no {want} in {text:#?}");
    }
    assert!(
        !text
            .iter()
            .any(|l| l.contains(&token) || l.starts_with("READ-") || l.starts_with("LISTED-")),
        "{text:#?}"
    );
}

/// Output from a runner is capped per task like a local task's (`--output-max-bytes`): the
/// stored lines stay within the byte limit and one marker line says what was dropped.
#[tokio::test(flavor = "multi_thread")]
async fn remote_output_is_capped_in_bytes_like_local_output() {
    const CAP: usize = 4096;
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let cap = CAP.to_string();
    let env = [("FORGE_OUTPUT_MAX_BYTES", cap.as_str())];
    let one = OneRunner::start(dir.path(), "loud", &env, &[], &[]).await;
    let (admin, runner) = (&one.admin, one.runner);
    let script = "#!/usr/bin/env bash\nfor i in $(seq 1 500); do \
                  printf 'line %04d %s\\n' \"$i\" 0123456789012345678901234567890123456789; done\n";
    let (p, repo_id) = project(admin, repo.path(), &[("loud.sh", script)]).await;
    let t = template(admin, p, repo_id, "loud", "loud.sh", "loud").await;
    let task = launch(admin, p, t).await;
    let t = wait_status(admin, p, task, &["success", "error", "stopped"], 60).await;
    let text = texts(&output(admin, p, task).await);
    assert_eq!(t["runner_id"].as_u64(), Some(runner), "{t}");
    let marker = text
        .iter()
        .position(|l| l.starts_with("output truncated: "))
        .unwrap_or_else(|| panic!("no marker line: {text:#?}"));
    assert!(
        text[marker].contains(&format!("{CAP} bytes per task")),
        "{}",
        text[marker]
    );
    // The cap counts the run's bytes (from `Started:`; the queue's line comes before).
    let started = text
        .iter()
        .position(|l| l.starts_with("Started: "))
        .expect("started");
    let stored: usize = text[started..marker].iter().map(String::len).sum();
    assert!(stored <= CAP, "{stored} bytes stored before the marker");
    let lines = text.iter().filter(|l| l.starts_with("line ")).count();
    assert!(lines > 10 && lines < 500, "{lines} app lines kept");
}

/// Host key pinning on a runner, as on the server: the first checkout over ssh pins the SSH
/// server's key (the runner reports it, the server stores it with the local line), and once
/// the server shows another key the task fails with the same line as a local run, and the
/// new key is not pinned.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_pins_host_keys_and_a_changed_one_fails_its_task() {
    let Some(sshd) = common::ssh::sshd_program() else {
        let _ = common::tools::ready("the runner SSH host key test", &["sshd".to_owned()]);
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let k = |name: &str| keys.path().join(name);
    for name in ["host_a", "host_b", "client"] {
        common::ssh::keygen(&k(name));
    }
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("run.sh"), "echo over-ssh\n").unwrap();
    git_in(repo.path(), &["init", "-q", "-b", "main"]);
    git_in(repo.path(), &["add", "run.sh"]);
    git_in(
        repo.path(),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "run",
        ],
    );
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let mut sshd_a = Some(common::ssh::Sshd::start(
        &sshd,
        keys.path(),
        &k("host_a"),
        &k("client.pub"),
    ));
    let port = sshd_a.as_ref().map(|s| s.port).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let one = OneRunner::start(dir.path(), "ssh", &[], &[], &[]).await;
    let (admin, runner) = (&one.admin, one.runner);
    let p = common::new_project(admin, "pins").await;
    let key = add(
        admin,
        p,
        "keys",
        json!({"name": "deploy", "type": "ssh", "project_id": p,
               "ssh": {"login": user, "passphrase": "",
                       "private_key": std::fs::read_to_string(k("client")).unwrap()}}),
    )
    .await;
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", repo.path().display());
    let repo_id = add(
        admin,
        p,
        "repositories",
        json!({"name": "ssh", "project_id": p, "git_url": url, "git_branch": "main",
               "ssh_key_id": key}),
    )
    .await;
    let tpl = template(admin, p, repo_id, "run", "run.sh", "ssh").await;
    let host = format!("[127.0.0.1]:{port}");
    let key_of = |name: &str| {
        std::fs::read_to_string(k(name))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };

    // First use: the runner meets the key, the server pins it.
    let task = launch(admin, p, tpl).await;
    let t = wait_status(admin, p, task, &["success", "error", "stopped"], 60).await;
    let text = texts(&output(admin, p, task).await);
    assert_eq!(t["status"], "success", "{t}: {text:#?}");
    assert_eq!(t["runner_id"].as_u64(), Some(runner), "{t}");
    assert!(text.iter().any(|l| l == "over-ssh"), "{text:#?}");
    let pinned_line = format!("Pinned the SSH host key of {host} for this project");
    assert!(text.contains(&pinned_line), "{text:#?}");
    let pinned = ok_json(admin, &at(p, "host_keys")).await;
    assert_eq!(pinned.as_array().map(Vec::len), Some(1), "{pinned}");
    assert_eq!(pinned[0]["host"], host.as_str());
    assert_eq!(pinned[0]["key"], key_of("host_a.pub").as_str());
    assert_eq!(pinned[0]["task_id"], task);

    // The SSH server's key changes: the task fails with the local line, nothing is pinned.
    drop(sshd_a.take());
    let _sshd_b =
        common::ssh::Sshd::start_on(&sshd, keys.path(), &k("host_b"), &k("client.pub"), port);
    let task = launch(admin, p, tpl).await;
    let t = wait_status(admin, p, task, &["success", "error", "stopped"], 60).await;
    let text = texts(&output(admin, p, task).await);
    assert_eq!(t["status"], "error", "{t}: {text:#?}");
    common::ssh::assert_key_changed(&text, &host);
    let still = ok_json(admin, &at(p, "host_keys")).await;
    assert_eq!(still.as_array().map(Vec::len), Some(1), "{still}");
    assert_eq!(still[0]["key"], key_of("host_a.pub").as_str());
}

/// The argv files the terraform stand-in recorded in `calls` so far (each: program, then its
/// arguments), oldest first; forgets them.
fn take_calls(calls: &Path) -> Vec<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(calls)
        .expect("calls")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut argvs = Vec::new();
    for f in files {
        if f.extension().is_some_and(|e| e == "argv") {
            let text = std::fs::read_to_string(&f).expect("argv file");
            argvs.push(text.lines().map(str::to_owned).collect());
        }
        std::fs::remove_file(f).expect("forget call");
    }
    argvs
}

/// Confirms, rejects or stops (`action`) task `t`, which waits with a plan; the task once
/// ended, and its output.
async fn decide(admin: &Client, p: u64, t: u64, action: &str) -> (Value, Vec<String>) {
    let r = admin
        .post(&at(p, &format!("tasks/{t}/{action}")), json!({}))
        .await;
    assert_eq!(r.status, 204, "{action}: {}", r.text());
    let task = wait_status(admin, p, t, &["success", "error", "stopped"], 30).await;
    (task, texts(&output(admin, p, t).await))
}

/// A tagged terraform template runs on a real `forge runner` with the server's commands: the
/// runner plans, the task waits for a confirmation here as a local plan does (same status,
/// same confirm/reject API), a confirm reaches the runner, which applies; a rejected or stopped
/// plan ends `stopped` without an apply; an auto-approved one runs through; a runner lost
/// while a plan waits ends its task `error`.
#[tokio::test(flavor = "multi_thread")]
async fn a_terraform_plan_on_a_runner_waits_for_its_confirmation_here() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    // The stand-in may write only in its workspace (the template's directory) under the
    // sandbox: its records go there.
    let infra = repo.path().join("infra");
    let (calls, ctl) = (infra.join("calls"), infra.join("ctl"));
    for d in [&bin, &calls, &ctl] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(infra.join("main.tf"), "resource \"null\" \"x\" {}\n").unwrap();
    common::terraform::install(&bin, &["terraform"], &calls, &ctl);
    let path = path_with(&[&bin]);
    let path = path.to_str().expect("PATH is UTF-8");
    // The server checks that the app is there (the runner runs it).
    let mut one = OneRunner::start(dir.path(), "tf", &[("PATH", path)], &[], &[&bin]).await;
    let runner = one.runner;
    let admin = one.admin.clone();
    let (p, repo_id) = project(&admin, repo.path(), &[]).await;
    let env = add(
        &admin,
        p,
        "environment",
        json!({"name": "prod", "project_id": p, "json": "{\"region\": \"eu-west-1\"}",
               "env": "{}", "secrets": [{"operation": "create", "type": "var",
                                         "name": "token", "secret": "s3cret-value"}]}),
    )
    .await;
    let template = add(
        &admin,
        p,
        "templates",
        json!({"name": "infra", "project_id": p, "app": "terraform", "playbook": "infra",
               "repository_id": repo_id, "environment_id": env, "runner_tag": "tf"}),
    )
    .await;
    let launch_tf = |params: Value| {
        let admin = admin.clone();
        async move {
            let body = json!({"template_id": template, "params": params});
            let r = admin.post(&at(p, "tasks"), body).await;
            assert_eq!(r.status, 201, "launch: {}", r.text());
            id_of(&r.json())
        }
    };
    let plan_file = |t: u64| {
        let work = one.config.with_extension("json.work");
        format!("{}/tasks/{t}/plan.tfplan", work.display())
    };
    let argv = |args: &[&str]| -> Vec<String> {
        std::iter::once("terraform")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let plan_argv = |t: u64| {
        let out = format!("-out={}", plan_file(t));
        argv(&[
            "plan",
            "-input=false",
            "-detailed-exitcode",
            &out,
            "-var",
            "region=eu-west-1",
        ])
    };

    // Confirmed: the runner applies the plan it saved.
    let t = launch_tf(json!({"upgrade": true})).await;
    let task = wait_status(&admin, p, t, &["waiting_confirmation"], 30).await;
    assert_eq!(task["runner_id"].as_u64(), Some(runner), "{task}");
    assert!(task["end"].is_null(), "{task}");
    assert_eq!(
        take_calls(&calls),
        [argv(&["init", "-input=false", "-upgrade"]), plan_argv(t)]
    );
    assert!(
        Path::new(&plan_file(t)).is_file(),
        "the plan waits on the runner"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !texts(&output(&admin, p, t).await)
        .iter()
        .any(|l| l.starts_with("Waiting for confirmation"))
    {
        assert!(Instant::now() < deadline, "no waiting line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (task, text) = decide(&admin, p, t, "confirm").await;
    assert_eq!(task["status"], "success", "{task}: {text:#?}");
    assert_eq!(
        take_calls(&calls),
        [argv(&["apply", "-input=false", &plan_file(t)])]
    );
    for want in ["Plan confirmed: applying", "Apply complete!"] {
        assert!(text.iter().any(|l| l.contains(want)), "{want}: {text:#?}");
    }
    assert!(!text.iter().any(|l| l.contains("s3cret")), "{text:#?}");
    assert!(
        !Path::new(&plan_file(t)).exists(),
        "the task dir is removed"
    );
    for action in ["confirm", "reject"] {
        let r = admin
            .post(&at(p, &format!("tasks/{t}/{action}")), json!({}))
            .await;
        assert_eq!(r.status, 400, "{action} of a finished task: {}", r.text());
    }

    // Rejected: it ends `stopped` as locally, nothing applied.
    let t = launch_tf(json!({})).await;
    wait_status(&admin, p, t, &["waiting_confirmation"], 30).await;
    take_calls(&calls);
    let (task, text) = decide(&admin, p, t, "reject").await;
    assert_eq!(task["status"], "stopped", "{task}: {text:#?}");
    assert_eq!(
        text.last().map(String::as_str),
        Some("Plan rejected: nothing was applied")
    );
    assert!(
        take_calls(&calls).is_empty(),
        "a rejected plan is never applied"
    );
    assert!(!Path::new(&plan_file(t)).exists());

    // Auto-approved: it runs through.
    let t = launch_tf(json!({"auto_approve": true})).await;
    let task = wait_status(&admin, p, t, &["success", "error", "stopped"], 30).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(take_calls(&calls).len(), 3, "init, plan, apply");

    // A stop reaches a waiting job like any other: nothing applied.
    let t = launch_tf(json!({})).await;
    wait_status(&admin, p, t, &["waiting_confirmation"], 30).await;
    take_calls(&calls);
    let (task, text) = decide(&admin, p, t, "stop").await;
    assert_eq!(task["status"], "stopped", "{task}: {text:#?}");
    assert!(
        take_calls(&calls).is_empty(),
        "a stopped plan is never applied"
    );

    // A runner lost while its plan waits: the task ends `error` like any lost runner's.
    let t = launch_tf(json!({})).await;
    wait_status(&admin, p, t, &["waiting_confirmation"], 30).await;
    one.agent.kill_9();
    let task = wait_status(&admin, p, t, &["success", "error", "stopped"], 30).await;
    let text = texts(&output(&admin, p, t).await);
    assert_eq!(task["status"], "error", "{task}: {text:#?}");
    assert!(
        text.last().is_some_and(|l| l.contains("was lost")),
        "{text:#?}"
    );
}

/// The plan decision over the bare protocol: a job reported `waiting_confirmation` makes its
/// task wait; a confirm comes in the next poll's `confirm`, once, and again after a report
/// that still says `waiting_confirmation` (the answer that carried it may have been lost);
/// the report of `running` that follows moves the task back to `running`.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_decision_is_handed_out_again_until_the_runner_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(repo.path().join("calls")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    common::terraform::install(&bin, &["tofu"], &repo.path().join("calls"), repo.path());
    let path = path_with(&[&bin]);
    let path = path.to_str().expect("PATH is UTF-8");
    let server = serve_with(
        &dir.path().join("forge.redb"),
        free_port(),
        "10",
        &[("PATH", path)],
    );
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let r = admin
        .post("/api/runners", json!({"name": "bare", "tags": ["bare"]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let header = [("x-runner-token", token.as_str())];
    let internal = "/api/internal/runners";
    let anon = server.client();
    // A long poll: answers as soon as there is something (or after `wait` seconds).
    let poll = |wait: u64| {
        let anon = anon.clone();
        async move {
            let path = format!("{internal}?wait={wait}");
            let r = anon.raw("GET", &path, None, &header).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    let (p, repo_id) = project(&admin, repo.path(), &[]).await;
    let template = add(
        &admin,
        p,
        "templates",
        json!({"name": "bare", "project_id": p, "app": "tofu", "playbook": "",
               "repository_id": repo_id, "runner_tag": "bare"}),
    )
    .await;
    poll(0).await;
    let t = launch(&admin, p, template).await;
    let job = poll(10).await;
    let job = &job["jobs"][0];
    assert_eq!(job["task_id"].as_u64(), Some(t), "{job}");
    assert_eq!(job["terraform"]["params"]["auto_approve"], false, "{job}");
    assert_eq!(job["args"], json!([]), "{job}");
    let put = |status: &str| {
        let body = json!({"jobs": [{"task_id": t, "status": status, "log_offset": 0,
                                    "log": []}]})
        .to_string();
        let anon = anon.clone();
        async move {
            let r = anon
                .raw("PUT", internal, Some(body.into_bytes()), &header)
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    put("running").await;
    wait_status(&admin, p, t, &["running"], 10).await;
    put("waiting_confirmation").await;
    wait_status(&admin, p, t, &["waiting_confirmation"], 10).await;
    let r = admin
        .post(&at(p, &format!("tasks/{t}/confirm")), json!({}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let first = poll(10).await;
    assert_eq!(first["confirm"], json!([t]), "{first}");
    assert_eq!(first["reject"], json!([]), "{first}");
    // Taken once: the next (immediate) poll has none...
    assert_eq!(poll(0).await["confirm"], json!([]));
    // ... until the runner says again that it waits.
    put("waiting_confirmation").await;
    assert_eq!(poll(10).await["confirm"], json!([t]));
    assert_eq!(
        ok_json(&admin, &at(p, &format!("tasks/{t}"))).await["status"],
        "confirmed"
    );
    put("running").await;
    wait_status(&admin, p, t, &["running"], 10).await;
    put("success").await;
    wait_status(&admin, p, t, &["success"], 10).await;
}
