//! Retention through a real server (issue 11 §3): the per-template cap, task and event expiry
//! by the (manual) clock, unfinished tasks never pruned, a live follower undisturbed, the
//! pruned rows gone from the database file itself, and bad knob values refused at start.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Client, T0, TestServer, at, id_of, new_project};
use forge::store::tables;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

const DAY: i64 = 24 * 3600;

/// A project with a local-path repository holding `script` as `run.sh`, and a bash template
/// running it. Returns (project, template, repository dir).
async fn setup(a: &Client, script: &str) -> (u64, u64, tempfile::TempDir) {
    let p = new_project(a, "Retention").await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("run.sh"), script).expect("script");
    let keys = a.get(&at(p, "keys")).await.json();
    let key = id_of(&keys[0]);
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "local", "project_id": p, "git_url": dir.path().to_str().unwrap(),
                   "git_branch": "", "ssh_key_id": key}),
        )
        .await;
    assert_eq!(r.status, 204, "repository: {}", r.text());
    let repos = a.get(&at(p, "repositories")).await.json();
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": "job", "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": id_of(&repos[0])}),
        )
        .await;
    assert_eq!(r.status, 201, "template: {}", r.text());
    (p, id_of(&r.json()), dir)
}

async fn launch(a: &Client, p: u64, tpl: u64) -> u64 {
    let r = a.post(&at(p, "tasks"), json!({ "template_id": tpl })).await;
    assert_eq!(r.status, 201, "launch: {}", r.text());
    id_of(&r.json())
}

/// The task's status, or `None` once it is gone (unknown tasks answer 400, as upstream).
async fn status(a: &Client, p: u64, t: u64) -> Option<String> {
    let r = a.get(&at(p, &format!("tasks/{t}"))).await;
    if r.status == 200 {
        return Some(r.json()["status"].as_str().expect("status").to_owned());
    }
    let msg = r.assert_error(400);
    assert!(msg.contains("not found"), "{msg}");
    None
}

/// Polls until `check` holds; panics with `what` after 20 s.
async fn until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_finished(a: &Client, p: u64, t: u64) {
    until(&format!("task {t} finishes"), async || {
        matches!(
            status(a, p, t).await.as_deref(),
            Some("success" | "error" | "stopped")
        )
    })
    .await;
}

async fn output_lines(a: &Client, p: u64, t: u64) -> usize {
    let r = a.get(&at(p, &format!("tasks/{t}/output"))).await;
    assert_eq!(r.status, 200, "output of {t}: {}", r.text());
    r.json().as_array().expect("array").len()
}

/// Task ids present in each task table and index of the database file (the server stopped).
#[derive(Debug)]
struct Rows {
    tasks: BTreeSet<u64>,
    task_projects: BTreeSet<u64>,
    by_template: BTreeSet<u64>,
    output: BTreeSet<u64>,
    purging: BTreeSet<u64>,
    events: usize,
    project_events: usize,
}

/// `forge check` on the stopped server's file: pruning leaves every index matching its table
/// (output still queued for purging is not an orphan).
fn audit(db: &Path) {
    let out = std::process::Command::new(common::process::FORGE)
        .args(["check", "--db"])
        .arg(db)
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .output()
        .expect("run forge check");
    assert!(
        out.status.success(),
        "forge check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scan(db: &Path) -> Rows {
    let db = redb::Database::open(db).expect("open the database file");
    let tx = db.begin_read().expect("read");
    let keys = |def: redb::TableDefinition<u64, ()>| -> BTreeSet<u64> {
        let table = tx.open_table(def).expect("table");
        table
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect()
    };
    let purging = keys(tables::PURGE_TASK);
    let tasks_t = tx.open_table(tables::PROJECT_TASK).expect("tasks");
    let tasks = tasks_t
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value().1)
        .collect();
    let task_projects = tx
        .open_table(tables::TASKID_PROJECT)
        .expect("task_projects")
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value())
        .collect();
    let by_template = tx
        .open_table(tables::TEMPLATE_TASK)
        .expect("tasks_by_template")
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value().2)
        .collect();
    let output = tx
        .open_table(tables::OUTPUT_CHUNK)
        .expect("task_output_chunks")
        .iter()
        .unwrap()
        .map(|r| r.unwrap().0.value().0)
        .collect();
    let events = tx
        .open_table(tables::EVENTID_EVENT)
        .expect("events")
        .len()
        .unwrap();
    let project_events = tx
        .open_table(tables::PROJECT_EVENTID)
        .expect("events_by_project")
        .len()
        .unwrap();
    Rows {
        tasks,
        task_projects,
        by_template,
        output,
        purging,
        events: usize::try_from(events).unwrap(),
        project_events: usize::try_from(project_events).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cap_keeps_the_three_newest_of_six_tasks_and_deletes_the_rest_from_the_file() {
    // No periodic sweep during the test: the prune after each finish must do it alone.
    let s = TestServer::start_with(|c| {
        c.max_tasks_per_template = 3;
        c.prune_interval_secs = 3600;
    })
    .await;
    let a = s.admin().await;
    let (p, tpl, _repo) = setup(&a, "for i in $(seq 1 50); do echo \"line $i\"; done\n").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let t = launch(&a, p, tpl).await;
        wait_finished(&a, p, t).await;
        ids.push(t);
    }
    let (old, kept) = ids.split_at(3);
    until("the three oldest tasks are pruned", async || {
        for &t in old {
            if status(&a, p, t).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
    for &t in old {
        let r = a.get(&at(p, &format!("tasks/{t}/output"))).await;
        r.assert_error(400);
    }
    for &t in kept {
        assert_eq!(status(&a, p, t).await.as_deref(), Some("success"));
        assert!(
            output_lines(&a, p, t).await > 50,
            "task {t} keeps its output"
        );
    }
    // The template's count and last task follow; the task list has only the kept ones.
    let template = a.get(&at(p, &format!("templates/{tpl}"))).await.json();
    assert_eq!(template["tasks"], 3, "{template}");
    assert_eq!(template["last_task"]["id"], kept[2], "{template}");
    let listed: Vec<u64> = a
        .get(&at(p, &format!("templates/{tpl}/tasks")))
        .await
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(
        listed.iter().copied().collect::<BTreeSet<_>>(),
        kept.iter().copied().collect::<BTreeSet<_>>()
    );

    let db = s.db_path();
    let _dir = s.stop().await;
    let rows = scan(&db);
    let kept: BTreeSet<u64> = kept.iter().copied().collect();
    assert_eq!(rows.tasks, kept, "task rows");
    assert_eq!(rows.task_projects, kept, "task_projects");
    assert_eq!(rows.by_template, kept, "tasks_by_template");
    assert_eq!(rows.output, kept, "output rows only of kept tasks");
    assert!(rows.purging.is_empty(), "purge queue drained");
    audit(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_tasks_are_never_pruned_and_a_follower_gets_every_line() {
    let s = TestServer::start_with(|c| {
        c.max_tasks_per_template = 1;
        c.prune_interval_secs = 1;
    })
    .await;
    let a = s.admin().await;
    let hold = tempfile::tempdir().expect("temp dir");
    let flag = hold.path().join("hold");
    let script = format!(
        "echo start\nwhile [ -f {} ]; do sleep 0.05; done\nfor i in $(seq 1 200); do echo \"n$i\"; done\necho end-of-task\n",
        flag.display()
    );
    let (p, tpl, _repo) = setup(&a, &script).await;
    let first = launch(&a, p, tpl).await;
    wait_finished(&a, p, first).await;
    let second = launch(&a, p, tpl).await;
    wait_finished(&a, p, second).await;
    std::fs::write(&flag, "").expect("hold flag");
    let running = launch(&a, p, tpl).await;
    let waiting = launch(&a, p, tpl).await;
    until("the third task runs", async || {
        status(&a, p, running).await.as_deref() == Some("running")
    })
    .await;
    let follower = {
        let (a, path) = (
            a.clone(),
            at(p, &format!("tasks/{running}/output?follow=true")),
        );
        tokio::spawn(async move { a.get(&path).await })
    };
    // Over the cap of one: the older finished task goes; neither unfinished one does.
    until("the first task is pruned", async || {
        status(&a, p, first).await.is_none()
    })
    .await;
    // Several sweeps pass (one a second) with the running and waiting tasks in place.
    for _ in 0..3 {
        sleep(Duration::from_millis(700)).await;
        assert_eq!(status(&a, p, running).await.as_deref(), Some("running"));
        assert_eq!(status(&a, p, waiting).await.as_deref(), Some("waiting"));
        assert_eq!(status(&a, p, second).await.as_deref(), Some("success"));
    }
    std::fs::remove_file(&flag).expect("release");
    let followed = follower.await.expect("follower");
    assert_eq!(followed.status, 200);
    let text = followed.text();
    assert!(
        text.starts_with(&format!("Task {running} added to queue\n")),
        "{text}"
    );
    assert!(text.contains("\nn200\nend-of-task\n"), "{text}");
    wait_finished(&a, p, waiting).await;
    until("only the newest finished task is left", async || {
        status(&a, p, second).await.is_none() && status(&a, p, running).await.is_none()
    })
    .await;
    assert_eq!(status(&a, p, waiting).await.as_deref(), Some("success"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_and_events_expire_by_the_clock() {
    let s = TestServer::start_with(|c| {
        c.task_retention_days = 2;
        c.event_retention_days = 1;
        c.prune_interval_secs = 1;
    })
    .await;
    let a = s.admin().await;
    let (p, tpl, _repo) = setup(&a, "echo hi\n").await;
    let old = launch(&a, p, tpl).await;
    wait_finished(&a, p, old).await;
    s.clock.advance(DAY * 3 / 2);
    let new = launch(&a, p, tpl).await;
    wait_finished(&a, p, new).await;
    let events_at = |t: i64| forge::clock::rfc3339(t);
    let created: Vec<String> = a
        .get(&at(p, "events"))
        .await
        .json()
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["created"].as_str().expect("created").to_owned())
        .collect();
    assert!(created.contains(&events_at(T0)), "{created:?}");
    // One more day: the old task ended 2.5 days ago (over 2), the new one a day ago; events
    // of T0 are 2.5 days old (over 1), those of the new task exactly one day (kept).
    s.clock.advance(DAY);
    until("the old task expires", async || {
        status(&a, p, old).await.is_none()
    })
    .await;
    until("the old events expire", async || {
        let events = a.get(&at(p, "events")).await.json();
        !events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["created"] == events_at(T0))
    })
    .await;
    assert_eq!(status(&a, p, new).await.as_deref(), Some("success"));
    assert!(output_lines(&a, p, new).await > 1);
    let events: Vec<Value> = a
        .get(&at(p, "events"))
        .await
        .json()
        .as_array()
        .unwrap()
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["created"] == events_at(T0 + DAY * 3 / 2)
                && e["description"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("Task ID {new}"))),
        "{events:?}"
    );
    // The admin-wide list agrees (the project's rows and the global rows go together).
    let all = a.get("/api/events").await.json();
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|e| e["created"] == events_at(T0)),
        "{all}"
    );

    let db = s.db_path();
    let _dir = s.stop().await;
    let rows = scan(&db);
    assert_eq!(rows.tasks, BTreeSet::from([new]));
    assert_eq!(rows.output, BTreeSet::from([new]));
    assert!(rows.purging.is_empty());
    assert!(rows.project_events <= rows.events);
    audit(&db);
}

#[test]
fn bad_retention_values_are_refused_at_start() {
    struct Case {
        env: (&'static str, &'static str),
        flag: &'static str,
    }
    let cases = [
        Case {
            env: ("FORGE_MAX_TASKS_PER_TEMPLATE", "-1"),
            flag: "--max-tasks-per-template",
        },
        Case {
            env: ("FORGE_MAX_TASKS_PER_TEMPLATE", "lots"),
            flag: "--max-tasks-per-template",
        },
        Case {
            env: ("FORGE_TASK_RETENTION_DAYS", "-3"),
            flag: "--task-retention-days",
        },
        Case {
            env: ("FORGE_TASK_RETENTION_DAYS", "1.5"),
            flag: "--task-retention-days",
        },
        Case {
            env: ("FORGE_EVENT_RETENTION_DAYS", "a week"),
            flag: "--event-retention-days",
        },
        Case {
            env: ("FORGE_EVENT_RETENTION_DAYS", "99999999"),
            flag: "--event-retention-days",
        },
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("forge.redb");
    for case in &cases {
        let out = common::process::forge_serve(&db, &[case.env])
            .output()
            .expect("run forge serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{:?}: {stderr}", case.env);
        assert!(stderr.contains(case.flag), "{:?}: {stderr}", case.env);
        assert!(
            stderr.contains("expected a whole number"),
            "{:?}: {stderr}",
            case.env
        );
        assert!(stderr.contains(case.env.1), "{:?}: {stderr}", case.env);
    }
    // The flag form too, with a negative number right after the flag.
    let out = common::process::forge_serve(&db, &[])
        .args(["--task-retention-days", "-1"])
        .output()
        .expect("run forge serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--task-retention-days") && stderr.contains("whole number"),
        "{stderr}"
    );
    assert!(!db.exists(), "a refused start touched no database");
}
