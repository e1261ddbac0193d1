//! The `forge` binary as an operator runs it: `serve` in its own process (killed with SIGKILL
//! or stopped with SIGTERM), and the `user` commands on the same database file.

mod common;

use common::process::ServerProcess;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ADMIN, ADMIN_PASSWORD, Client};
use serde_json::json;

use common::process::FORGE;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");
    let server = ServerProcess::start(&db, &[]);
    let mut admin = server.client();
    assert_eq!(admin.login(ADMIN, ADMIN_PASSWORD).await.status, 204);
    let token = admin.new_token().await;

    // Writers create users as fast as they can; the server is killed while they run.
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = admin.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                let name = format!("u{w}x{i}");
                let body = json!({"name": name, "username": name,
                    "email": format!("{name}@example.com"), "password": "pw"});
                let body = body.to_string().into_bytes();
                let Ok(r) = tokio::time::timeout(
                    Duration::from_secs(5),
                    try_request(&c, "/api/users", body),
                )
                .await
                else {
                    break;
                };
                match r {
                    Some(201) => acked.push(name),
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill_9();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 10,
        "writers made progress before the kill ({})",
        acked.len()
    );

    let server = ServerProcess::start(&db, &[]);
    let bearer = server.client().with_bearer(&token);
    let users = bearer.get("/api/users").await.json();
    let names: std::collections::HashSet<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    for name in &acked {
        assert!(
            names.contains(name.as_str()),
            "acknowledged user {name} lost by kill -9"
        );
    }
    // The session from before the crash still works too.
    let mut again = server.client();
    again.cookie = admin.cookie.clone();
    assert_eq!(again.get("/api/user").await.status, 200);
}

/// One POST that tolerates the server dying mid-request: `None` when it did.
async fn try_request(c: &Client, path: &str, body: Vec<u8>) -> Option<u16> {
    c.try_raw("POST", path, Some(body), &[])
        .await
        .ok()
        .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("forge.redb"), &[]);
    assert_eq!(server.client().get("/api/ping").await.status, 200);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

/// Regression: the SIGTERM handler was installed only after "listening on" was logged, so a
/// supervisor (or a test) that stopped the server the moment it read that line killed it about
/// one time in four.
#[test]
fn sigterm_the_moment_it_listens_is_a_clean_stop() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("forge.redb"), &[]);
        let status = server.terminate();
        assert!(status.success(), "round {round}: {status:?}");
    }
}

/// A log written to a file or a pipe has no colour escapes (only a terminal gets them).
#[test]
fn a_log_that_is_not_a_terminal_has_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::process::forge_serve(&dir.path().join("forge.redb"), &[]);
    cmd.env_remove("NO_COLOR");
    let log = ServerProcess::spawn(cmd).stop();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("listening on"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in the log: {text:?}"
    );
}

/// The repository carries no server key or database outside the test fixtures: a committed
/// key is a key everyone has.
#[test]
fn the_repository_tracks_no_key_or_database() {
    let root = env!("CARGO_MANIFEST_DIR");
    let Ok(out) = Command::new("git")
        .args(["ls-files"])
        .current_dir(root)
        .output()
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "git is needed in CI"
        );
        return;
    };
    if !out.status.success() {
        // Not a git checkout (a source tarball): nothing is tracked.
        return;
    }
    let tracked = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = tracked
        .lines()
        .filter(|f| !f.starts_with("tests/fixtures/"))
        .filter(|f| {
            [".key", ".redb", ".pem", "id_rsa", "id_ed25519"]
                .iter()
                .any(|end| f.ends_with(end))
        })
        .collect();
    assert!(bad.is_empty(), "tracked secrets or databases: {bad:?}");
}

fn user_add(db: &Path, login: &str, password: &str, admin: bool) -> std::process::Output {
    let mut cmd = Command::new(FORGE);
    cmd.args([
        "user",
        "add",
        "--login",
        login,
        "--email",
        &format!("{login}@example.com"),
    ])
    .args(["--name", "CLI User", "--password-stdin"])
    .env("FORGE_DB", db)
    .env("FORGE_SCRYPT_LOG_N", "4")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if admin {
        cmd.arg("--admin");
    }
    let mut child = cmd.spawn().expect("spawn forge user add");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn user_commands_work_offline_and_refuse_a_locked_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("forge.redb");

    let out = user_add(&db, "ops", "s3cret \\ \"x\"", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created user ops"));
    let dup = user_add(&db, "OPS", "x", false);
    assert_eq!(dup.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already taken"));
    let empty = user_add(&db, "nopw", "", false);
    assert_eq!(empty.status.code(), Some(2));

    let list = Command::new(FORGE)
        .args(["user", "list", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("ops") && text.contains("ops@example.com") && text.contains("yes"),
        "{text}"
    );

    // While a server holds the file, the commands say so and exit 2 without a panic.
    let server = ServerProcess::start(&db, &[]);
    let locked = Command::new(FORGE)
        .args(["user", "list", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(locked.status.code(), Some(2));
    let err = String::from_utf8_lossy(&locked.stderr);
    assert!(err.contains("in use by a running Forge server"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let locked = user_add(&db, "late", "pw", false);
    assert_eq!(locked.status.code(), Some(2));

    // The user made offline logs in to the server.
    let mut c = server.client();
    assert_eq!(c.login("ops", "s3cret \\ \"x\"").await.status, 204);
    assert_eq!(c.get("/api/user").await.json()["admin"], true);
    // A second server on the same file refuses to start, clearly.
    let second = Command::new(FORGE)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FORGE_DB", &db)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
}
