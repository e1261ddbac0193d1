//! Issue 12's task routes through a real server: the admin's `GET|DELETE /api/tasks/{t}`
//! (a running task is stopped and waited for before the delete), `raw_output` as plain text,
//! a template's `stats` per day and status (API.md §7.10, §12.3), and the fields that used to
//! be always blank: events' `object_name`, `last_task.user_name`, `build_task` in task lists,
//! and a task's `commit_hash`/`commit_message` after a checkout.

mod common;

use common::git::git;
use std::time::Duration;

use common::{Client, TestServer, at, id_of, new_project, ok_json};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// A project with a local-path repository holding `scripts` and one bash template per
/// script; returns the project, the template ids and the repository directory.
async fn setup(
    a: &Client,
    name: &str,
    scripts: &[(&str, &str)],
) -> (u64, Vec<u64>, tempfile::TempDir) {
    let p = new_project(a, name).await;
    let dir = tempfile::tempdir().expect("temp dir");
    for (file, body) in scripts {
        std::fs::write(dir.path().join(file), body).expect("write script");
    }
    let url = dir.path().to_str().expect("utf-8 path").to_owned();
    let repo = add_repo(a, p, &url).await;
    let mut tpls = Vec::new();
    for (file, _) in scripts {
        tpls.push(add_template(a, p, file, repo).await);
    }
    (p, tpls, dir)
}

async fn add_repo(a: &Client, p: u64, url: &str) -> u64 {
    let keys = ok_json(a, &at(p, "keys")).await;
    let key = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["name"] == "None"))
        .map(id_of)
        .expect("the None key");
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": url, "project_id": p, "git_url": url, "git_branch": "main",
                   "ssh_key_id": key}),
        )
        .await;
    assert_eq!(r.status, 204, "POST repositories: {}", r.text());
    let repos = ok_json(a, &at(p, "repositories")).await;
    repos
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == url))
        .map(id_of)
        .expect("the repository")
}

async fn add_template(a: &Client, p: u64, script: &str, repo: u64) -> u64 {
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": format!("{script} of {repo}"), "project_id": p, "app": "bash",
                   "playbook": script,
                   "repository_id": repo}),
        )
        .await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    id_of(&r.json())
}

async fn launch(a: &Client, p: u64, body: Value) -> u64 {
    let r = a.post(&at(p, "tasks"), body.clone()).await;
    assert_eq!(r.status, 201, "POST tasks {body}: {}", r.text());
    id_of(&r.json())
}

async fn wait_status(a: &Client, p: u64, t: u64, done: impl Fn(&str) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = ok_json(a, &at(p, &format!("tasks/{t}"))).await;
        if done(task["status"].as_str().unwrap_or_default()) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {t} stuck: {task}");
        sleep(Duration::from_millis(30)).await;
    }
}

async fn wait_finished(a: &Client, p: u64, t: u64) -> Value {
    wait_status(a, p, t, |s| matches!(s, "success" | "error" | "stopped")).await
}

/// Waits until task `t` has written `line`.
async fn wait_line(a: &Client, p: u64, t: u64, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = a.get(&at(p, &format!("tasks/{t}/raw_output"))).await.text();
        if out.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "task {t}: no {line:?} in {out}");
        sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_read_and_delete_tasks_of_any_project_stopping_running_ones() {
    let s = TestServer::start_with(|c| c.max_parallel_tasks = 1).await;
    let a = s.admin().await;
    let (_, user) = s.user("plain", false).await;
    let anon = s.client();
    let (p, tpls, _dir) = setup(
        &a,
        "Admin tasks",
        &[
            ("quick.sh", "echo quick\n"),
            ("slow.sh", "echo started\nexec sleep 60\n"),
        ],
    )
    .await;
    let (quick, slow) = (tpls[0], tpls[1]);

    // GET /api/tasks/{t}: the task as its project shows it.
    let done = launch(&a, p, json!({"template_id": quick})).await;
    let in_project = wait_finished(&a, p, done).await;
    let r = a.get(&format!("/api/tasks/{done}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), in_project);

    // Bad input: no auth, no admin, unknown, not an id.
    anon.get(&format!("/api/tasks/{done}"))
        .await
        .assert_error(401);
    user.get(&format!("/api/tasks/{done}"))
        .await
        .assert_error(403);
    a.get("/api/tasks/999999").await.assert_error(404);
    a.get("/api/tasks/abc").await.assert_error(400);
    a.get("/api/tasks/0").await.assert_error(400);
    anon.delete(&format!("/api/tasks/{done}"))
        .await
        .assert_error(401);
    user.delete(&format!("/api/tasks/{done}"))
        .await
        .assert_error(403);
    a.delete("/api/tasks/999999").await.assert_error(404);
    a.delete("/api/tasks/-1").await.assert_error(400);
    assert_eq!(a.get(&format!("/api/tasks/{done}")).await.status, 200);

    // A finished task: deleted with its output, with an event.
    assert_eq!(a.delete(&format!("/api/tasks/{done}")).await.status, 204);
    a.get(&format!("/api/tasks/{done}")).await.assert_error(404);
    assert_eq!(
        a.get(&at(p, &format!("tasks/{done}"))).await.status,
        400,
        "gone from its project too"
    );
    let events = ok_json(&a, &at(p, "events")).await;
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["object_type"] == "task"
                && e["object_id"] == done
                && e["description"] == format!("Task ID {done} deleted")),
        "{events}"
    );

    // A running task is stopped and waited for; a queued one (one slot) never runs.
    let running = launch(&a, p, json!({"template_id": slow})).await;
    wait_line(&a, p, running, "started").await;
    let queued = launch(&a, p, json!({"template_id": quick})).await;
    let waiting = ok_json(&a, &format!("/api/tasks/{queued}")).await;
    assert_eq!(waiting["status"], "waiting", "{waiting}");
    assert_eq!(a.delete(&format!("/api/tasks/{queued}")).await.status, 204);
    a.get(&format!("/api/tasks/{queued}"))
        .await
        .assert_error(404);
    let started = Instant::now();
    assert_eq!(a.delete(&format!("/api/tasks/{running}")).await.status, 204);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sleep was stopped, not waited out"
    );
    a.get(&format!("/api/tasks/{running}"))
        .await
        .assert_error(404);
    let active = ok_json(&a, "/api/tasks").await;
    assert_eq!(active, json!([]), "nothing left running or queued");
    // Nothing of the deleted tasks is written afterwards, and the runner goes on.
    sleep(Duration::from_millis(200)).await;
    a.get(&format!("/api/tasks/{running}"))
        .await
        .assert_error(404);
    let next = launch(&a, p, json!({"template_id": quick})).await;
    assert_eq!(wait_finished(&a, p, next).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_output_is_every_line_as_plain_text() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (_, outsider) = s.user("outsider", false).await;
    // More lines than one read of the stream takes.
    let (p, tpls, _dir) = setup(
        &a,
        "Raw",
        &[(
            "many.sh",
            "for i in $(seq 1 2500); do echo \"line $i\"; done\n",
        )],
    )
    .await;
    let t = launch(&a, p, json!({"template_id": tpls[0]})).await;
    assert_eq!(wait_finished(&a, p, t).await["status"], "success");

    let r = a.get(&at(p, &format!("tasks/{t}/raw_output"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let json_lines: Vec<String> = ok_json(&a, &at(p, &format!("tasks/{t}/output")))
        .await
        .as_array()
        .expect("output")
        .iter()
        .map(|l| l["output"].as_str().expect("text").to_owned())
        .collect();
    assert!(json_lines.len() > 2500, "{}", json_lines.len());
    let mut expected = json_lines.join("\n");
    expected.push('\n');
    assert_eq!(r.text(), expected);
    assert!(r.text().contains("\nline 2500\n"));

    // Bad input.
    let path = at(p, &format!("tasks/{t}/raw_output"));
    s.client().get(&path).await.assert_error(401);
    outsider.get(&path).await.assert_error(404);
    a.get(&at(p, "tasks/999999/raw_output"))
        .await
        .assert_error(400);
    a.get(&at(p, "tasks/abc/raw_output"))
        .await
        .assert_error(400);
    let other = new_project(&a, "Other").await;
    a.get(&at(other, &format!("tasks/{t}/raw_output")))
        .await
        .assert_error(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn template_stats_count_statuses_per_day() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (bob, bob_client) = s.user("bob", false).await;
    let (_, outsider) = s.user("outsider", false).await;
    let (p, tpls, dir) = setup(
        &a,
        "Stats",
        &[("maybe.sh", "if [ -e fail ]; then exit 1; fi\necho ok\n")],
    )
    .await;
    let tpl = tpls[0];
    let r = a
        .post(
            &at(p, "users"),
            json!({"user_id": bob, "role": "task_runner"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let stats_path = at(p, &format!("templates/{tpl}/stats"));
    assert_eq!(ok_json(&a, &stats_path).await, json!([]));

    // Day 1 (the test clock's 2025-05-21): a success and a failure; day 2: bob's success.
    let t = launch(&a, p, json!({"template_id": tpl})).await;
    assert_eq!(wait_finished(&a, p, t).await["status"], "success");
    std::fs::write(dir.path().join("fail"), "").expect("flag");
    let t = launch(&a, p, json!({"template_id": tpl})).await;
    assert_eq!(wait_finished(&a, p, t).await["status"], "error");
    std::fs::remove_file(dir.path().join("fail")).expect("flag");
    s.clock.advance(86_400);
    let t = launch(&bob_client, p, json!({"template_id": tpl})).await;
    assert_eq!(wait_finished(&a, p, t).await["status"], "success");

    let all = ok_json(&a, &stats_path).await;
    assert_eq!(
        all,
        json!([
            {"date": "2025-05-22", "count_by_status": {"success": 1}, "avg_duration": 0},
            {"date": "2025-05-21", "count_by_status": {"error": 1, "success": 1},
             "avg_duration": 0},
        ])
    );
    // Any member may read it.
    assert_eq!(ok_json(&bob_client, &stats_path).await, all);
    let q = |query: &str| format!("{stats_path}?{query}");
    assert_eq!(
        ok_json(&a, &q("start=2025-05-22")).await,
        json!([all[0].clone()])
    );
    assert_eq!(
        ok_json(&a, &q("end=2025-05-21")).await,
        json!([all[1].clone()])
    );
    assert_eq!(
        ok_json(&a, &q("start=2025-05-21&end=2025-05-22")).await,
        all
    );
    assert_eq!(
        ok_json(&a, &q(&format!("user_id={bob}"))).await,
        json!([all[0].clone()])
    );
    assert_eq!(ok_json(&a, &q("start=2025-06-01")).await, json!([]));

    // Bad input.
    a.get(&q("start=yesterday")).await.assert_error(400);
    a.get(&q("end=2025-13-01")).await.assert_error(400);
    a.get(&q("user_id=x")).await.assert_error(400);
    s.client().get(&stats_path).await.assert_error(401);
    outsider.get(&stats_path).await.assert_error(404);
    a.get(&at(p, "templates/999999/stats"))
        .await
        .assert_error(404);
    a.get(&at(p, "templates/abc/stats")).await.assert_error(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn event_names_starters_builds_and_commits_are_filled() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let (bob, bob_client) = s.user("bob", false).await;
    let (p, tpls, _dir) = setup(
        &a,
        "Fields",
        &[("run.sh", "echo run\n"), ("other.sh", "echo other\n")],
    )
    .await;
    let tpl = tpls[0];
    let r = a
        .post(
            &at(p, "users"),
            json!({"user_id": bob, "role": "task_runner"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // The first template builds, a third one deploys its builds.
    let tpl_json = ok_json(&a, &at(p, &format!("templates/{tpl}"))).await;
    let mut body = tpl_json.clone();
    body["type"] = json!("build");
    let r = a.put(&at(p, &format!("templates/{tpl}")), body).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": "deploy", "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": tpl_json["repository_id"], "type": "deploy",
                   "build_template_id": tpl}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let dtpl = id_of(&r.json());

    // events' object_name: a task's playbook override (upstream), "" for other objects.
    let build = launch(&a, p, json!({"template_id": tpl, "playbook": "other.sh"})).await;
    wait_finished(&a, p, build).await;
    let events = ok_json(&a, &at(p, "events")).await;
    let events = events.as_array().expect("events");
    let queued = events
        .iter()
        .find(|e| e["description"] == format!("Task ID {build} queued for running"))
        .expect("queued event");
    assert_eq!(queued["object_name"], "other.sh", "{queued}");
    assert!(
        events
            .iter()
            .filter(|e| e["object_type"] != "task")
            .all(|e| e["object_name"] == ""),
        "{events:?}"
    );
    let global = ok_json(&a, "/api/events").await;
    assert!(
        global
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["object_id"] == build && e["object_name"] == "other.sh"),
        "{global}"
    );

    // last_task.user_name: the display name of whoever started the newest task.
    let template = ok_json(&a, &at(p, &format!("templates/{tpl}"))).await;
    assert_eq!(template["last_task"]["id"], build);
    assert_eq!(template["last_task"]["user_name"], "Admin");
    let deploy = launch(
        &bob_client,
        p,
        json!({"template_id": dtpl, "build_task_id": build}),
    )
    .await;
    wait_finished(&a, p, deploy).await;
    let template = ok_json(&a, &at(p, &format!("templates/{dtpl}"))).await;
    assert_eq!(template["last_task"]["id"], deploy);
    assert_eq!(template["last_task"]["user_name"], "bob");
    let listed = ok_json(&a, &at(p, "templates")).await;
    let listed = listed
        .as_array()
        .and_then(|l| l.iter().find(|t| t["id"] == dtpl))
        .expect("listed");
    assert_eq!(listed["last_task"]["user_name"], "bob", "{listed}");

    // build_task: the task of build_task_id, or null.
    let build_json = ok_json(&a, &at(p, &format!("tasks/{build}"))).await;
    assert_eq!(template["last_task"]["build_task"], build_json);
    for path in [at(p, "tasks"), at(p, "tasks/last")] {
        let list = ok_json(&a, &path).await;
        let list = list.as_array().expect("task list");
        let find = |id: u64| list.iter().find(|t| t["id"] == id).expect("listed");
        assert_eq!(find(deploy)["build_task"], build_json, "{path}");
        assert_eq!(find(build)["build_task"], Value::Null, "{path}");
    }
    let list = ok_json(&a, &at(p, &format!("templates/{dtpl}/tasks"))).await;
    assert_eq!(list[0]["build_task"], build_json);
    // A build that is gone (deleted): null, not an error.
    let build2 = launch(&a, p, json!({"template_id": tpl})).await;
    wait_finished(&a, p, build2).await;
    let gone = launch(&a, p, json!({"template_id": dtpl, "build_task_id": build2})).await;
    wait_finished(&a, p, gone).await;
    let r = a.delete(&at(p, &format!("tasks/{build2}"))).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let list = ok_json(&a, &at(p, "tasks")).await;
    let listed = list
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == gone)
        .expect("listed");
    assert_eq!(listed["build_task"], Value::Null);

    // A local path that is no git repository: no commit.
    assert_eq!(build_json["commit_hash"], Value::Null);
    assert_eq!(build_json["commit_message"], "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_records_its_commit_on_the_task() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let p = new_project(&a, "Commits").await;
    let up = tempfile::tempdir().expect("temp dir");
    git(up.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(up.path().join("run.sh"), "echo one\n").expect("script");
    git(up.path(), &["add", "."]);
    git(
        up.path(),
        &["commit", "-q", "-m", "First commit", "-m", "with a body"],
    );
    let first = git(up.path(), &["rev-parse", "HEAD"]);
    std::fs::write(up.path().join("run.sh"), "echo two\n").expect("script");
    git(up.path(), &["commit", "-q", "-am", "Second commit"]);
    let second = git(up.path(), &["rev-parse", "HEAD"]);

    // A clone (file://): the branch head, then a commit asked for by its short hash.
    let repo = add_repo(&a, p, &format!("file://{}", up.path().display())).await;
    let tpl = add_template(&a, p, "run.sh", repo).await;
    let t = launch(&a, p, json!({"template_id": tpl})).await;
    let task = wait_finished(&a, p, t).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(task["commit_hash"], second.as_str());
    assert_eq!(task["commit_message"], "Second commit");
    let t = launch(
        &a,
        p,
        json!({"template_id": tpl, "commit_hash": &first[..10]}),
    )
    .await;
    let task = wait_finished(&a, p, t).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(task["commit_hash"], first.as_str(), "the full hash");
    assert_eq!(task["commit_message"], "First commit", "the subject only");
    let listed = ok_json(&a, &at(p, "tasks")).await;
    assert_eq!(listed[0]["commit_message"], "First commit");

    // A local path that is a git repository: its head is recorded, and it is left as it is.
    let local = add_repo(&a, p, up.path().to_str().expect("utf-8 path")).await;
    let tpl = add_template(&a, p, "run.sh", local).await;
    let t = launch(&a, p, json!({"template_id": tpl})).await;
    let task = wait_finished(&a, p, t).await;
    assert_eq!(task["status"], "success", "{task}");
    assert_eq!(task["commit_hash"], second.as_str());
    assert_eq!(task["commit_message"], "Second commit");
    assert_eq!(git(up.path(), &["rev-parse", "HEAD"]), second);
}
