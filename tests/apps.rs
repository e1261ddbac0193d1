//! Apps through a real `forge serve` whose `PATH` this test controls (issue 12): built-in
//! apps are active when their executable was on `PATH` at start; an admin changes, adds,
//! (de)activates and deletes apps, durably; templates and launches need an active app; an
//! app's `path` and `args` reach the command line; and bad requests are refused.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::process::ServerProcess;
use common::{ADMIN, ADMIN_PASSWORD, Client, at, id_of, ok_json};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// A data dir and a `bin` dir that is the server's whole `PATH`: `bash` (a link to the real
/// one), a stand-in `terraform`, and `recorder`, which writes its argv to `argv.txt` in the
/// repository (the task sandbox lets a task write in its workspace only, and run nothing from
/// the data dir).
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for d in ["bin", "repo", "data"] {
            std::fs::create_dir_all(lab.path(d)).expect("mkdir");
        }
        std::os::unix::fs::symlink("/bin/bash", lab.path("bin/bash")).expect("link bash");
        let recorder = format!(
            "#!/bin/bash\nprintf '%s\\n' \"$@\" > '{}'\n",
            lab.path("repo/argv.txt").display()
        );
        for (name, body) in [
            ("terraform", "#!/bin/bash\nexit 0\n"),
            ("recorder", &recorder),
        ] {
            let file = lab.path("bin").join(name);
            std::fs::write(&file, body).expect("write");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        }
        std::fs::write(lab.path("repo/run.sh"), "echo hi\n").expect("script");
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical").join(rel)
    }

    fn serve(&self) -> ServerProcess {
        let bin = self.path("bin").display().to_string();
        ServerProcess::start(
            &self.path("data/forge.redb"),
            &[
                ("PATH", bin.as_str()),
                // Not the harness's: every app's state here comes from PATH.
                ("FORGE_EXTRA_APPS", ""),
                ("FORGE_MAX_BODY_BYTES", "8192"),
            ],
        )
    }
}

async fn admin(server: &ServerProcess) -> Client {
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    c
}

/// A built-in app as the API shows it by default.
fn builtin(id: &str, priority: i64, active: bool) -> Value {
    json!({"id": id, "active": active, "priority": priority, "title": "", "icon": "",
           "color": "", "dark_color": "", "path": "", "args": null})
}

fn defaults() -> Value {
    json!([
        builtin("ansible", 1000, false),
        builtin("terraform", 900, true),
        builtin("tofu", 800, false),
        builtin("bash", 700, true),
        builtin("powershell", 600, false),
        builtin("python", 500, false),
    ])
}

/// A project with the lab's repository; returns (project, repository).
async fn project(a: &Client, lab: &Lab) -> (u64, u64) {
    let r = a.post("/api/projects", json!({"name": "apps"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let keys = ok_json(a, &at(p, "keys")).await;
    let none = id_of(&keys[0]);
    let url = lab.path("repo").display().to_string();
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "repo", "project_id": p, "git_url": url, "ssh_key_id": none}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    (p, id_of(&ok_json(a, &at(p, "repositories")).await[0]))
}

fn template(p: u64, repo: u64, app: &str) -> Value {
    json!({"name": format!("{app} template"), "project_id": p, "app": app,
           "playbook": "run.sh", "repository_id": repo})
}

async fn finished(a: &Client, p: u64, t: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = ok_json(a, &at(p, &format!("tasks/{t}"))).await;
        if matches!(
            task["status"].as_str(),
            Some("success" | "error" | "stopped")
        ) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {t} never ended: {task}");
        sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn defaults_come_from_path_and_an_admins_changes_last() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    assert_eq!(ok_json(&a, "/api/apps").await, defaults());
    assert_eq!(
        ok_json(&a, "/api/apps/terraform").await,
        builtin("terraform", 900, true)
    );

    // Change a built-in app, and add one of our own.
    let r = a
        .put(
            "/api/apps/terraform",
            json!({"title": "Terraform", "priority": 1500, "path": "/opt/tf/terraform",
                   "args": ["-chdir=infra"], "color": "#5c4ee5"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = a
        .put("/api/apps/my_tool", json!({"active": true, "priority": 10}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let changed_tf = json!({"id": "terraform", "active": true, "priority": 1500,
        "title": "Terraform", "icon": "", "color": "#5c4ee5", "dark_color": "",
        "path": "/opt/tf/terraform", "args": ["-chdir=infra"]});
    let mine = json!({"id": "my_tool", "active": true, "priority": 10, "title": "",
        "icon": "", "color": "", "dark_color": "", "path": "", "args": null});
    let mut want = defaults();
    let list = want.as_array_mut().expect("list");
    list.remove(1);
    list.insert(0, changed_tf.clone());
    list.push(mine.clone());
    assert_eq!(ok_json(&a, "/api/apps").await, want);
    // Fields left out keep their value; `null` args clear them.
    let r = a.put("/api/apps/terraform", json!({"args": null})).await;
    assert_eq!(r.status, 204);
    let mut tf = changed_tf.clone();
    tf["args"] = Value::Null;
    assert_eq!(ok_json(&a, "/api/apps/terraform").await, tf);
    // Stored as upstream's options.
    let options = ok_json(&a, "/api/options").await;
    assert_eq!(options["apps.terraform.priority"], "1500");
    assert_eq!(options["apps.my_tool.active"], "true");

    // Acknowledged changes survive a restart.
    server.stop();
    let server = lab.serve();
    let a = admin(&server).await;
    assert_eq!(ok_json(&a, "/api/apps/terraform").await, tf);
    assert_eq!(ok_json(&a, "/api/apps/my_tool").await, mine);

    // Deleting a built-in app resets it; deleting our own removes it.
    assert_eq!(a.delete("/api/apps/terraform").await.status, 204);
    assert_eq!(a.delete("/api/apps/my_tool").await.status, 204);
    assert_eq!(ok_json(&a, "/api/apps").await, defaults());
    assert_eq!(a.get("/api/apps/my_tool").await.status, 404);
    assert_eq!(a.delete("/api/apps/my_tool").await.status, 404);
    assert!(
        !ok_json(&a, "/api/options")
            .await
            .as_object()
            .expect("options")
            .keys()
            .any(|k| k.starts_with("apps.")),
        "deleting leaves no option behind"
    );
    server.stop();
}

#[tokio::test]
async fn templates_and_launches_need_an_active_app() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, repo) = project(&a, &lab).await;

    // tofu is not on PATH: inactive.
    let r = a.post(&at(p, "templates"), template(p, repo, "tofu")).await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"].as_str().expect("error").to_owned();
    assert!(msg.contains("app tofu is not active"), "{msg}");
    let r = a
        .post("/api/apps/tofu/active", json!({"active": true}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(ok_json(&a, "/api/apps/tofu").await["active"] == true);
    let r = a.post(&at(p, "templates"), template(p, repo, "tofu")).await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A bash template runs; once bash is deactivated it can be neither saved nor launched.
    let r = a.post(&at(p, "templates"), template(p, repo, "bash")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let bash = id_of(&r.json());
    let r = a
        .post("/api/apps/bash/active", json!({"active": false}))
        .await;
    assert_eq!(r.status, 204);
    let r = a.post(&at(p, "tasks"), json!({"template_id": bash})).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("app bash is not active"), "{}", r.text());
    let mut update = template(p, repo, "bash");
    update["id"] = json!(bash);
    let r = a.put(&at(p, &format!("templates/{bash}")), update).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("bash"), "{}", r.text());
    // Nothing was queued by the refused launch.
    assert_eq!(ok_json(&a, &at(p, "tasks")).await, json!([]));

    // Deleting the override brings bash back to its default (on PATH: active), and an app's
    // path and args reach the command line as argv.
    assert_eq!(a.delete("/api/apps/bash").await.status, 204);
    let recorder = lab.path("bin/recorder").display().to_string();
    let r = a
        .put(
            "/api/apps/bash",
            json!({"path": recorder, "args": ["-e", "two words"]}),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = a.post(&at(p, "tasks"), json!({"template_id": bash})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let task = finished(&a, p, id_of(&r.json())).await;
    assert_eq!(task["status"], "success", "{task}");
    let argv = std::fs::read_to_string(lab.path("repo/argv.txt")).expect("recorded argv");
    assert_eq!(argv, "-e\ntwo words\nrun.sh\n");
    server.stop();
}

#[tokio::test]
async fn bad_app_requests_are_refused() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let anonymous = server.client();
    let r = a
        .post(
            "/api/users",
            json!({"name": "u", "username": "u", "email": "u@example.com",
                   "password": "pw-of-user"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut user = server.client();
    assert_eq!(user.login("u", "pw-of-user").await.status, 204);

    // 401 without a session; a user lists apps but may not read or change one (403).
    assert_eq!(anonymous.get("/api/apps").await.status, 401);
    assert_eq!(anonymous.get("/api/apps/bash").await.status, 401);
    assert_eq!(user.get("/api/apps").await.json(), defaults());
    assert_eq!(user.get("/api/apps/bash").await.status, 403);
    assert_eq!(user.put("/api/apps/bash", json!({})).await.status, 403);
    assert_eq!(user.delete("/api/apps/bash").await.status, 403);
    let r = user
        .post("/api/apps/bash/active", json!({"active": false}))
        .await;
    assert_eq!(r.status, 403);

    // 404 for an app that does not exist.
    assert_eq!(a.get("/api/apps/nope").await.status, 404);
    assert_eq!(a.delete("/api/apps/nope").await.status, 404);
    let r = a
        .post("/api/apps/nope/active", json!({"active": true}))
        .await;
    assert_eq!(r.status, 404);

    // 400 for bad bodies and ids, naming what is wrong.
    for (path, body, needle) in [
        ("/api/apps/a-b", json!({}), "app id"),
        ("/api/apps/a.b", json!({}), "app id"),
        ("/api/apps/bash", json!({"args": "-e"}), "args"),
        ("/api/apps/bash", json!({"args": [1]}), "args"),
        ("/api/apps/bash", json!({"path": "bin/bash"}), "path"),
        ("/api/apps/bash", json!({"title": "a\nb"}), "title"),
        ("/api/apps/bash", json!({"priority": "high"}), "priority"),
        ("/api/apps/bash", json!([]), "object"),
    ] {
        let r = a.put(path, body.clone()).await;
        assert_eq!(r.status, 400, "PUT {path} {body}: {}", r.text());
        let msg = r.json()["error"].as_str().expect("error").to_owned();
        assert!(msg.contains(needle), "PUT {path} {body}: {msg}");
    }
    let r = a.post("/api/apps/bash/active", json!({})).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("active"), "{}", r.text());
    let r = a
        .post("/api/apps/bash/active", json!({"active": "yes"}))
        .await;
    assert_eq!(r.status, 400);

    // 413 for an oversized body.
    let big = format!(r#"{{"title": "{}"}}"#, "x".repeat(9000));
    for (method, path) in [("PUT", "/api/apps/bash"), ("POST", "/api/apps/bash/active")] {
        let r = a
            .raw(
                method,
                path,
                Some(big.clone().into_bytes()),
                &[("content-type", "application/json")],
            )
            .await;
        assert_eq!(r.status, 413, "{method} {path}");
    }
    // None of it changed anything.
    assert_eq!(ok_json(&a, "/api/apps").await, defaults());
    server.stop();
}
