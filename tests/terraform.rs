//! Terraform and OpenTofu tasks through a real `forge serve` (issue 12): the exact argv of
//! every step for each `params` combination, plan → `waiting_confirmation` → confirm (apply)
//! or reject, plan only, auto-approve, destroy, a stop while waiting, and a server that stops
//! or crashes while a task waits. The real binaries are not installed here: a stand-in
//! `terraform`/`tofu` (a bash script this test writes) on the server's `PATH` records each
//! call's argv and environment and prints plan/apply output.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::ServerProcess;
use common::{ADMIN, ADMIN_PASSWORD, Client, at, id_of, ok_json};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// A data dir, and a repository holding a terraform configuration to run in and the stand-in's
/// directories (the task sandbox lets the stand-in write only in its workspace).
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let lab = Self { dir };
        for d in ["bin", "repo/calls", "repo/ctl", "repo/infra"] {
            std::fs::create_dir_all(lab.path(d)).expect("mkdir");
        }
        std::fs::write(
            lab.path("repo/infra/main.tf"),
            "resource \"null\" \"x\" {}\n",
        )
        .expect("main.tf");
        common::terraform::install(
            &lab.path("bin"),
            &["terraform", "tofu", "tofu-custom"],
            &lab.path("repo/calls"),
            &lab.path("repo/ctl"),
        );
        lab
    }

    /// A path inside the lab (canonical, as the server resolves its paths).
    fn path(&self, rel: &str) -> PathBuf {
        self.dir
            .path()
            .canonicalize()
            .expect("canonical temp dir")
            .join(rel)
    }

    fn db(&self) -> PathBuf {
        self.path("forge.redb")
    }

    /// The plan file of task `t`.
    fn plan_file(&self, t: u64) -> String {
        format!("{}.work/tasks/{t}/plan.tfplan", self.db().display())
    }

    /// The server, with the stand-ins first on its `PATH`.
    fn serve(&self) -> ServerProcess {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        ServerProcess::start(
            &self.db(),
            &[("PATH", path.as_str()), ("FORGE_MAX_BODY_BYTES", "8192")],
        )
    }

    /// Makes the next plans report no changes / fail (or not).
    fn control(&self, name: &str, on: bool) {
        let file = self.path("repo/ctl").join(name);
        if on {
            std::fs::write(file, "").expect("control file");
        } else {
            let _ = std::fs::remove_file(file);
        }
    }

    /// The calls recorded so far, oldest first (each: program name, then the arguments),
    /// and forgets them.
    fn take_calls(&self) -> Vec<Vec<String>> {
        let dir = self.path("repo/calls");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("calls")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        let mut calls = Vec::new();
        for f in &files {
            if f.extension().is_some_and(|e| e == "argv") {
                let text = std::fs::read_to_string(f).expect("argv file");
                calls.push(text.lines().map(str::to_owned).collect());
            }
        }
        for f in files {
            std::fs::remove_file(f).expect("forget call");
        }
        calls
    }

    /// The environment of the last call recorded (before [`Lab::take_calls`]).
    fn last_env(&self) -> String {
        let dir = self.path("repo/calls");
        let mut envs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("calls")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "env"))
            .collect();
        envs.sort();
        std::fs::read_to_string(envs.last().expect("a call")).expect("env file")
    }
}

fn argv(program: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

async fn admin(server: &ServerProcess) -> Client {
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    c
}

/// A project with the lab's repository, an environment (an extra variable, an environment
/// variable, a secret) and a template of `app` running in `infra`; returns (project,
/// template).
async fn setup(a: &Client, lab: &Lab, app: &str) -> (u64, u64) {
    let r = a.post("/api/projects", json!({"name": "infra"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let keys = ok_json(a, &at(p, "keys")).await;
    let none = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["name"] == "None"))
        .map(id_of)
        .expect("the None key");
    let url = lab.path("repo").display().to_string();
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "repo", "project_id": p, "git_url": url, "git_branch": "main",
                   "ssh_key_id": none}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo = id_of(&ok_json(a, &at(p, "repositories")).await[0]);
    let r = a
        .post(
            &at(p, "environment"),
            json!({"name": "prod", "project_id": p, "json": "{\"region\": \"eu-west-1\"}",
                   "env": "{\"MY_ENV\": \"from env\"}",
                   "secrets": [{"type": "var", "name": "token", "secret": "s3cret-value",
                                "operation": "create"}]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let envs = ok_json(a, &at(p, "environment")).await;
    let env = envs
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "prod"))
        .map(id_of)
        .expect("the environment");
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": "infra", "project_id": p, "app": app, "playbook": "infra",
                   "repository_id": repo, "environment_id": env}),
        )
        .await;
    assert_eq!(r.status, 201, "POST templates: {}", r.text());
    (p, id_of(&r.json()))
}

async fn launch(a: &Client, p: u64, tpl: u64, params: Value) -> u64 {
    launch_with(a, p, json!({"template_id": tpl, "params": params})).await
}

async fn launch_with(a: &Client, p: u64, body: Value) -> u64 {
    let r = a.post(&at(p, "tasks"), body).await;
    assert_eq!(r.status, 201, "launch: {}", r.text());
    id_of(&r.json())
}

async fn wait_status(a: &Client, p: u64, t: u64, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = ok_json(a, &at(p, &format!("tasks/{t}"))).await;
        if want.contains(&task["status"].as_str().unwrap_or_default()) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {t} never {want:?}: {task}");
        sleep(Duration::from_millis(25)).await;
    }
}

async fn finished(a: &Client, p: u64, t: u64) -> String {
    let task = wait_status(a, p, t, &["success", "error", "stopped"]).await;
    task["status"].as_str().expect("status").to_owned()
}

/// Waits until the task's stored output holds `text`.
async fn wait_output(a: &Client, p: u64, t: u64, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !output(a, p, t).await.contains(text) {
        assert!(Instant::now() < deadline, "task {t} never printed {text:?}");
        sleep(Duration::from_millis(25)).await;
    }
}

async fn output(a: &Client, p: u64, t: u64) -> String {
    a.get(&at(p, &format!("tasks/{t}/raw_output"))).await.text()
}

/// init and plan as every run starts them (no params).
fn init_plan(program: &str, plan_file: &str, extra_plan: &[&str]) -> Vec<Vec<String>> {
    let out = format!("-out={plan_file}");
    let mut plan = vec!["plan", "-input=false", "-detailed-exitcode"];
    plan.extend(extra_plan);
    plan.extend([out.as_str(), "-var", "region=eu-west-1"]);
    vec![
        argv(program, &["init", "-input=false"]),
        argv(program, &plan),
    ]
}

#[tokio::test]
async fn each_params_combination_runs_its_exact_argv() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, tpl) = setup(&a, &lab, "terraform").await;

    // Plan only: init, plan, success; never applied, never waiting.
    let t = launch(&a, p, tpl, json!({"plan": true})).await;
    assert_eq!(
        finished(&a, p, t).await,
        "success",
        "{}",
        output(&a, p, t).await
    );
    let plan = lab.plan_file(t);
    assert_eq!(lab.take_calls(), init_plan("terraform", &plan, &[]));
    assert!(output(&a, p, t).await.contains("Plan only: not applied"));
    assert!(
        !Path::new(&plan).exists(),
        "the workspace goes with the task"
    );

    // Auto-approve with upgrade and reconfigure: init with both, plan, apply of that plan.
    let t = launch(
        &a,
        p,
        tpl,
        json!({"auto_approve": true, "upgrade": true, "reconfigure": true}),
    )
    .await;
    assert_eq!(
        finished(&a, p, t).await,
        "success",
        "{}",
        output(&a, p, t).await
    );
    let plan = lab.plan_file(t);
    let mut want = init_plan("terraform", &plan, &[]);
    want[0] = argv(
        "terraform",
        &["init", "-input=false", "-upgrade", "-reconfigure"],
    );
    want.push(argv("terraform", &["apply", "-input=false", &plan]));
    assert_eq!(lab.take_calls(), want);

    // Destroy, auto-approved: the plan is a destroy plan, then applied.
    let t = launch(&a, p, tpl, json!({"destroy": true, "auto_approve": true})).await;
    assert_eq!(
        finished(&a, p, t).await,
        "success",
        "{}",
        output(&a, p, t).await
    );
    let plan = lab.plan_file(t);
    let mut want = init_plan("terraform", &plan, &["-destroy"]);
    want.push(argv("terraform", &["apply", "-input=false", &plan]));
    assert_eq!(lab.take_calls(), want);

    // A plan without changes ends the task at once, whatever the params.
    lab.control("no_changes", true);
    let t = launch(&a, p, tpl, json!({})).await;
    assert_eq!(finished(&a, p, t).await, "success");
    assert_eq!(
        lab.take_calls(),
        init_plan("terraform", &lab.plan_file(t), &[])
    );
    assert!(
        output(&a, p, t)
            .await
            .contains("No changes: nothing to apply")
    );
    lab.control("no_changes", false);

    // A failing plan is an error, and nothing is applied.
    lab.control("plan_fails", true);
    let t = launch(&a, p, tpl, json!({"auto_approve": true})).await;
    assert_eq!(finished(&a, p, t).await, "error");
    assert_eq!(lab.take_calls().len(), 2);
    assert!(
        output(&a, p, t)
            .await
            .contains("Running app failed: exit status 1")
    );
    lab.control("plan_fails", false);

    // Ansible's flags among the params mean nothing to a terraform task.
    let t = launch(&a, p, tpl, json!({"plan": true, "debug": true})).await;
    assert_eq!(finished(&a, p, t).await, "success");
    assert_eq!(
        lab.take_calls(),
        init_plan("terraform", &lab.plan_file(t), &[])
    );

    // A terraform-workspace inventory selects (or creates) its workspace after init.
    let r = a
        .post(
            &at(p, "inventory"),
            json!({"name": "bad", "project_id": p, "type": "terraform-workspace",
                   "inventory": "-upgrade"}),
        )
        .await;
    assert_eq!(r.status, 400, "a workspace name that looks like an option");
    let r = a
        .post(
            &at(p, "inventory"),
            json!({"name": "staging", "project_id": p, "type": "terraform-workspace",
                   "inventory": "staging"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let inv = id_of(&r.json());
    let body = json!({"template_id": tpl, "inventory_id": inv, "params": {"plan": true}});
    let t = launch_with(&a, p, body).await;
    assert_eq!(
        finished(&a, p, t).await,
        "success",
        "{}",
        output(&a, p, t).await
    );
    let mut want = init_plan("terraform", &lab.plan_file(t), &[]);
    let select = ["workspace", "select", "-or-create=true", "staging"];
    want.insert(1, argv("terraform", &select));
    assert_eq!(lab.take_calls(), want);
    server.stop();
}

#[tokio::test]
async fn a_plan_waits_for_confirmation_then_applies() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, tpl) = setup(&a, &lab, "terraform").await;
    let t = launch(&a, p, tpl, json!({"upgrade": true})).await;
    let task = wait_status(&a, p, t, &["waiting_confirmation"]).await;
    assert!(task["end"].is_null(), "{task}");
    assert_eq!(
        task["params"],
        json!({"plan": false, "destroy": false, "auto_approve": false, "upgrade": true,
               "reconfigure": false}),
        "the task shows its options"
    );
    let plan = lab.plan_file(t);
    // Secrets reach terraform through its environment, never its argv.
    let env = lab.last_env();
    assert!(env.contains("TF_VAR_token=s3cret-value\n"), "{env}");
    assert!(env.contains("MY_ENV=from env\n"), "{env}");
    assert!(env.contains("TF_IN_AUTOMATION=1\n"), "{env}");
    let calls = lab.take_calls();
    let mut want = init_plan("terraform", &plan, &[]);
    want[0] = argv("terraform", &["init", "-input=false", "-upgrade"]);
    assert_eq!(calls, want);
    assert!(!calls.concat().iter().any(|a| a.contains("s3cret")));
    // The process tree has ended; the plan file waits in the workspace.
    assert!(Path::new(&plan).is_file());
    // Output is stored in batches beside the status: the line follows shortly.
    wait_output(&a, p, t, "Waiting for confirmation").await;
    assert!(ok_json(&a, &at(p, &format!("tasks/{t}"))).await["status"] == "waiting_confirmation");

    let r = a
        .post(&at(p, &format!("tasks/{t}/confirm")), json!({}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        finished(&a, p, t).await,
        "success",
        "{}",
        output(&a, p, t).await
    );
    assert_eq!(
        lab.take_calls(),
        [argv("terraform", &["apply", "-input=false", &plan])]
    );
    let out = output(&a, p, t).await;
    assert!(out.contains("Plan confirmed: applying"), "{out}");
    assert!(out.contains("Apply complete!"), "{out}");
    assert!(!Path::new(&plan).exists());
    // Finished: nothing to confirm or reject any more.
    for action in ["confirm", "reject"] {
        let r = a
            .post(&at(p, &format!("tasks/{t}/{action}")), json!({}))
            .await;
        assert_eq!(r.status, 400, "{action} of a finished task: {}", r.text());
    }
    server.stop();
}

#[tokio::test]
async fn reject_and_stop_end_a_waiting_task_without_applying() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, tpl) = setup(&a, &lab, "tofu").await;

    // A destroy plan waits for a confirmation like any other.
    let params = json!({"destroy": true, "reconfigure": true});
    let t = launch(&a, p, tpl, params).await;
    wait_status(&a, p, t, &["waiting_confirmation"]).await;
    let plan = lab.plan_file(t);
    let mut want = init_plan("tofu", &plan, &["-destroy"]);
    want[0] = argv("tofu", &["init", "-input=false", "-reconfigure"]);
    assert_eq!(lab.take_calls(), want);
    let r = a
        .post(&at(p, &format!("tasks/{t}/reject")), json!({}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(finished(&a, p, t).await, "stopped");
    assert!(
        lab.take_calls().is_empty(),
        "a rejected plan is never applied"
    );
    assert!(!Path::new(&plan).exists(), "rejecting cleans the workspace");
    assert!(output(&a, p, t).await.contains("Plan rejected"));
    let r = a
        .post(&at(p, &format!("tasks/{t}/confirm")), json!({}))
        .await;
    assert_eq!(r.status, 400);

    // A stop request works on a waiting task too.
    let t = launch(&a, p, tpl, json!({})).await;
    wait_status(&a, p, t, &["waiting_confirmation"]).await;
    lab.take_calls();
    let r = a.post(&at(p, &format!("tasks/{t}/stop")), json!({})).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(finished(&a, p, t).await, "stopped");
    assert!(lab.take_calls().is_empty());

    // The next task of the template runs once the waiting one has ended.
    let t = launch(&a, p, tpl, json!({"plan": true})).await;
    assert_eq!(finished(&a, p, t).await, "success");
    server.stop();
}

#[tokio::test]
async fn a_task_waiting_when_the_server_stops_or_crashes_ends_as_error() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, tpl) = setup(&a, &lab, "terraform").await;

    // A clean stop does not wait for a confirmation that will not come.
    let t1 = launch(&a, p, tpl, json!({})).await;
    wait_status(&a, p, t1, &["waiting_confirmation"]).await;
    let started = Instant::now();
    let log = server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown waited {:?}",
        started.elapsed()
    );
    let server = lab.serve();
    let a = admin(&server).await;
    assert_eq!(
        finished(&a, p, t1).await,
        "error",
        "{}",
        String::from_utf8_lossy(&log)
    );
    assert!(
        output(&a, p, t1)
            .await
            .contains("stopped: server shut down")
    );

    // A crash: the restart ends it.
    let t2 = launch(&a, p, tpl, json!({})).await;
    wait_status(&a, p, t2, &["waiting_confirmation"]).await;
    server.kill_9();
    let server = lab.serve();
    let a = admin(&server).await;
    assert_eq!(finished(&a, p, t2).await, "error");
    assert!(
        output(&a, p, t2)
            .await
            .contains("interrupted: server restarted")
    );
    assert!(!Path::new(&lab.plan_file(t2)).exists());
    let r = a
        .post(&at(p, &format!("tasks/{t2}/confirm")), json!({}))
        .await;
    assert_eq!(r.status, 400);
    server.stop();
}

#[tokio::test]
async fn an_apps_path_and_args_reach_the_command_line() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, tpl) = setup(&a, &lab, "tofu").await;
    let custom = lab.path("bin/tofu-custom").display().to_string();
    let r = a
        .put(
            "/api/apps/tofu",
            json!({"path": custom, "args": ["-chdir=.", "-x=two words"]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let t = launch(&a, p, tpl, json!({"auto_approve": true})).await;
    assert_eq!(
        finished(&a, p, t).await,
        "success",
        "{}",
        output(&a, p, t).await
    );
    let plan = lab.plan_file(t);
    let out = format!("-out={plan}");
    let pre = ["-chdir=.", "-x=two words"];
    let with = |rest: &[&str]| -> Vec<String> { argv("tofu-custom", &[&pre[..], rest].concat()) };
    assert_eq!(
        lab.take_calls(),
        [
            with(&["init", "-input=false"]),
            with(&[
                "plan",
                "-input=false",
                "-detailed-exitcode",
                &out,
                "-var",
                "region=eu-west-1"
            ]),
            with(&["apply", "-input=false", &plan]),
        ]
    );

    // A deactivated app: its templates can no longer be launched.
    let r = a
        .post("/api/apps/tofu/active", json!({"active": false}))
        .await;
    assert_eq!(r.status, 204);
    let r = a.post(&at(p, "tasks"), json!({"template_id": tpl})).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("tofu"), "{}", r.text());
    server.stop();
}

#[tokio::test]
async fn confirm_and_reject_refuse_bad_requests() {
    let lab = Lab::new();
    let server = lab.serve();
    let a = admin(&server).await;
    let (p, tpl) = setup(&a, &lab, "terraform").await;
    let t = launch(&a, p, tpl, json!({})).await;
    wait_status(&a, p, t, &["waiting_confirmation"]).await;
    // A guest member.
    let r = a
        .post(
            "/api/users",
            json!({"name": "g", "username": "g", "email": "g@example.com",
                   "password": "pw-of-guest"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = a
        .post(
            &at(p, "users"),
            json!({"user_id": id_of(&r.json()), "role": "guest"}),
        )
        .await;
    assert_eq!(r.status, 204);
    let mut guest = server.client();
    assert_eq!(guest.login("g", "pw-of-guest").await.status, 204);
    let anonymous = server.client();
    for action in ["confirm", "reject"] {
        let url = at(p, &format!("tasks/{t}/{action}"));
        assert_eq!(anonymous.post(&url, json!({})).await.status, 401);
        assert_eq!(guest.post(&url, json!({})).await.status, 403);
        let unknown = at(p, &format!("tasks/{}/{action}", t + 1000));
        assert_eq!(a.post(&unknown, json!({})).await.status, 404);
        let r = a.post(&url, json!([1])).await;
        assert_eq!(r.status, 400, "a body that is no object: {}", r.text());
        let big = vec![b' '; 8193];
        let r = a
            .raw(
                "POST",
                &url,
                Some(big),
                &[("content-type", "application/json")],
            )
            .await;
        assert_eq!(r.status, 413);
    }
    // None of that changed the task.
    let task = ok_json(&a, &at(p, &format!("tasks/{t}"))).await;
    assert_eq!(task["status"], "waiting_confirmation");
    // A waiting task is active: it cannot be deleted.
    let r = a.delete(&at(p, &format!("tasks/{t}"))).await;
    assert_eq!(r.status, 400);
    let r = a
        .raw("POST", &at(p, &format!("tasks/{t}/reject")), None, &[])
        .await;
    assert_eq!(r.status, 204, "an empty body is fine: {}", r.text());
    assert_eq!(finished(&a, p, t).await, "stopped");
    server.stop();
}
