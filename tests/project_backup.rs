//! Project backup and restore in upstream's format (API.md §6.9, §12.6) through a real server:
//! a project with every resource kind Forge has round-trips (backup → restore → backup gives
//! the same document), no secret ever appears in a backup, restored keys are flagged as
//! needing their secret, and every class of bad document is refused with a 400 naming the
//! object, with nothing created. Plus 401, 404 and 413.

mod common;

use common::{Client, TestServer, at, id_of, new_project, ok_json};
use serde_json::{Value, json};

/// Every secret the fixture project holds: none may appear in a backup.
const SECRETS: &[&str] = &[
    "SECRET-PRIVATE-KEY-7f3a",
    "SECRET-PASSPHRASE-19bc",
    "SECRET-VAULT-PASSWORD-55de",
    "SECRET-STRING-KEY-0a0a",
    "SECRET-ENV-PASSWORD-e1e1",
    "SECRET-VAR-VALUE-4242",
    "SECRET-ENV-VALUE-9999",
];

async fn post_ok(a: &Client, path: &str, body: Value) -> Option<u64> {
    let r = a.post(path, body).await;
    assert!(
        r.status == 201 || r.status == 204,
        "POST {path}: {}",
        r.text()
    );
    (r.status == 201).then(|| id_of(&r.json()))
}

/// The id of the object named `name` in a project list.
async fn id_named(a: &Client, p: u64, list: &str, name: &str) -> u64 {
    let items = ok_json(a, &at(p, list)).await;
    let item = items
        .as_array()
        .expect("a list")
        .iter()
        .find(|i| i["name"] == name || i["title"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {items}"));
    id_of(item)
}

/// A project with every resource kind and field Forge has; returns its id.
async fn full_project(a: &Client) -> u64 {
    let r = a
        .post(
            "/api/projects",
            json!({"name": "Round trip", "alert": true, "alert_chat": "ops-room",
                   "max_parallel_tasks": 3, "type": ""}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let p = id_of(&r.json());
    let none = id_named(a, p, "keys", "None").await;

    // Keys of every type.
    post_ok(
        a,
        &at(p, "keys"),
        json!({"name": "deploy ssh", "type": "ssh",
        "ssh": {"login": "git", "passphrase": SECRETS[1], "private_key": SECRETS[0]}}),
    )
    .await;
    post_ok(
        a,
        &at(p, "keys"),
        json!({"name": "vault pass", "type": "login_password",
        "login_password": {"login": "ansible", "password": SECRETS[2]}}),
    )
    .await;
    post_ok(
        a,
        &at(p, "keys"),
        json!({"name": "token", "type": "string",
        "string": SECRETS[3]}),
    )
    .await;
    post_ok(
        a,
        &at(p, "keys"),
        json!({"name": "anonymous", "type": "none"}),
    )
    .await;
    let ssh = id_named(a, p, "keys", "deploy ssh").await;
    let vault = id_named(a, p, "keys", "vault pass").await;

    // Repositories: a remote one over SSH, a local one over the `None` key.
    post_ok(
        a,
        &at(p, "repositories"),
        json!({"name": "app",
        "git_url": "https://example.com/app.git", "git_branch": "main", "ssh_key_id": ssh}),
    )
    .await;
    post_ok(
        a,
        &at(p, "repositories"),
        json!({"name": "local", "git_url": "/srv/local",
        "ssh_key_id": none}),
    )
    .await;
    let app_repo = id_named(a, p, "repositories", "app").await;
    let local_repo = id_named(a, p, "repositories", "local").await;

    // Inventories of both kinds (static text, a file in a repository).
    let hosts = post_ok(
        a,
        &at(p, "inventory"),
        json!({"name": "hosts", "type": "static",
        "inventory": "[web]\nlocalhost ansible_connection=local\n",
        "ssh_key_id": ssh, "become_key_id": vault}),
    )
    .await
    .expect("inventory id");
    post_ok(
        a,
        &at(p, "inventory"),
        json!({"name": "yaml hosts", "type": "static-yaml",
        "inventory": "all:\n  hosts:\n    localhost: {}\n"}),
    )
    .await;
    post_ok(
        a,
        &at(p, "inventory"),
        json!({"name": "from repo", "type": "file",
        "inventory": "inventory/hosts.ini", "repository_id": app_repo}),
    )
    .await;

    // Environments with variables, a password and secrets of both kinds.
    post_ok(
        a,
        &at(p, "environment"),
        json!({"name": "prod", "json": "{\"region\": \"eu\"}",
        "env": "{\"MODE\": \"prod\"}", "password": SECRETS[4],
        "secrets": [
            {"type": "var", "name": "db_pass", "secret": SECRETS[5], "operation": "create"},
            {"type": "env", "name": "API_TOKEN", "secret": SECRETS[6], "operation": "create"}]}),
    )
    .await;
    let prod = id_named(a, p, "environment", "prod").await;

    // Views.
    let build_view = post_ok(a, &at(p, "views"), json!({"title": "Build", "position": 1}))
        .await
        .expect("view id");
    let deploy_view = post_ok(
        a,
        &at(p, "views"),
        json!({"title": "Deploy", "position": 2}),
    )
    .await
    .expect("view id");

    // Templates: a build template with everything, a deploy template of it, a plain one.
    let build = post_ok(
        a,
        &at(p, "templates"),
        json!({"name": "build app", "type": "build",
        "start_version": "1.0.0", "app": "ansible", "playbook": "build.yml",
        "inventory_id": hosts, "repository_id": app_repo, "environment_id": prod,
        "view_id": build_view, "arguments": "[\"-v\"]", "allow_override_args_in_task": true,
        "description": "builds the app", "git_branch": "release",
        "suppress_success_alerts": true, "max_duration_secs": 600,
        "vaults": [{"vault_key_id": vault, "name": "prod"}, {"vault_key_id": vault}],
        "survey_vars": [
            {"name": "region", "title": "Region", "description": "where", "type": "enum",
             "required": true, "values": [{"name": "Europe", "value": "eu"},
                                          {"name": "Asia", "value": "ap"}]},
            {"name": "count", "title": "Count", "type": "int"},
            {"name": "pw", "title": "Password", "type": "secret"}]}),
    )
    .await
    .expect("template id");
    post_ok(
        a,
        &at(p, "templates"),
        json!({"name": "deploy app", "type": "deploy",
        "build_template_id": build, "autorun": true, "app": "bash", "playbook": "deploy.sh",
        "repository_id": local_repo, "view_id": deploy_view}),
    )
    .await;
    post_ok(
        a,
        &at(p, "templates"),
        json!({"name": "plain", "app": "python",
        "playbook": "run.py", "repository_id": local_repo}),
    )
    .await;

    // A schedule of the plain template, in a zone, with launch options.
    let plain = id_named(a, p, "templates", "plain").await;
    post_ok(
        a,
        &at(p, "schedules"),
        json!({"name": "nightly", "template_id": plain, "cron_format": "30 2 * * *",
               "timezone": "Europe/Berlin", "task_params": {"message": "from backup"},
               "catch_up": true}),
    )
    .await;

    // An inventory held by a template.
    post_ok(
        a,
        &at(p, "inventory"),
        json!({"name": "workspace", "type": "static",
        "inventory": "localhost", "holder_id": build}),
    )
    .await;
    p
}

async fn backup(c: &Client, p: u64) -> (Value, String) {
    let r = c.get(&at(p, "backup")).await;
    assert_eq!(r.status, 200, "backup: {}", r.text());
    (r.json(), r.text())
}

async fn project_list(a: &Client) -> Value {
    ok_json(a, "/api/projects").await
}

#[tokio::test]
async fn a_full_project_round_trips_without_secrets() {
    let server = TestServer::start().await;
    let a = server.admin().await;
    let p = full_project(&a).await;
    let (doc, text) = backup(&a, p).await;

    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the backup: {text}"
        );
    }
    assert!(!text.contains("\"id\""), "no ids: {text}");
    assert!(!text.contains("_id\""), "no ids: {text}");
    // Upstream's shape: every list, references by name.
    for kind in [
        "templates",
        "repositories",
        "keys",
        "views",
        "inventories",
        "environments",
        "integrations",
        "integration_aliases",
        "schedules",
    ] {
        assert!(doc[kind].is_array(), "{kind} in {doc}");
    }
    assert_eq!(
        doc["meta"],
        json!({"name": "Round trip", "alert": true, "alert_chat": "ops-room",
               "max_parallel_tasks": 3, "type": ""})
    );
    assert_eq!(
        doc["keys"],
        json!([{"name": "None", "type": "none"}, {"name": "anonymous", "type": "none"},
               {"name": "deploy ssh", "type": "ssh"}, {"name": "token", "type": "string"},
               {"name": "vault pass", "type": "login_password"}])
    );
    let build = &doc["templates"][0];
    assert_eq!(build["name"], "build app");
    assert_eq!(build["repository"], "app");
    assert_eq!(build["inventory"], "hosts");
    assert_eq!(build["environment"], "prod");
    assert_eq!(build["view"], "Build");
    assert_eq!(
        build["vaults"],
        json!([{"name": "prod", "type": "password", "vault_key": "vault pass"},
               {"type": "password", "vault_key": "vault pass"}])
    );
    assert_eq!(build["survey_vars"].as_array().map(Vec::len), Some(3));
    assert_eq!(doc["templates"][1]["build_template"], "build app");
    assert_eq!(
        doc["schedules"],
        json!([{"name": "nightly", "template": "plain", "cron_format": "30 2 * * *",
                "active": true, "type": "", "delete_after_run": false,
                "task_params": {"message": "from backup"}, "timezone": "Europe/Berlin",
                "catch_up": true}])
    );
    let prod = &doc["environments"][1];
    assert_eq!(
        prod["secrets"],
        json!([{"type": "env", "name": "API_TOKEN"}, {"type": "var", "name": "db_pass"}])
    );
    assert!(prod.get("password").is_none(), "{prod}");

    // A restore creates a project: a user who may not create one gets upstream's 401 and
    // nothing is made.
    let (_, plain) = server.user("plain", false).await;
    let before = project_list(&a).await;
    let r = plain.post("/api/projects/restore", doc.clone()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(project_list(&a).await, before);

    // Another administrator restores it: a new project they own, with the same name.
    let (_, user) = server.user("restorer", true).await;
    let r = user.post("/api/projects/restore", doc.clone()).await;
    assert_eq!(r.status, 200, "restore: {}", r.text());
    let restored = r.json();
    let q = id_of(&restored);
    assert_ne!(q, p);
    assert_eq!(restored["name"], "Round trip");
    assert_eq!(restored["alert_chat"], "ops-room");
    assert_eq!(restored["max_parallel_tasks"], 3);
    assert_eq!(ok_json(&user, &at(q, "role")).await["role"], "owner");
    assert_eq!(
        project_list(&a).await.as_array().map(Vec::len),
        before.as_array().map(|b| b.len() + 1)
    );

    // The copy backs up to the same document.
    let (copy, copy_text) = backup(&user, q).await;
    assert_eq!(copy, doc, "original: {text}\ncopy: {copy_text}");

    // Restored keys lack their secrets and say so; `none` keys need nothing; the original's
    // keys keep upstream's exact shape.
    let keys = ok_json(&user, &at(q, "keys")).await;
    for k in keys.as_array().expect("keys") {
        let needs = k["type"] != "none";
        assert_eq!(k.get("needs_secret"), needs.then_some(&json!(true)), "{k}");
    }
    for k in ok_json(&a, &at(p, "keys")).await.as_array().expect("keys") {
        assert!(k.get("needs_secret").is_none(), "{k}");
    }
    // The restored environment keeps its secrets' names, and the restore left an event.
    let envs = ok_json(&user, &at(q, "environment")).await;
    let prod = envs
        .as_array()
        .expect("environments")
        .iter()
        .find(|e| e["name"] == "prod")
        .expect("prod");
    assert_eq!(prod["secrets"].as_array().map(Vec::len), Some(2), "{prod}");
    let events = ok_json(&user, &at(q, "events")).await;
    assert!(
        events.to_string().contains("restored from a backup"),
        "{events}"
    );

    // Setting a restored key's secret clears the flag.
    let token = id_named(&user, q, "keys", "token").await;
    let r = user
        .put(
            &at(q, &format!("keys/{token}")),
            json!({"id": token, "name": "token", "type": "string", "string": "new",
                   "override_secret": true}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let k = ok_json(&user, &at(q, &format!("keys/{token}"))).await;
    assert!(k.get("needs_secret").is_none(), "{k}");
}

/// Any member, guests too, may read a backup (API.md §6.9); others never learn the project.
#[tokio::test]
async fn who_reads_a_backup() {
    let server = TestServer::start().await;
    let a = server.admin().await;
    let p = new_project(&a, "members only").await;
    let (guest_id, guest) = server.user("guest", false).await;
    let (_, outsider) = server.user("outsider", false).await;
    let r = a
        .post(
            &at(p, "users"),
            json!({"user_id": guest_id, "role": "guest"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(guest.get(&at(p, "backup")).await.status, 200);
    outsider.get(&at(p, "backup")).await.assert_error(404);
    a.get(&at(p + 100, "backup")).await.assert_error(404);
    server
        .client()
        .get(&at(p, "backup"))
        .await
        .assert_error(401);
    server
        .client()
        .post("/api/projects/restore", json!({"meta": {"name": "x"}}))
        .await
        .assert_error(401);
}

/// A minimal document, as a hand-written or an upstream one may be: unknown fields are
/// ignored, and the project gets its `None` key and `Empty` environment like any new one.
#[tokio::test]
async fn a_minimal_document_restores_like_a_new_project() {
    let server = TestServer::start().await;
    let a = server.admin().await;
    let doc = json!({
        "meta": {"name": "from upstream", "alert": false, "max_parallel_tasks": 0},
        "keys": [{"name": "git", "type": "ssh", "owner": ""}],
        "repositories": [{"name": "site", "git_url": "git@example.com:site.git",
                          "git_branch": "main", "ssh_key": "git"}],
        "templates": [{"name": "deploy", "playbook": "site.yml", "app": "bash",
                       "repository": "site", "survey_vars": [{"name": "v", "title": "V",
                       "default_value": "x"}], "tasks": 12}],
        "integration_aliases": null
    });
    let r = a.post("/api/projects/restore", doc).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = id_of(&r.json());
    let keys = ok_json(&a, &at(q, "keys")).await;
    let names: Vec<&str> = keys
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["git", "None"]);
    let envs = ok_json(&a, &at(q, "environment")).await;
    assert_eq!(envs[0]["name"], "Empty");
    assert_eq!(envs[0]["json"], "{}");
}

/// The body limit of the bad-document server (a full backup is a few KiB).
const LIMIT: usize = 64 * 1024;

/// Every class of bad document: 400 naming the object, and no project, key or event left.
#[tokio::test]
async fn bad_documents_create_nothing() {
    let server = TestServer::start_with(|c| c.max_body_bytes = LIMIT).await;
    let a = server.admin().await;
    let p = full_project(&a).await;
    let (good, _) = backup(&a, p).await;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut doc = good.clone();
        edit(&mut doc);
        doc
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        // Unknown references.
        (
            "unknown repository",
            with(&|d| d["templates"][1]["repository"] = json!("x")),
            r#"templates[1] "deploy app": repository: no repository named "x""#,
        ),
        (
            "unknown key",
            with(&|d| d["repositories"][0]["ssh_key"] = json!("gone")),
            r#"repositories[0] "app": ssh_key: no key named "gone""#,
        ),
        (
            "unknown build template",
            with(&|d| d["templates"][1]["build_template"] = json!("nope")),
            r#"templates[1] "deploy app": build_template: no template named "nope""#,
        ),
        (
            "unknown view",
            with(&|d| d["templates"][0]["view"] = json!("Nowhere")),
            r#"templates[0] "build app": view: no view named "Nowhere""#,
        ),
        (
            "unknown vault key",
            with(&|d| d["templates"][0]["vaults"][1]["vault_key"] = json!("v")),
            r#"templates[0] "build app": vaults[1].vault_key: no key named "v""#,
        ),
        (
            "unknown holder",
            with(&|d| d["inventories"][2]["holder"] = json!("t")),
            r#"inventories[2] "workspace": holder: no template named "t""#,
        ),
        // Ambiguous names.
        (
            "duplicate repository",
            with(&|d| d["repositories"][1]["name"] = json!("app")),
            r#"repositories[1] "app": another repository has this name (repositories[0])"#,
        ),
        (
            "duplicate view title",
            with(&|d| d["views"][1]["title"] = json!("Build")),
            r#"views[1] "Build": another view has this name (views[0])"#,
        ),
        // Wrong JSON types.
        (
            "not an object",
            json!([good.clone()]),
            "request body must be a JSON object",
        ),
        (
            "null",
            Value::Null,
            "a project backup must be a JSON object, not null",
        ),
        (
            "meta field",
            with(&|d| d["meta"]["alert"] = json!("yes")),
            "meta: `alert`: invalid type: string",
        ),
        (
            "list",
            with(&|d| d["keys"] = json!({"name": "k"})),
            "keys: must be an array, not an object",
        ),
        (
            "nested field",
            with(&|d| d["templates"][0]["survey_vars"][0]["required"] = json!("yes")),
            r#"templates[0] "build app": `survey_vars`: required: invalid type: string"#,
        ),
        // Missing required fields.
        (
            "no meta",
            with(&|d| d["meta"] = Value::Null),
            "meta: required",
        ),
        (
            "no key type",
            with(&|d| d["keys"][2] = json!({"name": "deploy ssh"})),
            r#"keys[2] "deploy ssh": invalid access key type: """#,
        ),
        (
            "no repository",
            with(&|d| {
                d["templates"][2]
                    .as_object_mut()
                    .expect("a template")
                    .remove("repository");
            }),
            r#"templates[2] "plain": repository: required"#,
        ),
        // Refused by the resources' own rules, inside the transaction (after the project
        // and its first objects were written in it).
        (
            "no playbook",
            with(&|d| d["templates"][2]["playbook"] = json!("")),
            r#"templates[2] "plain": template playbook can not be empty"#,
        ),
        (
            "bad git url",
            with(&|d| d["repositories"][1]["git_url"] = json!("-oProxyCommand=x")),
            r#"repositories[1] "local": "#,
        ),
        (
            "vault key of the wrong type",
            with(&|d| d["templates"][0]["vaults"][0]["vault_key"] = json!("deploy ssh")),
            r#"templates[0] "build app": vaults.vault_key_id: a vault password must be a login_password key"#,
        ),
        (
            "bad environment variables",
            with(&|d| d["environments"][1]["json"] = json!("[1]")),
            r#"environments[1] "prod": Extra variables must be valid JSON"#,
        ),
        (
            "bad secret name",
            with(&|d| d["environments"][1]["secrets"][0]["name"] = json!("1 bad")),
            r#"environments[1] "prod": secret name "1 bad" is not a valid environment variable name"#,
        ),
        (
            "schedule of an unknown template",
            with(&|d| d["schedules"][0]["template"] = json!("gone")),
            r#"schedules[0] "nightly": template: no template named "gone""#,
        ),
        (
            "bad cron expression",
            with(&|d| d["schedules"][0]["cron_format"] = json!("61 * * * *")),
            r#"schedules[0] "nightly": Cron: "#,
        ),
    ];
    let before = project_list(&a).await;
    let events_before = ok_json(&a, "/api/events").await;
    for (what, doc, want) in cases {
        let r = a.post("/api/projects/restore", doc).await;
        let msg = r.assert_error(400);
        assert!(msg.starts_with(want), "{what}: {msg}");
        assert_eq!(project_list(&a).await, before, "{what}: a project was left");
    }
    assert_eq!(ok_json(&a, "/api/events").await, events_before);

    // A body over the server's limit: 413, nothing created.
    let big = format!(
        "{{\"meta\": {{\"name\": \"big\"}}, \"x\": \"{}\"}}",
        "a".repeat(LIMIT)
    );
    let r = a
        .raw(
            "POST",
            "/api/projects/restore",
            Some(big.into_bytes()),
            &[("content-type", "application/json")],
        )
        .await;
    r.assert_error(413);
    assert_eq!(project_list(&a).await, before);

    // The good document itself is accepted.
    let r = a.post("/api/projects/restore", good).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A task never runs with a secret the backup could not carry: it fails saying which one,
/// and runs once the secret is set.
#[tokio::test]
async fn a_task_needs_the_restored_secrets_set() {
    let server = TestServer::start().await;
    let a = server.admin().await;
    let repo = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        repo.path().join("run.sh"),
        "#!/usr/bin/env bash\necho \"token=$API_TOKEN\"\n",
    )
    .expect("write script");
    let doc = json!({
        "meta": {"name": "needs secrets"},
        "repositories": [{"name": "local", "git_url": repo.path(), "ssh_key": "None"}],
        "environments": [{"name": "prod", "json": "{}",
                          "secrets": [{"type": "env", "name": "API_TOKEN"}]}],
        "templates": [{"name": "run", "app": "bash", "playbook": "run.sh",
                       "repository": "local", "environment": "prod"}]
    });
    let r = a.post("/api/projects/restore", doc).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = id_of(&r.json());
    let template = id_named(&a, q, "templates", "run").await;

    let run = |a: Client| async move {
        let task = post_ok(&a, &at(q, "tasks"), json!({"template_id": template}))
            .await
            .expect("task id");
        for _ in 0..500 {
            let t = ok_json(&a, &at(q, &format!("tasks/{task}"))).await;
            if ["success", "error", "stopped"].contains(&t["status"].as_str().unwrap_or("")) {
                let out = ok_json(&a, &at(q, &format!("tasks/{task}/output"))).await;
                return (
                    t["status"].as_str().unwrap_or_default().to_owned(),
                    out.to_string(),
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("task {task} did not finish");
    };
    let (status, out) = run(a.clone()).await;
    assert_eq!(status, "error", "{out}");
    assert!(
        out.contains(r#"environment secret \"API_TOKEN\" has no value yet"#),
        "{out}"
    );

    let env = id_named(&a, q, "environment", "prod").await;
    let prod = ok_json(&a, &at(q, &format!("environment/{env}"))).await;
    let secret = id_of(&prod["secrets"][0]);
    let r = a
        .put(
            &at(q, &format!("environment/{env}")),
            json!({"id": env, "name": "prod", "json": "{}",
                   "secrets": [{"id": secret, "operation": "update", "secret": "filled"}]}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (status, out) = run(a.clone()).await;
    assert_eq!(status, "success", "{out}");
    assert!(out.contains("token=filled"), "{out}");
}
