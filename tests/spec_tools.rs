//! `docs/openapi.json` checked by outside tools, so the published contract cannot drift from
//! the server: `openapi-spec-validator` proves the document is valid OpenAPI 3.1, and
//! schemathesis fuzzes a real `forge serve` process (every `GET` and `POST` operation, and
//! every method of issue 12's operations, over real objects of a small fixture project) and
//! fails on any 5xx, any status, content type or body the document does not describe.
//!
//! The tools come from PATH or from the venv `.ci/install-tools.sh` makes (`.ci/venv/bin`).
//! Without them the tests fail in CI (`CI=true`) and are skipped elsewhere.
#![warn(clippy::pedantic)]

mod common;

use common::id_by_name;
use common::process::ServerProcess;
use common::tools;
use common::{ADMIN, ADMIN_PASSWORD, Client, at, id_of, ok_json};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn spec_path() -> PathBuf {
    Path::new(MANIFEST_DIR).join("docs/openapi.json")
}

#[test]
fn spec_validates() {
    let Some(validator) = tools::require("openapi-spec-validator", "the spec check") else {
        return;
    };
    let out = Command::new(&validator)
        .arg(spec_path())
        .output()
        .expect("run openapi-spec-validator");
    assert!(out.status.success(), "{}", tools::show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        tools::show(&out)
    );
}

/// The script the fixture template runs.
const SCRIPT: &str = "#!/usr/bin/env bash\necho \"hello from the spec fixture: $*\"\n";

async fn created(c: &Client, path: &str, body: Value, status: u16) -> Option<Value> {
    let r = c.post(path, body).await;
    assert_eq!(r.status, status, "POST {path}: {}", r.text());
    (status == 201).then(|| r.json())
}

/// One of everything the spec's paths name, so schemathesis (and the spec's examples, which
/// use id 1) reach real objects: a project with a login/password key, a local-path repository
/// holding a bash script, a static inventory, an environment, a `bash` template, a view, one
/// finished task, a schedule, and a second user who is a guest member. Returns the project id.
async fn fixture(a: &Client, repo: &Path) -> u64 {
    let p = id_of(
        &created(a, "/api/projects", json!({"name": "Spec"}), 201)
            .await
            .expect("project"),
    );
    let none = id_by_name(a, &at(p, "keys"), "None").await;
    created(
        a,
        &at(p, "keys"),
        json!({"name": "vault", "type": "login_password", "project_id": p,
               "login_password": {"login": "ops", "password": "vault-pass"}}),
        204,
    )
    .await;
    created(
        a,
        &at(p, "repositories"),
        json!({"name": "scripts", "project_id": p, "ssh_key_id": none, "git_branch": "",
               "git_url": repo.display().to_string()}),
        204,
    )
    .await;
    let repository = id_by_name(a, &at(p, "repositories"), "scripts").await;
    let inventory = id_of(
        &created(
            a,
            &at(p, "inventory"),
            json!({"name": "local", "project_id": p, "type": "static",
                   "inventory": "localhost\n"}),
            201,
        )
        .await
        .expect("inventory"),
    );
    created(
        a,
        &at(p, "environment"),
        json!({"name": "Vars", "project_id": p, "json": "{\"greeting\":\"hi\"}",
               "env": "{\"MODE\":\"spec\"}",
               "secrets": [{"operation": "create", "type": "env", "name": "TOKEN",
                            "secret": "t0ken"}]}),
        204,
    )
    .await;
    let environment = id_by_name(a, &at(p, "environment"), "Vars").await;
    let template = id_of(
        &created(
            a,
            &at(p, "templates"),
            json!({"name": "Run", "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": repository, "inventory_id": inventory,
                   "environment_id": environment}),
            201,
        )
        .await
        .expect("template"),
    );
    view_and_schedule(a, p, template).await;
    integration(a, p, template).await;
    let task = id_of(
        &created(a, &at(p, "tasks"), json!({"template_id": template}), 201)
            .await
            .expect("task"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = ok_json(a, &at(p, &format!("tasks/{task}"))).await;
        if t["status"] == "success" {
            break;
        }
        assert!(
            Instant::now() < deadline
                && matches!(
                    t["status"].as_str(),
                    Some("waiting" | "starting" | "running")
                ),
            "fixture task did not succeed: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let guest = created(
        a,
        "/api/users",
        json!({"name": "Guest", "username": "guest", "email": "guest@example.com",
               "password": "guest-pass"}),
        201,
    )
    .await
    .expect("user");
    created(
        a,
        &at(p, "users"),
        json!({"user_id": id_of(&guest), "role": "guest"}),
        204,
    )
    .await;
    p
}

/// A build template with a deploy template that autoruns, one build and the deploy it
/// started, so that task lists and templates show a `build_task` and versions.
async fn build_and_deploy(a: &Client, p: u64) {
    let repository = id_by_name(a, &at(p, "repositories"), "scripts").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let build = id_of(
        &created(
            a,
            &at(p, "templates"),
            json!({"name": "Build", "project_id": p, "app": "bash", "playbook": "run.sh",
                   "repository_id": repository, "type": "build", "start_version": "1.0.0"}),
            201,
        )
        .await
        .expect("build template"),
    );
    created(
        a,
        &at(p, "templates"),
        json!({"name": "Deploy", "project_id": p, "app": "bash", "playbook": "run.sh",
               "repository_id": repository, "type": "deploy", "build_template_id": build,
               "autorun": true}),
        201,
    )
    .await
    .expect("deploy template");
    let build_task = id_of(
        &created(a, &at(p, "tasks"), json!({"template_id": build}), 201)
            .await
            .expect("build task"),
    );
    loop {
        let tasks = ok_json(a, &at(p, "tasks")).await;
        let deploy = tasks
            .as_array()
            .and_then(|l| l.iter().find(|t| t["build_task_id"] == build_task));
        if deploy.is_some_and(|d| d["status"] == "success") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fixture deploy did not succeed: {tasks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A view, and a schedule of `template` (issue 13) that fires at 02:30 UTC.
async fn view_and_schedule(a: &Client, p: u64, template: u64) {
    created(a, &at(p, "views"), json!({"title": "Tab"}), 201)
        .await
        .expect("view");
    let schedule = json!({"name": "nightly", "template_id": template, "cron_format": "30 2 * * *"});
    created(a, &at(p, "schedules"), schedule, 201)
        .await
        .expect("schedule");
}

/// An integration of `template` (issue 14) with a matcher, an extract value and an alias,
/// and a project-wide alias: id 1 of each, as the spec's examples name them.
async fn integration(a: &Client, p: u64, template: u64) {
    let i = id_of(
        &created(
            a,
            &at(p, "integrations"),
            json!({"name": "Push", "template_id": template, "searchable": true}),
            201,
        )
        .await
        .expect("integration"),
    );
    let part = |what: &str| at(p, &format!("integrations/{i}/{what}"));
    let matcher = json!({"name": "push", "match_type": "header", "method": "equals",
                         "key": "X-GitHub-Event", "value": "push"});
    let value = json!({"name": "branch", "value_source": "body", "body_data_type": "json",
                       "key": "ref", "variable": "branch"});
    for (what, body) in [
        ("matchers", matcher),
        ("values", value),
        ("aliases", json!({})),
    ] {
        created(a, &part(what), body, 201).await.expect(what);
    }
    created(a, &at(p, "integrations/aliases"), json!({}), 201)
        .await
        .expect("project alias");
}

/// The checks every response must pass. `use_after_free` and `ensure_resource_availability`
/// need `DELETE` (not run here); `positive_data_acceptance` would need the schema to encode
/// every business rule (references to existing objects, unique names); `unsupported_method`
/// and `allow_header_conformance` trip over the router for `/tasks/last`, where the
/// `DELETE /tasks/{task_id}` route matches too (so `DELETE` is routed and listed in `Allow`).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,\
                      negative_data_rejection,missing_required_header,ignored_auth";

/// Which operations a run covers.
#[derive(Clone, Copy)]
enum Scope {
    /// `GET` and `POST` operations except those that would end the session or change a
    /// password.
    ReadAndCreate,
    /// Every method of the paths issue 12 added (views, options, apps, admin tasks, raw
    /// output, stats, confirm/reject, project backup and restore): updates and deletes too.
    Issue12,
    /// Every method of the schedule paths (issue 13).
    Schedules,
    /// Every method of the integration paths and the receiver (issue 14).
    Integrations,
    /// The alert test route (issue 14).
    Alerts,
    /// Two-factor login (issue 16): enable, QR code, disable, verify and recovery.
    Totp,
}

/// The paths of the issue-12 operations, as a schemathesis path regex.
const ISSUE_12_PATHS: &str = r"^/api/(apps.*|options|tasks(/\{task_id\})?|projects/restore|project/\{project_id\}/(backup|views.*|tasks/\{task_id\}/(raw_output|confirm|reject)|templates/\{template_id\}/stats))$";

/// The paths of the schedule operations (issue 13).
const SCHEDULE_PATHS: &str =
    r"^/api/project/\{project_id\}/(schedules.*|templates/\{template_id\}/schedules)$";

/// The paths of the integration operations and the receiver (issue 14).
const INTEGRATION_PATHS: &str =
    r"^/api/(integrations/\{integration_alias\}|project/\{project_id\}/integrations.*)$";
/// The alert operations (issue 14).
const ALERT_PATHS: &str = r"^/api/project/\{project_id\}/notifications/test$";
/// The two-factor login operations (issue 16).
const TOTP_PATHS: &str = r"^/api/(auth/(verify|recovery)|users/\{user_id\}/2fas/totp.*)$";

/// Runs `st run` against the server's own `/api/openapi.json` as the holder of `token` over
/// the operations of `scope`,
/// a fixed seed and no example database (repeatable), one worker (`ast.parse` of `CPython` 3.11,
/// which hypothesis calls, is not thread-safe), a `JUnit` report in `target/test-artifacts`.
/// Asserts success, printing schemathesis' output and the server log otherwise.
fn run_schemathesis(
    st: &Path,
    server: &ServerProcess,
    token: &str,
    name: &str,
    scope: Scope,
    phases: &str,
    max_examples: u32,
) {
    let report_dir = Path::new(MANIFEST_DIR).join("target/test-artifacts");
    std::fs::create_dir_all(&report_dir).expect("report dir");
    let junit = report_dir.join(format!("{name}.xml"));
    let _ = std::fs::remove_file(&junit);
    let started = Instant::now();
    let mut cmd = Command::new(st);
    cmd.arg("run")
        .arg(format!("http://{}/api/openapi.json", server.addr))
        .args(["--header", &format!("Authorization: Bearer {token}")]);
    match scope {
        Scope::ReadAndCreate => cmd
            .args(["--include-method", "GET", "--include-method", "POST"])
            .args(["--exclude-operation-id", "logout"])
            .args(["--exclude-operation-id", "setUserPassword"]),
        Scope::Issue12 => cmd.args(["--include-path-regex", ISSUE_12_PATHS]),
        Scope::Schedules => cmd.args(["--include-path-regex", SCHEDULE_PATHS]),
        Scope::Integrations => cmd.args(["--include-path-regex", INTEGRATION_PATHS]),
        Scope::Alerts => cmd.args(["--include-path-regex", ALERT_PATHS]),
        Scope::Totp => cmd.args(["--include-path-regex", TOTP_PATHS]),
    };
    let out = cmd
        .args(["--checks", CHECKS])
        .args(["--phases", phases])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--workers", "1", "--seed", "20250521"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "20", "--wait-for-schema", "10"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .args(["--no-color", "--output-truncate", "false"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis ({name}) found problems (report: {}):\n{}\n--- server log ---\n{}",
        junit.display(),
        tools::show(&out),
        String::from_utf8_lossy(&server.log())
    );
    let summary = stdout
        .split_once("SUMMARY")
        .map_or(stdout.as_ref(), |(_, rest)| rest);
    println!("schemathesis ({name}) passed in {elapsed:?}:\nSUMMARY{summary}");
    assert!(
        stdout.contains(" passed") && stdout.contains("Tested: "),
        "schemathesis ({name}) tested nothing:\n{}",
        tools::show(&out)
    );
    assert!(junit.is_file(), "no JUnit report at {}", junit.display());
}

/// A server with the fixture project (id 1, as the spec's examples name it), its temp dirs
/// (kept alive by the caller) and an administrator's API token.
struct Fuzzed {
    server: ServerProcess,
    admin_token: String,
    _dirs: [tempfile::TempDir; 2],
}

async fn fuzzed_server() -> Fuzzed {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    std::fs::write(repo.path().join("run.sh"), SCRIPT).expect("write script");
    // One alert channel (issue 14) whose endpoint refuses connections, so that the alert
    // test route answers a channel's failure, not just `{}`. Fixture projects have alerts
    // off: no task of theirs sends anything.
    // Tasks run here even once the fuzzer has created remote runners (with the default
    // `auto` they would wait for a runner that never polls, and a followed task's output
    // would never end).
    let server = ServerProcess::start(
        &dir.path().join("forge.redb"),
        &[
            ("FORGE_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            ("FORGE_LOCAL_RUNNER", "on"),
        ],
    );
    let mut admin = Client::new(server.addr);
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let admin_token = admin.new_token().await;
    let project = fixture(&admin, repo.path()).await;
    assert_eq!(project, 1, "the spec's examples name project 1");
    build_and_deploy(&admin, project).await;
    Fuzzed {
        server,
        admin_token,
        _dirs: [dir, repo],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_errors() {
    let Some(st) = tools::require("st", "schemathesis") else {
        return;
    };
    let Fuzzed {
        server,
        admin_token,
        _dirs,
    } = fuzzed_server().await;
    let mut guest = Client::new(server.addr);
    assert_eq!(guest.login("guest", "guest-pass").await.status, 204);
    let guest_token = guest.new_token().await;

    // The administrator may do everything: every success shape, including the stateful
    // phase, which chains operations over the objects earlier responses name.
    run_schemathesis(
        &st,
        &server,
        &admin_token,
        "schemathesis",
        Scope::ReadAndCreate,
        "examples,coverage,fuzzing,stateful",
        50,
    );
    // A guest member of project 1: the denials (403 in the project, 401 on user routes, 403
    // on admin routes) and the reduced user list.
    run_schemathesis(
        &st,
        &server,
        &guest_token,
        "schemathesis-guest",
        Scope::ReadAndCreate,
        "examples,coverage,fuzzing",
        15,
    );
}

/// Issue 12's operations with every method (their updates and deletes too), on a server of
/// their own: a delete there cannot take a fixture object from the other runs.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_over_the_issue_12_operations() {
    every_method_of("schemathesis-issue-12", Scope::Issue12).await;
}

/// Issue 13's schedule operations with every method, on a server of their own.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_over_the_schedule_operations() {
    every_method_of("schemathesis-schedules", Scope::Schedules).await;
}

/// Issue 14's integration operations (and the receiver) with every method, on a server of
/// their own.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_over_the_integration_operations() {
    every_method_of("schemathesis-integrations", Scope::Integrations).await;
}

/// The alert test route (issue 14), on a server of its own.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_over_the_alert_operations() {
    every_method_of("schemathesis-alerts", Scope::Alerts).await;
}

/// Issue 16's two-factor operations with every method (disabling too), on a server of their
/// own.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_over_the_totp_operations() {
    every_method_of("schemathesis-totp", Scope::Totp).await;
}

/// Every method of the operations of `scope`, on a fixture server of their own, with every
/// phase.
async fn every_method_of(name: &str, scope: Scope) {
    let Some(st) = tools::require("st", "schemathesis") else {
        return;
    };
    let f = fuzzed_server().await;
    run_schemathesis(
        &st,
        &f.server,
        &f.admin_token,
        name,
        scope,
        "examples,coverage,fuzzing,stateful",
        50,
    );
}
