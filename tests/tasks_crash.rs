//! Crash recovery of the task engine with the real `forge` binary (issue 4, "Crash"): a long
//! task is running and a second one waits behind it (one slot), the server is killed with
//! SIGKILL, and the restarted server on the same database must mark the interrupted task
//! `error` with the line `interrupted: server restarted` and `end` set, keep every output line
//! it had acknowledged before the kill, kill what was left of the task's process group, and
//! run the waiting task.

mod common;

use common::{at, id_of, ok_json};

use common::process::ServerProcess;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ADMIN, ADMIN_PASSWORD, Client};
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

/// Whether process `pid` exists and is not a zombie (a dead process nobody reaped yet).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    state != "Z" && state != "X"
}

async fn output(c: &Client, p: u64, task: u64) -> Vec<Value> {
    let v = ok_json(c, &at(p, &format!("tasks/{task}/output"))).await;
    v.as_array()
        .unwrap_or_else(|| panic!("output is not an array: {v}"))
        .clone()
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["output"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The number after `prefix` on the first line that starts with it.
fn number_after(lines: &[Value], prefix: &str) -> Option<i32> {
    texts(lines)
        .iter()
        .find_map(|t| t.strip_prefix(prefix).and_then(|n| n.trim().parse().ok()))
}

/// Polls task `task` until `done` accepts it (or panics after `secs`).
async fn wait_task(
    c: &Client,
    p: u64,
    task: u64,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = ok_json(c, &at(p, &format!("tasks/{task}"))).await;
        if done(&t) {
            return t;
        }
        if Instant::now() > deadline {
            let out = texts(&output(c, p, task).await);
            panic!("task {task} did not get there in {secs} s: {t}\noutput: {out:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LONG_SCRIPT: &str = r#"#!/usr/bin/env bash
# Keeps running (and stays in the group) after the server's end of the pipe is gone.
trap '' PIPE
echo "script pid $$"
sleep 300 &
echo "grandchild pid $!"
for i in $(seq 1 3000); do
  echo "line $i"
  sleep 0.1
done
"#;

const QUICK_SCRIPT: &str = "#!/usr/bin/env bash\necho quick-task-ran\n";

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_task_then_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("long.sh"), LONG_SCRIPT).unwrap();
    std::fs::write(repo.path().join("quick.sh"), QUICK_SCRIPT).unwrap();

    let server = ServerProcess::start(&db, &[("FORGE_MAX_PARALLEL_TASKS", "1")]);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;

    let r = admin.post("/api/projects", json!({"name": "crash"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let keys = ok_json(&admin, &at(p, "keys")).await;
    let none = id_of(&keys[0]);
    let r = admin
        .post(
            &at(p, "repositories"),
            json!({"name": "local", "project_id": p, "ssh_key_id": none, "git_branch": "",
                   "git_url": repo.path().display().to_string()}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    let repo_id = id_of(&ok_json(&admin, &at(p, "repositories")).await[0]);
    let mut templates = Vec::new();
    for (name, script) in [("long", "long.sh"), ("quick", "quick.sh")] {
        let r = admin
            .post(
                &at(p, "templates"),
                json!({"name": name, "project_id": p, "app": "bash", "playbook": script,
                       "repository_id": repo_id}),
            )
            .await;
        assert_eq!(r.status, 201, "POST templates: {}", r.text());
        templates.push(id_of(&r.json()));
    }

    // The long task takes the only slot; the quick one waits behind it.
    let r = admin
        .post(&at(p, "tasks"), json!({"template_id": templates[0]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let long = id_of(&r.json());
    let r = admin
        .post(&at(p, "tasks"), json!({"template_id": templates[1]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let waiting = id_of(&r.json());

    // Read the output until some numbered lines are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut snapshots = Vec::new();
    let acked = loop {
        let lines = output(&admin, p, long).await;
        snapshots.push(lines.clone());
        let numbered = texts(&lines)
            .iter()
            .filter(|t| t.starts_with("line "))
            .count();
        if numbered >= 8 {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the long task printed no lines: {:#?}",
            texts(&lines)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let script_pid = number_after(&acked, "script pid ").expect("script pid line");
    let grandchild = number_after(&acked, "grandchild pid ").expect("grandchild pid line");
    let _cleanup = KillOnDrop(vec![script_pid, grandchild]);
    let t = ok_json(&admin, &at(p, &format!("tasks/{long}"))).await;
    assert_eq!(t["status"], "running", "{t}");
    let t = ok_json(&admin, &at(p, &format!("tasks/{waiting}"))).await;
    assert_eq!(
        t["status"], "waiting",
        "one slot: the second task waits: {t}"
    );

    server.kill_9();

    // The task's processes outlive the server: only the restart may end them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(script_pid) && alive(grandchild),
        "precondition: the task's processes survive the server's SIGKILL \
         (script {script_pid}: {}, grandchild {grandchild}: {})",
        alive(script_pid),
        alive(grandchild)
    );

    let server = ServerProcess::start(&db, &[("FORGE_MAX_PARALLEL_TASKS", "1")]);
    let c = server.client().with_bearer(&token);

    let t = ok_json(&c, &at(p, &format!("tasks/{long}"))).await;
    assert_eq!(t["status"], "error", "interrupted task after restart: {t}");
    assert!(
        t["end"].is_string(),
        "interrupted task has its end set: {t}"
    );
    let after = output(&c, p, long).await;
    assert!(
        after.len() > acked.len(),
        "output after restart ({} lines) is shorter than what was acknowledged ({})",
        after.len(),
        acked.len()
    );
    // Every answer GET gave before the kill is still there: same lines, same order, same times.
    for (n, snapshot) in snapshots.iter().enumerate() {
        for (i, line) in snapshot.iter().enumerate() {
            assert_eq!(
                after.get(i),
                Some(line),
                "line {i} of GET output #{n} before the kill changed or was lost by kill -9"
            );
        }
    }
    let after_texts = texts(&after);
    assert_eq!(
        after_texts.last().map(String::as_str),
        Some("interrupted: server restarted"),
        "the last line says why the task ended: {after_texts:#?}"
    );
    assert_eq!(
        after_texts
            .iter()
            .filter(|t| *t == "interrupted: server restarted")
            .count(),
        1
    );

    // The restart killed what was left of the group.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (alive(script_pid) || alive(grandchild)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !alive(script_pid),
        "the interrupted task's script (pid {script_pid}) still runs after the restart"
    );
    assert!(
        !alive(grandchild),
        "the interrupted task's grandchild (pid {grandchild}) still runs after the restart"
    );

    // The waiting task was queued again and runs.
    let t = wait_task(&c, p, waiting, 30, |t| {
        t["status"] != "waiting" && t["status"] != "starting" && t["status"] != "running"
    })
    .await;
    let out = texts(&output(&c, p, waiting).await);
    assert_eq!(t["status"], "success", "{t}\noutput: {out:#?}");
    assert!(t["end"].is_string(), "{t}");
    assert!(
        out.iter().any(|l| l == "quick-task-ran"),
        "the waiting task's script ran: {out:#?}"
    );
    assert_eq!(
        out.first().map(String::as_str),
        Some(format!("Task {waiting} added to queue").as_str()),
        "{out:#?}"
    );

    // The interrupted task stays as it was: a second restart changes nothing.
    server.kill_9();
    let server = ServerProcess::start(&db, &[("FORGE_MAX_PARALLEL_TASKS", "1")]);
    let c = server.client().with_bearer(&token);
    let t = ok_json(&c, &at(p, &format!("tasks/{long}"))).await;
    assert_eq!(t["status"], "error", "{t}");
    assert_eq!(output(&c, p, long).await, after);
}
