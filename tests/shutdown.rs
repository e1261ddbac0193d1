//! Shutdown that finishes the job (issue 11, point 5), with the real `forge` binary:
//! - SIGTERM during a long task whose group holds a grandchild that ignores SIGTERM: the
//!   server refuses new connections at once, answers a follower in flight to its end, exits 0
//!   after the shutdown grace and the stop grace, the task is `error` with the last line
//!   `stopped: server shut down`, nothing of its process group survives, its workspace is gone,
//!   and a task waiting behind it (one slot) is still `waiting` and runs after the restart;
//! - SIGINT shuts down as SIGTERM does; the signal reaches the task before SIGKILL, and its
//!   last words come before the marker;
//! - a task that finishes within the grace ends `success`, and the server does not wait out the
//!   rest of the grace;
//! - `kill -9` during a task whose workspace holds an SSH key, a vault password and extra vars
//!   with secrets: after the restart no file under the work directory holds any of them;
//! - the workspace (with the repository's SSH key file) also goes when a task ends, is
//!   stopped or times out.

mod common;

use common::git::git;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::files::holding as files_holding;
use common::process::ServerProcess;
use common::{ADMIN, ADMIN_PASSWORD, Client, at, id_of, ok_json};
use forge::model::TaskStatus;
use serde_json::{Value, json};

/// Kills leftover test processes if an assertion fails before the server did.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// `/proc/<pid>/stat` fields after the command name: state, ppid, pgrp, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// The live (non-zombie) processes of process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
                    && f.first().is_some_and(|s| s != "Z" && s != "X")
            })
        })
        .collect()
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["output"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn output(c: &Client, p: u64, task: u64) -> Vec<String> {
    let v = ok_json(c, &at(p, &format!("tasks/{task}/output"))).await;
    texts(v.as_array().expect("output is an array"))
}

/// The number after `prefix` on the first line that starts with it.
fn number_after(lines: &[String], prefix: &str) -> Option<i32> {
    lines
        .iter()
        .find_map(|t| t.strip_prefix(prefix).and_then(|n| n.trim().parse().ok()))
}

/// Polls task `task`'s output until `ready` accepts it (or panics after 30 s).
async fn wait_output(
    c: &Client,
    p: u64,
    task: u64,
    ready: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = output(c, p, task).await;
        if ready(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "task {task} did not get there: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls task `task` until it has finished (or panics after 30 s).
async fn wait_finished(c: &Client, p: u64, task: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = ok_json(c, &at(p, &format!("tasks/{task}"))).await;
        if ["success", "error", "stopped"].contains(&t["status"].as_str().unwrap_or_default()) {
            return t;
        }
        assert!(Instant::now() < deadline, "task {task} did not finish: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Task `id`'s status and output lines, read from the database file of a stopped server.
fn stored(db: &Path, id: u64) -> (TaskStatus, Vec<String>) {
    let store = forge::store::Store::open(db).expect("open the database of the stopped server");
    let task = store.task(id).expect("read").expect("the task exists");
    let lines = store
        .output(id, 0, usize::MAX)
        .expect("read output")
        .into_iter()
        .map(|(_, l)| l.text)
        .collect();
    (task.status, lines)
}

/// The work directory of the server on `db` (the default: the db path + `.work`).
fn work_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".work");
    PathBuf::from(name)
}

/// A logged-in admin, a project with a local-path repository holding `scripts` (name, text),
/// and one bash template per script; returns the client, the project and the template ids.
async fn setup(
    server: &ServerProcess,
    repo: &Path,
    scripts: &[(&str, &str)],
) -> (Client, String, u64, Vec<u64>) {
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;
    let admin = admin.with_bearer(&token);
    let r = admin
        .post("/api/projects", json!({"name": "shutdown"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let none = id_of(&ok_json(&admin, &at(p, "keys")).await[0]);
    let r = admin
        .post(
            &at(p, "repositories"),
            json!({"name": "local", "project_id": p, "ssh_key_id": none, "git_branch": "",
                   "git_url": repo.display().to_string()}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    let repo_id = id_of(&ok_json(&admin, &at(p, "repositories")).await[0]);
    let mut templates = Vec::new();
    for (name, script) in scripts {
        let file = format!("{name}.sh");
        std::fs::write(repo.join(&file), script).unwrap();
        let r = admin
            .post(
                &at(p, "templates"),
                json!({"name": name, "project_id": p, "app": "bash", "playbook": file,
                       "repository_id": repo_id}),
            )
            .await;
        assert_eq!(r.status, 201, "POST templates: {}", r.text());
        templates.push(id_of(&r.json()));
    }
    (admin, token, p, templates)
}

/// `GET .../output?follow=true` on a raw connection, so the test knows when the answer has
/// begun (its headers are in) before it reads the rest.
struct Follower {
    stream: tokio::net::TcpStream,
    head: Vec<u8>,
}

impl Follower {
    async fn start(addr: std::net::SocketAddr, token: &str, p: u64, task: u64) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /api/project/{p}/tasks/{task}/output?follow=true HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "the follow request got no answer");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Self { stream, head }
    }

    /// Everything after the headers, read until the server closes the connection (chunk
    /// framing left in: the lines are what matters).
    async fn rest(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut all = std::mem::take(&mut self.head);
        tokio::time::timeout(Duration::from_secs(60), self.stream.read_to_end(&mut all))
            .await
            .expect("the follower ended")
            .expect("read");
        let text = String::from_utf8_lossy(&all).into_owned();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // Drop the chunk sizes: keep the lines of text.
        body.lines()
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c.is_ascii_hexdigit()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn launch(c: &Client, p: u64, template: u64) -> u64 {
    let r = c
        .post(&at(p, "tasks"), json!({"template_id": template}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    id_of(&r.json())
}

/// Ignores SIGTERM (it only says so), and so does its grandchild: only SIGKILL on the whole
/// group ends them.
const STUBBORN_SCRIPT: &str = r#"#!/usr/bin/env bash
trap 'echo "got TERM, carrying on"' TERM
echo "script pid $$"
( trap '' TERM; sleep 300 ) &
echo "grandchild pid $!"
for i in $(seq 1 3000); do
  echo "line $i"
  sleep 0.1
done
"#;

const QUICK_SCRIPT: &str = "#!/usr/bin/env bash\necho quick-task-ran\n";

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_whole_group_after_the_grace_and_keeps_waiting_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let repo = tempfile::tempdir().unwrap();
    let envs = [
        ("FORGE_MAX_PARALLEL_TASKS", "1"),
        ("FORGE_SHUTDOWN_GRACE_SECS", "1"),
        ("FORGE_STOP_GRACE_SECS", "1"),
    ];
    let server = ServerProcess::start(&db, &envs);
    let scripts = [("long", STUBBORN_SCRIPT), ("quick", QUICK_SCRIPT)];
    let (admin, token, p, templates) = setup(&server, repo.path(), &scripts).await;
    let long = launch(&admin, p, templates[0]).await;
    let waiting = launch(&admin, p, templates[1]).await;

    let lines = wait_output(&admin, p, long, |l| l.iter().any(|t| t == "line 3")).await;
    let pgid = number_after(&lines, "script pid ").expect("script pid line");
    let grandchild = number_after(&lines, "grandchild pid ").expect("grandchild pid line");
    let members = group_members(pgid);
    let _cleanup = KillOnDrop(members.clone());
    assert!(
        members.contains(&pgid) && members.contains(&grandchild),
        "precondition: the script and its grandchild run in the task's group: \
         {members:?}"
    );
    let t = ok_json(&admin, &at(p, &format!("tasks/{waiting}"))).await;
    assert_eq!(
        t["status"], "waiting",
        "one slot: the second task waits: {t}"
    );

    // A request in flight when the signal comes: a follower of the task's output.
    let mut follower = Follower::start(server.addr, &token, p, long).await;

    let asked = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    // During the grace, no new connection is accepted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&server.log()).contains("waiting for running tasks to finish") {
        assert!(Instant::now() < deadline, "no grace was logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "a connection was accepted during the shutdown"
    );
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .expect("reap");
    let took = asked.elapsed();
    assert!(exit.success(), "exit status after SIGTERM: {exit:?}");
    let followed = follower.rest().await;
    assert!(
        followed.trim_end().ends_with("stopped: server shut down"),
        "the follower in flight got every line up to the end: {followed}"
    );
    // The grace (1 s), then SIGTERM, which the group ignores, then SIGKILL after the stop
    // grace (1 s); bounded well below the task's own 300 s.
    assert!(
        took >= Duration::from_secs(2),
        "the server exited after {took:?}, before the grace and the stop grace were over"
    );
    assert!(
        took < Duration::from_secs(60),
        "the grace is not bounded: {took:?}"
    );

    let left: Vec<i32> = group_members(pgid);
    assert!(
        left.is_empty(),
        "processes of the task's group survived: {left:?}"
    );
    assert!(!alive(grandchild), "the grandchild {grandchild} survived");
    assert!(
        !work_dir(&db).join("tasks").join(long.to_string()).exists(),
        "the task's workspace was left behind"
    );

    // What the server recorded before it exited, read from the file itself.
    let (status, out) = stored(&db, long);
    assert_eq!(status, TaskStatus::Error, "{out:#?}");
    assert_eq!(
        out.last().map(String::as_str),
        Some("stopped: server shut down"),
        "{out:#?}"
    );
    assert!(
        out.iter().any(|l| l == "got TERM, carrying on"),
        "SIGTERM came before SIGKILL: {out:#?}"
    );
    let (status, _) = stored(&db, waiting);
    assert_eq!(status, TaskStatus::Waiting, "the waiting task stays queued");

    // After the restart: the stopped task is left as it was, the waiting one runs.
    let server = ServerProcess::start(&db, &envs);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let t = wait_finished(&c, p, waiting).await;
    let quick_out = output(&c, p, waiting).await;
    assert_eq!(t["status"], "success", "{t}\n{quick_out:#?}");
    assert!(
        quick_out.iter().any(|l| l == "quick-task-ran"),
        "{quick_out:#?}"
    );
    let t = ok_json(&c, &at(p, &format!("tasks/{long}"))).await;
    assert_eq!(t["status"], "error", "{t}");
    assert!(t["end"].is_string(), "{t}");
    assert_eq!(
        output(&c, p, long).await,
        out,
        "the restart changed nothing"
    );
    let log = String::from_utf8_lossy(&server.stop()).into_owned();
    assert!(!log.contains("interrupted"), "{log}");
}

/// Says goodbye on SIGTERM and leaves; its background grandchild dies with the group.
const POLITE_SCRIPT: &str = r#"#!/usr/bin/env bash
trap 'echo "got TERM, cleaning up"; exit 3' TERM
echo "script pid $$"
sleep 300 &
echo "grandchild pid $!"
for i in $(seq 1 3000); do
  echo "line $i"
  sleep 0.1
done
"#;

/// SIGINT (Ctrl-C) shuts down as SIGTERM does.
#[tokio::test(flavor = "multi_thread")]
async fn sigint_reaches_the_task_before_sigkill_and_its_last_words_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let repo = tempfile::tempdir().unwrap();
    // No grace: the task is stopped at once; a long stop grace that nobody waits out.
    let envs = [
        ("FORGE_SHUTDOWN_GRACE_SECS", "0"),
        ("FORGE_STOP_GRACE_SECS", "120"),
    ];
    let server = ServerProcess::start(&db, &envs);
    let (admin, _, p, templates) = setup(&server, repo.path(), &[("polite", POLITE_SCRIPT)]).await;
    let task = launch(&admin, p, templates[0]).await;
    let lines = wait_output(&admin, p, task, |l| l.iter().any(|t| t == "line 3")).await;
    let pgid = number_after(&lines, "script pid ").expect("script pid line");
    let grandchild = number_after(&lines, "grandchild pid ").expect("grandchild pid line");
    let _cleanup = KillOnDrop(vec![pgid, grandchild]);

    let mut server = server;
    let sent = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let exit = server.child.wait().expect("reap");
    assert!(exit.success(), "{exit:?}");
    assert!(group_members(pgid).is_empty(), "the task's group survived");
    assert!(!alive(grandchild));

    let (status, out) = stored(&db, task);
    assert_eq!(status, TaskStatus::Error, "{out:#?}");
    let n = out.len();
    assert!(n >= 2, "{out:#?}");
    assert_eq!(
        out[n - 2..],
        ["got TERM, cleaning up", "stopped: server shut down"],
        "the app's last line, then the marker: {out:#?}"
    );
}

const SHORT_SCRIPT: &str = r#"#!/usr/bin/env bash
echo "started"
sleep 2
echo "finished in time"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_ends_within_the_grace_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let repo = tempfile::tempdir().unwrap();
    let envs = [("FORGE_SHUTDOWN_GRACE_SECS", "120")];
    let server = ServerProcess::start(&db, &envs);
    let (admin, _, p, templates) = setup(&server, repo.path(), &[("short", SHORT_SCRIPT)]).await;
    let task = launch(&admin, p, templates[0]).await;
    wait_output(&admin, p, task, |l| l.iter().any(|t| t == "started")).await;

    let asked = Instant::now();
    let exit = server.terminate();
    let took = asked.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        took < Duration::from_secs(90),
        "the server waited out the grace although the task had ended: {took:?}"
    );
    let (status, out) = stored(&db, task);
    assert_eq!(status, TaskStatus::Success, "{out:#?}");
    assert!(out.iter().any(|l| l == "finished in time"), "{out:#?}");
    assert!(!out.iter().any(|l| l.contains("shut down")), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// No secret file outlives a crash

/// Stands in for ansible-playbook (which may be missing here): Forge has written every file of
/// the workspace before it starts the app. It names its arguments, then runs until killed.
const FAKE_ANSIBLE: &str = r#"#!/usr/bin/env bash
for a in "$@"; do echo "arg: $a"; done
echo "app pid $$"
echo "ready"
sleep 300
"#;

const KEY_MATERIAL: &str = "FORGE-SHUTDOWN-TEST-KEY-MATERIAL-5c1d9e";
const VAULT_PASSWORD: &str = "forge-shutdown-vault-password-77a3";
const VAR_SECRET: &str = "forge-shutdown-var-secret-19bf";
const BECOME_PASSWORD: &str = "forge-shutdown-become-password-4e02";

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_leaves_no_secret_file_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    // The playbook comes from a clone (file://), so the repository's SSH key is written too.
    let upstream = tempfile::tempdir().unwrap();
    git(upstream.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(
        upstream.path().join("site.yml"),
        "- hosts: all\n  tasks: []\n",
    )
    .unwrap();
    git(upstream.path(), &["add", "."]);
    git(upstream.path(), &["commit", "-q", "-m", "playbook"]);
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("ansible-playbook");
    std::fs::write(&fake, FAKE_ANSIBLE).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(bin.path().to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .unwrap();
    let path = path.to_str().expect("PATH is UTF-8").to_owned();
    let envs = [("PATH", path.as_str())];

    let server = ServerProcess::start(&db, &envs);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = c.new_token().await;
    let c = c.with_bearer(&token);
    let r = c.post("/api/projects", json!({"name": "secrets"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let private_key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END OPENSSH PRIVATE KEY-----\n"
    );
    for body in [
        json!({"name": "deploy", "type": "ssh", "project_id": p,
               "ssh": {"login": "deployer", "private_key": private_key}}),
        json!({"name": "vault", "type": "login_password", "project_id": p,
               "login_password": {"login": "", "password": VAULT_PASSWORD}}),
        json!({"name": "become", "type": "login_password", "project_id": p,
               "login_password": {"login": "root", "password": BECOME_PASSWORD}}),
    ] {
        let r = c.post(&at(p, "keys"), body).await;
        assert_eq!(r.status, 204, "POST keys: {}", r.text());
    }
    let keys = ok_json(&c, &at(p, "keys")).await;
    let key = |name: &str| {
        id_of(
            keys.as_array()
                .unwrap()
                .iter()
                .find(|k| k["name"] == name)
                .unwrap_or_else(|| panic!("no key {name}: {keys}")),
        )
    };
    let r = c
        .post(
            &at(p, "repositories"),
            json!({"name": "upstream", "project_id": p, "ssh_key_id": key("deploy"),
                   "git_branch": "main",
                   "git_url": format!("file://{}", upstream.path().display())}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo = id_of(&ok_json(&c, &at(p, "repositories")).await[0]);
    let r = c
        .post(
            &at(p, "inventory"),
            json!({"name": "hosts", "project_id": p, "type": "static",
                   "inventory": "[all]\nweb1\n", "ssh_key_id": key("deploy"),
                   "become_key_id": key("become")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let inventory = id_of(&r.json());
    let r = c
        .post(
            &at(p, "environment"),
            json!({"name": "prod", "project_id": p, "json": "{\"region\":\"eu\"}",
                   "secrets": [{"operation": "create", "type": "var", "name": "db_password",
                                "secret": VAR_SECRET}]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let environments = ok_json(&c, &at(p, "environment")).await;
    let env = id_of(
        environments
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "prod")
            .unwrap_or_else(|| panic!("no environment prod: {environments}")),
    );
    let r = c
        .post(
            &at(p, "templates"),
            json!({"name": "deploy", "project_id": p, "app": "ansible", "playbook": "site.yml",
                   "repository_id": repo, "inventory_id": inventory, "environment_id": env,
                   "vaults": [{"vault_key_id": key("vault")}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let task = launch(&c, p, id_of(&r.json())).await;
    let lines = wait_output(&c, p, task, |l| l.iter().any(|t| t == "ready")).await;
    let app = number_after(&lines, "app pid ").expect("app pid line");
    let _cleanup = KillOnDrop(vec![app]);

    // Precondition: the workspace holds the key file while the task runs. Passwords and extra
    // vars are handoffs (FIFOs filled when the app opens them), never files (issue 16).
    let work = work_dir(&db);
    let needles = [KEY_MATERIAL, VAULT_PASSWORD, VAR_SECRET, BECOME_PASSWORD];
    let found = files_holding(&work, &needles);
    let holds = |needle: &str| found.iter().any(|(_, n)| n == needle);
    assert!(
        holds(KEY_MATERIAL),
        "precondition: a workspace file holds the key: {found:?}\n{lines:#?}"
    );
    for needle in [VAULT_PASSWORD, VAR_SECRET, BECOME_PASSWORD] {
        assert!(!holds(needle), "{needle} is in a file: {found:?}");
    }
    for arg in ["--private-key=", "--vault-id=", "--extra-vars=@"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("arg: {arg}"))),
            "{arg} passed to the app: {lines:#?}"
        );
    }

    server.kill_9();
    assert!(
        !files_holding(&work, &needles).is_empty(),
        "precondition: the crash left the secret files behind"
    );

    let server = ServerProcess::start(&db, &envs);
    let left = files_holding(&work, &needles);
    assert!(
        left.is_empty(),
        "secret files remain after the restart: {left:?}"
    );
    assert!(
        !work.join("tasks").join(task.to_string()).exists(),
        "the interrupted task's workspace remains"
    );
    let c = server.client().with_bearer(&token);
    let t = ok_json(&c, &at(p, &format!("tasks/{task}"))).await;
    assert_eq!(t["status"], "error", "{t}");
    assert!(!alive(app), "the interrupted app {app} still runs");
}

// ---------------------------------------------------------------------------------------------
// The workspace goes on every path

/// Says whether the repository's key file is in the task's home (its workspace), then ends or
/// hangs.
const KEY_CHECK: &str = r#"#!/usr/bin/env bash
if [ -f "$HOME/git_ssh_key" ]; then echo "key file present"; fi
echo ready
if [ "${1:-}" = hang ]; then sleep 300; fi
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_workspace_goes_when_a_task_ends_is_stopped_or_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let upstream = tempfile::tempdir().unwrap();
    git(upstream.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(upstream.path().join("check.sh"), KEY_CHECK).unwrap();
    git(upstream.path(), &["add", "."]);
    git(upstream.path(), &["commit", "-q", "-m", "script"]);
    let server = ServerProcess::start(&db, &[("FORGE_STOP_GRACE_SECS", "1")]);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let r = c.post("/api/projects", json!({"name": "paths"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let private_key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END OPENSSH PRIVATE KEY-----\n"
    );
    let r = c
        .post(
            &at(p, "keys"),
            json!({"name": "deploy", "type": "ssh", "project_id": p,
                   "ssh": {"login": "git", "private_key": private_key}}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let keys = ok_json(&c, &at(p, "keys")).await;
    let key = id_of(
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "deploy")
            .expect("the ssh key"),
    );
    let r = c
        .post(
            &at(p, "repositories"),
            json!({"name": "upstream", "project_id": p, "ssh_key_id": key, "git_branch": "main",
                   "git_url": format!("file://{}", upstream.path().display())}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo = id_of(&ok_json(&c, &at(p, "repositories")).await[0]);
    let template = |name: &'static str, extra: Value| {
        let c = c.clone();
        async move {
            let mut body = json!({"name": name, "project_id": p, "app": "bash",
                                  "playbook": "check.sh", "repository_id": repo,
                                  "allow_override_args_in_task": true});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let r = c.post(&at(p, "templates"), body).await;
            assert_eq!(r.status, 201, "{}", r.text());
            id_of(&r.json())
        }
    };
    let ends = template("ends", json!({})).await;
    let stopped = template("stopped", json!({"arguments": "[\"hang\"]"})).await;
    let times_out = template(
        "times-out",
        json!({"arguments": "[\"hang\"]", "max_duration_secs": 5}),
    )
    .await;
    let work = work_dir(&db);
    let gone = |task: u64| {
        let left = files_holding(&work, &[KEY_MATERIAL]);
        assert!(left.is_empty(), "task {task} left its key file: {left:?}");
        assert!(!work.join("tasks").join(task.to_string()).exists());
    };

    let t = launch(&c, p, ends).await;
    let done = wait_finished(&c, p, t).await;
    let out = output(&c, p, t).await;
    assert_eq!(done["status"], "success", "{out:#?}");
    assert!(out.iter().any(|l| l == "key file present"), "{out:#?}");
    gone(t);

    let t = launch(&c, p, stopped).await;
    let out = wait_output(&c, p, t, |l| l.iter().any(|x| x == "ready")).await;
    assert!(out.iter().any(|l| l == "key file present"), "{out:#?}");
    let r = c.post(&at(p, &format!("tasks/{t}/stop")), json!({})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(wait_finished(&c, p, t).await["status"], "stopped");
    gone(t);

    let t = launch(&c, p, times_out).await;
    let done = wait_finished(&c, p, t).await;
    let out = output(&c, p, t).await;
    assert_eq!(done["status"], "error", "{out:#?}");
    assert!(out.iter().any(|l| l.contains("timed out")), "{out:#?}");
    assert!(out.iter().any(|l| l == "key file present"), "{out:#?}");
    gone(t);
}
