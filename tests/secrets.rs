//! Secrets at rest (issue 3): after creating and updating an ssh key, a login_password key and
//! environment secrets through the real `forge` binary, none of the secret strings appears in
//! any response, in the server's log (at `trace`), or in the database file; and the server
//! refuses to start without the right server key.

mod common;

use common::process::{ServerProcess, capture, forge_serve};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN, Client, Resp, TestServer};
use serde_json::{Value, json};

/// The administrator's password, itself a secret that must not be logged or returned.
const ADMIN_PASSWORD: &str = "MARK-admin-password-e4c1";

// Every secret value below is a distinct marker; none is a substring of another.
const SSH_KEY_1: &str = "MARK-ssh-private-key-1-7f3a";
const SSH_PASS_1: &str = "MARK-ssh-passphrase-1-91bc";
const SSH_LOGIN_1: &str = "MARK-ssh-login-1-2d4e";
const LP_LOGIN_1: &str = "MARK-lp-login-1-5a0b";
const LP_PASS_1: &str = "MARK-lp-password-1-c3d2";
const ENV_SECRET_1: &str = "MARK-env-secret-1-88e1";
const VAR_SECRET_1: &str = "MARK-var-secret-1-0f9d";
const ENV_PASSWORD_1: &str = "MARK-env-password-1-6b7c";
const SSH_KEY_2: &str = "MARK-ssh-private-key-2-a1f0";
const SSH_PASS_2: &str = "MARK-ssh-passphrase-2-47d5";
const SSH_LOGIN_2: &str = "MARK-ssh-login-2-e2b8";
const LP_PASS_2: &str = "MARK-lp-password-2-19ca";
const ENV_SECRET_2: &str = "MARK-env-secret-2-d6f3";
const VAR_SECRET_2: &str = "MARK-var-secret-2-3e8a";
const ENV_PASSWORD_2: &str = "MARK-env-password-2-bb04";
/// Sent with `override_secret: false`: must be ignored, so never stored either.
const IGNORED: &str = "MARK-ignored-without-override-5d21";
/// Sent in requests the server rejects.
const REJECTED: &str = "MARK-rejected-request-7c6e";

const MARKERS: &[&str] = &[
    ADMIN_PASSWORD,
    SSH_KEY_1,
    SSH_PASS_1,
    SSH_LOGIN_1,
    LP_LOGIN_1,
    LP_PASS_1,
    ENV_SECRET_1,
    VAR_SECRET_1,
    ENV_PASSWORD_1,
    SSH_KEY_2,
    SSH_PASS_2,
    SSH_LOGIN_2,
    LP_PASS_2,
    ENV_SECRET_2,
    VAR_SECRET_2,
    ENV_PASSWORD_2,
    IGNORED,
    REJECTED,
];

fn private_key(marker: &str) -> String {
    format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{marker}\n-----END OPENSSH PRIVATE KEY-----\n")
}

/// `envs` after this test's own: the admin password is a marker, and logging is as verbose as
/// it gets, so a leak would show.
fn with_markers<'a>(envs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![
        ("FORGE_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("FORGE_LOG", "trace"),
    ];
    all.extend_from_slice(envs);
    all
}

/// `forge serve` with [`with_markers`].
fn start(db: &Path, envs: &[(&str, &str)]) -> ServerProcess {
    ServerProcess::start(db, &with_markers(envs))
}

/// Runs `forge serve` expecting it to exit by itself; returns (exit code, stderr+stdout).
fn serve_expecting_exit(db: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = forge_serve(db, &with_markers(envs))
        .spawn()
        .expect("spawn forge serve");
    let log = Arc::new(Mutex::new(Vec::new()));
    let err = capture(child.stderr.take().unwrap(), log.clone(), None);
    let out = capture(child.stdout.take().unwrap(), log.clone(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not refuse to start:\n{}",
                String::from_utf8_lossy(&log.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    err.join().unwrap();
    out.join().unwrap();
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    (status.code(), text)
}

/// A client that keeps every response it receives (status, headers and body).
struct Recorder {
    client: Client,
    seen: Vec<(String, Vec<u8>)>,
}

impl Recorder {
    async fn send(&mut self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let r = self
            .client
            .raw(method, path, bytes, &[("content-type", "application/json")])
            .await;
        let mut record = format!("{} {}\n", r.status, r.headers.len()).into_bytes();
        for (name, value) in &r.headers {
            record.extend_from_slice(name.as_str().as_bytes());
            record.extend_from_slice(b": ");
            record.extend_from_slice(value.as_bytes());
            record.push(b'\n');
        }
        record.extend_from_slice(&r.body);
        self.seen.push((format!("{method} {path}"), record));
        r
    }

    async fn get(&mut self, path: &str) -> Resp {
        let r = self.send("GET", path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r
    }

    async fn ok(&mut self, method: &str, path: &str, body: Value, status: u16) -> Resp {
        let r = self.send(method, path, Some(body)).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        r
    }

    async fn rejected(&mut self, method: &str, path: &str, body: Value) -> Resp {
        let r = self.send(method, path, Some(body)).await;
        assert_eq!(
            r.status,
            400,
            "{method} {path} should be refused: {}",
            r.text()
        );
        r
    }
}

/// Where each marker occurs in `haystack` (named `what`).
fn leaks(what: &str, haystack: &[u8]) -> Vec<String> {
    MARKERS
        .iter()
        .filter(|m| haystack.windows(m.len()).any(|w| w == m.as_bytes()))
        .map(|m| format!("{m} in {what}"))
        .collect()
}

fn id_named(list: &Value, name: &str) -> u64 {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list}"))["id"]
        .as_u64()
        .unwrap()
}

/// Creates and updates every kind of secret, reading everything back; returns the recorder.
#[allow(clippy::too_many_lines)] // one scripted session
async fn exercise(server: &ServerProcess) -> Recorder {
    let mut c = Recorder {
        client: server.client(),
        seen: Vec::new(),
    };
    // A failed login, then the real one (its Set-Cookie is recorded too).
    let r = c
        .send(
            "POST",
            "/api/auth/login",
            Some(json!({"auth": ADMIN, "password": REJECTED})),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = c
        .ok(
            "POST",
            "/api/auth/login",
            json!({"auth": ADMIN, "password": ADMIN_PASSWORD}),
            204,
        )
        .await;
    let cookie = r.header("set-cookie").expect("session cookie");
    c.client.cookie = Some(cookie.split(';').next().unwrap().to_owned());
    let r = c
        .ok("POST", "/api/projects", json!({"name": "Vault"}), 201)
        .await;
    let p = r.json()["id"].as_u64().unwrap();
    let base = format!("/api/project/{p}");

    // Create: an ssh key, a login_password key, an environment with secrets and a password.
    c.ok(
        "POST",
        &format!("{base}/keys"),
        json!({"name": "deploy", "type": "ssh", "project_id": p,
               "ssh": {"login": SSH_LOGIN_1, "passphrase": SSH_PASS_1,
                       "private_key": private_key(SSH_KEY_1)}}),
        204,
    )
    .await;
    c.ok(
        "POST",
        &format!("{base}/keys"),
        json!({"name": "web", "type": "login_password", "project_id": p,
               "login_password": {"login": LP_LOGIN_1, "password": LP_PASS_1}}),
        204,
    )
    .await;
    c.ok(
        "POST",
        &format!("{base}/environment"),
        json!({"name": "prod", "project_id": p, "json": "{\"region\":\"eu\"}",
        "env": "{\"PLAIN\":\"value\"}", "password": ENV_PASSWORD_1,
        "secrets": [
            {"operation": "create", "type": "env", "name": "API_TOKEN",
             "secret": ENV_SECRET_1},
            {"operation": "create", "type": "var", "name": "db_password",
             "secret": VAR_SECRET_1}
        ]}),
        204,
    )
    .await;
    let keys = c.get(&format!("{base}/keys")).await.json();
    let ssh = id_named(&keys, "deploy");
    let web = id_named(&keys, "web");
    let envs = c.get(&format!("{base}/environment")).await.json();
    let env = id_named(&envs, "prod");

    // Objects that use them, so refs and lists have something to show.
    c.ok(
        "POST",
        &format!("{base}/repositories"),
        json!({"name": "repo", "project_id": p, "git_url": "git@example.com:org/repo.git",
               "git_branch": "main", "ssh_key_id": ssh}),
        204,
    )
    .await;
    let repo = id_named(&c.get(&format!("{base}/repositories")).await.json(), "repo");
    let inv = c
        .ok(
            "POST",
            &format!("{base}/inventory"),
            json!({"name": "hosts", "project_id": p, "type": "static",
                   "inventory": "[all]\nweb1\n", "ssh_key_id": ssh, "become_key_id": web}),
            201,
        )
        .await
        .json()["id"]
        .as_u64()
        .unwrap();
    let tpl = c
        .ok(
            "POST",
            &format!("{base}/templates"),
            json!({"name": "deploy app", "project_id": p, "app": "ansible",
                   "playbook": "site.yml", "repository_id": repo, "inventory_id": inv,
                   "environment_id": env, "vaults": [{"vault_key_id": web}]}),
            201,
        )
        .await
        .json()["id"]
        .as_u64()
        .unwrap();

    // Update with new values: override_secret on both keys, secret update/create operations
    // and a new environment password.
    c.ok(
        "PUT",
        &format!("{base}/keys/{ssh}"),
        json!({"id": ssh, "name": "deploy", "type": "ssh", "project_id": p,
               "override_secret": true,
               "ssh": {"login": SSH_LOGIN_2, "passphrase": SSH_PASS_2,
                       "private_key": private_key(SSH_KEY_2)}}),
        204,
    )
    .await;
    c.ok(
        "PUT",
        &format!("{base}/keys/{web}"),
        json!({"id": web, "name": "web", "type": "login_password", "project_id": p,
               "override_secret": true,
               "login_password": {"login": LP_LOGIN_1, "password": LP_PASS_2}}),
        204,
    )
    .await;
    // Without override_secret the secret fields are ignored (only the name changes).
    c.ok(
        "PUT",
        &format!("{base}/keys/{web}"),
        json!({"id": web, "name": "web app", "type": "login_password", "project_id": p,
               "override_secret": false,
               "login_password": {"login": IGNORED, "password": IGNORED}}),
        204,
    )
    .await;
    let detail = c.get(&format!("{base}/environment/{env}")).await.json();
    let secrets = detail["secrets"].as_array().unwrap().clone();
    assert_eq!(secrets.len(), 2, "{detail}");
    let secret_id = |name: &str| {
        secrets
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no secret {name} in {detail}"))["id"]
            .as_u64()
            .unwrap()
    };
    let (token_id, db_pw_id) = (secret_id("API_TOKEN"), secret_id("db_password"));
    c.ok(
        "PUT",
        &format!("{base}/environment/{env}"),
        json!({"id": env, "name": "prod", "project_id": p, "json": "{\"region\":\"eu\"}",
        "env": "{\"PLAIN\":\"value\"}", "password": ENV_PASSWORD_2,
        "secrets": [
            {"operation": "update", "id": token_id, "name": "API_TOKEN",
             "secret": ENV_SECRET_2},
            {"operation": "delete", "id": db_pw_id},
            {"operation": "create", "type": "var", "name": "db_password2",
             "secret": VAR_SECRET_2}
        ]}),
        204,
    )
    .await;

    // Requests the server refuses, each carrying a secret.
    c.rejected(
        "POST",
        &format!("{base}/keys"),
        json!({"name": "", "type": "login_password", "project_id": p,
               "login_password": {"login": REJECTED, "password": REJECTED}}),
    )
    .await;
    c.rejected(
        "POST",
        &format!("{base}/keys"),
        json!({"name": "bad", "type": "bogus", "project_id": p,
               "ssh": {"private_key": REJECTED}, "string": REJECTED}),
    )
    .await;
    c.rejected(
        "PUT",
        &format!("{base}/keys/{ssh}"),
        json!({"id": ssh + 1000, "name": "deploy", "type": "ssh", "project_id": p,
               "override_secret": true, "ssh": {"private_key": REJECTED}}),
    )
    .await;
    c.rejected(
        "PUT",
        &format!("{base}/environment/{env}"),
        json!({"id": env, "name": "prod", "project_id": p, "json": "not json",
               "password": REJECTED,
               "secrets": [{"operation": "create", "type": "env", "name": "X",
                            "secret": REJECTED}]}),
    )
    .await;
    c.rejected(
        "PUT",
        &format!("{base}/environment/{env}"),
        json!({"id": env, "name": "prod", "project_id": p, "json": "{}",
               "secrets": [{"operation": "update", "id": ssh, "secret": REJECTED}]}),
    )
    .await;
    c.rejected(
        "POST",
        &format!("{base}/environment"),
        json!({"name": "bad", "project_id": p,
               "secrets": [{"operation": "create", "type": "env", "name": "1 bad name",
                            "secret": REJECTED}]}),
    )
    .await;

    // Read everything back, every way there is.
    let detail = c.get(&format!("{base}/environment/{env}")).await.json();
    let names: Vec<&str> = detail["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{detail}");
    assert!(
        names.contains(&"API_TOKEN") && names.contains(&"db_password2"),
        "{detail}"
    );
    for s in detail["secrets"].as_array().unwrap() {
        assert_eq!(s["secret"], "", "{detail}");
    }
    assert_eq!(detail["password"], Value::Null, "{detail}");
    for path in [
        format!("{base}/keys"),
        format!("{base}/keys?sort=type&order=desc"),
        format!("{base}/keys/{ssh}"),
        format!("{base}/keys/{web}"),
        format!("{base}/keys/{ssh}/refs"),
        format!("{base}/keys/{web}/refs"),
        format!("{base}/environment"),
        format!("{base}/environment?sort=name&order=desc"),
        format!("{base}/environment/{env}"),
        format!("{base}/environment/{env}/refs"),
        format!("{base}/repositories"),
        format!("{base}/repositories/{repo}"),
        format!("{base}/repositories/{repo}/refs"),
        format!("{base}/inventory"),
        format!("{base}/inventory/{inv}"),
        format!("{base}/inventory/{inv}/refs"),
        format!("{base}/templates"),
        format!("{base}/templates/{tpl}"),
        format!("{base}/templates/{tpl}/refs"),
        format!("{base}/events"),
        format!("{base}/events/last"),
        format!("{base}/users"),
        format!("{base}/role"),
        base.clone(),
        "/api/events".into(),
        "/api/events/last".into(),
        "/api/projects".into(),
        "/api/user".into(),
        "/api/users".into(),
        "/api/user/tokens".into(),
        "/api/info".into(),
    ] {
        c.get(&path).await;
        let head = c.send("HEAD", &path, None).await;
        assert_eq!(head.status, 200, "HEAD {path}");
    }
    // Secret placeholders are present and empty.
    let key = c.get(&format!("{base}/keys/{ssh}")).await.json();
    assert_eq!(
        key["ssh"],
        json!({"login": "", "passphrase": "", "private_key": ""})
    );
    assert_eq!(key["login_password"], json!({"login": "", "password": ""}));
    assert_eq!(key["string"], "");
    let key = c.get(&format!("{base}/keys/{web}")).await.json();
    assert_eq!(key["name"], "web app");
    assert_eq!(key["type"], "login_password");
    // Environment secrets are not listed as keys, nor reachable as keys.
    let keys = c.get(&format!("{base}/keys")).await.json();
    let key_names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(key_names.len(), 3, "{keys}");
    let r = c
        .send("GET", &format!("{base}/keys/{token_id}"), None)
        .await;
    assert_eq!(
        r.status,
        404,
        "an environment secret read as a key: {}",
        r.text()
    );
    let r = c.send("POST", "/api/auth/logout", None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let key_file = PathBuf::from(format!("{}.key", db.display()));
    let server = start(&db, &[]);
    let recorded = exercise(&server).await;
    let log = server.stop();
    assert!(
        String::from_utf8_lossy(&log).contains("TRACE")
            || String::from_utf8_lossy(&log).contains("DEBUG"),
        "the log was captured at its most verbose:\n{}",
        String::from_utf8_lossy(&log)
    );

    assert_eq!(leaks("a self-check", SSH_KEY_1.as_bytes()).len(), 1);
    assert!(recorded.seen.len() > 80, "{}", recorded.seen.len());
    let mut found = Vec::new();
    for (request, response) in &recorded.seen {
        found.extend(leaks(&format!("the response to {request}"), response));
    }
    found.extend(leaks("the server log", &log));
    let db_bytes = std::fs::read(&db).expect("read the db file");
    assert!(db_bytes.len() > 4096);
    found.extend(leaks("the database file", &db_bytes));
    // Nor in anything else Forge keeps beside it.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path != db {
            found.extend(leaks(
                &path.display().to_string(),
                &std::fs::read(&path).unwrap(),
            ));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));

    let mode = std::fs::metadata(&key_file)
        .expect("the key file exists beside the db")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    let key_text = std::fs::read_to_string(&key_file).unwrap();

    // Restart on the same db: the key file opens it.
    let server = start(&db, &[]);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let p = c.get("/api/projects").await.json()[0]["id"]
        .as_u64()
        .unwrap();
    let keys = c.get(&format!("/api/project/{p}/keys")).await.json();
    assert_eq!(keys.as_array().unwrap().len(), 3, "{keys}");
    let log = server.stop();
    let found = leaks("the log of the restarted server", &log);
    assert!(found.is_empty(), "{found:?}");

    // Without the key file: refuses, clearly, and does not make a new key.
    std::fs::remove_file(&key_file).unwrap();
    let (code, text) = serve_expecting_exit(&db, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.to_lowercase().contains("key"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("listening on"), "{text}");
    assert!(!key_file.exists(), "a new key file was created:\n{text}");

    // A wrong FORGE_SECRET_KEY is refused, with or without the key file.
    let wrong = "0123456789abcdef".repeat(4);
    assert_ne!(wrong, key_text.trim());
    let (code, text) = serve_expecting_exit(&db, &[("FORGE_SECRET_KEY", &wrong)]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.to_lowercase().contains("key"), "{text}");
    assert!(!text.contains(&wrong), "the key is not echoed: {text}");
    assert!(!key_file.exists());
    std::fs::write(&key_file, &key_text).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = serve_expecting_exit(&db, &[("FORGE_SECRET_KEY", &wrong)]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.to_lowercase().contains("key"), "{text}");
    // A malformed one too.
    let (code, text) = serve_expecting_exit(&db, &[("FORGE_SECRET_KEY", "not-a-key")]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key_text);

    // The right key, given in the environment, works without the file; the refusals above
    // changed nothing.
    std::fs::remove_file(&key_file).unwrap();
    let server = start(&db, &[("FORGE_SECRET_KEY", key_text.trim())]);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let p = c.get("/api/projects").await.json()[0]["id"]
        .as_u64()
        .unwrap();
    let keys = c.get(&format!("/api/project/{p}/keys")).await.json();
    assert_eq!(keys.as_array().unwrap().len(), 3, "{keys}");
    let log = server.stop();
    assert!(!String::from_utf8_lossy(&log).contains(key_text.trim()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_database_gets_a_0600_key_file_and_no_secret_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let key_file = dir.path().join("forge.redb.key");
    assert!(!key_file.exists());
    let server = start(&db, &[]);
    let log = server.stop();
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        !text.contains(key_text.trim()),
        "the server key was logged:\n{text}"
    );
    assert!(!text.contains(ADMIN_PASSWORD), "{text}");
}

/// `forge ARGS --db DB` (an offline command): its exit code and everything it printed.
fn forge_offline(args: &[&str], db: &Path) -> (Option<i32>, String) {
    let out = common::process::forge_offline(args, db);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Regression (issue 16): a key file readable by group or others, or owned by another user,
/// only drew a warning. Now `forge serve`, `forge check`, `forge key rotate` and `forge user
/// add` all refuse it with exit 2 and a message naming the fix, and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_exposed_or_foreign_key_file_is_refused_by_every_command() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let key_file = dir.path().join("forge.redb.key");
    start(&db, &[]).stop();
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    let shown = key_file.display().to_string();
    let me = std::fs::metadata(&db).unwrap().uid();
    let chmod = |mode| std::fs::set_permissions(&key_file, PermissionsExt::from_mode(mode));

    // (mode, owner, what the message must name)
    let cases: [(u32, u32, String); 4] = [
        (0o640, me, format!("chmod 600 {shown}")),
        (0o604, me, format!("chmod 600 {shown}")),
        (0o620, me, format!("chmod 600 {shown}")),
        (0o600, 65_534, format!("chown {me} {shown}")),
    ];
    for (mode, owner, fix) in &cases {
        chmod(*mode).unwrap();
        std::os::unix::fs::chown(&key_file, Some(*owner), None).unwrap();
        let (code, text) = serve_expecting_exit(&db, &[]);
        assert_eq!(code, Some(2), "serve, {mode:o} uid {owner}: {text}");
        assert!(text.contains(fix), "serve, {mode:o} uid {owner}: {text}");
        assert!(
            !text.contains("listening on") && !text.contains("panicked"),
            "{text}"
        );
        for args in [
            &["check"][..],
            &["key", "rotate"][..],
            &[
                "user", "add", "--login", "x", "--email", "x@x", "--name", "x",
            ],
        ] {
            let mut args = args.to_vec();
            if args[0] == "user" {
                args.push("--password-stdin");
            }
            let (code, text) = forge_offline(&args, &db);
            assert_eq!(code, Some(2), "{args:?}, {mode:o} uid {owner}: {text}");
            assert!(text.contains(fix), "{args:?}, {mode:o} uid {owner}: {text}");
        }
        // Nothing changed: no rotation, no new key.
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key_text);
        assert!(!dir.path().join("forge.redb.key.old").exists());
    }

    // Fixed as the message says: it starts again.
    std::os::unix::fs::chown(&key_file, Some(me), None).unwrap();
    chmod(0o600).unwrap();
    let server = start(&db, &[]);
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    server.stop();
    // A read-only key (0400) is private too.
    chmod(0o400).unwrap();
    let (code, text) = forge_offline(&["check"], &db);
    assert_eq!(code, Some(0), "{text}");
}

/// Malformed bodies whose secret fields have the wrong JSON type: the 400 must not quote the
/// secret back (the decoder's messages name the offending value).
#[tokio::test(flavor = "multi_thread")]
async fn malformed_secret_fields_are_not_echoed() {
    let s = TestServer::start().await;
    let a = s.admin().await;
    let r = a.post("/api/projects", json!({"name": "p"})).await;
    let p = r.json()["id"].as_u64().unwrap();
    let env = id_named(
        &a.get(&format!("/api/project/{p}/environment")).await.json(),
        "Empty",
    );
    let key = id_named(
        &a.get(&format!("/api/project/{p}/keys")).await.json(),
        "None",
    );
    let cases = [
        (
            "POST",
            format!("/api/project/{p}/keys"),
            json!({"name": "k", "type": "login_password", "login_password": REJECTED}),
        ),
        (
            "POST",
            format!("/api/project/{p}/keys"),
            json!({"name": "k", "type": "ssh", "ssh": REJECTED}),
        ),
        (
            "PUT",
            format!("/api/project/{p}/keys/{key}"),
            json!({"id": key, "name": "k", "type": "ssh", "override_secret": true,
                   "ssh": REJECTED}),
        ),
        (
            "POST",
            format!("/api/project/{p}/environment"),
            json!({"name": "e", "secrets": REJECTED}),
        ),
        (
            "POST",
            format!("/api/project/{p}/environment"),
            json!({"name": "e", "secrets": [REJECTED]}),
        ),
        (
            "PUT",
            format!("/api/project/{p}/environment/{env}"),
            json!({"id": env, "name": "e", "secrets": [REJECTED]}),
        ),
        (
            "POST",
            "/api/auth/login".to_owned(),
            json!({"auth": "admin", "password": [REJECTED]}),
        ),
    ];
    let mut found = Vec::new();
    for (method, path, body) in cases {
        let r = a
            .raw(
                method,
                &path,
                Some(body.to_string().into_bytes()),
                &[("content-type", "application/json")],
            )
            .await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        if r.text().contains(REJECTED) {
            found.push(format!(
                "{method} {path} {body} → {} {}",
                r.status,
                r.text()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "secrets echoed back:\n{}",
        found.join("\n")
    );
}

/// The scraper's token in the JSON-log run: a secret like the others.
const METRICS_TOKEN: &str = "MARK-metrics-token-0b5d9e";

/// The same session with `--log-format json` (issue 17): every line is a JSON object, every
/// request is logged exactly once with its route template (never the raw path), status,
/// duration, user and request id, and no secret shows — neither the markers, nor the session
/// cookie, the API token or the metrics token that were used.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_hold_every_request_once_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let server = start(
        &db,
        &[
            ("FORGE_LOG_FORMAT", "json"),
            ("FORGE_METRICS_TOKEN", METRICS_TOKEN),
        ],
    );
    let recorded = exercise(&server).await;
    // A session, an API token and the metrics token in use; a client's request id.
    let mut c = server.client();
    assert_eq!(c.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let session = c.cookie.clone().expect("session cookie");
    let session = session.split_once('=').expect("name=value").1.to_owned();
    let token = c.new_token().await;
    let bearer = server.client().with_bearer(&token);
    assert_eq!(bearer.get("/api/user").await.status, 200);
    let scraper = server.client().with_bearer(METRICS_TOKEN);
    assert_eq!(scraper.get("/api/metrics").await.status, 200);
    let r = bearer
        .raw("GET", "/api/info", None, &[("x-request-id", "trace-me-42")])
        .await;
    assert_eq!(r.header("x-request-id").as_deref(), Some("trace-me-42"));
    let extra = 5; // login, new token, user, metrics, info
    let log = server.stop();

    let text = String::from_utf8_lossy(&log);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "TRACE" || l["level"] == "DEBUG"),
        "the log was captured at its most verbose"
    );
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "forge::access")
        .collect();
    assert_eq!(
        requests.len(),
        recorded.seen.len() + extra,
        "one line per request"
    );
    let templates: std::collections::BTreeSet<&str> = forge::http::router::routes()
        .iter()
        .map(|r| r.path)
        .chain(["(page)", "(unmatched)"])
        .collect();
    for line in &requests {
        let route = line["route"].as_str().expect("route");
        assert!(templates.contains(route), "not a route template: {line}");
        assert!(line["method"].is_string(), "{line}");
        assert!(line["status"].is_u64(), "{line}");
        assert!(line["duration_ms"].is_f64(), "{line}");
        let id = line["request_id"].as_str().expect("request_id");
        assert!(!id.is_empty(), "{line}");
    }
    let traced: Vec<&&Value> = requests
        .iter()
        .filter(|l| l["request_id"] == "trace-me-42")
        .collect();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0]["route"], "/api/info");
    assert!(traced[0]["user"].is_u64(), "{}", traced[0]);
    // Project routes by template: the numeric path never shows.
    assert!(
        requests
            .iter()
            .any(|l| l["route"] == "/api/project/{project_id}/keys/{key_id}"),
        "no keyed project route logged"
    );

    let mut found = leaks("the JSON log", &log);
    for (what, secret) in [
        ("the session id", session.as_str()),
        ("the API token", token.as_str()),
        ("the metrics token", METRICS_TOKEN),
    ] {
        if text.contains(secret) {
            found.push(format!("{what} in the JSON log"));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}
