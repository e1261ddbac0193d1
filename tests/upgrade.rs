//! Upgrades: a database written by an older release opens with this binary, is upgraded in
//! one step after a backup copy, and every object reads back through the API as that release
//! answered it, secrets included (a task decrypts them). A database from a newer Forge is
//! refused and left untouched.
//!
//! Each fixture under `tests/fixtures/` was made by `tests/fixtures/make-fixture.sh` from an
//! older release; a new fixture is one more entry in [`FIXTURES`].

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{FORGE, ServerProcess, forge_serve};
use common::{Client, at, id_of};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Every fixture directory under `tests/fixtures/`, oldest first.
const FIXTURES: &[&str] = &["v1", "v2", "v3", "v4", "v5"];
/// The fixture written by a release of the current format (5: task output in chunks): it needs
/// no migration, only the tables added since that release (made at start).
const CURRENT_FORMAT_FIXTURE: Option<&str> = Some("v5");

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture's db and key in a fresh temp dir.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["forge.redb", "forge.redb.key"] {
        std::fs::copy(fixture_dir(name).join(file), dir.path().join(file)).expect("copy");
        // git keeps no mode bits but the executable one: the key must be private again.
        std::fs::set_permissions(
            dir.path().join(file),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod 600");
    }
    let db = dir.path().join("forge.redb");
    (dir, db)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON")
}

/// `actual` holds everything `expected` holds: every field of every object (new fields may
/// appear), every array element in order (arrays keep their length).
/// Response fields a later release dropped on purpose, with the only value the old release
/// sent for them: keys' `empty: true` and a template's unset `max_duration_secs: 0` are not in
/// upstream's shape, and strict clients failed on them.
fn dropped(k: &str, v: &Value) -> bool {
    match k {
        "empty" => *v == Value::Bool(true),
        "max_duration_secs" => v.as_u64() == Some(0),
        _ => false,
    }
}

fn contains(actual: &Value, expected: &Value, at: &str) -> Result<(), String> {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (k, ev) in e {
                if !a.contains_key(k) && dropped(k, ev) {
                    continue;
                }
                let av = a.get(k).ok_or_else(|| format!("{at}.{k}: missing"))?;
                contains(av, ev, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(e)) => {
            if a.len() != e.len() {
                return Err(format!("{at}: {} items, expected {}", a.len(), e.len()));
            }
            for (i, (av, ev)) in a.iter().zip(e).enumerate() {
                contains(av, ev, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ if actual == expected => Ok(()),
        _ => Err(format!("{at}: {actual} != {expected}")),
    }
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bak"))
        .collect();
    found.sort();
    found
}

fn short_sha(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

async fn wait_finished(c: &Client, p: u64, t: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task = c.get(&at(p, &format!("tasks/{t}"))).await.json();
        if matches!(
            task["status"].as_str(),
            Some("success" | "error" | "stopped")
        ) {
            return task;
        }
        assert!(Instant::now() < deadline, "task {t} did not finish: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn output(c: &Client, p: u64, t: u64) -> Vec<String> {
    let r = c.get(&at(p, &format!("tasks/{t}/output"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .expect("output lines")
        .iter()
        .map(|l| l["output"].as_str().expect("output text").to_owned())
        .collect()
}

/// The script the fixture's `succeeds` template ran: digests of its secrets, never the secrets.
/// The `var` secret comes in the environment since issue 16 (the fixtures' releases gave it as a
/// `db_password=...` argument, which this script reads too), with the same digest.
const PROOF_SCRIPT: &str = r#"printf 'env-secret-sha=%s\n' "$(printf %s "$FIXTURE_TOKEN" | sha256sum | cut -c1-16)"
if [ -n "${db_password+set}" ]; then
    printf 'var-secret-sha=%s\n' "$(printf %s "$db_password" | sha256sum | cut -c1-16)"
fi
for arg in "$@"; do
    case $arg in
        db_password=*) printf 'var-secret-sha=%s\n' "$(printf %s "${arg#*=}" | sha256sum | cut -c1-16)" ;;
    esac
done
"#;

async fn upgrade_one(name: &str) {
    let facts = read_json(&fixture_dir(name).join("fixture.json"));
    let expected = read_json(&fixture_dir(name).join("expected.json"));
    let original = std::fs::read(fixture_dir(name).join("forge.redb")).expect("fixture db");
    let (dir, db) = copy_fixture(name);

    let server = ServerProcess::start(&db, &[]);
    let log = String::from_utf8_lossy(&server.log()).into_owned();
    let migrates = Some(name) != CURRENT_FORMAT_FIXTURE;
    if !migrates {
        assert!(!log.contains("upgraded the database"), "{name}: {log}");
        assert!(
            backups(dir.path()).is_empty(),
            "{name}: no copy without a migration"
        );
    }
    if migrates {
        assert!(log.contains("upgraded the database"), "{name}: {log}");
        assert!(
            log.contains("copied the database before upgrading it"),
            "{name}: {log}"
        );
        let copies = backups(dir.path());
        assert_eq!(copies.len(), 1, "{name}: {copies:?}");
        assert!(
            copies[0]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!(
                    "forge.redb.pre-v{}-",
                    forge::store::migrate::CURRENT
                )),
            "{copies:?}"
        );
        assert_eq!(
            std::fs::read(&copies[0]).expect("backup"),
            original,
            "{name}: the backup is the file as it was"
        );
    }

    // Every object reads back as the old release answered it.
    let admin = facts["admin"].as_str().unwrap();
    let mut a = server.client();
    let r = a
        .login(admin, facts["admin_password"].as_str().unwrap())
        .await;
    assert_eq!(r.status, 204, "{name}: admin login: {}", r.text());
    for (path, want) in expected.as_object().expect("expected answers") {
        let r = a.get(path).await;
        assert_eq!(r.status, 200, "{name}: GET {path}: {}", r.text());
        let mut got = r.json();
        // Event lists are newest first, and this test's own logins are events: the old
        // events are the tail.
        if path.ends_with("/events")
            && let (Value::Array(items), Some(n)) = (&mut got, want.as_array().map(Vec::len))
        {
            let extra = items.len().saturating_sub(n);
            assert!(
                items[..extra].iter().all(|e| e["object_type"] == "user"),
                "{name}: GET {path}: unexpected new events {:?}",
                &items[..extra]
            );
            items.drain(..extra);
        }
        if let Err(e) = contains(&got, want, path) {
            panic!("{name}: GET {path} differs from the old release: {e}");
        }
    }
    let p = facts["project"].as_u64().unwrap();
    for path in [at(p, "keys"), at(p, "environment")] {
        let text = a.get(&path).await.text();
        for secret in [
            "PRIVATE KEY",
            "fixture-lp-password",
            "fixture-vault-password",
            "fixture-string-secret",
            "fixture-env-vault-password",
            facts["env_secret"].as_str().unwrap(),
            facts["var_secret"].as_str().unwrap(),
        ] {
            assert!(!text.contains(secret), "{name}: {path} shows a secret");
        }
    }

    // Passwords and API tokens still authenticate; the expired token still does not.
    for user in facts["users"].as_array().unwrap() {
        let mut c = server.client();
        let r = c
            .login(
                user.as_str().unwrap(),
                facts["user_password"].as_str().unwrap(),
            )
            .await;
        assert_eq!(r.status, 204, "{name}: login {user}: {}", r.text());
    }
    let me = a
        .with_bearer(facts["token"].as_str().unwrap())
        .get("/api/user")
        .await;
    assert_eq!(me.status, 200, "{name}: {}", me.text());
    assert_eq!(me.json()["username"], admin);
    let runner = a.with_bearer(facts["runner_token"].as_str().unwrap());
    assert_eq!(runner.get("/api/user").await.json()["username"], "runner");
    let expired = a.with_bearer(facts["expired_token"].as_str().unwrap());
    assert_eq!(expired.get("/api/user").await.status, 401);

    // The secrets still decrypt: a task of the fixture's environment prints their digests,
    // the same lines the old release's task printed.
    let scripts = tempfile::tempdir().expect("scripts dir");
    std::fs::write(scripts.path().join("proof.sh"), PROOF_SCRIPT).expect("script");
    let none = a
        .get(&at(p, "keys"))
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "none")
        .map(id_of)
        .expect("a none key");
    let r = a
        .post(
            &at(p, "repositories"),
            json!({"name": "proof", "project_id": p, "git_url": scripts.path(),
                   "git_branch": "main", "ssh_key_id": none}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let repo = a
        .get(&at(p, "repositories"))
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "proof")
        .map(id_of)
        .unwrap();
    let r = a
        .post(
            &at(p, "templates"),
            json!({"name": "proof", "project_id": p, "app": "bash", "playbook": "proof.sh",
                   "repository_id": repo, "environment_id": facts["environment"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let tpl = id_of(&r.json());
    let r = a.post(&at(p, "tasks"), json!({ "template_id": tpl })).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t = id_of(&r.json());
    let task = wait_finished(&a, p, t).await;
    assert_eq!(task["status"], "success", "{name}: {task}");
    let lines = output(&a, p, t).await;
    let env_line = format!(
        "env-secret-sha={}",
        short_sha(facts["env_secret"].as_str().unwrap())
    );
    let var_line = format!(
        "var-secret-sha={}",
        short_sha(facts["var_secret"].as_str().unwrap())
    );
    assert!(lines.contains(&env_line), "{name}: {lines:?}");
    assert!(lines.contains(&var_line), "{name}: {lines:?}");
    let ok_task = facts["ok_task"].as_u64().unwrap();
    let before = output(&a, p, ok_task).await;
    assert!(before.contains(&env_line) && before.contains(&var_line));

    // Tables newer than the fixture (integrations, their deliveries, the alert outbox) are
    // made at start and take writes: a webhook launches the template on the upgraded file.
    let (hook, alias) = common::open_webhook(&a, p, "proof hook", tpl).await;
    let r = a
        .raw(
            "POST",
            &format!("/api/integrations/{alias}"),
            Some(b"{}".to_vec()),
            &[],
        )
        .await;
    assert_eq!(r.status, 204, "{name}: {}", r.text());
    let deliveries = a
        .get(&at(p, &format!("integrations/{hook}/deliveries")))
        .await
        .json();
    let launched = deliveries[0]["task_id"].as_u64().expect("a launched task");
    let task = wait_finished(&a, p, launched).await;
    assert_eq!(task["integration_id"], hook, "{name}: {task}");
    assert_eq!(task["status"], "success", "{name}: {task}");

    let log = String::from_utf8_lossy(&server.stop()).into_owned();
    for secret in ["env_secret", "var_secret"] {
        assert!(
            !log.contains(facts[secret].as_str().unwrap()),
            "{name}: a secret in the log"
        );
    }

    // The upgraded file is consistent, and opening it again changes nothing.
    let check = std::process::Command::new(FORGE)
        .args(["check", "--db"])
        .arg(&db)
        .env_remove("FORGE_SECRET_KEY")
        .env_remove("FORGE_SECRET_KEY_FILE")
        .output()
        .expect("run forge check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{name}: {report}");
    assert!(
        report.contains(&format!(
            "format version {}",
            forge::store::migrate::CURRENT
        )),
        "{report}"
    );
    let again = ServerProcess::start(&db, &[]);
    assert_eq!(again.client().get("/api/ping").await.status, 200);
    let log = String::from_utf8_lossy(&again.stop()).into_owned();
    assert!(!log.contains("upgraded the database"), "{log}");
    assert_eq!(
        backups(dir.path()).len(),
        usize::from(migrates),
        "{name}: no second copy"
    );
}

#[tokio::test]
async fn every_fixture_upgrades_and_reads_back() {
    for name in FIXTURES {
        upgrade_one(name).await;
    }
}

#[tokio::test]
async fn the_backup_copy_can_be_turned_off() {
    let (dir, db) = copy_fixture(FIXTURES[0]);
    let server = ServerProcess::start(&db, &[("FORGE_NO_UPGRADE_BACKUP", "true")]);
    assert_eq!(server.client().get("/api/ping").await.status, 200);
    let log = String::from_utf8_lossy(&server.stop()).into_owned();
    assert!(log.contains("upgraded the database"), "{log}");
    assert!(backups(dir.path()).is_empty(), "{log}");
}

#[test]
fn a_database_from_a_newer_forge_is_refused_and_untouched() {
    let (dir, db) = copy_fixture(FIXTURES[0]);
    let newer = forge::store::migrate::CURRENT + 1;
    {
        let file = redb::Database::create(&db).expect("open");
        let tx = file.begin_write().expect("write");
        tx.open_table(forge::store::tables::META)
            .expect("meta")
            .insert(forge::store::migrate::VERSION_KEY, newer)
            .expect("stamp");
        tx.commit().expect("commit");
    }
    let before = std::fs::read(&db).expect("read");
    let out = forge_serve(&db, &[]).output().expect("run forge serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("written by a newer Forge (format version {newer}"))
            && stderr.contains("not changed"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&db).expect("read"),
        before,
        "file bytes unchanged"
    );
    assert!(backups(dir.path()).is_empty());
    // The offline tools refuse it the same way.
    let out = std::process::Command::new(FORGE)
        .args(["check", "--db"])
        .arg(&db)
        .output()
        .expect("run forge check");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer Forge"));
    assert_eq!(
        std::fs::read(&db).expect("read"),
        before,
        "check did not write"
    );
}
