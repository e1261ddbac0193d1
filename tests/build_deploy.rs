//! Build and deploy templates through a real server (issue 12; API.md §6.5, §7.4, §8.2 step 10,
//! §12.3): builds get counted versions (a failed or stopped build consumes none, concurrent
//! launches never share one), deploys take a successful build of their build template and
//! inherit its version, a successful build starts its `autorun` deploys, and `build_task` is
//! filled in task lists. Tasks are real bash scripts in a local-path repository.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Client, TestServer, at, id_of, new_project, ok_json};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// Fails when a file `fail` is in the repository, waits while a file `hold` is; prints what
/// it builds.
const BUILD: &str = "[ -e fail ] && exit 3\nwhile [ -e hold ]; do sleep 0.05; done\n\
                     echo \"building $SEMAPHORE_TASK_TYPE $SEMAPHORE_TASK_TARGET_VERSION\"\n";
const DEPLOY: &str = "echo \"deploying $SEMAPHORE_TASK_TYPE $SEMAPHORE_TASK_INCOMING_VERSION\"\n";

/// A project with a local-path repository holding `build.sh` and `deploy.sh`.
struct Setup {
    p: u64,
    repo: u64,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(a: &Client, name: &str) -> Self {
        let p = new_project(a, name).await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("build.sh"), BUILD).expect("build script");
        std::fs::write(dir.path().join("deploy.sh"), DEPLOY).expect("deploy script");
        let keys = ok_json(a, &at(p, "keys")).await;
        let key = keys
            .as_array()
            .and_then(|k| k.iter().find(|k| k["name"] == "None"))
            .map(id_of)
            .expect("the None key");
        let url = dir.path().to_str().expect("utf-8 path");
        let r = a
            .post(
                &at(p, "repositories"),
                json!({"name": "local", "project_id": p, "git_url": url, "git_branch": "",
                       "ssh_key_id": key}),
            )
            .await;
        assert_eq!(r.status, 204, "POST repositories: {}", r.text());
        let repos = ok_json(a, &at(p, "repositories")).await;
        let repo = id_of(&repos[0]);
        Self { p, repo, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A bash template body; `extra` adds fields.
    fn template(&self, name: &str, script: &str, extra: &Value) -> Value {
        let mut body = json!({"name": name, "project_id": self.p, "app": "bash",
                              "playbook": script, "repository_id": self.repo});
        for (k, v) in extra.as_object().expect("extra is an object") {
            body[k] = v.clone();
        }
        body
    }

    async fn add_template(&self, a: &Client, name: &str, script: &str, extra: Value) -> u64 {
        let r = a
            .post(
                &at(self.p, "templates"),
                self.template(name, script, &extra),
            )
            .await;
        assert_eq!(r.status, 201, "POST templates: {}", r.text());
        id_of(&r.json())
    }

    async fn build_template(&self, a: &Client, name: &str, start: &str) -> u64 {
        let extra = json!({"type": "build", "start_version": start});
        self.add_template(a, name, "build.sh", extra).await
    }

    async fn deploy_template(&self, a: &Client, name: &str, build: u64, autorun: bool) -> u64 {
        let extra = json!({"type": "deploy", "build_template_id": build, "autorun": autorun});
        self.add_template(a, name, "deploy.sh", extra).await
    }

    /// POSTs a task; asserts 201 and returns it.
    async fn launch(&self, a: &Client, body: Value) -> Value {
        let r = a.post(&at(self.p, "tasks"), body.clone()).await;
        assert_eq!(r.status, 201, "POST tasks {body}: {}", r.text());
        r.json()
    }

    async fn task(&self, a: &Client, t: u64) -> Value {
        ok_json(a, &at(self.p, &format!("tasks/{t}"))).await
    }

    async fn wait_finished(&self, a: &Client, t: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task = self.task(a, t).await;
            if matches!(
                task["status"].as_str(),
                Some("success" | "error" | "stopped")
            ) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {t} stuck: {task}");
            sleep(Duration::from_millis(30)).await;
        }
    }

    /// Launches a task of `tpl`, waits for its end; returns it.
    async fn run(&self, a: &Client, tpl: u64) -> Value {
        let t = id_of(&self.launch(a, json!({ "template_id": tpl })).await);
        self.wait_finished(a, t).await
    }

    async fn raw_output(&self, a: &Client, t: u64) -> String {
        let r = a.get(&at(self.p, &format!("tasks/{t}/raw_output"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    async fn tasks(&self, a: &Client) -> Vec<Value> {
        ok_json(a, &at(self.p, "tasks"))
            .await
            .as_array()
            .expect("task list")
            .clone()
    }

    async fn templates(&self, a: &Client) -> Vec<Value> {
        ok_json(a, &at(self.p, "templates"))
            .await
            .as_array()
            .expect("template list")
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_count_versions_that_failed_and_stopped_builds_do_not_consume() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let setup = Setup::new(&a, "Builds").await;
    let build = setup.build_template(&a, "build", "1.0.0").await;

    let b1 = setup.run(&a, build).await;
    assert_eq!(
        (b1["status"].as_str(), b1["version"].as_str()),
        (Some("success"), Some("1.0.0"))
    );
    let out = setup.raw_output(&a, id_of(&b1)).await;
    assert!(out.contains("building build 1.0.0\n"), "{out}");
    let b2 = setup.run(&a, build).await;
    assert_eq!(
        (b2["status"].as_str(), b2["version"].as_str()),
        (Some("success"), Some("1.0.1"))
    );

    // A failed build has its number, but consumes it not.
    std::fs::write(setup.path().join("fail"), "").expect("fail marker");
    let b3 = setup.run(&a, build).await;
    assert_eq!(
        (b3["status"].as_str(), b3["version"].as_str()),
        (Some("error"), Some("1.0.2"))
    );
    std::fs::remove_file(setup.path().join("fail")).expect("fail marker");
    let b4 = setup.run(&a, build).await;
    assert_eq!(
        (b4["status"].as_str(), b4["version"].as_str()),
        (Some("success"), Some("1.0.2"))
    );

    // An unfinished build counts; a stopped one does not.
    std::fs::write(setup.path().join("hold"), "").expect("hold marker");
    let held = setup.launch(&a, json!({"template_id": build})).await;
    assert_eq!(held["version"], "1.0.3");
    let queued = setup.launch(&a, json!({"template_id": build})).await;
    assert_eq!(queued["version"], "1.0.4");
    let r = a
        .post(
            &at(setup.p, &format!("tasks/{}/stop", id_of(&queued))),
            json!({"force": true}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        setup.wait_finished(&a, id_of(&queued)).await["status"],
        "stopped"
    );
    std::fs::remove_file(setup.path().join("hold")).expect("hold marker");
    assert_eq!(
        setup.wait_finished(&a, id_of(&held)).await["status"],
        "success"
    );
    let b5 = setup.run(&a, build).await;
    assert_eq!(
        b5["version"], "1.0.4",
        "the stopped build's number is free again"
    );

    // The ninth counts on to 10; a new start version of another shape starts a new series.
    for want in ["1.0.5", "1.0.6", "1.0.7", "1.0.8", "1.0.9", "1.0.10"] {
        assert_eq!(setup.run(&a, build).await["version"], want);
    }
    // A build deleted (or pruned) never frees its number.
    let newest = setup.tasks(&a).await[0].clone();
    assert_eq!(newest["version"], "1.0.10");
    let r = a
        .delete(&at(setup.p, &format!("tasks/{}", id_of(&newest))))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(setup.run(&a, build).await["version"], "1.0.11");

    let mut body = ok_json(&a, &at(setup.p, &format!("templates/{build}"))).await;
    body["start_version"] = json!("2.0.0");
    let r = a
        .put(&at(setup.p, &format!("templates/{build}")), body)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(setup.run(&a, build).await["version"], "2.0.0");
    assert_eq!(setup.run(&a, build).await["version"], "2.0.1");

    // A build template without a start version does not number its builds; plain templates
    // have no version.
    let unnumbered = setup
        .add_template(&a, "unnumbered", "build.sh", json!({"type": "build"}))
        .await;
    assert_eq!(setup.run(&a, unnumbered).await["version"], Value::Null);
    let plain = setup.add_template(&a, "plain", "build.sh", json!({})).await;
    let t = setup.run(&a, plain).await;
    assert_eq!(t["version"], Value::Null);
    let out = setup.raw_output(&a, id_of(&t)).await;
    assert!(
        out.contains("building  \n"),
        "no build variables for a plain task: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_launches_get_distinct_versions() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let setup = Setup::new(&a, "Concurrent").await;
    let build = setup.build_template(&a, "build", "v7-rc1").await;
    let mut launches = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (a, p) = (a.clone(), setup.p);
        launches.spawn(async move {
            let r = a.post(&at(p, "tasks"), json!({"template_id": build})).await;
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()
        });
    }
    let mut versions = Vec::new();
    while let Some(task) = launches.join_next().await {
        let task = task.expect("launch");
        versions.push((
            id_of(&task),
            task["version"].as_str().expect("version").to_owned(),
        ));
    }
    // In launch (id) order they count up one by one, with no gap and no repeat.
    versions.sort();
    let want: Vec<String> = (1..=12).map(|n| format!("v7-rc{n}")).collect();
    let got: Vec<String> = versions.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got, want);
    for (t, v) in &versions {
        let task = setup.wait_finished(&a, *t).await;
        assert_eq!(task["status"], "success", "{task}");
        assert_eq!(task["version"], v.as_str());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_take_a_successful_build_and_inherit_its_version() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let setup = Setup::new(&a, "Deploys").await;
    let p = setup.p;
    let build = setup.build_template(&a, "build", "3.1.0").await;
    let other_build = setup.build_template(&a, "other build", "9").await;
    let deploy = setup.deploy_template(&a, "deploy", build, false).await;
    let plain = setup
        .add_template(&a, "plain", "deploy.sh", json!({}))
        .await;

    let good = setup.run(&a, build).await;
    let good_id = id_of(&good);
    std::fs::write(setup.path().join("fail"), "").expect("fail marker");
    let failed = id_of(&setup.run(&a, build).await);
    std::fs::remove_file(setup.path().join("fail")).expect("fail marker");
    let foreign = id_of(&setup.run(&a, other_build).await);

    let d = setup
        .launch(&a, json!({"template_id": deploy, "build_task_id": good_id}))
        .await;
    assert_eq!(d["build_task_id"], good_id);
    assert_eq!(d["version"], "3.1.0");
    let d = setup.wait_finished(&a, id_of(&d)).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["version"], "3.1.0");
    let out = setup.raw_output(&a, id_of(&d)).await;
    assert!(out.contains("deploying deploy 3.1.0\n"), "{out}");

    // build_task in every list (and in the template's last_task): the build as GET shows it.
    let good = setup.task(&a, good_id).await;
    for path in [
        at(p, "tasks"),
        at(p, "tasks/last?limit=5"),
        at(p, &format!("templates/{deploy}/tasks")),
        at(p, &format!("templates/{deploy}/tasks/last")),
    ] {
        let list = ok_json(&a, &path).await;
        let listed = list
            .as_array()
            .and_then(|l| l.iter().find(|t| t["id"] == d["id"]))
            .unwrap_or_else(|| panic!("{path}: deploy not listed: {list}"));
        assert_eq!(listed["build_task"], good, "{path}");
        assert_eq!(listed["tpl_type"], "deploy", "{path}");
    }
    let builds = ok_json(&a, &at(p, &format!("templates/{build}/tasks"))).await;
    assert!(
        builds
            .as_array()
            .expect("list")
            .iter()
            .all(|t| t["build_task"].is_null())
    );
    let tpl = ok_json(&a, &at(p, &format!("templates/{deploy}"))).await;
    assert_eq!(tpl["last_task"]["build_task"], good);

    // Refused launches: 400 with a message, and no task written.
    let before = setup.tasks(&a).await;
    for (body, fragment) in [
        (json!({"template_id": deploy}), "build_task_id is required"),
        (
            json!({"template_id": deploy, "build_task_id": 0}),
            "build_task_id is required",
        ),
        (
            json!({"template_id": deploy, "build_task_id": failed}),
            "has not succeeded",
        ),
        (
            json!({"template_id": deploy, "build_task_id": foreign}),
            "not a build of",
        ),
        (
            json!({"template_id": deploy, "build_task_id": id_of(&d)}),
            "not a build of",
        ),
        (
            json!({"template_id": deploy, "build_task_id": 999_999}),
            "not a build of",
        ),
        (
            json!({"template_id": build, "build_task_id": good_id}),
            "only a deploy",
        ),
        (
            json!({"template_id": plain, "build_task_id": good_id}),
            "only a deploy",
        ),
    ] {
        let r = a.post(&at(p, "tasks"), body.clone()).await;
        let msg = r.assert_error(400);
        assert!(msg.contains(fragment), "{body}: {msg}");
    }
    // A build of another project: as unknown.
    let other = Setup::new(&a, "Elsewhere").await;
    let their_build = other.build_template(&a, "build", "1").await;
    let theirs = id_of(&other.run(&a, their_build).await);
    let r = a
        .post(
            &at(p, "tasks"),
            json!({"template_id": deploy, "build_task_id": theirs}),
        )
        .await;
    r.assert_error(400);
    assert_eq!(
        setup.tasks(&a).await,
        before,
        "refused launches wrote nothing"
    );

    // A task runner may deploy; a guest may not (the launch route's rules, unchanged).
    let (runner_id, runner) = s.user("runner", false).await;
    let (guest_id, guest) = s.user("guest", false).await;
    for (id, role) in [(runner_id, "task_runner"), (guest_id, "guest")] {
        let r = a
            .post(&at(p, "users"), json!({"user_id": id, "role": role}))
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let body = json!({"template_id": deploy, "build_task_id": good_id});
    let r = guest.post(&at(p, "tasks"), body.clone()).await;
    r.assert_error(403);
    let by_runner = setup.launch(&runner, body).await;
    assert_eq!(by_runner["version"], "3.1.0");
    setup.wait_finished(&a, id_of(&by_runner)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_build_runs_its_autorun_deploys() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let setup = Setup::new(&a, "Autorun").await;
    let p = setup.p;
    let build = setup.build_template(&a, "build", "0.9.9").await;
    let other_build = setup.build_template(&a, "other build", "5.0").await;
    let auto_a = setup.deploy_template(&a, "auto a", build, true).await;
    let auto_b = setup.deploy_template(&a, "auto b", build, true).await;
    let manual = setup.deploy_template(&a, "manual", build, false).await;
    let elsewhere = setup
        .deploy_template(&a, "elsewhere", other_build, true)
        .await;

    let b = setup.run(&a, build).await;
    assert_eq!(b["status"], "success");
    let b_id = id_of(&b);
    // Created with the build's success, in the same transaction: there once it shows finished.
    let tasks = setup.tasks(&a).await;
    let mut deploys: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["build_task_id"] == b_id)
        .collect();
    deploys.sort_by_key(|t| id_of(t));
    let templates: Vec<u64> = deploys
        .iter()
        .map(|t| t["template_id"].as_u64().expect("template id"))
        .collect();
    assert_eq!(
        templates,
        [auto_a, auto_b],
        "only the autorun deploys of this build template"
    );
    for d in &deploys {
        assert!(id_of(d) > b_id);
        assert_eq!(d["version"], "0.9.9");
        assert_eq!(d["user_id"], Value::Null, "nobody started it");
        assert_eq!(d["user_name"], Value::Null);
        let done = setup.wait_finished(&a, id_of(d)).await;
        assert_eq!(done["status"], "success", "{done}");
        let out = setup.raw_output(&a, id_of(d)).await;
        assert!(
            out.starts_with(&format!("Task {} added to queue\n", id_of(d))),
            "{out}"
        );
        assert!(out.contains("deploying deploy 0.9.9\n"), "{out}");
    }
    // One event each.
    let events = ok_json(&a, &at(p, "events")).await;
    for d in &deploys {
        let want = format!(
            "Task ID {} queued for running (autorun after build task {b_id})",
            id_of(d)
        );
        let hits = events
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["description"] == want.as_str() && e["object_id"] == d["id"])
            .count();
        assert_eq!(hits, 1, "{want}: {events}");
    }

    // A failed build runs nothing.
    let before = setup.tasks(&a).await.len();
    std::fs::write(setup.path().join("fail"), "").expect("fail marker");
    let failed = setup.run(&a, build).await;
    assert_eq!(failed["status"], "error");
    assert_eq!(
        setup.tasks(&a).await.len(),
        before + 1,
        "only the failed build itself"
    );
    std::fs::remove_file(setup.path().join("fail")).expect("fail marker");

    // The next success deploys again (with the failed build's number), and the other build
    // template's autorun deploy follows its own builds only.
    let b2 = setup.run(&a, build).await;
    assert_eq!(b2["version"], "0.9.10");
    let tasks = setup.tasks(&a).await;
    let deploys: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["build_task_id"] == b2["id"])
        .collect();
    assert_eq!(deploys.len(), 2);
    assert!(deploys.iter().all(|d| d["version"] == "0.9.10"));
    assert!(
        !tasks
            .iter()
            .any(|t| t["template_id"] == manual || t["template_id"] == elsewhere)
    );
    for d in deploys {
        setup.wait_finished(&a, id_of(d)).await;
    }
    let o = setup.run(&a, other_build).await;
    let tasks = setup.tasks(&a).await;
    let theirs: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["build_task_id"] == o["id"])
        .collect();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["template_id"], elsewhere);
    assert_eq!(theirs[0]["version"], "5.0");
    setup.wait_finished(&a, id_of(theirs[0])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn template_rules_refuse_with_400_and_write_nothing() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let setup = Setup::new(&a, "Rules").await;
    let p = setup.p;
    let build = setup.build_template(&a, "build", "1.0.0").await;
    let plain = setup.add_template(&a, "plain", "build.sh", json!({})).await;
    let other = Setup::new(&a, "Other").await;
    let their_build = other.build_template(&a, "their build", "1").await;
    let deploy = setup.deploy_template(&a, "deploy", build, true).await;

    let templates = setup.templates(&a).await;
    let events = ok_json(&a, &at(p, "events")).await;
    let refusals = [
        (json!({"type": "deploy"}), "needs a build template"),
        (
            json!({"type": "deploy", "build_template_id": 0}),
            "needs a build template",
        ),
        (
            json!({"type": "deploy", "build_template_id": plain}),
            "not a build template",
        ),
        (
            json!({"type": "deploy", "build_template_id": 999_999}),
            "no template",
        ),
        (
            json!({"type": "deploy", "build_template_id": their_build}),
            "no template",
        ),
        (
            json!({"type": "build", "start_version": "stable"}),
            "start_version",
        ),
        (
            json!({"type": "build", "start_version": "1.0 beta"}),
            "start_version",
        ),
        (
            json!({"type": "build", "start_version": "1.0\t0"}),
            "start_version",
        ),
        (
            json!({"type": "build", "start_version": "1.".repeat(40)}),
            "start_version",
        ),
        (
            json!({"type": "build", "start_version": "r1999999999999999999"}),
            "start_version",
        ),
        (json!({"type": "release"}), "template type"),
    ];
    for (extra, fragment) in &refusals {
        let r = a
            .post(
                &at(p, "templates"),
                setup.template("new", "deploy.sh", extra),
            )
            .await;
        let msg = r.assert_error(400);
        assert!(msg.contains(fragment), "{extra}: {msg}");
    }
    // The same bodies as an update of the deploy template.
    let path = at(p, &format!("templates/{deploy}"));
    let current = ok_json(&a, &path).await;
    for (extra, fragment) in &refusals {
        let mut body = setup.template("deploy", "deploy.sh", extra);
        body["id"] = json!(deploy);
        let msg = a.put(&path, body).await.assert_error(400);
        assert!(msg.contains(fragment), "{extra}: {msg}");
    }
    let mut body = setup.template("deploy", "deploy.sh", &json!({"type": "deploy"}));
    body["id"] = json!(deploy);
    body["build_template_id"] = json!(deploy);
    let msg = a.put(&path, body).await.assert_error(400);
    assert!(msg.contains("cannot build itself"), "{msg}");
    let body = setup.template(
        "new",
        "deploy.sh",
        &json!({"type": "deploy", "build_template_id": deploy}),
    );
    let msg = a.post(&at(p, "templates"), body).await.assert_error(400);
    assert!(msg.contains("not a build template"), "{msg}");
    assert_eq!(ok_json(&a, &path).await, current);
    assert_eq!(setup.templates(&a).await, templates, "nothing written");
    assert_eq!(ok_json(&a, &at(p, "events")).await, events, "no event");

    // The build template is kept while a deploy template builds from it: no delete, and it
    // stays a build template (409, as a delete of it).
    let build_path = at(p, &format!("templates/{build}"));
    let build_json = ok_json(&a, &build_path).await;
    let msg = a.delete(&build_path).await.assert_error(409);
    assert!(
        msg.contains("build template of one or more deploy templates"),
        "{msg}"
    );
    for (kind, build_template) in [("", Value::Null), ("deploy", json!(their_build))] {
        let mut body = build_json.clone();
        body["type"] = json!(kind);
        body["build_template_id"] = build_template;
        let msg = a.put(&build_path, body).await.assert_error(409);
        assert!(msg.contains("stays a build template"), "{msg}");
    }
    assert_eq!(ok_json(&a, &build_path).await, build_json);
    // Accepted: a valid start version, trimmed; other fields of other types cleared.
    let mut body = build_json.clone();
    body["start_version"] = json!(" 2026.12.1-nightly ");
    body["autorun"] = json!(true);
    let r = a.put(&build_path, body).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = ok_json(&a, &build_path).await;
    assert_eq!(got["start_version"], "2026.12.1-nightly");
    assert_eq!(got["autorun"], false, "autorun belongs to deploy templates");

    // Once no deploy template uses it, it may change type, then go.
    let r = a.delete(&at(p, &format!("templates/{deploy}"))).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let mut body = got.clone();
    body["type"] = json!("");
    let r = a.put(&build_path, body).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = ok_json(&a, &build_path).await;
    assert_eq!(
        (got["type"].as_str(), &got["start_version"]),
        (Some(""), &Value::Null)
    );
    let r = a.delete(&build_path).await;
    assert_eq!(r.status, 204, "{}", r.text());
}
